-- The gateways sharing this registry: each writes its heartbeat here (without bumping the
-- revision: nobody reloads for it), so that any of them can list the fleet.
CREATE TABLE replicas (
    name          TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    sessions      INTEGER NOT NULL,
    health        TEXT NOT NULL
);

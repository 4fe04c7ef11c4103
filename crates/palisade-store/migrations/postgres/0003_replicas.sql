-- The gateways sharing this registry: each writes its heartbeat here (without bumping the
-- revision: nobody reloads for it), so that any of them can list the fleet.
CREATE TABLE replicas (
    name          TEXT COLLATE "C" PRIMARY KEY,
    version       TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL,
    sessions      BIGINT NOT NULL,
    health        TEXT NOT NULL
);

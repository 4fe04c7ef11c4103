-- The registry: tenants, API keys (HMACs only), policies, secrets' metadata.
-- Timestamps are unix milliseconds. JSON documents are TEXT.

-- One row: the revision, bumped by every write so gateways know when to reload.
CREATE TABLE registry_meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO registry_meta (id, revision) VALUES (1, 0);

CREATE TABLE tenants (
    id            TEXT    PRIMARY KEY,
    display_name  TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'suspended')),
    status_reason TEXT,
    servers       TEXT    NOT NULL DEFAULT '[]',
    namespacing   INTEGER NOT NULL DEFAULT 0 CHECK (namespacing IN (0, 1)),
    limits        TEXT    NOT NULL DEFAULT '{}',
    source        TEXT    NOT NULL CHECK (source IN ('config', 'api')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY,
    tenant_id    TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    hash         BLOB    NOT NULL UNIQUE CHECK (length(hash) = 32),
    scopes       TEXT    NOT NULL DEFAULT '[]',
    source       TEXT    NOT NULL CHECK (source IN ('config', 'api')),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

CREATE TABLE policies (
    tenant_id  TEXT    PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    document   TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE secret_meta (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

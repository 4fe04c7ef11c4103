-- The registry: tenants, API keys (HMACs only), policies, secrets' metadata.
-- Timestamps are unix milliseconds. JSON documents are TEXT.
-- Identifiers use the "C" collation so that ORDER BY matches SQLite's byte order.

-- One row: the revision, bumped by every write so gateways know when to reload.
CREATE TABLE registry_meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT  NOT NULL
);
INSERT INTO registry_meta (id, revision) VALUES (1, 0);

CREATE TABLE tenants (
    id            TEXT COLLATE "C" PRIMARY KEY,
    display_name  TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'suspended')),
    status_reason TEXT,
    servers       TEXT    NOT NULL DEFAULT '[]',
    namespacing   BOOLEAN NOT NULL DEFAULT FALSE,
    limits        TEXT    NOT NULL DEFAULT '{}',
    source        TEXT    NOT NULL CHECK (source IN ('config', 'api')),
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT COLLATE "C" PRIMARY KEY,
    tenant_id    TEXT COLLATE "C" NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    hash         BYTEA   NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    scopes       TEXT    NOT NULL DEFAULT '[]',
    source       TEXT    NOT NULL CHECK (source IN ('config', 'api')),
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

CREATE TABLE policies (
    tenant_id  TEXT COLLATE "C" PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    document   TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE secret_meta (
    tenant_id  TEXT COLLATE "C" NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

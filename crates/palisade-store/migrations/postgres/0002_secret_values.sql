-- Secrets' values, sealed by the gateway (AEAD under its master key, bound to tenant and name):
-- the store only ever holds ciphertext.
CREATE TABLE secret_values (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    sealed     BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, name),
    FOREIGN KEY (tenant_id, name) REFERENCES secret_meta (tenant_id, name) ON DELETE CASCADE
);

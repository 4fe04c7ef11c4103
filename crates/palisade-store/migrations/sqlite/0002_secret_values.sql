-- Secrets' values, sealed by the gateway (AEAD under its master key, bound to tenant and name):
-- the store only ever holds ciphertext.
CREATE TABLE secret_values (
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    PRIMARY KEY (tenant_id, name),
    FOREIGN KEY (tenant_id, name) REFERENCES secret_meta (tenant_id, name) ON DELETE CASCADE
);

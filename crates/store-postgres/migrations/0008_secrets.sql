-- Named secrets: keys in the clear (so they can be listed), values sealed by the server's key.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    keys TEXT NOT NULL,
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

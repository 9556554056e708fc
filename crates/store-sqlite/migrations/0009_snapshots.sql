-- Code snapshots: an app folder as a gzip-compressed tar, content-addressed by its SHA-256.
CREATE TABLE snapshots (
    hash TEXT PRIMARY KEY,
    bytes BLOB NOT NULL,
    size BIGINT NOT NULL,
    files BIGINT NOT NULL,
    unpacked_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
-- The snapshot a version runs in (NULL: a version that runs from a folder on the workers).
ALTER TABLE app_versions ADD COLUMN snapshot TEXT;

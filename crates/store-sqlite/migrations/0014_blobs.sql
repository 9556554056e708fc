-- Byte strings stored apart from the inputs and outputs that refer to them (`{"$blob":
-- "sha256:…", "size": N}` in a payload), content-addressed by their SHA-256. An upload's
-- bytes are written as chunks under its own id; the `blobs` row, written once the last chunk
-- is in, is what makes the blob exist. A blob kept in an object store (`serve --blobs
-- s3://…`) has no chunks: `location` is its object's URL (NULL: its chunks are here).
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    upload TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    location TEXT
);
CREATE TABLE blob_chunks (
    upload TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (upload, seq)
);
-- Which calls refer to which blobs: a blob is kept while a call that refers to it is, and
-- pruned once none does (and it is older than the upload grace).
CREATE TABLE blob_refs (
    digest TEXT NOT NULL,
    call_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (digest, call_id)
);
CREATE INDEX blob_refs_call ON blob_refs (call_id);
-- Objects of blobs kept out of the database (`serve --blobs files|s3://…`) that are nobody's
-- blob: an upload under way (recorded before its first byte), or one refused or cut short, a
-- copy replaced by a later upload of the same bytes, a blob pruned. The pruner deletes each
-- once it is past the upload grace, then its row; an object not recorded here is never
-- touched (another installation may share the bucket).
CREATE TABLE blob_objects (
    location TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE INDEX blob_objects_created ON blob_objects (created_at);
CREATE INDEX blobs_upload ON blobs (upload);
CREATE INDEX blobs_location ON blobs (location);

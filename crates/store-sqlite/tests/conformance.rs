//! The store conformance suite, against SQLite.
#![allow(clippy::unwrap_used)] // test code

async fn setup() -> Option<(hopper_store_sqlite::SqliteStore, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = hopper_store_sqlite::SqliteStore::open(&dir.path().join("hopper.db"))
        .await
        .unwrap();
    Some((store, dir))
}

hopper_store::conformance_suite!(setup());

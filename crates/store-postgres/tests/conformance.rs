//! The store conformance suite, against PostgreSQL. Needs `HOPPER_TEST_POSTGRES` (a URL);
//! without it every test says it skipped. Each test gets a schema of its own, dropped after.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use hopper_store_postgres::{PgConfig, PgStore};

/// Drops the test's schema when the test ends.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs outside any runtime the test may still be tearing down: use one of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn setup() -> Option<(PgStore, Schema)> {
    let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
        println!("SKIP: HOPPER_TEST_POSTGRES is not set");
        return None;
    };
    let name = format!("hopper_test_{}", hopper_core::ids::random_hex());
    let store = PgStore::open(&PgConfig {
        url: url.clone(),
        max_connections: 8,
        schema: Some(name.clone()),
    })
    .await
    .unwrap();
    Some((store, Schema { url, name }))
}

hopper_store::conformance_suite!(setup());

/// One server of a cluster leads a role; when it goes, another takes over.
#[tokio::test]
async fn only_one_server_leads_a_role_until_it_goes() {
    use hopper_store::Store;
    let Some((first, schema)) = setup().await else {
        return;
    };
    let url = schema.url.clone();
    let second = PgStore::open(&PgConfig {
        url,
        max_connections: 2,
        schema: Some(schema.name.clone()),
    })
    .await
    .unwrap();
    assert!(first.leader_try("notifier").await.unwrap());
    assert!(
        !second.leader_try("notifier").await.unwrap(),
        "the role is taken"
    );
    assert!(
        second.leader_try("other").await.unwrap(),
        "roles are separate"
    );
    drop(first);
    // The first server's session ends with it (its connections close when it is dropped).
    let mut taken = false;
    for _ in 0..100 {
        if second.leader_try("notifier").await.unwrap() {
            taken = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(taken, "the lead passes on once its holder is gone");
}

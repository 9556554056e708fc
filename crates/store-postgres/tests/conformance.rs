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

/// A schema left by the build that had only migrations `1..=last`, holding one queued call of
/// `a.ok` (columns of the first schema, which later migrations keep).
async fn schema_at(url: &str, schema: &str, last: i64, call: &hopper_core::CallId) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\";
         CREATE TABLE hopper_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL);"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    for (version, name, sql) in hopper_store_postgres::migrate::MIGRATIONS
        .iter()
        .filter(|(v, _, _)| *v <= last)
    {
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO hopper_migrations VALUES ($1, $2, 0)")
            .bind(version)
            .bind(name)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let spec = hopper_core::FunctionSpec {
        app: "a".into(),
        name: "ok".into(),
        command: vec!["true".into()],
        workdir: "/".into(),
        timeout_ms: 60_000,
        concurrency: 1,
        ..Default::default()
    };
    let t0 = 1_700_000_000_000_i64;
    sqlx::raw_sql(&format!(
        "INSERT INTO apps (name, version, deployed_at) VALUES ('a', 1, {t0});
         INSERT INTO app_versions (app, version, manifest, deployed_at) VALUES ('a', 1, 'app = \"a\"', {t0});
         INSERT INTO functions (app, name, version, spec) VALUES ('a', 'ok', 1, '{spec}');
         INSERT INTO calls (id, app, function, version, origin, state, n_total, n_pending, created_at)
           VALUES ('{call}', 'a', 'ok', 1, 'spawn', 'pending', 1, 1, {t0});
         INSERT INTO inputs (call_id, idx, app, function, version, state, input, not_before)
           VALUES ('{call}', 0, 'a', 'ok', 1, 'pending', '\"hello\"', {t0});",
        spec = serde_json::to_string(&spec).unwrap().replace('\'', "''"),
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// A database at any earlier schema, with calls queued, opens with this build and finishes
/// them.
#[tokio::test]
async fn a_database_at_any_earlier_schema_opens_and_finishes_its_queued_calls() {
    use hopper_store::Store;
    let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
        println!("SKIP: HOPPER_TEST_POSTGRES is not set");
        return;
    };
    let newest = hopper_store_postgres::migrate::MIGRATIONS.last().unwrap().0;
    for last in 1..newest {
        let name = format!("hopper_test_{}", hopper_core::ids::random_hex());
        let _drop = Schema {
            url: url.clone(),
            name: name.clone(),
        };
        let call = hopper_core::CallId::generate();
        schema_at(&url, &name, last, &call).await;
        let store = PgStore::open(&PgConfig {
            url: url.clone(),
            max_connections: 2,
            schema: Some(name.clone()),
        })
        .await
        .unwrap();
        assert_eq!(store.schema_version().await.unwrap().applied, newest);
        hopper_store::conformance::a_queued_call_runs_to_its_end(&store, &call).await;
    }
}

/// A database a newer build migrated is refused, naming both versions.
#[tokio::test]
async fn a_database_a_newer_build_migrated_is_refused() {
    let Some((store, schema)) = setup().await else {
        return;
    };
    drop(store);
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".hopper_migrations VALUES (999, 'from_the_future', 0)",
        schema.name
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let e = PgStore::open(&PgConfig {
        url: schema.url.clone(),
        max_connections: 2,
        schema: Some(schema.name.clone()),
    })
    .await
    .err()
    .expect("a newer schema was opened")
    .to_string();
    let (known, name, _) = hopper_store_postgres::migrate::MIGRATIONS.last().unwrap();
    assert!(
        e.contains("0999_from_the_future") && e.contains(&format!("{known:04}_{name}")),
        "{e}"
    );
}

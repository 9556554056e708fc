//! `app_*` and `function_*`: deployed apps and their functions' specs.

use crate::db::{Connection, Row};
use hopper_core::FunctionSpec;
use hopper_store::{
    AppDeploy, AppRow, FunctionFind, FunctionKey, FunctionRow, FunctionVersionRow, StoreError,
};

use crate::dialect::{Conn, DbPool};

use crate::map::{corrupt, db_err};

pub async fn deploy(conn: &mut Conn, p: AppDeploy) -> Result<AppRow, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    // One statement takes the next version and locks the app's row until commit, so
    // concurrent deploys of one app (on any servers) each get their own version.
    let version: i64 = crate::db::query_scalar(
        "INSERT INTO apps (name, version, deployed_at, notify) VALUES ($1, 1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET version = apps.version + 1,
           deployed_at = excluded.deployed_at, notify = excluded.notify
         RETURNING version",
    )
    .bind(&p.app)
    .bind(p.now)
    .bind(serde_json::to_string(&p.notify).map_err(|e| corrupt("notify rules", e))?)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    crate::db::query(
        "INSERT INTO app_versions (app, version, manifest, deployed_at, snapshot) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&p.app)
    .bind(version)
    .bind(&p.manifest)
    .bind(p.now)
    .bind(&p.snapshot)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut functions = Vec::with_capacity(p.functions.len());
    for spec in p.functions {
        let json = serde_json::to_string(&spec).map_err(|e| corrupt("function spec", e))?;
        crate::db::query(
            "INSERT INTO functions (app, name, version, spec) VALUES ($1, $2, $3, $4)",
        )
        .bind(&p.app)
        .bind(&spec.name)
        .bind(version)
        .bind(json)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        functions.push(FunctionRow { version, spec });
    }
    crate::schedules::deploy(&mut tx, &p.app, &p.schedules, p.now).await?;
    // Other servers forget the functions they found.
    crate::dialect::notify(&mut tx, "deploy").await?;
    tx.commit().await.map_err(db_err)?;
    Ok(AppRow {
        name: p.app,
        version,
        deployed_at: p.now,
        functions,
        notify: p.notify,
    })
}

pub async fn list(pool: &DbPool) -> Result<Vec<AppRow>, StoreError> {
    let rows = crate::db::query(
        "SELECT a.name, a.version, a.deployed_at, a.notify, f.spec FROM apps a
         JOIN functions f ON f.app = a.name AND f.version = a.version
         ORDER BY a.name, f.name",
    )
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    let mut apps: Vec<AppRow> = Vec::new();
    for row in rows {
        let name: String = row.try_get("name").map_err(db_err)?;
        let version: i64 = row.try_get("version").map_err(db_err)?;
        let spec = spec(&row.try_get::<String, _>("spec").map_err(db_err)?)?;
        match apps.last_mut() {
            Some(app) if app.name == name => app.functions.push(FunctionRow { version, spec }),
            _ => apps.push(AppRow {
                name,
                version,
                deployed_at: row.try_get("deployed_at").map_err(db_err)?,
                functions: vec![FunctionRow { version, spec }],
                notify: serde_json::from_str(&row.try_get::<String, _>("notify").map_err(db_err)?)
                    .map_err(|e| corrupt("notify rules", e))?,
            }),
        }
    }
    Ok(apps)
}

pub async fn function_find(pool: &DbPool, p: FunctionFind) -> Result<Vec<FunctionRow>, StoreError> {
    let rows = crate::db::query(
        "SELECT f.version, f.spec FROM functions f
         JOIN apps a ON a.name = f.app AND a.version = f.version
         WHERE f.name = $1 AND ($2 IS NULL OR f.app = $2)
         ORDER BY f.app",
    )
    .bind(&p.function)
    .bind(&p.app)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(FunctionRow {
                version: row.try_get("version").map_err(db_err)?,
                spec: spec(&row.try_get::<String, _>("spec").map_err(db_err)?)?,
            })
        })
        .collect()
}

pub async fn function_versions(
    pool: &DbPool,
    key: &FunctionKey,
    limit: u32,
) -> Result<Vec<FunctionVersionRow>, StoreError> {
    let rows = crate::db::query(
        "SELECT f.version, f.spec, v.deployed_at FROM functions f
         JOIN app_versions v ON v.app = f.app AND v.version = f.version
         WHERE f.app = $1 AND f.name = $2 ORDER BY f.version DESC LIMIT $3",
    )
    .bind(&key.app)
    .bind(&key.function)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(FunctionVersionRow {
                function: FunctionRow {
                    version: row.try_get("version").map_err(db_err)?,
                    spec: spec(&row.try_get::<String, _>("spec").map_err(db_err)?)?,
                },
                deployed_at: row.try_get("deployed_at").map_err(db_err)?,
            })
        })
        .collect()
}

pub fn spec(text: &str) -> Result<FunctionSpec, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt("function spec", e))
}

//! `secret_*`: named secrets, their values sealed by the server before they reach the store.

use crate::db::{QueryBuilder, Row};
use hopper_store::{SecretPutParams, SecretRow, StoreError};

use crate::dialect::{Conn, Db, DbPool, DbRow};

use crate::map::{corrupt, db_err};

const COLUMNS: &str = "SELECT name, keys, sealed, created_at, updated_at FROM secrets";

pub async fn put(conn: &mut Conn, p: SecretPutParams) -> Result<SecretRow, StoreError> {
    let keys = serde_json::to_string(&p.keys).map_err(|e| corrupt("secret keys", e))?;
    crate::db::query(
        "INSERT INTO secrets (name, keys, sealed, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (name) DO UPDATE SET keys = excluded.keys, sealed = excluded.sealed,
           updated_at = excluded.updated_at",
    )
    .bind(&p.name)
    .bind(keys)
    .bind(&p.sealed)
    .bind(p.now)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    let row = crate::db::query(&format!("{COLUMNS} WHERE name = $1"))
        .bind(&p.name)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    secret_row(&row)
}

pub async fn list(pool: &DbPool) -> Result<Vec<SecretRow>, StoreError> {
    let rows = crate::db::query(&format!("{COLUMNS} ORDER BY name"))
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter().map(secret_row).collect()
}

pub async fn get_many(pool: &DbPool, names: &[String]) -> Result<Vec<SecretRow>, StoreError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut q: QueryBuilder<'_, Db> = QueryBuilder::new(COLUMNS);
    q.push(" WHERE name IN (");
    let mut list = q.separated(", ");
    for name in names {
        list.push_bind(name);
    }
    q.push(") ORDER BY name");
    let rows = q.build().fetch_all(pool).await.map_err(db_err)?;
    rows.iter().map(secret_row).collect()
}

pub async fn delete(conn: &mut Conn, name: String) -> Result<bool, StoreError> {
    let done = crate::db::query("DELETE FROM secrets WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(done.rows_affected() > 0)
}

fn secret_row(row: &DbRow) -> Result<SecretRow, StoreError> {
    let keys: String = row.try_get("keys").map_err(db_err)?;
    Ok(SecretRow {
        name: row.try_get("name").map_err(db_err)?,
        keys: serde_json::from_str(&keys).map_err(|e| corrupt("secret keys", e))?,
        sealed: row.try_get("sealed").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        updated_at: row.try_get("updated_at").map_err(db_err)?,
    })
}

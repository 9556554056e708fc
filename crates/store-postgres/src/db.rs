//! The sqlx calls the shared SQL (`store-sql/`) makes, under the names it imports; the
//! SQLite backend supplies the same names over rusqlite.

pub use sqlx::{query, query_scalar, Connection, QueryBuilder, Row};

/// The rows of `query`, read one at a time until `full` says the page is full after a row
/// (that row is kept) or the rows end: a page bounded by bytes holds only what it returns.
pub async fn fetch_until<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    on: &sqlx::PgPool,
    mut full: impl FnMut(&sqlx::postgres::PgRow) -> bool,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    use futures_util::TryStreamExt;
    let mut rows = query.fetch(on);
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let stop = full(&row);
        out.push(row);
        if stop {
            break;
        }
    }
    Ok(out)
}

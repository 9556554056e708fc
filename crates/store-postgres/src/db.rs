//! The sqlx calls the shared SQL (`store-sql/`) makes, under the names it imports; the
//! SQLite backend supplies the same names over rusqlite.

pub use sqlx::{query, query_scalar, Connection, QueryBuilder, Row};

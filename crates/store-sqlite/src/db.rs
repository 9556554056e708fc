//! SQLite through rusqlite, in the shape of the sqlx calls the shared SQL (`store-sql/`)
//! makes: `query(sql).bind(v).fetch_all(conn)`, `query_scalar`, `QueryBuilder`,
//! `conn.begin()` … `tx.commit()`, `row.try_get(column)`.
//!
//! Nothing here waits: every future is ready the first time it is polled, because each
//! statement runs at once on the thread that owns the connection (the writer's or a
//! reader's, see [`crate::threads`]). Those threads drive a whole store operation — every
//! statement of it — with [`run_now`], so an operation costs one hand-over between threads,
//! not one per statement. Statements are prepared once per connection and cached.
//!
//! Parameters are `$1`, `$2`… as in PostgreSQL (the shared SQL's spelling) or `?N`
//! (what [`QueryBuilder::push_bind`] writes); SQLite numbers `$N` parameters by first
//! appearance, so each is bound by the number in its name.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use futures_util::FutureExt;
use rusqlite::types::{FromSql, ToSql, Value, ValueRef};

pub use rusqlite::Error;

/// Statements kept prepared per connection: every distinct statement the store makes, with
/// room for the multi-row inserts' few shapes.
const CACHED_STATEMENTS: usize = 512;

/// The backend's marker type for `QueryBuilder<Db>`.
pub struct Sqlite;

/// One SQLite connection, used by one thread at a time.
pub struct Conn {
    inner: rusqlite::Connection,
}

impl Conn {
    /// Wraps an open connection, with room for the store's prepared statements.
    pub fn new(inner: rusqlite::Connection) -> Self {
        inner.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
        Self { inner }
    }

    /// Runs statements that return no rows (transaction control), each prepared once.
    pub fn exec(&self, statements: &[&str]) -> Result<(), Error> {
        for sql in statements {
            self.inner.prepare_cached(sql)?.raw_execute()?;
        }
        Ok(())
    }

    /// The rusqlite connection, for what the sqlx shape does not cover (pragmas, scripts).
    pub fn raw(&self) -> &rusqlite::Connection {
        &self.inner
    }
}

/// Runs a future that never waits (a store operation on a [`Conn`]) to its end, here.
/// Returns `None` if it waited after all: a bug, reported as such by the caller.
pub fn run_now<T>(future: impl Future<Output = T>) -> Option<T> {
    future.now_or_never()
}

/// Where a statement runs: a connection, borrowed or borrowed mutably.
pub trait Executor {
    fn connection(&self) -> &rusqlite::Connection;
}

impl Executor for &Conn {
    fn connection(&self) -> &rusqlite::Connection {
        &self.inner
    }
}

impl Executor for &mut Conn {
    fn connection(&self) -> &rusqlite::Connection {
        &self.inner
    }
}

/// Transactions, under sqlx's trait name so the shared SQL imports the same word.
pub trait Connection {
    /// Begins a transaction, or a savepoint inside the one already open.
    fn begin(&mut self) -> std::future::Ready<Result<Transaction<'_>, Error>>;
}

// One savepoint name, `hopper_sp`: SQLite releases or rolls back the innermost of a name.

impl Connection for Conn {
    fn begin(&mut self) -> std::future::Ready<Result<Transaction<'_>, Error>> {
        let nested = !self.inner.is_autocommit();
        let sql = if nested {
            "SAVEPOINT hopper_sp"
        } else {
            "BEGIN"
        };
        std::future::ready(self.exec(&[sql]).map(|()| Transaction {
            conn: self,
            nested,
            open: true,
        }))
    }
}

/// An open transaction (or savepoint): committed by [`Transaction::commit`], rolled back
/// when dropped without it.
pub struct Transaction<'c> {
    conn: &'c mut Conn,
    nested: bool,
    open: bool,
}

impl Transaction<'_> {
    pub fn commit(mut self) -> std::future::Ready<Result<(), Error>> {
        self.open = false;
        let sql = if self.nested {
            "RELEASE hopper_sp"
        } else {
            "COMMIT"
        };
        std::future::ready(self.conn.exec(&[sql]))
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let statements: &[&str] = if self.nested {
            &["ROLLBACK TO hopper_sp", "RELEASE hopper_sp"]
        } else {
            &["ROLLBACK"]
        };
        // After a failure SQLite may have rolled back already; there is nothing left to undo.
        if let Err(e) = self.conn.exec(statements) {
            tracing::debug!(error = %e, "rolling back");
        }
    }
}

impl Deref for Transaction<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
    }
}

/// A parameter value, borrowed from the caller or owned.
type Arg<'q> = Box<dyn ToSql + 'q>;

/// A statement and its parameters.
pub struct Query<'q> {
    sql: std::borrow::Cow<'q, str>,
    args: Vec<Arg<'q>>,
    /// Parameters `?1`…`?n` in order (a [`QueryBuilder`]'s): bound by position, without
    /// asking SQLite each parameter's name (a walk of the statement's list per parameter, too
    /// slow for the thousands of a multi-row insert).
    in_order: bool,
}

pub fn query(sql: &str) -> Query<'_> {
    Query {
        sql: sql.into(),
        args: Vec::new(),
        in_order: false,
    }
}

/// What `execute` answers.
pub struct Done {
    rows: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows
    }
}

impl<'q> Query<'q> {
    pub fn bind<T: ToSql + 'q>(mut self, value: T) -> Self {
        self.args.push(Box::new(value));
        self
    }

    pub fn execute<E: Executor>(self, on: E) -> std::future::Ready<Result<Done, Error>> {
        std::future::ready(self.run(on.connection()).map(|(_, rows)| Done { rows }))
    }

    pub fn fetch_all<E: Executor>(
        self,
        on: E,
    ) -> std::future::Ready<Result<Vec<SqliteRow>, Error>> {
        std::future::ready(self.run(on.connection()).map(|(rows, _)| rows))
    }

    pub fn fetch_optional<E: Executor>(
        self,
        on: E,
    ) -> std::future::Ready<Result<Option<SqliteRow>, Error>> {
        std::future::ready(
            self.run(on.connection())
                .map(|(rows, _)| rows.into_iter().next()),
        )
    }

    pub fn fetch_one<E: Executor>(self, on: E) -> std::future::Ready<Result<SqliteRow, Error>> {
        std::future::ready(
            self.run(on.connection())
                .and_then(|(rows, _)| rows.into_iter().next().ok_or(Error::QueryReturnedNoRows)),
        )
    }

    /// Prepares (or finds prepared), binds, steps through every row and reads them out.
    fn run(self, conn: &rusqlite::Connection) -> Result<(Vec<SqliteRow>, u64), Error> {
        self.run_until(conn, |_| false)
    }

    /// [`Self::run`], stopping after the row `full` says fills the page.
    fn run_until(
        self,
        conn: &rusqlite::Connection,
        mut full: impl FnMut(&SqliteRow) -> bool,
    ) -> Result<(Vec<SqliteRow>, u64), Error> {
        let mut statement = conn.prepare_cached(&self.sql)?;
        for i in 1..=statement.parameter_count() {
            let number = if self.in_order {
                i
            } else {
                statement
                    .parameter_name(i)
                    .and_then(|name| name.get(1..))
                    .and_then(|digits| digits.parse::<usize>().ok())
                    .unwrap_or(i)
            };
            let arg = self
                .args
                .get(number.wrapping_sub(1))
                .ok_or(Error::InvalidParameterCount(number, self.args.len()))?;
            statement.raw_bind_parameter(i, arg)?;
        }
        let columns: Arc<[String]> = statement
            .column_names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let width = columns.len();
        let mut out = Vec::new();
        let mut rows = statement.raw_query();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(Value::from(row.get_ref(i)?));
            }
            let row = SqliteRow {
                columns: columns.clone(),
                values,
            };
            let stop = full(&row);
            out.push(row);
            if stop {
                break;
            }
        }
        drop(rows);
        Ok((out, conn.changes()))
    }
}

/// The rows of `query`, read one at a time until `full` says the page is full after a row
/// (that row is kept) or the rows end: a page bounded by bytes holds only what it returns.
pub fn fetch_until<E: Executor>(
    query: Query<'_>,
    on: E,
    full: impl FnMut(&SqliteRow) -> bool,
) -> std::future::Ready<Result<Vec<SqliteRow>, Error>> {
    std::future::ready(query.run_until(on.connection(), full).map(|(rows, _)| rows))
}

/// A statement whose rows are one value each.
pub struct QueryScalar<'q, O> {
    query: Query<'q>,
    out: PhantomData<O>,
}

pub fn query_scalar<O: FromSql>(sql: &str) -> QueryScalar<'_, O> {
    QueryScalar {
        query: query(sql),
        out: PhantomData,
    }
}

impl<'q, O: FromSql> QueryScalar<'q, O> {
    pub fn bind<T: ToSql + 'q>(mut self, value: T) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub fn fetch_all<E: Executor>(self, on: E) -> std::future::Ready<Result<Vec<O>, Error>> {
        std::future::ready(self.query.fetch_all(on).into_inner().and_then(|rows| {
            rows.iter()
                .map(|r| r.try_get::<O, _>(0))
                .collect::<Result<Vec<O>, Error>>()
        }))
    }

    pub fn fetch_optional<E: Executor>(
        self,
        on: E,
    ) -> std::future::Ready<Result<Option<O>, Error>> {
        std::future::ready(
            self.query
                .fetch_optional(on)
                .into_inner()
                .and_then(|row| row.map(|r| r.try_get::<O, _>(0)).transpose()),
        )
    }

    pub fn fetch_one<E: Executor>(self, on: E) -> std::future::Ready<Result<O, Error>> {
        std::future::ready(
            self.query
                .fetch_one(on)
                .into_inner()
                .and_then(|r| r.try_get::<O, _>(0)),
        )
    }
}

/// A row read out of its statement: column names and values.
pub struct SqliteRow {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

/// A column by position or by name.
pub trait ColumnIndex {
    fn position(&self, row: &SqliteRow) -> Result<usize, Error>;
}

impl ColumnIndex for usize {
    fn position(&self, row: &SqliteRow) -> Result<usize, Error> {
        if *self < row.values.len() {
            Ok(*self)
        } else {
            Err(Error::InvalidColumnIndex(*self))
        }
    }
}

impl ColumnIndex for &str {
    fn position(&self, row: &SqliteRow) -> Result<usize, Error> {
        row.columns
            .iter()
            .position(|c| c == self)
            .ok_or_else(|| Error::InvalidColumnName(self.to_string()))
    }
}

/// Reading a row's columns, under sqlx's trait name so the shared SQL imports the same word.
pub trait Row {
    fn try_get<T: FromSql, I: ColumnIndex>(&self, column: I) -> Result<T, Error>;
}

impl Row for SqliteRow {
    fn try_get<T: FromSql, I: ColumnIndex>(&self, column: I) -> Result<T, Error> {
        let i = column.position(self)?;
        let value = self.values.get(i).ok_or(Error::InvalidColumnIndex(i))?;
        T::column_result(ValueRef::from(value)).map_err(|e| match e {
            rusqlite::types::FromSqlError::InvalidType => Error::InvalidColumnType(
                i,
                self.columns.get(i).cloned().unwrap_or_default(),
                ValueRef::from(value).data_type(),
            ),
            rusqlite::types::FromSqlError::OutOfRange(n) => Error::IntegralValueOutOfRange(i, n),
            other => Error::FromSqlConversionFailure(
                i,
                ValueRef::from(value).data_type(),
                Box::new(other),
            ),
        })
    }
}

/// Builds a statement from pieces, numbering its parameters `?1`, `?2`….
pub struct QueryBuilder<'args, D> {
    sql: String,
    args: Vec<Arg<'args>>,
    backend: PhantomData<D>,
}

impl<'args, D> QueryBuilder<'args, D> {
    pub fn new(init: impl Into<String>) -> Self {
        Self {
            sql: init.into(),
            args: Vec::new(),
            backend: PhantomData,
        }
    }

    pub fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        use std::fmt::Write;
        let _ = write!(self.sql, "{sql}");
        self
    }

    pub fn push_bind<T: ToSql + 'args>(&mut self, value: T) -> &mut Self {
        self.args.push(Box::new(value));
        let n = self.args.len();
        self.push(format_args!("?{n}"))
    }

    pub fn separated<'qb, S: std::fmt::Display>(
        &'qb mut self,
        separator: S,
    ) -> Separated<'qb, 'args, D, S> {
        Separated {
            builder: self,
            separator,
            started: false,
        }
    }

    /// `VALUES (…), (…)`: one parenthesised tuple per item, its values pushed by `tuple`.
    pub fn push_values<I, F>(&mut self, items: I, mut tuple: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(Separated<'_, 'args, D, &'static str>, I::Item),
    {
        self.push("VALUES ");
        let mut first = true;
        for item in items {
            if !first {
                self.push(", ");
            }
            first = false;
            self.push("(");
            tuple(self.separated(", "), item);
            self.push(")");
        }
        self
    }

    /// The statement, taking the parameters (the builder keeps its text).
    pub fn build(&mut self) -> Query<'_> {
        Query {
            sql: std::borrow::Cow::Borrowed(&self.sql),
            args: std::mem::take(&mut self.args),
            in_order: true,
        }
    }
}

/// Pieces pushed with a separator between them.
pub struct Separated<'qb, 'args, D, S> {
    builder: &'qb mut QueryBuilder<'args, D>,
    separator: S,
    started: bool,
}

impl<'args, D, S: std::fmt::Display> Separated<'_, 'args, D, S> {
    fn separate(&mut self) {
        if self.started {
            self.builder.push(&self.separator);
        }
        self.started = true;
    }

    pub fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        self.separate();
        self.builder.push(sql);
        self
    }

    pub fn push_bind<T: ToSql + 'args>(&mut self, value: T) -> &mut Self {
        self.separate();
        self.builder.push_bind(value);
        self
    }

    pub fn push_unseparated(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        self.builder.push(sql);
        self
    }

    pub fn push_bind_unseparated<T: ToSql + 'args>(&mut self, value: T) -> &mut Self {
        self.builder.push_bind(value);
        self
    }
}

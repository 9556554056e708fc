//! The one error type of every store backend.

/// What went wrong in a store. Backends map their own errors here, so nothing above the store
/// matches on database error codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The idempotency key belongs to a call of another function, or one with another input.
    #[error("idempotency key {key:?} is already used by call {call_id} {differs}")]
    IdempotencyConflict {
        key: String,
        call_id: String,
        /// What differs, e.g. `of demo.other` or `with a different input`.
        differs: String,
    },
    /// The thing named does not exist; `what` says which kind of thing it is.
    #[error("{message}")]
    NotFound { what: Missing, message: String },
    /// The operation does not fit the current state (e.g. inputs for a map that was closed).
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be reached or is busy; the operation changed nothing and may be retried.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database aborted the operation for contention with another (a deadlock, a
    /// serialization failure): it changed nothing and may be run again at once.
    #[error("the database aborted the write for contention: {0}")]
    Contention(String),
    /// The database's disk is full: the operation changed nothing and may be retried once
    /// space is freed.
    #[error("the database's disk is full: {0}")]
    Full(String),
    /// A stored value could not be read back (e.g. JSON that does not parse).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Database(String),
    /// The database was migrated by a newer Hopper than this one: its tables are not the
    /// ones this build's statements expect, so serving it would fail every call.
    #[error("the database's schema is at migration {found:04}_{found_name}, newer than this build of Hopper knows (up to {known:04}_{known_name}): a newer Hopper migrated it. Run that version or a later one against this database, or restore the backup taken before the upgrade")]
    SchemaTooNew {
        found: i64,
        found_name: String,
        known: i64,
        known_name: String,
    },
}

/// What a [`StoreError::NotFound`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Call,
    Function,
    Schedule,
    Input,
    Worker,
}

impl StoreError {
    /// A [`StoreError::NotFound`] of `what`, with a message for people.
    pub fn not_found(what: Missing, message: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            message: message.into(),
        }
    }
}

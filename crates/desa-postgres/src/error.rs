//! Errors of the PostgreSQL store.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused a statement or is unreachable.
    #[error("PostgreSQL: {0}")]
    Db(#[from] postgres::Error),
    /// The database holds a schema this desa does not read.
    #[error("{0}")]
    Schema(String),
    /// The `--store` URL cannot be used.
    #[error("--store: {0}")]
    Config(String),
}

impl Error {
    /// A message with the server's detail, which `postgres::Error`'s own
    /// display leaves out ("db error").
    pub fn describe(&self) -> String {
        match self {
            Error::Db(e) => match e.as_db_error() {
                Some(db) => format!("PostgreSQL: {}: {}", db.code().code(), db.message()),
                None => format!("PostgreSQL: {e}"),
            },
            other => other.to_string(),
        }
    }
}

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
    /// The worker's local copy of the blocks cannot be written or read
    /// (its directory, or a block that fails its checksum).
    #[error("local copy of blocks: {0}")]
    Local(#[from] desa_engine::Error),
}

impl Error {
    /// A message with the server's detail, which `postgres::Error`'s own
    /// display leaves out ("db error").
    pub fn describe(&self) -> String {
        match self {
            Error::Db(e) => match e.as_db_error() {
                Some(db) => format!("PostgreSQL: {}: {}", db.code().code(), db.message()),
                // A refused TLS handshake or connection says why only in
                // its sources.
                None => {
                    let mut msg = format!("PostgreSQL: {e}");
                    let mut source = std::error::Error::source(e);
                    while let Some(s) = source {
                        let text = s.to_string();
                        if !msg.contains(&text) {
                            msg.push_str(": ");
                            msg.push_str(&text);
                        }
                        source = s.source();
                    }
                    msg
                }
            },
            other => other.to_string(),
        }
    }
}

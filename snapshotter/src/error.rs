//! The snapshotter's one error type, and its mapping to gRPC status codes.

use std::path::PathBuf;

/// What can go wrong serving snapshots.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has this key or name.
    #[error("snapshot {0}: not found")]
    NotFound(String),
    /// A snapshot with this key or name exists already.
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    /// The request does not fit the snapshot's state (a parent not committed, children left).
    #[error("snapshot {key}: {why}")]
    FailedPrecondition { key: String, why: String },
    /// A request argument is wrong.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(String),
    /// A file system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is wrong.
    #[error("config {}: {why}", path.display())]
    Config { path: PathBuf, why: String },
    /// Serving the gRPC socket or the metrics endpoint failed.
    #[error("serving {what}: {why}")]
    Serve { what: String, why: String },
    /// A remote layer cannot be mounted lazily (remounting one, or an EROFS layer that has no
    /// plain fallback).
    #[error("remote layer {layer}: {why}")]
    Remote { layer: String, why: String },
}

/// The snapshotter's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error naming what was done and to which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn precondition(key: &str, why: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            key: key.to_string(),
            why: why.into(),
        }
    }
}

macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.to_string())
            }
        }
    )*};
}
store_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

/// containerd's errdefs travel as gRPC codes: NotFound, AlreadyExists, FailedPrecondition and
/// InvalidArgument are what its client turns back into `errdefs.ErrNotFound` and friends.
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition { .. } => tonic::Status::failed_precondition(msg),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}

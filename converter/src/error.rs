//! The converter's one error type.
//!
//! Every variant carries enough context to name what failed: the image, the layer digest, the entry
//! or the chunk. Callers add context as an error travels outwards with [`Error::context`].

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading or writing images and layers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Input that does not follow its format (corrupt gzip, bad tar header, bad TOC, …).
    #[error("{0}")]
    Format(String),
    /// Content whose digest differs from the one it was promised to have.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Something the converter knows about but does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// A bad argument or reference given by the user.
    #[error("{0}")]
    Invalid(String),
    /// An error with a location prefix ("image x: layer sha256:…: entry `a/b`").
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// An I/O error while doing `what`.
    pub fn io(what: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            what: what.to_string(),
            source,
        }
    }

    /// A format error.
    pub fn format(msg: impl fmt::Display) -> Self {
        Error::Format(msg.to_string())
    }

    /// Prefix this error with where it happened.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error::Context {
            context: context.to_string(),
            source: Box::new(self),
        }
    }

    /// The innermost error, below every context prefix.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            e => e,
        }
    }
}

/// Adds [`Error::context`] to results.
pub trait ResultExt<T> {
    /// Prefix the error, if any, with where it happened.
    fn context<C: fmt::Display>(self, context: C) -> Result<T>;
    /// Like [`ResultExt::context`], computing the prefix only on error.
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context<C: fmt::Display>(self, context: C) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

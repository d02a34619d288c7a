//! What can go wrong fetching a range, and how it reaches callers.
//!
//! A fetch fails with a [`FetchError`] naming the request ("GET http://host/blob bytes=100-199")
//! and the reason. It travels out as a [`lazypull_converter::Error::Io`] because [`BlobRead`]
//! speaks that type; the `io::ErrorKind` carries what an errno boundary needs (timed out, not
//! found, denied) and the typed [`FetchError`] stays reachable through `source()` / downcasting.
//!
//! [`BlobRead`]: lazypull_converter::BlobRead

use std::fmt;
use std::io;
use std::time::Duration;

use lazypull_converter::Error;
use reqwest::{StatusCode, Url};

/// One HTTP request as errors name it: method, URL without secrets, and the byte range asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDesc {
    /// `GET` or `HEAD`.
    pub method: &'static str,
    /// The URL with query, fragment and credentials removed (presigned URLs carry secrets there).
    pub url: String,
    /// The inclusive byte range asked, if any.
    pub range: Option<(u64, u64)>,
}

impl RequestDesc {
    pub(crate) fn new(method: &'static str, url: &Url, range: Option<(u64, u64)>) -> Self {
        RequestDesc {
            method,
            url: redact(url),
            range,
        }
    }
}

impl fmt::Display for RequestDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)?;
        if let Some((first, last)) = self.range {
            write!(f, " bytes={first}-{last}")?;
        }
        Ok(())
    }
}

/// The URL as it may appear in logs and errors: no query string, fragment or user info.
pub fn redact(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    // Both fail only for URLs that cannot carry credentials, which then have none to hide.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// Why a fetch failed. `retries` counts the attempts made after the first.
#[derive(Debug, thiserror::Error)]
pub enum FetchErrorKind {
    /// The server kept answering (or finally answered) with this status.
    #[error("{status} after {retries} retries")]
    Status { status: StatusCode, retries: u32 },
    /// A range starting at or past the end of the blob: the size we were told is wrong.
    #[error("{status}: range not satisfiable{}", match .size { Some(n) => format!(" (the server says the blob has {n} bytes)"), None => String::new() })]
    NotSatisfiable {
        status: StatusCode,
        size: Option<u64>,
    },
    /// No answer (headers and body) within the per-request timeout, on every attempt.
    #[error("timed out after {timeout:?} per attempt, {retries} retries")]
    Timeout { timeout: Duration, retries: u32 },
    /// Connection refused or reset, or a broken body, on every attempt.
    #[error("{message} after {retries} retries")]
    Transport { message: String, retries: u32 },
    /// The body had fewer or more bytes than asked, on every attempt.
    #[error("body has {got} bytes, expected {expected}, after {retries} retries")]
    BodyLength {
        got: u64,
        expected: u64,
        retries: u32,
    },
    /// A 206 whose Content-Range is not the range asked.
    #[error("Content-Range `{got}` does not match the range asked")]
    ContentRange { got: String },
    /// A redirect without a usable Location, or too many of them.
    #[error("bad redirect: {0}")]
    Redirect(String),
    /// Neither HEAD nor a one-byte GET told the blob's size.
    #[error("the server did not tell the blob's size: {0}")]
    NoSize(String),
    /// A URL that does not parse or is not http(s).
    #[error("invalid URL: {0}")]
    Url(String),
    /// Authenticating to the server failed (a token could not be had, credentials refused).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A blocking read called from a thread that is driving an async runtime.
    #[error("blocking fetch called from inside an async runtime")]
    InsideRuntime,
}

impl FetchErrorKind {
    fn io_kind(&self) -> io::ErrorKind {
        match self {
            FetchErrorKind::Status { status, .. } => match *status {
                StatusCode::NOT_FOUND | StatusCode::GONE => io::ErrorKind::NotFound,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => io::ErrorKind::PermissionDenied,
                _ => io::ErrorKind::Other,
            },
            FetchErrorKind::Auth(_) => io::ErrorKind::PermissionDenied,
            FetchErrorKind::Timeout { .. } => io::ErrorKind::TimedOut,
            FetchErrorKind::Transport { .. } => io::ErrorKind::ConnectionAborted,
            FetchErrorKind::BodyLength { .. } => io::ErrorKind::UnexpectedEof,
            FetchErrorKind::NotSatisfiable { .. }
            | FetchErrorKind::ContentRange { .. }
            | FetchErrorKind::Redirect(_)
            | FetchErrorKind::NoSize(_) => io::ErrorKind::InvalidData,
            FetchErrorKind::Url(_) | FetchErrorKind::InsideRuntime => io::ErrorKind::InvalidInput,
        }
    }
}

/// A failed fetch: which request, and why.
#[derive(Debug, thiserror::Error)]
#[error("{request}: {kind}")]
pub struct FetchError {
    pub request: RequestDesc,
    pub kind: FetchErrorKind,
}

impl FetchError {
    pub(crate) fn new(request: RequestDesc, kind: FetchErrorKind) -> Self {
        FetchError { request, kind }
    }

    /// The fetch error inside a converter error, if it came from here.
    pub fn find(err: &Error) -> Option<&FetchError> {
        match err.root() {
            Error::Io { source, .. } => source.get_ref()?.downcast_ref::<Reason>().map(|r| &r.0),
            _ => None,
        }
    }
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        let what = e.request.to_string();
        let kind = e.kind.io_kind();
        // The request is the `what`; the io::Error displays only the reason, so the message reads
        // "GET url bytes=a-b: 503 Service Unavailable after 5 retries".
        Error::io(what, io::Error::new(kind, Reason(e)))
    }
}

/// Displays only the kind of a [`FetchError`] while keeping the whole of it for downcasting.
#[derive(Debug)]
struct Reason(FetchError);

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.kind.fmt(f)
    }
}

impl std::error::Error for Reason {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

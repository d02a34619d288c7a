//! The range fetcher: remote blobs read on demand by HTTP range requests.
//!
//! A [`RangeFetcher`] owns one HTTP client (one keep-alive pool) and a small runtime; it is shared
//! by every layer of every mount. An [`HttpBlob`] is one remote blob of known size opened through
//! it; it implements [`BlobRead`](lazypull_converter::BlobRead), so the eStargz and EROFS readers
//! parse a remote layer exactly as they parse a local file, one range request per read.
//!
//! ```text
//! parser ── read_at / read_ranges ──► HttpBlob ── clamp, coalesce ──► with_retries ──► GET Range
//!                                        │                                  │
//!                                 cached redirect target        timeout per attempt, backoff,
//!                                 (re-resolved on 403/404)      Retry-After, body length check
//!                                 Authorization (RequestAuth)   401 → re-authenticate once
//! ```
//!
//! Every failure names the request ("GET https://host/v2/…/blobs/sha256:… bytes=100-199: 503
//! Service Unavailable after 5 retries"), never the query string (presigned URLs carry secrets).
//! Reads block the calling thread; calling them from inside an async runtime is an error.
//!
//! ```no_run
//! use lazypull_converter::BlobRead;
//! use lazypull_fuse::fetch::{FetchOptions, HttpBlob, RangeFetcher};
//!
//! let fetcher = RangeFetcher::new(FetchOptions::default())?;
//! let blob = HttpBlob::open(&fetcher, "http://127.0.0.1:5000/v2/app/blobs/sha256:0123")?;
//! let head = blob.read_vec(0, 512)?; // GET Range: bytes=0-511
//! let parts = blob.read_ranges(&[(4096, 100), (4200, 100)])?; // one request: bytes=4096-4299
//! # let _ = (head, parts);
//! # Ok::<(), lazypull_converter::Error>(())
//! ```

mod auth;
mod blob;
mod error;
mod fetcher;
mod layout;
mod options;
mod range;
mod request;
#[cfg(test)]
mod tests;

pub use auth::RequestAuth;
pub use blob::HttpBlob;
pub use error::{redact, FetchError, FetchErrorKind, RequestDesc};
pub use fetcher::RangeFetcher;
pub use layout::{open_http_layout, split_url_tag};
pub use options::{FetchOptions, FetchStats};

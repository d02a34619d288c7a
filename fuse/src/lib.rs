//! lazypull-fuse: the lazy filesystem.
//!
//! It will serve converted layers (eStargz, EROFS) through FUSE, fetching chunks on demand through
//! the readers of [`lazypull_converter`], verifying every chunk before it is cached or served.
//! So far it has the range fetcher ([`fetch`]): remote blobs read by HTTP range requests through
//! [`BlobRead`](lazypull_converter::BlobRead). The lazy mount is its own issue.

pub mod fetch;

pub use fetch::{FetchOptions, FetchStats, HttpBlob, RangeFetcher};
pub use lazypull_converter as converter;

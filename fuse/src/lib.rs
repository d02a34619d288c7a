//! lazypull-fuse: the lazy filesystem.
//!
//! It will serve converted layers (eStargz, EROFS) through FUSE, fetching chunks on demand through
//! the readers of [`lazypull_converter`], verifying every chunk before it is cached or served.
//! Nothing is implemented yet: the lazy mount is its own issue.

pub mod cache;

pub use cache::{CacheOptions, CacheStats, ChunkCache};
pub use lazypull_converter as converter;

//! lazypull-fuse: the lazy filesystem.
//!
//! [`fs::LayerFs`] serves one converted layer through FUSE: a [`fs::LayerTree`] gives the
//! read-only view ([`fs::EstargzTree`] over an eStargz TOC, [`fs::ErofsTree`] over an EROFS
//! image), and [`fs::mount`] serves it from background threads. Every chunk is verified by the
//! readers of [`lazypull_converter`] before a byte of it is served; what fails verification
//! reads as `EIO`. [`cache::ChunkCache`] keeps verified chunks on disk, content-addressed and
//! bounded; [`fetch::HttpBlob`] reads remote blobs by HTTP range requests (retries, timeouts,
//! redirect caching, coalescing) as a [`converter::BlobRead`]; [`layer::open_layer`] puts them
//! together for one layer. With [`fs::Passthrough`] in the mount options, a file read in full
//! is copied once from its verified bytes and later opens hand the kernel that copy (FUSE
//! passthrough), so warm reads skip the chunk cache.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use lazypull_fuse::converter::{estargz::EstargzReader, FileBlob};
//! use lazypull_fuse::fs::{mount, EstargzTree, MountOptions};
//! let reader = EstargzReader::open(FileBlob::open("layer.stargz".as_ref())?, None)?;
//! let handle = mount(EstargzTree::new(reader)?, "/mnt/layer".as_ref(), &MountOptions::default())?;
//! // … use /mnt/layer, e.g. as an overlayfs lowerdir …
//! handle.unmount()?;
//! # Ok(())
//! # }
//! ```

pub mod background;
pub mod cache;
pub mod demand;
pub mod fetch;
pub mod fs;
pub mod layer;
pub mod serve;

pub use cache::{CacheOptions, CacheStats, ChunkCache};
pub use fetch::{FetchOptions, FetchStats, HttpBlob, RangeFetcher};
pub use fs::{mount, LayerFs, LayerTree, MountHandle, MountOptions};
pub use layer::{open_layer, LayerFormat, LayerHints, OpenedLayer};
pub use lazypull_converter as converter;

//! lazypull-converter: the on-disk formats lazypull reads and writes, and the conversion pipeline.
//!
//! Data flows one way:
//!
//! 1. An [`oci::ImageSource`] (an OCI layout, a `docker save` tarball, an OCI archive or a
//!    registry, see `registry`) yields an image's index, manifests, configs and layer blobs,
//!    each read through [`BlobRead`].
//! 2. [`layer::Layer::ingest`] decompresses a layer blob (tar, gzip, zstd), checks it and spools its
//!    file contents to a temporary file, giving a list of [`layer::LayerEntry`].
//! 3. [`estargz::EstargzWriter`] lays the entries out as an eStargz (or zstd:chunked) blob, with the
//!    prefetch-listed files first, compressing members in parallel with rayon.
//! 4. [`convert::convert`] drives all of this per platform and per layer, rewrites manifests and
//!    configs, and commits the result to an [`oci::LayoutDest`] atomically.
//!
//! Readers ([`estargz::EstargzReader`]) are generic over [`BlobRead`], so the same parser reads a
//! blob in memory, on disk, or (in `lazypull-fuse`) over HTTP range requests.
//!
//! ```
//! use lazypull_converter::{estargz::format, BlobRead};
//! // Every gzip eStargz blob ends with a 51-byte footer that points at its TOC.
//! let footer = format::gzip_footer(4096);
//! let parsed = format::parse_footer(&footer, 4096 + 200 + 51).unwrap();
//! assert_eq!(parsed.toc_offset, 4096);
//! assert_eq!(footer.to_vec().len(), 51);
//! ```

pub mod blob;
#[cfg(feature = "write")]
pub mod convert;
pub mod digest;
pub mod erofs;
pub mod error;
pub mod estargz;
pub mod layer;
pub mod oci;
pub mod prefetch;
#[cfg(feature = "registry")]
pub mod registry;
#[cfg(feature = "write")]
pub mod sample;

pub use blob::{BlobRead, FileBlob};
pub use digest::Digest;
pub use error::{Error, Result, ResultExt};

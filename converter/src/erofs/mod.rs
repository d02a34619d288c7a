//! EROFS layers: kernel-mountable filesystem images, wrapped per the erofs-image-spec.
//!
//! - [`format`]: the on-disk structs (superblock, inodes, dirents, xattrs) and the chunk index.
//! - [`chunk_index`]: the erofs-image-spec chunk index (parse, validate, build) and
//!   [`chunk_index::ChunkedImage`], a [`crate::BlobRead`] of the uncompressed image over a
//!   `+zstd` blob that fetches, verifies and decompresses one frame per chunk.
//! - [`ErofsReader`]: reads an image through [`crate::BlobRead`]: lookup, readdir, read,
//!   readlink, xattrs; every offset checked.
//! - [`ErofsBuilder`] (feature `write`): lays out an ingested [`crate::layer::Layer`] as an
//!   image, metadata first, then prefetch-listed files' data, then the rest.

pub mod chunk_index;
pub mod format;
mod read;
#[cfg(feature = "write")]
mod write;

pub use read::{DirEntry, ErofsReader, Inode, Nid};
#[cfg(feature = "write")]
pub use write::{BuiltImage, ErofsBuilder, ErofsOptions};

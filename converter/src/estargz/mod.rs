//! eStargz (gzip) and zstd:chunked: seekable tar layers with a table of contents.
//!
//! - [`format`]: names, annotations, the TOC JSON ([`Toc`], [`TocEntry`]) and the footers.
//! - [`EstargzReader`]: opens a blob through [`crate::BlobRead`], finds the footer, reads and
//!   verifies the TOC, and reads file contents with every chunk's digest checked.
//! - [`EstargzWriter`] (feature `write`): lays out an ingested [`crate::layer::Layer`] as eStargz
//!   or zstd:chunked, compressing members in parallel, reproducibly.

pub mod format;
mod read;
#[cfg(feature = "write")]
mod write;

pub use format::{Footer, FooterKind, Toc, TocEntry};
pub use read::{
    normalise_name, ChunkReader, ChunkRef, EstargzReader, FileEntry, MAX_CHUNK_SIZE,
    MAX_TOC_ENTRIES, MAX_TOC_SIZE,
};
#[cfg(feature = "write")]
pub use write::{BlobFormat, EstargzOptions, EstargzWriter, WrittenBlob};

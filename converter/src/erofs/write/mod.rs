//! Building EROFS images from layers.
//!
//! [`ErofsBuilder::build`] turns an ingested [`Layer`] into a kernel-mountable, uncompressed
//! EROFS image in four steps:
//!
//! 1. [`tree`]: entries → an inode tree (missing parents synthesised, hardlinks as extra links,
//!    OCI whiteouts as overlayfs whiteouts and opaque xattrs);
//! 2. [`layout`]: nids and blocks for everything, so every offset is known up front;
//! 3. [`emit`]: the metadata region built in memory (superblock checksum last), written;
//! 4. file data streamed from the layer's spool, prefetch-listed files first.
//!
//! The output is written strictly sequentially and is a function of the layer and the options
//! alone, so the same layer always gives the same bytes.
//!
//! Every inode is extended (per-file mtimes with nanoseconds on every kernel) and every file
//! is flat (no compression or extra devices), so `feature_incompat` is 0 and the image mounts
//! on any kernel with EROFS — unless the prefetch list marks a large file as read sparsely:
//! that file is chunk-based (`feature_incompat` CHUNKED_FILE, kernel 5.15 and later), so only
//! the chunks read go to the prefetch region. Xattrs are inline only (no shared xattr area).

mod dir;
mod emit;
mod layout;
mod tree;
mod xattr;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Write;

use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::prefetch::PrefetchList;

/// Options of [`ErofsBuilder`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErofsOptions {
    /// Files in access order: their data is laid out first after all metadata (for files
    /// read sparsely, only the chunks read). Paths that name no regular file with data are
    /// ignored.
    pub prefetch: Option<PrefetchList>,
    /// Image UUID (deterministic: the caller derives it from the source layer digest); zero
    /// for none.
    pub uuid: [u8; 16],
}

/// Writes EROFS images of layers.
#[derive(Clone, Debug)]
pub struct ErofsBuilder {
    opts: ErofsOptions,
}

/// What [`ErofsBuilder::build`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// Bytes written (a multiple of the 4096-byte block size).
    pub size: u64,
    /// End (exclusive, block-aligned) of the last prefetch-listed file's data blocks, so
    /// `[0, prefetch_end)` is everything a prefetch needs; `metadata_end` if no listed file
    /// has data blocks.
    pub prefetch_end: u64,
    /// End of the metadata region: superblock, inodes, xattrs, inline data, directory blocks.
    pub metadata_end: u64,
    /// Inodes in the image.
    pub inodes: u64,
    /// Regular files with data (inodes, so hardlinks count once).
    pub files: u64,
}

impl ErofsBuilder {
    pub fn new(opts: ErofsOptions) -> Self {
        ErofsBuilder { opts }
    }

    /// Writes the image of `layer` to `out`, sequentially (`out` may be a pipe-like sink).
    /// Metadata is held in memory; file contents are copied from the spool in bounded buffers.
    pub fn build<W: Write>(&self, layer: &Layer, mut out: W) -> Result<BuiltImage> {
        let tree = tree::Tree::build(layer)?;
        let plan = layout::Plan::new(&tree, self.opts.prefetch.as_ref())?;
        let meta = emit::metadata(&tree, &plan, layer, self.opts.uuid)?;
        out.write_all(&meta)
            .map_err(|e| Error::io("write EROFS metadata", e))?;
        drop(meta);
        emit::data(&tree, &plan, layer, &mut out)?;
        out.flush().map_err(|e| Error::io("flush EROFS image", e))?;
        let files = plan
            .inodes
            .iter()
            .filter(|p| tree.nodes[p.node].is_reg() && p.size > 0)
            .count();
        Ok(BuiltImage {
            size: plan.size,
            prefetch_end: plan.prefetch_end,
            metadata_end: plan.metadata_end,
            inodes: plan.inodes.len() as u64,
            files: files as u64,
        })
    }
}

/// A format error about one entry.
fn entry_err(name: &str, msg: impl fmt::Display) -> Error {
    Error::format(format!("entry `{name}`: {msg}"))
}

//! Reading EROFS images through [`BlobRead`].
//!
//! [`ErofsReader::open`] checks the superblock; from there every structure is read on demand
//! with one range read per inode, directory block, xattr entry or chunk-table entry, so the
//! same reader serves a local file and a lazily fetched remote blob.
//!
//! - `superblock`: magic, block size, checksum, feature bits, root nid.
//! - `inode`: compact and extended inodes, and where their data and xattrs live.
//! - `dir`: directory blocks, `read_dir`, `lookup` (binary search as the kernel does), `walk`.
//! - `xattr`: inline and shared extended attributes.
//! - `data`: file contents for the flat and chunk-based layouts, symlink targets.
//!
//! Hostile images give an [`Error`], never a panic, an endless loop or an allocation larger
//! than the image. Errors name the inode (`nid 45`) and, where the caller knows it, the path.

mod data;
mod dir;
mod inode;
mod superblock;
mod xattr;

#[cfg(test)]
mod tests;

use std::fmt;

use crate::blob::BlobRead;
use crate::erofs::format::{self, SuperBlock};
use crate::error::{Error, Result, ResultExt};
use crate::layer::EntryKind;

pub use dir::DirEntry;
pub use inode::Inode;

/// Inode number: the inode's offset from the metadata start in 32-byte slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nid(pub u64);

impl fmt::Display for Nid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Reader of an EROFS image (uncompressed layouts; one device).
///
/// ```
/// # fn main() -> lazypull_converter::Result<()> {
/// use lazypull_converter::erofs::ErofsReader;
/// // Not an image: the superblock check refuses it.
/// let err = ErofsReader::open(vec![0u8; 4096]).err().unwrap();
/// assert!(err.to_string().contains("magic"));
/// # Ok(())
/// # }
/// ```
pub struct ErofsReader<B: BlobRead> {
    blob: B,
    sb: SuperBlock,
    /// log2 of the block size.
    blkbits: u8,
    /// Byte offset of nid 0.
    meta_base: u64,
}

impl<B: BlobRead> ErofsReader<B> {
    /// Open an image: check the superblock and the root directory's inode.
    pub fn open(blob: B) -> Result<Self> {
        let sb = superblock::read(&blob).context("erofs superblock")?;
        let blkbits = sb.blkszbits;
        let meta_base = u64::from(sb.meta_blkaddr.get()) << blkbits;
        let reader = ErofsReader {
            blob,
            sb,
            blkbits,
            meta_base,
        };
        let root = reader
            .inode(reader.root())
            .context("erofs root directory")?;
        if root.kind != EntryKind::Dir {
            return Err(Error::format(format!(
                "erofs root directory: nid {} is a {:?}, not a directory",
                root.nid, root.kind
            )));
        }
        Ok(reader)
    }

    /// The root directory.
    pub fn root(&self) -> Nid {
        Nid(self.sb.root_nid.get().into())
    }

    /// The superblock as read (and checked) by [`ErofsReader::open`].
    pub fn superblock(&self) -> &format::SuperBlock {
        &self.sb
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u64 {
        1 << self.blkbits
    }

    /// The blob the image is read from.
    pub fn blob(&self) -> &B {
        &self.blob
    }

    /// The inode `nid`.
    pub fn inode(&self, nid: Nid) -> Result<Inode> {
        self.read_inode(nid).with_context(|| format!("nid {nid}"))
    }

    /// All entries of a directory, `.` and `..` included, in on-disk (sorted) order.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        self.dir_entries(dir)
            .with_context(|| format!("nid {}", dir.nid))
    }

    /// The entry `name` of a directory: a binary search over its blocks by their first names,
    /// then within the one block that can hold it, reading O(log blocks) blocks.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<Nid>> {
        self.dir_lookup(dir, name)
            .with_context(|| format!("nid {}", dir.nid))
    }

    /// The inode at `path` ("/a/b" or "a/b"), from the root. Symlinks are not followed; `.`
    /// and empty components are skipped, `..` is looked up like any name. `None` when a
    /// component is missing or an intermediate one is not a directory.
    pub fn resolve(&self, path: &str) -> Result<Option<Nid>> {
        let mut nid = self.root();
        let mut walked = String::new();
        for name in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let dir = self
                .read_inode(nid)
                .with_context(|| format!("nid {nid} (`{walked}`)"))?;
            if dir.kind != EntryKind::Dir {
                return Ok(None);
            }
            match self
                .dir_lookup(&dir, name.as_bytes())
                .with_context(|| format!("nid {nid} (`{walked}`)"))?
            {
                Some(child) => nid = child,
                None => return Ok(None),
            }
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(name);
        }
        Ok(Some(nid))
    }

    /// Read file (or symlink, or directory) data at `off` into `buf`; returns the bytes read,
    /// fewer than `buf.len()` only at the end of the file. Holes read as zeros.
    pub fn read(&self, inode: &Inode, off: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_data(inode, off, buf)
            .with_context(|| format!("nid {}", inode.nid))
    }

    /// The target of a symlink.
    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>> {
        self.link_target(inode)
            .with_context(|| format!("nid {}", inode.nid))
    }

    /// Extended attributes by full name (`user.foo`, `security.capability`): inline ones, then
    /// shared ones.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read_xattrs(inode)
            .with_context(|| format!("nid {}", inode.nid))
    }

    /// Every inode of the tree with its path (root `""`, then `a`, `a/b`, … depth-first in
    /// directory order). Hard links appear once per name with the same nid. A directory met
    /// twice (a cycle or a directory hard link), `.`/`..` pointing elsewhere than they must,
    /// a dirent type contradicting the inode, or a path longer than [`dir::PATH_MAX`] bytes
    /// is an error. Names that are not UTF-8 are converted lossily.
    pub fn walk(&self) -> Result<Vec<(String, Inode)>> {
        self.walk_tree()
    }
}

/// Ceil of `a / 2^bits`.
fn div_ceil_pow2(a: u64, bits: u8) -> u64 {
    (a >> bits) + u64::from(a & ((1u64 << bits) - 1) != 0)
}

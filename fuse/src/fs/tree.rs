//! [`LayerTree`]: the read-only view of one layer that the FUSE server needs.
//!
//! A tree hands out typed inode numbers ([`Ino`]), attributes ([`Attr`]), directory listings,
//! link targets, file bytes and extended attributes. It knows nothing about FUSE: errors are
//! typed ([`FsError`]) and become an errno only in [`super::LayerFs`].

use std::fmt;

/// A FUSE inode number. The root is always [`Ino::ROOT`] (1), as the kernel expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Dir,
    Reg,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

/// The attributes of one inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits plus setuid/setgid/sticky (never type bits).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content length (regular files), target length (symlinks), 0 or the listing size otherwise.
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Device number (major, minor) of character and block devices.
    pub rdev: (u32, u32),
    /// Allocated 512-byte blocks, as `stat` reports them.
    pub blocks: u64,
}

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Filesystem totals for `statfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// Total size in `block_size` units.
    pub blocks: u64,
    /// Number of inodes.
    pub files: u64,
    pub block_size: u32,
    /// Longest name.
    pub name_max: u32,
}

/// Why a tree operation failed. [`super::errno`] is the one place these become errnos.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such inode (never handed out, or a stale number from the kernel).
    #[error("inode {0} does not exist")]
    NoInode(Ino),
    #[error("inode {0} is not a directory")]
    NotDir(Ino),
    #[error("inode {0} is a directory")]
    IsDir(Ino),
    /// `readlink` of something that is not a symlink; `read` of a device or fifo.
    #[error("inode {0}: {1}")]
    WrongKind(Ino, &'static str),
    /// The layer's data could not be read or did not verify (a digest mismatch, an I/O or
    /// fetch error, a malformed blob).
    #[error("inode {ino}: {source}")]
    Layer {
        ino: Ino,
        #[source]
        source: lazypull_converter::Error,
    },
}

impl FsError {
    /// A layer error met while serving `ino`.
    pub fn layer(ino: Ino, source: lazypull_converter::Error) -> Self {
        FsError::Layer { ino, source }
    }

    /// Whether the operation stopped because it needs the network on a thread that forbade it
    /// ([`crate::demand::local_only`]): it is to be run again where waiting is fine.
    pub fn needs_network(&self) -> bool {
        matches!(self, FsError::Layer { source, .. } if crate::demand::is_would_block(source))
    }
}

/// Result alias of [`LayerTree`] operations.
pub type FsResult<T> = Result<T, FsError>;

/// The read-only filesystem of one layer, as a FUSE server sees it.
///
/// Implementations are immutable once built and shared between FUSE threads, so every method
/// takes `&self`. Whiteouts appear as overlayfs expects them: a character device 0:0 per
/// deleted name, `trusted.overlay.opaque=y` on opaque directories.
pub trait LayerTree: Send + Sync {
    /// The root directory; always [`Ino::ROOT`].
    fn root(&self) -> Ino {
        Ino::ROOT
    }

    /// The attributes of `ino`.
    fn getattr(&self, ino: Ino) -> FsResult<Attr>;

    /// The inode called `name` in directory `parent`, `None` when absent.
    fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>>;

    /// A directory's entries, `.` and `..` first, then the others in a stable order (the same
    /// on every call, so FUSE offsets stay meaningful).
    fn readdir(&self, ino: Ino) -> FsResult<Vec<DirEntry>>;

    /// A symlink's target.
    fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>>;

    /// Up to `size` bytes of a regular file from `off`; fewer only at the end of the file.
    fn read(&self, ino: Ino, off: u64, size: u32) -> FsResult<Vec<u8>>;

    /// Every extended attribute, by full name (`user.x`, `trusted.overlay.opaque`).
    fn xattrs(&self, ino: Ino) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>>;

    /// One extended attribute, `None` when absent.
    fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Option<Vec<u8>>> {
        Ok(self
            .xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v))
    }

    /// Filesystem totals.
    fn statfs(&self) -> StatFs;

    /// A short name of the layer for log messages (a digest, a file name).
    fn describe(&self) -> String;
}

impl<T: LayerTree + ?Sized> LayerTree for std::sync::Arc<T> {
    fn root(&self) -> Ino {
        (**self).root()
    }
    fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        (**self).getattr(ino)
    }
    fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
        (**self).lookup(parent, name)
    }
    fn readdir(&self, ino: Ino) -> FsResult<Vec<DirEntry>> {
        (**self).readdir(ino)
    }
    fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        (**self).readlink(ino)
    }
    fn read(&self, ino: Ino, off: u64, size: u32) -> FsResult<Vec<u8>> {
        (**self).read(ino, off, size)
    }
    fn xattrs(&self, ino: Ino) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        (**self).xattrs(ino)
    }
    fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Option<Vec<u8>>> {
        (**self).getxattr(ino, name)
    }
    fn statfs(&self) -> StatFs {
        (**self).statfs()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// 512-byte blocks holding `size` bytes.
pub(crate) fn blocks_of(size: u64) -> u64 {
    size.div_ceil(512)
}

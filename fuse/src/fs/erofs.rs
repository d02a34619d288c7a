//! [`ErofsTree`]: an EROFS image as a [`LayerTree`].
//!
//! Everything is read on demand through [`ErofsReader`]; nothing is held per inode. The image
//! already has whiteouts in overlayfs form (0:0 character devices, `trusted.overlay.opaque`),
//! so it is shown as it is. Over a chunk-indexed blob, use a
//! [`ChunkedImage`](lazypull_converter::erofs::chunk_index::ChunkedImage) as the reader's blob:
//! each chunk is verified as it is fetched.
//!
//! Inode numbers: FUSE wants the root at 1, EROFS numbers inodes by nid from 0. The mapping is
//! `nid + 1`, with the root's nid and nid 0 swapped, which keeps it a bijection.

use lazypull_converter::erofs::{format, ErofsReader, Inode, Nid};
use lazypull_converter::layer::EntryKind;
use lazypull_converter::BlobRead;

use super::tree::{blocks_of, Attr, DirEntry, FileKind, FsError, FsResult, Ino, LayerTree, StatFs};

/// An EROFS image as a [`LayerTree`].
pub struct ErofsTree<B: BlobRead> {
    reader: ErofsReader<B>,
    root: Nid,
    name: String,
}

impl<B: BlobRead> ErofsTree<B> {
    /// The tree of `reader`'s image, named `name` in log messages.
    pub fn new(reader: ErofsReader<B>, name: impl Into<String>) -> Self {
        ErofsTree {
            root: reader.root(),
            reader,
            name: name.into(),
        }
    }

    /// The reader the tree reads through.
    pub fn reader(&self) -> &ErofsReader<B> {
        &self.reader
    }

    /// The inode number of `nid`.
    pub fn ino_of(&self, nid: Nid) -> Ino {
        match nid {
            n if n == self.root => Ino::ROOT,
            Nid(0) => Ino(self.root.0 + 1),
            Nid(n) => Ino(n + 1),
        }
    }

    /// The nid of inode number `ino`.
    pub fn nid_of(&self, ino: Ino) -> FsResult<Nid> {
        match ino {
            Ino::ROOT => Ok(self.root),
            Ino(i) if i == self.root.0 + 1 => Ok(Nid(0)),
            Ino(0) => Err(FsError::NoInode(ino)),
            Ino(i) => Ok(Nid(i - 1)),
        }
    }

    fn inode(&self, ino: Ino) -> FsResult<Inode> {
        let nid = self.nid_of(ino)?;
        self.reader.inode(nid).map_err(|e| FsError::layer(ino, e))
    }

    fn dir(&self, ino: Ino) -> FsResult<Inode> {
        let inode = self.inode(ino)?;
        if inode.kind != EntryKind::Dir {
            return Err(FsError::NotDir(ino));
        }
        Ok(inode)
    }
}

fn kind_of(kind: EntryKind) -> FileKind {
    match kind {
        EntryKind::Dir => FileKind::Dir,
        EntryKind::Reg | EntryKind::Hardlink => FileKind::Reg,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::Char => FileKind::Char,
        EntryKind::Block => FileKind::Block,
        EntryKind::Fifo => FileKind::Fifo,
    }
}

/// The kind a dirent's file type byte names (unknown ones as regular files: `getattr` of the
/// inode tells the truth).
fn kind_of_dirent(file_type: u8) -> FileKind {
    match file_type {
        format::FT_DIR => FileKind::Dir,
        format::FT_CHRDEV => FileKind::Char,
        format::FT_BLKDEV => FileKind::Block,
        format::FT_FIFO => FileKind::Fifo,
        format::FT_SOCK => FileKind::Socket,
        format::FT_SYMLINK => FileKind::Symlink,
        _ => FileKind::Reg,
    }
}

impl<B: BlobRead> LayerTree for ErofsTree<B> {
    fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let i = self.inode(ino)?;
        let kind = if i.mode & libc::S_IFMT == libc::S_IFSOCK {
            FileKind::Socket
        } else {
            kind_of(i.kind)
        };
        Ok(Attr {
            ino,
            kind,
            perm: (i.mode & 0o7777) as u16,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            mtime: i.mtime,
            mtime_nsec: i.mtime_nsec,
            rdev: i.rdev,
            blocks: blocks_of(i.size),
        })
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
        let dir = self.dir(parent)?;
        let nid = self
            .reader
            .lookup(&dir, name)
            .map_err(|e| FsError::layer(parent, e))?;
        Ok(nid.map(|n| self.ino_of(n)))
    }

    fn readdir(&self, ino: Ino) -> FsResult<Vec<DirEntry>> {
        let dir = self.dir(ino)?;
        let raw = self
            .reader
            .read_dir(&dir)
            .map_err(|e| FsError::layer(ino, e))?;
        // `.` and `..` first: on disk they sort among the names (after `-x`, say).
        let (mut dots, rest): (Vec<_>, Vec<_>) = raw
            .into_iter()
            .map(|d| DirEntry {
                ino: self.ino_of(d.nid),
                kind: kind_of_dirent(d.file_type),
                name: d.name,
            })
            .partition(|d| d.name == b"." || d.name == b"..");
        dots.sort_by(|a, b| a.name.cmp(&b.name));
        dots.extend(rest);
        Ok(dots)
    }

    fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind != EntryKind::Symlink {
            return Err(FsError::WrongKind(ino, "not a symlink"));
        }
        self.reader
            .read_link(&inode)
            .map_err(|e| FsError::layer(ino, e))
    }

    fn read(&self, ino: Ino, off: u64, size: u32) -> FsResult<Vec<u8>> {
        let inode = self.inode(ino)?;
        match inode.kind {
            EntryKind::Reg => {}
            EntryKind::Dir => return Err(FsError::IsDir(ino)),
            _ => return Err(FsError::WrongKind(ino, "not a regular file")),
        }
        let len = inode.size.saturating_sub(off).min(u64::from(size));
        let mut buf = vec![0u8; len as usize];
        let n = self
            .reader
            .read(&inode, off, &mut buf)
            .map_err(|e| FsError::layer(ino, e))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn xattrs(&self, ino: Ino) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let inode = self.inode(ino)?;
        self.reader
            .xattrs(&inode)
            .map_err(|e| FsError::layer(ino, e))
    }

    fn statfs(&self) -> StatFs {
        let sb = self.reader.superblock();
        StatFs {
            blocks: u64::from(sb.blocks.get()),
            files: sb.inos.get(),
            block_size: self.reader.block_size() as u32,
            name_max: 255,
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

//! Inodes: compact (32 bytes) and extended (64 bytes), and where their xattrs and data live.

use zerocopy::FromBytes;

use super::{div_ceil_pow2, ErofsReader, Nid};
use crate::blob::BlobRead;
use crate::erofs::format::{self, InodeCompact, InodeExtended};
use crate::error::{Error, Result};
use crate::layer::EntryKind;

/// Longest symlink target accepted (Linux `PATH_MAX` less the NUL).
pub(super) const SYMLINK_MAX: u64 = 4095;

/// Chunk format bit of 48-bit block addresses (kernels ≥ 6.15).
const CHUNK_FORMAT_48BIT: u16 = 0x40;

/// An inode as read from the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub nid: Nid,
    /// Never [`EntryKind::Hardlink`]: hard links are dirents sharing a nid.
    pub kind: EntryKind,
    /// Full `st_mode`, file type bits included.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// `(major, minor)` of a device; `(0, 0)` for other kinds.
    pub rdev: (u32, u32),
    /// Byte offset of the inode in the image.
    pub(super) iloc: u64,
    /// 32 or 64.
    pub(super) isize: u64,
    /// Size of the inline xattr area right after the inode.
    pub(super) xattr_size: u64,
    pub(super) data: DataLayout,
}

/// Where an inode's data lives (checked against the image when the inode is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DataLayout {
    /// No data: devices, FIFOs, and empty flat files.
    None,
    /// `blocks` whole blocks from `startblk`, then (`FLAT_INLINE`) `tail_len` bytes at `tail`.
    Flat {
        startblk: u64,
        blocks: u64,
        tail: u64,
        tail_len: u64,
    },
    /// A table of `count` entries at `table`, each `entry_size` (4: block map; 8: index)
    /// bytes, mapping chunks of `2^chunkbits` bytes.
    Chunked {
        table: u64,
        count: u64,
        entry_size: u64,
        chunkbits: u8,
    },
    /// A compressed layout (1 or 3): metadata reads, data does not.
    Compressed(u16),
}

impl Inode {
    /// Offset just past the inode and its inline xattrs.
    pub(super) fn after_xattrs(&self) -> u64 {
        self.iloc + self.isize + self.xattr_size
    }
}

/// Decoded fields common to both inode versions.
struct Raw {
    format: u16,
    xattr_icount: u16,
    mode: u16,
    nlink: u32,
    size: u64,
    i_u: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
}

impl<B: BlobRead> ErofsReader<B> {
    /// The inode at `nid`, every offset it implies checked; errors carry no nid prefix.
    pub(super) fn read_inode(&self, nid: Nid) -> Result<Inode> {
        let image = self.blob.len();
        let iloc = nid
            .0
            .checked_mul(format::SLOT_SIZE)
            .and_then(|o| o.checked_add(self.meta_base))
            .filter(|&o| o.checked_add(format::SLOT_SIZE).is_some_and(|e| e <= image))
            .ok_or_else(|| {
                Error::format(format!(
                    "inode lies past the end of the image ({image} bytes)"
                ))
            })?;
        // One read covers either version: an extended inode is 64 bytes.
        let mut buf = [0u8; 64];
        let got = (image - iloc).min(64) as usize;
        self.blob.read_at(iloc, &mut buf[..got])?;
        let format_bits = u16::from_le_bytes([buf[0], buf[1]]);
        if format_bits >= 0x10 {
            return Err(Error::format(format!(
                "i_format {format_bits:#x} has unknown bits set"
            )));
        }
        let extended = format_bits & format::INODE_EXTENDED != 0;
        let isize = if extended { 64 } else { 32 };
        if got < isize as usize {
            return Err(Error::format(format!(
                "extended inode at byte {iloc} crosses the end of the image ({image} bytes)"
            )));
        }
        let raw = if extended {
            self.extended(&buf)?
        } else {
            self.compact(&buf[..32])?
        };

        let xattr_size = format::xattr_ibody_size(raw.xattr_icount);
        if raw.xattr_icount == 1 {
            return Err(Error::format(
                "xattr count 1 (a header without room for ids)",
            ));
        }
        let block = self.block_size();
        let in_block = iloc % block;
        if in_block + isize + xattr_size > block {
            return Err(Error::format(format!(
                "inode ({isize} bytes) with xattr count {} ({xattr_size} bytes) at byte \
                 {in_block} of its block crosses the block",
                raw.xattr_icount
            )));
        }

        let kind = kind_of(raw.mode)?;
        let rdev = match kind {
            EntryKind::Char | EntryKind::Block => format::decode_dev(raw.i_u),
            _ => (0, 0),
        };
        let mut inode = Inode {
            nid,
            kind,
            mode: raw.mode.into(),
            nlink: raw.nlink,
            uid: raw.uid,
            gid: raw.gid,
            size: raw.size,
            mtime: raw.mtime,
            mtime_nsec: raw.mtime_nsec,
            rdev,
            iloc,
            isize,
            xattr_size,
            data: DataLayout::None,
        };
        if kind == EntryKind::Symlink && raw.size > SYMLINK_MAX {
            return Err(Error::format(format!(
                "symlink target of {} bytes is longer than {SYMLINK_MAX}",
                raw.size
            )));
        }
        if matches!(kind, EntryKind::Dir | EntryKind::Reg | EntryKind::Symlink) {
            inode.data = self.data_layout(&inode, raw.format, raw.i_u)?;
        }
        Ok(inode)
    }

    fn compact(&self, buf: &[u8]) -> Result<Raw> {
        let c = InodeCompact::read_from_bytes(buf).expect("32-byte buffer");
        // Kernels ≥ 6.15 add `i_mtime` to the build time; older images store 0 there.
        let mtime = i64::try_from(self.sb.build_time.get())
            .ok()
            .and_then(|t| t.checked_add(c.i_mtime.get().into()))
            .ok_or_else(|| Error::format("build time plus mtime overflows"))?;
        Ok(Raw {
            format: c.i_format.get(),
            xattr_icount: c.i_xattr_icount.get(),
            mode: c.i_mode.get(),
            nlink: c.i_nlink.get().into(),
            size: c.i_size.get().into(),
            i_u: c.i_u.get(),
            uid: c.i_uid.get().into(),
            gid: c.i_gid.get().into(),
            mtime,
            mtime_nsec: check_nsec(self.sb.build_time_nsec.get())?,
        })
    }

    fn extended(&self, buf: &[u8]) -> Result<Raw> {
        let e = InodeExtended::read_from_bytes(buf).expect("64-byte buffer");
        if e.i_nb.get() != 0 {
            return Err(Error::format(format!(
                "extended inode field i_nb is {} (must be 0)",
                e.i_nb.get()
            )));
        }
        Ok(Raw {
            format: e.i_format.get(),
            xattr_icount: e.i_xattr_icount.get(),
            mode: e.i_mode.get(),
            nlink: e.i_nlink.get(),
            size: e.i_size.get(),
            i_u: e.i_u.get(),
            uid: e.i_uid.get(),
            gid: e.i_gid.get(),
            // The kernel reads the field as signed seconds.
            mtime: e.i_mtime.get() as i64,
            mtime_nsec: check_nsec(e.i_mtime_nsec.get())?,
        })
    }

    /// Where the data of a directory, regular file or symlink lives; every byte of it (or of
    /// its chunk table) must lie inside the image.
    fn data_layout(&self, inode: &Inode, format_bits: u16, i_u: u32) -> Result<DataLayout> {
        let image = self.blob.len();
        let bits = self.blkbits;
        let size = inode.size;
        let layout = format::i_format_layout(format_bits);
        let flat = matches!(
            layout,
            format::LAYOUT_FLAT_PLAIN | format::LAYOUT_FLAT_INLINE
        );
        if inode.kind != EntryKind::Reg && !flat {
            // Keeps directory and symlink data inside the image, never amplified by chunks.
            return Err(Error::format(format!(
                "a {:?} inode with data layout {layout}",
                inode.kind
            )));
        }
        match layout {
            format::LAYOUT_FLAT_PLAIN | format::LAYOUT_FLAT_INLINE => {
                if size == 0 {
                    return Ok(DataLayout::None);
                }
                let all = div_ceil_pow2(size, bits);
                let (blocks, tail_len) = if layout == format::LAYOUT_FLAT_INLINE {
                    // The last block, full or partial, is stored inline.
                    (all - 1, size - ((all - 1) << bits))
                } else {
                    (all, 0)
                };
                let startblk = u64::from(i_u);
                if blocks > 0 {
                    let end = (startblk << bits)
                        .checked_add(size - tail_len)
                        .filter(|&e| e <= image);
                    if i_u == format::NULL_ADDR || end.is_none() {
                        return Err(Error::format(format!(
                            "data of {size} bytes at block {startblk} lies past the end of \
                             the image ({image} bytes)"
                        )));
                    }
                }
                let tail = inode.after_xattrs();
                if tail_len > 0 {
                    let block = self.block_size();
                    if tail % block + tail_len > block {
                        return Err(Error::format(format!(
                            "inline data of {tail_len} bytes at byte {} of its block crosses \
                             the block",
                            tail % block
                        )));
                    }
                    if tail + tail_len > image {
                        return Err(Error::format(format!(
                            "inline data lies past the end of the image ({image} bytes)"
                        )));
                    }
                }
                Ok(DataLayout::Flat {
                    startblk,
                    blocks,
                    tail,
                    tail_len,
                })
            }
            format::LAYOUT_CHUNK_BASED => {
                let chunk_format = i_u as u16;
                if chunk_format & CHUNK_FORMAT_48BIT != 0 {
                    return Err(Error::Unsupported("48-bit chunk indexes".into()));
                }
                if (i_u >> 16) != 0 || chunk_format & !0x3f != 0 {
                    return Err(Error::format(format!("bad chunk format {i_u:#x}")));
                }
                let indexes = chunk_format & format::CHUNK_FORMAT_INDEXES != 0;
                let chunkbits = bits + (chunk_format & format::CHUNK_FORMAT_BLKBITS_MASK) as u8;
                let entry_size: u64 = if indexes { 8 } else { 4 };
                let count = div_ceil_pow2(size, chunkbits);
                let table = inode.after_xattrs().next_multiple_of(entry_size);
                let fits = count
                    .checked_mul(entry_size)
                    .and_then(|n| n.checked_add(table))
                    .is_some_and(|end| end <= image);
                if !fits {
                    return Err(Error::format(format!(
                        "chunk table of {count} entries for {size} bytes lies past the end of \
                         the image ({image} bytes)"
                    )));
                }
                Ok(DataLayout::Chunked {
                    table,
                    count,
                    entry_size,
                    chunkbits,
                })
            }
            1 | 3 => Ok(DataLayout::Compressed(layout)),
            other => Err(Error::format(format!("unknown data layout {other}"))),
        }
    }
}

fn kind_of(mode: u16) -> Result<EntryKind> {
    Ok(match mode & format::S_IFMT {
        format::S_IFDIR => EntryKind::Dir,
        format::S_IFREG => EntryKind::Reg,
        format::S_IFLNK => EntryKind::Symlink,
        format::S_IFCHR => EntryKind::Char,
        format::S_IFBLK => EntryKind::Block,
        format::S_IFIFO => EntryKind::Fifo,
        format::S_IFSOCK => return Err(Error::Unsupported("socket inodes".into())),
        other => return Err(Error::format(format!("unknown file type {other:#o}"))),
    })
}

fn check_nsec(nsec: u32) -> Result<u32> {
    if nsec >= 1_000_000_000 {
        return Err(Error::format(format!(
            "mtime nanoseconds {nsec} out of range"
        )));
    }
    Ok(nsec)
}

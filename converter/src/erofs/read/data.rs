//! File data: flat layouts (blocks, then an inline tail) and chunk-based ones (a block map or
//! an index per chunk, holes reading as zeros). Compressed layouts and extra devices are
//! recognised and refused.

use zerocopy::FromBytes;

use super::inode::{DataLayout, Inode, SYMLINK_MAX};
use super::ErofsReader;
use crate::blob::BlobRead;
use crate::erofs::format::{self, ChunkIndexEntry};
use crate::error::{Error, Result};
use crate::layer::EntryKind;

/// A contiguous piece of a file: `len` bytes at image offset `at`, or a hole.
struct Extent {
    at: Option<u64>,
    len: u64,
}

impl<B: BlobRead> ErofsReader<B> {
    /// [`ErofsReader::read`] without the nid prefix on errors.
    pub(super) fn read_data(&self, inode: &Inode, off: u64, buf: &mut [u8]) -> Result<usize> {
        if !matches!(
            inode.kind,
            EntryKind::Reg | EntryKind::Dir | EntryKind::Symlink
        ) {
            return Err(Error::Invalid(format!(
                "a {:?} inode has no data to read",
                inode.kind
            )));
        }
        if off >= inode.size {
            return Ok(0);
        }
        // Bounded by `buf`, whatever the inode claims.
        let want = (inode.size - off).min(buf.len() as u64) as usize;
        let mut done = 0;
        while done < want {
            let pos = off + done as u64;
            let extent = self.map(inode, pos)?;
            let n = extent.len.min((want - done) as u64) as usize;
            let dst = &mut buf[done..done + n];
            match extent.at {
                Some(at) => self.blob.read_at(at, dst)?,
                None => dst.fill(0),
            }
            done += n;
        }
        Ok(want)
    }

    /// The extent holding byte `pos` (< size) of the file; its length is never 0.
    fn map(&self, inode: &Inode, pos: u64) -> Result<Extent> {
        let bits = self.blkbits;
        match inode.data {
            DataLayout::None => Err(Error::format(format!(
                "{} bytes of data but no data location",
                inode.size
            ))),
            DataLayout::Flat {
                startblk,
                blocks,
                tail,
                tail_len: _,
            } => {
                let in_blocks = blocks << bits;
                Ok(if pos < in_blocks {
                    Extent {
                        at: Some((startblk << bits) + pos),
                        len: in_blocks - pos,
                    }
                } else {
                    Extent {
                        at: Some(tail + (pos - in_blocks)),
                        len: inode.size - pos,
                    }
                })
            }
            DataLayout::Chunked {
                table,
                count,
                entry_size,
                chunkbits,
            } => {
                let k = pos >> chunkbits;
                if k >= count {
                    return Err(Error::format(format!(
                        "offset {pos} is past the chunk table's {count} entries"
                    )));
                }
                let start = k << chunkbits;
                let chunk_len = (1u64 << chunkbits).min(inode.size - start);
                let within = pos - start;
                let len = chunk_len - within;
                let Some(blk) = self.chunk_block(table + k * entry_size, entry_size, k)? else {
                    return Ok(Extent { at: None, len });
                };
                let base = blk << bits;
                if base + chunk_len > self.blob.len() {
                    return Err(Error::format(format!(
                        "chunk {k} at block {blk} lies past the end of the image ({} bytes)",
                        self.blob.len()
                    )));
                }
                Ok(Extent {
                    at: Some(base + within),
                    len,
                })
            }
            DataLayout::Compressed(layout) => Err(Error::Unsupported(format!(
                "compressed data (layout {layout})"
            ))),
        }
    }

    /// The start block of chunk `k` from its table entry at `at`; `None` for a hole.
    fn chunk_block(&self, at: u64, entry_size: u64, k: u64) -> Result<Option<u64>> {
        let mut raw = [0u8; 8];
        let raw = &mut raw[..entry_size as usize];
        self.blob.read_at(at, raw)?;
        let blk = if entry_size == 4 {
            u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])
        } else {
            let e = ChunkIndexEntry::read_from_bytes(raw).expect("8-byte buffer");
            if e.startblk_hi.get() != 0 {
                return Err(Error::format(format!(
                    "chunk {k}: startblk_hi {} without 48-bit addresses",
                    e.startblk_hi.get()
                )));
            }
            if e.startblk_lo.get() != format::NULL_ADDR && e.device_id.get() != 0 {
                return Err(Error::Unsupported(format!(
                    "chunk {k} on device {} (only the primary device is read)",
                    e.device_id.get()
                )));
            }
            e.startblk_lo.get()
        };
        Ok((blk != format::NULL_ADDR).then_some(u64::from(blk)))
    }

    /// [`ErofsReader::read_link`] without the nid prefix on errors.
    pub(super) fn link_target(&self, inode: &Inode) -> Result<Vec<u8>> {
        if inode.kind != EntryKind::Symlink {
            return Err(Error::Invalid(format!(
                "a {:?} inode is not a symlink",
                inode.kind
            )));
        }
        // `read_inode` already refuses longer targets; `size` is a public field, though.
        let mut target = vec![0u8; inode.size.min(SYMLINK_MAX) as usize];
        let n = self.read_data(inode, 0, &mut target)?;
        target.truncate(n);
        Ok(target)
    }
}

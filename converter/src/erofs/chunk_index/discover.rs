//! Finding the chunk index at the end of a blob that comes without annotations (a bare URL or
//! file): the index section is the blob's last bytes, so its header sits exactly
//! `32 + count × entry length` bytes before the end, and names that `count` itself.
//!
//! Nothing found here is trusted: the caller reads it with [`super::read_embedded_index`],
//! which checks the payload against the digest the user gave before using a byte of it.

use zerocopy::FromBytes;

use super::HEADER_LEN;
use crate::blob::BlobRead;
use crate::erofs::format::{
    ChunkIndexHeader, CHUNK_COMPRESSION_NONE, CHUNK_COMPRESSION_ZSTD, CHUNK_INDEX_MAGIC,
    ZSTD_SKIPPABLE_HEADER_SIZE, ZSTD_SKIPPABLE_MAGIC_FIRST, ZSTD_SKIPPABLE_MAGIC_LAST,
};
use crate::error::Result;

/// Where a trailing index was found: the section's start (the skippable frame for `+zstd`), and
/// whether the layer is zstd-framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrailingIndex {
    pub start: u64,
    pub zstd: bool,
}

/// Tail sizes read in turn: one small read finds the index of images up to about 1.3 GiB at
/// 1 MiB chunks, a second one up to 87,000 chunks. Larger indexes need the range annotation: a
/// blob that is no layer at all should not cost more than this to refuse.
const TAILS: [u64; 2] = [64 << 10, 4 << 20];

/// Entry lengths version 1 allows: no checksum, SHA-256, SHA-512.
const ENTRY_LENS: [u64; 3] = [16, 48, 80];

/// Look for a chunk index ending the blob (within its last 4 MiB). `Ok(None)` when there is
/// none (say, an eStargz blob).
pub fn find_trailing_index<B: BlobRead + ?Sized>(blob: &B) -> Result<Option<TrailingIndex>> {
    let len = blob.len();
    let mut read = 0;
    for tail_len in TAILS.map(|t| t.min(len)) {
        if tail_len <= read {
            break;
        }
        let tail = blob.read_vec(len - tail_len, tail_len)?;
        match scan(&tail) {
            Scan::Found(found) => {
                return Ok(Some(TrailingIndex {
                    start: len - tail_len + found.start,
                    zstd: found.zstd,
                }))
            }
            // A header where one belongs, counting other entries than follow it: a corrupt
            // index, not a blob without one (which would only get a confusing eStargz error).
            Scan::Miscounted { at, said, found } => {
                return Err(super::corrupt(format_args!(
                    "the header at offset {} counts {said} chunks, but {found} entries follow it",
                    len - tail_len + at
                )))
            }
            _ => {}
        }
        read = tail_len;
    }
    Ok(None)
}

enum Scan {
    Found(TrailingIndex),
    /// No consistent index, but an index header at `at` whose count `said` is not the `found`
    /// entries between it and the end.
    Miscounted {
        at: u64,
        said: u32,
        found: u64,
    },
    None,
}

/// The index ending `tail`, its start relative to `tail`.
fn scan(tail: &[u8]) -> Scan {
    let end = tail.len() as u64;
    let mut miscounted = Scan::None;
    for entry_len in ENTRY_LENS {
        let mut count = 0u64;
        while let Some(at) = end.checked_sub(HEADER_LEN + count * entry_len) {
            match header_at(tail, at, count, entry_len) {
                found @ Scan::Found(_) => return found,
                m @ Scan::Miscounted { .. } if matches!(miscounted, Scan::None) => miscounted = m,
                _ => {}
            }
            count += 1;
        }
    }
    miscounted
}

/// What the bytes at `at` are: an index header of entries of `entry_len` bytes counting the
/// `count` entries up to the end of `tail`, one counting others, or no header.
fn header_at(tail: &[u8], at: u64, count: u64, entry_len: u64) -> Scan {
    let Some((header, _)) = usize::try_from(at)
        .ok()
        .and_then(|at| tail.get(at..))
        .and_then(|b| ChunkIndexHeader::read_from_prefix(b).ok())
    else {
        return Scan::None;
    };
    if header.magic != CHUNK_INDEX_MAGIC || 16 + u64::from(header.hash_size) != entry_len {
        return Scan::None;
    }
    let said = header.num_chunks.get();
    if u64::from(said) != count {
        let known =
            [CHUNK_COMPRESSION_NONE, CHUNK_COMPRESSION_ZSTD].contains(&header.compression_type);
        return if known {
            Scan::Miscounted {
                at,
                said,
                found: count,
            }
        } else {
            Scan::None
        };
    }
    let found = match header.compression_type {
        CHUNK_COMPRESSION_NONE => Some(TrailingIndex {
            start: at,
            zstd: false,
        }),
        CHUNK_COMPRESSION_ZSTD => zstd_section(tail, at),
        _ => None,
    };
    found.map_or(Scan::None, Scan::Found)
}

/// The `+zstd` index section: the skippable frame whose payload is the index at `at`.
fn zstd_section(tail: &[u8], at: u64) -> Option<TrailingIndex> {
    let frame = at.checked_sub(ZSTD_SKIPPABLE_HEADER_SIZE)?;
    let f = usize::try_from(frame).ok()?;
    let magic = u32::from_le_bytes(tail.get(f..f + 4)?.try_into().ok()?);
    let size = u32::from_le_bytes(tail.get(f + 4..f + 8)?.try_into().ok()?);
    let payload = tail.len() as u64 - at;
    ((ZSTD_SKIPPABLE_MAGIC_FIRST..=ZSTD_SKIPPABLE_MAGIC_LAST).contains(&magic)
        && u64::from(size) == payload)
        .then_some(TrailingIndex {
            start: frame,
            zstd: true,
        })
}

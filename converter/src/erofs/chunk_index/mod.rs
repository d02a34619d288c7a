//! The erofs-image-spec chunk index (spec §3.4) and the blob wrapping built around it.
//!
//! - [`ChunkIndex`]: a parsed index, every rule of §3.4 checked; [`ChunkIndex::to_bytes`] writes
//!   it back byte for byte.
//! - [`read_embedded_index`]: locates the index a layer blob carries (from the
//!   `org.erofs.chunk-index.range` annotation, see [`parse_range_annotation`]), checks the frame
//!   and the payload digest, then parses it.
//! - [`find_trailing_index`]: finds the index of a blob that comes without annotations.
//! - [`ChunkedImage`]: the uncompressed image as a [`BlobRead`], fetching, verifying and
//!   decompressing one chunk per read of the blob.
//! - [`ChunkedWriter`] (feature `write`): cuts an image stream into chunks, one zstd frame each,
//!   and appends the index; [`WrappedBlob`] says what was written and gives the annotations.
//!
//! A blob lazypull writes (`+zstd`): `frame 0 | frame 1 | … | frame N-1 | skippable
//! frame(index)`, each chunk exactly one frame (§3.3), so the index frame is not padded to a
//! 4-byte boundary (a SHOULD of §3.4.3 that would put a padding frame inside the last chunk's
//! bytes). Raw blobs (`CompressionType` 0) are the image bytes followed by the bare index.

use std::ops::Range;

use zerocopy::{FromBytes, IntoBytes};

use crate::blob::BlobRead;
use crate::digest::Digest;
use crate::erofs::format::{
    ChunkEntryHead, ChunkIndexHeader, CHUNK_COMPRESSION_NONE, CHUNK_COMPRESSION_ZSTD,
    CHUNK_HASH_NONE, CHUNK_HASH_SHA2, CHUNK_HASH_SIZE_SHA256, CHUNK_HASH_SIZE_SHA512,
    CHUNK_INDEX_MAGIC, CHUNK_INDEX_VERSION, ZSTD_SKIPPABLE_HEADER_SIZE, ZSTD_SKIPPABLE_MAGIC_FIRST,
    ZSTD_SKIPPABLE_MAGIC_LAST,
};
use crate::error::{Error, Result, ResultExt};

mod discover;
mod image;
#[cfg(all(test, feature = "write"))]
mod tests;
#[cfg(feature = "write")]
mod wrap;

pub use discover::{find_trailing_index, TrailingIndex};
pub use image::{ChunkStore, ChunkedImage, MAX_CHUNK_LEN};
#[cfg(feature = "write")]
pub use wrap::{ChunkedWriter, WrappedBlob};

/// The largest index section [`read_embedded_index`] reads: 64 MiB holds 1.4 million SHA-256
/// entries, over a TiB of image at 1 MiB chunks.
pub const MAX_INDEX_LEN: u64 = 64 << 20;

const HEADER_LEN: u64 = size_of::<ChunkIndexHeader>() as u64;
const ENTRY_HEAD_LEN: u64 = size_of::<ChunkEntryHead>() as u64;

/// A parsed, validated chunk index (spec §3.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkIndex {
    /// `CompressionType`: [`CHUNK_COMPRESSION_NONE`] or [`CHUNK_COMPRESSION_ZSTD`].
    pub compression: u8,
    /// `UncompressedSize`: bytes of image data the chunks cover.
    pub uncompressed_size: u64,
    /// `HashSize`: 0 (no checksums) or 32 (SHA-256).
    pub hash_size: u8,
    entries: Vec<ChunkEntry>,
}

/// One chunk of a [`ChunkIndex`] (spec §3.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Where the chunk's bytes (its zstd frame, for compression type 1) start in the blob.
    pub block_offset: u64,
    /// Where the chunk starts in the uncompressed image.
    pub uncompressed_offset: u64,
    /// SHA-256 of the chunk's on-blob bytes, when the index carries checksums.
    pub checksum: Option<[u8; 32]>,
}

fn corrupt(msg: impl std::fmt::Display) -> Error {
    Error::format(format!("corrupt chunk index: {msg}"))
}

fn unreadable(msg: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!(
        "unreadable chunk index: {msg}; fall back to sequential reads"
    ))
}

impl ChunkIndex {
    /// Parse the payload (header and entries, no frame header) of an index whose section starts
    /// at `index_start` in the blob it indexes, checking every rule of §3.4.
    ///
    /// For a standalone index layer, `index_start` is the size of the layer it indexes. Unknown
    /// compression types, flags, versions or hash algorithms give [`Error::Unsupported`] (the
    /// caller falls back to sequential reads); anything else malformed gives [`Error::Format`].
    pub fn parse(payload: &[u8], index_start: u64) -> Result<Self> {
        let (header, body) = ChunkIndexHeader::read_from_prefix(payload).map_err(|_| {
            corrupt(format_args!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                payload.len()
            ))
        })?;
        if header.magic != CHUNK_INDEX_MAGIC {
            return Err(corrupt(format_args!("bad magic {:02x?}", header.magic)));
        }
        if header.version != CHUNK_INDEX_VERSION {
            return Err(unreadable(format_args!(
                "version {} (only {CHUNK_INDEX_VERSION} is known)",
                header.version
            )));
        }
        let compression = header.compression_type;
        if compression != CHUNK_COMPRESSION_NONE && compression != CHUNK_COMPRESSION_ZSTD {
            return Err(unreadable(format_args!("compression type {compression}")));
        }
        if header.flags.get() != 0 {
            return Err(unreadable(format_args!(
                "flags {:#06x} (none are defined in version 1)",
                header.flags.get()
            )));
        }
        if header.reserved != [0; 10] {
            return Err(corrupt("reserved header bytes are not zero"));
        }
        let hash_size = check_hash(header.hash_algo, header.hash_size)?;
        let uncompressed_size = header.uncompressed_size.get();
        let count = header.num_chunks.get() as u64;
        let entry_len = ENTRY_HEAD_LEN + hash_size as u64;
        let expected = HEADER_LEN + count * entry_len;
        if payload.len() as u64 != expected {
            return Err(corrupt(format_args!(
                "payload is {} bytes, but {count} entries of {entry_len} bytes need {expected}",
                payload.len()
            )));
        }
        if count == 0 && uncompressed_size != 0 {
            return Err(corrupt(format_args!(
                "no chunks cover the {uncompressed_size} bytes of image data"
            )));
        }
        let mut entries: Vec<ChunkEntry> = Vec::with_capacity(count as usize);
        for (i, raw) in body.chunks_exact(entry_len as usize).enumerate() {
            let (head, sum) = ChunkEntryHead::read_from_prefix(raw)
                .map_err(|_| corrupt(format_args!("entry {i} is truncated")))?;
            let entry = ChunkEntry {
                block_offset: head.block_offset.get(),
                uncompressed_offset: head.uncompressed_offset.get(),
                checksum: sum.try_into().ok(),
            };
            check_entry(i, &entry, entries.last(), compression, uncompressed_size)?;
            if entry.block_offset >= index_start {
                return Err(corrupt(format_args!(
                    "entry {i}: block offset {} is not before the index at {index_start}",
                    entry.block_offset
                )));
            }
            entries.push(entry);
        }
        let index = ChunkIndex {
            compression,
            uncompressed_size,
            hash_size,
            entries,
        };
        if compression == CHUNK_COMPRESSION_NONE {
            // Raw chunks are as long on the blob as in the image, and all before the index.
            for i in 0..index.entries.len() {
                let e = &index.entries[i];
                let len = index.uncompressed_end(i) - e.uncompressed_offset;
                match e.block_offset.checked_add(len) {
                    Some(end) if end <= index_start => {}
                    _ => {
                        return Err(corrupt(format_args!(
                            "entry {i}: raw chunk of {len} bytes at {} runs past the index at \
                             {index_start}",
                            e.block_offset
                        )))
                    }
                }
            }
        }
        Ok(index)
    }

    /// The payload bytes (header and entries), as [`ChunkIndex::parse`] reads them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = ChunkIndexHeader {
            magic: CHUNK_INDEX_MAGIC,
            version: CHUNK_INDEX_VERSION,
            compression_type: self.compression,
            flags: 0.into(),
            uncompressed_size: self.uncompressed_size.into(),
            num_chunks: (self.entries.len() as u32).into(),
            hash_algo: if self.hash_size == 0 {
                CHUNK_HASH_NONE
            } else {
                CHUNK_HASH_SHA2
            },
            hash_size: self.hash_size,
            reserved: [0; 10],
        };
        let entry_len = ENTRY_HEAD_LEN as usize + self.hash_size as usize;
        let mut out = Vec::with_capacity(HEADER_LEN as usize + self.entries.len() * entry_len);
        out.extend_from_slice(header.as_bytes());
        for e in &self.entries {
            let head = ChunkEntryHead {
                block_offset: e.block_offset.into(),
                uncompressed_offset: e.uncompressed_offset.into(),
            };
            out.extend_from_slice(head.as_bytes());
            if self.hash_size != 0 {
                out.extend_from_slice(&e.checksum.unwrap_or([0; 32]));
            }
        }
        out
    }

    /// The chunks, in image order.
    pub fn entries(&self) -> &[ChunkEntry] {
        &self.entries
    }

    /// Chunk `i`'s on-blob `[start, end)` and uncompressed `[start, end)`, for an index whose
    /// section starts at `index_start`. Panics if `i` is not a chunk.
    pub fn chunk_ranges(&self, i: usize, index_start: u64) -> (Range<u64>, Range<u64>) {
        let e = &self.entries[i];
        let uncompressed = e.uncompressed_offset..self.uncompressed_end(i);
        let blob_end = if self.compression == CHUNK_COMPRESSION_ZSTD {
            self.entries
                .get(i + 1)
                .map_or(index_start, |next| next.block_offset)
        } else {
            let len = uncompressed.end.saturating_sub(uncompressed.start);
            e.block_offset.saturating_add(len)
        };
        (e.block_offset..blob_end, uncompressed)
    }

    /// The chunks covering uncompressed `[off, off+len)`, clamped to the image.
    pub fn chunks_for(&self, off: u64, len: u64) -> Range<usize> {
        let end = off.saturating_add(len).min(self.uncompressed_size);
        if off >= end {
            return 0..0;
        }
        let first = self
            .entries
            .partition_point(|e| e.uncompressed_offset <= off)
            .saturating_sub(1);
        let last = self
            .entries
            .partition_point(|e| e.uncompressed_offset < end);
        first..last
    }

    /// Where chunk `i` ends in the uncompressed image.
    fn uncompressed_end(&self, i: usize) -> u64 {
        self.entries
            .get(i + 1)
            .map_or(self.uncompressed_size, |next| next.uncompressed_offset)
    }
}

/// The checksum size for `HashAlgo`/`HashSize`, refusing what this crate cannot verify.
fn check_hash(algo: u8, size: u8) -> Result<u8> {
    match (algo, size) {
        (CHUNK_HASH_NONE, 0) => Ok(0),
        (CHUNK_HASH_NONE, n) => Err(corrupt(format_args!(
            "hash size {n} without a hash algorithm"
        ))),
        (CHUNK_HASH_SHA2, CHUNK_HASH_SIZE_SHA256) => Ok(CHUNK_HASH_SIZE_SHA256),
        (CHUNK_HASH_SHA2, CHUNK_HASH_SIZE_SHA512) => {
            Err(unreadable("SHA-512 checksums (only SHA-256 is verified)"))
        }
        (CHUNK_HASH_SHA2, n) => Err(corrupt(format_args!(
            "SHA-2 checksums of {n} bytes (32 or 64 are defined)"
        ))),
        (a, _) => Err(unreadable(format_args!("hash algorithm {a}"))),
    }
}

/// Checks entry `i` against the one before it.
fn check_entry(
    i: usize,
    e: &ChunkEntry,
    prev: Option<&ChunkEntry>,
    compression: u8,
    uncompressed_size: u64,
) -> Result<()> {
    let (uo, bo) = (e.uncompressed_offset, e.block_offset);
    match prev {
        None if uo != 0 => {
            return Err(corrupt(format_args!(
                "entry 0: uncompressed offset {uo}, not 0"
            )))
        }
        Some(p) if uo <= p.uncompressed_offset => {
            return Err(corrupt(format_args!(
                "entry {i}: uncompressed offset {uo} does not follow the previous entry's {}",
                p.uncompressed_offset
            )))
        }
        // zstd chunks are back-to-back frames, each at least a frame header long.
        Some(p)
            if bo < p.block_offset
                || (compression == CHUNK_COMPRESSION_ZSTD && bo == p.block_offset) =>
        {
            return Err(corrupt(format_args!(
                "entry {i}: block offset {bo} does not follow the previous entry's {}",
                p.block_offset
            )))
        }
        _ => {}
    }
    if uo >= uncompressed_size {
        return Err(corrupt(format_args!(
            "entry {i}: uncompressed offset {uo} is not inside the {uncompressed_size}-byte image"
        )));
    }
    Ok(())
}

/// Parse a `range` annotation value: `offset[:end]`, decimal digits only (§2.3).
pub fn parse_range_annotation(s: &str) -> Result<(u64, Option<u64>)> {
    let bad = |why: &str| Error::format(format!("chunk-index range `{s}`: {why}"));
    let number = |part: &str| -> Result<u64> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected offset[:end] in decimal digits"));
        }
        part.parse().map_err(|_| bad("number out of range"))
    };
    match s.split_once(':') {
        None => Ok((number(s)?, None)),
        Some((start, end)) => {
            let (start, end) = (number(start)?, number(end)?);
            if end <= start {
                return Err(bad("end is not after offset"));
            }
            Ok((start, Some(end)))
        }
    }
}

/// Locate, verify and parse the index embedded in `blob`.
///
/// `range` is the parsed `org.erofs.chunk-index.range` (a missing end means the blob's end). For
/// a `+zstd` layer (`zstd`) the range must hold exactly one skippable frame whose payload is the
/// index; for a raw layer it holds the bare index. `expected_digest` (from
/// `org.erofs.chunk-index.digest`) is checked against the payload before parsing. The index's
/// compression type must match the layer's. Returns the index and where its section starts.
pub fn read_embedded_index<B: BlobRead>(
    blob: &B,
    zstd: bool,
    range: (u64, Option<u64>),
    expected_digest: Option<&Digest>,
) -> Result<(ChunkIndex, u64)> {
    let (start, end) = (range.0, range.1.unwrap_or(blob.len()));
    let what = format!("chunk index at blob [{start}, {end})");
    if start >= end || end > blob.len() {
        return Err(
            Error::format(format!("not a range of the {}-byte blob", blob.len())).context(what),
        );
    }
    let len = end - start;
    if len > MAX_INDEX_LEN {
        return Err(Error::Unsupported(format!(
            "{what}: {len} bytes, more than the {MAX_INDEX_LEN} this reader accepts"
        )));
    }
    let section = blob.read_vec(start, len).context(&what)?;
    let payload = if zstd {
        let frame_err = |msg: String| Error::format(msg).context(&what);
        if len < ZSTD_SKIPPABLE_HEADER_SIZE {
            return Err(frame_err(format!(
                "{len} bytes, too short for a skippable frame"
            )));
        }
        let magic = u32::from_le_bytes(section[..4].try_into().unwrap());
        if !(ZSTD_SKIPPABLE_MAGIC_FIRST..=ZSTD_SKIPPABLE_MAGIC_LAST).contains(&magic) {
            return Err(frame_err(format!(
                "magic {magic:#010x} is not a zstd skippable frame's"
            )));
        }
        let frame_len = u32::from_le_bytes(section[4..8].try_into().unwrap()) as u64;
        if frame_len != len - ZSTD_SKIPPABLE_HEADER_SIZE {
            return Err(frame_err(format!(
                "skippable frame holds {frame_len} bytes, the range {}",
                len - ZSTD_SKIPPABLE_HEADER_SIZE
            )));
        }
        &section[ZSTD_SKIPPABLE_HEADER_SIZE as usize..]
    } else {
        &section[..]
    };
    if let Some(expected) = expected_digest {
        let actual = Digest::of(payload);
        if actual != *expected {
            return Err(Error::DigestMismatch {
                what,
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    let index = ChunkIndex::parse(payload, start).context(&what)?;
    let want = if zstd {
        CHUNK_COMPRESSION_ZSTD
    } else {
        CHUNK_COMPRESSION_NONE
    };
    if index.compression != want {
        return Err(Error::format(format!(
            "{what}: compression type {} contradicts the layer's media type ({})",
            index.compression,
            if zstd { "+zstd" } else { "raw" }
        )));
    }
    Ok((index, start))
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    /// A valid zstd index of three chunks before an index at 300.
    fn sample() -> (ChunkIndex, u64) {
        let entries = vec![
            ChunkEntry {
                block_offset: 0,
                uncompressed_offset: 0,
                checksum: Some([1; 32]),
            },
            ChunkEntry {
                block_offset: 100,
                uncompressed_offset: 1000,
                checksum: Some([2; 32]),
            },
            ChunkEntry {
                block_offset: 200,
                uncompressed_offset: 2000,
                checksum: Some([3; 32]),
            },
        ];
        let index = ChunkIndex {
            compression: CHUNK_COMPRESSION_ZSTD,
            uncompressed_size: 2500,
            hash_size: 32,
            entries,
        };
        (index, 300)
    }

    fn set_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Offset of entry `i`'s field `field` (0: block, 8: uncompressed) in a SHA-256 payload.
    fn entry_at(i: usize, field: usize) -> usize {
        32 + i * 48 + field
    }

    #[test]
    fn round_trips_and_maps_ranges() {
        let (index, start) = sample();
        let bytes = index.to_bytes();
        assert_eq!(bytes.len(), 32 + 3 * 48);
        let parsed = ChunkIndex::parse(&bytes, start).unwrap();
        assert_eq!(parsed, index);
        assert_eq!(parsed.chunk_ranges(0, start), (0..100, 0..1000));
        assert_eq!(parsed.chunk_ranges(2, start), (200..300, 2000..2500));
        assert_eq!(parsed.chunks_for(0, 1), 0..1);
        assert_eq!(parsed.chunks_for(999, 2), 0..2);
        assert_eq!(parsed.chunks_for(1000, 1000), 1..2);
        assert_eq!(parsed.chunks_for(1500, 10_000), 1..3);
        assert_eq!(parsed.chunks_for(2500, 1), 0..0);
        assert_eq!(parsed.chunks_for(5, 0), 0..0);
    }

    #[test]
    fn empty_index_is_valid() {
        let index = ChunkIndex {
            compression: CHUNK_COMPRESSION_ZSTD,
            uncompressed_size: 0,
            hash_size: 32,
            entries: vec![],
        };
        let parsed = ChunkIndex::parse(&index.to_bytes(), 0).unwrap();
        assert!(parsed.entries().is_empty());
        assert_eq!(parsed.chunks_for(0, 10), 0..0);
        // ...but not when it claims data no chunk covers.
        let mut bytes = index.to_bytes();
        set_u64(&mut bytes, 8, 1);
        assert!(ChunkIndex::parse(&bytes, 0).is_err());
    }

    #[test]
    fn every_rule_of_3_4_is_checked() {
        let (index, start) = sample();
        let good = index.to_bytes();
        type Tamper = fn(&mut Vec<u8>);
        let cases: &[(&str, Tamper, bool)] = &[
            ("bad magic", |b| b[0] ^= 1, false),
            ("version 2", |b| b[4] = 2, true),
            ("compression 2", |b| b[5] = 2, true),
            ("flags", |b| b[6] = 1, true),
            ("reserved", |b| b[31] = 1, false),
            ("hash size without algorithm", |b| b[20] = 0, false),
            ("sha2 of 31 bytes", |b| b[21] = 31, false),
            ("sha512", |b| b[21] = 64, true),
            ("hash algorithm 2", |b| b[20] = 2, true),
            ("count too high", |b| b[16] = 4, false),
            ("count too low", |b| b[16] = 2, false),
            ("payload too long", |b| b.push(0), false),
            (
                "payload truncated",
                |b| {
                    b.pop();
                },
                false,
            ),
            ("header truncated", |b| b.truncate(31), false),
            (
                "first offset not 0",
                |b| set_u64(b, entry_at(0, 8), 1),
                false,
            ),
            (
                "offsets not increasing",
                |b| set_u64(b, entry_at(2, 8), 1000),
                false,
            ),
            ("offset past size", |b| set_u64(b, 8, 2000), false),
            (
                "blocks not increasing",
                |b| set_u64(b, entry_at(1, 0), 0),
                false,
            ),
            (
                "blocks going back",
                |b| set_u64(b, entry_at(2, 0), 50),
                false,
            ),
            (
                "block at index start",
                |b| set_u64(b, entry_at(2, 0), 300),
                false,
            ),
        ];
        for (name, tamper, unsupported) in cases {
            let mut bytes = good.clone();
            tamper(&mut bytes);
            let err = ChunkIndex::parse(&bytes, start).expect_err(name);
            assert_eq!(
                matches!(err, Error::Unsupported(_)),
                *unsupported,
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn raw_chunks_must_fit_before_the_index() {
        let index = ChunkIndex {
            compression: CHUNK_COMPRESSION_NONE,
            uncompressed_size: 200,
            hash_size: 0,
            entries: vec![
                ChunkEntry {
                    block_offset: 0,
                    uncompressed_offset: 0,
                    checksum: None,
                },
                ChunkEntry {
                    block_offset: 100,
                    uncompressed_offset: 100,
                    checksum: None,
                },
            ],
        };
        let bytes = index.to_bytes();
        assert_eq!(bytes.len(), 32 + 2 * 16);
        let parsed = ChunkIndex::parse(&bytes, 200).unwrap();
        assert_eq!(parsed.chunk_ranges(1, 200), (100..200, 100..200));
        let err = ChunkIndex::parse(&bytes, 199).unwrap_err().to_string();
        assert!(err.contains("runs past the index"), "{err}");
    }

    #[test]
    fn range_annotations() {
        assert_eq!(parse_range_annotation("4096").unwrap(), (4096, None));
        assert_eq!(parse_range_annotation("10:200").unwrap(), (10, Some(200)));
        for bad in [
            "",
            ":",
            "1:",
            ":2",
            "+1",
            "-1",
            "1 ",
            "0x10",
            "5:5",
            "6:5",
            "1:2:3",
            "99999999999999999999",
        ] {
            assert!(parse_range_annotation(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn embedded_frame_is_checked() {
        let (index, _) = sample();
        let payload = index.to_bytes();
        let mut blob = vec![0u8; 300];
        blob.extend_from_slice(&crate::estargz::format::zstd_skippable_header(
            payload.len() as u32,
        ));
        blob.extend_from_slice(&payload);
        let digest = Digest::of(&payload);
        let (parsed, start) = read_embedded_index(&blob, true, (300, None), Some(&digest)).unwrap();
        assert_eq!((parsed, start), (index, 300));
        // The last skippable magic is fine too.
        let mut other = blob.clone();
        other[300] = 0x5f;
        assert!(read_embedded_index(&other, true, (300, None), None).is_ok());

        let wrong = Digest::of(b"other");
        let err = read_embedded_index(&blob, true, (300, None), Some(&wrong)).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        // Not a skippable frame, a frame length that disagrees, a range past the blob, a raw
        // layer with a zstd index.
        let mut bad_magic = blob.clone();
        bad_magic[300] = 0x60;
        assert!(read_embedded_index(&bad_magic, true, (300, None), None).is_err());
        let mut bad_len = blob.clone();
        bad_len[304] ^= 1;
        assert!(read_embedded_index(&bad_len, true, (300, None), None).is_err());
        let end = blob.len() as u64;
        assert!(read_embedded_index(&blob, true, (300, Some(end + 1)), None).is_err());
        assert!(read_embedded_index(&blob, true, (300, Some(end - 1)), None).is_err());
        assert!(read_embedded_index(&blob, true, (end, None), None).is_err());
        assert!(read_embedded_index(&blob, false, (308, None), None).is_err());
    }
}

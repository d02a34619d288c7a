//! [`ChunkedWriter`]: an image byte stream in, a chunk-indexed blob out (spec §3.3, §3.4.3).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};

use rayon::prelude::*;

use super::{ChunkEntry, ChunkIndex};
use crate::digest::{BackgroundHasher, Digest, Hasher};
use crate::erofs::format::{
    ANNOTATION_CHUNK_INDEX_DIGEST, ANNOTATION_CHUNK_INDEX_RANGE,
    ANNOTATION_LAZYPULL_CHUNK_INDEX_DIGEST, ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE,
    ANNOTATION_LAZYPULL_UNCOMPRESSED_DIGEST, ANNOTATION_UNCOMPRESSED_DIGEST,
    CHUNK_COMPRESSION_NONE, CHUNK_COMPRESSION_ZSTD, CHUNK_HASH_SIZE_SHA256,
};
use crate::error::{Error, Result};
use crate::estargz::format::zstd_skippable_header;

use super::MAX_CHUNK_LEN;

/// The most the writer buffers before compressing, whatever the thread count.
const MAX_WINDOW: u64 = 64 << 20;

/// Cuts an image stream into fixed-size chunks and writes a chunk-indexed blob.
///
/// With compression 1 each chunk becomes one zstd frame and the index goes last in a skippable
/// frame; with compression 0 the chunks are
/// the image bytes themselves and the bare index follows. Every chunk carries a SHA-256 of its
/// on-blob bytes.
///
/// Written bytes are buffered up to a window of whole chunks (eight per rayon pool thread,
/// at most 64 MiB), compressed in parallel on the current rayon pool, and written in order.
/// Chunk boundaries depend only on the chunk size, so the blob is the same whatever the thread
/// count or how the input was split into writes. [`Write::flush`] flushes the inner writer but
/// cannot cut a chunk short; only [`ChunkedWriter::finish`] writes the tail and the index.
pub struct ChunkedWriter<W: Write> {
    out: W,
    compression: u8,
    chunk_size: usize,
    level: i32,
    /// Bytes buffered before a flush: a whole number of chunks.
    window: usize,
    pending: Vec<u8>,
    /// Blob bytes written so far (the next chunk's block offset).
    written: u64,
    blob: Hasher,
    /// The image's digest runs on a thread of its own, beside the compression.
    image: Option<BackgroundHasher>,
    image_len: u64,
    entries: Vec<ChunkEntry>,
    /// The last chunk's checksum, finished when the writer is.
    last_chunk: Option<Hasher>,
    /// Why the options are unusable, reported by the first write or `finish`.
    bad_options: Option<String>,
    /// A write to `out` failed: the blob is incomplete.
    broken: bool,
}

/// What [`ChunkedWriter::finish`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedBlob {
    /// Digest and size of the whole blob (the layer descriptor's).
    pub digest: Digest,
    pub size: u64,
    /// The DiffID (§5.2): the digest of the decompressed image for `+zstd`, the blob digest
    /// for raw layers (whose DiffID covers the trailing index too).
    pub uncompressed_digest: Digest,
    /// Bytes of image data (the index's `UncompressedSize`).
    pub uncompressed_size: u64,
    /// Where the index section starts: its skippable frame (`+zstd`) or its header (raw).
    pub index_offset: u64,
    /// Digest of the index payload (header and entries, no frame header).
    pub index_digest: Digest,
    pub chunks: usize,
}

impl WrappedBlob {
    /// The layer descriptor's annotations: the index range (`offset:end`) and digest, and for
    /// `+zstd` layers the uncompressed digest, each under the spec's `org.erofs.*` name and
    /// lazypull's `containerd.io/snapshot/lazypull/erofs.*` one.
    pub fn annotations(&self, media_type_zstd: bool) -> BTreeMap<String, String> {
        let mut values = vec![
            (
                ANNOTATION_CHUNK_INDEX_RANGE,
                ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE,
                format!("{}:{}", self.index_offset, self.size),
            ),
            (
                ANNOTATION_CHUNK_INDEX_DIGEST,
                ANNOTATION_LAZYPULL_CHUNK_INDEX_DIGEST,
                self.index_digest.to_string(),
            ),
        ];
        if media_type_zstd {
            values.push((
                ANNOTATION_UNCOMPRESSED_DIGEST,
                ANNOTATION_LAZYPULL_UNCOMPRESSED_DIGEST,
                self.uncompressed_digest.to_string(),
            ));
        }
        let mut out = BTreeMap::new();
        for (spec, ours, value) in values {
            out.insert(spec.to_string(), value.clone());
            out.insert(ours.to_string(), value);
        }
        out
    }
}

impl<W: Write> ChunkedWriter<W> {
    /// A writer of `compression` ([`CHUNK_COMPRESSION_NONE`] or [`CHUNK_COMPRESSION_ZSTD`])
    /// chunks of `chunk_size` bytes (1 to [`MAX_CHUNK_LEN`]; see
    /// [`crate::erofs::format::DEFAULT_CHUNK_SIZE`]) at zstd `level`. Unusable options make the
    /// first write and `finish` fail.
    pub fn new(out: W, compression: u8, chunk_size: u64, level: i32) -> Self {
        let bad_options =
            if compression != CHUNK_COMPRESSION_NONE && compression != CHUNK_COMPRESSION_ZSTD {
                Some(format!("chunk compression type {compression} (0 or 1)"))
            } else if chunk_size == 0 || chunk_size > MAX_CHUNK_LEN {
                Some(format!("chunk size {chunk_size} (1 to {MAX_CHUNK_LEN})"))
            } else {
                None
            };
        let chunk_size = chunk_size.clamp(1, MAX_CHUNK_LEN);
        let threads = rayon::current_num_threads() as u64;
        let chunks = (8 * threads).clamp(1, (MAX_WINDOW / chunk_size).max(1));
        ChunkedWriter {
            out,
            compression,
            chunk_size: chunk_size as usize,
            level,
            window: (chunks * chunk_size) as usize,
            pending: Vec::new(),
            written: 0,
            blob: Hasher::new(),
            image: None,
            image_len: 0,
            entries: Vec::new(),
            last_chunk: None,
            bad_options,
            broken: false,
        }
    }

    /// Write the last chunk and the index; return what was written.
    pub fn finish(mut self) -> Result<WrappedBlob> {
        self.usable().map_err(|e| Error::Invalid(e.to_string()))?;
        let what = "write chunk-indexed blob";
        self.flush_chunks(true).map_err(|e| Error::io(what, e))?;
        let zstd = self.compression == CHUNK_COMPRESSION_ZSTD;
        // No alignment padding before the index frame: the spec's MUST that each chunk is
        // exactly one zstd frame (§3.3) outranks its SHOULD that the index frame start 4-byte
        // aligned (§3.4.3), and a padding frame would become part of the last chunk's bytes.
        if let (Some(h), Some(last)) = (self.last_chunk.take(), self.entries.last_mut()) {
            last.checksum = Some(*h.finish().as_bytes());
        }
        let index_offset = self.written;
        let index = ChunkIndex {
            compression: self.compression,
            uncompressed_size: self.image_len,
            hash_size: CHUNK_HASH_SIZE_SHA256,
            entries: std::mem::take(&mut self.entries),
        };
        let payload = index.to_bytes();
        if zstd {
            let len = u32::try_from(payload.len()).map_err(|_| {
                Error::Unsupported(format!(
                    "a chunk index of {} bytes does not fit a skippable frame",
                    payload.len()
                ))
            })?;
            self.emit(&zstd_skippable_header(len))
                .map_err(|e| Error::io(what, e))?;
        }
        self.emit(&payload).map_err(|e| Error::io(what, e))?;
        self.out.flush().map_err(|e| Error::io(what, e))?;
        let digest = self.blob.finish();
        Ok(WrappedBlob {
            digest,
            size: self.written,
            uncompressed_digest: match self.image.take() {
                Some(h) if zstd => h.finish().0,
                // Nothing written: the digest of no bytes.
                None if zstd => Digest::of(&[]),
                _ => digest,
            },
            uncompressed_size: index.uncompressed_size,
            index_offset,
            index_digest: Digest::of(&payload),
            chunks: index.entries.len(),
        })
    }

    fn usable(&self) -> io::Result<()> {
        if let Some(why) = &self.bad_options {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why.clone()));
        }
        if self.broken {
            return Err(io::Error::other(
                "an earlier write failed; the blob is incomplete",
            ));
        }
        Ok(())
    }

    /// Write blob bytes, hashing and counting them.
    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.out.write_all(bytes) {
            self.broken = true;
            return Err(e);
        }
        self.blob.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Compress and write the buffered whole chunks, and with `last` the partial one too.
    fn flush_chunks(&mut self, last: bool) -> io::Result<()> {
        let take = if last {
            self.pending.len()
        } else {
            self.pending.len() / self.chunk_size * self.chunk_size
        };
        let (zstd, level) = (self.compression == CHUNK_COMPRESSION_ZSTD, self.level);
        // `collect` keeps chunk order, so the output is the same on any number of threads.
        let packed: Vec<io::Result<(Cow<[u8]>, Hasher)>> = self.pending[..take]
            .par_chunks(self.chunk_size)
            .map(|chunk| {
                let stored = if zstd {
                    Cow::Owned(zstd::bulk::compress(chunk, level)?)
                } else {
                    Cow::Borrowed(chunk)
                };
                let mut sum = Hasher::new();
                sum.update(&stored);
                Ok((stored, sum))
            })
            .collect();
        let mut uncompressed = self.image_len - self.pending.len() as u64;
        let mut frames = Vec::with_capacity(packed.len());
        for p in packed {
            frames.push(p?);
        }
        let mut out_bytes = 0u64;
        for (i, (stored, sum)) in frames.into_iter().enumerate() {
            if let Some(prev) = self.last_chunk.replace(sum) {
                if let Some(e) = self.entries.last_mut() {
                    e.checksum = Some(*prev.finish().as_bytes());
                }
            }
            self.entries.push(ChunkEntry {
                block_offset: self.written + out_bytes,
                uncompressed_offset: uncompressed,
                checksum: None,
            });
            uncompressed += self.chunk_size.min(take - i * self.chunk_size) as u64;
            if let Err(e) = self.out.write_all(&stored) {
                self.broken = true;
                return Err(e);
            }
            self.blob.update(&stored);
            out_bytes += stored.len() as u64;
        }
        self.written += out_bytes;
        self.pending.drain(..take);
        Ok(())
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.usable()?;
        let n = buf.len().min(self.window - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        // Raw blobs' DiffID is the blob digest: only `+zstd` needs the image's own.
        if self.compression == CHUNK_COMPRESSION_ZSTD {
            self.image
                .get_or_insert_with(BackgroundHasher::start)
                .update(&buf[..n]);
        }
        self.image_len += n as u64;
        if self.pending.len() == self.window {
            self.flush_chunks(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.usable()?;
        self.out.flush()
    }
}

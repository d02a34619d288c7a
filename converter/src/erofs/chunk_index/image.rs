//! [`ChunkedImage`]: the uncompressed image of a chunk-indexed blob, read a chunk at a time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::ChunkIndex;
use crate::blob::{check_range, BlobRead};
use crate::digest::Digest;
use crate::erofs::format::{CHUNK_COMPRESSION_NONE, CHUNK_COMPRESSION_ZSTD};
use crate::error::{Error, Result, ResultExt};

/// The longest chunk, on the blob or uncompressed, a [`ChunkedImage`] fetches: it holds a whole
/// chunk in memory to verify it, so a hostile index must not make it allocate without bound.
pub const MAX_CHUNK_LEN: u64 = 64 << 20;

/// How many decompressed chunks a [`ChunkedImage`] keeps.
const CACHE_CHUNKS: usize = 8;

/// A keeper of verified on-blob chunk bytes, keyed by their SHA-256 checksum, shared between
/// reads, mounts and layers (identical chunks are stored once). Implemented by the lazy
/// filesystem's disk cache.
pub trait ChunkStore: Send + Sync {
    /// The bytes whose SHA-256 is `digest`: kept ones, or `fetch`ed ones, which the store must
    /// verify against `digest` before keeping or returning them.
    fn get_or_fetch(
        &self,
        digest: &Digest,
        fetch: &mut dyn FnMut() -> Result<Vec<u8>>,
    ) -> Result<Arc<[u8]>>;
}

/// The uncompressed image of a chunk-indexed blob, as a [`BlobRead`] of
/// [`ChunkIndex::uncompressed_size`] bytes.
///
/// A read fetches each chunk it touches with one read of the blob, verifies the chunk's checksum
/// over the fetched (on-blob) bytes before decompressing anything, decompresses into a buffer of
/// exactly the chunk's length, and keeps the last few chunks for the reads that follow.
pub struct ChunkedImage<B: BlobRead> {
    blob: B,
    index: ChunkIndex,
    index_start: u64,
    /// Recently used chunks, most recent first.
    cache: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    /// Where fetched on-blob bytes are kept across reads and mounts, if anywhere.
    store: Option<Arc<dyn ChunkStore>>,
}

impl<B: BlobRead> ChunkedImage<B> {
    /// The image of `blob`, whose index (parsed at `index_start`) is `index`.
    pub fn new(blob: B, index: ChunkIndex, index_start: u64) -> Self {
        ChunkedImage {
            blob,
            index,
            index_start,
            cache: Mutex::new(VecDeque::with_capacity(CACHE_CHUNKS)),
            store: None,
        }
    }

    /// Keep fetched chunks in `store` (only chunks the index gives a checksum for).
    pub fn with_store(mut self, store: Arc<dyn ChunkStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The chunk index.
    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// Chunk `i`'s uncompressed bytes, from the cache or the blob.
    fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = cache.iter().position(|(n, _)| *n == i) {
                let hit = cache.remove(pos).expect("position is in the cache");
                let data = Arc::clone(&hit.1);
                cache.push_front(hit);
                return Ok(data);
            }
        }
        // Fetch without the lock, so reads of other chunks proceed meanwhile.
        let data = Arc::new(self.fetch(i)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.iter().any(|(n, _)| *n == i) {
            cache.push_front((i, Arc::clone(&data)));
            cache.truncate(CACHE_CHUNKS);
        }
        Ok(data)
    }

    /// Fetch, verify and decompress chunk `i`.
    fn fetch(&self, i: usize) -> Result<Vec<u8>> {
        let (stored, image) = self.index.chunk_ranges(i, self.index_start);
        let what = format!("chunk {i} (blob [{}, {}))", stored.start, stored.end);
        let stored_len = stored.end.saturating_sub(stored.start);
        let len = image.end.saturating_sub(image.start);
        if stored_len > MAX_CHUNK_LEN || len > MAX_CHUNK_LEN {
            return Err(Error::Unsupported(format!(
                "{what}: {stored_len} bytes on the blob, {len} uncompressed: more than the \
                 {MAX_CHUNK_LEN} this reader holds at once"
            )));
        }
        let checksum = self.index.entries()[i].checksum.map(Digest::from_bytes);
        let bytes: Arc<[u8]> = match (&self.store, checksum) {
            // The store verifies what it fetches against the checksum.
            (Some(store), Some(digest)) => store
                .get_or_fetch(&digest, &mut || {
                    self.blob.read_vec(stored.start, stored_len)
                })
                .context(&what)?,
            _ => {
                let bytes = self
                    .blob
                    .read_vec(stored.start, stored_len)
                    .context(&what)?;
                if let Some(expected) = checksum {
                    let actual = Digest::of(&bytes);
                    if actual != expected {
                        return Err(Error::DigestMismatch {
                            what: "checksum".into(),
                            expected: expected.to_string(),
                            actual: actual.to_string(),
                        }
                        .context(what));
                    }
                }
                bytes.into()
            }
        };
        match self.index.compression {
            CHUNK_COMPRESSION_NONE => Ok(bytes.to_vec()),
            CHUNK_COMPRESSION_ZSTD => decompress_frame(&bytes, len).context(what),
            other => Err(Error::Unsupported(format!(
                "{what}: compression type {other}"
            ))),
        }
    }
}

/// Decompress a chunk's frame into exactly `len` bytes, refusing frames that claim or produce
/// anything else. Skippable frames after it (lazypull's alignment padding) are passed over.
fn decompress_frame(frame: &[u8], len: u64) -> Result<Vec<u8>> {
    if let Ok(Some(claimed)) = zstd::zstd_safe::get_frame_content_size(frame) {
        if claimed != len {
            return Err(Error::format(format!(
                "zstd frame claims {claimed} bytes, the chunk holds {len}"
            )));
        }
    }
    // `len` is at most MAX_CHUNK_LEN, checked by the caller.
    let mut out = vec![0u8; len as usize];
    let n = zstd::bulk::decompress_to_buffer(frame, &mut out)
        .map_err(|e| Error::format(format!("zstd frame: {e}")))?;
    if n as u64 != len {
        return Err(Error::format(format!(
            "zstd frame decompresses to {n} bytes, the chunk holds {len}"
        )));
    }
    Ok(out)
}

impl<B: BlobRead> BlobRead for ChunkedImage<B> {
    fn len(&self) -> u64 {
        self.index.uncompressed_size
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let want = buf.len() as u64;
        check_range(self.len(), off, want)?;
        let end = off + want;
        for i in self.index.chunks_for(off, want) {
            let (_, image) = self.index.chunk_ranges(i, self.index_start);
            let data = self.chunk(i)?;
            let (from, to) = (off.max(image.start), end.min(image.end));
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&data[(from - image.start) as usize..(to - image.start) as usize]);
        }
        Ok(())
    }
}

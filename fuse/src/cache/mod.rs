//! The chunk cache: verified chunks, content-addressed, in memory and on disk, bounded.
//!
//! [`ChunkCache`] stores "the bytes whose sha256 is the key", whatever those bytes are: eStargz
//! chunks are keyed by their `chunkDigest` (uncompressed), EROFS chunks by the sha256 of their
//! compressed frame. Keying by content rather than by (layer, offset) means identical chunks are
//! stored once across layers and images, and an entry can be checked against its own name at any
//! time; stargz-snapshotter's per-layer, position-keyed cache can do neither.
//!
//! Two tiers, both least-recently-used and bounded by bytes:
//! - memory ([`CacheOptions::memory_bytes`]), served without re-hashing (everything entered it
//!   verified);
//! - disk ([`CacheOptions::max_bytes`]) under `DIR/chunks/ab/abcdef…`, re-verified on every read: a
//!   corrupt or truncated file is deleted and reported as a miss, never returned.
//!
//! [`ChunkCache::get_or_fetch`] is the read path of the filesystem: cache, else one fetch per
//! digest however many readers miss at once (single flight), verified before it is cached or
//! returned.
//!
//! ```
//! use lazypull_fuse::cache::{CacheOptions, ChunkCache};
//! use lazypull_fuse::converter::Digest;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let cache = ChunkCache::open(CacheOptions::new(dir.path(), 1 << 30)).unwrap();
//! let chunk = b"some chunk".to_vec();
//! let digest = Digest::of(&chunk);
//! let data = cache.get_or_fetch(&digest, || Ok(chunk.clone())).unwrap();
//! assert_eq!(&*data, &chunk[..]);
//! assert!(cache.contains(&digest));
//! assert_eq!(cache.stats().inserts, 1);
//! ```

mod disk;
mod flight;
mod lru;
mod memory;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lazypull_converter::{Digest, Error, Result, ResultExt};

use crate::fetch::FetchError;

use disk::{DiskRead, DiskStore};
use flight::{Flights, Role};
use memory::MemoryTier;

/// The memory tier's default size.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;

/// Fetches of a chunk after the first whose bytes failed verification or decoding.
const REFETCHES: u32 = 2;

/// Where the cache lives and how large it may grow.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The cache directory (created if missing). It holds `chunks/` and `tmp/`.
    pub dir: PathBuf,
    /// Bound on the bytes of chunk files on disk (file contents, not filesystem blocks).
    pub max_bytes: u64,
    /// Bound on the bytes of chunks kept in memory.
    pub memory_bytes: u64,
}

impl CacheOptions {
    /// Options for a cache in `dir` bounded to `max_bytes` on disk, with the default memory tier.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        CacheOptions {
            dir: dir.into(),
            max_bytes,
            memory_bytes: DEFAULT_MEMORY_BYTES,
        }
    }
}

/// Counters since [`ChunkCache::open`], and the current sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `get`s served from memory.
    pub memory_hits: u64,
    /// `get`s served from disk (after verification).
    pub disk_hits: u64,
    /// `get`s that found nothing usable (including corrupt files).
    pub misses: u64,
    /// Chunks newly written to disk.
    pub inserts: u64,
    /// Chunks deleted from disk to stay under `max_bytes`.
    pub evictions: u64,
    /// Chunk files deleted because their content did not match their digest.
    pub corrupt_dropped: u64,
    /// Fetches by `get_or_fetch` whose bytes did not match their digest (nothing was cached).
    pub fetched_mismatches: u64,
    /// Fetches repeated by `get_or_fetch` because the bytes failed verification or decoding.
    pub refetches: u64,
    /// Disk reads that failed with an I/O error (served as misses, file left alone).
    pub read_errors: u64,
    /// Writes to disk that failed inside `get_or_fetch` (the fetched data was still returned).
    pub write_errors: u64,
    /// Fetches run by `get_or_fetch`.
    pub fetches: u64,
    /// `get_or_fetch` callers that waited for another caller's fetch instead of fetching.
    pub fetch_waits: u64,
    /// Leftover temp files removed at open.
    pub temps_removed: u64,
    /// Bytes of chunk files on disk.
    pub bytes_on_disk: u64,
    /// Chunk files on disk.
    pub entries: u64,
    /// Bytes of chunks in memory.
    pub memory_bytes: u64,
    /// Chunks in memory.
    pub memory_entries: u64,
}

#[derive(Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    corrupt_dropped: AtomicU64,
    fetched_mismatches: AtomicU64,
    refetches: AtomicU64,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    fetches: AtomicU64,
    fetch_waits: AtomicU64,
    temps_removed: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A content-addressed chunk cache: keys are the chunk's sha256 digest, so identical chunks are
/// shared across layers and images. `Send + Sync`; share it through an `Arc`.
///
/// Several processes may use one directory at once: files appear only by atomic rename and are
/// verified on read, so they never see each other's partial or corrupt data. Each process keeps
/// its own index, though, so `max_bytes` is enforced per process over the files it knows of.
pub struct ChunkCache {
    disk: DiskStore,
    memory: Mutex<MemoryTier>,
    flights: Flights,
    max_bytes: u64,
    memory_capacity: u64,
    counters: Counters,
}

impl ChunkCache {
    /// Open the cache in `opts.dir`, creating it; remove temp files left by crashed writers;
    /// rebuild the index from the chunk files (use order from their mtimes); evict down to
    /// `max_bytes` if the directory holds more (say, after the bound was lowered).
    pub fn open(opts: CacheOptions) -> Result<Self> {
        let (disk, report) = DiskStore::open(&opts.dir)
            .with_context(|| format!("chunk cache {}", opts.dir.display()))?;
        let cache = ChunkCache {
            disk,
            memory: Mutex::new(MemoryTier::new(opts.memory_bytes)),
            flights: Flights::default(),
            max_bytes: opts.max_bytes,
            memory_capacity: opts.memory_bytes,
            counters: Counters::default(),
        };
        bump(&cache.counters.temps_removed, report.temps_removed);
        cache.trim()?;
        Ok(cache)
    }

    fn memory(&self) -> MutexGuard<'_, MemoryTier> {
        // The tier is updated in steps that cannot panic halfway; poisoning carries no meaning.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bytes whose sha256 is `digest`: from memory, else from disk (verified; a corrupt file
    /// is deleted and counts as a miss), else `None`. Disk I/O errors are misses too: the caller
    /// can always fetch again.
    pub fn get(&self, digest: &Digest) -> Option<Arc<[u8]>> {
        self.lookup(digest, true)
    }

    /// `get`, counting a miss only if `count_miss` (a re-check after a race does not: the first
    /// look already counted it).
    fn lookup(&self, digest: &Digest, count_miss: bool) -> Option<Arc<[u8]>> {
        let miss = |cause: Option<&AtomicU64>| {
            if let Some(cause) = cause {
                bump(cause, 1);
            }
            if count_miss {
                bump(&self.counters.misses, 1);
            }
            None
        };
        let in_memory = self.memory().get(digest);
        if let Some(data) = in_memory {
            bump(&self.counters.memory_hits, 1);
            self.disk.touch(digest);
            return Some(data);
        }
        match self.disk.read(digest) {
            Ok(DiskRead::Hit(data)) => {
                bump(&self.counters.disk_hits, 1);
                let data: Arc<[u8]> = data.into();
                self.memory().insert(*digest, Arc::clone(&data));
                Some(data)
            }
            Ok(DiskRead::Corrupt) => miss(Some(&self.counters.corrupt_dropped)),
            Ok(DiskRead::Miss) => miss(None),
            Err(_) => miss(Some(&self.counters.read_errors)),
        }
    }

    /// Insert `data`, which should hash to `digest`. It is verified here too, in release builds
    /// as well: hashing costs about a millisecond per MiB, far less than the fsync that follows,
    /// and a chunk stored under the wrong name would be served from memory to every image sharing
    /// it. A mismatch is `Error::DigestMismatch` and nothing is stored.
    ///
    /// The file is written atomically (temp file in the cache dir, fsync, rename); concurrent
    /// inserts of one digest are fine. Least recently used chunks are then evicted to stay under
    /// `max_bytes`. A chunk larger than `max_bytes` is kept in memory only.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        verify(digest, data, "inserted into the cache")?;
        if data.len() as u64 <= self.memory_capacity {
            self.memory().insert(*digest, data.into());
        }
        self.store(digest, data)
    }

    /// The disk half of an insert of verified data.
    fn store(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        if data.len() as u64 > self.max_bytes {
            return Ok(());
        }
        if self.disk.write(digest, data)? {
            bump(&self.counters.inserts, 1);
        }
        if self.disk.bytes() > self.max_bytes {
            self.trim()?;
        }
        Ok(())
    }

    /// Whether `digest` is cached, in memory or on disk (without verifying: a `get` may still
    /// find the file corrupt).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.memory().contains(digest) || self.disk.contains(digest)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (memory_bytes, memory_entries) = {
            let m = self.memory();
            (m.bytes(), m.len() as u64)
        };
        CacheStats {
            memory_hits: load(&c.memory_hits),
            disk_hits: load(&c.disk_hits),
            misses: load(&c.misses),
            inserts: load(&c.inserts),
            evictions: load(&c.evictions),
            corrupt_dropped: load(&c.corrupt_dropped),
            fetched_mismatches: load(&c.fetched_mismatches),
            refetches: load(&c.refetches),
            read_errors: load(&c.read_errors),
            write_errors: load(&c.write_errors),
            fetches: load(&c.fetches),
            fetch_waits: load(&c.fetch_waits),
            temps_removed: load(&c.temps_removed),
            bytes_on_disk: self.disk.bytes(),
            entries: self.disk.len() as u64,
            memory_bytes,
            memory_entries,
        }
    }

    /// Evict least recently used chunks from disk down to `max_bytes` (`put` does this itself).
    /// Returns the bytes freed.
    pub fn trim(&self) -> Result<u64> {
        let (freed, count) = self.disk.trim(self.max_bytes)?;
        bump(&self.counters.evictions, count);
        Ok(freed)
    }

    /// The chunk `digest` from the cache, else from `fetch`, run once however many callers miss
    /// on `digest` at the same time (the others wait for its outcome). Fetched bytes are verified
    /// against `digest` before they are cached or returned; bytes that fail (or that `fetch`
    /// could not decode) are fetched again, up to `REFETCHES` times, after which the mismatch
    /// is `Error::DigestMismatch` naming the digest, and nothing is cached. A fetch error goes to
    /// every waiter and is not cached; the next call fetches again.
    ///
    /// A failure to write the verified chunk to disk does not fail the read: the data is
    /// returned and `write_errors` counts it. Waiters wait as long as the fetch takes; bounding
    /// that is the fetcher's job (its request timeout).
    pub fn get_or_fetch(
        &self,
        digest: &Digest,
        mut fetch: impl FnMut() -> Result<Vec<u8>>,
    ) -> Result<Arc<[u8]>> {
        if !crate::demand::network_allowed() {
            // Only a look: the caller retries with the network allowed, and counts the miss then.
            return self
                .lookup(digest, false)
                .ok_or_else(|| crate::demand::would_block(format!("chunk {digest}")));
        }
        if let Some(data) = self.get(digest) {
            return Ok(data);
        }
        let leader = match self.flights.join(digest) {
            Role::Waited(outcome) => {
                bump(&self.counters.fetch_waits, 1);
                return outcome;
            }
            Role::Leader(leader) => leader,
        };
        // A flight for this digest may have landed between our miss and our joining: look once
        // more (memory, then disk) before going to the network.
        if let Some(data) = self.lookup(digest, false) {
            return leader.finish(Ok(data));
        }
        bump(&self.counters.fetches, 1);
        let mut attempt = 0;
        let outcome = loop {
            let outcome = fetch()
                .with_context(|| format!("fetching chunk {digest}"))
                .and_then(|bytes| verify(digest, &bytes, "fetched").map(|()| bytes));
            let Err(e) = &outcome else {
                break outcome;
            };
            if matches!(e.root(), Error::DigestMismatch { .. }) {
                bump(&self.counters.fetched_mismatches, 1);
            }
            if !bad_bytes(e) || attempt == REFETCHES {
                break outcome;
            }
            attempt += 1;
            bump(&self.counters.refetches, 1);
            tracing::warn!("chunk {digest}: fetching again after bad bytes: {e}");
        };
        let outcome = outcome.map(|bytes| {
            let data: Arc<[u8]> = bytes.into();
            self.memory().insert(*digest, Arc::clone(&data));
            if self.store(digest, &data).is_err() {
                bump(&self.counters.write_errors, 1);
            }
            data
        });
        leader.finish(outcome)
    }
}

/// Whether `e` says that bytes arrived but failed verification or decoding: a proxy or a link
/// may have damaged them, so they are worth fetching again. Fetch errors (statuses, timeouts,
/// short bodies) are not: the fetcher has already retried those.
fn bad_bytes(e: &Error) -> bool {
    FetchError::find(e).is_none()
        && matches!(e.root(), Error::DigestMismatch { .. } | Error::Format(_))
}

/// Check that `data` hashes to `digest`; `how` says where the data came from.
fn verify(digest: &Digest, data: &[u8], how: &str) -> Result<()> {
    let actual = Digest::of(data);
    if actual == *digest {
        return Ok(());
    }
    Err(Error::DigestMismatch {
        what: format!("chunk {digest} ({} bytes {how})", data.len()),
        expected: digest.to_string(),
        actual: actual.to_string(),
    })
}

//! Opening one converted layer for serving: find its format, check its trust anchor, and put
//! the chunk cache between the FUSE server and the blob.
//!
//! The trust anchor is the eStargz TOC digest (the `containerd.io/snapshot/stargz/toc.digest`
//! annotation or `--toc-digest`) or the EROFS chunk-index digest (`org.erofs.chunk-index.digest`
//! or `--toc-digest`). Every chunk is then checked against the digest the trusted TOC or index
//! gives it before a byte of it is cached or served. Without an anchor a layer opens only when
//! the caller asked for `insecure_skip_verify`.

use std::collections::BTreeMap;
use std::sync::Arc;

use lazypull_converter::erofs::chunk_index::{
    find_trailing_index, parse_range_annotation, read_embedded_index, ChunkStore, ChunkedImage,
};
use lazypull_converter::erofs::format as erofs_format;
use lazypull_converter::erofs::ErofsReader;
use lazypull_converter::estargz::format as estargz_format;
use lazypull_converter::estargz::{ChunkReader, ChunkRef, EstargzReader};
use lazypull_converter::{BlobRead, Digest, Error, Result};

use crate::background::{BackgroundFetch, WalkStep};
use crate::cache::ChunkCache;
use crate::fs::{ChunkSource, ErofsTree, EstargzTree, LayerTree};

/// A shared, type-erased blob.
pub type SharedBlob = Arc<dyn BlobRead>;

/// What is known about a layer besides its bytes.
#[derive(Clone, Debug, Default)]
pub struct LayerHints {
    /// A name for messages (the layer digest, file path or URL).
    pub name: String,
    /// The descriptor's media type, when the layer came from an image.
    pub media_type: Option<String>,
    /// The descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
    /// A digest given on the command line: the eStargz TOC digest or the EROFS chunk-index digest.
    pub trusted_digest: Option<Digest>,
    /// Serve without a trust anchor (chunks are still checked against the unverified TOC/index).
    pub insecure_skip_verify: bool,
    /// Bytes to fetch after a small eStargz read that misses, kept for the reads that follow
    /// (0: exactly what is asked).
    pub readahead: u64,
}

/// The layer's format, as found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerFormat {
    Estargz,
    Erofs,
}

/// An opened layer: the tree to serve and what it is.
pub struct OpenedLayer {
    pub tree: Arc<dyn LayerTree>,
    pub format: LayerFormat,
    /// End of the prefetch region when the layer has one: compressed bytes `[0, end)` of an
    /// eStargz blob, or uncompressed bytes `[0, end)` of an EROFS image.
    pub prefetch_end: Option<u64>,
    prefetcher: Option<Prefetcher>,
    background: Option<BackgroundFetch>,
}

type Prefetcher = Box<dyn Fn() -> Result<PrefetchStats> + Send + Sync>;

/// What [`OpenedLayer::prefetch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Blob bytes fetched, in one request.
    pub bytes: u64,
    /// Chunks verified and put in the cache.
    pub chunks: u64,
}

impl OpenedLayer {
    /// The whole-layer fetch to run in the background once the layer is served (only for
    /// layers opened with a cache).
    pub fn background_fetch(&self) -> Option<BackgroundFetch> {
        self.background.clone()
    }

    /// Fetch the prefetch region with one range request and put every chunk inside it in the
    /// cache, verified: the files a workload reads first are then local before it starts.
    /// A layer without a prefetch region (or opened without a cache) does nothing.
    pub fn prefetch(&self) -> Result<PrefetchStats> {
        match &self.prefetcher {
            Some(p) => p(),
            None => Ok(PrefetchStats::default()),
        }
    }
}

/// A blob whose first bytes can be fetched at once and then served from memory: the prefetch
/// region arrives in one request instead of one per chunk. With read-ahead, a small read that
/// misses fetches the bytes after it too and keeps them for the reads that follow (neighbouring
/// files in an eStargz blob are usually read together); every chunk taken from them is still
/// verified by the reader before use.
struct RegionBlob {
    inner: SharedBlob,
    region: std::sync::RwLock<Option<Arc<Vec<u8>>>>,
    readahead: u64,
    /// Recently fetched windows `(start, bytes)`, newest last.
    windows: std::sync::Mutex<std::collections::VecDeque<(u64, Arc<Vec<u8>>)>>,
}

/// Read-ahead windows kept per layer.
const READAHEAD_WINDOWS: usize = 16;

impl RegionBlob {
    fn new(inner: SharedBlob, readahead: u64) -> Self {
        RegionBlob {
            inner,
            region: std::sync::RwLock::new(None),
            readahead,
            windows: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Fetch `[0, end)` in one read.
    fn fill(&self, end: u64) -> Result<u64> {
        let end = end.min(self.inner.len());
        let data = self.inner.read_vec(0, end)?;
        *self.region.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(data));
        Ok(end)
    }

    /// Drop the region: what was needed from it is in the cache now.
    fn release(&self) {
        *self.region.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Copy `[off, off + buf.len())` out of a kept window, if one holds it all.
    fn copy_from_window(&self, off: u64, buf: &mut [u8]) -> bool {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        for (start, data) in windows.iter().rev() {
            if off >= *start && off + buf.len() as u64 <= start + data.as_slice().len() as u64 {
                let from = (off - start) as usize;
                buf.copy_from_slice(&data[from..from + buf.len()]);
                return true;
            }
        }
        false
    }
}

impl BlobRead for RegionBlob {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let region = self
            .region
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(r) = region {
            let end = off.checked_add(buf.len() as u64);
            if end.is_some_and(|e| e <= r.as_slice().len() as u64) {
                buf.copy_from_slice(&r[off as usize..off as usize + buf.len()]);
                return Ok(());
            }
        }
        let len = buf.len() as u64;
        if self.readahead == 0 || len >= self.readahead || off >= self.inner.len() {
            return self.inner.read_at(off, buf);
        }
        if self.copy_from_window(off, buf) {
            return Ok(());
        }
        let end = (off + len + self.readahead).min(self.inner.len());
        let data = self.inner.read_vec(off, end - off)?;
        buf.copy_from_slice(&data[..buf.len()]);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() == READAHEAD_WINDOWS {
            windows.pop_front();
        }
        windows.push_back((off, Arc::new(data)));
        Ok(())
    }
}

/// Open `blob` as an eStargz/zstd:chunked or EROFS layer, verified as [`LayerHints`] says.
pub fn open_layer(
    blob: SharedBlob,
    hints: &LayerHints,
    cache: Option<Arc<ChunkCache>>,
) -> Result<OpenedLayer> {
    let erofs_range = hints
        .annotations
        .get(erofs_format::ANNOTATION_CHUNK_INDEX_RANGE)
        .or_else(|| {
            hints
                .annotations
                .get(erofs_format::ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE)
        });
    let framing = hints
        .media_type
        .as_deref()
        .and_then(erofs_format::ErofsFraming::of_media_type);
    let name = || format!("layer {}", hints.name);
    if erofs_range.is_some() || framing.is_some() {
        // Annotated but untyped (a bare blob): zstd, the default framing.
        let zstd = framing != Some(erofs_format::ErofsFraming::Raw);
        let range = erofs_range
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no {} annotation: the chunk index cannot be found",
                    erofs_format::ANNOTATION_CHUNK_INDEX_RANGE
                ))
            })
            .and_then(|r| parse_range_annotation(r))
            .map_err(|e| e.context(name()))?;
        return open_erofs(blob, hints, range, zstd, cache).map_err(|e| e.context(name()));
    }
    if hints.media_type.is_some() {
        return open_estargz(blob, hints, cache).map_err(|e| e.context(name()));
    }
    // A bare blob (a file or URL): eStargz if its footer says so, else an EROFS blob if a chunk
    // index ends it; when neither, the eStargz error says why. An eStargz blob that fails its
    // digest is not looked at again.
    open_estargz(Arc::clone(&blob), hints, cache.clone()).or_else(|estargz_err| {
        if matches!(estargz_err.root(), Error::DigestMismatch { .. }) {
            return Err(estargz_err.context(name()));
        }
        match find_trailing_index(&blob) {
            Ok(Some(found)) => open_erofs(blob, hints, (found.start, None), found.zstd, cache),
            Ok(None) => Err(estargz_err
                .context("no EROFS chunk index ends the blob, and it is no eStargz blob either")),
            // A chunk index is there, but corrupt: that is the error to report.
            Err(e) => Err(e),
        }
        .map_err(|e| e.context(name()))
    })
}

fn open_estargz(
    blob: SharedBlob,
    hints: &LayerHints,
    cache: Option<Arc<ChunkCache>>,
) -> Result<OpenedLayer> {
    let annotated = hints
        .annotations
        .get(estargz_format::ANNOTATION_TOC_DIGEST)
        .map(|s| s.parse::<Digest>())
        .transpose()?;
    let anchor = hints.trusted_digest.or(annotated);
    if anchor.is_none() && !hints.insecure_skip_verify {
        return Err(Error::Invalid(
            "no TOC digest to verify the layer against: give --toc-digest, mount from an image \
             whose descriptor has the containerd.io/snapshot/stargz/toc.digest annotation, or \
             pass --insecure-skip-verify"
                .into(),
        ));
    }
    let region = Arc::new(RegionBlob::new(blob, hints.readahead));
    let reader = EstargzReader::open(Arc::clone(&region) as SharedBlob, anchor.as_ref())?;
    let prefetch_end = reader.prefetch_end().filter(|&end| end > 0);
    let mut prefetcher: Option<Prefetcher> = None;
    let mut background: Option<BackgroundFetch> = None;
    // The tree keeps the chunk list; the reader's TOC and entries are dropped once it is built.
    let tree = Arc::new(
        EstargzTree::with_chunk_source(reader, |reader| match &cache {
            Some(cache) => Arc::new(CachedChunks {
                reader,
                cache: Arc::clone(cache),
            }),
            None => Arc::new(crate::fs::ReaderChunks::new(reader)),
        })?
        .with_name(hints.name.clone()),
    );
    if let Some(cache) = cache {
        let (count, bytes) = tree.chunks().fold((0u64, 0u64), |(n, b), c| {
            (n + 1, b + c.blob_end.saturating_sub(c.blob_offset))
        });
        let all = Arc::clone(&tree);
        let walk = move |step: &mut dyn FnMut(WalkStep) -> bool| {
            for c in all.chunks() {
                let cached = c.digest.is_some_and(|d| cache.contains(&d));
                let bytes = c.blob_end.saturating_sub(c.blob_offset);
                if !step(WalkStep { bytes, cached }) {
                    return;
                }
                if !cached {
                    if let Err(err) = all.chunk_source().chunk(&c) {
                        tracing::warn!("background fetch of the chunk at {}: {err}", c.blob_offset);
                    }
                }
            }
        };
        background = Some(BackgroundFetch::new(count, bytes, Arc::new(walk)));
        if let Some(end) = prefetch_end {
            let (tree, region) = (Arc::clone(&tree), Arc::clone(&region));
            prefetcher = Some(Box::new(move || {
                let bytes = region.fill(end)?;
                let mut n = 0;
                let result = tree
                    .chunks()
                    .filter(|c| c.blob_end <= end)
                    .try_for_each(|c| tree.chunk_source().chunk(&c).map(|_| n += 1));
                region.release();
                result.map(|()| PrefetchStats { bytes, chunks: n })
            }));
        }
    }
    Ok(OpenedLayer {
        tree,
        format: LayerFormat::Estargz,
        prefetch_end,
        prefetcher,
        background,
    })
}

fn open_erofs(
    blob: SharedBlob,
    hints: &LayerHints,
    range: (u64, Option<u64>),
    zstd: bool,
    cache: Option<Arc<ChunkCache>>,
) -> Result<OpenedLayer> {
    let annotated = hints
        .annotations
        .get(erofs_format::ANNOTATION_CHUNK_INDEX_DIGEST)
        .map(|s| s.parse::<Digest>())
        .transpose()?;
    let anchor = hints.trusted_digest.or(annotated);
    if anchor.is_none() && !hints.insecure_skip_verify {
        return Err(Error::Invalid(
            "no chunk-index digest to verify the layer against: give --toc-digest, mount from \
             an image whose descriptor has the org.erofs.chunk-index.digest annotation, or pass \
             --insecure-skip-verify"
                .into(),
        ));
    }
    let (index, start) = read_embedded_index(&blob, zstd, range, anchor.as_ref())?;
    let prefetch_end = hints
        .annotations
        .get(erofs_format::ANNOTATION_LAZYPULL_PREFETCH_RANGE)
        .and_then(|r| r.split_once(':'))
        .and_then(|(_, end)| end.parse::<u64>().ok());
    // EROFS chunks are whole frames (1 MiB by default): reading ahead would only fetch part
    // of the next one.
    let region = Arc::new(RegionBlob::new(blob, 0));
    let mut prefetcher: Option<Prefetcher> = None;
    let mut background: Option<BackgroundFetch> = None;
    let mut image = ChunkedImage::new(Arc::clone(&region) as SharedBlob, index.clone(), start);
    if let Some(cache) = cache {
        let store: Arc<dyn ChunkStore> = Arc::new(CacheStore(Arc::clone(&cache)));
        image = image.with_store(Arc::clone(&store));
        let (all, idx, st) = (
            ChunkedImage::new(Arc::clone(&region) as SharedBlob, index.clone(), start)
                .with_store(Arc::clone(&store)),
            index.clone(),
            start,
        );
        let n = idx.entries().len();
        let bytes = (0..n)
            .map(|i| {
                let stored = idx.chunk_ranges(i, st).0;
                stored.end - stored.start
            })
            .sum();
        let walk = move |step: &mut dyn FnMut(WalkStep) -> bool| {
            let mut buf = Vec::new();
            for (i, entry) in idx.entries().iter().enumerate() {
                let (stored, r) = idx.chunk_ranges(i, st);
                let cached = entry
                    .checksum
                    .is_some_and(|c| cache.contains(&Digest::from_bytes(c)));
                let bytes = stored.end - stored.start;
                if !step(WalkStep { bytes, cached }) {
                    return;
                }
                if !cached {
                    buf.resize((r.end - r.start) as usize, 0);
                    if let Err(err) = all.read_at(r.start, &mut buf) {
                        tracing::warn!("background fetch of image chunk {i}: {err}");
                    }
                }
            }
        };
        background = Some(BackgroundFetch::new(n as u64, bytes, Arc::new(walk)));
        if let Some(end) = prefetch_end.filter(|&e| e > 0) {
            let region = Arc::clone(&region);
            prefetcher = Some(Box::new(move || {
                // The frames holding [0, end) of the image, fetched as one blob range.
                let chunks = index.chunks_for(0, end);
                let Some(last) = chunks.clone().last() else {
                    return Ok(PrefetchStats::default());
                };
                let blob_end = index.chunk_ranges(last, start).0.end;
                let bytes = region.fill(blob_end)?;
                let image =
                    ChunkedImage::new(Arc::clone(&region) as SharedBlob, index.clone(), start)
                        .with_store(Arc::clone(&store));
                let mut buf = Vec::new();
                let result = chunks.clone().try_for_each(|i| {
                    let r = index.chunk_ranges(i, start).1;
                    buf.resize((r.end - r.start) as usize, 0);
                    image.read_at(r.start, &mut buf)
                });
                region.release();
                result.map(|()| PrefetchStats {
                    bytes,
                    chunks: chunks.len() as u64,
                })
            }));
        }
    }
    let reader = ErofsReader::open(image)?;
    Ok(OpenedLayer {
        tree: Arc::new(ErofsTree::new(reader, hints.name.clone())),
        format: LayerFormat::Erofs,
        prefetch_end,
        prefetcher,
        background,
    })
}

/// eStargz chunks through the cache: keyed by their `chunkDigest` (of the uncompressed bytes),
/// fetched and verified by the reader on a miss, verified again by the cache before keeping.
struct CachedChunks<B: BlobRead> {
    reader: ChunkReader<B>,
    cache: Arc<ChunkCache>,
}

impl<B: BlobRead> ChunkSource for CachedChunks<B> {
    fn chunk(&self, chunk: &ChunkRef) -> Result<Arc<[u8]>> {
        match chunk.digest {
            Some(d) => self
                .cache
                .get_or_fetch(&d, || self.reader.read_chunk(chunk)),
            // Unverifiable chunks (insecure legacy layers) are never cached.
            None => Ok(self.reader.read_chunk(chunk)?.into()),
        }
    }
}

/// EROFS frames through the cache, keyed by the sha256 of their on-blob bytes.
struct CacheStore(Arc<ChunkCache>);

impl ChunkStore for CacheStore {
    fn get_or_fetch(
        &self,
        digest: &Digest,
        fetch: &mut dyn FnMut() -> Result<Vec<u8>>,
    ) -> Result<Arc<[u8]>> {
        self.0.get_or_fetch(digest, fetch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A blob counting the reads that reach it.
    struct Counted(Vec<u8>, AtomicUsize);

    impl BlobRead for Counted {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.as_slice().read_at(off, buf)
        }
    }

    #[test]
    fn read_ahead_serves_following_reads_from_one_fetch() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let inner = Arc::new(Counted(data.clone(), AtomicUsize::new(0)));
        let blob = RegionBlob::new(Arc::clone(&inner) as SharedBlob, 100);
        let read = |off: u64, len: usize| blob.read_vec(off, len as u64).unwrap();
        assert_eq!(read(0, 10), &data[0..10]);
        assert_eq!(read(50, 20), &data[50..70]);
        assert_eq!(read(100, 10), &data[100..110]);
        assert_eq!(inner.1.load(Ordering::Relaxed), 1, "one fetch for [0, 110)");
        // Past the window, and a read as large as the read-ahead: fetched as asked.
        assert_eq!(read(500, 10), &data[500..510]);
        assert_eq!(read(0, 100), &data[0..100]);
        assert_eq!(inner.1.load(Ordering::Relaxed), 3);
        // The end of the blob clamps the window.
        assert_eq!(read(990, 10), &data[990..1000]);
        // Without read-ahead every read goes through.
        let plain = RegionBlob::new(Arc::clone(&inner) as SharedBlob, 0);
        let before = inner.1.load(Ordering::Relaxed);
        plain.read_vec(0, 10).unwrap();
        plain.read_vec(0, 10).unwrap();
        assert_eq!(inner.1.load(Ordering::Relaxed), before + 2);
    }
}

//! Converting one layer: keep it when it already is in the target format, else ingest and rewrite.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::time::Instant;

use super::report::LayerReport;
use super::BlobSink;
use super::{ConvertOptions, Progress};
use crate::blob::{BlobRead, BlobReader};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result, ResultExt};
use crate::estargz::{
    format, BlobFormat, EstargzOptions, EstargzReader, EstargzWriter, FooterKind,
};
use crate::layer::{detect_compression, Compression, IngestOptions, Layer};
use crate::oci::Descriptor;

/// Annotation naming the layer a converted layer was made from.
pub const ANNOTATION_SOURCE_DIGEST: &str = "org.lazypull.source.digest";

/// A converted (or kept) layer.
pub struct LayerOut {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub report: LayerReport,
}

/// Everything a layer conversion needs to know about its input.
pub struct LayerIn<'a> {
    pub descriptor: &'a Descriptor,
    /// The diffID the source config gives this layer (used when the layer is kept).
    pub source_diff_id: Option<Digest>,
    pub blob: Box<dyn BlobRead>,
    /// The layer's compression, from its media type.
    pub compression: Compression,
}

/// Convert one layer into `sink`.
pub fn convert_layer(
    input: LayerIn<'_>,
    opts: &ConvertOptions,
    sink: &dyn BlobSink,
    progress: &dyn Progress,
) -> Result<LayerOut> {
    let started = Instant::now();
    let desc = input.descriptor;
    check_compression(&input)?;
    if let Some(out) = try_keep(&input, opts, sink, progress)? {
        return Ok(finish_report(out, started));
    }

    let Some(toc_format) = opts.format.toc_format() else {
        let out = super::erofs::convert_erofs_layer(&input, opts, sink, progress)?;
        return Ok(finish_report(out, started));
    };
    let source_size = desc.size;
    let layer = ingest_layer(&input, sink, progress, true)?;

    let mut wopts = EstargzOptions::new(toc_format);
    wopts.chunk_size = opts.chunk_size.unwrap_or(opts.format.default_chunk_size());
    wopts.level = opts.level.unwrap_or(opts.format.default_level());
    wopts.prefetch = opts.prefetch.clone();
    let writer = EstargzWriter::new(wopts);

    // The writer reports uncompressed bytes; the bar counts source bytes, so scale.
    let scaled = ScaledProgress::new(layer.input.uncompressed_size, source_size, progress);
    let mut out = sink.create()?;
    let written = writer.write(&layer, &mut out, &|n| scaled.advance(n))?;
    let stored = out.finish()?;
    if stored.0 != written.digest {
        return Err(Error::format(format!(
            "blob store recorded {} for a blob written as {}",
            stored.0, written.digest
        )));
    }

    let mut annotations = desc.annotations.clone();
    for key in [
        format::ANNOTATION_TOC_DIGEST,
        format::ANNOTATION_UNCOMPRESSED_SIZE,
        format::ANNOTATION_ZSTD_MANIFEST_CHECKSUM,
        format::ANNOTATION_ZSTD_MANIFEST_POSITION,
    ] {
        annotations.remove(key);
    }
    annotations.extend(written.annotations.clone());
    annotations.insert(
        ANNOTATION_SOURCE_DIGEST.to_string(),
        desc.digest.to_string(),
    );
    let descriptor = Descriptor {
        media_type: opts.format.media_type().to_string(),
        digest: written.digest,
        size: written.size,
        annotations,
        ..desc.clone()
    };
    let report = LayerReport {
        source_digest: desc.digest,
        digest: written.digest,
        media_type: descriptor.media_type.clone(),
        size: written.size,
        source_size,
        diff_id: written.diff_id,
        toc_digest: Some(written.toc_digest),
        chunk_index_digest: None,
        uncompressed_size: written.uncompressed_size,
        entries: written.entries,
        chunks: written.chunks,
        prefetch_size: written.prefetch_end.unwrap_or(0),
        seconds: 0.0,
        kept: false,
    };
    Ok(finish_report(
        LayerOut {
            descriptor,
            diff_id: written.diff_id,
            report,
        },
        started,
    ))
}

/// The blob must be compressed as its media type says: runtimes decompress by media type, so a
/// mismatch is a broken image even where the converter could read it.
fn check_compression(input: &LayerIn<'_>) -> Result<()> {
    let mut head = [0u8; 4];
    let n = head.len().min(input.blob.len() as usize);
    input.blob.read_at(0, &mut head[..n])?;
    let found = detect_compression(&head[..n]);
    if found != input.compression {
        return Err(Error::format(format!(
            "media type {} announces {} compression but the blob is {}",
            input.descriptor.media_type,
            input.compression.name(),
            if n == 0 { "empty" } else { found.name() }
        )));
    }
    Ok(())
}

/// Ingest a layer: stream the blob through the decompressor into a spool on the destination's
/// filesystem, checking its digest and size against the descriptor.
pub(super) fn ingest_layer(
    input: &LayerIn<'_>,
    sink: &dyn BlobSink,
    progress: &dyn Progress,
    content_digests: bool,
) -> Result<Layer> {
    let desc = input.descriptor;
    let reader = ProgressReader {
        inner: BlobReader::new(&*input.blob, 0, input.blob.len()),
        progress,
    };
    let ingest = IngestOptions {
        spool_dir: sink.temp_dir(),
        expected_digest: Some(desc.digest),
        expected_size: Some(desc.size),
        skip_content_digests: !content_digests,
    };
    Layer::ingest(reader, &ingest)
}

fn finish_report(mut out: LayerOut, started: Instant) -> LayerOut {
    out.report.seconds = started.elapsed().as_secs_f64();
    out
}

/// A layer already in the target format is copied unchanged (annotations completed).
fn try_keep(
    input: &LayerIn<'_>,
    opts: &ConvertOptions,
    sink: &dyn BlobSink,
    progress: &dyn Progress,
) -> Result<Option<LayerOut>> {
    let desc = input.descriptor;
    let wanted = match opts.format.toc_format() {
        Some(BlobFormat::Estargz) => (Compression::Gzip, FooterKind::Estargz),
        Some(BlobFormat::ZstdChunked) => (Compression::Zstd, FooterKind::ZstdChunked),
        None => return Ok(None),
    };
    if input.compression != wanted.0 {
        return Ok(None);
    }
    let annotated = desc
        .annotations
        .get(format::ANNOTATION_TOC_DIGEST)
        .and_then(|s| s.parse::<Digest>().ok());
    // A blob whose footer or TOC does not parse is simply not eStargz yet: convert it.
    let reader = match EstargzReader::open(&*input.blob, annotated.as_ref()) {
        Ok(r) if r.footer().kind == wanted.1 => r,
        Ok(_) => return Ok(None),
        Err(e) if annotated.is_some() => {
            return Err(e.context("layer claims to be eStargz but its TOC does not verify"))
        }
        Err(_) => return Ok(None),
    };
    let toc_digest = *reader.toc_digest();
    // Counted as the writer counts them, so a kept layer reports what converting it did.
    let toc = reader.toc();
    let entries = toc.entries.iter().filter(|e| e.kind != "chunk").count();
    let chunks = toc
        .entries
        .iter()
        .filter(|e| !e.chunk_digest.is_empty())
        .count();
    let prefetch_size = reader.prefetch_end().unwrap_or(0);

    let (digest, size) = copy_blob(input, sink, progress)?;
    let (diff_id, uncompressed_size) = match input.source_diff_id {
        Some(d)
            if desc
                .annotations
                .contains_key(format::ANNOTATION_UNCOMPRESSED_SIZE) =>
        {
            let size = desc.annotations[format::ANNOTATION_UNCOMPRESSED_SIZE]
                .parse()
                .unwrap_or(0);
            (d, size)
        }
        _ => decompressed_digest(&*input.blob, input.compression)?,
    };
    let mut annotations: BTreeMap<String, String> = desc.annotations.clone();
    annotations
        .entry(format::ANNOTATION_TOC_DIGEST.to_string())
        .or_insert_with(|| toc_digest.to_string());
    annotations
        .entry(format::ANNOTATION_UNCOMPRESSED_SIZE.to_string())
        .or_insert_with(|| uncompressed_size.to_string());
    let descriptor = Descriptor {
        media_type: opts.format.media_type().to_string(),
        annotations,
        ..desc.clone()
    };
    let report = LayerReport {
        source_digest: desc.digest,
        digest,
        media_type: descriptor.media_type.clone(),
        size,
        source_size: desc.size,
        diff_id,
        toc_digest: Some(toc_digest),
        chunk_index_digest: None,
        uncompressed_size,
        entries,
        chunks,
        prefetch_size,
        seconds: 0.0,
        kept: true,
    };
    Ok(Some(LayerOut {
        descriptor,
        diff_id,
        report,
    }))
}

/// Copy a source blob unchanged into `sink`, checking it against its descriptor's digest.
pub(super) fn copy_blob(
    input: &LayerIn<'_>,
    sink: &dyn BlobSink,
    progress: &dyn Progress,
) -> Result<(Digest, u64)> {
    let desc = input.descriptor;
    let mut out = sink.create()?;
    let mut src = BlobReader::new(&*input.blob, 0, input.blob.len());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).map_err(|e| Error::io("read layer", e))?;
        if n == 0 {
            break;
        }
        io::Write::write_all(&mut out, &buf[..n]).map_err(|e| Error::io("write blob", e))?;
        progress.bytes(2 * n as u64);
    }
    let (digest, size) = out.finish()?;
    if digest != desc.digest {
        return Err(Error::DigestMismatch {
            what: "layer blob".into(),
            expected: desc.digest.to_string(),
            actual: digest.to_string(),
        });
    }
    Ok((digest, size))
}

/// Digest and size of a blob's decompressed stream.
fn decompressed_digest(blob: &dyn BlobRead, c: Compression) -> Result<(Digest, u64)> {
    let mut r = c.decoder(BlobReader::new(blob, 0, blob.len()))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| Error::io("decompress layer", e))
            .context("computing the diffID")?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let len = h.len();
    Ok((h.finish(), len))
}

/// Reports `total` bytes of output work as `source_size` source bytes on the progress bar, so a
/// layer's bar moves evenly whatever its compression ratio.
pub(super) struct ScaledProgress<'a> {
    done: std::sync::atomic::AtomicU64,
    total: u64,
    source_size: u64,
    progress: &'a dyn Progress,
}

impl<'a> ScaledProgress<'a> {
    pub(super) fn new(total: u64, source_size: u64, progress: &'a dyn Progress) -> Self {
        ScaledProgress {
            done: std::sync::atomic::AtomicU64::new(0),
            total: total.max(1),
            source_size,
            progress,
        }
    }

    /// `n` more bytes of output work done.
    pub(super) fn advance(&self, n: u64) {
        let before = self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let a = before.min(self.total) * self.source_size / self.total;
        let b = (before + n).min(self.total) * self.source_size / self.total;
        self.progress.bytes(b - a);
    }
}

/// Counts source bytes read into the progress bar.
struct ProgressReader<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}

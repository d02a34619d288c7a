//! Converting one layer to EROFS: ingest, build the image, stream it through the chunk writer.

use std::io::{self, Write};

use super::layer::{
    copy_blob, ingest_layer, LayerIn, LayerOut, ScaledProgress, ANNOTATION_SOURCE_DIGEST,
};
use super::report::LayerReport;
use super::{BlobSink, ConvertOptions, Progress, TargetFormat};
use crate::digest::Digest;
use crate::erofs::chunk_index::ChunkedWriter;
use crate::erofs::format::{
    ANNOTATION_LAZYPULL_PREFETCH_RANGE, CHUNK_COMPRESSION_NONE, CHUNK_COMPRESSION_ZSTD,
    OS_FEATURE_EROFS,
};
use crate::erofs::{ErofsBuilder, ErofsOptions};
use crate::error::{Error, Result};
use crate::oci::Descriptor;

/// Convert one layer into an EROFS blob in `sink`.
pub fn convert_erofs_layer(
    input: &LayerIn<'_>,
    opts: &ConvertOptions,
    sink: &dyn BlobSink,
    progress: &dyn Progress,
) -> Result<LayerOut> {
    let desc = input.descriptor;
    let layer = ingest_layer(input, sink, progress, false)?;
    let zstd = opts.format == TargetFormat::Erofs;
    let builder = ErofsBuilder::new(ErofsOptions {
        prefetch: opts.prefetch.clone(),
        uuid: uuid_for(&desc.digest),
    });
    let chunk_size = opts.chunk_size.unwrap_or(opts.format.default_chunk_size());
    let level = opts.level.unwrap_or(opts.format.default_level());
    let level = i32::try_from(level)
        .ok()
        .filter(|l| (1..=22).contains(l))
        .ok_or_else(|| Error::Invalid(format!("zstd level {level} is out of range 1..=22")))?;

    let mut out = sink.create()?;
    let compression = if zstd {
        CHUNK_COMPRESSION_ZSTD
    } else {
        CHUNK_COMPRESSION_NONE
    };
    let mut chunked = ChunkedWriter::new(&mut out, compression, chunk_size, level);
    let scaled = ScaledProgress::new(layer.input.uncompressed_size, desc.size, progress);
    let built = builder.build(
        &layer,
        ProgressWriter {
            inner: &mut chunked,
            progress: &scaled,
        },
    )?;
    let wrapped = chunked.finish()?;
    let stored = out.finish()?;
    if stored.0 != wrapped.digest {
        return Err(Error::format(format!(
            "blob store recorded {} for a blob written as {}",
            stored.0, wrapped.digest
        )));
    }

    let mut annotations = desc.annotations.clone();
    annotations.retain(|k, _| {
        !k.starts_with("org.erofs.")
            && !k.starts_with("containerd.io/snapshot/lazypull/erofs.")
            && !k.starts_with("containerd.io/snapshot/stargz/")
            && !k.starts_with("io.containers.")
    });
    annotations.extend(wrapped.annotations(zstd));
    annotations.insert(
        ANNOTATION_LAZYPULL_PREFETCH_RANGE.to_string(),
        format!("0:{}", built.prefetch_end),
    );
    annotations.insert(
        ANNOTATION_SOURCE_DIGEST.to_string(),
        desc.digest.to_string(),
    );
    let diff_id = if zstd {
        wrapped.uncompressed_digest
    } else {
        wrapped.digest
    };
    let descriptor = Descriptor {
        media_type: opts.layer_media_type().to_string(),
        digest: wrapped.digest,
        size: wrapped.size,
        annotations,
        ..desc.clone()
    };
    let report = LayerReport {
        source_digest: desc.digest,
        digest: wrapped.digest,
        media_type: descriptor.media_type.clone(),
        size: wrapped.size,
        source_size: desc.size,
        diff_id,
        toc_digest: None,
        chunk_index_digest: Some(wrapped.index_digest),
        uncompressed_size: wrapped.uncompressed_size,
        entries: built.inodes as usize,
        chunks: wrapped.chunks,
        prefetch_size: built.prefetch_end,
        seconds: 0.0,
        kept: false,
    };
    Ok(LayerOut {
        descriptor,
        diff_id,
        report,
    })
}

/// Keep a layer that already is EROFS: copy the blob unchanged, its diffID from the source
/// config, its descriptor renamed to `media_type` (the same framing, under the names asked for).
pub fn keep_erofs_layer(
    input: &LayerIn<'_>,
    media_type: &str,
    sink: &dyn BlobSink,
    progress: &dyn Progress,
) -> Result<LayerOut> {
    let desc = input.descriptor;
    let diff_id = input.source_diff_id.ok_or_else(|| {
        Error::format("an EROFS layer without a diffID in the config cannot be kept")
    })?;
    let (digest, size) = copy_blob(input, sink, progress)?;
    let report = LayerReport {
        source_digest: desc.digest,
        digest,
        media_type: media_type.to_string(),
        size,
        source_size: desc.size,
        diff_id,
        toc_digest: None,
        chunk_index_digest: desc
            .annotations
            .get(crate::erofs::format::ANNOTATION_CHUNK_INDEX_DIGEST)
            .and_then(|d| d.parse().ok()),
        uncompressed_size: 0,
        entries: 0,
        chunks: 0,
        prefetch_size: 0,
        seconds: 0.0,
        kept: true,
    };
    Ok(LayerOut {
        descriptor: Descriptor {
            media_type: media_type.to_string(),
            ..desc.clone()
        },
        diff_id,
        report,
    })
}

/// Add `erofs` to an image config's `os.features` (erofs-image-spec §5.4), keeping every other
/// field.
pub fn add_erofs_os_feature(config: &[u8]) -> Result<Vec<u8>> {
    let mut v: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| Error::format(format!("image config: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Error::format("image config is not a JSON object"))?;
    let features = obj
        .entry("os.features")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    let list = features
        .as_array_mut()
        .ok_or_else(|| Error::format("image config: `os.features` is not an array"))?;
    if !list.iter().any(|f| f == OS_FEATURE_EROFS) {
        list.push(OS_FEATURE_EROFS.into());
    }
    Ok(serde_json::to_vec(&v).expect("a JSON value serialises"))
}

/// A stable image UUID for a source layer, so conversion is reproducible.
fn uuid_for(source: &Digest) -> [u8; 16] {
    let mut seed = b"lazypull erofs uuid ".to_vec();
    seed.extend_from_slice(source.as_bytes());
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&Digest::of(&seed).as_bytes()[..16]);
    // An RFC 4122 version-5-style UUID (name based), so tools display it as such.
    uuid[6] = (uuid[6] & 0x0f) | 0x50;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// Reports image bytes written on the progress bar (the image is about as large as the tar).
struct ProgressWriter<'a, 'p, W> {
    inner: W,
    progress: &'a ScaledProgress<'p>,
}

impl<W: Write> Write for ProgressWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

//! The conversion pipeline: image in, converted image out, atomically.
//!
//! [`convert`] opens the source, walks its index (every platform, or the one asked for) and
//! manifests, converts each manifest's layers in parallel on a rayon pool
//! ([`layer::convert_layer`]), rewrites each config's `rootfs.diff_ids`, writes new manifests and
//! an index, and only then commits the destination. On any error the destination is untouched.

mod erofs;
mod layer;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

pub use erofs::add_erofs_os_feature;
pub use layer::{convert_layer, LayerIn, LayerOut, ANNOTATION_SOURCE_DIGEST};
pub use report::{human_bytes, ConvertReport, DescriptorReport, LayerReport, ManifestReport};

use crate::digest::Digest;
use crate::erofs::format::{self as erofs_format, ErofsFraming, ErofsMediaTypes};
use crate::error::{Error, Result, ResultExt};
use crate::estargz::BlobFormat;
use crate::oci::{
    self, media, media::LayerMediaType, Descriptor, ImageRef, ImageSource, Index, LayoutDest,
    LayoutSource, Manifest, PlatformFilter,
};
use crate::registry::{self, PushProgress, Reference, RegistryOptions};

/// The layer format a conversion produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetFormat {
    /// eStargz: gzip members and a TOC (`tar+gzip`).
    Estargz,
    /// zstd:chunked: zstd frames and a TOC (`tar+zstd`).
    ZstdChunked,
    /// An EROFS image cut into zstd frames with a chunk index (`application/vnd.erofs+zstd`).
    Erofs,
    /// A raw EROFS image with a raw chunk index (`application/vnd.erofs`).
    ErofsRaw,
}

impl TargetFormat {
    /// The format's name, as on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            TargetFormat::Estargz => "estargz",
            TargetFormat::ZstdChunked => "zstdchunked",
            // The raw variant differs by media type, not by format.
            TargetFormat::Erofs | TargetFormat::ErofsRaw => "erofs",
        }
    }

    /// The layer media type of the format (EROFS under the erofs-image-spec's names; see
    /// [`ConvertOptions::layer_media_type`]).
    pub fn media_type(self) -> &'static str {
        match self {
            TargetFormat::Estargz => BlobFormat::Estargz.media_type(),
            TargetFormat::ZstdChunked => BlobFormat::ZstdChunked.media_type(),
            TargetFormat::Erofs => erofs_format::MEDIA_TYPE_EROFS_ZSTD,
            TargetFormat::ErofsRaw => erofs_format::MEDIA_TYPE_EROFS,
        }
    }

    /// Chunk size when none is given: 4 MiB for eStargz (the reference's), 1 MiB for EROFS
    /// (the erofs-image-spec's guidance).
    pub fn default_chunk_size(self) -> u64 {
        match self {
            TargetFormat::Estargz | TargetFormat::ZstdChunked => 4 << 20,
            TargetFormat::Erofs | TargetFormat::ErofsRaw => 1 << 20,
        }
    }

    /// Compression level when none is given.
    pub fn default_level(self) -> u32 {
        match self {
            TargetFormat::Estargz => 9,
            TargetFormat::ZstdChunked | TargetFormat::Erofs | TargetFormat::ErofsRaw => 3,
        }
    }

    /// The eStargz writer's format, for the two TOC formats.
    pub fn toc_format(self) -> Option<BlobFormat> {
        match self {
            TargetFormat::Estargz => Some(BlobFormat::Estargz),
            TargetFormat::ZstdChunked => Some(BlobFormat::ZstdChunked),
            TargetFormat::Erofs | TargetFormat::ErofsRaw => None,
        }
    }

    /// Whether the output is EROFS.
    pub fn is_erofs(self) -> bool {
        self.toc_format().is_none()
    }
}

/// Options of a conversion.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub format: TargetFormat,
    /// Chunk size; `None` for the format's default.
    pub chunk_size: Option<u64>,
    /// Compression level; `None` for the format's default.
    pub level: Option<u32>,
    /// Files in access order, placed first in every layer.
    pub prefetch: Option<crate::prefetch::PrefetchList>,
    /// Worker threads; `None` for one per core.
    pub threads: Option<usize>,
    /// Only this platform (`os/arch[/variant]`).
    pub platform: Option<String>,
    /// How registry sources and destinations are reached.
    pub registry: RegistryOptions,
    /// The names EROFS layers are written under.
    pub erofs_media_types: ErofsMediaTypes,
}

impl ConvertOptions {
    /// The media type converted layers are written with.
    pub fn layer_media_type(&self) -> &'static str {
        match self.format {
            TargetFormat::Erofs => self.erofs_media_types.media_type(ErofsFraming::Zstd),
            TargetFormat::ErofsRaw => self.erofs_media_types.media_type(ErofsFraming::Raw),
            other => other.media_type(),
        }
    }
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            format: TargetFormat::Estargz,
            chunk_size: None,
            level: None,
            prefetch: None,
            threads: None,
            platform: None,
            registry: RegistryOptions::default(),
            erofs_media_types: ErofsMediaTypes::Spec,
        }
    }
}

/// Receives progress; implementations draw bars or log. All methods may be called from any thread.
pub trait Progress: Sync {
    /// The conversion knows its work: `layers` layers of `bytes` source bytes in all. Each byte
    /// is counted twice: once read, once written.
    fn begin(&self, _layers: usize, _bytes: u64) {}
    /// Work done.
    fn bytes(&self, _n: u64) {}
    /// Layer `index` (counting from 0 over every manifest's layers, in image order) finished.
    fn layer_done(&self, _index: usize, _total: usize, _report: &LayerReport) {}
    /// A blob transfer from or to a registry reached `done` of `size` bytes (it starts at 0,
    /// starts over at 0 after a failure, and is complete at `size`).
    fn transfer(&self, _kind: Transfer, _digest: &Digest, _size: u64, _done: u64) {}
}

/// Which way a blob goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// Downloaded from a registry source.
    Pull,
    /// Uploaded to a registry destination.
    Push,
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Where converted blobs go: a temporary file per blob, moved into place when finished.
pub trait BlobSink: Sync {
    /// A new blob being written.
    fn create(&self) -> Result<Box<dyn BlobOut>>;
    /// A directory on the destination's filesystem for scratch files (spools), if any.
    fn temp_dir(&self) -> Option<PathBuf>;
}

/// A blob being written.
pub trait BlobOut: std::io::Write {
    /// Finish the blob: its digest and size.
    fn finish(self: Box<Self>) -> Result<(Digest, u64)>;
}

/// Convert the image `src` into `dst` (both transport references such as `oci:DIR:TAG` or
/// `docker://HOST/REPO:TAG`).
///
/// A registry destination is written as a layout in a temporary directory first and pushed
/// from there once the whole conversion has succeeded: blobs, manifests, and the tag last.
pub fn convert(
    src: &str,
    dst: &str,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<ConvertReport> {
    let started = Instant::now();
    let src_ref: ImageRef = src.parse()?;
    let dst_ref: ImageRef = dst.parse()?;
    // Refuse a bad destination before pulling anything.
    let push_to: Option<Reference> = match &dst_ref {
        ImageRef::Registry { reference } => Some(reference.parse()?),
        ImageRef::Layout { .. } => None,
        other => {
            return Err(Error::Unsupported(format!(
                "destination {other}: only oci:DIR[:TAG] and registry destinations are supported"
            )))
        }
    };
    let source = oci::open_source_with(&src_ref, &opts.registry)?;
    let staging;
    let (dir, tag) = match &dst_ref {
        ImageRef::Layout { dir, tag } => (
            dir.clone(),
            tag.clone()
                .or_else(|| source_tag(&src_ref))
                .unwrap_or_else(|| "latest".into()),
        ),
        _ => {
            staging = tempfile::Builder::new()
                .prefix("lazypull-push-")
                .tempdir()
                .map_err(|e| Error::io("create a staging directory for the push", e))?;
            (staging.path().join("image"), "push".to_string())
        }
    };
    let dest = LayoutDest::create(&dir, Some(tag.clone()))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start worker threads: {e}")))?;
    let image = source.name();
    let (root, manifests) = pool
        .install(|| convert_root(&*source, &dest, opts, progress))
        .with_context(|| format!("image {image}"))?;
    dest.commit(root.clone())
        .with_context(|| format!("writing {dst}"))?;
    let push = match &push_to {
        Some(target) => {
            let layout = LayoutSource::open_dir(&dir, Some(tag))?;
            let mount_from = match &src_ref {
                ImageRef::Registry { reference } => reference
                    .parse::<Reference>()
                    .ok()
                    .filter(|s| s.api_host() == target.api_host())
                    .map(|s| s.repository),
                _ => None,
            };
            let report = registry::push_image(
                &layout,
                &root,
                target,
                mount_from.as_deref(),
                &opts.registry,
                &ProgressPush(progress),
            )
            .with_context(|| format!("pushing to {dst}"))?;
            Some(report)
        }
        None => None,
    };
    Ok(ConvertReport {
        source: src.to_string(),
        destination: dst.to_string(),
        format: opts.format.name().to_string(),
        root: DescriptorReport {
            media_type: root.media_type.clone(),
            digest: root.digest,
            size: root.size,
        },
        manifests,
        push,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Push progress reported through the conversion's [`Progress`].
struct ProgressPush<'a>(&'a dyn Progress);

impl PushProgress for ProgressPush<'_> {
    fn blob(&self, digest: &Digest, size: u64, done: u64) {
        self.0.transfer(Transfer::Push, digest, size, done);
    }
}

/// A manifest to convert, with the platform its index gave it.
struct Job {
    descriptor: Descriptor,
    manifest: Manifest,
    config: Vec<u8>,
}

fn convert_root(
    source: &dyn ImageSource,
    dest: &LayoutDest,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<(Descriptor, Vec<ManifestReport>)> {
    let root = source.root()?;
    let is_index = media::is_index(&root.media_type);
    let mut index = None;
    let mut jobs = Vec::new();
    if is_index {
        let parsed = Index::from_json(&source.read_blob(&root)?)
            .with_context(|| format!("index {}", root.digest))?;
        let filter: Option<PlatformFilter> =
            opts.platform.as_deref().map(str::parse).transpose()?;
        for d in &parsed.descriptors {
            // Build attestations describe the image; they hold no filesystem layers.
            if d.is_attestation() {
                continue;
            }
            if !media::is_manifest(&d.media_type) {
                return Err(Error::Unsupported(format!(
                    "index entry {} has media type {}: nested indexes are not supported",
                    d.digest, d.media_type
                )));
            }
            if let Some(f) = &filter {
                if !d.platform.as_ref().is_some_and(|p| f.matches(p)) {
                    continue;
                }
            }
            jobs.push(load_job(source, d.clone())?);
        }
        if jobs.is_empty() {
            return Err(Error::Invalid(format!(
                "no manifest in the index matches platform {}",
                opts.platform.as_deref().unwrap_or("(any)")
            )));
        }
        index = Some(parsed);
    } else if media::is_manifest(&root.media_type) {
        jobs.push(load_job(source, root.clone())?);
    } else {
        return Err(Error::Unsupported(format!(
            "root {} has media type {}, neither a manifest nor an index",
            root.digest, root.media_type
        )));
    }

    let total_layers: usize = jobs.iter().map(|j| j.manifest.layers.len()).sum();
    let total_bytes: u64 = jobs
        .iter()
        .flat_map(|j| j.manifest.layers.iter().map(|l| l.size))
        .sum();
    progress.begin(total_layers, 2 * total_bytes);
    let mut reports = Vec::new();
    let mut new_descs = Vec::new();
    let mut first_layer = 0;
    for job in jobs {
        let (desc, report) = convert_manifest(
            source,
            dest,
            opts,
            progress,
            &job,
            first_layer,
            total_layers,
        )
        .with_context(|| format!("manifest {}", job.descriptor.digest))?;
        first_layer += job.manifest.layers.len();
        new_descs.push(desc);
        reports.push(report);
    }
    let root = match index {
        None => new_descs.pop().expect("one manifest converted"),
        Some(index) => {
            let json = index.to_oci_json(&new_descs);
            let mut d = dest.put_bytes(media::OCI_INDEX, &json)?;
            d.annotations = root.annotations.clone();
            d
        }
    };
    Ok((root, reports))
}

fn load_job(source: &dyn ImageSource, descriptor: Descriptor) -> Result<Job> {
    let bytes = source.read_blob(&descriptor)?;
    let manifest =
        Manifest::from_json(&bytes).with_context(|| format!("manifest {}", descriptor.digest))?;
    let config = source
        .read_blob(&manifest.config)
        .with_context(|| format!("config {}", manifest.config.digest))?;
    Ok(Job {
        descriptor,
        manifest,
        config,
    })
}

fn convert_manifest(
    source: &dyn ImageSource,
    dest: &LayoutDest,
    opts: &ConvertOptions,
    progress: &dyn Progress,
    job: &Job,
    first_layer: usize,
    total_layers: usize,
) -> Result<(Descriptor, ManifestReport)> {
    let diff_ids = config_diff_ids(&job.config)?;
    if diff_ids.len() != job.manifest.layers.len() {
        return Err(Error::format(format!(
            "config {} lists {} diff_ids for {} layers",
            job.manifest.config.digest,
            diff_ids.len(),
            job.manifest.layers.len()
        )));
    }
    let outs: Vec<LayerOut> = job
        .manifest
        .layers
        .par_iter()
        .zip(diff_ids.par_iter())
        .enumerate()
        .map(|(i, (l, diff_id))| {
            let report = |done| progress.transfer(Transfer::Pull, &l.digest, l.size, done);
            let blob = source.blob_with_progress(l, &report)?;
            let out = if let Some(framing) = ErofsFraming::of_media_type(&l.media_type) {
                if !opts.format.is_erofs() {
                    return Err(Error::Unsupported(format!(
                        "layer {}: converting an EROFS layer to {} is not supported",
                        l.digest,
                        opts.format.name()
                    )));
                }
                let input = LayerIn {
                    descriptor: l,
                    source_diff_id: Some(*diff_id),
                    blob,
                    compression: crate::layer::Compression::None,
                };
                let media_type = opts.erofs_media_types.media_type(framing);
                erofs::keep_erofs_layer(&input, media_type, dest, progress)?
            } else {
                let compression = LayerMediaType::classify(&l.media_type)?.compression;
                convert_layer(
                    LayerIn {
                        descriptor: l,
                        source_diff_id: Some(*diff_id),
                        blob,
                        compression,
                    },
                    opts,
                    dest,
                    progress,
                )?
            };
            progress.layer_done(first_layer + i, total_layers, &out.report);
            Ok(out)
        })
        .collect::<Vec<Result<LayerOut>>>()
        .into_iter()
        .zip(&job.manifest.layers)
        .map(|(r, l)| r.with_context(|| format!("layer {}", l.digest)))
        .collect::<Result<_>>()?;

    let new_diff_ids: Vec<Digest> = outs.iter().map(|o| o.diff_id).collect();
    let mut config = oci::rewrite_config(&job.config, &new_diff_ids)
        .with_context(|| format!("config {}", job.manifest.config.digest))?;
    if opts.format.is_erofs() {
        config = erofs::add_erofs_os_feature(&config)
            .with_context(|| format!("config {}", job.manifest.config.digest))?;
    }
    let config_desc = dest.put_bytes(media::OCI_CONFIG, &config)?;
    let layers: Vec<Descriptor> = outs.iter().map(|o| o.descriptor.clone()).collect();
    let manifest_json = job.manifest.to_oci_json(&config_desc, &layers);
    let mut desc = dest.put_bytes(media::OCI_MANIFEST, &manifest_json)?;
    desc.platform = job.descriptor.platform.clone();
    if opts.format.is_erofs() {
        if let Some(p) = desc.platform.as_mut() {
            let features = p.os_features.get_or_insert_with(Vec::new);
            if !features.iter().any(|f| f == erofs_format::OS_FEATURE_EROFS) {
                features.push(erofs_format::OS_FEATURE_EROFS.to_string());
            }
        }
    }
    desc.annotations = job.descriptor.annotations.clone();
    let report = ManifestReport {
        platform: desc.platform.as_ref().map(|p| p.to_string()),
        digest: desc.digest,
        config: config_desc.digest,
        layers: outs.into_iter().map(|o| o.report).collect(),
    };
    Ok((desc, report))
}

/// The tag a source reference names, kept for the destination when it names none.
fn source_tag(r: &ImageRef) -> Option<String> {
    match r {
        ImageRef::Registry { reference } => reference.parse::<Reference>().ok()?.tag,
        ImageRef::Layout { tag, .. } | ImageRef::OciArchive { tag, .. } => tag.clone(),
        ImageRef::DockerArchive {
            selector: Some(oci::ArchiveSelector::RepoTag(rt)),
            ..
        } => rt.rsplit_once(':').map(|(_, t)| t.to_string()),
        _ => None,
    }
}

/// The `rootfs.diff_ids` of an image config.
fn config_diff_ids(config: &[u8]) -> Result<Vec<Digest>> {
    let v: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| Error::format(format!("image config: {e}")))?;
    let ids = v
        .pointer("/rootfs/diff_ids")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| Error::format("image config: no `rootfs.diff_ids` array"))?;
    ids.iter()
        .map(|d| {
            d.as_str()
                .ok_or_else(|| Error::format("image config: a diff_id is not a string"))?
                .parse()
        })
        .collect()
}

impl BlobSink for LayoutDest {
    fn create(&self) -> Result<Box<dyn BlobOut>> {
        Ok(Box::new(self.blob_writer()?))
    }
    fn temp_dir(&self) -> Option<PathBuf> {
        Some(self.staging_dir().to_path_buf())
    }
}

impl BlobOut for oci::BlobWriter {
    fn finish(self: Box<Self>) -> Result<(Digest, u64)> {
        let w = oci::BlobWriter::finish(*self)?;
        Ok((w.digest, w.size))
    }
}

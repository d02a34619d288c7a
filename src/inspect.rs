//! `lazypull inspect`: what an image's layers are, read the way a lazy mount reads them (only
//! footers, TOCs and chunk indexes are fetched, never whole layers).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lazypull_converter::convert::human_bytes;
use lazypull_converter::erofs::chunk_index::{
    parse_range_annotation, read_embedded_index, ChunkedImage,
};
use lazypull_converter::erofs::{format as erofs_format, ErofsReader};
use lazypull_converter::estargz::{format as estargz_format, EstargzReader};
use lazypull_converter::oci::{
    self, media, Descriptor, ImageNode, ImageRef, ImageSource, Manifest, PlatformFilter,
};
use lazypull_converter::registry::RegistrySource;
use lazypull_converter::{BlobRead, Digest};
use lazypull_fuse::fetch::{FetchOptions, HttpBlob, RangeFetcher};
use serde_json::{json, Value};

/// Arguments of `lazypull inspect`.
#[derive(Clone, Debug)]
pub struct InspectArgs {
    pub image: String,
    /// Only this platform of an index.
    pub platform: Option<String>,
    pub json: bool,
    pub registry: crate::RegistryArgs,
}

/// The annotations a lazy mount verifies a layer by, or finds its index with.
const VERIFICATION_ANNOTATIONS: &[&str] = &[
    estargz_format::ANNOTATION_TOC_DIGEST,
    estargz_format::ANNOTATION_UNCOMPRESSED_SIZE,
    estargz_format::ANNOTATION_ZSTD_MANIFEST_CHECKSUM,
    estargz_format::ANNOTATION_ZSTD_MANIFEST_POSITION,
    erofs_format::ANNOTATION_CHUNK_INDEX_DIGEST,
    erofs_format::ANNOTATION_CHUNK_INDEX_RANGE,
    erofs_format::ANNOTATION_UNCOMPRESSED_DIGEST,
    erofs_format::ANNOTATION_LAZYPULL_CHUNK_INDEX_DIGEST,
    erofs_format::ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE,
    erofs_format::ANNOTATION_LAZYPULL_PREFETCH_RANGE,
];

/// `lazypull inspect IMAGE`: a summary per layer on stdout, or the same as JSON.
pub fn run_inspect(args: InspectArgs) -> Result<()> {
    let r: ImageRef = args.image.parse()?;
    let (source, remote): (Arc<dyn ImageSource>, Option<Arc<RegistrySource>>) = match &r {
        ImageRef::Registry { reference } => {
            let s = Arc::new(RegistrySource::open(
                &reference.parse()?,
                &args.registry.options()?,
            )?);
            (s.clone(), Some(s))
        }
        _ => (Arc::from(oci::open_source(&r)?), None),
    };
    let fetcher = match &remote {
        Some(_) => Some(RangeFetcher::new(FetchOptions {
            accept_invalid_certs: args.registry.insecure,
            ..FetchOptions::default()
        })?),
        None => None,
    };
    let root = source.root()?;
    let filter: Option<PlatformFilter> = args.platform.as_deref().map(str::parse).transpose()?;
    let manifests: Vec<(Descriptor, Manifest)> = match ImageNode::read(source.as_ref(), &root)? {
        ImageNode::Manifest(m) => vec![(root.clone(), m)],
        ImageNode::Index(index) => {
            let mut out = Vec::new();
            for d in &index.descriptors {
                if !media::is_manifest(&d.media_type) || d.is_attestation() {
                    continue;
                }
                if let Some(f) = &filter {
                    if !d.platform.as_ref().is_some_and(|p| f.matches(p)) {
                        continue;
                    }
                }
                match ImageNode::read(source.as_ref(), d)? {
                    ImageNode::Manifest(m) => out.push((d.clone(), m)),
                    ImageNode::Index(_) => bail!("nested indexes are not supported"),
                }
            }
            out
        }
    };
    if manifests.is_empty() {
        bail!("{}: no manifest matches the platform", args.image);
    }
    let mut report = Vec::new();
    for (desc, m) in &manifests {
        let mut layers = Vec::new();
        for l in &m.layers {
            let blob: Arc<dyn BlobRead> = match (&remote, &fetcher) {
                (Some(reg), Some(f)) => {
                    let (client, url) = reg.blob_location(&l.digest);
                    Arc::new(HttpBlob::with_auth(f, url.as_str(), l.size, client)?)
                }
                _ => Arc::from(source.blob(l)?),
            };
            layers.push(inspect_layer(l, blob.as_ref()));
        }
        report.push(json!({
            "digest": desc.digest,
            "mediaType": desc.media_type,
            "platform": desc.platform.as_ref().map(|p| p.to_string()),
            "config": m.config.digest,
            "layers": layers,
        }));
    }
    let out = json!({
        "image": args.image,
        "root": {"digest": root.digest, "mediaType": root.media_type, "size": root.size},
        "manifests": report,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_human(&out);
    }
    Ok(())
}

/// One layer's facts as JSON; a layer that cannot be read says why in `error`.
fn inspect_layer(desc: &Descriptor, blob: &dyn BlobRead) -> Value {
    let present: Vec<&str> = VERIFICATION_ANNOTATIONS
        .iter()
        .copied()
        .filter(|k| desc.annotations.contains_key(*k))
        .collect();
    let mut v = json!({
        "digest": desc.digest,
        "mediaType": desc.media_type,
        "size": desc.size,
        "verificationAnnotations": present,
    });
    let framing = erofs_format::ErofsFraming::of_media_type(&desc.media_type);
    let facts = if let Some(framing) = framing {
        erofs_facts(desc, blob, framing)
    } else if desc
        .annotations
        .contains_key(estargz_format::ANNOTATION_TOC_DIGEST)
        || desc
            .annotations
            .contains_key(estargz_format::ANNOTATION_ZSTD_MANIFEST_CHECKSUM)
    {
        estargz_facts(desc, blob)
    } else {
        // Not annotated as lazy: a plain layer, unless its footer says eStargz after all.
        estargz_facts(desc, blob).or_else(|_| {
            Ok(json!({
                "format": format!("plain ({})", media::to_oci(&desc.media_type)
                    .trim_start_matches("application/vnd.oci.image.layer.v1.")),
                "lazy": false,
            }))
        })
    };
    match facts {
        Ok(Value::Object(f)) => v.as_object_mut().expect("an object").extend(f),
        Ok(_) => {}
        Err(e) => {
            v["error"] = Value::String(crate::error_message(&e));
        }
    }
    v
}

fn estargz_facts(desc: &Descriptor, blob: &dyn BlobRead) -> Result<Value> {
    let anchor = desc
        .annotations
        .get(estargz_format::ANNOTATION_TOC_DIGEST)
        .map(|s| s.parse::<Digest>())
        .transpose()?;
    let reader = EstargzReader::open(blob, anchor.as_ref())
        .with_context(|| format!("layer {}: reading the TOC", desc.digest))?;
    let chunks: usize = reader.entries().iter().map(|e| e.chunks.len()).sum();
    let uncompressed: u64 = reader.entries().iter().map(|e| e.size).sum();
    let format = if media::to_oci(&desc.media_type).ends_with("zstd") {
        "zstdchunked"
    } else {
        "estargz"
    };
    Ok(json!({
        "format": format,
        "lazy": true,
        "entries": reader.entries().len(),
        "chunks": chunks,
        "fileBytes": uncompressed,
        "prefetchSize": reader.prefetch_end().unwrap_or(0),
        "tocDigest": reader.toc_digest(),
        "verified": reader.is_verified(),
    }))
}

fn erofs_facts(
    desc: &Descriptor,
    blob: &dyn BlobRead,
    framing: erofs_format::ErofsFraming,
) -> Result<Value> {
    let zstd = framing == erofs_format::ErofsFraming::Zstd;
    let a = &desc.annotations;
    let range = a
        .get(erofs_format::ANNOTATION_CHUNK_INDEX_RANGE)
        .or_else(|| a.get(erofs_format::ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE))
        .context("no chunk-index range annotation")?;
    let anchor = a
        .get(erofs_format::ANNOTATION_CHUNK_INDEX_DIGEST)
        .or_else(|| a.get(erofs_format::ANNOTATION_LAZYPULL_CHUNK_INDEX_DIGEST))
        .map(|s| s.parse::<Digest>())
        .transpose()?;
    let (index, start) =
        read_embedded_index(&blob, zstd, parse_range_annotation(range)?, anchor.as_ref())
            .with_context(|| format!("layer {}: reading the chunk index", desc.digest))?;
    let chunks = index.entries().len();
    let image = ChunkedImage::new(blob, index, start);
    let image_size = image.len();
    let reader = ErofsReader::open(image)
        .with_context(|| format!("layer {}: reading the EROFS superblock", desc.digest))?;
    let prefetch = a
        .get(erofs_format::ANNOTATION_LAZYPULL_PREFETCH_RANGE)
        .and_then(|r| r.split_once(':'))
        .and_then(|(s, e)| Some(e.parse::<u64>().ok()? - s.parse::<u64>().ok()?))
        .unwrap_or(0);
    Ok(json!({
        "format": if zstd { "erofs" } else { "erofs (raw)" },
        "lazy": true,
        "entries": reader.superblock().inos.get(),
        "chunks": chunks,
        "imageSize": image_size,
        "prefetchSize": prefetch,
        "verified": anchor.is_some(),
    }))
}

fn print_human(report: &Value) {
    let root = &report["root"];
    println!(
        "{} ({} {})",
        report["image"].as_str().unwrap_or(""),
        root["mediaType"].as_str().unwrap_or(""),
        root["digest"].as_str().unwrap_or("")
    );
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    for m in report["manifests"].as_array().into_iter().flatten() {
        let layers = m["layers"].as_array().map_or(&[][..], Vec::as_slice);
        println!(
            "manifest {}{} ({} layers)",
            m["digest"].as_str().unwrap_or(""),
            m["platform"]
                .as_str()
                .map(|p| format!(" {p}"))
                .unwrap_or_default(),
            layers.len()
        );
        for (i, l) in layers.iter().enumerate() {
            let mut line = format!(
                "  layer {}: {} {} {}",
                i + 1,
                l["digest"].as_str().unwrap_or(""),
                l["format"].as_str().unwrap_or("?"),
                human_bytes(num(&l["size"]))
            );
            if let Some(e) = l["error"].as_str() {
                line.push_str(&format!(": unreadable: {e}"));
            } else if l["lazy"] == true {
                line.push_str(&format!(
                    ", {} entries, {} chunks, prefetch {}, {}",
                    num(&l["entries"]),
                    num(&l["chunks"]),
                    human_bytes(num(&l["prefetchSize"])),
                    if l["verified"] == true {
                        "verified by its annotations"
                    } else {
                        "NOT verifiable (no digest annotation)"
                    }
                ));
            } else {
                line.push_str(": not lazily pullable (convert it with lazypull convert)");
            }
            println!("{line}");
        }
    }
}

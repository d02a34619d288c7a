//! `lazypull demo`: the main job end to end on an embedded sample image.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lazypull_converter::convert::{self, human_bytes, ConvertOptions, NoProgress, TargetFormat};
use lazypull_converter::erofs::{chunk_index, format as erofs_format, ErofsReader};
use lazypull_converter::estargz::EstargzReader;
use lazypull_converter::layer::EntryKind;
use lazypull_converter::oci::{self, media, ImageRef, Manifest};
use lazypull_converter::{sample, Digest};

/// Arguments of `lazypull demo`.
#[derive(Clone, Debug, Default)]
pub struct DemoArgs {
    /// Keep the images here instead of in a temporary directory.
    pub keep: Option<PathBuf>,
    /// Bandwidth of the simulated link for the lazy mounts, Mbit/s.
    pub bandwidth_mbit: u64,
    /// Round-trip latency of the simulated link, milliseconds.
    pub latency_ms: u64,
}

/// Build the sample image, convert it to eStargz, zstd:chunked and EROFS, verify every layer by
/// reading every file back through the verifying readers, then (as root, with FUSE) serve the
/// eStargz and EROFS images over a throttled HTTP server and mount them lazily.
pub fn run_demo(args: DemoArgs) -> Result<()> {
    let tmp;
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let src_dir = dir.join("sample");
    sample::write_sample_image(&src_dir, "demo").context("building the sample image")?;
    let src = format!("oci:{}:demo", src_dir.display());
    println!("sample image: {src}");
    let mut lazy_images = Vec::new();

    for format in [
        TargetFormat::Estargz,
        TargetFormat::ZstdChunked,
        TargetFormat::Erofs,
    ] {
        let out_dir = dir.join(format.name());
        let dst = format!("oci:{}:demo", out_dir.display());
        let opts = ConvertOptions {
            format,
            chunk_size: Some(256 << 10),
            ..ConvertOptions::default()
        };
        let report = convert::convert(&src, &dst, &opts, &NoProgress)
            .with_context(|| format!("converting to {}", format.name()))?;
        println!(
            "\n{} -> {} in {:.2}s ({})",
            src,
            dst,
            report.seconds,
            format.name()
        );
        for (i, l) in report
            .manifests
            .iter()
            .flat_map(|m| m.layers.iter())
            .enumerate()
        {
            println!("  {}", l.summary_line(i, report.manifests[0].layers.len()));
        }
        if format != TargetFormat::ZstdChunked {
            lazy_images.push((format.name().to_string(), dst.clone()));
        }
        let checked = if format.is_erofs() {
            verify_erofs_image(&dst)?
        } else {
            verify_image(&dst)?
        };
        println!(
            "  verified: {} files, {} read back through the reader with every chunk digest checked",
            checked.files,
            human_bytes(checked.bytes)
        );
    }
    match crate::demo_lazy::lazy_support() {
        Ok(()) => crate::demo_lazy::run(
            &lazy_images,
            &dir,
            args.bandwidth_mbit.max(1),
            std::time::Duration::from_millis(args.latency_ms),
        )?,
        Err(why) => println!("\nlazy mounts skipped: {why}"),
    }
    if args.keep.is_some() {
        println!("\nimages kept in {}", dir.display());
    }
    Ok(())
}

/// What [`verify_image`] read.
struct Checked {
    files: usize,
    bytes: u64,
}

/// The layers of a single-manifest image, with the source they are read from.
fn image_layers(reference: &str) -> Result<(Box<dyn oci::ImageSource>, Manifest)> {
    let r: ImageRef = reference.parse()?;
    let source = oci::open_source(&r)?;
    let root = source.root()?;
    if !media::is_manifest(&root.media_type) {
        bail!("{reference}: expected a single manifest");
    }
    let manifest = Manifest::from_json(&source.read_blob(&root)?)?;
    Ok((source, manifest))
}

/// Open every EROFS layer through its verified chunk index and read every file of the image.
fn verify_erofs_image(reference: &str) -> Result<Checked> {
    let (source, manifest) = image_layers(reference)?;
    let mut checked = Checked { files: 0, bytes: 0 };
    for layer in &manifest.layers {
        let a = |key: &str| {
            layer
                .annotations
                .get(key)
                .with_context(|| format!("layer {} has no {key} annotation", layer.digest))
        };
        let range =
            chunk_index::parse_range_annotation(a(erofs_format::ANNOTATION_CHUNK_INDEX_RANGE)?)?;
        let digest: Digest = a(erofs_format::ANNOTATION_CHUNK_INDEX_DIGEST)?.parse()?;
        let blob = source.blob(layer)?;
        let (index, start) = chunk_index::read_embedded_index(&blob, true, range, Some(&digest))
            .with_context(|| format!("layer {}: chunk index", layer.digest))?;
        let image = chunk_index::ChunkedImage::new(blob, index, start);
        let fs =
            ErofsReader::open(image).with_context(|| format!("opening layer {}", layer.digest))?;
        let mut seen = std::collections::HashSet::new();
        for (path, inode) in fs.walk()? {
            // Hardlinked paths share one inode: read it once.
            if inode.kind != EntryKind::Reg || !seen.insert(inode.nid) {
                continue;
            }
            let mut data = vec![0u8; inode.size as usize];
            let n = fs
                .read(&inode, 0, &mut data)
                .with_context(|| format!("layer {}: reading `{path}`", layer.digest))?;
            if n as u64 != inode.size {
                bail!("layer {}: `{path}`: short read", layer.digest);
            }
            checked.files += 1;
            checked.bytes += inode.size;
        }
    }
    Ok(checked)
}

/// Open every layer of a converted image with its annotated TOC digest and read every file.
fn verify_image(reference: &str) -> Result<Checked> {
    let (source, manifest) = image_layers(reference)?;
    let mut checked = Checked { files: 0, bytes: 0 };
    for layer in &manifest.layers {
        let toc: Digest = layer
            .annotations
            .get(lazypull_converter::estargz::format::ANNOTATION_TOC_DIGEST)
            .with_context(|| format!("layer {} has no TOC digest annotation", layer.digest))?
            .parse()?;
        let blob = source.blob(layer)?;
        let reader = EstargzReader::open(blob, Some(&toc))
            .with_context(|| format!("opening layer {}", layer.digest))?;
        for e in reader.entries() {
            if e.kind != EntryKind::Reg {
                continue;
            }
            let data = reader
                .read_file(&e.name)
                .with_context(|| format!("layer {}: reading `{}`", layer.digest, e.name))?;
            if let Some(d) = e.digest {
                if Digest::of(&data) != d {
                    bail!(
                        "layer {}: `{}` does not match its TOC digest",
                        layer.digest,
                        e.name
                    );
                }
            }
            checked.files += 1;
            checked.bytes += data.len() as u64;
        }
    }
    Ok(checked)
}

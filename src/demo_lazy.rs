//! The lazy half of `lazypull demo`: serve the converted images over a throttled HTTP server on
//! 127.0.0.1, mount each lazily, read a few files, and compare with a full download.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazypull_converter::convert::human_bytes;
use lazypull_converter::oci::{self, ImageNode, ImageRef};
use lazypull_fuse::cache::{CacheOptions, ChunkCache};
use lazypull_fuse::fetch::{FetchOptions, HttpBlob, RangeFetcher};
use lazypull_fuse::layer::LayerHints;
use lazypull_fuse::serve::{RangeServer, Throttle};
use lazypull_fuse::MountOptions;

use crate::mount::{mount_image, LayerToMount};

/// The files the demo workload reads, in order (the sample image holds all of them).
const WORKLOAD: [&str; 3] = ["etc/hostname", "etc/passwd", "app/config.json"];

/// Why lazy mounts cannot run here, if they cannot.
pub fn lazy_support() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Err("FUSE and overlay mounts need root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    Ok(())
}

/// One row of the table.
struct Row {
    format: String,
    image: u64,
    fetched: u64,
    requests: u64,
    first_byte: Duration,
    workload: Duration,
}

/// Mount each converted image (`oci:DIR:TAG` references) lazily over a link of `mbit` Mbit/s and
/// `latency` round trip, and print what crossed the link.
pub fn run(images: &[(String, String)], work: &Path, mbit: u64, latency: Duration) -> Result<()> {
    let bandwidth = mbit * 1_000_000 / 8;
    println!(
        "\nlazy mounts over HTTP on 127.0.0.1 ({mbit} Mbit/s, {} ms round trip), reading {}:",
        latency.as_millis(),
        WORKLOAD.join(", ")
    );
    let mut rows = Vec::new();
    for (format, reference) in images {
        rows.push(
            lazy_row(format, reference, work, Throttle { bandwidth, latency })
                .with_context(|| format!("lazy mount of {reference}"))?,
        );
    }
    println!(
        "\n  {:<12} {:>10} {:>10} {:>9} {:>15} {:>13} {:>15}",
        "format", "image", "fetched", "requests", "first byte", "workload", "full download"
    );
    for r in rows {
        let full = latency + Duration::from_secs_f64(r.image as f64 / bandwidth as f64);
        println!(
            "  {:<12} {:>10} {:>10} {:>9} {:>12.0} ms {:>10.0} ms {:>12.0} ms",
            r.format,
            human_bytes(r.image),
            human_bytes(r.fetched),
            r.requests,
            r.first_byte.as_secs_f64() * 1e3,
            r.workload.as_secs_f64() * 1e3,
            full.as_secs_f64() * 1e3,
        );
    }
    println!(
        "  (first byte and workload include mounting: TOC or chunk index, prefetch region; \
         full download = image size at the same bandwidth, before any decompression)"
    );
    Ok(())
}

fn lazy_row(format: &str, reference: &str, work: &Path, throttle: Throttle) -> Result<Row> {
    let r: ImageRef = reference.parse()?;
    let (dir, source) = match &r {
        ImageRef::Layout { dir, .. } => (dir.clone(), oci::open_source(&r)?),
        _ => bail!("{reference}: expected an OCI layout"),
    };
    let root = source.root()?;
    let ImageNode::Manifest(manifest) = ImageNode::read(source.as_ref(), &root)? else {
        bail!("{reference}: expected a single manifest");
    };
    let files: HashMap<String, std::path::PathBuf> = manifest
        .layers
        .iter()
        .map(|l| {
            let hex = l.digest.hex();
            (hex.clone(), dir.join("blobs/sha256").join(hex))
        })
        .collect();
    let server = RangeServer::start_on(0, files, throttle).context("starting the HTTP server")?;
    let fetcher = RangeFetcher::new(FetchOptions::default())?;
    let started = Instant::now();
    let mut layers = Vec::new();
    for l in &manifest.layers {
        let blob = HttpBlob::with_size(&fetcher, &server.url(&l.digest.hex()), l.size)?;
        layers.push(LayerToMount {
            blob: Arc::new(blob),
            hints: LayerHints {
                name: l.digest.to_string(),
                media_type: Some(l.media_type.clone()),
                annotations: l.annotations.clone(),
                ..LayerHints::default()
            },
        });
    }
    let cache_dir = work.join(format!("cache-{format}"));
    let cache = Arc::new(ChunkCache::open(CacheOptions::new(&cache_dir, 1 << 30))?);
    let mountpoint = work.join(format!("mnt-{format}"));
    let image = mount_image(layers, &mountpoint, &cache, &MountOptions::default(), true)?;
    let result = (|| -> Result<(Duration, Duration)> {
        let first = std::fs::read(mountpoint.join(WORKLOAD[0]))
            .with_context(|| format!("reading {}", WORKLOAD[0]))?;
        let first_byte = started.elapsed();
        if first.is_empty() {
            bail!("{} is empty", WORKLOAD[0]);
        }
        for path in &WORKLOAD[1..] {
            std::fs::read(mountpoint.join(path)).with_context(|| format!("reading {path}"))?;
        }
        Ok((first_byte, started.elapsed()))
    })();
    image.unmount();
    let _ = std::fs::remove_dir_all(&mountpoint);
    let (first_byte, workload) = result?;
    Ok(Row {
        format: format.to_string(),
        image: manifest.layers.iter().map(|l| l.size).sum(),
        fetched: server.body_bytes(),
        requests: server.requests(),
        first_byte,
        workload,
    })
}

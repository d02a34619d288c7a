//! `lazypull bench`: the cold-start benchmark. Full pull against lazy eStargz and lazy EROFS,
//! with and without a recorded prefetch list, side by side in one run over an emulated link;
//! and, when containerd is installed, the same images through a private containerd: its own
//! full pull, and `lazypull snapshotter` lazily.
//!
//! - `images`: workload images built from software on this machine (Python, a C toolchain, a
//!   JDK; a small one for `--quick`).
//! - `link`: the throttling proxy between the node and the blob server (and the registry).
//! - `run`: one run of one harness mode: pull or mount, start the workload in a
//!   container-like root, time it until ready.
//! - `containerd`: one run of one containerd mode: `ctr images pull` or `ctr-remote images
//!   rpull`, then `ctr run` of the workload, from a registry behind the same link.
//! - `report`: medians and spreads, the table, JSON and the chart.
//!
//! Per image, once: convert to eStargz and EROFS; mount the eStargz image with `--record` and
//! run the workload, which gives the prefetch list; convert again with it. Then for every
//! network, run after run, every mode in turn (so drift hits all modes alike), from a cold
//! node: page cache dropped, empty chunk cache, fresh mounts.

mod containerd;

pub use containerd::support as containerd_support;
mod images;
mod link;
mod report;
mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lazypull_converter::prefetch::PrefetchList;
use lazypull_fuse::serve::{RangeServer, Throttle};

pub use link::LinkSpec;
use report::{Measured, Summary};
use run::{Mode, RunEnv};

/// Arguments of `lazypull bench`.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// One small image, one run per mode, the default network: a smoke test.
    pub quick: bool,
    pub images: Vec<String>,
    pub runs: usize,
    pub networks: Vec<LinkSpec>,
    /// Where images, conversions and scratch space go (reused between invocations).
    pub work: PathBuf,
    /// Where the report (`coldstart.json`, `coldstart.svg`, `coldstart.png`) goes.
    pub out: PathBuf,
    /// Keep `lazypull mount`'s background fetch on (by default the benchmark switches it off,
    /// so that bytes fetched are what the workload needed).
    pub background_fetch: bool,
    /// Extra options for every `lazypull mount`.
    pub mount_args: Vec<String>,
    /// Run the containerd modes when containerd and its tools are installed.
    pub containerd: bool,
    /// Run nothing: merge the reports in these directories into one in `out`.
    pub merge: Vec<PathBuf>,
}

/// The networks of a full run: the default first.
pub const DEFAULT_NETWORKS: [&str; 3] = ["100mbit:20ms", "1gbit:2ms", "100mbit:50ms"];

/// Run the benchmark and write its report.
pub fn run_bench(mut args: BenchArgs) -> Result<()> {
    if !args.merge.is_empty() {
        std::fs::create_dir_all(&args.out)?;
        let (facts, measured, runs) = report::merge(&args.merge)?;
        return report::write(&args.out, &facts, &measured, runs);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lazypull bench needs root: it mounts FUSE, overlayfs and /proc, and chroots");
    }
    if args.quick {
        args.images = vec!["quick".into()];
        args.runs = 1;
        args.networks.truncate(1);
    }
    let lazypull = std::env::current_exe().context("finding the lazypull binary")?;
    std::fs::create_dir_all(&args.work)?;
    std::fs::create_dir_all(&args.out)?;
    let work = args.work.canonicalize()?;

    let with_containerd = args.containerd
        && match containerd::support() {
            Ok(()) => true,
            Err(why) => {
                eprintln!("bench: no containerd modes: {why}");
                false
            }
        };
    let mut prepared = Vec::new();
    for name in &args.images {
        let image = images::build(name, &work)?;
        prepared.push(prepare(&lazypull, &work, image, with_containerd)?);
    }
    let server = RangeServer::start_dir(work.clone(), Throttle::default())
        .context("starting the blob server")?;
    let registry = if with_containerd {
        let registry = containerd::start_registry(&work.join("registry"))?;
        for p in &prepared {
            let repo = containerd::repository(&p.image.name);
            for mode in Mode::CONTAINERD {
                let layout = work.join(&p.image.name).join(mode.variant());
                containerd::push(&registry, &layout, &repo, mode.variant())?;
            }
        }
        Some(registry)
    } else {
        None
    };
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .chain(Mode::CONTAINERD.into_iter().filter(|_| with_containerd))
        .collect();
    let scratch = work.join("scratch");
    let mut mount_options: Vec<&str> = args.mount_args.iter().map(String::as_str).collect();
    if !args.background_fetch {
        mount_options.push("--no-background-fetch");
    }
    let mut measured = Vec::new();
    for &net in &args.networks {
        let link = link::Link::start(server.port(), net).context("starting the link")?;
        // The registry behind a link of its own: the same bandwidth and RTT, its own counters.
        let registry_link = registry
            .as_ref()
            .map(|r| {
                let port = r.host.rsplit(':').next().and_then(|p| p.parse().ok());
                link::Link::start(port.context("registry port")?, net)
                    .context("starting the registry's link")
            })
            .transpose()?;
        for p in &prepared {
            let env = RunEnv {
                lazypull: &lazypull,
                base_url: format!("http://127.0.0.1:{}/{}", link.port(), p.image.name),
                scratch: &scratch,
                rtt: net.rtt,
                mount_options: &mount_options,
            };
            let counters = || (link.down_bytes(), server.requests(), server.arrivals());
            let repo = containerd::repository(&p.image.name);
            let mut runs: Vec<Vec<run::RunResult>> = vec![Vec::new(); modes.len()];
            for r in 0..args.runs {
                for (i, &mode) in modes.iter().enumerate() {
                    let result = match (&registry, &registry_link) {
                        (Some(registry), Some(link)) if mode.through_containerd() => {
                            let env = containerd::CtrEnv {
                                lazypull: &lazypull,
                                registry,
                                link,
                                scratch: &scratch,
                                rtt: net.rtt,
                                background_fetch: args.background_fetch,
                            };
                            containerd::run_once(&env, mode, &repo, &p.image.workload)
                        }
                        _ => run::run_once(&env, mode, &p.image.workload, &counters),
                    }
                    .with_context(|| {
                        format!(
                            "{} over {net}, {}, run {}",
                            p.image.name,
                            mode.name(),
                            r + 1
                        )
                    })?;
                    eprintln!(
                        "bench: {} {net} {:<30} run {}: ready in {:.2} s, {} fetched, {} requests",
                        p.image.name,
                        mode.name(),
                        r + 1,
                        result.ready_secs,
                        report::human(result.bytes_fetched),
                        result.requests
                    );
                    runs[i].push(result);
                }
            }
            for (mode, results) in modes.iter().zip(runs) {
                measured.push(Measured {
                    image: p.image.name.clone(),
                    network: net.to_string(),
                    mode: mode.name().to_string(),
                    summary: Summary::of(&results),
                    runs: results,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let facts: Vec<report::ImageFacts> = prepared.iter().map(|p| p.facts.clone()).collect();
    report::write(&args.out, &facts, &measured, args.runs)?;
    Ok(())
}

/// An image with its converted variants and what the workload reads.
struct Prepared {
    image: images::Image,
    facts: report::ImageFacts,
}

/// Convert `image` to eStargz and EROFS, record the workload's reads on the eStargz mount, and
/// convert again with them as the prefetch list; for the containerd modes also EROFS with OCI
/// layer media types (containerd 1.6 labels only those for a remote snapshotter), with and
/// without the list. Reuses earlier conversions.
fn prepare(
    lazypull: &Path,
    work: &Path,
    image: images::Image,
    with_containerd: bool,
) -> Result<Prepared> {
    let dir = work.join(&image.name);
    let src = format!("oci:{}:{}", image.layout.display(), images::TAG);
    for format in ["estargz", "erofs"] {
        convert(lazypull, &src, &dir.join(format), format, None, &[])?;
    }
    let list = dir.join("prefetch.list");
    let read = record(lazypull, &dir, &image, &list)?;
    for format in ["estargz", "erofs"] {
        let out = dir.join(format!("{format}-prefetch"));
        convert(lazypull, &src, &out, format, Some(&list), &[])?;
    }
    if with_containerd {
        let oci = ["--erofs-media-type", "oci-layer"];
        convert(lazypull, &src, &dir.join("erofs-oci"), "erofs", None, &oci)?;
        let out = dir.join("erofs-oci-prefetch");
        convert(lazypull, &src, &out, "erofs", Some(&list), &oci)?;
    }
    let size = |variant: &str| -> Result<u64> { layout_layer_bytes(&dir.join(variant)) };
    let facts = report::ImageFacts {
        name: image.name.clone(),
        uncompressed_bytes: image.tar_bytes,
        gzip_bytes: size("image")?,
        estargz_bytes: size("estargz")?,
        erofs_bytes: size("erofs")?,
        workload_read_bytes: read.file_bytes,
        workload_range_bytes: read.range_bytes,
        workload_files: read.files,
    };
    Ok(Prepared { image, facts })
}

/// `lazypull convert` into `out` unless done before.
fn convert(
    lazypull: &Path,
    src: &str,
    out: &Path,
    format: &str,
    list: Option<&Path>,
    extra: &[&str],
) -> Result<()> {
    let done = out.join(".converted");
    if done.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = std::process::Command::new(lazypull);
    cmd.args(["convert", "--no-progress", "--format", format])
        .args(extra);
    if let Some(l) = list {
        cmd.arg("--prefetch-list").arg(l);
    }
    let status = cmd
        .arg(src)
        .arg(format!("oci:{}:{}", out.display(), images::TAG))
        .status()?;
    if !status.success() {
        bail!("converting {src} to {format} failed ({status})");
    }
    std::fs::write(done, "")?;
    Ok(())
}

/// Mount the eStargz image with `--record`, run the workload once, and keep the list of files
/// it read (with the ranges read of files read in part); returns what it read.
fn record(
    lazypull: &Path,
    dir: &Path,
    image: &images::Image,
    list: &Path,
) -> Result<WorkloadReads> {
    let scratch = dir.join("record");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let server = RangeServer::start_dir(dir.to_path_buf(), Throttle::default())?;
    let source = format!("oci:{}:{}", server.url("estargz"), images::TAG);
    let mnt = scratch.join("lazy");
    let tmp_list = scratch.join("list");
    let lazy = run::LazyMount::start_with(
        lazypull,
        &source,
        &mnt,
        &scratch.join("cache"),
        &[
            "--no-background-fetch",
            "--record",
            &tmp_list.display().to_string(),
        ],
    )?;
    let mut mounts = run::Mounts::default();
    let root = scratch.join("root");
    mounts.overlay(std::slice::from_ref(&mnt), &scratch, &root)?;
    run::run_workload(&root, &image.workload, &mut mounts)?;
    // The mount saves the record every half second: after a second it holds every read.
    std::thread::sleep(Duration::from_secs(1));
    let sizes: HashMap<String, u64> = read_list(&tmp_list)?
        .entries()
        .iter()
        .filter_map(|e| {
            let m = std::fs::symlink_metadata(mnt.join(&e.path)).ok()?;
            Some((e.path.clone(), m.len()))
        })
        .collect();
    mounts.unmount_all();
    lazy.stop()?;
    let recorded = read_list(&tmp_list)?;
    if recorded.is_empty() {
        bail!(
            "{}: the workload read no file through the mount",
            image.name
        );
    }
    let mut read = WorkloadReads {
        files: recorded.len() as u64,
        ..WorkloadReads::default()
    };
    for e in recorded.entries() {
        let size = sizes.get(&e.path).copied().unwrap_or(0);
        read.file_bytes += size;
        read.range_bytes += e.ranges.as_ref().map_or(size, |r| r.covered().min(size));
    }
    std::fs::write(list, recorded.render())?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(read)
}

/// What the recorded workload read.
#[derive(Default)]
struct WorkloadReads {
    files: u64,
    /// Total size of the files.
    file_bytes: u64,
    /// The bytes of them it read.
    range_bytes: u64,
}

fn read_list(path: &Path) -> Result<PrefetchList> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    PrefetchList::parse(&text).with_context(|| format!("record {}", path.display()))
}

/// Total size of the layers of the one image in layout `dir`.
fn layout_layer_bytes(dir: &Path) -> Result<u64> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let m = index["manifests"][0]["digest"]
        .as_str()
        .context("empty index")?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
        dir.join("blobs").join(m.replacen(':', "/", 1)),
    )?)?;
    Ok(manifest["layers"]
        .as_array()
        .context("no layers")?
        .iter()
        .filter_map(|l| l["size"].as_u64())
        .sum())
}

/// The default work directory; images and conversions in it are reused by later runs.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join("lazypull-bench")
}

/// Parse `--network` values, or the defaults.
pub fn networks(given: &[String]) -> Result<Vec<LinkSpec>> {
    let given: Vec<&str> = if given.is_empty() {
        DEFAULT_NETWORKS.to_vec()
    } else {
        given.iter().map(String::as_str).collect()
    };
    given
        .into_iter()
        .map(|s| LinkSpec::parse(s).map_err(anyhow::Error::msg))
        .collect()
}

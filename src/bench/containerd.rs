//! The containerd modes: the bench images in a real registry, pulled by a private containerd
//! 1.6 through the throttling link and run with `ctr run`, once with containerd's own
//! overlayfs snapshotter (a full pull, containerd's baseline) and once per lazy variant through
//! `lazypull snapshotter` (`ctr-remote images rpull`, which labels every layer for a remote
//! snapshot, then `ctr run --snapshotter lazypull`).
//!
//! Each run starts a fresh containerd and snapshotter under the scratch dir and removes them
//! afterwards, which empties containerd's content store and snapshots and the snapshotter's
//! chunk cache: every run pulls from nothing, as every harness mode does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::images::{Workload, TAG};
use super::link::Link;
use super::run::{drop_caches, waves, Mode, RunResult};
use crate::containerd::{
    output_with_timeout, parse_access_log, Containerd, ContainerdConfig, Registry, Snapshotter,
    SNAPSHOTTER,
};

/// The containerd namespace of the benchmark's images and containers.
const NS: &str = "lazypull-bench";
/// How long a pull or a `ctr run` may take (a gcc image over a slow link is minutes).
const TIMEOUT: Duration = Duration::from_secs(900);

/// Why the containerd modes cannot run here, if they cannot.
pub fn support() -> Result<(), String> {
    let tools = [
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "ctr-remote",
        "runc",
        "docker-registry",
        "skopeo",
    ];
    for tool in tools {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

/// The repository of image `name` in the registry.
pub fn repository(name: &str) -> String {
    format!("bench/{name}")
}

/// Copy the layout `layout` (tag [`TAG`]) into `registry` as `REPO:TAG`, blobs and manifest
/// unchanged (the same digests the harness modes read).
pub fn push(registry: &Registry, layout: &Path, repo: &str, tag: &str) -> Result<()> {
    let out = output_with_timeout(
        std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--preserve-digests"])
            .arg("--dest-tls-verify=false")
            .arg(format!("oci:{}:{TAG}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", registry.host)),
        None,
        TIMEOUT,
    )?;
    if !out.status.success() {
        bail!(
            "pushing {} to {}/{repo}:{tag}: {}",
            layout.display(),
            registry.host,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Where a containerd run works, and how it reaches the registry.
pub struct CtrEnv<'a> {
    pub lazypull: &'a Path,
    pub registry: &'a Registry,
    /// The link in front of `registry`: containerd and the layer servers pull through it.
    pub link: &'a Link,
    pub scratch: &'a Path,
    pub rtt: Duration,
    pub background_fetch: bool,
}

/// Pull `repo`'s variant for `mode` and run `workload` as the container's process, from a cold
/// node; time until it has printed its ready mark and exited.
pub fn run_once(
    env: &CtrEnv<'_>,
    mode: Mode,
    repo: &str,
    workload: &Workload,
) -> Result<RunResult> {
    let _ = std::fs::remove_dir_all(env.scratch);
    std::fs::create_dir_all(env.scratch)?;
    let lazy = mode != Mode::ContainerdFullPull;
    let host = format!("127.0.0.1:{}", env.link.port());
    let snapshotter = Snapshotter::start(
        env.lazypull,
        &env.scratch.join("snapshotter"),
        env.background_fetch,
    )?;
    let containerd = Containerd::start(
        &env.scratch.join("containerd"),
        &ContainerdConfig {
            snapshotter_socket: snapshotter.socket.clone(),
            cri_snapshotter: "overlayfs".into(),
            registry: host.clone(),
            log_level: "warn".into(),
        },
    )?;
    let reference = format!("{host}/{repo}:{}", mode.variant());
    let log_before = env.registry.log().len();
    let starts_before = env.link.request_starts().len();
    let bytes_before = env.link.down_bytes();
    drop_caches();
    let started = Instant::now();

    let mut pull = if lazy {
        containerd.rpull_command(NS, &reference)
    } else {
        let mut c = containerd.ctr_command(NS);
        c.args(["images", "pull", "--plain-http", &reference]);
        c
    };
    let out = output_with_timeout(&mut pull, None, TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "pulling {reference}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            snapshotter_tail(&snapshotter, lazy)
        );
    }
    let mut run = containerd.ctr_command(NS);
    run.args(["run", "--rm"]);
    if lazy {
        run.args(["--snapshotter", SNAPSHOTTER]);
    }
    // The same environment as the harness modes' chroot (the bench images have no config Env).
    for (k, v) in [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
    ] {
        run.arg("--env").arg(format!("{k}={v}"));
    }
    run.arg(&reference).arg(container_id()).args(&workload.argv);
    let out = output_with_timeout(&mut run, None, TIMEOUT)?;
    if let Err(printed) = super::run::got_ready(&out, &workload.ready) {
        bail!(
            "ctr run {reference} {:?} did not get ready ({}): {printed}{}",
            workload.argv,
            out.status,
            snapshotter_tail(&snapshotter, lazy)
        );
    }
    let ready_secs = started.elapsed().as_secs_f64();
    let peak_rss_kib = if lazy {
        snapshotter.pid().and_then(tree_peak_rss_kib)
    } else {
        None
    };
    drop(containerd);
    drop(snapshotter);
    let log = env.registry.log();
    let requests = parse_access_log(log.get(log_before..).unwrap_or_default())
        .iter()
        .filter(|a| matches!(a.method.as_str(), "GET" | "HEAD"))
        .count() as u64;
    let starts = env.link.request_starts();
    let _ = std::fs::remove_dir_all(env.scratch);
    Ok(RunResult {
        ready_secs,
        bytes_fetched: env.link.down_bytes() - bytes_before,
        requests,
        round_trips: waves(&starts[starts_before..], env.rtt),
        peak_rss_kib,
    })
}

/// The end of the snapshotter's log, to explain a failed lazy run.
fn snapshotter_tail(s: &Snapshotter, lazy: bool) -> String {
    if !lazy {
        return String::new();
    }
    let log = s.log();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("\nsnapshotter log:\n{}", tail.join("\n"))
}

/// A container name no other run uses (runc's state is per machine).
fn container_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The sum of `VmHWM` over `pid` and its descendants (the snapshotter and its layer servers):
/// each process's own peak, so an upper bound of what they held at once.
fn tree_peak_rss_kib(pid: u32) -> Option<u64> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(pp) = status_field(p, "PPid:") {
            parents.push((p, pp as u32));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    let total: u64 = tree.iter().filter_map(|&p| status_field(p, "VmHWM:")).sum();
    (total > 0).then_some(total)
}

/// A numeric field of `/proc/PID/status`.
fn status_field(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Start the registry for the containerd modes under `dir` (storage kept between invocations,
/// so pushes of unchanged images copy nothing).
pub fn start_registry(dir: &Path) -> Result<Registry> {
    let port = crate::containerd::free_port()?;
    Registry::start(dir, port, "").context("starting the bench registry")
}

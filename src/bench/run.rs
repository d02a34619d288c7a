//! One benchmark run: bring an image up in one mode over the emulated link, run its workload in
//! a container-like root (overlay with a writable upper dir, `/proc` and `/dev`, chroot), and
//! measure the time until it is ready.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::images::{Workload, TAG};

/// How an image gets onto the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// Download the gzip layers, decompress and untar them, then start.
    FullPull,
    /// `lazypull mount` of the eStargz image.
    Estargz,
    /// The same, converted with the recorded prefetch list.
    EstargzPrefetch,
    /// `lazypull mount` of the EROFS image.
    Erofs,
    ErofsPrefetch,
    /// containerd's own pull into its overlayfs snapshotter, then `ctr run`.
    ContainerdFullPull,
    /// `ctr-remote images rpull` into `lazypull snapshotter`, then `ctr run`, of the eStargz
    /// image.
    SnapshotterEstargz,
    SnapshotterEstargzPrefetch,
    /// The same of the EROFS image (layers named as OCI layers, which containerd 1.6 labels).
    SnapshotterErofs,
    SnapshotterErofsPrefetch,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::FullPull,
        Mode::Estargz,
        Mode::EstargzPrefetch,
        Mode::Erofs,
        Mode::ErofsPrefetch,
    ];

    /// The modes through containerd (see `containerd.rs`).
    pub const CONTAINERD: [Mode; 5] = [
        Mode::ContainerdFullPull,
        Mode::SnapshotterEstargz,
        Mode::SnapshotterEstargzPrefetch,
        Mode::SnapshotterErofs,
        Mode::SnapshotterErofsPrefetch,
    ];

    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::FullPull => "full pull",
            Mode::Estargz => "lazy eStargz",
            Mode::EstargzPrefetch => "lazy eStargz + prefetch",
            Mode::Erofs => "lazy EROFS",
            Mode::ErofsPrefetch => "lazy EROFS + prefetch",
            Mode::ContainerdFullPull => "containerd full pull",
            Mode::SnapshotterEstargz => "snapshotter eStargz",
            Mode::SnapshotterEstargzPrefetch => "snapshotter eStargz + prefetch",
            Mode::SnapshotterErofs => "snapshotter EROFS",
            Mode::SnapshotterErofsPrefetch => "snapshotter EROFS + prefetch",
        }
    }

    /// The layout (under the image's directory) this mode reads; for the containerd modes
    /// also the tag it has in the registry.
    pub fn variant(self) -> &'static str {
        match self {
            Mode::FullPull | Mode::ContainerdFullPull => "image",
            Mode::Estargz | Mode::SnapshotterEstargz => "estargz",
            Mode::EstargzPrefetch | Mode::SnapshotterEstargzPrefetch => "estargz-prefetch",
            Mode::Erofs => "erofs",
            Mode::ErofsPrefetch => "erofs-prefetch",
            Mode::SnapshotterErofs => "erofs-oci",
            Mode::SnapshotterErofsPrefetch => "erofs-oci-prefetch",
        }
    }

    /// Whether this mode runs through containerd.
    pub fn through_containerd(self) -> bool {
        Mode::CONTAINERD.contains(&self)
    }
}

/// What one run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// Seconds from the start until the workload was ready (exited, having printed its mark).
    pub ready_secs: f64,
    /// Bytes that crossed the link towards the node (bodies and headers).
    pub bytes_fetched: u64,
    pub requests: u64,
    /// Waves of requests, each starting more than one RTT after the previous wave began:
    /// round trips the run waited for one after the other.
    pub round_trips: u64,
    /// Peak resident memory (KiB) of the `lazypull mount` process, or of the snapshotter and
    /// its layer servers; none for a full pull.
    pub peak_rss_kib: Option<u64>,
}

/// Where a run works, and how to reach the blob server through the link.
pub struct RunEnv<'a> {
    pub lazypull: &'a Path,
    /// `http://127.0.0.1:PORT/IMAGE`: the image's layouts, one directory per variant.
    pub base_url: String,
    pub scratch: &'a Path,
    pub rtt: Duration,
    /// Extra options of `lazypull mount` (`--no-background-fetch`).
    pub mount_options: &'a [&'a str],
}

/// Run `workload` from `mode`'s image once, from a cold node (page cache dropped, empty chunk
/// cache). `counters` reads (bytes over the link, requests, request arrival times).
pub fn run_once(
    env: &RunEnv<'_>,
    mode: Mode,
    workload: &Workload,
    counters: &dyn Fn() -> (u64, u64, Vec<Instant>),
) -> Result<RunResult> {
    if mode.through_containerd() {
        bail!("{} runs through containerd, not the harness", mode.name());
    }
    let _ = std::fs::remove_dir_all(env.scratch);
    std::fs::create_dir_all(env.scratch)?;
    drop_caches();
    let (bytes0, req0, arr0) = counters();
    let started = Instant::now();
    let mut mounts = Mounts::default();
    let root = env.scratch.join("root");
    let peak_rss = match mode {
        Mode::FullPull => {
            let lowers = full_pull(&format!("{}/image", env.base_url), env.scratch)?;
            mounts.overlay(&lowers, env.scratch, &root)?;
            run_workload(&root, workload, &mut mounts)?;
            None
        }
        lazy => {
            let mnt = env.scratch.join("lazy");
            let source = format!("oci:{}/{}:{TAG}", env.base_url, lazy.variant());
            let cache = env.scratch.join("cache");
            let server =
                LazyMount::start_with(env.lazypull, &source, &mnt, &cache, env.mount_options)?;
            mounts.overlay(std::slice::from_ref(&mnt), env.scratch, &root)?;
            run_workload(&root, workload, &mut mounts)?;
            let rss = server.peak_rss_kib();
            mounts.unmount_all();
            server.stop()?;
            rss
        }
    };
    let ready_secs = started.elapsed().as_secs_f64();
    mounts.unmount_all();
    let (bytes1, req1, arr1) = counters();
    Ok(RunResult {
        ready_secs,
        bytes_fetched: bytes1 - bytes0,
        requests: req1 - req0,
        round_trips: waves(&arr1[arr0.len()..], env.rtt),
        peak_rss_kib: peak_rss,
    })
}

/// Requests grouped into waves: a request arriving within one RTT of the start of the current
/// wave was sent without waiting for it.
pub(super) fn waves(arrivals: &[Instant], rtt: Duration) -> u64 {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut n = 0;
    let mut start: Option<Instant> = None;
    for a in sorted {
        if start.is_none_or(|s| a.duration_since(s) > rtt) {
            n += 1;
            start = Some(a);
        }
    }
    n
}

/// Flush and drop the page cache, dentries and inodes: every run starts cold.
pub fn drop_caches() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
        tracing::warn!("cannot drop the page cache (not root?)");
    }
}

/// What a full pull does: read the image's index, manifest and config, then download every
/// layer and stream it through gzip into its own directory, layers in parallel (as containerd
/// does). Returns the layer directories, top first.
fn full_pull(url: &str, scratch: &Path) -> Result<Vec<PathBuf>> {
    let index: serde_json::Value = serde_json::from_slice(&curl(&format!("{url}/index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index without manifests")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&curl(&format!("{url}/{}", blob_path(manifest_digest)))?)?;
    let config = manifest["config"]["digest"].as_str().context("no config")?;
    curl(&format!("{url}/{}", blob_path(config)))?;
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .context("no layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str().map(String::from))
        .collect();
    let dirs: Vec<PathBuf> = (0..layers.len())
        .map(|i| scratch.join(format!("layer{i}")))
        .collect();
    let pulls: Vec<_> = layers
        .iter()
        .zip(&dirs)
        .map(|(digest, dir)| {
            std::fs::create_dir_all(dir)?;
            let script = format!(
                "set -o pipefail; curl -sSf --noproxy '*' '{url}/{}' | tar -xzf - -C '{}'",
                blob_path(digest),
                dir.display()
            );
            Command::new("bash")
                .args(["-c", &script])
                .spawn()
                .context("starting curl | tar")
        })
        .collect::<Result<_>>()?;
    for (mut p, d) in pulls.into_iter().zip(&layers) {
        let status = p.wait()?;
        if !status.success() {
            bail!("pulling layer {d} failed ({status})");
        }
    }
    Ok(dirs.into_iter().rev().collect())
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn curl(url: &str) -> Result<Vec<u8>> {
    let out = Command::new("curl")
        .args(["-sSf", "--noproxy", "*", url])
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("GET {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Mounts made for a run, undone in reverse order.
#[derive(Default)]
pub(super) struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// A container root at `root`: overlay of `lowers` (top first) with a writable upper dir.
    pub(super) fn overlay(
        &mut self,
        lowers: &[PathBuf],
        scratch: &Path,
        root: &Path,
    ) -> Result<()> {
        let (upper, work) = (scratch.join("upper"), scratch.join("work"));
        for d in [&upper, &work, &root.to_path_buf()] {
            std::fs::create_dir_all(d)?;
        }
        let lower: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        self.mount(&["-t", "overlay", "overlay", "-o", &opts], root)
    }

    fn mount(&mut self, args: &[&str], target: &Path) -> Result<()> {
        std::fs::create_dir_all(target)?;
        let status = Command::new("mount").args(args).arg(target).status()?;
        if !status.success() {
            bail!("mount {args:?} {} failed ({status})", target.display());
        }
        self.0.push(target.to_path_buf());
        Ok(())
    }

    pub(super) fn unmount_all(&mut self) {
        while let Some(t) = self.0.pop() {
            let ok = Command::new("umount")
                .arg(&t)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&t).status();
            }
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

/// Run the workload chrooted in `root`, with `/proc` and `/dev`; it must exit successfully
/// having printed its ready mark.
pub(super) fn run_workload(root: &Path, w: &Workload, mounts: &mut Mounts) -> Result<()> {
    mounts.mount(&["-t", "proc", "proc"], &root.join("proc"))?;
    mounts.mount(&["--bind", "/dev"], &root.join("dev"))?;
    let out = Command::new("chroot")
        .arg(root)
        .args(&w.argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .output()
        .context("running the workload")?;
    if let Err(printed) = got_ready(&out, &w.ready) {
        bail!(
            "the workload {:?} did not get ready ({}): {printed}",
            w.argv,
            out.status
        );
    }
    Ok(())
}

/// A `lazypull mount` process serving one image.
pub struct LazyMount {
    child: Option<Child>,
    mountpoint: PathBuf,
    lazypull: PathBuf,
}

impl LazyMount {
    /// Start `lazypull mount SOURCE MOUNTPOINT` with `extra` options and wait until mounted.
    pub fn start_with(
        lazypull: &Path,
        source: &str,
        mountpoint: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        std::fs::create_dir_all(mountpoint)?;
        let child = Command::new(lazypull)
            .arg("mount")
            .arg("--cache-dir")
            .arg(cache)
            .args(extra)
            .arg(source)
            .arg(mountpoint)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lazypull mount")?;
        let mut m = LazyMount {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            lazypull: lazypull.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !is_mounted(mountpoint) {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let err = m.stderr();
                bail!("lazypull mount {source} exited ({status}): {err}");
            }
            if Instant::now() > deadline {
                bail!("lazypull mount {source}: not mounted after 120 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(m)
    }

    /// `VmHWM` of the server process.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.as_mut().and_then(|c| c.stderr.take()) {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// `lazypull umount`, then wait for the server to exit.
    pub fn stop(mut self) -> Result<String> {
        let status = Command::new(&self.lazypull)
            .arg("umount")
            .arg(&self.mountpoint)
            .status()?;
        if !status.success() {
            bail!("lazypull umount {} failed", self.mountpoint.display());
        }
        let mut child = self.child.take().context("running")?;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("lazypull mount exited with {status}: {err}");
        }
        Ok(err)
    }
}

impl Drop for LazyMount {
    /// After a failed run: unmount so that the server exits and takes its layer mounts with
    /// it; kill it only if it does not.
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new(&self.lazypull)
            .arg("umount")
            .arg(&self.mountpoint)
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if c.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(p.as_str())))
}

/// Whether a workload's run succeeded and printed `ready`; if not, the start of what it printed.
pub(super) fn got_ready(
    out: &std::process::Output,
    ready: &str,
) -> std::result::Result<(), String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains(ready) {
        Ok(())
    } else {
        Err(text.chars().take(2000).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_group_requests_within_one_rtt() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let rtt = Duration::from_millis(20);
        assert_eq!(waves(&[], rtt), 0);
        assert_eq!(waves(&[ms(0), ms(5), ms(19)], rtt), 1);
        assert_eq!(waves(&[ms(0), ms(25), ms(30), ms(60)], rtt), 3);
    }
}

//! containerd 1.6 with `lazypull snapshotter` as a proxy snapshot plugin, all on one machine and
//! under one temp dir. The components themselves (config files, start and stop, waiting for
//! sockets, cleanup on drop) are `lazypull::containerd`, shared with `lazypull bench`; this
//! module wraps them so that failures panic, and adds the `ctr` commands, the tiny busybox image
//! the tests run, and the registry's access log read back. Every process and mount is cleaned
//! up on drop, also when a test panics.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lazypull::containerd::{Containerd, ContainerdConfig, Snapshotter};
use lazypull_converter::sample::{self, ImageLayer, SampleImage};

use super::registry::TestRegistry;
use super::tarbuild::{LayerTar, MTIME};
use super::{run_with_timeout, sha256};

pub use lazypull::containerd::SNAPSHOTTER;
/// The namespace `ctr` works in; CRI uses `k8s.io`.
pub const NS: &str = "default";
/// The CRI plugin's namespace.
pub const CRI_NS: &str = "k8s.io";
/// How long one `ctr` command may take.
const CTR_TIMEOUT: Duration = Duration::from_secs(180);

/// Why containerd tests cannot run here, if they cannot: root, FUSE, overlayfs and the tools.
pub fn containerd_support() -> Result<(), String> {
    crate::mount::fuse_support()?;
    let tools = [
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "ctr-remote",
        "docker-registry",
        "skopeo",
        "umount",
    ];
    if let Some(tool) = super::missing_tool(&tools) {
        return Err(format!("`{tool}` is not installed"));
    }
    if !Path::new(BUSYBOX).is_file() {
        return Err(format!(
            "{BUSYBOX} is missing (Debian package busybox-static)"
        ));
    }
    Ok(())
}

/// A name no other test of this run (or a leftover of an earlier run) uses: runc's state and
/// cgroups are per machine, not per containerd.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub use lazypull::containerd::{mounts_under, unmount_under};

/// The mount options of the mount at `target` (`/proc/self/mounts`), if mounted.
pub fn mount_options(target: &Path) -> Option<(String, String)> {
    let target = target.to_string_lossy();
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&&*target)).then(|| (f[2].to_string(), f[3].to_string()))
    })
}

/// A running `lazypull snapshotter` ([`lazypull::containerd::Snapshotter`]) whose failures
/// panic; fields and the other methods through `Deref`.
pub struct TestSnapshotter(Snapshotter);

impl TestSnapshotter {
    /// Write a config under `dir` (root `dir/root`, socket `dir/snapshotter.sock`, no
    /// background fetch) and start.
    pub fn start(dir: &Path) -> TestSnapshotter {
        let lazypull = Path::new(super::lazypull_bin());
        TestSnapshotter(
            Snapshotter::start(lazypull, dir, false).unwrap_or_else(|e| panic!("{e:#}")),
        )
    }

    /// Start the process again (same config and root) after `stop`.
    pub fn resume(&mut self) {
        self.0.resume().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// SIGKILL and reap, as a crash would end it: no cleanup of its own runs.
    pub fn kill(&mut self) {
        self.0.kill().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The pids of the detached `lazypull mount` processes serving layers under its root.
    pub fn layer_servers(&self) -> Vec<u32> {
        let root = self.root.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.iter().any(|a| a == "mount") && args.iter().any(|a| a.starts_with(&root)) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids
    }
}

impl Deref for TestSnapshotter {
    type Target = Snapshotter;
    fn deref(&self) -> &Snapshotter {
        &self.0
    }
}

impl DerefMut for TestSnapshotter {
    fn deref_mut(&mut self) -> &mut Snapshotter {
        &mut self.0
    }
}

/// A private containerd ([`lazypull::containerd::Containerd`], debug logging) whose failures
/// panic, with the `ctr` commands the tests use.
pub struct TestContainerd(Containerd);

impl Deref for TestContainerd {
    type Target = Containerd;
    fn deref(&self) -> &Containerd {
        &self.0
    }
}

impl TestContainerd {
    /// Start containerd under `dir` with the `lazypull` proxy plugin dialling
    /// `snapshotter_socket`, CRI pulling into `cri_snapshotter` and plain HTTP to `registry`
    /// (`127.0.0.1:PORT`).
    pub fn start(
        dir: &Path,
        snapshotter_socket: &Path,
        cri_snapshotter: &str,
        registry: &str,
    ) -> TestContainerd {
        let cfg = ContainerdConfig {
            snapshotter_socket: snapshotter_socket.to_path_buf(),
            cri_snapshotter: cri_snapshotter.to_string(),
            registry: registry.to_string(),
            log_level: "debug".into(),
        };
        TestContainerd(Containerd::start(dir, &cfg).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// `ctr -a SOCK -n NS ARGS…`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Output {
        run_with_timeout(self.ctr_command(ns).args(args), None, CTR_TIMEOUT)
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ctr_ok(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ctr(ns, args);
        assert!(
            out.status.success(),
            "ctr -n {ns} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr-remote images rpull --plain-http --snapshotter lazypull REF`: a pull whose Prepares
    /// carry the stargz remote-snapshot labels.
    pub fn rpull(&self, ns: &str, reference: &str) -> Output {
        run_with_timeout(&mut self.rpull_command(ns, reference), None, CTR_TIMEOUT)
    }

    /// `ctr images pull --plain-http --snapshotter SNAPSHOTTER REF`.
    pub fn pull(&self, ns: &str, snapshotter: &str, reference: &str) {
        self.ctr_ok(
            ns,
            &[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                snapshotter,
                reference,
            ],
        );
    }

    /// `ctr run --rm --snapshotter SNAPSHOTTER REF ID ARGS…` to completion: its output.
    pub fn run(&self, ns: &str, snapshotter: &str, reference: &str, args: &[&str]) -> Output {
        let id = unique("run");
        let mut all = vec!["run", "--rm", "--snapshotter", snapshotter, reference, &id];
        all.extend_from_slice(args);
        self.ctr(ns, &all)
    }

    /// `ctr run -d`: a container running `sleep` until dropped.
    pub fn run_detached(&self, ns: &str, snapshotter: &str, reference: &str) -> Container<'_> {
        let id = unique("detached");
        self.ctr_ok(
            ns,
            &[
                "run",
                "-d",
                "--snapshotter",
                snapshotter,
                reference,
                &id,
                "sleep",
                "600",
            ],
        );
        Container {
            containerd: self,
            ns: ns.to_string(),
            id,
        }
    }

    /// The snapshots `ctr snapshots ls` lists: (key, parent, kind).
    pub fn snapshots(&self, ns: &str, snapshotter: &str) -> Vec<(String, String, String)> {
        let out = self.ctr(ns, &["snapshots", "--snapshotter", snapshotter, "ls"]);
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f[..] {
                    [key, kind] => Some((key.into(), String::new(), kind.into())),
                    [key, parent, kind] => Some((key.into(), parent.into(), kind.into())),
                    _ => None,
                }
            })
            .collect()
    }

    /// Wait until containerd reaches the snapshotter again (after a restart it backs off for a
    /// second or so).
    pub fn wait_for_snapshotter(&self, ns: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.ctr(ns, &["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd does not reach the snapshotter: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A detached container (`sleep 600`); killed and deleted on drop.
pub struct Container<'a> {
    containerd: &'a TestContainerd,
    pub ns: String,
    pub id: String,
}

impl Container<'_> {
    /// `ctr tasks exec` of `sh -c SCRIPT`: its output.
    pub fn exec(&self, script: &str) -> Output {
        let exec_id = unique("exec");
        self.containerd.ctr(
            &self.ns,
            &[
                "tasks",
                "exec",
                "--exec-id",
                &exec_id,
                &self.id,
                "sh",
                "-c",
                script,
            ],
        )
    }

    /// `exec` that must succeed; its stdout.
    pub fn exec_ok(&self, script: &str) -> String {
        let out = self.exec(script);
        assert!(
            out.status.success(),
            "exec {script:?} in {} failed ({}):\n{}{}",
            self.id,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container's rootfs mountpoint (under containerd's state).
    pub fn rootfs(&self) -> PathBuf {
        self.containerd
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(&self.id)
            .join("rootfs")
    }

    /// The `upperdir=` of the container's overlay rootfs.
    pub fn upper_dir(&self) -> PathBuf {
        let rootfs = self.rootfs();
        let (fstype, options) =
            mount_options(&rootfs).unwrap_or_else(|| panic!("{} is not mounted", rootfs.display()));
        assert_eq!(fstype, "overlay", "rootfs of {}: {options}", self.id);
        let upper = options
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="))
            .unwrap_or_else(|| panic!("no upperdir in {options}"));
        PathBuf::from(upper)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let c = self.containerd;
        let _ = c.ctr(&self.ns, &["tasks", "kill", "-s", "SIGKILL", &self.id]);
        let _ = c.ctr(&self.ns, &["tasks", "delete", "-f", &self.id]);
        let _ = c.ctr(&self.ns, &["containers", "delete", &self.id]);
    }
}

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// Applets the base layer links to busybox.
const APPLETS: &[&str] = &[
    "sh",
    "sha256sum",
    "cat",
    "echo",
    "ls",
    "sleep",
    "test",
    "true",
    "wc",
    "head",
    "stat",
];

/// The payload files of the busybox image: (path, contents), with sizes from empty to a few
/// chunks so lazy reads cross chunk boundaries.
pub fn payload_files() -> Vec<(String, Vec<u8>)> {
    let sizes: [(&str, usize); 6] = [
        ("empty", 0),
        ("small.txt", 13),
        ("page.bin", 4096),
        ("chunky.bin", 200_000),
        ("large.bin", 1_500_000),
        ("deep/er/nested.bin", 70_001),
    ];
    sizes
        .iter()
        .enumerate()
        .map(|(i, (name, len))| {
            (
                format!("data/{name}"),
                sample::random_bytes(0xb0b0 + i as u64, *len),
            )
        })
        .collect()
}

/// `sha256sum -c` input for [`payload_files`]: `HEX  /PATH` lines.
pub fn checksums() -> String {
    payload_files()
        .iter()
        .map(|(path, data)| {
            let digest = sha256(data);
            format!("{}  /{path}\n", digest.trim_start_matches("sha256:"))
        })
        .collect()
}

/// Write a two-layer gzip image to the OCI layout `dir` tagged `tag`: a base layer holding
/// `/bin/busybox` and its applet links, a payload layer with [`payload_files`] and
/// `/checksums.sha256`. Deterministic for one busybox binary.
pub fn busybox_image(dir: &Path, tag: &str) -> SampleImage {
    let busybox = std::fs::read(BUSYBOX).expect("read busybox");
    let mut base = LayerTar::new();
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "run"] {
        base.dir(d, if d == "tmp" { 0o1777 } else { 0o755 }, MTIME);
    }
    base.file("bin/busybox", &busybox, 0o755, MTIME);
    for applet in APPLETS {
        base.symlink(&format!("bin/{applet}"), "busybox");
    }
    base.file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644, MTIME);
    let mut payload = LayerTar::new();
    payload.dir("data", 0o755, MTIME);
    payload.dir("data/deep", 0o755, MTIME);
    payload.dir("data/deep/er", 0o755, MTIME);
    for (path, data) in payload_files() {
        payload.file(&path, &data, 0o644, MTIME);
    }
    payload.file("checksums.sha256", checksums().as_bytes(), 0o644, MTIME);
    let layers = [
        ImageLayer::gzip(&base.finish(), "busybox base"),
        ImageLayer::gzip(&payload.finish(), "payload and checksums"),
    ];
    sample::write_oci_layout(dir, tag, &layers).expect("write busybox layout")
}

pub use lazypull::containerd::Access;

/// Every request in the registry's access log, in order.
pub fn access_log(registry: &TestRegistry) -> Vec<Access> {
    lazypull::containerd::parse_access_log(&registry.log())
}

/// Push the busybox image (written under `work`) as `REPO:plain`; the source image.
pub fn push_plain(registry: &TestRegistry, work: &Path, repo: &str) -> SampleImage {
    let image = busybox_image(&work.join("busybox-layout"), "plain");
    registry.skopeo_copy(
        &super::oci_ref(&image.dir, "plain"),
        &registry.docker_ref(&format!("{repo}:plain")),
        "dest",
    );
    image
}

/// `lazypull convert --format FORMAT` of `REPO:plain` into `REPO:TAG`, registry to registry.
pub fn convert_in_registry(
    registry: &TestRegistry,
    repo: &str,
    format: &str,
    extra: &[&str],
    tag: &str,
) {
    let src = format!("{}/{repo}:plain", registry.host);
    let dst = format!("{}/{repo}:{tag}", registry.host);
    let out = run_with_timeout(
        Command::new(super::lazypull_bin())
            .args(["convert", "--no-progress", "--format", format])
            .args(extra)
            .arg(&src)
            .arg(&dst)
            .env("DOCKER_CONFIG", "/nonexistent"),
        None,
        super::TIMEOUT,
    );
    assert!(
        out.status.success(),
        "lazypull convert --format {format} {src} {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

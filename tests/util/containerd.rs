//! containerd 1.6 with `lazypull snapshotter` as a proxy snapshot plugin, all on one machine and
//! under one temp dir: a private containerd (its own root, state and sockets; the CRI plugin set
//! to the `lazypull` snapshotter with snapshot annotations on), the snapshotter process (stopped
//! and restarted with the same root), a tiny busybox image to run, and the registry's access log
//! read back. Every process and mount is cleaned up on drop, also when a test panics.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lazypull_converter::sample::{self, ImageLayer, SampleImage};

use super::registry::TestRegistry;
use super::tarbuild::{LayerTar, MTIME};
use super::{run_with_timeout, sha256};

/// The proxy plugin's name in containerd's config (`--snapshotter lazypull`).
pub const SNAPSHOTTER: &str = "lazypull";
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

/// Every mountpoint at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &dir || p.starts_with(&format!("{dir}/")))
        .map(PathBuf::from)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    found
}

/// Lazily unmount everything at or under `dir` (cleanup after a failure).
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m)
            .stderr(Stdio::null())
            .status();
    }
}

/// The mount options of the mount at `target` (`/proc/self/mounts`), if mounted.
pub fn mount_options(target: &Path) -> Option<(String, String)> {
    let target = target.to_string_lossy();
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&&*target)).then(|| (f[2].to_string(), f[3].to_string()))
    })
}

/// A running `lazypull snapshotter`, logging to a file; SIGTERM then SIGKILL on drop, after
/// which nothing stays mounted under its root.
pub struct TestSnapshotter {
    pub root: PathBuf,
    pub socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl TestSnapshotter {
    /// Write a config under `dir` (root `dir/root`, socket `dir/snapshotter.sock`) and start.
    pub fn start(dir: &Path) -> TestSnapshotter {
        std::fs::create_dir_all(dir).unwrap();
        let root = dir.join("root");
        let socket = dir.join("snapshotter.sock");
        let config = dir.join("snapshotter.toml");
        std::fs::write(
            &config,
            format!(
                "root = \"{}\"\nsocket = \"{}\"\n\n[registry]\nplain_http = true\n\n\
                 [fetch]\nbackground = false\ntimeout_secs = 10\nretries = 2\nmount_timeout_secs = 30\n",
                root.display(),
                socket.display()
            ),
        )
        .unwrap();
        let mut s = TestSnapshotter {
            root,
            socket,
            config,
            log: dir.join("snapshotter.log"),
            child: None,
        };
        s.resume();
        s
    }

    /// Start the process again (same config and root) after [`TestSnapshotter::stop`].
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the snapshotter is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(super::lazypull_bin())
            .arg("snapshotter")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn lazypull snapshotter");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("lazypull snapshotter exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "lazypull snapshotter does not listen on {}:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait (SIGKILL after 20 s); the exit status, `None` if it was not running.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap, as a crash would end it: no cleanup of its own runs.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the snapshotter is running");
        child.kill().expect("kill -9 lazypull snapshotter");
        child.wait().expect("reaping lazypull snapshotter");
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

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The log so far (every start appends).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestSnapshotter {
    fn drop(&mut self) {
        self.stop();
        unmount_under(&self.root);
    }
}

/// A private containerd; its containers are killed and it is stopped on drop, then nothing of
/// it stays mounted.
pub struct TestContainerd {
    pub dir: PathBuf,
    /// The gRPC socket (`ctr -a`, the CRI client).
    pub socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
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
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        // CRI reads registry hosts from `config_path`: plain HTTP to the test registry.
        let hosts = dir.join("certs.d").join(registry);
        std::fs::create_dir_all(&hosts).unwrap();
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
        let mut config = String::new();
        let d = dir.display();
        write!(
            config,
            r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "debug"

[proxy_plugins.{SNAPSHOTTER}]
  type = "snapshot"
  address = "{snap}"

# Collect garbage after every deletion, so Remove reaches the snapshotter within a test.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # No pods run: only image pulls, which need no sandbox image nor a network.
  sandbox_image = "{registry}/no-pause:none"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{cri_snapshotter}"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#,
            sock = socket.display(),
            snap = snapshotter_socket.display(),
        )
        .unwrap();
        let config_path = dir.join("containerd.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("containerd.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn containerd");
        let mut c = TestContainerd {
            dir: dir.to_path_buf(),
            socket,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.ctr(NS, &["version"]).status.success() {
                break;
            }
            if let Some(status) = c.child.as_mut().unwrap().try_wait().unwrap() {
                c.child = None;
                panic!("containerd exited with {status}:\n{}", c.log());
            }
            assert!(Instant::now() < deadline, "containerd not up:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr -a SOCK -n NS ARGS…`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).args(["-n", ns]).args(args);
        run_with_timeout(&mut cmd, None, CTR_TIMEOUT)
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
        let mut cmd = Command::new("ctr-remote");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", ns, "images", "rpull", "--plain-http"])
            .args(["--snapshotter", SNAPSHOTTER, reference]);
        run_with_timeout(&mut cmd, None, CTR_TIMEOUT)
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

    /// Kill and delete every task and container of `ns`.
    fn clean_namespace(&self, ns: &str) {
        let tasks = self.ctr(ns, &["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
            let _ = self.ctr(ns, &["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(ns, &["tasks", "delete", "-f", id]);
        }
        let containers = self.ctr(ns, &["containers", "ls", "-q"]);
        for id in String::from_utf8_lossy(&containers.stdout).split_whitespace() {
            let _ = self.ctr(ns, &["containers", "delete", id]);
        }
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Shims outlive containerd: their tasks go first.
            for ns in [NS, CRI_NS] {
                self.clean_namespace(ns);
            }
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount_under(&self.dir);
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

/// One request of the registry's access log (distribution's combined log format).
#[derive(Clone, Debug)]
pub struct Access {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub agent: String,
}

impl Access {
    /// Whether this fetched (GET) the blob `digest` of any repository.
    pub fn gets_blob(&self, digest: &str) -> bool {
        self.method == "GET" && self.path.ends_with(&format!("/blobs/{digest}"))
    }
}

/// Every request in the registry's access log, in order.
pub fn access_log(registry: &TestRegistry) -> Vec<Access> {
    registry
        .log()
        .lines()
        .filter_map(|line| {
            // 127.0.0.1 - - [date] "GET /v2/… HTTP/1.1" 206 1234 "referer" "agent"
            let quoted: Vec<&str> = line.split('"').collect();
            if quoted.len() < 7 {
                return None;
            }
            let mut request = quoted[1].split(' ');
            let method = request.next()?.to_string();
            let path = request.next()?.to_string();
            let status = quoted[2].split_whitespace().next()?.parse().ok()?;
            Some(Access {
                method,
                path,
                status,
                agent: quoted[5].to_string(),
            })
        })
        .collect()
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

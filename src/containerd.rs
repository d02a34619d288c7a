//! Harness support, not part of lazypull's interface: a private containerd 1.6 with
//! `lazypull snapshotter` as its proxy snapshot plugin, and a distribution registry
//! (`docker-registry`), all on one machine under directories the caller owns. `lazypull bench`
//! runs its containerd modes on them and the integration tests (`tests/util/containerd.rs`)
//! build their fixtures on them, so both start the same components the same way.
//!
//! - [`Snapshotter`]: `lazypull snapshotter` with a config written under its directory.
//! - [`Containerd`]: containerd with its own root, state and sockets, the `lazypull` proxy
//!   plugin, and the CRI plugin pulling into a chosen snapshotter.
//! - [`Registry`]: `docker-registry serve` on 127.0.0.1 with its access log on, parsed by
//!   [`parse_access_log`].
//!
//! Every process is stopped and everything it mounted under its directory is unmounted on drop.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The proxy plugin's name in containerd's config (`--snapshotter lazypull`).
pub const SNAPSHOTTER: &str = "lazypull";

/// Run `cmd` to completion with its output captured, killing it after `timeout`.
pub fn output_with_timeout(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let desc = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {desc}"))?;
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            // The child may exit without reading all of it; broken pipes are its business.
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    // Drained on threads: a child filling a pipe nobody reads would never exit.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
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

/// Lazily unmount everything at or under `dir` (cleanup after a stop or a failure).
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m)
            .stderr(Stdio::null())
            .status();
    }
}

/// A log file to append a process's stdout and stderr to.
fn log_file(path: &Path) -> Result<(Stdio, Stdio)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((f.try_clone()?.into(), f.into()))
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`.
fn terminate(mut child: Child, grace: Duration) -> Option<ExitStatus> {
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

/// Poll `ready` (every 20 ms) until it holds, then hand `child` back. If `child` exits first
/// or `timeout` passes (then it is killed), fail with `what` and the log at `log`.
fn wait_ready(
    mut child: Child,
    what: &str,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<Option<Child>> {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + timeout;
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited with {status}:\n{}", log());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} not ready after {timeout:?}:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(child))
}

/// A running `lazypull snapshotter`, logging to a file; stopped on drop, after which nothing
/// stays mounted under its root.
pub struct Snapshotter {
    pub root: PathBuf,
    pub socket: PathBuf,
    lazypull: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Snapshotter {
    /// Write a config under `dir` (root `dir/root`, socket `dir/snapshotter.sock`, plain HTTP
    /// to registries, background fetch as given) and start `lazypull snapshotter` from the
    /// binary `lazypull`.
    pub fn start(lazypull: &Path, dir: &Path, background_fetch: bool) -> Result<Snapshotter> {
        std::fs::create_dir_all(dir)?;
        let root = dir.join("root");
        let socket = dir.join("snapshotter.sock");
        let config = dir.join("snapshotter.toml");
        std::fs::write(
            &config,
            format!(
                "root = \"{}\"\nsocket = \"{}\"\n\n[registry]\nplain_http = true\n\n\
                 [fetch]\nbackground = {background_fetch}\ntimeout_secs = 10\nretries = 2\n\
                 mount_timeout_secs = 30\n",
                root.display(),
                socket.display()
            ),
        )?;
        let mut s = Snapshotter {
            root,
            socket,
            lazypull: lazypull.to_path_buf(),
            config,
            log: dir.join("snapshotter.log"),
            child: None,
        };
        s.resume()?;
        Ok(s)
    }

    /// Start the process again (same config and root) after [`Snapshotter::stop`]; returns
    /// once it listens on its socket.
    pub fn resume(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the snapshotter is already running");
        }
        let (out, err) = log_file(&self.log)?;
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(&self.lazypull)
            .arg("snapshotter")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting lazypull snapshotter")?;
        let what = format!("lazypull snapshotter (socket {})", self.socket.display());
        let socket = &self.socket;
        self.child = wait_ready(child, &what, &self.log, Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        })?;
        Ok(())
    }

    /// SIGTERM and wait (SIGKILL after 20 s); the exit status, `None` if it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        terminate(self.child.take()?, Duration::from_secs(20))
    }

    /// SIGKILL and reap, as a crash would end it: no cleanup of its own runs.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .context("the snapshotter is not running")?;
        child.kill().context("kill -9 lazypull snapshotter")?;
        child.wait().context("reaping lazypull snapshotter")?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log so far (every start appends).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.stop();
        unmount_under(&self.root);
    }
}

/// How to set up a [`Containerd`].
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    /// The socket of the `lazypull` proxy plugin.
    pub snapshotter_socket: PathBuf,
    /// The snapshotter CRI pulls into (`lazypull` or `overlayfs`).
    pub cri_snapshotter: String,
    /// `127.0.0.1:PORT`: the registry CRI reaches over plain HTTP.
    pub registry: String,
    /// containerd's log level (`debug` helps tests; it costs a benchmark time).
    pub log_level: String,
}

/// A private containerd; its containers are killed and it is stopped on drop, then nothing of
/// it stays mounted.
pub struct Containerd {
    pub dir: PathBuf,
    /// The gRPC socket (`ctr -a`, the CRI client).
    pub socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// How long one `ctr` command may take by default.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);

impl Containerd {
    /// Write `dir/containerd.toml` (root, state and sockets under `dir`) and start containerd;
    /// returns once `ctr version` answers.
    pub fn start(dir: &Path, cfg: &ContainerdConfig) -> Result<Containerd> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let registry = &cfg.registry;
        // CRI reads registry hosts from `config_path`: plain HTTP to the registry.
        let hosts = dir.join("certs.d").join(registry);
        std::fs::create_dir_all(&hosts)?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
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
  level = "{level}"

[proxy_plugins.{SNAPSHOTTER}]
  type = "snapshot"
  address = "{snap}"

# Collect garbage after every deletion, so Remove reaches the snapshotter at once.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # No pods run: only image pulls, which need no sandbox image nor a network.
  sandbox_image = "{registry}/no-pause:none"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{cri}"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#,
            sock = socket.display(),
            snap = cfg.snapshotter_socket.display(),
            level = cfg.log_level,
            cri = cfg.cri_snapshotter,
        )?;
        let config_path = dir.join("containerd.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("containerd.log");
        let (out, err) = log_file(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting containerd")?;
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            log,
            child: None,
        };
        let up = || {
            c.ctr("default", &["version"], Duration::from_secs(10))
                .is_ok_and(|o| o.status.success())
        };
        let child = wait_ready(child, "containerd", &c.log, Duration::from_secs(30), up)?;
        c.child = child;
        Ok(c)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr -a SOCK -n NS`, to add arguments to.
    pub fn ctr_command(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).args(["-n", ns]);
        cmd
    }

    /// `ctr -a SOCK -n NS ARGS…` to completion within `timeout`.
    pub fn ctr(&self, ns: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        output_with_timeout(self.ctr_command(ns).args(args), None, timeout)
    }

    /// `ctr-remote -a SOCK -n NS images rpull --plain-http --snapshotter lazypull REF`: a pull
    /// whose Prepares carry the stargz remote-snapshot labels.
    pub fn rpull_command(&self, ns: &str, reference: &str) -> Command {
        let mut cmd = Command::new("ctr-remote");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", ns, "images", "rpull", "--plain-http"])
            .args(["--snapshotter", SNAPSHOTTER, reference]);
        cmd
    }

    /// Kill and delete every task and container of every namespace: shims outlive containerd.
    fn clean(&self) {
        let t = Duration::from_secs(30);
        let lines = |o: Result<Output>| -> Vec<String> {
            o.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
        };
        for ns in lines(self.ctr("default", &["namespaces", "ls", "-q"], t)) {
            for id in lines(self.ctr(&ns, &["tasks", "ls", "-q"], t)) {
                let _ = self.ctr(&ns, &["tasks", "kill", "-s", "SIGKILL", &id], t);
                let _ = self.ctr(&ns, &["tasks", "delete", "-f", &id], t);
            }
            for id in lines(self.ctr(&ns, &["containers", "ls", "-q"], t)) {
                let _ = self.ctr(&ns, &["containers", "delete", &id], t);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.clean();
        }
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(10));
        }
        unmount_under(&self.dir);
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The status code of `GET path` from `host`, or `None` when nobody answers.
pub fn http_status(host: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A `docker-registry` (distribution 2.8) on 127.0.0.1 with its access log on; killed on drop
/// (its storage stays with the directory).
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Registry {
    /// Write `dir/config.yml` (storage `dir/storage`, deletes allowed, `extra_yaml` appended,
    /// such as an `auth:` section) and serve on `port`.
    pub fn start(dir: &Path, port: u16, extra_yaml: &str) -> Result<Registry> {
        std::fs::create_dir_all(dir)?;
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{extra_yaml}",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let mut r = Registry {
            host,
            dir: dir.to_path_buf(),
            child: None,
        };
        r.resume()?;
        Ok(r)
    }

    /// Start the process again (same port, same storage) after [`Registry::stop`]; returns
    /// once it answers `GET /v2/`.
    pub fn resume(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the registry is already running");
        }
        let (out, err) = log_file(&self.log_path())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting docker-registry")?;
        let host = &self.host;
        let log = self.log_path();
        self.child = wait_ready(
            child,
            "docker-registry",
            &log,
            Duration::from_secs(20),
            || http_status(host, "/v2/").is_some(),
        )?;
        Ok(())
    }

    /// Kill the process (storage is kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// The log so far (every start appends).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request of a registry's access log (distribution's combined log format).
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

/// Every request in `log` (a registry's log), in order; other lines are skipped.
pub fn parse_access_log(log: &str) -> Vec<Access> {
    log.lines()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines_parse_and_others_are_skipped() {
        let log = "time=\"x\" level=info msg=\"listening\"\n\
            127.0.0.1 - - [07/Dec/2026:12:00:00 +0000] \"GET /v2/a/blobs/sha256:ab HTTP/1.1\" 206 10 \"\" \"containerd/1.6\"\n";
        let got = parse_access_log(log);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].status, 206);
        assert_eq!(got[0].agent, "containerd/1.6");
        assert!(got[0].gets_blob("sha256:ab"));
        assert!(!got[0].gets_blob("sha256:cd"));
    }
}

//! Helpers shared by the topic modules: skipping policy, running the binary and tools, building
//! input layouts, reading output layouts.

#![allow(dead_code)]

pub mod containerd;
pub mod erofs;
pub mod gohelper;
pub mod registry;
pub mod tarbuild;
pub mod toc;
pub mod tree;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lazypull_converter::sample::{self, ImageLayer, SampleImage, SampleLayer};
use serde_json::Value;
use sha2::Digest as _;

/// Chunk size the corpus is generated for and conversions are run with (small, so the
/// chunk-boundary files stay small).
pub const CHUNK: u64 = 64 * 1024;

/// Longest any single command may run before the test fails as hung.
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// Whether we run under CI (`CI=true`), where a missing capability fails instead of skipping.
pub fn ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Skip the current test with `reason`, or fail under CI. Call through [`skip_unless!`].
pub fn skip(reason: &str) {
    if ci() {
        panic!("CI=true and this test cannot run: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// `skip_unless!(condition, "reason {}", args)`: return early (skip) unless `condition` holds.
macro_rules! skip_unless {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            $crate::util::skip(&format!($($reason)+));
            return;
        }
    };
}
pub(crate) use skip_unless;

/// Whether we are root (needed to extract device nodes and foreign owners).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether `name` is an executable on `PATH`.
pub fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// The first of `tools` that is missing, if any.
pub fn missing_tool(tools: &[&str]) -> Option<String> {
    tools.iter().find(|t| !have_tool(t)).map(|t| t.to_string())
}

/// The test corpus, generated once per run.
pub fn corpus() -> &'static [SampleLayer] {
    static CORPUS: OnceLock<Vec<SampleLayer>> = OnceLock::new();
    CORPUS.get_or_init(|| sample::layers(CHUNK))
}

/// The corpus layer called `name`.
pub fn corpus_layer(name: &str) -> &'static SampleLayer {
    corpus()
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no corpus layer `{name}`"))
}

/// Run `cmd` to completion, feeding it `stdin`, failing the test if it outlives `timeout`
/// ([`lazypull::containerd::output_with_timeout`], whose errors panic).
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    lazypull::containerd::output_with_timeout(cmd, stdin, timeout)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// What a finished command printed, and what it cost.
pub struct Measured {
    pub output: Output,
    pub elapsed: Duration,
    /// Peak resident set size of the command alone.
    pub max_rss_mib: u64,
}

/// [`run_with_timeout`], also measuring the command's time and peak memory.
///
/// The peak comes from GNU time (Debian `time`), which forks the command from its own small
/// process: a child spawned straight from the test binary inherits the test binary's
/// high-water mark in `wait4`'s `ru_maxrss` (the kernel folds in the peak of the memory the
/// child ran on before `exec`, which under `vfork` is the parent's).
pub fn run_measured(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Measured {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("time");
    timed
        .arg("--format=%M")
        .arg("--output")
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let start = Instant::now();
    let output = run_with_timeout(&mut timed, stdin, timeout);
    let elapsed = start.elapsed();
    let report = std::fs::read_to_string(report.path()).unwrap();
    // GNU time writes "Command exited with non-zero status N" before the figure.
    let kib: u64 = report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time's report: {report:?}"));
    Measured {
        output,
        elapsed,
        max_rss_mib: kib / 1024,
    }
}

/// Run a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let desc = format!("{cmd:?}");
    let out = run_with_timeout(cmd, None, TIMEOUT);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The `lazypull` binary under test.
pub fn lazypull_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lazypull")
}

/// Run `lazypull ARGS…`.
pub fn lazypull<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_with_timeout(Command::new(lazypull_bin()).args(args), None, TIMEOUT)
}

/// Run `lazypull convert ARGS… --json`, which must succeed; returns the JSON report.
pub fn convert_ok<S: AsRef<OsStr>>(args: &[S]) -> Value {
    let mut all: Vec<&OsStr> = vec![OsStr::new("convert"), OsStr::new("--json")];
    all.extend(args.iter().map(|a| a.as_ref()));
    let out = lazypull(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lazypull {all:?} failed ({}):\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked"),
        "stderr mentions a panic:\n{stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `oci:DIR:TAG` for a layout directory.
pub fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// Write a one-image layout at `dir` whose layers are gzip-compressed `tars`.
pub fn gzip_layout(dir: &Path, tag: &str, tars: &[(&str, &[u8])]) -> SampleImage {
    let layers: Vec<ImageLayer> = tars
        .iter()
        .map(|(name, tar)| ImageLayer::gzip(tar, name))
        .collect();
    sample::write_oci_layout(dir, tag, &layers).expect("write input layout")
}

/// sha256 of `data` as `sha256:hex`.
pub fn sha256(data: &[u8]) -> String {
    let d = sha2::Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run `lazypull convert ARGS…` expecting failure within `timeout`: it must exit non-zero,
/// say why on stderr and not panic. Returns stderr.
pub fn convert_fails_with<S: AsRef<OsStr>>(args: &[S], timeout: Duration) -> String {
    let mut cmd = Command::new(lazypull_bin());
    cmd.arg("convert").args(args);
    let desc = format!("{cmd:?}");
    let out = run_with_timeout(&mut cmd, None, timeout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{desc} succeeded");
    assert!(!stderr.contains("panicked"), "{desc} panicked:\n{stderr}");
    assert!(!stderr.trim().is_empty(), "{desc} failed silently");
    stderr
}

/// A layout directory's observable state: `index.json` bytes and blob names, or `None` when
/// the directory does not exist. A failed conversion must leave it as it was.
pub fn layout_state(dir: &Path) -> Option<(Vec<u8>, Vec<String>)> {
    if !dir.exists() {
        return None;
    }
    let index = std::fs::read(dir.join("index.json")).unwrap_or_default();
    Some((index, Layout::new(dir).blob_names()))
}

/// Re-point the tag `tag` of the layout at `dir` from its manifest to a new image index
/// holding that manifest for linux/amd64: a multi-platform source.
pub fn wrap_in_image_index(dir: &Path, tag: &str) {
    let layout = Layout::new(dir);
    let mut manifest_entry = layout.index_entry(tag);
    if let Some(obj) = manifest_entry.as_object_mut() {
        obj.remove("annotations");
        obj.insert(
            "platform".into(),
            serde_json::json!({"architecture": "amd64", "os": "linux"}),
        );
    }
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": sample::MEDIA_TYPE_INDEX,
        "manifests": [manifest_entry],
    });
    let bytes = serde_json::to_vec(&image_index).unwrap();
    let digest = sha256(&bytes);
    std::fs::write(layout.blob_path(&digest), &bytes).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": sample::MEDIA_TYPE_INDEX,
        "manifests": [{
            "mediaType": sample::MEDIA_TYPE_INDEX,
            "digest": digest,
            "size": bytes.len(),
            "annotations": {sample::REF_NAME: tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

/// An OCI image layout on disk, read back for checking.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir.join("blobs/sha256").join(hex)
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    pub fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).unwrap()
    }

    pub fn index(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap()
    }

    /// The index entry tagged `tag`.
    pub fn index_entry(&self, tag: &str) -> Value {
        self.index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"][sample::REF_NAME] == tag)
            .unwrap_or_else(|| panic!("no tag {tag} in {}", self.dir.display()))
            .clone()
    }

    /// The manifest tagged `tag` (an index entry pointing at a manifest, not an index).
    pub fn manifest(&self, tag: &str) -> Value {
        let entry = self.index_entry(tag);
        assert_eq!(entry["mediaType"], sample::MEDIA_TYPE_MANIFEST);
        self.json(entry["digest"].as_str().unwrap())
    }

    /// Every file name under `blobs/sha256`, sorted.
    pub fn blob_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.dir.join("blobs/sha256")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

/// A JSON string field, or a test failure naming it.
pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
}

/// The layers of the first (or only) manifest of a convert report.
pub fn report_layers(report: &Value) -> &[Value] {
    let manifests = report["manifests"].as_array().expect("report.manifests");
    assert!(!manifests.is_empty(), "report has no manifests: {report}");
    manifests[0]["layers"].as_array().expect("report layers")
}

/// Decompress a whole layer blob (gzip multi-member or zstd multi-frame).
pub fn decompress(blob: &[u8], media_type: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("+zstd") {
        zstd::stream::copy_decode(blob, &mut out).expect("zstd decode");
    } else if media_type.ends_with("+gzip") {
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .expect("gzip decode");
    } else {
        out = blob.to_vec();
    }
    out
}

/// Conversions of one image with different thread counts: every run's root digest,
/// `index.json` and blobs must equal the first run's, byte for byte.
pub fn assert_identical_runs(runs: &[(serde_json::Value, Layout)], what: &str) {
    let (first_report, first) = &runs[0];
    for (report, other) in &runs[1..] {
        assert_eq!(
            report["root"]["digest"], first_report["root"]["digest"],
            "{what}: root digest differs between runs"
        );
        assert_eq!(
            std::fs::read(first.dir.join("index.json")).unwrap(),
            std::fs::read(other.dir.join("index.json")).unwrap()
        );
        assert_eq!(first.blob_names(), other.blob_names());
        for name in first.blob_names() {
            let digest = format!("sha256:{name}");
            assert!(
                first.blob(&digest) == other.blob(&digest),
                "{what}: blob {name} differs"
            );
        }
    }
}

//! The Go helper (`tests/gohelper/`): the reference Go `estargz` package, built once per run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use super::{have_tool, run_with_timeout, TIMEOUT};

/// The helper binary, or why it is not available (no `go`, no helper source, build failure).
pub fn gohelper() -> Result<&'static Path, String> {
    static HELPER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELPER
        .get_or_init(build)
        .as_ref()
        .map(|p| p.as_path())
        .map_err(|e| e.clone())
}

fn build() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gohelper/build.sh");
    if !script.is_file() {
        return Err(format!("{} does not exist", script.display()));
    }
    if !have_tool("go") {
        return Err("`go` is not installed (apt-get install golang-go)".into());
    }
    let out_bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gohelper/gohelper");
    std::fs::create_dir_all(out_bin.parent().unwrap()).map_err(|e| e.to_string())?;
    let out = run_with_timeout(
        Command::new("bash").arg(&script).arg(&out_bin),
        None,
        TIMEOUT,
    );
    if !out.status.success() {
        // A helper that is present but does not build is a real failure, not a skip.
        panic!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out_bin)
}

/// Run the helper with `args`; returns (success, stdout JSON if any, stderr).
pub fn run(helper: &Path, args: &[&std::ffi::OsStr]) -> (bool, Option<Value>, String) {
    let out = run_with_timeout(Command::new(helper).args(args), None, TIMEOUT);
    let json = serde_json::from_slice(&out.stdout).ok();
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gohelper verify BLOB TOCDIGEST` must succeed.
pub fn verify(helper: &Path, blob: &Path, toc_digest: &str) {
    let (ok, json, stderr) = run(
        helper,
        &["verify".as_ref(), blob.as_os_str(), toc_digest.as_ref()],
    );
    assert!(
        ok,
        "Go estargz rejects {} (TOC {toc_digest}): {json:?}\n{stderr}",
        blob.display()
    );
}

/// `gohelper list BLOB`: entries sorted by name.
pub fn list(helper: &Path, blob: &Path) -> Vec<Value> {
    let (ok, json, stderr) = run(helper, &["list".as_ref(), blob.as_os_str()]);
    assert!(ok, "gohelper list {} failed:\n{stderr}", blob.display());
    match json {
        Some(Value::Array(entries)) => entries,
        other => panic!("gohelper list printed {other:?}"),
    }
}

/// `gohelper build IN_TAR OUT_BLOB --chunk-size N`: returns `{"tocDigest","diffID","size"}`.
pub fn build_blob(helper: &Path, tar: &Path, out: &Path, chunk_size: u64) -> Value {
    let chunk = chunk_size.to_string();
    let (ok, json, stderr) = run(
        helper,
        &[
            "build".as_ref(),
            tar.as_os_str(),
            out.as_os_str(),
            "--chunk-size".as_ref(),
            chunk.as_ref(),
        ],
    );
    assert!(ok, "gohelper build {} failed:\n{stderr}", tar.display());
    json.expect("gohelper build prints JSON")
}

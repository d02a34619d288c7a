//! `lazypull mount`: converted images served through FUSE, stacked by overlayfs, equal the
//! source layers applied in order; `lazypull umount` stops the server; a second mount with the
//! same cache fetches nothing it already has.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazypull_converter::sample;

use crate::util::tree::{compare, extract_layers_merged, snapshot, tar_names, without_markers};
use crate::util::{is_root, lazypull, lazypull_bin, skip_unless};
use lazypull_fuse::serve::{RangeServer, Throttle};

/// Why FUSE mounts cannot run here, if they cannot.
pub(crate) fn fuse_support() -> Result<(), String> {
    if !is_root() {
        return Err("FUSE and overlay mounts need root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for name in ["fuse", "overlay"] {
        if !fs
            .lines()
            .any(|l| l.split_whitespace().last() == Some(name))
        {
            return Err(format!("the kernel does not list `{name}`"));
        }
    }
    Ok(())
}

fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*path)))
}

/// A running `lazypull mount`; unmounted and reaped on drop, also when a test fails.
pub(crate) struct Served {
    child: Option<Child>,
    mountpoint: PathBuf,
}

impl Served {
    pub(crate) fn start_with(
        extra: &[&str],
        source: &str,
        mountpoint: &Path,
        cache: &Path,
    ) -> Served {
        let mut cmd = Command::new(lazypull_bin());
        cmd.arg("mount")
            .arg("--cache-dir")
            .arg(cache)
            .args(extra)
            .arg(source)
            .arg(mountpoint);
        Served::spawn(cmd, mountpoint)
    }

    /// Run `cmd` (a `lazypull mount … MOUNTPOINT`) and wait until it has mounted.
    pub(crate) fn spawn(mut cmd: Command, mountpoint: &Path) -> Served {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lazypull mount");
        let served = Served {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mountpoint) {
            assert!(
                Instant::now() < deadline,
                "{} not mounted within 30 s",
                mountpoint.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL the server and reap it: its FUSE mounts are left dead behind it, as after a
    /// crash.
    pub(crate) fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9 lazypull mount");
        child.wait().expect("reaping lazypull mount");
    }

    /// `lazypull umount`, then the server must exit on its own, successfully; its stderr.
    pub(crate) fn stop(mut self) -> String {
        let out = lazypull(&["umount".to_string(), self.mountpoint.display().to_string()]);
        assert!(
            out.status.success(),
            "lazypull umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit after umount"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            status.success(),
            "lazypull mount exited with {status}: {err}"
        );
        assert!(!is_mounted(&self.mountpoint), "still mounted after umount");
        err
    }
}

impl Drop for Served {
    /// When a test failed: detach the mountpoint so that the server exits and unmounts its
    /// layers itself; kill it (leaving nothing it could clean) only if it does not.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The sample image, converted with `extra` options plus `--json`: its source, the output
/// layout and the report.
pub(crate) fn convert_sample(
    tmp: &Path,
    extra: &[&str],
) -> (sample::SampleImage, PathBuf, serde_json::Value) {
    let image = sample::write_sample_image(&tmp.join("src"), "t").unwrap();
    let out = tmp.join("out");
    let mut args: Vec<String> = vec!["convert".into(), "--json".into()];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(format!("oci:{}:t", image.dir.display()));
    args.push(format!("oci:{}:t", out.display()));
    let converted = lazypull(&args);
    assert!(
        converted.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let report = serde_json::from_slice(&converted.stdout).unwrap();
    (image, out, report)
}

/// The blob file, in layout `out`, of a layer of a conversion report.
pub(crate) fn layer_blob(out: &Path, layer: &serde_json::Value) -> PathBuf {
    let digest = layer["digest"].as_str().unwrap();
    out.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The JSON statistics report the server prints when it unmounts (its last stderr line).
pub(crate) fn final_stats(stderr: &str) -> serde_json::Value {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no statistics report in: {stderr}"));
    serde_json::from_str(line).unwrap()
}

/// The sample image's layers as uncompressed tars, bottom first.
fn sample_tars(image: &sample::SampleImage) -> Vec<Vec<u8>> {
    image
        .layers
        .iter()
        .map(|l| {
            let gz = std::fs::read(image.blob_path(&l.digest)).unwrap();
            let mut tar = Vec::new();
            flate2::read::MultiGzDecoder::new(&gz[..])
                .read_to_end(&mut tar)
                .unwrap();
            tar
        })
        .collect()
}

/// What a mount of the sample image must show: its layers applied in order (extracted under
/// `dir`), and the paths the layers name explicitly.
pub(crate) fn expected_tree(
    image: &sample::SampleImage,
    dir: &Path,
) -> (crate::util::tree::Tree, BTreeSet<String>) {
    let tars = sample_tars(image);
    let refs: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    extract_layers_merged(&refs, dir);
    let explicit: BTreeSet<String> = refs
        .iter()
        .flat_map(|t| without_markers(&tar_names(t)))
        .collect();
    (without_dir_mtimes(snapshot(dir)), explicit)
}

/// Directory mtimes are not comparable: extracting a later layer into a directory bumps its
/// mtime, and a layer that holds `a/b` without `a/` gets a synthesised `a` with mtime 0, which
/// overlayfs shows above the lower layer's `a` (as every lazy snapshotter does).
pub(crate) fn without_dir_mtimes(mut t: crate::util::tree::Tree) -> crate::util::tree::Tree {
    for n in t.values_mut().filter(|n| n.kind == 'd') {
        n.mtime = 0;
        n.mtime_nsec = 0;
    }
    t
}

/// Read every file under `root` (what a workload touching everything does).
pub(crate) fn read_everything(root: &Path) -> u64 {
    let mut total = 0;
    for (path, node) in snapshot(root) {
        if node.kind == 'f' {
            total += std::fs::read(root.join(path)).unwrap().len() as u64;
        }
    }
    total
}

/// `extra`: more convert options.
fn mount_image_matches_layers(format: &str, extra: &[&str]) {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let image = sample::write_sample_image(&tmp.path().join("src"), "t").unwrap();
    let out = tmp.path().join("out");
    let mut args = vec!["convert".to_string(), "--format".into(), format.into()];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(format!("oci:{}:t", image.dir.display()));
    args.push(format!("oci:{}:t", out.display()));
    let converted = lazypull(&args);
    assert!(
        converted.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&converted.stderr)
    );

    let (want, explicit) = expected_tree(&image, &tmp.path().join("want"));

    // The converted layout on a plain HTTP server, mounted from its URL.
    let server = RangeServer::start_dir(tmp.path().to_path_buf(), Throttle::default()).unwrap();
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");
    let source = format!("oci:{}:t", server.url("out"));
    // No background fetch: what the second mount finds cached is what the reads brought (a
    // file hidden by a whiteout is never read, so it stays uncached).
    let quiet = ["--no-background-fetch"];
    let served = Served::start_with(&quiet, &source, &mnt, &cache);
    let got = without_dir_mtimes(snapshot(&mnt));
    let diff = compare(&want, &got, Some(&explicit));
    assert!(
        diff.0.is_empty(),
        "{format}: the mounted image differs from the layers applied in order:\n{diff}"
    );
    let bytes = read_everything(&mnt);
    assert!(bytes > 0);
    distinct_files_have_distinct_inodes(&mnt, tmp.path(), format);
    let first = served.stop();
    let stats = final_stats(&first);
    assert!(stats["cache"]["misses"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(stats["unmounted"], true);

    let cold_bytes = server.body_bytes();

    // The same image again, same cache: every chunk comes from the cache, none from the blob;
    // only the image's JSON and the TOCs or chunk indexes cross the network again.
    let served = Served::start_with(&quiet, &source, &mnt, &cache);
    assert_eq!(read_everything(&mnt), bytes);
    let second = served.stop();
    let warm_bytes = server.body_bytes() - cold_bytes;
    assert!(
        warm_bytes * 5 < cold_bytes,
        "{format}: the warm mount fetched {warm_bytes} bytes, the cold one {cold_bytes}"
    );
    let stats = final_stats(&second);
    assert!(
        stats["cache"]["misses"] == 0 && stats["cache"]["fetches"] == 0,
        "{format}: the warm mount fetched chunks again: {second}"
    );
    // The same report stays beside the cache.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("stats.json")).unwrap()).unwrap();
    assert_eq!(file, stats);
}

/// Under a container's writable overlay on top of the mounted image (what a runtime does), no
/// two different files share `(st_dev, st_ino)`: the dynamic loader takes such files for one
/// library already loaded. Overlayfs passes the layers' inode numbers through, so each layer
/// needs its own range.
fn distinct_files_have_distinct_inodes(image: &Path, tmp: &Path, format: &str) {
    use std::os::unix::fs::MetadataExt;
    let (upper, work, root) = (tmp.join("upper"), tmp.join("work"), tmp.join("root"));
    for d in [&upper, &work, &root] {
        std::fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        upper.display(),
        work.display()
    );
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "mounting the container overlay");
    let mut seen: HashMap<(u64, u64), String> = HashMap::new();
    let mut clash = None;
    for (path, _) in walkdir_files(&root) {
        let m = std::fs::metadata(root.join(&path)).unwrap();
        if let Some(other) = seen.insert((m.dev(), m.ino()), path.clone()) {
            if m.nlink() < 2 {
                clash = Some((other, path));
            }
        }
    }
    let _ = Command::new("umount").arg(&root).status();
    assert!(
        clash.is_none(),
        "{format}: two files share device and inode number: {clash:?}"
    );
}

#[test]
fn estargz_image_mounts_and_stacks() {
    mount_image_matches_layers("estargz", &[]);
}

#[test]
fn erofs_image_mounts_and_stacks() {
    mount_image_matches_layers("erofs", &[]);
}

/// EROFS layers named under the OCI layer prefix, as containerd 1.6 needs them.
#[test]
fn erofs_oci_layer_image_mounts_and_stacks() {
    mount_image_matches_layers("erofs", &["--erofs-media-type", "oci-layer"]);
}

/// A layer mounted without any trust anchor is refused unless asked for.
#[test]
fn a_bare_blob_needs_a_digest_or_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let image = sample::write_sample_image(&tmp.path().join("src"), "t").unwrap();
    let out = tmp.path().join("out");
    let converted = lazypull(&[
        "convert".to_string(),
        format!("oci:{}:t", image.dir.display()),
        format!("oci:{}:t", out.display()),
    ]);
    assert!(converted.status.success());
    let blob = std::fs::read_dir(out.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let refused = lazypull(&[
        "mount".to_string(),
        blob.display().to_string(),
        tmp.path().join("mnt").display().to_string(),
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--toc-digest") && err.contains("--insecure-skip-verify"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Over HTTP, reading one small file of a realistic layer fetches under 1% of the blob: the
/// metadata (eStargz TOC; EROFS superblock, inodes and directories) and that file's chunk,
/// nothing else. Its bytes equal the original file's. The blob is mounted bare, from its URL
/// and the digest the conversion report gives, so this also finds the format from the blob.
fn one_small_file_over_http(format: &str) {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tar = crate::realistic::realistic_tar(&work);
    let src = tmp.path().join("src");
    sample::write_oci_layout(&src, "t", &[sample::ImageLayer::tar(&tar, "realistic")]).unwrap();
    drop(tar);
    let out = tmp.path().join("out");
    let converted = lazypull(&[
        "convert".to_string(),
        "--json".into(),
        "--format".into(),
        format.into(),
        "--compression-level".into(),
        "1".into(),
        format!("oci:{}:t", src.display()),
        format!("oci:{}:t", out.display()),
    ]);
    assert!(
        converted.status.success(),
        "{}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&converted.stdout).unwrap();
    let layer = &report["manifests"][0]["layers"][0];
    let trusted = match format {
        "erofs" => layer["chunkIndexDigest"].as_str(),
        _ => layer["tocDigest"].as_str(),
    }
    .expect("the report gives the layer's trust anchor");
    let blob = layer_blob(&out, layer);
    let blob_size = std::fs::metadata(&blob).unwrap().len();

    let server = RangeServer::start(HashMap::from([("blob".to_string(), blob.clone())])).unwrap();
    let mnt = tmp.path().join("mnt");
    let served = Served::start_with(
        &["--no-background-fetch", "--toc-digest", trusted],
        &server.url("blob"),
        &mnt,
        &tmp.path().join("cache"),
    );
    // Find a small regular file from metadata only.
    let small = walkdir_files(&mnt)
        .into_iter()
        .find(|(_, len)| (100..=8192).contains(len))
        .expect("a small file in the realistic layer")
        .0;
    let metadata = server.body_bytes();
    let data = std::fs::read(mnt.join(&small)).unwrap();
    let original = std::fs::read(Path::new("/").join(&small)).unwrap();
    assert_eq!(
        data, original,
        "{small}: served bytes differ from the original file"
    );
    let fetched = server.body_bytes();
    served.stop();
    eprintln!(
        "{format}: {blob_size}-byte blob, metadata {metadata} bytes, `{small}` {} bytes",
        fetched - metadata
    );
    assert!(
        fetched * 100 < blob_size,
        "{format}: mounting and reading `{small}` fetched {fetched} of {blob_size} bytes (≥ 1%)"
    );
}

#[test]
fn one_small_estargz_file_over_http_fetches_under_one_percent() {
    one_small_file_over_http("estargz");
}

#[test]
fn one_small_erofs_file_over_http_fetches_under_one_percent() {
    one_small_file_over_http("erofs");
}

/// Regular files under `root` with their sizes, from metadata only.
pub(crate) fn walkdir_files(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.push((rel, meta.len()));
            }
        }
    }
    out
}

/// `--record` writes each file's path on its first read, in read order, once; converting with
/// that list as `--prefetch-list` puts those files in every layer's prefetch region.
#[test]
fn record_lists_first_reads_in_order() {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let image = sample::write_sample_image(&tmp.path().join("src"), "t").unwrap();
    let out = tmp.path().join("out");
    let converted = lazypull(&[
        "convert".to_string(),
        format!("oci:{}:t", image.dir.display()),
        format!("oci:{}:t", out.display()),
    ]);
    assert!(converted.status.success());
    let record = tmp.path().join("record.txt");
    let mnt = tmp.path().join("mnt");
    let served = Served::start_with(
        &["--record", record.to_str().unwrap()],
        &format!("oci:{}:t", out.display()),
        &mnt,
        &tmp.path().join("cache"),
    );
    let app_file = walkdir_files(&mnt.join("app"))
        .into_iter()
        .find(|(_, len)| *len > 0)
        .expect("a file under app/")
        .0;
    let order = [
        "etc/passwd".to_string(),
        format!("app/{app_file}"),
        "etc/hostname".into(),
    ];
    for path in order.iter().chain(order.iter()) {
        std::fs::read(mnt.join(path)).unwrap();
    }
    served.stop();
    let lines: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = order.iter().map(|p| format!("/{p}")).collect();
    assert_eq!(
        lines, want,
        "the record lists first reads, in order, once each"
    );

    let again = tmp.path().join("again");
    let converted = lazypull(&[
        "convert".to_string(),
        "--json".into(),
        "--prefetch-list".into(),
        record.display().to_string(),
        format!("oci:{}:t", image.dir.display()),
        format!("oci:{}:t", again.display()),
    ]);
    assert!(converted.status.success());
    let report: serde_json::Value = serde_json::from_slice(&converted.stdout).unwrap();
    let prefetched = report["manifests"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["prefetchSize"].as_u64().unwrap() > 0)
        .count();
    assert!(
        prefetched >= 2,
        "layers holding recorded files get a prefetch region: {report}"
    );
}

/// A large file read in part is recorded with the ranges read; converting with that list
/// keeps it out of eStargz's prefetch region and puts only the chunks read in EROFS's, and the
/// chunk-based EROFS file reads back whole and verified through a lazy mount.
#[test]
fn record_keeps_ranges_of_partly_read_files() {
    use std::os::unix::fs::FileExt;
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let image = sample::write_sample_image(&tmp.path().join("src"), "t").unwrap();
    let src = format!("oci:{}:t", image.dir.display());
    let convert = |format: &str, list: Option<&Path>, out: &str| -> serde_json::Value {
        let mut args = vec!["convert".to_string(), "--json".into(), "--format".into()];
        args.push(format.into());
        if let Some(l) = list {
            args.extend(["--prefetch-list".to_string(), l.display().to_string()]);
        }
        args.extend([
            src.clone(),
            format!("oci:{}:t", tmp.path().join(out).display()),
        ]);
        let converted = lazypull(&args);
        assert!(converted.status.success(), "{converted:?}");
        serde_json::from_slice(&converted.stdout).unwrap()
    };
    convert("erofs", None, "plain");
    let record = tmp.path().join("record.txt");
    let mnt = tmp.path().join("mnt");
    // The reference bytes, read whole from a mount that does not record.
    let served = Served::start_with(
        &[],
        &format!("oci:{}:t", tmp.path().join("plain").display()),
        &mnt,
        &tmp.path().join("cache"),
    );
    let server = std::fs::read(mnt.join("app/server")).unwrap();
    let size = server.len() as u64;
    served.stop();
    let served = Served::start_with(
        &["--record", record.to_str().unwrap()],
        &format!("oci:{}:t", tmp.path().join("plain").display()),
        &mnt,
        &tmp.path().join("cache2"),
    );
    std::fs::read(mnt.join("etc/passwd")).unwrap();
    let mut part = vec![0u8; 8192];
    let f = std::fs::File::open(mnt.join("app/server")).unwrap();
    f.read_exact_at(&mut part, 1 << 20).unwrap();
    drop(f);
    served.stop();
    let text = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], "/etc/passwd", "read whole: no ranges");
    let (path, ranges) = lines[1].split_once('\t').expect("ranges after a TAB");
    assert_eq!(path, "/app/server");
    let list = lazypull_converter::prefetch::PrefetchList::parse(&text).unwrap();
    let read = list.entries()[1].ranges.as_ref().unwrap();
    assert!(
        read.iter()
            .any(|(s, e)| s <= 1 << 20 && e >= (1 << 20) + 8192),
        "the range read is recorded: {ranges}"
    );
    assert!(read.covered() < size / 2, "{ranges} of {size} bytes");

    let layer_prefetch = |report: &serde_json::Value| -> Vec<u64> {
        report["manifests"][0]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["prefetchSize"].as_u64().unwrap())
            .collect()
    };
    let app = |report: &serde_json::Value| {
        // The app layer is the one that holds app/server: the second of three.
        layer_prefetch(report)[1]
    };
    let erofs = convert("erofs", Some(&record), "erofs");
    let erofs_plain = convert("erofs", None, "erofs-plain");
    assert!(
        app(&erofs) > app(&erofs_plain) && app(&erofs) < app(&erofs_plain) + size / 2,
        "EROFS prefetch region holds the chunks read, not the file: {} vs {} without a list",
        app(&erofs),
        app(&erofs_plain)
    );
    let estargz = convert("estargz", Some(&record), "estargz");
    assert!(
        app(&estargz) < size / 2,
        "eStargz leaves the sparsely read file out: {}",
        app(&estargz)
    );
    let served = Served::start_with(
        &[],
        &format!("oci:{}:t", tmp.path().join("erofs").display()),
        &mnt,
        &tmp.path().join("cache3"),
    );
    let back = std::fs::read(mnt.join("app/server")).unwrap();
    served.stop();
    assert!(back == server, "the chunk-based file reads back whole");
    assert!(server[1 << 20..(1 << 20) + 8192] == part[..]);
}

/// With a prefetch list, mounting fetches the prefetch region in one request, so the first
/// reads of the listed files need no request at all; other files still fetch on demand.
#[test]
fn prefetched_files_read_without_a_request() {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, "/etc/passwd\n/etc/hostname\n").unwrap();
    let (_, out, report) = convert_sample(tmp.path(), &["--prefetch-list", list.to_str().unwrap()]);
    // The base layer holds both listed files.
    let layer = &report["manifests"][0]["layers"][0];
    assert!(layer["prefetchSize"].as_u64().unwrap() > 0, "{layer}");
    let blob = layer_blob(&out, layer);
    let server = RangeServer::start(HashMap::from([("base".to_string(), blob)])).unwrap();
    let mnt = tmp.path().join("mnt");
    let served = Served::start_with(
        &[
            "--no-background-fetch",
            "--toc-digest",
            layer["tocDigest"].as_str().unwrap(),
        ],
        &server.url("base"),
        &mnt,
        &tmp.path().join("cache"),
    );
    let after_mount = server.requests();
    for path in ["etc/passwd", "etc/hostname"] {
        assert!(!std::fs::read(mnt.join(path)).unwrap().is_empty());
    }
    let after_listed = server.requests();
    assert_eq!(
        after_listed, after_mount,
        "reading prefetched files made requests"
    );
    let other = walkdir_files(&mnt)
        .into_iter()
        .find(|(p, len)| *len > 0 && !p.starts_with("etc/"))
        .expect("a file outside etc/")
        .0;
    std::fs::read(mnt.join(&other)).unwrap();
    let after_other = server.requests();
    served.stop();
    assert!(
        after_other > after_listed,
        "reading `{other}`, not prefetched, made no request: is the counter alive?"
    );
}

/// The background fetch brings the whole layer into the cache after mounting: once it is done,
/// every file reads with the server gone.
#[test]
fn background_fetch_makes_the_layer_local() {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let (_, out, report) = convert_sample(tmp.path(), &[]);
    // The app layer: a medium file in several chunks, symlinks, a hardlink.
    let layer = &report["manifests"][0]["layers"][1];
    let blob = layer_blob(&out, layer);
    let blob_size = std::fs::metadata(&blob).unwrap().len();
    let server = RangeServer::start(HashMap::from([("app".to_string(), blob)])).unwrap();
    let mnt = tmp.path().join("mnt");
    let served = Served::start_with(
        &[
            "--background-rate",
            "0",
            "--toc-digest",
            layer["tocDigest"].as_str().unwrap(),
        ],
        &server.url("app"),
        &mnt,
        &tmp.path().join("cache"),
    );
    // Wait until the background fetch has brought (nearly) the whole blob and gone quiet.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (server.body_bytes(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = server.body_bytes();
        if now != last.0 {
            last = (now, Instant::now());
        } else if now * 10 >= blob_size * 9 && last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background fetch stalled at {now} of {blob_size} bytes"
        );
    }
    drop(server);
    let bytes = read_everything(&mnt);
    assert!(bytes > 0);
    // The stats report says so too: every chunk of the layer passed, the walk done.
    let stats = final_stats(&served.stop());
    let progress = &stats["layers"][0];
    assert_eq!(progress["background"]["state"], "done", "{stats}");
    assert!(progress["chunks"].as_u64().unwrap() > 1, "{stats}");
    assert_eq!(
        progress["background"]["chunks"], progress["chunks"],
        "{stats}"
    );
    assert!(
        progress["background"]["bytes"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

/// A server that goes away mid-mount makes reads of chunks not yet local fail with EIO within
/// the fetch timeout (never hang), and reads work again when it is back.
#[test]
fn server_outage_gives_eio_then_recovers() {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let (_, out, report) = convert_sample(tmp.path(), &[]);
    let layer = &report["manifests"][0]["layers"][0];
    let blob = layer_blob(&out, layer);
    let files = HashMap::from([("base".to_string(), blob)]);
    let server = RangeServer::start(files.clone()).unwrap();
    let port = server.port();
    let mnt = tmp.path().join("mnt");
    let served = Served::start_with(
        &[
            "--no-background-fetch",
            "--fetch-timeout",
            "1",
            "--fetch-retries",
            "1",
            "--toc-digest",
            layer["tocDigest"].as_str().unwrap(),
        ],
        &server.url("base"),
        &mnt,
        &tmp.path().join("cache"),
    );
    let files_in_layer: Vec<String> = walkdir_files(&mnt)
        .into_iter()
        .filter(|(_, len)| *len > 0)
        .map(|(p, _)| p)
        .collect();
    assert!(files_in_layer.len() >= 2);
    drop(server);
    let started = Instant::now();
    let err = std::fs::read(mnt.join(&files_in_layer[0])).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the failed read took {:?}",
        started.elapsed()
    );
    let _back = RangeServer::start_on(port, files, Throttle::default()).unwrap();
    let data = std::fs::read(mnt.join(&files_in_layer[0])).unwrap();
    assert!(!data.is_empty());
    served.stop();
}

/// EIO, without a libc dependency in the tests.
fn libc_eio() -> i32 {
    5
}

/// A slow fetch holds no FUSE thread: while more reads than the server has FUSE threads wait on
/// a server turned slow, lookups, xattr listings and reads of cached chunks are answered, and
/// the slow reads still complete with the right bytes.
#[test]
fn slow_fetches_do_not_block_metadata_or_cached_reads() {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let (image, out, report) = convert_sample(tmp.path(), &[]);
    let layer = &report["manifests"][0]["layers"][0];
    let server = RangeServer::start(HashMap::from([(
        "base".to_string(),
        layer_blob(&out, layer),
    )]))
    .unwrap();
    let mnt = tmp.path().join("mnt");
    let served = Served::start_with(
        &[
            "--no-background-fetch",
            "--fetch-timeout",
            "60",
            "--toc-digest",
            layer["tocDigest"].as_str().unwrap(),
        ],
        &server.url("base"),
        &mnt,
        &tmp.path().join("cache"),
    );
    // Distinct non-empty files: one read now (then local), eight left for the slow server.
    let originals = sample_tars(&image);
    let mut seen = BTreeSet::new();
    let files: Vec<(String, Vec<u8>)> = walkdir_files(&mnt)
        .into_iter()
        .filter(|(_, len)| (1..=65536).contains(len))
        .map(|(p, _)| {
            let data = tar_file(&originals[0], &p);
            (p, data)
        })
        // Hardlinks carry no data in the tar.
        .filter(|(_, d)| !d.is_empty() && seen.insert(d.clone()))
        .take(9)
        .collect();
    assert_eq!(files.len(), 9, "the base layer has 9 distinct small files");
    let cached = mnt.join(&files[0].0);
    assert_eq!(std::fs::read(&cached).unwrap(), files[0].1);

    server.set_delay(Duration::from_secs(4));
    let before = server.requests();
    let slow: Vec<_> = files[1..]
        .iter()
        .map(|(p, want)| {
            let (path, want) = (mnt.join(p), want.clone());
            std::thread::spawn(move || {
                let got = std::fs::read(&path);
                (Instant::now(), got.map(|g| g == want))
            })
        })
        .collect();
    // Wait until the slow reads have reached the server (it counts a request on arrival).
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.requests() < before + 3 {
        assert!(
            Instant::now() < deadline,
            "the slow reads never reached the server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Lookups of names never asked (the kernel has not cached them), xattr listings (never
    // cached by the kernel), and a cached file whose pages are dropped: all reach the server.
    for i in 0..20 {
        assert!(!mnt.join(format!("missing-{i}")).exists());
    }
    xattr::list(&cached).unwrap().for_each(drop);
    let dropped = Command::new("dd")
        .arg(format!("if={}", cached.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .unwrap();
    assert!(dropped.success());
    assert_eq!(std::fs::read(&cached).unwrap(), files[0].1);
    let answered = Instant::now();
    for t in slow {
        let (done, result) = t.join().unwrap();
        assert!(matches!(result, Ok(true)), "a slow read failed: {result:?}");
        assert!(
            done > answered,
            "a slow read finished before the metadata and cached reads were answered: they \
             waited for it"
        );
    }
    served.stop();
}

/// The contents of regular file `path` in an uncompressed layer tar.
fn tar_file(layer: &[u8], path: &str) -> Vec<u8> {
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.trim_start_matches("./") == path.trim_start_matches("./") {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            return data;
        }
    }
    panic!("{path} not in the layer tar");
}

/// Files under the mounts' directories of the cache's `materialised/`, and those directories.
fn materialised_in(cache: &Path) -> (usize, usize) {
    let Ok(dirs) = std::fs::read_dir(cache.join("materialised")) else {
        return (0, 0);
    };
    let (mut n_dirs, mut files) = (0, 0);
    for d in dirs {
        let d = d.unwrap().path();
        if d.is_dir() {
            n_dirs += 1;
            files += std::fs::read_dir(&d)
                .unwrap()
                .filter(|f| {
                    !f.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with('.')
                })
                .count();
        }
    }
    (n_dirs, files)
}

/// A single-layer mount reopens the files it has read in full through FUSE passthrough: the
/// same bytes, counted in the stats report, the copies gone after unmount; `--no-passthrough`
/// makes and reports none.
#[test]
fn passthrough_reopens_files_read_in_full_and_can_be_turned_off() {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let (_, out, report) = convert_sample(tmp.path(), &[]);
    let layer = &report["manifests"][0]["layers"][1];
    let blob = layer_blob(&out, layer);
    let server = RangeServer::start(HashMap::from([("app".to_string(), blob)])).unwrap();
    let toc = layer["tocDigest"].as_str().unwrap();
    let mnt = tmp.path().join("mnt");
    for off in [false, true] {
        let cache = tmp.path().join(format!("cache-{off}"));
        let mut extra = vec!["--no-background-fetch", "--toc-digest", toc];
        if off {
            extra.push("--no-passthrough");
        }
        let served = Served::start_with(&extra, &server.url("app"), &mnt, &cache);
        let first = snapshot(&mnt);
        let bytes = read_everything(&mnt);
        assert!(bytes > 0);
        if !off {
            // Every non-empty regular file was read to its end: wait for the copies.
            let want = first
                .iter()
                .filter(|(p, n)| {
                    n.kind == 'f' && n.size > 0 && n.hardlink_group.as_ref().is_none_or(|g| g == *p)
                })
                .count();
            let deadline = Instant::now() + Duration::from_secs(20);
            while materialised_in(&cache).1 < want {
                assert!(Instant::now() < deadline, "{want} files not materialised");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        assert_eq!(
            snapshot(&mnt),
            first,
            "off={off}: the reopened files differ"
        );
        let stats = final_stats(&served.stop());
        let p = &stats["passthrough"];
        if off {
            assert!(p.is_null(), "{stats}");
            assert_eq!(materialised_in(&cache), (0, 0));
        } else {
            assert_eq!(p["refused"], false, "{stats}");
            assert!(p["opens"].as_u64().unwrap() > 0, "{stats}");
            assert!(p["files"].as_u64().unwrap() > 0, "{stats}");
            assert!(p["bytes"].as_u64().unwrap() > 0, "{stats}");
            assert_eq!(materialised_in(&cache), (0, 0), "left after unmount");
        }
    }
}

//! Reliability of lazy mounts through the real binary and real FUSE: a server that misbehaves
//! in every way `lazypull-faultserver` knows (each read returns the source bytes or fails with
//! EIO within a bound derived from the fetch timeout, never wrong bytes, never a hung request,
//! and reads succeed again once the server heals); `kill -9` during background fetch and cache
//! writes (no stale mount, no corrupt chunk served, the cache stays usable); and, in [`load`],
//! 64 random readers over a realistic layer with 1% injected faults.

mod load;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lazypull_converter::sample;
use lazypull_faultserver::{Fault, Server};

use crate::mount::{final_stats, fuse_support, Served};
use crate::util::containerd::{mounts_under, unmount_under};
use crate::util::tarbuild::LayerTar;
use crate::util::{convert_ok, gzip_layout, lazypull, oci_ref, skip_unless};

/// Flags of every mount here: small fetch timeouts so that a failing read fails fast (the
/// numbers are `TIMEOUT_S` and `RETRIES`), and no prefetch, background fetch or passthrough, so
/// that reads are what reaches the server.
const QUICK: [&str; 7] = [
    "--fetch-timeout",
    "2",
    "--fetch-retries",
    "2",
    "--no-prefetch",
    "--no-background-fetch",
    "--no-passthrough",
];
const TIMEOUT_S: u64 = 2;
const RETRIES: u64 = 2;

/// The longest one chunk fetch may take before it fails: every attempt times out, and between
/// attempts the fetcher waits at most its backoff cap (5 s, also the cap on Retry-After).
fn fetch_bound() -> Duration {
    Duration::from_secs((RETRIES + 1) * TIMEOUT_S + RETRIES * 5)
}

/// Deterministic bytes: incompressible when `noisy`, else text-like.
fn payload(len: usize, seed: u64, noisy: bool) -> Vec<u8> {
    if noisy {
        return sample::random_bytes(seed, len);
    }
    let mut rng = sample::XorShift::new(seed);
    (0..len)
        .map(|i| b"lazy pull reliability\n"[(i + rng.below(3) as usize) % 22])
        .collect()
}

/// The files of the test layer: several chunks each (the layer is converted with 256 KiB
/// chunks), compressible and not, and a small one.
fn layer_files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("data/small.txt".into(), payload(3000, 1, false)),
        ("data/noise.bin".into(), payload(1_300_000, 2, true)),
        ("data/text.txt".into(), payload(900_000, 3, false)),
        ("data/more/noise2.bin".into(), payload(600_000, 4, true)),
    ]
}

/// An image of `layers` (each a list of files; directories are added) converted to `format`
/// with 256 KiB chunks, as the OCI layout `root/img`, tag `t`.
fn converted_image(root: &Path, format: &str, layers: &[&[(String, Vec<u8>)]]) {
    let tars: Vec<Vec<u8>> = layers
        .iter()
        .map(|files| {
            let mut tar = LayerTar::new();
            tar.dir("data", 0o755, 0).dir("data/more", 0o755, 0);
            for (path, data) in files.iter() {
                tar.file(path, data, 0o644, 0);
            }
            tar.finish()
        })
        .collect();
    let named: Vec<(&str, &[u8])> = tars.iter().map(|t| ("reliability", &t[..])).collect();
    let src = root.join("src");
    gzip_layout(&src, "t", &named);
    convert_ok(&[
        "--format".to_string(),
        format.to_string(),
        "--chunk-size".into(),
        "262144".into(),
        oci_ref(&src, "t"),
        oci_ref(&root.join("img"), "t"),
    ]);
    std::fs::remove_dir_all(&src).unwrap();
}

/// What one bounded read found.
#[derive(Debug, PartialEq)]
enum Outcome {
    Equal,
    Eio,
}

/// Read `path` whole in a thread; panic if it takes longer than `deadline` (a hung read), if it
/// returns bytes other than `want`, or if it fails other than with EIO.
fn bounded_read(path: &Path, want: &[u8], deadline: Duration) -> (Outcome, Duration) {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    let start = Instant::now();
    // Detached on purpose: if it hangs the test fails, and the mount's cleanup aborts it.
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(&p));
    });
    let got = rx
        .recv_timeout(deadline)
        .unwrap_or_else(|_| panic!("{}: read hung for more than {deadline:?}", path.display()));
    let took = start.elapsed();
    match got {
        Ok(bytes) => {
            assert!(
                bytes == want,
                "{}: WRONG BYTES ({} bytes read, {} expected)",
                path.display(),
                bytes.len(),
                want.len()
            );
            (Outcome::Equal, took)
        }
        Err(e) if e.raw_os_error() == Some(libc::EIO) => (Outcome::Eio, took),
        Err(e) => panic!("{}: failed other than with EIO: {e}", path.display()),
    }
}

/// For each fault kind, a fresh mount with a cold cache: one faulty answer is absorbed (the
/// read returns the source bytes); while the server misbehaves on every request, each file
/// reads back equal or fails with EIO in bounded time; once it heals, every file reads back
/// equal from the same mount.
fn every_fault_gives_source_bytes_or_eio(format: &str) {
    skip_unless!(fuse_support().is_ok(), "{}", fuse_support().unwrap_err());
    let tmp = Scratch::new();
    let files = layer_files();
    converted_image(tmp.path(), format, &[&files]);
    let server = Server::serve_dir(tmp.path()).unwrap();
    let source = format!("oci:{}:t", server.url("/img"));
    // A read syscall may need two FUSE requests that fail one after the other (the kernel
    // retries a failed readahead page synchronously); a little slack for scheduling.
    let deadline = 2 * fetch_bound() + Duration::from_secs(5);
    let mut table = Vec::new();
    for (i, fault) in Fault::ALL.into_iter().enumerate() {
        let mnt = tmp.path().join(format!("mnt{i}"));
        let cache = tmp.path().join(format!("cache{i}"));
        let served = Served::start_with(&QUICK, &source, &mnt, &cache);
        // One fault, then a healthy server: retried (or, for bad bytes, fetched again).
        let (path, data) = &files[1];
        let base = server.injected();
        server.push(&[fault]);
        let (outcome, took) = bounded_read(&mnt.join(path), data, deadline);
        assert_eq!(outcome, Outcome::Equal, "{fault:?} once: {path}");
        assert_eq!(
            server.injected() - base,
            1,
            "{fault:?} once: no request met it"
        );
        let mut outcomes = vec![format!("once {path}: {outcome:?} in {took:.1?}")];
        // Every request faulty.
        server.always(Some(fault));
        let before = server.injected();
        for (path, data) in files.iter().filter(|(p, _)| p != path) {
            let (outcome, took) = bounded_read(&mnt.join(path), data, deadline);
            outcomes.push(format!("{path}: {outcome:?} in {took:.1?}"));
        }
        let injected = server.injected() - before;
        server.heal();
        // Recovery: the same mount, the same files.
        for (path, data) in &files {
            let (outcome, _) = bounded_read(&mnt.join(path), data, deadline);
            assert_eq!(outcome, Outcome::Equal, "{fault:?}: {path} after healing");
        }
        let stats = final_stats(&served.stop());
        assert!(injected > 0, "{fault:?}: no request met the fault");
        table.push(format!(
            "{format} {fault:?}: {injected} faults injected, {}; fetch {}, cache mismatches {}",
            outcomes.join(", "),
            stats["fetch"],
            stats["cache"]["fetchedMismatches"]
        ));
    }
    eprintln!("{}", table.join("\n"));
}

#[test]
fn estargz_reads_are_source_bytes_or_eio_under_every_fault() {
    every_fault_gives_source_bytes_or_eio("estargz");
}

#[test]
fn erofs_reads_are_source_bytes_or_eio_under_every_fault() {
    every_fault_gives_source_bytes_or_eio("erofs");
}

/// Whether `path` is in the mount table.
fn in_mount_table(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*path)))
}

/// A temporary directory whose mounts are detached when it goes, also when a test fails
/// after a `kill -9` left dead mounts that nobody else would clear.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        Scratch(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_under(self.0.path());
    }
}

/// A `lazypull mount` on a mountpoint that may still carry a dead mount: started once the
/// new mount answers (the dead one is in the mount table too, so `Served` cannot tell).
fn start_over_dead(flags: &[&str], source: &str, mnt: &Path, cache: &Path) -> Served {
    let served = Served::start_with(flags, source, mnt, cache);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Between clearing the dead mount and mounting anew, the mountpoint is a bare directory:
    // wait for a live mount with the image's root in it.
    let serving = || {
        !lazypull_fuse::fs::is_disconnected(mnt)
            && std::fs::read_dir(mnt).is_ok_and(|mut d| d.next().is_some())
    };
    while !serving() {
        assert!(Instant::now() < deadline, "{} still dead", mnt.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    served
}

/// Every chunk file of a cache directory.
fn cached_chunks(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(fans) = std::fs::read_dir(cache.join("chunks")) else {
        return out;
    };
    for fan in fans.flatten() {
        for f in std::fs::read_dir(fan.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

/// `kill -9` while the background fetch writes the cache; the next mount on the same mountpoint
/// and cache clears the dead mount and serves every file equal to the source; chunk files
/// corrupted between runs are detected, dropped and fetched again.
fn kill_during_background_fetch(format: &str) {
    skip_unless!(fuse_support().is_ok(), "{}", fuse_support().unwrap_err());
    let tmp = Scratch::new();
    // Two layers, so that a dead overlay over dead FUSE layers must be cleared too.
    let files = layer_files();
    converted_image(tmp.path(), format, &[&files[..2], &files[2..]]);
    let server = Server::serve_dir(tmp.path()).unwrap();
    let source = format!("oci:{}:t", server.url("/img"));
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    // Slow background fetch (64 KiB/s over ~1.5 MB of chunks): mid-way when killed.
    let slow = ["--background-rate", "65536", "--no-passthrough"];
    let served = Served::start_with(&slow, &source, &mnt, &cache);
    let pid = served.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cached_chunks(&cache).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the background fetch wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    served.kill();
    let written = cached_chunks(&cache).len();
    eprintln!("{format}: killed lazypull mount (pid {pid}) after {written} chunks were cached");
    // The kernel keeps the dead mounts: they answer ENOTCONN until someone detaches them.
    assert!(in_mount_table(&mnt), "no dead mount left to clear?");
    let err = std::fs::read_dir(&mnt).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    assert!(lazypull_fuse::fs::is_disconnected(&mnt));

    // Restart on the same mountpoint and cache: it clears the dead mounts and serves.
    let served = start_over_dead(&QUICK, &source, &mnt, &cache);
    for (path, data) in &files {
        let got = std::fs::read(mnt.join(path)).unwrap();
        assert!(got == *data, "{path} after the restart");
    }
    served.stop();
    // Whatever temp file the killed writer left was removed when the cache was opened again.
    let temps: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().collect();
    assert!(temps.is_empty(), "{temps:?}");
    assert_eq!(mounts_under(tmp.path()), Vec::<PathBuf>::new());

    // Corrupt what the cache holds: a flipped byte, a truncated file, an emptied file.
    let chunks = cached_chunks(&cache);
    assert!(chunks.len() >= 3, "only {} chunks cached", chunks.len());
    flip_middle_byte(&chunks[0]);
    let len = std::fs::metadata(&chunks[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&chunks[1])
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::write(&chunks[2], b"").unwrap();
    let gets = server.gets();
    let served = Served::start_with(&QUICK, &source, &mnt, &cache);
    for (path, data) in &files {
        let got = std::fs::read(mnt.join(path)).unwrap();
        assert!(got == *data, "{path} with corrupted cache entries");
    }
    let stats = final_stats(&served.stop());
    assert_eq!(stats["cache"]["corruptDropped"], 3, "{stats}");
    assert!(
        server.gets() > gets,
        "the corrupt chunks were not fetched again"
    );
    // The cache is whole again: another mount needs no chunk from the server.
    let gets = server.gets();
    let served = Served::start_with(&QUICK, &source, &mnt, &cache);
    for (path, data) in &files {
        assert!(std::fs::read(mnt.join(path)).unwrap() == *data, "{path}");
    }
    let stats = final_stats(&served.stop());
    assert_eq!(stats["cache"]["corruptDropped"], 0, "{stats}");
    // Opening the image reads its index and manifest again; chunks all come from the cache.
    assert_eq!(stats["cache"]["fetches"], 0, "{stats}");
    eprintln!(
        "{format}: {} GETs for the warm remount",
        server.gets() - gets
    );
    assert_eq!(mounts_under(tmp.path()), Vec::<PathBuf>::new());
}

fn flip_middle_byte(path: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[!b[0]]).unwrap();
}

#[test]
fn estargz_kill_during_background_fetch_then_restart() {
    kill_during_background_fetch("estargz");
}

#[test]
fn erofs_kill_during_background_fetch_then_restart() {
    kill_during_background_fetch("erofs");
}

/// `lazypull umount` detaches the dead mount a killed server left.
#[test]
fn umount_clears_the_mount_of_a_killed_server() {
    skip_unless!(fuse_support().is_ok(), "{}", fuse_support().unwrap_err());
    let tmp = Scratch::new();
    let files = layer_files();
    converted_image(tmp.path(), "estargz", &[&files[..2], &files[2..]]);
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    let source = oci_ref(&tmp.path().join("img"), "t");
    Served::start_with(&QUICK, &source, &mnt, &cache).kill();
    assert!(in_mount_table(&mnt));
    let out = lazypull(&["umount".to_string(), mnt.display().to_string()]);
    assert!(
        out.status.success(),
        "lazypull umount of a dead mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mounts_under(tmp.path()), Vec::<PathBuf>::new());
}

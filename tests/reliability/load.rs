//! Load: 64 reader threads doing random reads (random offsets, 1 B to 256 KiB) over the files of
//! a lazily mounted realistic layer (the tree `realistic` archives, a few hundred MB), for 60 s
//! per format, while the server fails 1% of its answers with a random fault. Every read is
//! compared with the source bytes and bounded in time. Latencies, reads/s, EIOs and the mount's
//! peak RSS are printed (docs/reliability.md records them).

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazypull_converter::sample::XorShift as Rng;
use lazypull_faultserver::{Fault, FaultMix, Server};

use super::{fetch_bound, QUICK};
use crate::mount::{final_stats, fuse_support, Served};
use crate::util::{convert_ok, gzip_layout, oci_ref, skip_unless};

const READERS: usize = 64;
const MAX_READ: u64 = 256 << 10;
const FAULT_RATE: f64 = 0.01;
/// 16 MiB of chunks on disk and 16 MiB in memory: less than either format's chunks of the layer
/// (~300 MB uncompressed for eStargz, ~75 MB of zstd frames for EROFS).
const CACHE_SIZE: &str = "16777216";

/// Seconds per format; `LAZYPULL_LOAD_SECS` shortens it for a quick local run.
fn duration() -> Duration {
    let secs = std::env::var("LAZYPULL_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// A regular file of the layer: its path and where its bytes are in the tar.
struct SourceFile {
    path: String,
    offset: usize,
    size: u64,
}

fn regular_files(tar: &[u8]) -> Vec<SourceFile> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.header().entry_type() == tar::EntryType::Regular && entry.size() > 0 {
            out.push(SourceFile {
                path: entry.path().unwrap().to_string_lossy().into_owned(),
                offset: entry.raw_file_position() as usize,
                size: entry.size(),
            });
        }
    }
    out
}

/// What the readers found.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    bytes: u64,
    eio: u64,
    wrong: Vec<String>,
    other_errors: Vec<String>,
}

/// One reader: random reads until `stop`, each compared with the tar. `busy_since` holds the
/// start of the read in flight (ms since `t0`, plus one), 0 when idle, for the watchdog.
fn reader(
    seed: u64,
    mnt: &Path,
    tar: &[u8],
    files: &[SourceFile],
    stop: &AtomicBool,
    t0: Instant,
    busy_since: &AtomicU64,
) -> Tally {
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut buf = vec![0u8; MAX_READ as usize];
    while !stop.load(Ordering::Relaxed) {
        let f = &files[rng.below(files.len() as u64) as usize];
        let off = rng.below(f.size);
        let len = (1 + rng.below(MAX_READ)).min(f.size - off) as usize;
        let start = Instant::now();
        busy_since.store(t0.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let result = std::fs::File::open(mnt.join(&f.path)).and_then(|file| {
            let mut done = 0;
            while done < len {
                match file.read_at(&mut buf[done..len], off + done as u64)? {
                    0 => break,
                    n => done += n,
                }
            }
            // Drop the kernel's copy so that later reads of these pages reach the mount again.
            // SAFETY: the descriptor is open for the duration of the call; no memory is passed.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            Ok(done)
        });
        busy_since.store(0, Ordering::Relaxed);
        tally.latencies_us.push(start.elapsed().as_micros() as u64);
        match result {
            Ok(done) => {
                let want = &tar[f.offset + off as usize..][..len];
                if done != len || buf[..len] != *want {
                    tally
                        .wrong
                        .push(format!("{} at {off}+{len} (got {done})", f.path));
                }
                tally.bytes += done as u64;
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => tally.eio += 1,
            Err(e) => tally.other_errors.push(format!("{}: {e}", f.path)),
        }
    }
    tally
}

/// Peak resident set of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run_load(format: &str, work: &Path, tar: &Arc<Vec<u8>>, files: &Arc<Vec<SourceFile>>) {
    // Only the converted image is served (the server holds what it serves in memory).
    let img = work.join("served").join(format!("img-{format}"));
    let src = work.join("src");
    convert_ok(&[
        "--format".to_string(),
        format.to_string(),
        oci_ref(&src, "t"),
        oci_ref(&img, "t"),
    ]);
    let server = Server::serve_dir(&work.join("served")).unwrap();
    let source = format!("oci:{}:t", server.url(&format!("/img-{format}")));
    let (mnt, cache) = (work.join("mnt"), work.join(format!("cache-{format}")));
    // A disk cache smaller than the layer: evicted chunks are fetched again, so the server
    // (and its faults) keep being asked for the whole run.
    let mut flags = QUICK.to_vec();
    flags.extend([
        "--cache-size",
        CACHE_SIZE,
        "--cache-memory-size",
        CACHE_SIZE,
    ]);
    let served = Served::start_with(&flags, &source, &mnt, &cache);
    let pid = served.pid();
    server.random(Some(FaultMix {
        rate: FAULT_RATE,
        kinds: Fault::ALL.to_vec(),
        seed: 0x10ad,
    }));
    let (gets0, injected0) = (server.gets(), server.injected());

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let busy: Arc<Vec<AtomicU64>> = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..READERS)
        .map(|i| {
            let (stop, busy, tar, files) = (stop.clone(), busy.clone(), tar.clone(), files.clone());
            let mnt = mnt.clone();
            std::thread::spawn(move || {
                reader(i as u64 + 1, &mnt, &tar, &files, &stop, t0, &busy[i])
            })
        })
        .collect();
    // The watchdog: no read may stay in flight longer than two failing fetches and slack.
    let bound = 2 * fetch_bound() + Duration::from_secs(5);
    let mut hung = None;
    while t0.elapsed() < duration() && hung.is_none() {
        std::thread::sleep(Duration::from_millis(100));
        let now = t0.elapsed().as_millis() as u64 + 1;
        hung = busy
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .find(|&since| since != 0 && now.saturating_sub(since) > bound.as_millis() as u64);
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let join_deadline = Instant::now() + bound;
    while threads.iter().any(|t| !t.is_finished()) && hung.is_none() {
        if Instant::now() > join_deadline {
            hung = Some(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        hung.is_none(),
        "{format}: a read hung for more than {bound:?}"
    );
    let (gets, injected) = (server.gets() - gets0, server.injected() - injected0);
    server.heal();
    let rss = peak_rss_kib(pid);

    let mut all = Tally::default();
    for t in threads {
        let t = t.join().unwrap();
        all.latencies_us.extend(t.latencies_us);
        all.bytes += t.bytes;
        all.eio += t.eio;
        all.wrong.extend(t.wrong);
        all.other_errors.extend(t.other_errors);
    }
    let stats = final_stats(&served.stop());
    all.latencies_us.sort_unstable();
    let reads = all.latencies_us.len();
    let ms = |us: u64| us as f64 / 1000.0;
    eprintln!(
        "LOAD {format}: {READERS} readers for {elapsed:.1?}: {reads} reads ({:.0}/s, {} MB), \
         p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {gets} GETs, {injected} faults injected, \
         {} EIO; fetch {}; cache verification failures {}; mount peak RSS {} MiB",
        reads as f64 / elapsed.as_secs_f64(),
        all.bytes >> 20,
        ms(percentile(&all.latencies_us, 0.5)),
        ms(percentile(&all.latencies_us, 0.99)),
        ms(*all.latencies_us.last().unwrap()),
        all.eio,
        stats["fetch"],
        stats["cache"]["verificationFailures"],
        rss >> 10,
    );
    assert!(
        all.wrong.is_empty(),
        "{format}: WRONG BYTES: {:?}",
        all.wrong
    );
    assert!(
        all.other_errors.is_empty(),
        "{format}: errors other than EIO: {:?}",
        &all.other_errors[..all.other_errors.len().min(10)]
    );
    assert!(
        injected > 0,
        "{format}: no fault was injected in {gets} GETs"
    );
    // An EIO is a fetch that failed for good; the mount counts those.
    let failures = stats["fetch"]["failures"].as_u64().unwrap();
    assert!(
        all.eio <= failures * READERS as u64,
        "{format}: {} EIOs but only {failures} failed fetches",
        all.eio
    );
    assert!(reads > 1000, "{format}: only {reads} reads in {elapsed:?}");
    std::fs::remove_dir_all(&img).unwrap();
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn random_readers_under_one_percent_faults_get_source_bytes_or_eio() {
    skip_unless!(fuse_support().is_ok(), "{}", fuse_support().unwrap_err());
    let work = tempfile::tempdir().unwrap();
    let tar = crate::realistic::realistic_tar(work.path());
    gzip_layout(&work.path().join("src"), "t", &[("realistic tree", &tar)]);
    let files = Arc::new(regular_files(&tar));
    let tar = Arc::new(tar);
    eprintln!("load: {} regular files in the layer", files.len());
    for format in ["estargz", "erofs"] {
        run_load(format, work.path(), &tar, &files);
    }
}

//! FUSE passthrough of files read in full: real mounts over layers read through a chunk cache.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazypull_converter::FileBlob;

use super::super::{mount, LayerTree, MountHandle, MountOptions, Passthrough, DEFAULT_BUDGET};
use super::mounted::{flip, tar_of};
use super::{can_mount, convert, Blob, Format, FORMATS};
use crate::cache::{CacheOptions, CacheStats, ChunkCache};
use crate::layer::{open_layer, LayerHints, SharedBlob};

/// Deterministic, compressible bytes (so chunks differ and compress).
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 7 == 0 {
                b'a' + (x % 26) as u8
            } else {
                b' '
            }
        })
        .collect()
}

/// The test layer: `big` spans many chunks, the others are small.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("big", content(1 << 20, 1)),
        ("other", content(200 << 10, 2)),
        ("small", content(5000, 3)),
        ("late", content(3000, 4)),
    ]
}

fn layer_tar() -> Vec<u8> {
    let files = files();
    let entries: Vec<(&str, Option<&[u8]>)> = files
        .iter()
        .map(|(n, c)| (*n, Some(c.as_slice())))
        .collect();
    tar_of(&entries)
}

/// The tree of `blob` read through `cache`, as `lazypull mount` opens it.
fn open_cached(blob: &Blob, cache: &Arc<ChunkCache>) -> Arc<dyn LayerTree> {
    let file: SharedBlob = Arc::new(FileBlob::open(&blob.path).unwrap());
    let hints = LayerHints {
        name: blob.path.display().to_string(),
        trusted_digest: blob.toc_digest.or(blob.index.map(|(_, d)| d)),
        ..LayerHints::default()
    };
    open_layer(file, &hints, Some(Arc::clone(cache)))
        .expect("opening the layer")
        .tree
}

/// A layer mounted with passthrough; unmounted on drop.
struct PassMount {
    handle: Option<MountHandle>,
    dir: tempfile::TempDir,
}

impl PassMount {
    fn new(tree: Arc<dyn LayerTree>, pass: &Arc<Passthrough>) -> PassMount {
        let dir = tempfile::tempdir().unwrap();
        let opts = MountOptions {
            passthrough: Some(Arc::clone(pass)),
            ..MountOptions::default()
        };
        let handle = mount(tree, dir.path(), &opts).expect("FUSE mount");
        PassMount {
            handle: Some(handle),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn unmount(mut self) {
        self.handle.take().unwrap().unmount().unwrap();
    }
}

impl Drop for PassMount {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.unmount();
        }
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Drop the page cache: a read then reaches the filesystem (lazypull or the backing file).
fn drop_page_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", "1").expect("writing drop_caches");
}

/// Lookups and fetches of the chunk cache: what a read through the layer changes.
fn cache_reads(s: &CacheStats) -> (u64, u64, u64, u64) {
    (s.memory_hits, s.disk_hits, s.misses, s.fetches)
}

/// The first `len` bytes of `file` through `mmap`.
fn mapped(file: &std::fs::File, len: usize) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: a private read-only mapping of `len` bytes of an open file, copied out and
    // unmapped before returning; nothing else refers to it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let copy = std::slice::from_raw_parts(p as *const u8, len).to_vec();
        libc::munmap(p, len);
        copy
    }
}

/// The regular files under the mounts' directories of `root`.
fn materialised(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(root).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).unwrap() {
                out.push(f.unwrap().path());
            }
        }
    }
    out
}

/// After a file is read once in full, a second open is a passthrough open: the same bytes,
/// read with no chunk-cache lookup and no fetch. The materialised files go at unmount.
#[test]
fn a_file_read_in_full_reopens_through_passthrough() {
    if !can_mount() {
        return;
    }
    let want = files();
    for format in FORMATS {
        let tmp = tempfile::tempdir().unwrap();
        let blob = convert(&layer_tar(), format, tmp.path(), "pass");
        let cache =
            Arc::new(ChunkCache::open(CacheOptions::new(tmp.path().join("c"), 1 << 30)).unwrap());
        let root = tmp.path().join("materialised");
        let pass = Passthrough::new(&root, DEFAULT_BUDGET).unwrap();
        let m = PassMount::new(open_cached(&blob, &cache), &pass);
        let big = &want[0].1;
        assert_eq!(&std::fs::read(m.path("big")).unwrap(), big, "{format:?}");
        wait_for("the materialised file", || pass.stats().files == 1);
        let files = materialised(&root);
        assert_eq!(files.len(), 1, "{format:?}: {files:?}");
        assert_eq!(&std::fs::read(&files[0]).unwrap(), big, "{format:?}");
        assert_eq!(pass.stats().bytes, big.len() as u64);
        assert_eq!(pass.stats().opens, 0);

        drop_page_cache();
        // Opening reads the inode (EROFS metadata comes through the chunk cache); the read
        // after it must not touch the cache at all.
        let mut f = std::fs::File::open(m.path("big")).unwrap();
        assert_eq!(pass.stats().opens, 1, "{format:?}: not a passthrough open");
        let before = cache_reads(&cache.stats());
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut got).unwrap();
        assert_eq!(&got, big, "{format:?}");
        assert_eq!(
            cache_reads(&cache.stats()),
            before,
            "{format:?}: the passthrough read went through the chunk cache"
        );
        drop(f);
        // The same measure sees a read through the layer.
        assert_eq!(std::fs::read(m.path("other")).unwrap(), want[1].1);
        assert_ne!(cache_reads(&cache.stats()), before, "{format:?}");
        // A passthrough open maps the backing file's pages (what the loader does to libraries).
        drop_page_cache();
        let f = std::fs::File::open(m.path("big")).unwrap();
        let opens = pass.stats().opens;
        assert_eq!(opens, 2, "{format:?}");
        assert_eq!(&mapped(&f, big.len()), big, "{format:?}");
        assert!(!pass.stats().refused, "{format:?}");

        m.unmount();
        let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
        assert!(left.is_empty(), "{format:?}: left after unmount: {left:?}");
    }
}

/// The directories of dead mounts (no lock held, or no lock file) are removed when passthrough
/// starts on the same root; a live mount's directory stays.
#[test]
fn leftovers_of_dead_mounts_are_removed_at_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("materialised");
    for dead in ["4242-0", "orphan"] {
        std::fs::create_dir_all(root.join(dead)).unwrap();
        std::fs::write(root.join(dead).join("7"), b"stale bytes").unwrap();
    }
    std::fs::write(root.join("4242-0.lock"), b"").unwrap();
    std::fs::create_dir_all(root.join("live-0")).unwrap();
    std::fs::write(root.join("live-0").join("9"), b"in use").unwrap();
    let held = std::fs::File::create(root.join("live-0.lock")).unwrap();
    // SAFETY: flock on a valid descriptor.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let pass = Passthrough::new(&root, DEFAULT_BUDGET).unwrap();
    assert_eq!(pass.stats().leftovers_removed, 2);
    let mut left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["live-0", "live-0.lock"]);
    // Once its holder is gone, the next start removes it too.
    drop(held);
    let pass = Passthrough::new(&root, DEFAULT_BUDGET).unwrap();
    assert_eq!(pass.stats().leftovers_removed, 1);
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

/// Files are materialised while the budget lasts; the others stay on the chunk cache path.
#[test]
fn the_budget_bounds_materialised_bytes() {
    if !can_mount() {
        return;
    }
    let want = files();
    let tmp = tempfile::tempdir().unwrap();
    let blob = convert(&layer_tar(), Format::Erofs, tmp.path(), "budget");
    let cache =
        Arc::new(ChunkCache::open(CacheOptions::new(tmp.path().join("c"), 1 << 30)).unwrap());
    let root = tmp.path().join("materialised");
    // Room for `big` and a block more: not for `other` as well.
    let budget = want[0].1.len() as u64 + 4096;
    let pass = Passthrough::new(&root, budget).unwrap();
    let m = PassMount::new(open_cached(&blob, &cache), &pass);
    assert_eq!(std::fs::read(m.path("big")).unwrap(), want[0].1);
    wait_for("the materialised file", || pass.stats().files == 1);
    assert_eq!(std::fs::read(m.path("other")).unwrap(), want[1].1);
    let s = pass.stats();
    assert_eq!((s.files, s.over_budget), (1, 1), "{s:?}");
    assert!(s.bytes <= budget);
    let on_disk: u64 = materialised(&root)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().size())
        .sum();
    assert_eq!(on_disk, s.bytes);
    drop_page_cache();
    assert_eq!(std::fs::read(m.path("other")).unwrap(), want[1].1);
    assert_eq!(std::fs::read(m.path("big")).unwrap(), want[0].1);
    assert_eq!(pass.stats().opens, 1, "only `big` is passed through");
}

/// A tampered chunk still reads as EIO, however often the file is opened, and its file is
/// never materialised; the files beside it are.
#[test]
fn a_tampered_chunk_reads_eio_and_is_never_materialised() {
    if !can_mount() {
        return;
    }
    let want = files();
    for format in FORMATS {
        let tmp = tempfile::tempdir().unwrap();
        let blob = convert(&layer_tar(), format, tmp.path(), "tampered");
        match format {
            Format::Estargz => {
                let file = FileBlob::open(&blob.path).unwrap();
                let reader = lazypull_converter::estargz::EstargzReader::open(
                    file,
                    blob.toc_digest.as_ref(),
                )
                .unwrap();
                let c = &reader.lookup("big").unwrap().chunks[1];
                flip(&blob, c.blob_offset..c.blob_end);
            }
            Format::Erofs => {
                // The middle chunk of the image: `big` is nearly all of its data.
                let file = FileBlob::open(&blob.path).unwrap();
                let (index, start) = blob.erofs_index(&file);
                let n = index.entries().len();
                flip(&blob, index.chunk_ranges(n / 2, start).0);
            }
        }
        let cache =
            Arc::new(ChunkCache::open(CacheOptions::new(tmp.path().join("c"), 1 << 30)).unwrap());
        let root = tmp.path().join("materialised");
        let pass = Passthrough::new(&root, DEFAULT_BUDGET).unwrap();
        let m = PassMount::new(open_cached(&blob, &cache), &pass);
        for _ in 0..3 {
            let e = std::fs::read(m.path("big")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{format:?}: {e}");
        }
        // Attempts run in order on one thread: once `late` (read after them) is in, they are done.
        for (name, content) in &want[1..] {
            assert_eq!(&std::fs::read(m.path(name)).unwrap(), content, "{format:?}");
        }
        wait_for("the good files", || pass.stats().files == 3);
        let mut got: Vec<Vec<u8>> = materialised(&root)
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        got.sort();
        let mut good: Vec<Vec<u8>> = want[1..].iter().map(|(_, c)| c.clone()).collect();
        good.sort();
        assert_eq!(
            got, good,
            "{format:?}: only the good files are materialised"
        );
        drop_page_cache();
        let e = std::fs::read(m.path("big")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{format:?}: {e}");
        assert_eq!(pass.stats().files, 3);
    }
}

/// The kernel fails with EIO an open through a backing file while the inode is open through
/// the layer (and the reverse): an open while a cached one is outstanding stays cached, and
/// once none is, opens pass through, also while another passthrough open is outstanding.
#[test]
fn opens_never_mix_cached_and_passthrough_modes() {
    if !can_mount() {
        return;
    }
    let want = files();
    let tmp = tempfile::tempdir().unwrap();
    let blob = convert(&layer_tar(), Format::Estargz, tmp.path(), "modes");
    let cache =
        Arc::new(ChunkCache::open(CacheOptions::new(tmp.path().join("c"), 1 << 30)).unwrap());
    let pass = Passthrough::new(&tmp.path().join("materialised"), DEFAULT_BUDGET).unwrap();
    let m = PassMount::new(open_cached(&blob, &cache), &pass);
    let read = |f: &mut std::fs::File| {
        let mut got = Vec::new();
        std::io::Seek::rewind(f).unwrap();
        std::io::Read::read_to_end(f, &mut got).unwrap();
        got
    };
    let mut cached = std::fs::File::open(m.path("big")).unwrap();
    assert_eq!(read(&mut cached), want[0].1);
    wait_for("the materialised file", || pass.stats().files == 1);
    // Still open through the layer: the next open must be too.
    let mut second = std::fs::File::open(m.path("big")).unwrap();
    assert_eq!(pass.stats().opens, 0);
    assert_eq!(read(&mut second), want[0].1);
    drop((cached, second));
    // Releases reach the server after close returns.
    wait_for("a passthrough open", || {
        drop(std::fs::File::open(m.path("big")).unwrap());
        pass.stats().opens > 0
    });
    let mut p1 = std::fs::File::open(m.path("big")).unwrap();
    let mut p2 = std::fs::File::open(m.path("big")).unwrap();
    let opens = pass.stats().opens;
    assert!(opens >= 3, "{opens}");
    assert_eq!(read(&mut p1), want[0].1);
    assert_eq!(read(&mut p2), want[0].1);
}

/// overlayfs stacks on a layer served with passthrough (it takes one of the kernel's two
/// stacking levels) and reads its files through it.
#[test]
fn overlay_stacks_on_a_passthrough_mount() {
    if !can_mount() {
        return;
    }
    let want = files();
    let tmp = tempfile::tempdir().unwrap();
    let blob = convert(&layer_tar(), Format::Erofs, tmp.path(), "stack");
    let cache =
        Arc::new(ChunkCache::open(CacheOptions::new(tmp.path().join("c"), 1 << 30)).unwrap());
    let pass = Passthrough::new(&tmp.path().join("materialised"), DEFAULT_BUDGET).unwrap();
    let m = PassMount::new(open_cached(&blob, &cache), &pass);
    assert_eq!(std::fs::read(m.path("big")).unwrap(), want[0].1);
    wait_for("the materialised file", || pass.stats().files == 1);
    let (upper, work, merged) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            m.dir.path().display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t overlay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop_page_cache();
    let got = std::fs::read(merged.join("big"));
    let _ = std::process::Command::new("umount").arg(&merged).status();
    assert_eq!(got.unwrap(), want[0].1);
    assert!(pass.stats().opens >= 1, "{:?}", pass.stats());
}

/// A backing file the kernel refuses (here: on overlayfs, past the stacking depth a
/// passthrough mount allows) turns passthrough off for the mount; reads go on through the
/// layer, unchanged.
#[test]
fn a_refused_backing_file_falls_back_to_the_layer() {
    if !can_mount() {
        return;
    }
    let want = files();
    let tmp = tempfile::tempdir().unwrap();
    let blob = convert(&layer_tar(), Format::Erofs, tmp.path(), "refused");
    let cache =
        Arc::new(ChunkCache::open(CacheOptions::new(tmp.path().join("c"), 1 << 30)).unwrap());
    let dirs = ["lower", "upper", "work", "ovl"].map(|d| tmp.path().join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            dirs[0].display(),
            dirs[1].display(),
            dirs[2].display()
        ))
        .arg(&dirs[3])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _ovl = Unmount(&dirs[3]);
    let pass = Passthrough::new(&dirs[3].join("materialised"), DEFAULT_BUDGET).unwrap();
    let m = PassMount::new(open_cached(&blob, &cache), &pass);
    assert_eq!(std::fs::read(m.path("big")).unwrap(), want[0].1);
    wait_for("the materialised file", || pass.stats().files == 1);
    drop_page_cache();
    for _ in 0..2 {
        assert_eq!(std::fs::read(m.path("big")).unwrap(), want[0].1);
    }
    let s = pass.stats();
    assert!(s.refused && s.opens == 0, "{s:?}");
    // Nothing more is materialised once refused.
    assert_eq!(std::fs::read(m.path("other")).unwrap(), want[1].1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pass.stats().files, 1);
    m.unmount();
}

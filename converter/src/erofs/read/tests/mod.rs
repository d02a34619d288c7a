//! Reader tests: images `mkfs.erofs` builds from trees made here, compared with the trees
//! ([`mkfs`]); tampered, truncated and hand-patched images ([`hostile`]).
//!
//! Tests needing `mkfs.erofs` or root print `SKIPPED: reason` where either is missing, and
//! fail under `CI=true`.

mod hostile;
mod mkfs;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::blob::FileBlob;

/// Whether the capability is there; prints `SKIPPED: reason` if not, panics under `CI=true`.
fn require(ok: bool, reason: &str) -> bool {
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{reason} (required under CI=true)"
        );
        eprintln!("SKIPPED: {reason}");
    }
    ok
}

/// Whether mkfs.erofs can run and we are root (devices, owners, trusted.* xattrs).
fn can_build_images() -> bool {
    let mkfs = Command::new("mkfs.erofs").arg("--help").output().is_ok();
    // SAFETY-free root check: only root may chown a file to another user.
    let root = fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
        .unwrap_or(false);
    require(mkfs, "mkfs.erofs is not installed") && require(root, "not running as root")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic pseudo-random bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Names of the big directory: long, so that it spans several blocks.
fn many_name(i: usize) -> String {
    format!("entry-{i:04}-{}", "x".repeat(80))
}
const MANY: usize = 320;

/// A tree with every file kind; `full` adds the 320-entry directory.
fn build_tree(root: &Path, full: bool) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let w = |p: &str, data: &[u8]| fs::write(root.join(p), data).unwrap();
    for d in ["sub", "sub/deeper", "sub/deeper/x", "empty", "sticky"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    for n in [0usize, 1, 4095, 4096, 4097, 100_000] {
        w(&format!("f{n}"), &rng.bytes(n));
    }
    w("sub/deeper/x/leaf", b"leaf\n");
    let mut zeros = vec![0u8; 3 * 4096];
    zeros.extend_from_slice(b"tail after zero blocks");
    w("sub/zeros", &zeros);
    std::os::unix::fs::symlink("f1", root.join("short-link")).unwrap();
    let long_target = "a/".repeat(1500);
    std::os::unix::fs::symlink(&long_target, root.join("sub/long-link")).unwrap();
    fs::hard_link(root.join("f4097"), root.join("hard")).unwrap();
    fs::hard_link(root.join("f4097"), root.join("sub/hard2")).unwrap();
    run(Command::new("mknod")
        .arg(root.join("chr"))
        .args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(root.join("blk"))
        .args(["b", "259", "300"]));
    run(Command::new("mkfifo").arg(root.join("fifo")));

    fs::set_permissions(root.join("f1"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("f0"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(root.join("f4095"), Some(1000), Some(1001)).unwrap();
    std::os::unix::fs::chown(root.join("sub"), Some(70000), Some(70001)).unwrap();
    std::os::unix::fs::lchown(root.join("short-link"), Some(5), Some(6)).unwrap();

    let set = |p: &str, name: &str, value: &[u8]| ::xattr::set(root.join(p), name, value).unwrap();
    set("f1", "user.one", b"1");
    set("f1", "trusted.two", b"value two");
    set("f4096", "security.three", &[0, 1, 2, 255]);
    set("sub", "trusted.overlay.opaque", b"y");
    set("f0", "user.empty", b"");
    set("f100000", "user.long", &[b'v'; 300]);
    set("chr", "trusted.on-a-device", b"dev");
    // The same attribute on several files: `mkfs.erofs -x1` shares it.
    for p in ["f1", "f4095", "f4097", "sub/deeper", "f0"] {
        set(p, "user.shared", b"shared value");
    }

    if full {
        fs::create_dir(root.join("many")).unwrap();
        for i in 0..MANY {
            w(
                &format!("many/{}", many_name(i)),
                format!("{i}\n").as_bytes(),
            );
        }
    }

    // Mtimes last, directories included (creating entries changed theirs).
    run(Command::new("find").arg(root).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        "@1600000000.5",
        "{}",
        "+",
    ]));
    for (p, t) in [
        ("f1", "@1234567890.123456789"),
        ("short-link", "@1000000000.000000001"),
        ("sub", "@1700000000.999999999"),
        ("f0", "@86400"),
        ("", "@1650000000.25"),
    ] {
        run(Command::new("touch")
            .args(["-h", "-d", t])
            .arg(root.join(p)));
    }
}

/// Run mkfs.erofs on `src` with `args`; returns the image path.
fn mkfs(dir: &Path, name: &str, src: &Path, args: &[&str]) -> PathBuf {
    let img = dir.join(name);
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("-U")
        .arg("6c617a79-7075-6c6c-0000-000000000001")
        .args(args)
        .arg(&img)
        .arg(src));
    img
}

/// A whole file through the reader.
fn read_all<B: BlobRead>(r: &ErofsReader<B>, inode: &Inode) -> Result<Vec<u8>> {
    let mut out = vec![0u8; inode.size as usize];
    // Odd piece sizes exercise extent boundaries.
    let mut off = 0;
    while off < out.len() {
        let end = (off + 3001).min(out.len());
        let n = r.read(inode, off as u64, &mut out[off..end])?;
        assert_eq!(n, end - off, "short read at {off}");
        off = end;
    }
    Ok(out)
}

/// What the comparison expects of mtimes.
#[derive(Clone, Copy)]
enum Mtimes {
    /// As in the source tree.
    Source,
    /// All set to this (`-T`).
    Fixed(i64),
}

/// Every entry of the source tree (lstat), by relative path; the root is `""`.
fn source_tree(root: &Path) -> BTreeMap<String, fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                stack.push(if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
        }
        out.insert(rel, meta);
    }
    out
}

fn kind_of_meta(m: &fs::Metadata) -> EntryKind {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        EntryKind::Dir
    } else if t.is_symlink() {
        EntryKind::Symlink
    } else if t.is_char_device() {
        EntryKind::Char
    } else if t.is_block_device() {
        EntryKind::Block
    } else if t.is_fifo() {
        EntryKind::Fifo
    } else {
        EntryKind::Reg
    }
}

/// Compare everything the reader sees with the source tree. `all_root`: owners are 0
/// (`--all-root`); `strict_data` false tolerates `Unsupported` data (compressed images).
fn compare<B: BlobRead>(
    r: &ErofsReader<B>,
    src: &Path,
    mtimes: Mtimes,
    all_root: bool,
    strict_data: bool,
) {
    let walked = r.walk().unwrap();
    let source = source_tree(src);
    let paths: Vec<&String> = walked.iter().map(|(p, _)| p).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), paths.len(), "walk repeats a path");
    assert_eq!(
        sorted,
        source.keys().collect::<Vec<_>>(),
        "walk and source differ"
    );
    let mut nid_of_ino: HashMap<u64, Nid> = HashMap::new();
    let mut ino_of_nid: HashMap<Nid, u64> = HashMap::new();
    for (path, inode) in &walked {
        let m = &source[path];
        let at = format!("`{path}` (nid {})", inode.nid);
        assert_eq!(inode.kind, kind_of_meta(m), "{at}");
        assert_eq!(inode.mode, m.mode(), "{at}: mode");
        let owner = if all_root { (0, 0) } else { (m.uid(), m.gid()) };
        assert_eq!((inode.uid, inode.gid), owner, "{at}: owner");
        match mtimes {
            Mtimes::Source => assert_eq!(
                (inode.mtime, inode.mtime_nsec),
                (m.mtime(), m.mtime_nsec() as u32),
                "{at}: mtime"
            ),
            Mtimes::Fixed(t) => assert_eq!((inode.mtime, inode.mtime_nsec), (t, 0), "{at}"),
        }
        assert_eq!(r.resolve(path).unwrap(), Some(inode.nid), "{at}: resolve");
        assert_eq!(r.inode(inode.nid).unwrap(), *inode, "{at}: inode()");
        // Hard links: one nid per source inode and back.
        assert_eq!(*nid_of_ino.entry(m.ino()).or_insert(inode.nid), inode.nid);
        assert_eq!(*ino_of_nid.entry(inode.nid).or_insert(m.ino()), m.ino());

        let mut want_x: Vec<(Vec<u8>, Vec<u8>)> = ::xattr::list(src.join(path))
            .unwrap()
            .map(|n| {
                let v = ::xattr::get(src.join(path), &n).unwrap().unwrap();
                (n.into_encoded_bytes(), v)
            })
            .collect();
        want_x.sort();
        let mut got_x = r.xattrs(inode).unwrap();
        got_x.sort();
        assert_eq!(got_x, want_x, "{at}: xattrs");

        match inode.kind {
            EntryKind::Reg => {
                assert_eq!(inode.size, m.size(), "{at}: size");
                assert_eq!(inode.nlink as u64, m.nlink(), "{at}: nlink");
                match read_all(r, inode) {
                    Ok(data) => assert!(data == fs::read(src.join(path)).unwrap(), "{at}: data"),
                    Err(e) if !strict_data && matches!(e.root(), Error::Unsupported(_)) => {}
                    Err(e) => panic!("{at}: {e}"),
                }
            }
            EntryKind::Symlink => {
                let target = fs::read_link(src.join(path)).unwrap();
                assert_eq!(
                    r.read_link(inode).unwrap(),
                    target.into_os_string().into_encoded_bytes(),
                    "{at}: target"
                );
                assert_eq!(inode.size, m.size(), "{at}: size");
            }
            EntryKind::Char | EntryKind::Block => {
                let rdev = m.rdev();
                let want = (
                    ((rdev >> 8) & 0xfff) as u32,
                    ((rdev & 0xff) | ((rdev >> 12) & 0xfff00)) as u32,
                );
                assert_eq!(inode.rdev, want, "{at}: rdev");
            }
            EntryKind::Dir => {
                let entries = r.read_dir(inode).unwrap();
                let subdirs = entries
                    .iter()
                    .filter(|e| e.file_type == format::FT_DIR && e.name != b"." && e.name != b"..")
                    .count();
                assert_eq!(inode.nlink as usize, 2 + subdirs, "{at}: nlink");
                for e in &entries {
                    assert_eq!(
                        r.lookup(inode, &e.name).unwrap(),
                        Some(e.nid),
                        "{at}: lookup"
                    );
                }
                assert_eq!(r.lookup(inode, b"no such name").unwrap(), None);
            }
            EntryKind::Fifo | EntryKind::Hardlink => {}
        }
    }
}

/// A blob that counts its reads.
struct CountingBlob<B> {
    inner: B,
    reads: AtomicU64,
}

impl<B: BlobRead> BlobRead for CountingBlob<B> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(off, buf)
    }
}

fn open_file(img: &Path) -> ErofsReader<FileBlob> {
    ErofsReader::open(FileBlob::open(img).unwrap()).unwrap()
}

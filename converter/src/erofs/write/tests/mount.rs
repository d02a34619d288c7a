//! The images against the real consumers: `fsck.erofs` (erofs-utils) and the kernel, via a
//! loop mount whose tree is compared with what the layer says.
//!
//! These need the tools, root and loop devices; without them they print `SKIPPED: reason`,
//! except under `CI=true`, where a missing capability fails the test.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::fixtures::edge_layer;
use super::{build, ingest};
use crate::digest::Digest;
use crate::erofs::ErofsOptions;
use crate::layer::{EntryKind, Layer, LayerEntry};
use crate::prefetch::PrefetchList;
use crate::sample::{self, SampleLayer};

/// `true` if `ok`; otherwise prints why the test is skipped, or panics under `CI=true`.
fn require(ok: bool, why: &str) -> bool {
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {why}"
        );
        println!("SKIPPED: {why}");
        eprintln!("SKIPPED: {why}");
    }
    ok
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--help").output().is_ok()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn corpus() -> Vec<SampleLayer> {
    let mut all = sample::layers(4096);
    all.push(edge_layer());
    all
}

fn write_image(dir: &Path, l: &SampleLayer) -> (PathBuf, Layer) {
    let layer = ingest(&l.tar);
    let (img, _) = build(
        &layer,
        ErofsOptions {
            // The large layer's 20 MiB blob read sparsely: stored chunk-based, so fsck and
            // the kernel see both layouts.
            prefetch: Some(
                PrefetchList::parse(
                    "/types/file\n/large/blob.bin\t0+4096,65536+1,5000000+300000,20971000+520\n",
                )
                .unwrap(),
            ),
            uuid: [0x5a; 16],
        },
    );
    let path = dir.join(format!("{}.erofs", l.name));
    std::fs::write(&path, img).unwrap();
    (path, layer)
}

#[test]
fn fsck_accepts_every_image() {
    if !require(
        have("fsck.erofs"),
        "fsck.erofs (erofs-utils) is not installed",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for l in corpus() {
        let (img, _) = write_image(tmp.path(), &l);
        let out = Command::new("fsck.erofs").arg(&img).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "fsck.erofs rejects `{}`:\n{text}",
            l.name
        );
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("err") && !lower.contains("corrupt") && !lower.contains("warn"),
            "fsck.erofs complains about `{}`:\n{text}",
            l.name
        );
    }
}

/// A read-only loop mount, unmounted on drop (also when the test panics).
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(img: &Path) -> std::result::Result<Mounted, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(img)
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Mounted { dir })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
fn kernel_mount_matches_layer() {
    let can = require(is_root(), "not root: loop mounts need it")
        && require(
            Path::new("/dev/loop-control").exists(),
            "no loop devices (/dev/loop-control)",
        )
        && require(have("getfattr"), "getfattr (attr) is not installed");
    if !can {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for l in corpus() {
        let (img, layer) = write_image(tmp.path(), &l);
        let mounted = match Mounted::new(&img) {
            Ok(m) => m,
            Err(e) => {
                // The kernel may lack erofs; anything else is the image's fault.
                let no_fs = !std::fs::read_to_string("/proc/filesystems")
                    .unwrap_or_default()
                    .contains("erofs");
                if no_fs && !require(false, "the kernel has no erofs") {
                    return;
                }
                panic!("mounting `{}` failed: {e}", l.name);
            }
        };
        compare(l.name, &layer, mounted.dir.path());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    Reg,
    Symlink,
    Char,
    Block,
    Fifo,
}

/// What one path of the mounted tree should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Want {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    nsec: u32,
    /// Regular files: size and content digest.
    content: Option<(u64, Digest)>,
    target: Option<Vec<u8>>,
    rdev: (u32, u32),
    xattrs: BTreeMap<String, Vec<u8>>,
    /// Hardlinks: the first path of the inode.
    inode: Option<String>,
}

impl Want {
    fn dir() -> Want {
        Want {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            nsec: 0,
            content: None,
            target: None,
            rdev: (0, 0),
            xattrs: BTreeMap::new(),
            inode: None,
        }
    }

    fn of(e: &LayerEntry) -> Want {
        let kind = match e.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::Reg => Kind::Reg,
            EntryKind::Symlink => Kind::Symlink,
            EntryKind::Char => Kind::Char,
            EntryKind::Block => Kind::Block,
            EntryKind::Fifo => Kind::Fifo,
            EntryKind::Hardlink => unreachable!(),
        };
        Want {
            kind,
            mode: e.mode & 0o7777,
            uid: e.uid as u32,
            gid: e.gid as u32,
            mtime: e.mtime,
            nsec: e.mtime_nsec,
            content: (kind == Kind::Reg).then(|| (e.size, e.digest.unwrap())),
            target: (kind == Kind::Symlink).then(|| e.link_name.as_bytes().to_vec()),
            rdev: (e.dev_major, e.dev_minor),
            xattrs: e.xattrs.clone(),
            inode: None,
        }
    }
}

/// The tree the layer describes, by the OCI and overlayfs rules, written independently of the
/// writer's own tree building.
fn expected(layer: &Layer) -> BTreeMap<String, Want> {
    fn parents(m: &mut BTreeMap<String, Want>, name: &str) {
        let mut p = String::new();
        for c in name
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            p = if p.is_empty() {
                c.to_string()
            } else {
                format!("{p}/{c}")
            };
            m.entry(p.clone()).or_insert_with(Want::dir);
        }
    }
    let parent = |n: &str| {
        n.rsplit_once('/')
            .map_or(String::new(), |(d, _)| d.to_string())
    };
    let leaf = |n: &str| {
        n.rsplit_once('/')
            .map_or(n.to_string(), |(_, l)| l.to_string())
    };
    let opaque = ("trusted.overlay.opaque".to_string(), b"y".to_vec());
    let mut m = BTreeMap::from([(String::new(), Want::dir())]);
    let (mut links, mut whiteouts) = (Vec::new(), Vec::new());
    for e in &layer.entries {
        let l = leaf(&e.name);
        if l.starts_with(".wh..wh.") && l != ".wh..wh..opq" {
            continue;
        }
        if l.starts_with(".wh.") {
            whiteouts.push(e);
        } else if e.kind == EntryKind::Hardlink {
            links.push(e);
        } else {
            parents(&mut m, &e.name);
            m.insert(e.name.clone(), Want::of(e));
        }
    }
    for e in links {
        parents(&mut m, &e.name);
        let target = m.get_mut(&e.link_name).unwrap();
        let first = target
            .inode
            .get_or_insert_with(|| e.link_name.clone())
            .clone();
        let mut w = target.clone();
        w.inode = Some(first);
        m.insert(e.name.clone(), w);
    }
    for e in whiteouts {
        parents(&mut m, &e.name);
        let (dir, l) = (parent(&e.name), leaf(&e.name));
        if l == ".wh..wh..opq" {
            m.get_mut(&dir).unwrap().xattrs.extend([opaque.clone()]);
            continue;
        }
        let hidden = l.strip_prefix(".wh.").unwrap();
        let path = if dir.is_empty() {
            hidden.to_string()
        } else {
            format!("{dir}/{hidden}")
        };
        match m.get_mut(&path) {
            Some(w) if w.kind == Kind::Dir => w.xattrs.extend([opaque.clone()]),
            Some(_) => {}
            None => {
                let mut w = Want::dir();
                (w.kind, w.mode, w.uid, w.gid) = (Kind::Char, 0, e.uid as u32, e.gid as u32);
                (w.mtime, w.nsec) = (e.mtime, e.mtime_nsec);
                m.insert(path, w);
            }
        }
    }
    m
}

/// Walks the mounted tree and checks it is exactly `expected(layer)`.
fn compare(name: &str, layer: &Layer, root: &Path) {
    let want = expected(layer);
    let xattrs = all_xattrs(root);
    let mut seen = Vec::new();
    let mut inodes: HashMap<String, u64> = HashMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ctx = format!("layer `{name}`: `{rel}`");
        let w = want
            .get(&rel)
            .unwrap_or_else(|| panic!("{ctx}: not in the layer"));
        seen.push(rel.clone());
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::Reg
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else {
            assert!(ft.is_fifo(), "{ctx}: unexpected type {ft:?}");
            Kind::Fifo
        };
        assert_eq!(kind, w.kind, "{ctx}: type");
        assert_eq!(md.mode() & 0o7777, w.mode, "{ctx}: mode");
        assert_eq!((md.uid(), md.gid()), (w.uid, w.gid), "{ctx}: owner");
        assert_eq!(
            (md.mtime(), md.mtime_nsec() as u32),
            (w.mtime, w.nsec),
            "{ctx}: mtime"
        );
        let got_x = xattrs.get(&path).cloned().unwrap_or_default();
        assert_eq!(got_x, w.xattrs, "{ctx}: xattrs");
        match kind {
            Kind::Dir => {
                let mut subdirs = 0;
                for d in std::fs::read_dir(&path).unwrap() {
                    let d = d.unwrap();
                    let child = d.file_name().into_string().unwrap();
                    assert!(
                        !child.starts_with(".wh."),
                        "{ctx}: whiteout name `{child}` left"
                    );
                    subdirs += u64::from(d.file_type().unwrap().is_dir());
                    stack.push(if rel.is_empty() {
                        child
                    } else {
                        format!("{rel}/{child}")
                    });
                }
                assert_eq!(md.nlink(), 2 + subdirs, "{ctx}: nlink");
            }
            Kind::Reg => {
                let (size, digest) = w.content.unwrap();
                assert_eq!(md.len(), size, "{ctx}: size");
                assert_eq!(
                    Digest::of(&std::fs::read(&path).unwrap()),
                    digest,
                    "{ctx}: content"
                );
                let links = want
                    .values()
                    .filter(|o| o.inode.is_some() && o.inode == w.inode)
                    .count();
                assert_eq!(md.nlink(), links.max(1) as u64, "{ctx}: nlink");
                if let Some(first) = &w.inode {
                    let ino = *inodes.entry(first.clone()).or_insert(md.ino());
                    assert_eq!(md.ino(), ino, "{ctx}: hardlinks share an inode");
                }
            }
            Kind::Symlink => {
                let t = std::fs::read_link(&path).unwrap();
                assert_eq!(
                    t.as_os_str().as_encoded_bytes(),
                    w.target.as_deref().unwrap(),
                    "{ctx}"
                );
                assert_eq!(
                    md.len(),
                    w.target.as_ref().unwrap().len() as u64,
                    "{ctx}: size"
                );
            }
            Kind::Char | Kind::Block => {
                let rdev = md.rdev();
                let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
                let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
                assert_eq!((major as u32, minor as u32), w.rdev, "{ctx}: device");
            }
            Kind::Fifo => assert_eq!(md.len(), 0),
        }
    }
    seen.sort();
    let all: Vec<String> = want.keys().cloned().collect();
    assert_eq!(seen, all, "layer `{name}`: paths");
}

/// Every xattr under `root`, from one `getfattr -R` run (one process per file is slow).
fn all_xattrs(root: &Path) -> HashMap<PathBuf, BTreeMap<String, Vec<u8>>> {
    let out = Command::new("getfattr")
        .args([
            "-R",
            "-P",
            "-h",
            "-d",
            "-m",
            "-",
            "-e",
            "hex",
            "--absolute-names",
        ])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "getfattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all: HashMap<PathBuf, BTreeMap<String, Vec<u8>>> = HashMap::new();
    let mut current = None;
    for line in out.stdout.split(|&b| b == b'\n') {
        if let Some(p) = line.strip_prefix(b"# file: ") {
            let p = PathBuf::from(std::ffi::OsString::from(
                String::from_utf8(unescape(p)).unwrap(),
            ));
            current = Some(p);
        } else if !line.is_empty() {
            let line = std::str::from_utf8(line).unwrap();
            let (name, value) = line.split_once('=').unwrap_or((line, ""));
            let value = value.trim_matches('"');
            let hex = value.strip_prefix("0x").unwrap_or(value);
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let file = current.clone().expect("getfattr names the file first");
            all.entry(file)
                .or_default()
                .insert(unescape_str(name), bytes);
        }
    }
    all
}

/// getfattr writes unprintable bytes of names as `\ooo`.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 4 <= s.len() {
            let oct = std::str::from_utf8(&s[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn unescape_str(s: &str) -> String {
    String::from_utf8(unescape(s.as_bytes())).unwrap()
}

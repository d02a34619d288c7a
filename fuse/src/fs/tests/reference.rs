//! Snapshots of trees (a directory on disk, a [`LayerTree`]) in one comparable form, and the
//! reference tree of a layer: GNU tar's extraction, OCI whiteouts turned into overlayfs ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use lazypull_converter::Digest;

use super::super::{FileKind, Ino, LayerTree};
use super::ingest;

/// One path of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files and symlinks only.
    pub size: Option<u64>,
    pub mtime: (i64, u32),
    pub content: Option<Digest>,
    pub target: Option<Vec<u8>>,
    pub rdev: (u32, u32),
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub nlink: u64,
    /// Replaced by [`normalise`] with the first path's position among paths sharing it.
    pub ino: u64,
}

/// Path (`""` for the root, `a/b` below it) → node.
pub(super) type Snap = BTreeMap<Vec<u8>, Node>;

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn split_dev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// The tree under `root` as the kernel shows it (no symlink followed).
pub(super) fn snapshot_dir(root: &Path) -> Snap {
    let mut snap = Snap::new();
    let mut stack = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(OsStr::from_bytes(&rel));
        let md = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::Reg
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_char_device() {
            FileKind::Char
        } else if ft.is_block_device() {
            FileKind::Block
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else {
            FileKind::Socket
        };
        if kind == FileKind::Dir {
            for d in std::fs::read_dir(&path).unwrap() {
                stack.push(join(&rel, d.unwrap().file_name().as_bytes()));
            }
        }
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(&path).unwrap() {
            let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
            xattrs.insert(name.as_bytes().to_vec(), value);
        }
        let content = (kind == FileKind::Reg).then(|| {
            Digest::of(
                &std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
            )
        });
        let target = (kind == FileKind::Symlink).then(|| {
            std::fs::read_link(&path)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        snap.insert(
            rel,
            Node {
                kind,
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: matches!(kind, FileKind::Reg | FileKind::Symlink).then_some(md.len()),
                mtime: (md.mtime(), md.mtime_nsec() as u32),
                content,
                target,
                rdev: if matches!(kind, FileKind::Char | FileKind::Block) {
                    split_dev(md.rdev())
                } else {
                    (0, 0)
                },
                xattrs,
                nlink: md.nlink(),
                ino: md.ino(),
            },
        );
    }
    snap
}

/// The tree as the [`LayerTree`] itself shows it, read through its own API. Also checks that
/// every listed name looks up to the listed inode with the listed kind.
pub(super) fn snapshot_tree(tree: &dyn LayerTree) -> Snap {
    let mut snap = Snap::new();
    let mut stack = vec![(Vec::new(), tree.root(), tree.root())];
    while let Some((rel, ino, parent)) = stack.pop() {
        let a = tree.getattr(ino).unwrap();
        assert_eq!(a.ino, ino);
        if a.kind == FileKind::Dir {
            let list = tree.readdir(ino).unwrap();
            assert_eq!(list[0].name, b".");
            assert_eq!(list[0].ino, ino);
            assert_eq!(list[1].name, b"..");
            assert_eq!(list[1].ino, parent, "`..` of {rel:?}");
            let names: Vec<&[u8]> = list[2..].iter().map(|d| &d.name[..]).collect();
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(names, sorted, "{rel:?}: names sorted and unique");
            for d in &list[2..] {
                assert_eq!(tree.lookup(ino, &d.name).unwrap(), Some(d.ino));
                assert_eq!(tree.getattr(d.ino).unwrap().kind, d.kind);
                stack.push((join(&rel, &d.name), d.ino, ino));
            }
            assert_eq!(tree.lookup(ino, b"no such name").unwrap(), None);
        }
        let content = (a.kind == FileKind::Reg).then(|| {
            // Odd-sized reads, so chunk and block boundaries fall inside them.
            let mut data = Vec::new();
            loop {
                let piece = tree.read(ino, data.len() as u64, 50_001).unwrap();
                if piece.is_empty() {
                    break;
                }
                data.extend(piece);
            }
            assert_eq!(data.len() as u64, a.size);
            Digest::of(&data)
        });
        snap.insert(
            rel,
            Node {
                kind: a.kind,
                perm: u32::from(a.perm),
                uid: a.uid,
                gid: a.gid,
                size: matches!(a.kind, FileKind::Reg | FileKind::Symlink).then_some(a.size),
                mtime: (a.mtime, a.mtime_nsec),
                content,
                target: (a.kind == FileKind::Symlink).then(|| tree.readlink(ino).unwrap()),
                rdev: a.rdev,
                xattrs: tree.xattrs(ino).unwrap().into_iter().collect(),
                nlink: u64::from(a.nlink),
                ino: ino.0,
            },
        );
    }
    snap
}

/// How two snapshots may differ and still agree.
#[derive(Clone, Default)]
pub(super) struct Normalise {
    /// Round mtimes to the second as the eStargz TOC does.
    pub round_mtime: bool,
    /// Directories whose attributes nobody gave (the root, parents implied by deeper names):
    /// only their kind and links count.
    pub implied_dirs: BTreeSet<Vec<u8>>,
}

/// `snap` with inode numbers replaced by hardlink groups and the differences `how` allows
/// wiped out.
pub(super) fn normalise(snap: &Snap, how: &Normalise) -> Snap {
    let mut first: HashMap<u64, u64> = HashMap::new();
    let mut out = Snap::new();
    for (i, (path, node)) in snap.iter().enumerate() {
        let mut n = node.clone();
        n.ino = *first.entry(node.ino).or_insert(i as u64);
        if how.round_mtime {
            let (s, ns) = n.mtime;
            n.mtime = (if ns >= 500_000_000 { s + 1 } else { s }, 0);
        }
        if how.implied_dirs.contains(path) && n.kind == FileKind::Dir {
            (n.perm, n.uid, n.gid, n.mtime) = (0, 0, 0, (0, 0));
            // Extraction gives the root the temporary directory's xattrs, if any.
            if path.is_empty() {
                n.xattrs.clear();
            }
        }
        out.insert(path.clone(), n);
    }
    out
}

/// Paths of directories that `tar` does not list themselves (the root included).
pub(super) fn implied_dirs(tar: &[u8]) -> BTreeSet<Vec<u8>> {
    let layer = ingest(tar);
    let listed: BTreeSet<&str> = layer.entries.iter().map(|e| e.name.as_str()).collect();
    // The root is always the extraction directory, whatever the layer says of it.
    let mut implied = BTreeSet::from([Vec::new()]);
    for e in &layer.entries {
        let mut p = e.name.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !listed.contains(parent) {
                implied.insert(parent.as_bytes().to_vec());
            }
            p = parent;
        }
    }
    implied
}

/// Extract `tar` into `dir` with GNU tar, then turn OCI whiteouts into what overlayfs reads,
/// restoring the mtimes of the directories that changes.
pub(super) fn extract_reference(tar: &[u8], dir: &Path) {
    let tar_path = dir.with_extension("tar");
    std::fs::write(&tar_path, tar).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--same-owner",
            "-p",
            "-x",
            "-f",
        ])
        .arg(&tar_path)
        .arg("-C")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -x: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = snapshot_dir(dir);
    let mut dir_mtimes: BTreeMap<PathBuf, (i64, u32)> = BTreeMap::new();
    let opaque = |p: &Path| xattr::set(p, "trusted.overlay.opaque", b"y").unwrap();
    for (rel, node) in &snap {
        let rel_path = Path::new(OsStr::from_bytes(rel));
        let Some(leaf) = rel_path.file_name().map(|l| l.as_bytes()) else {
            continue;
        };
        let Some(hidden) = leaf.strip_prefix(b".wh.") else {
            continue;
        };
        let parent = dir.join(rel_path.parent().unwrap());
        let parent_snap = snap
            .get(parent.strip_prefix(dir).unwrap().as_os_str().as_bytes())
            .unwrap();
        dir_mtimes
            .entry(parent.clone())
            .or_insert(parent_snap.mtime);
        let path = dir.join(rel_path);
        if !path.exists() && std::fs::symlink_metadata(&path).is_err() {
            continue; // inside an aufs metadata directory removed already
        }
        if node.kind == FileKind::Dir {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        if hidden == b".wh..opq" {
            opaque(&parent);
            continue;
        }
        if hidden.starts_with(b".wh.") || node.kind == FileKind::Dir {
            continue; // aufs metadata
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        match std::fs::symlink_metadata(&target) {
            Ok(md) if md.is_dir() => opaque(&target),
            Ok(_) => {}
            Err(_) => {
                let c = CString::new(target.as_os_str().as_bytes()).unwrap();
                // SAFETY: valid C strings; plain syscalls.
                unsafe {
                    assert_eq!(libc::mknod(c.as_ptr(), libc::S_IFCHR, 0), 0);
                    assert_eq!(libc::chmod(c.as_ptr(), 0), 0);
                    assert_eq!(libc::lchown(c.as_ptr(), node.uid, node.gid), 0);
                }
                set_mtime(&target, node.mtime);
            }
        }
    }
    for (path, mtime) in dir_mtimes {
        set_mtime(&path, mtime);
    }
}

fn set_mtime(path: &Path, (secs, nsec): (i64, u32)) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nsec),
    };
    // SAFETY: `c` and `times` outlive the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// The inode at `path` of a tree, looked up component by component.
pub(super) fn resolve(tree: &dyn LayerTree, path: &[u8]) -> Option<Ino> {
    let mut ino = tree.root();
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        ino = tree.lookup(ino, c).unwrap()?;
    }
    Some(ino)
}

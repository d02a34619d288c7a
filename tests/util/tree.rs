//! Extracting layers with GNU tar and comparing the resulting trees.
//!
//! A layer is judged by what a runtime that pulls it eagerly gets: the tree GNU tar extracts as
//! root. Input and output layers are extracted the same way and their snapshots compared.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use super::{run_with_timeout, sha256, TIMEOUT};

/// Names the converter adds to a layer that a comparison ignores (at the layer root).
pub const ADDED_NAMES: [&str; 3] = [
    ".prefetch.landmark",
    ".no.prefetch.landmark",
    "stargz.index.json",
];

const TAR_EXTRACT: &str =
    "tar --xattrs --xattrs-include='*' --same-owner -p --numeric-owner -xf - -C";

/// Extract an uncompressed tar held in memory into `dest` (created).
pub fn extract_tar(tar: &[u8], dest: &Path) {
    extract_tar_with(tar, dest, &[]);
}

/// [`extract_tar`] with further GNU tar options (`extra`, passed as separate words).
pub fn extract_tar_with(tar: &[u8], dest: &Path, extra: &[&str]) {
    std::fs::create_dir_all(dest).unwrap();
    let script = format!("{TAR_EXTRACT} \"$1\" \"${{@:2}}\"");
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script, "extract"]).arg(dest).args(extra);
    let out = run_with_timeout(&mut cmd, Some(tar), TIMEOUT);
    assert!(
        out.status.success(),
        "tar extraction into {} failed: {}",
        dest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Extract a compressed layer blob into `dest` the way a shell user would:
/// `gzip -dc BLOB | tar …` (or `zstd -dc`).
pub fn extract_blob(blob: &Path, media_type: &str, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let decompress = if media_type.ends_with("+zstd") {
        "zstd -dc -- \"$1\""
    } else if media_type.ends_with("+gzip") {
        "gzip -dc -- \"$1\""
    } else {
        "cat -- \"$1\""
    };
    let script = format!("set -o pipefail; {decompress} | {TAR_EXTRACT} \"$2\"");
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script, "extract"]).arg(blob).arg(dest);
    let out = run_with_timeout(&mut cmd, None, TIMEOUT);
    assert!(
        out.status.success(),
        "`{decompress} | tar` of {} failed: {}",
        blob.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What one path of an extracted tree looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `d`, `f`, `l`, `c`, `b`, `p`, `s`.
    pub kind: char,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds; [`compare`] looks at these only: formats differ in how they carry nanoseconds.
    pub mtime: i64,
    /// Nanoseconds of the mtime, compared by [`compare_mtime_nsec`] where a format keeps them.
    pub mtime_nsec: i64,
    pub size: u64,
    pub content: Option<String>,
    pub link: Option<String>,
    pub dev: Option<(u64, u64)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For a file with several names: the smallest path sharing its inode.
    pub hardlink_group: Option<String>,
}

/// Path (relative, `/`-separated) → node.
pub type Tree = BTreeMap<String, Node>;

fn major(rdev: u64) -> u64 {
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}

fn minor(rdev: u64) -> u64 {
    (rdev & 0xff) | ((rdev >> 12) & !0xff)
}

/// Snapshot the tree under `root`.
pub fn snapshot(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    walk(root, root, &mut tree, &mut inodes);
    for names in inodes.values().filter(|n| n.len() > 1) {
        let first = names.iter().min().unwrap().clone();
        for n in names {
            tree.get_mut(n).unwrap().hardlink_group = Some(first.clone());
        }
    }
    tree
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree, inodes: &mut HashMap<(u64, u64), Vec<String>>) {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    children.sort();
    for path in children {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        let mut xattrs = BTreeMap::new();
        if kind != 'l' {
            for name in xattr::list(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
                let key = name.to_string_lossy().into_owned();
                let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
                xattrs.insert(key, value);
            }
        }
        let node = Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            size: if kind == 'f' { meta.len() } else { 0 },
            content: (kind == 'f').then(|| sha256(&std::fs::read(&path).unwrap())),
            link: (kind == 'l').then(|| {
                std::fs::read_link(&path)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            }),
            dev: matches!(kind, 'c' | 'b').then(|| (major(meta.rdev()), minor(meta.rdev()))),
            xattrs,
            hardlink_group: None,
        };
        if kind == 'f' && meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(rel.clone());
        }
        tree.insert(rel, node);
        if kind == 'd' {
            walk(root, &path, tree, inodes);
        }
    }
}

/// A difference between two trees.
pub struct Diff(pub Vec<String>);

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.0.iter().take(50) {
            writeln!(f, "  {line}")?;
        }
        if self.0.len() > 50 {
            writeln!(f, "  … and {} more", self.0.len() - 50)?;
        }
        Ok(())
    }
}

/// Compare the `actual` tree with the `expected` one. The converter's own additions
/// ([`ADDED_NAMES`]) are ignored in `actual`. Metadata (mode, owner, mtime) is compared only for
/// paths in `explicit` when given: directories a tar only implies get whatever the extractor
/// chooses.
pub fn compare(expected: &Tree, actual: &Tree, explicit: Option<&BTreeSet<String>>) -> Diff {
    let mut diffs = Vec::new();
    let actual: Tree = actual
        .iter()
        .filter(|(k, _)| !ADDED_NAMES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (path, want) in expected {
        let Some(got) = actual.get(path) else {
            diffs.push(format!("missing `{path}`"));
            continue;
        };
        let meta = explicit.is_none_or(|e| e.contains(path));
        let mut check = |what: &str, differs: bool, w: String, g: String| {
            if differs {
                diffs.push(format!("`{path}`: {what}: expected {w}, got {g}"));
            }
        };
        check(
            "type",
            want.kind != got.kind,
            want.kind.to_string(),
            got.kind.to_string(),
        );
        if want.kind != got.kind {
            continue;
        }
        if meta {
            check(
                "mode",
                want.mode != got.mode,
                format!("{:o}", want.mode),
                format!("{:o}", got.mode),
            );
            check(
                "uid",
                want.uid != got.uid,
                want.uid.to_string(),
                got.uid.to_string(),
            );
            check(
                "gid",
                want.gid != got.gid,
                want.gid.to_string(),
                got.gid.to_string(),
            );
            check(
                "mtime",
                want.mtime != got.mtime,
                want.mtime.to_string(),
                got.mtime.to_string(),
            );
            check(
                "xattrs",
                want.xattrs != got.xattrs,
                format!("{:?}", want.xattrs),
                format!("{:?}", got.xattrs),
            );
        }
        check(
            "size",
            want.size != got.size,
            want.size.to_string(),
            got.size.to_string(),
        );
        check(
            "content",
            want.content != got.content,
            format!("{:?}", want.content),
            format!("{:?}", got.content),
        );
        check(
            "symlink target",
            want.link != got.link,
            format!("{:?}", want.link),
            format!("{:?}", got.link),
        );
        check(
            "device",
            want.dev != got.dev,
            format!("{:?}", want.dev),
            format!("{:?}", got.dev),
        );
        check(
            "hardlink group",
            want.hardlink_group != got.hardlink_group,
            format!("{:?}", want.hardlink_group),
            format!("{:?}", got.hardlink_group),
        );
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        diffs.push(format!("unexpected `{path}`"));
    }
    Diff(diffs)
}

/// Normalise a tar member name the way runtimes do: no leading `/` or `./`, no trailing `/`.
pub fn normalize(name: &str) -> String {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// The normalised names a tar lists explicitly.
pub fn tar_names(tar: &[u8]) -> BTreeSet<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            normalize(&String::from_utf8_lossy(&e.path_bytes()))
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Extract `input_tar` and the converted `blob` and fail the test if the trees differ.
pub fn assert_same_tree(input_tar: &[u8], blob: &Path, media_type: &str, work: &Path) {
    let (want_dir, got_dir) = (work.join("want"), work.join("got"));
    extract_tar(input_tar, &want_dir);
    extract_blob(blob, media_type, &got_dir);
    let diff = compare(
        &snapshot(&want_dir),
        &snapshot(&got_dir),
        Some(&tar_names(input_tar)),
    );
    assert!(
        diff.0.is_empty(),
        "extracting {} differs from extracting its source:\n{diff}",
        blob.display()
    );
}

/// [`compare`]'s companion for formats that keep nanoseconds: the mtime nanoseconds of every
/// path in `explicit` (or every path) that both trees hold.
pub fn compare_mtime_nsec(
    expected: &Tree,
    actual: &Tree,
    explicit: Option<&BTreeSet<String>>,
) -> Diff {
    let diffs = expected
        .iter()
        .filter(|(path, _)| explicit.is_none_or(|e| e.contains(*path)))
        .filter_map(|(path, want)| {
            let got = actual.get(path)?;
            (want.kind == got.kind && want.mtime_nsec != got.mtime_nsec).then(|| {
                format!(
                    "`{path}`: mtime nanoseconds: expected {}.{:09}, got {}.{:09}",
                    want.mtime, want.mtime_nsec, got.mtime, got.mtime_nsec
                )
            })
        })
        .collect();
    Diff(diffs)
}

/// OCI whiteout marker prefix and the opaque-directory marker (image-spec layer.md).
pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to make a directory opaque, and its value.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a marker at `path` asks for.
pub enum Marker {
    /// `.wh..wh..opq` in the directory (`""` for the root).
    Opaque { dir: String },
    /// `.wh.NAME`: `NAME` in the same directory is removed.
    Whiteout { target: String },
}

/// Whether the normalised path names an OCI whiteout marker, and which.
pub fn marker(path: &str) -> Option<Marker> {
    let (dir, base) = match path.rsplit_once('/') {
        Some((d, b)) => (d.to_string(), b),
        None => (String::new(), path),
    };
    let join = |name: &str| {
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    };
    if base == OPAQUE_MARKER {
        Some(Marker::Opaque { dir })
    } else {
        base.strip_prefix(WHITEOUT_PREFIX)
            .filter(|n| !n.is_empty())
            .map(|n| Marker::Whiteout { target: join(n) })
    }
}

/// The tree an EROFS (overlayfs-form) layer must show for a tar layer whose extraction is
/// `tree`: each `.wh.NAME` becomes a character device 0:0 `NAME`, each `.wh..wh..opq` becomes
/// `trusted.overlay.opaque=y` on its directory, and no marker remains. A whiteout's own mode,
/// owner and mtime are not the tar's to say: leave it out of the explicit set
/// ([`without_markers`]).
pub fn whiteouts_as_overlay(tree: &Tree) -> Tree {
    let mut out = Tree::new();
    let mut opaque = Vec::new();
    for (path, node) in tree {
        match marker(path) {
            None => {
                out.insert(path.clone(), node.clone());
            }
            Some(Marker::Opaque { dir }) => opaque.push(dir),
            Some(Marker::Whiteout { target }) => {
                let device = Node {
                    kind: 'c',
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    mtime_nsec: 0,
                    size: 0,
                    content: None,
                    link: None,
                    dev: Some((0, 0)),
                    xattrs: BTreeMap::new(),
                    hardlink_group: None,
                };
                out.insert(target, device);
            }
        }
    }
    for dir in opaque {
        // The root's opacity has no node to carry it in a tree snapshot.
        if let Some(node) = out.get_mut(&dir) {
            node.xattrs.insert(OPAQUE_XATTR.into(), b"y".to_vec());
        }
    }
    out
}

/// `names` without whiteout markers (the explicit set of a layer in overlayfs form).
pub fn without_markers(names: &BTreeSet<String>) -> BTreeSet<String> {
    names
        .iter()
        .filter(|n| marker(n).is_none())
        .cloned()
        .collect()
}

/// Turn the OCI markers of an extracted tar at `root` into overlayfs form on disk (a device
/// 0:0 per `.wh.NAME`, the opaque xattr per `.wh..wh..opq`), keeping directory mtimes, so the
/// directory can serve as an overlay lower layer or as `mkfs.erofs` input.
pub fn markers_to_overlay_on_disk(root: &Path) {
    let paths: Vec<String> = snapshot(root).into_keys().collect();
    for path in paths {
        let Some(m) = marker(&path) else { continue };
        let parent = root.join(&path).parent().unwrap().to_path_buf();
        let times = std::fs::metadata(&parent).unwrap();
        std::fs::remove_file(root.join(&path)).unwrap();
        match m {
            Marker::Opaque { .. } => xattr::set(&parent, OPAQUE_XATTR, b"y").unwrap(),
            Marker::Whiteout { target } => {
                let dev = root.join(target);
                let out = run_with_timeout(
                    Command::new("mknod").arg(&dev).args(["c", "0", "0"]),
                    None,
                    TIMEOUT,
                );
                assert!(out.status.success(), "mknod {}: {:?}", dev.display(), out);
            }
        }
        let restore = std::fs::FileTimes::new()
            .set_accessed(times.accessed().unwrap())
            .set_modified(times.modified().unwrap());
        std::fs::File::open(&parent)
            .unwrap()
            .set_times(restore)
            .unwrap();
    }
}

/// Extract `tars` (bottom first) into `dest` as one root filesystem, applying OCI whiteouts
/// between layers: a layer's `.wh.NAME` removes `NAME` from the layers below, its
/// `.wh..wh..opq` empties its directory of what the layers below put there, and no marker is
/// extracted. What a runtime that unpacks a tar image gets.
pub fn extract_layers_merged(tars: &[&[u8]], dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for tar in tars {
        for (name, is_dir) in tar_kinds(tar) {
            match marker(&name) {
                None => {
                    // A directory replaces a non-directory and vice versa; GNU tar only
                    // overwrites like with like.
                    let path = dest.join(&name);
                    if let Ok(m) = std::fs::symlink_metadata(&path) {
                        if m.is_dir() != is_dir {
                            remove_any(&path);
                        }
                    }
                }
                Some(Marker::Whiteout { target }) => remove_any(&dest.join(target)),
                Some(Marker::Opaque { dir }) => {
                    if let Ok(rd) = std::fs::read_dir(dest.join(&dir)) {
                        for entry in rd {
                            remove_any(&entry.unwrap().path());
                        }
                    }
                }
            }
        }
        // Directory mtimes the removals changed are restored by the layer's own directory
        // entries (each layer lists the directories it changes).
        extract_tar_with(tar, dest, &["--exclude", &format!("{WHITEOUT_PREFIX}*")]);
    }
}

/// The normalised names of a tar's members and whether each is a directory, in tar order.
fn tar_kinds(tar: &[u8]) -> Vec<(String, bool)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = normalize(&String::from_utf8_lossy(&e.path_bytes()));
            (name, e.header().entry_type().is_dir())
        })
        .filter(|(n, _)| !n.is_empty())
        .collect()
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

//! A realistic layer: a few hundred MB of a real directory tree of this machine (shared
//! libraries, /usr/share, a Python installation), archived with GNU tar at test time, converted,
//! verified by Go and extracted for comparison.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use lazypull_converter::sample::ImageLayer;

use crate::util::gohelper::{self, gohelper};
use crate::util::tree::assert_same_tree;
use crate::util::{
    convert_ok, is_root, missing_tool, oci_ref, report_layers, run_ok, skip, skip_unless,
    str_field, Layout,
};

/// Roots taken in order until the cap is reached; each exists on every machine of this kind
/// (Debian's shared libraries and data, and the machine's Python). They do not nest, so every
/// directory's entries stay contiguous in the archive.
const ROOTS: [&str; 3] = [
    "usr/lib/x86_64-linux-gnu",
    "usr/share",
    "root/.pyenv/versions",
];

/// Regular-file bytes to take.
const CAP: u64 = 300 << 20;

/// Paths (relative to `/`) of the tree to archive: directories, files, symlinks, in sorted
/// walk order, until `CAP` bytes of file content.
fn pick_paths() -> Vec<String> {
    struct Picked {
        order: Vec<String>,
        seen: HashSet<String>,
        /// Hardlinked files are stored once: count each inode once.
        inodes: HashSet<(u64, u64)>,
    }
    impl Picked {
        fn contains(&self, p: &String) -> bool {
            self.seen.contains(p)
        }
        fn push(&mut self, p: String) {
            self.seen.insert(p.clone());
            self.order.push(p);
        }
    }
    fn walk(dir: &Path, out: &mut Picked, taken: &mut u64) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut children: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        for path in children {
            if *taken >= CAP {
                return;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_socket() || ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
                continue;
            }
            let rel = path
                .strip_prefix("/")
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if out.contains(&rel) {
                continue;
            }
            out.push(rel);
            if ft.is_file() && out.inodes.insert((meta.dev(), meta.ino())) {
                *taken += meta.len();
            } else if ft.is_dir() {
                walk(&path, out, taken);
            }
        }
    }
    let mut out = Picked {
        order: Vec::new(),
        seen: HashSet::new(),
        inodes: HashSet::new(),
    };
    let mut taken = 0;
    for root in ROOTS {
        let path = Path::new("/").join(root);
        if path.is_dir() && taken < CAP {
            // Parents first, so the archive has explicit directory entries.
            let mut parent = String::new();
            for part in root.split('/') {
                parent = if parent.is_empty() {
                    part.into()
                } else {
                    format!("{parent}/{part}")
                };
                if !out.contains(&parent) {
                    out.push(parent.clone());
                }
            }
            walk(&path, &mut out, &mut taken);
        }
    }
    assert!(taken > 50 << 20, "found only {taken} bytes under {ROOTS:?}");
    out.order
}

/// Archive the picked tree with GNU tar (as root, with xattrs) in `work`; the tar's bytes.
/// Shared with the EROFS topic, which converts the same layer.
pub(crate) fn realistic_tar(work: &Path) -> Vec<u8> {
    let list = work.join("paths");
    let mut names = pick_paths().join("\0");
    names.push('\0');
    std::fs::write(&list, names).unwrap();
    let tar_path = work.join("layer.tar");
    run_ok(
        Command::new("tar")
            .args(["--xattrs", "--no-recursion", "--null", "-C", "/", "-cf"])
            .arg(&tar_path)
            .arg("-T")
            .arg(&list),
    );
    let tar = std::fs::read(&tar_path).unwrap();
    std::fs::remove_file(&tar_path).unwrap();
    eprintln!("realistic layer: {} MB of tar", tar.len() >> 20);
    tar
}

#[test]
fn realistic_tree_converts_and_verifies() {
    skip_unless!(
        is_root(),
        "reading a system tree and extracting it faithfully needs root"
    );
    let missing = missing_tool(&["tar", "gzip", "bash"]);
    skip_unless!(missing.is_none(), "{missing:?} is not installed");

    let tmp = tempfile::tempdir().unwrap();
    let tar = realistic_tar(tmp.path());

    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    let layer = ImageLayer::gzip(&tar, "tar of a real tree");
    lazypull_converter::sample::write_oci_layout(&input, "t", &[layer]).unwrap();
    let report = convert_ok(&[oci_ref(&input, "t"), oci_ref(&out, "t")]);
    let out = Layout::new(&out);
    let layer = &report_layers(&report)[0];
    let blob = out.blob_path(str_field(layer, "digest"));

    match gohelper() {
        Ok(helper) => gohelper::verify(helper, &blob, str_field(layer, "tocDigest")),
        Err(why) => skip(&format!("Go verification of the realistic layer: {why}")),
    }
    assert_same_tree(
        &tar,
        &blob,
        str_field(layer, "mediaType"),
        &tmp.path().join("trees"),
    );
}

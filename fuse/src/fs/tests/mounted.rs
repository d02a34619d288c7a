//! Real FUSE mounts: against GNU tar's extraction, with a tampered chunk, under overlayfs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lazypull_converter::sample;

use super::super::{mount, LayerTree, MountHandle, MountOptions};
use super::reference::{
    extract_reference, implied_dirs, normalise, resolve, snapshot_dir, snapshot_tree, Normalise,
    Snap,
};
use super::{can_mount, convert, open_tree, Blob, Format, CHUNK, FORMATS};

/// A layer mounted on a temporary directory; unmounted on drop, also when a test panics.
struct Mounted {
    handle: Option<MountHandle>,
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(tree: Arc<dyn LayerTree>) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let handle = mount(tree, dir.path(), &MountOptions::default()).expect("FUSE mount");
        Mounted {
            handle: Some(handle),
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            if let Err(e) = h.unmount() {
                eprintln!("unmount {}: {e}", self.dir.path().display());
            }
        }
    }
}

fn assert_same(ctx: &str, got: &Snap, want: &Snap) {
    let paths = |s: &Snap| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(paths(got), paths(want), "{ctx}: paths");
    for (path, node) in want {
        assert_eq!(
            got.get(path),
            Some(node),
            "{ctx}: `{}`",
            String::from_utf8_lossy(path)
        );
    }
}

/// Every sample layer, mounted in both formats, is GNU tar's extraction of it (whiteouts
/// translated), and is what the tree itself says.
#[test]
fn mounted_layers_match_tar_extraction() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for l in sample::layers(CHUNK) {
        let reference_dir = tmp.path().join(format!("{}.ref", l.name));
        extract_reference(&l.tar, &reference_dir);
        let reference = snapshot_dir(&reference_dir);
        for format in FORMATS {
            let ctx = format!("layer `{}` as {format:?}", l.name);
            let tree = open_tree(&convert(&l.tar, format, tmp.path(), l.name));
            let mounted = Mounted::new(Arc::clone(&tree));
            let got = snapshot_dir(mounted.path());
            // Inode numbers are the tree's own.
            for (path, node) in &got {
                let ino = resolve(&*tree, path).unwrap();
                assert_eq!(node.ino, ino.0, "{ctx}: inode of {path:?}");
            }
            assert_same(&format!("{ctx} vs its tree"), &got, &snapshot_tree(&*tree));
            let how = Normalise {
                round_mtime: format == Format::Estargz,
                implied_dirs: implied_dirs(&l.tar),
            };
            assert_same(
                &format!("{ctx} vs tar -x"),
                &normalise(&got, &how),
                &normalise(&reference, &how),
            );
            // Read-only, and xattrs answer the size probe.
            let file = got
                .iter()
                .find(|(_, n)| n.kind == super::super::FileKind::Reg)
                .map(|(p, _)| mounted.path().join(std::str::from_utf8(p).unwrap()));
            if let Some(file) = file {
                let err = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{ctx}");
            }
        }
    }
}

/// Flip one byte in the middle of `range` of the blob file.
pub(super) fn flip(blob: &Blob, range: std::ops::Range<u64>) {
    let mut bytes = std::fs::read(&blob.path).unwrap();
    let at = ((range.start + range.end) / 2) as usize;
    bytes[at] ^= 0x55;
    std::fs::write(&blob.path, bytes).unwrap();
}

/// A chunk whose bytes are tampered with reads as EIO; everything else still reads.
#[test]
fn tampered_chunk_reads_eio() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layers = sample::layers(CHUNK);
    let chunks = layers.iter().find(|l| l.name == "chunks").unwrap();
    let good_dir = tmp.path().join("good");
    extract_reference(&chunks.tar, &good_dir);
    for format in FORMATS {
        let blob = convert(&chunks.tar, format, tmp.path(), "chunks");
        match format {
            Format::Estargz => {
                // The second chunk of a multi-chunk file.
                let tree = open_tree(&blob);
                drop(tree);
                let file = lazypull_converter::FileBlob::open(&blob.path).unwrap();
                let reader = lazypull_converter::estargz::EstargzReader::open(
                    file,
                    blob.toc_digest.as_ref(),
                )
                .unwrap();
                let e = reader.lookup("chunks/three-and-a-half").unwrap();
                let c = &e.chunks[1];
                flip(&blob, c.blob_offset..c.blob_end);
            }
            Format::Erofs => {
                // A chunk of the image past its metadata: file data.
                let file = lazypull_converter::FileBlob::open(&blob.path).unwrap();
                let (index, start) = blob.erofs_index(&file);
                let n = index.entries().len();
                assert!(n >= 4, "{n} chunks");
                let (stored, _) = index.chunk_ranges(n / 2, start);
                flip(&blob, stored);
            }
        }
        let mounted = Mounted::new(open_tree(&blob));
        let (mut failed, mut fine) = (Vec::new(), 0);
        for name in std::fs::read_dir(mounted.path().join("chunks")).unwrap() {
            let name = name.unwrap().file_name();
            let path = mounted.path().join("chunks").join(&name);
            // Metadata does not depend on the broken chunk.
            let md = std::fs::symlink_metadata(&path).unwrap();
            let want = good_dir.join("chunks").join(&name);
            assert_eq!(md.len(), std::fs::metadata(&want).unwrap().len());
            match std::fs::read(&path) {
                Ok(data) => {
                    assert_eq!(data, std::fs::read(&want).unwrap(), "{format:?}: {name:?}");
                    fine += 1;
                }
                Err(e) => {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(libc::EIO),
                        "{format:?}: {name:?}: {e}"
                    );
                    failed.push(name);
                }
            }
        }
        assert!(
            !failed.is_empty(),
            "{format:?}: no file read the broken chunk"
        );
        assert!(fine > 0, "{format:?}: every file failed");
        if format == Format::Estargz {
            // Both names of the hard-linked file, nothing else.
            let mut failed: Vec<_> = failed.iter().map(|n| n.to_str().unwrap()).collect();
            failed.sort();
            assert_eq!(failed, ["hard-to-multi", "three-and-a-half"]);
        }
    }
}

/// A tar of the given entries: `(path, Some(content))` files, `(path/, None)` directories.
pub(super) fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match content {
            Some(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// An overlay mount of FUSE-mounted layers, unmounted on drop.
struct Overlay(tempfile::TempDir);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// overlayfs over two mounted layers hides what the upper one whites out, and the contents of
/// its opaque directory.
#[test]
fn overlay_honours_whiteouts_and_opaque_dirs() {
    if !can_mount() {
        return;
    }
    let lower_tar = tar_of(&[
        ("wh/", None),
        ("wh/dir/", None),
        ("wh/dir/removed-file", Some(b"gone")),
        ("wh/dir/kept-lower", Some(b"kept")),
        ("wh/removed-dir/", None),
        ("wh/removed-dir/inner", Some(b"gone")),
        ("wh/opaque/", None),
        ("wh/opaque/old", Some(b"hidden by opaque")),
        ("top-level", Some(b"gone")),
        ("lower-only", Some(b"still here")),
    ]);
    let layers = sample::layers(CHUNK);
    let upper_tar = &layers.iter().find(|l| l.name == "whiteouts").unwrap().tar;
    let tmp = tempfile::tempdir().unwrap();
    for format in FORMATS {
        let lower = Mounted::new(open_tree(&convert(&lower_tar, format, tmp.path(), "lower")));
        let upper = Mounted::new(open_tree(&convert(upper_tar, format, tmp.path(), "upper")));
        let merged = Overlay(tempfile::tempdir().unwrap());
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={}:{}",
                upper.path().display(),
                lower.path().display()
            ))
            .arg(merged.0.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format:?}: mount -t overlay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = merged.0.path();
        for gone in [
            "wh/dir/removed-file",
            "wh/removed-dir",
            "top-level",
            "wh/opaque/old",
        ] {
            assert!(
                std::fs::symlink_metadata(m.join(gone)).is_err(),
                "{format:?}: `{gone}` is still visible"
            );
        }
        assert_eq!(std::fs::read(m.join("wh/dir/kept-lower")).unwrap(), b"kept");
        assert_eq!(std::fs::read(m.join("lower-only")).unwrap(), b"still here");
        assert_eq!(
            std::fs::read(m.join("wh/opaque/kept")).unwrap(),
            b"new content under an opaque dir\n"
        );
        let mut names: Vec<_> = std::fs::read_dir(m.join("wh/opaque"))
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["kept"], "{format:?}");
        assert!(std::fs::metadata(m.join("wh")).unwrap().ino() > 0);
        drop(merged);
    }
}

/// `unmount` detaches a mount whose server is still running; dropping the handle afterwards
/// neither fails nor hangs.
#[test]
fn detach_then_drop() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layers = sample::layers(CHUNK);
    let types = layers.iter().find(|l| l.name == "types").unwrap();
    let mounted = Mounted::new(open_tree(&convert(
        &types.tar,
        Format::Estargz,
        tmp.path(),
        "t",
    )));
    let is_mounted = |p: &Path| {
        let p = p.canonicalize().unwrap();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
    };
    assert!(is_mounted(mounted.path()));
    assert_eq!(
        std::fs::read(mounted.path().join("types/file")).unwrap(),
        b"hello, lazypull\n"
    );
    super::super::unmount(mounted.path()).unwrap();
    assert!(!is_mounted(mounted.path()));
    drop(mounted);
}

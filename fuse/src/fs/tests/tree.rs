//! The trees through their own API: no kernel, no root.

use lazypull_converter::sample;

use super::super::{FileKind, FsError, Ino, LayerTree};
use super::reference::{implied_dirs, normalise, resolve, snapshot_tree, Normalise};
use super::{convert, open_tree, Format, CHUNK};

/// Both formats of every sample layer show the same tree (eStargz mtimes are whole seconds).
#[test]
fn estargz_and_erofs_trees_agree() {
    let tmp = tempfile::tempdir().unwrap();
    for l in sample::layers(CHUNK) {
        let estargz = open_tree(&convert(&l.tar, Format::Estargz, tmp.path(), l.name));
        let erofs = open_tree(&convert(&l.tar, Format::Erofs, tmp.path(), l.name));
        let how = Normalise {
            round_mtime: true,
            implied_dirs: implied_dirs(&l.tar),
        };
        let a = normalise(&snapshot_tree(&*estargz), &how);
        let b = normalise(&snapshot_tree(&*erofs), &how);
        let paths = |s: &super::reference::Snap| s.keys().cloned().collect::<Vec<_>>();
        assert_eq!(paths(&a), paths(&b), "layer `{}`: paths", l.name);
        for (path, node) in &a {
            assert_eq!(
                Some(node),
                b.get(path),
                "layer `{}`: `{}`",
                l.name,
                String::from_utf8_lossy(path)
            );
        }
    }
}

#[test]
fn whiteouts_are_overlayfs_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = sample::layers(CHUNK);
    let wh = layers.iter().find(|l| l.name == "whiteouts").unwrap();
    for format in super::FORMATS {
        let tree = open_tree(&convert(&wh.tar, format, tmp.path(), "wh"));
        let ctx = format!("{format:?}");
        for path in ["wh/dir/removed-file", "wh/removed-dir", "top-level"] {
            let ino = resolve(&*tree, path.as_bytes()).unwrap_or_else(|| panic!("{ctx}: {path}"));
            let a = tree.getattr(ino).unwrap();
            assert_eq!(
                (a.kind, a.rdev, a.perm),
                (FileKind::Char, (0, 0), 0),
                "{ctx}: {path}"
            );
        }
        let opq = resolve(&*tree, b"wh/opaque").unwrap();
        assert_eq!(
            tree.getxattr(opq, b"trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec()),
            "{ctx}"
        );
        assert!(resolve(&*tree, b"wh/opaque/kept").is_some(), "{ctx}");
        for marker in [".wh..wh..opq", ".wh.top-level"] {
            assert!(resolve(&*tree, format!("wh/opaque/{marker}").as_bytes()).is_none());
            assert!(resolve(&*tree, marker.as_bytes()).is_none(), "{ctx}");
        }
        let dir = resolve(&*tree, b"wh/dir").unwrap();
        assert_eq!(tree.getxattr(dir, b"trusted.overlay.opaque").unwrap(), None);
    }
}

#[test]
fn bad_inodes_and_kinds_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = sample::layers(CHUNK);
    let types = layers.iter().find(|l| l.name == "types").unwrap();
    for format in super::FORMATS {
        let tree = open_tree(&convert(&types.tar, format, tmp.path(), "types"));
        let file = resolve(&*tree, b"types/file").unwrap();
        let dir = resolve(&*tree, b"types").unwrap();
        assert!(matches!(
            tree.readdir(file),
            Err(FsError::NotDir(i)) if i == file
        ));
        assert!(matches!(tree.read(dir, 0, 10), Err(FsError::IsDir(_))));
        assert!(matches!(tree.readlink(file), Err(FsError::WrongKind(..))));
        // Reads past the end are short, then empty.
        assert_eq!(tree.read(file, 7, 100).unwrap(), b"lazypull\n");
        assert!(tree.read(file, 1000, 100).unwrap().is_empty());
        if format == Format::Estargz {
            assert!(matches!(
                tree.getattr(Ino(1 << 40)),
                Err(FsError::NoInode(_))
            ));
            assert!(matches!(tree.getattr(Ino(0)), Err(FsError::NoInode(_))));
        }
        assert_eq!(tree.root(), Ino::ROOT);
        assert!(tree.statfs().files > 0);
    }
}

/// The one errno mapping: layer failures of every kind are EIO, lookups of nothing ENOENT.
#[test]
fn errno_mapping() {
    use super::super::errno;
    use fuser::Errno;
    use lazypull_converter::Error;
    let layer = |e| FsError::layer(Ino(5), e);
    let mismatch = Error::DigestMismatch {
        what: "chunk".into(),
        expected: "a".into(),
        actual: "b".into(),
    };
    assert_eq!(errno(&layer(mismatch.context("entry `x`"))), Errno::EIO);
    let io = Error::io("fetch", std::io::Error::other("connection reset"));
    assert_eq!(errno(&layer(io)), Errno::EIO);
    assert_eq!(errno(&layer(Error::format("bad gzip"))), Errno::EIO);
    assert_eq!(errno(&FsError::NoInode(Ino(9))), Errno::ENOENT);
    assert_eq!(errno(&FsError::NotDir(Ino(9))), Errno::ENOTDIR);
    assert_eq!(errno(&FsError::IsDir(Ino(9))), Errno::EISDIR);
    assert_eq!(errno(&FsError::WrongKind(Ino(9), "x")), Errno::EINVAL);
}

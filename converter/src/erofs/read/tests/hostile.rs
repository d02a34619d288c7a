//! Tampered, truncated and hand-patched images: an error, never a panic or an endless loop.

use std::collections::{BTreeSet, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::*;
use crate::erofs::read::inode::DataLayout;

/// A small image (no superblock checksum, so tampering reaches the inodes) and its tree.
fn small_image(extra: &[&str]) -> Option<(tempfile::TempDir, Vec<u8>)> {
    if !can_build_images() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, false);
    let mut args = vec!["-T0", "-Enosbcrc"];
    args.extend_from_slice(extra);
    let img = mkfs(tmp.path(), "h.img", &src, &args);
    let bytes = fs::read(img).unwrap();
    Some((tmp, bytes))
}

fn open(img: &[u8]) -> ErofsReader<&[u8]> {
    ErofsReader::open(img).unwrap()
}

fn put(img: &mut [u8], at: u64, bytes: &[u8]) {
    img[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

fn inode_at(r: &ErofsReader<&[u8]>, path: &str) -> Inode {
    r.inode(r.resolve(path).unwrap().unwrap()).unwrap()
}

/// Byte offset of dirent `name` of an inline (one-block) directory.
fn dirent_at(r: &ErofsReader<&[u8]>, dir: &Inode, name: &[u8]) -> u64 {
    let DataLayout::Flat {
        blocks: 0, tail, ..
    } = dir.data
    else {
        panic!("directory is not inline: {:?}", dir.data)
    };
    let i = r
        .read_dir(dir)
        .unwrap()
        .iter()
        .position(|e| e.name == name)
        .unwrap();
    tail + 12 * i as u64
}

/// Everything a user of the reader might do, errors ignored: open, walk, then a tolerant
/// traversal reading every inode's data, link, xattrs and entries.
fn exercise(img: &[u8]) {
    let Ok(r) = ErofsReader::open(img) else {
        return;
    };
    let _ = r.walk();
    let _ = r.resolve("sub/deeper/x/leaf");
    let mut queue = vec![r.root()];
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(nid) = queue.pop() {
        if !seen.insert(nid) || seen.len() > 10_000 {
            continue;
        }
        let Ok(inode) = r.inode(nid) else { continue };
        let _ = r.xattrs(&inode);
        let _ = r.read_link(&inode);
        let mut off = 0;
        while off < inode.size.min(1 << 20) {
            match r.read(&inode, off, &mut buf) {
                Ok(n) if n > 0 => off += n as u64,
                _ => break,
            }
        }
        if let Ok(entries) = r.read_dir(&inode) {
            for e in entries {
                let _ = r.lookup(&inode, &e.name);
                queue.push(e.nid);
            }
        }
    }
}

/// Run `exercise` on each tampered image; returns the descriptions of those that panicked.
fn panics(cases: impl Iterator<Item = (String, Vec<u8>)>) -> Vec<String> {
    let mut bad = Vec::new();
    for (what, img) in cases {
        if catch_unwind(AssertUnwindSafe(|| exercise(&img))).is_err() {
            bad.push(what);
        }
    }
    bad
}

/// The blocks holding inodes, directories and inline data.
fn metadata_blocks(img: &[u8]) -> BTreeSet<u64> {
    let r = open(img);
    let b = r.block_size();
    let mut blocks = BTreeSet::from([0]);
    for (_, i) in r.walk().unwrap() {
        blocks.insert(i.iloc / b);
        if let DataLayout::Flat {
            startblk,
            blocks: n,
            ..
        } = i.data
        {
            if i.kind == EntryKind::Dir {
                blocks.extend(startblk..startblk + n);
            }
        }
    }
    blocks
}

#[test]
fn every_metadata_byte_flipped() {
    for extra in [&[][..], &["--chunksize=4096", "-Eforce-chunk-indexes"][..]] {
        let Some((_tmp, img)) = small_image(extra) else {
            return;
        };
        exercise(&img);
        let b = open(&img).block_size() as usize;
        let blocks = metadata_blocks(&img);
        let cases = blocks.iter().flat_map(|&blk| {
            let img = &img;
            (blk as usize * b..(blk as usize + 1) * b).flat_map(move |at| {
                [0xFFu8, 0x01, 0x80].into_iter().map(move |x| {
                    let mut t = img.clone();
                    t[at] ^= x;
                    (format!("byte {at} ^ {x:#x}"), t)
                })
            })
        });
        eprintln!("{extra:?}: metadata blocks {blocks:?} of {}", img.len() / b);
        let bad = panics(cases);
        assert!(
            bad.is_empty(),
            "{extra:?}: {} panics: {:?}",
            bad.len(),
            &bad[..bad.len().min(20)]
        );
    }
}

#[test]
fn random_flips_anywhere() {
    let Some((_tmp, img)) = small_image(&["--chunksize=4096"]) else {
        return;
    };
    let mut rng = XorShift(42);
    let cases = (0..2000).map(|_| {
        let mut t = img.clone();
        let mut what = String::new();
        // One to four bytes changed per image.
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() % img.len() as u64) as usize;
            let v = rng.next() as u8;
            t[at] = v;
            what.push_str(&format!("[{at}]={v:#x} "));
        }
        (what, t)
    });
    let bad = panics(cases);
    assert!(
        bad.is_empty(),
        "{} panics: {:?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
}

#[test]
fn truncated_images_are_errors() {
    let Some((_tmp, img)) = small_image(&[]) else {
        return;
    };
    let cases = (0..img.len())
        .step_by(97)
        .map(|n| (format!("len {n}"), img[..n].to_vec()));
    let bad = panics(cases);
    assert!(bad.is_empty(), "{bad:?}");
    assert!(ErofsReader::open(&img[..1100]).is_err());
}

#[test]
fn directory_cycle_is_an_error() {
    let Some((_tmp, mut img)) = small_image(&[]) else {
        return;
    };
    let r = open(&img);
    let sub = inode_at(&r, "sub");
    let deeper = inode_at(&r, "sub/deeper");
    let at = dirent_at(&r, &deeper, b"x");
    put(&mut img, at, &sub.nid.0.to_le_bytes());
    let r = open(&img);
    let err = r.walk().unwrap_err().to_string();
    assert!(
        err.contains(&format!("nid {} (`sub/deeper/x`)", sub.nid)) && err.contains("twice"),
        "{err}"
    );
    // Resolution follows the loop only as far as the path goes.
    let looped = "sub/deeper/x/deeper/x/deeper/x/deeper";
    assert_eq!(r.resolve(looped).unwrap(), Some(deeper.nid));
    exercise(&img);

    // `..` of a directory pointing elsewhere than its parent.
    let Some((_tmp, mut img)) = small_image(&[]) else {
        return;
    };
    let r = open(&img);
    let deeper = inode_at(&r, "sub/deeper");
    let at = dirent_at(&r, &deeper, b"..");
    put(&mut img, at, &deeper.nid.0.to_le_bytes());
    let err = open(&img).walk().unwrap_err().to_string();
    assert!(
        err.contains("`sub/deeper`") && err.contains("`..`"),
        "{err}"
    );
}

#[test]
fn out_of_range_nids_are_errors() {
    let Some((_tmp, mut img)) = small_image(&[]) else {
        return;
    };
    let r = open(&img);
    let slots = img.len() as u64 / 32;
    for nid in [u64::MAX, u64::MAX / 32, slots, slots + 1] {
        let err = r.inode(Nid(nid)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("nid {nid}")) && err.contains("past the end"),
            "{err}"
        );
    }
    let root = r.inode(r.root()).unwrap();
    let at = dirent_at(&r, &root, b"f1");
    put(&mut img, at, &(slots + 5).to_le_bytes());
    let r = open(&img);
    let err = r.read_dir(&root).unwrap_err().to_string();
    assert!(
        err.contains("`f1`") && err.contains("past the end"),
        "{err}"
    );
    assert!(r.walk().is_err());
    assert!(r.lookup(&root, b"blk").is_err());
}

#[test]
fn sizes_past_the_end_are_errors() {
    let Some((_tmp, mut img)) = small_image(&["-Enoinline_data"]) else {
        return;
    };
    let r = open(&img);
    let big = inode_at(&r, "f100000");
    assert!(matches!(big.data, DataLayout::Flat { tail_len: 0, .. }));
    if big.isize == 32 {
        put(&mut img, big.iloc + 8, &0xFFFF_FF00u32.to_le_bytes());
    } else {
        put(&mut img, big.iloc + 8, &(1u64 << 40).to_le_bytes());
    }
    let err = open(&img).inode(big.nid).unwrap_err().to_string();
    assert!(err.contains("past the end"), "{err}");
    let err = open(&img).walk().unwrap_err().to_string();
    assert!(err.contains("(`f100000`)"), "{err}");

    // Unknown i_format bits.
    let Some((_tmp, mut img)) = small_image(&[]) else {
        return;
    };
    let f1 = inode_at(&open(&img), "f1");
    img[f1.iloc as usize] |= 0x10;
    let err = open(&img).inode(f1.nid).unwrap_err().to_string();
    assert!(err.contains("i_format"), "{err}");
}

#[test]
fn chunk_tables_holes_and_devices() {
    // A 4-byte block map: a size past the table, and a hole.
    let Some((_tmp, img)) = small_image(&["--chunksize=4096"]) else {
        return;
    };
    let r = open(&img);
    let big = inode_at(&r, "f100000");
    let want = read_all(&r, &big).unwrap();
    let DataLayout::Chunked {
        table,
        entry_size: 4,
        ..
    } = big.data
    else {
        panic!("{:?}", big.data)
    };
    let mut holed = img.clone();
    put(&mut holed, table + 4, &format::NULL_ADDR.to_le_bytes());
    let got = read_all(&open(&holed), &big).unwrap();
    assert!(got[4096..8192].iter().all(|&b| b == 0));
    assert_eq!((&got[..4096], &got[8192..]), (&want[..4096], &want[8192..]));

    let mut sized = img.clone();
    put(&mut sized, big.iloc + 8, &0xFFFF_FFF0u32.to_le_bytes());
    if big.isize == 32 {
        let err = open(&sized).inode(big.nid).unwrap_err().to_string();
        assert!(err.contains("chunk table"), "{err}");
    }
    let mut far = img.clone();
    put(&mut far, table, &0x00FF_FFFFu32.to_le_bytes());
    let err = open(&far)
        .read(&big, 0, &mut [0; 8])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("chunk 0") && err.contains("past the end"),
        "{err}"
    );

    // 8-byte indexes: another device is unsupported.
    let Some((_tmp, img)) = small_image(&["--chunksize=4096", "-Eforce-chunk-indexes"]) else {
        return;
    };
    let big = inode_at(&open(&img), "f100000");
    let DataLayout::Chunked {
        table,
        entry_size: 8,
        ..
    } = big.data
    else {
        panic!("{:?}", big.data)
    };
    let mut dev = img.clone();
    put(&mut dev, table + 8 + 2, &1u16.to_le_bytes());
    let r = open(&dev);
    assert!(r.read(&big, 0, &mut [0; 8]).is_ok());
    let err = r.read(&big, 4096, &mut [0; 8]).unwrap_err();
    assert!(matches!(err.root(), Error::Unsupported(_)), "{err}");
}

#[test]
fn bad_dirents_are_errors() {
    let Some((_tmp, img)) = small_image(&[]) else {
        return;
    };
    let r = open(&img);
    let root = r.inode(r.root()).unwrap();
    let DataLayout::Flat { tail, tail_len, .. } = root.data else {
        panic!()
    };
    let names = tail as usize..(tail + tail_len) as usize;

    let mut t = img.clone();
    put(
        &mut t,
        dirent_at(&r, &root, b"blk") + 8,
        &5000u16.to_le_bytes(),
    );
    let err = open(&t).read_dir(&root).unwrap_err().to_string();
    assert!(err.contains("outside the block"), "{err}");

    let mut t = img.clone();
    let at = names.start
        + t[names.clone()]
            .windows(6)
            .position(|w| w == b"blkchr")
            .unwrap();
    t[at..at + 6].copy_from_slice(b"chrblk");
    let err = open(&t).read_dir(&root).unwrap_err().to_string();
    assert!(err.contains("does not sort after"), "{err}");

    let mut t = img.clone();
    put(&mut t, dirent_at(&r, &root, b"f0") + 10, &[9]);
    let err = open(&t).read_dir(&root).unwrap_err().to_string();
    assert!(err.contains("file type 9"), "{err}");

    // `.` renamed to a name that still sorts first: no `.` entry.
    let mut t = img.clone();
    let dot = t[names.clone()]
        .windows(3)
        .position(|w| w == b"...")
        .unwrap();
    t[names.start + dot] = b'-';
    let err = open(&t).read_dir(&root).unwrap_err().to_string();
    assert!(err.contains("no `.`"), "{err}");
}

#[test]
fn bad_superblocks_are_errors() {
    let Some((_tmp, img)) = small_image(&[]) else {
        return;
    };
    let sb = format::SUPER_OFFSET;
    let patched = |at: u64, bytes: &[u8]| {
        let mut t = img.clone();
        put(&mut t, sb + at, bytes);
        ErofsReader::open(t).err().map(|e| e.to_string())
    };
    assert!(patched(0, &[0; 4]).unwrap().contains("magic"));
    assert!(patched(0x0C, &[13]).unwrap().contains("block size"));
    assert!(patched(0x0C, &[8]).unwrap().contains("block size"));
    assert!(patched(0x50, &[0x80])
        .unwrap()
        .contains("incompatible features 0x80"));
    assert!(patched(0x5A, &[1]).unwrap().contains("dirblkbits"));
    assert!(patched(0x0E, &[0xFF, 0xFF]).unwrap().contains("root nid"));
    let f1 = inode_at(&open(&img), "f1").nid.0 as u16;
    let err = patched(0x0E, &f1.to_le_bytes()).unwrap();
    assert!(err.contains("not a directory"), "{err}");
    let mut t = img.clone();
    put(&mut t, sb + 0x50, &[0x40]);
    let err = ErofsReader::open(t).err().unwrap();
    assert!(matches!(err.root(), Error::Unsupported(_)), "{err}");

    // With a checksum, any change to the rest of block 0 is caught.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, false);
    let mut img = fs::read(mkfs(tmp.path(), "c.img", &src, &["-T0"])).unwrap();
    let r = open(&img);
    assert!(r.superblock().feature_compat.get() & format::COMPAT_SB_CHKSUM != 0);
    img[3000] ^= 1;
    let err = ErofsReader::open(&img[..]).err().unwrap().to_string();
    assert!(err.contains("checksum"), "{err}");
}

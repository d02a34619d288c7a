//! Images built by `mkfs.erofs` (erofs-utils 1.5) in each layout it offers, read back and
//! compared with the tree they were built from.

use super::*;
use crate::erofs::read::inode::DataLayout;

/// One tree, one image per mkfs variant, every image compared in full.
#[test]
fn mkfs_images_read_back_as_their_source() {
    if !can_build_images() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, true);
    let variants: &[(&str, &[&str], Mtimes)] = &[
        ("per-file mtimes", &[], Mtimes::Source),
        ("fixed time", &["-T0"], Mtimes::Fixed(0)),
        (
            "no inline data",
            &["-T77", "-Enoinline_data"],
            Mtimes::Fixed(77),
        ),
        // uid 70000 needs an extended inode.
        (
            "compact inodes",
            &["-T0", "-Eforce-inode-compact", "--all-root"],
            Mtimes::Fixed(0),
        ),
        (
            "extended inodes",
            &["-T0", "-Eforce-inode-extended"],
            Mtimes::Fixed(0),
        ),
        ("shared xattrs", &["-T0", "-x1"], Mtimes::Fixed(0)),
        (
            "chunk block map",
            &["-T0", "--chunksize=4096"],
            Mtimes::Fixed(0),
        ),
        (
            "chunk indexes",
            &["-T0", "--chunksize=8192", "-Eforce-chunk-indexes"],
            Mtimes::Fixed(0),
        ),
    ];
    for (i, (what, args, mtimes)) in variants.iter().enumerate() {
        eprintln!("variant {what}: mkfs.erofs {args:?}");
        let img = mkfs(tmp.path(), &format!("{i}.img"), &src, args);
        let r = open_file(&img);
        let all_root = args.contains(&"--all-root");
        compare(&r, &src, *mtimes, all_root, true);
        check_layouts(&r, what);
    }
}

/// The variants really produce the layouts they are meant to test.
fn check_layouts<B: BlobRead>(r: &ErofsReader<B>, what: &str) {
    let inodes: Vec<Inode> = r.walk().unwrap().into_iter().map(|(_, i)| i).collect();
    let big = r.inode(r.resolve("f100000").unwrap().unwrap()).unwrap();
    match what {
        "chunk block map" => assert!(matches!(
            big.data,
            DataLayout::Chunked {
                entry_size: 4,
                chunkbits: 12,
                ..
            }
        )),
        "chunk indexes" => assert!(matches!(
            big.data,
            DataLayout::Chunked {
                entry_size: 8,
                chunkbits: 13,
                ..
            }
        )),
        // Only regular files: directories and symlinks stay inline.
        "no inline data" => assert!(inodes.iter().all(|i| i.kind != EntryKind::Reg
            || !matches!(i.data, DataLayout::Flat { tail_len: 1.., .. }))),
        "shared xattrs" => {
            let f1 = r.inode(r.resolve("/f1").unwrap().unwrap()).unwrap();
            let area = r.blob().read_vec(f1.iloc + f1.isize, 12).unwrap();
            assert!(area[4] > 0, "user.shared is not shared");
        }
        "extended inodes" => assert!(inodes.iter().all(|i| i.isize == 64)),
        "compact inodes" => assert!(inodes.iter().all(|i| i.isize == 32)),
        _ => {
            // Inline tails exist: small files, symlinks and directories.
            assert!(inodes
                .iter()
                .any(|i| matches!(i.data, DataLayout::Flat { tail_len: 1.., .. })));
        }
    }
}

/// Compressed images open and walk; compressed file data is `Unsupported`.
#[test]
fn compressed_images_read_metadata() {
    if !can_build_images() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, false);
    fs::write(src.join("compressible"), vec![b'z'; 200_000]).unwrap();
    let img = mkfs(tmp.path(), "z.img", &src, &["-T0", "-zlz4hc"]);
    let r = open_file(&img);
    compare(&r, &src, Mtimes::Fixed(0), false, false);
    let z = r
        .inode(r.resolve("compressible").unwrap().unwrap())
        .unwrap();
    let err = r.read(&z, 0, &mut [0u8; 16]).unwrap_err();
    assert!(matches!(err.root(), Error::Unsupported(_)), "{err}");
}

/// A lookup in a directory of many blocks reads O(log blocks) of them.
#[test]
fn lookup_reads_logarithmically_many_blocks() {
    if !can_build_images() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, true);
    let img = mkfs(tmp.path(), "m.img", &src, &["-T0"]);
    let blob = CountingBlob {
        inner: FileBlob::open(&img).unwrap(),
        reads: AtomicU64::new(0),
    };
    let r = ErofsReader::open(blob).unwrap();
    let many = r.inode(r.resolve("many").unwrap().unwrap()).unwrap();
    let blocks = many.size.div_ceil(r.block_size());
    assert!(blocks >= 8, "the directory has only {blocks} blocks");
    let bound = 64 - blocks.leading_zeros() as u64 + 1;
    let reads = || r.blob().reads.load(Ordering::Relaxed);
    let mut worst = 0;
    for i in 0..MANY {
        let name = many_name(i);
        let before = reads();
        let nid = r.lookup(&many, name.as_bytes()).unwrap().expect("present");
        worst = worst.max(reads() - before);
        assert_eq!(r.inode(nid).unwrap().size, format!("{i}\n").len() as u64);
    }
    for absent in ["", "0", "entry-", "entry-0150-y", "zzz", ".", ".."] {
        let before = reads();
        let found = r.lookup(&many, absent.as_bytes()).unwrap();
        assert_eq!(found.is_some(), absent == "." || absent == "..", "{absent}");
        worst = worst.max(reads() - before);
    }
    eprintln!("{blocks} blocks: at most {worst} reads per lookup (bound {bound})");
    assert!(worst <= bound, "{worst} reads > {bound}");

    // A whole path: each level costs an inode read plus its directory's lookup.
    let before = reads();
    let path = format!("/many/{}", many_name(200));
    assert!(r.resolve(&path).unwrap().is_some());
    assert!(
        reads() - before <= 2 + 2 + bound,
        "{} reads",
        reads() - before
    );
}

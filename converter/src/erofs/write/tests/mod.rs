//! Tests of the EROFS writer: planning and bytes here; fsck and kernel mounts in [`mount`].

mod fixtures;
mod mount;

use std::io::Cursor;

use zerocopy::FromBytes;

use super::layout::CHUNK_BITS;
use super::{BuiltImage, ErofsBuilder, ErofsOptions};
use crate::erofs::format::{
    superblock_checksum, InodeExtended, SuperBlock, BLOCK_SIZE, INCOMPAT_CHUNKED_FILE,
    LAYOUT_CHUNK_BASED, SUPER_MAGIC, SUPER_OFFSET,
};
use crate::erofs::ErofsReader;
use crate::layer::{EntryKind, IngestOptions, Layer, LayerEntry};
use crate::prefetch::PrefetchList;
use crate::sample;

use fixtures::{edge_layer, lookup_nid, tar_of, T};

pub(super) fn ingest(tar: &[u8]) -> Layer {
    Layer::ingest(Cursor::new(tar), &IngestOptions::default()).expect("test layer ingests")
}

pub(super) fn build(layer: &Layer, opts: ErofsOptions) -> (Vec<u8>, BuiltImage) {
    let mut out = Vec::new();
    let built = ErofsBuilder::new(opts).build(layer, &mut out).unwrap();
    (out, built)
}

fn superblock(img: &[u8]) -> SuperBlock {
    let at = SUPER_OFFSET as usize;
    SuperBlock::read_from_bytes(&img[at..at + 128]).unwrap()
}

fn inode_at(img: &[u8], nid: u64) -> InodeExtended {
    let at = nid as usize * 32;
    InodeExtended::read_from_bytes(&img[at..at + 64]).unwrap()
}

#[test]
fn superblock_describes_the_image() {
    for l in sample::layers(4096) {
        let layer = ingest(&l.tar);
        let uuid = [7u8; 16];
        let (img, built) = build(
            &layer,
            ErofsOptions {
                prefetch: None,
                uuid,
            },
        );
        let sb = superblock(&img);
        assert_eq!(sb.magic.get(), SUPER_MAGIC);
        assert_eq!(img.len() as u64, built.size, "{}", l.name);
        assert_eq!(built.size % BLOCK_SIZE, 0);
        assert_eq!(u64::from(sb.blocks.get()) * BLOCK_SIZE, built.size);
        assert_eq!(sb.inos.get(), built.inodes);
        assert_eq!(sb.uuid, uuid);
        assert_eq!(sb.feature_incompat.get(), 0);
        assert_eq!(sb.root_nid.get(), 36);
        assert_eq!(inode_at(&img, 36).i_mode.get() & 0o170000, 0o040000);
        let mut block = img[SUPER_OFFSET as usize..BLOCK_SIZE as usize].to_vec();
        block[4..8].fill(0);
        assert_eq!(superblock_checksum(&block), sb.checksum.get());
        assert!(built.metadata_end <= built.prefetch_end && built.prefetch_end <= built.size);
        assert_eq!(built.prefetch_end, built.metadata_end);
    }
}

#[test]
fn same_input_same_bytes() {
    for l in sample::layers(4096).into_iter().chain([edge_layer()]) {
        let opts = ErofsOptions {
            prefetch: Some(
                PrefetchList::parse("/large/blob.bin\t0+10,9000000+5\nchunks/past\n").unwrap(),
            ),
            uuid: [1; 16],
        };
        let (a, _) = build(&ingest(&l.tar), opts.clone());
        let (b, _) = build(&ingest(&l.tar), opts);
        assert!(a == b, "layer {} is not deterministic", l.name);
    }
}

/// Start of a FLAT_PLAIN file's data.
fn data_offset(img: &[u8], name: &str) -> u64 {
    let nid = lookup_nid(img, name).unwrap_or_else(|| panic!("`{name}` not in image"));
    u64::from(inode_at(img, nid).i_u.get()) * BLOCK_SIZE
}

#[test]
fn prefetch_listed_files_come_first_after_metadata() {
    let tar = tar_of(&[
        T::dir("a/"),
        T::file("a/first", vec![1; 10_000]),
        T::file("a/second", vec![2; 5000]),
        T::file("a/third", vec![3; 9000]),
        T::hardlink("a/third-link", "a/third"),
        T::file("a/small", vec![4; 10]),
    ]);
    let layer = ingest(&tar);
    let (img, plain) = build(&layer, ErofsOptions::default());
    assert_eq!(plain.prefetch_end, plain.metadata_end);
    assert_eq!(plain.files, 4);
    assert_eq!(data_offset(&img, "a/first"), plain.metadata_end);

    let opts = ErofsOptions {
        // Hardlinks resolve to their inode; unknown, inline-only and repeated paths are skipped.
        prefetch: Some(PrefetchList::from_paths([
            "./a/third-link",
            "/missing",
            "a/small",
            "a/second/",
            "a/third",
        ])),
        uuid: [0; 16],
    };
    let (img, built) = build(&layer, opts);
    let third = data_offset(&img, "a/third");
    let second = data_offset(&img, "a/second");
    let first = data_offset(&img, "a/first");
    assert_eq!(third, built.metadata_end);
    assert_eq!(second, third + 3 * BLOCK_SIZE);
    assert_eq!(built.prefetch_end, second + 2 * BLOCK_SIZE);
    assert_eq!(first, built.prefetch_end);
    assert_eq!(built.size, first + 3 * BLOCK_SIZE);
    assert_eq!(img[third as usize..third as usize + 9000], [3; 9000]);
}

/// A large file read sparsely is chunk-based: only the chunks read sit in the prefetch region
/// (at its place in the list), the rest after every listed file; it reads back whole.
#[test]
fn sparsely_read_files_put_only_the_chunks_read_in_the_prefetch_region() {
    let mib = 1usize << 20;
    let big: Vec<u8> = (0..3 * mib + 100).map(|i| (i * 7 % 251) as u8).collect();
    let tar = tar_of(&[
        T::file("first", vec![1; 10_000]),
        T::file("big", big.clone()),
        T::file("after", vec![2; 5000]),
        T::file("other", vec![3; 9000]),
    ]);
    let layer = ingest(&tar);
    let chunk = 1u64 << CHUNK_BITS;
    // Chunks 0, 16 and 17 (a read across their boundary) and the 100-byte last chunk 48.
    let list = format!(
        "/first\n/big\t10+20,{}+2,{}+1\n/after\n",
        17 * chunk - 1,
        3 * mib + 50
    );
    let opts = ErofsOptions {
        prefetch: Some(PrefetchList::parse(&list).unwrap()),
        uuid: [0; 16],
    };
    let (img, built) = build(&layer, opts);
    assert_eq!(
        superblock(&img).feature_incompat.get(),
        INCOMPAT_CHUNKED_FILE
    );
    let first = data_offset(&img, "first");
    let after = data_offset(&img, "after");
    assert_eq!(first, built.metadata_end);
    // first (3 blocks), big's chunk 0, chunks 16-17, chunk 48 (one block), then after.
    let read_chunks = 3 * chunk + BLOCK_SIZE;
    assert_eq!(after, first + 3 * BLOCK_SIZE + read_chunks);
    assert_eq!(built.prefetch_end, after + 2 * BLOCK_SIZE);
    // The rest in layer order: big's other chunks, then other.
    assert_eq!(
        data_offset(&img, "other"),
        built.prefetch_end + (49 - 4) * chunk
    );

    let nid = lookup_nid(&img, "big").unwrap();
    let inode = inode_at(&img, nid);
    assert_eq!(inode.i_format.get() >> 1, LAYOUT_CHUNK_BASED);
    let map_at = nid as usize * 32 + 64;
    let map = |k: usize| {
        let at = map_at + 4 * k;
        u64::from(u32::from_le_bytes(img[at..at + 4].try_into().unwrap())) * BLOCK_SIZE
    };
    assert_eq!(map(0), first + 3 * BLOCK_SIZE);
    assert_eq!(map(16), map(0) + chunk);
    assert_eq!(map(17), map(16) + chunk);
    assert_eq!(map(48), map(17) + chunk);
    assert_eq!(
        map(1),
        built.prefetch_end,
        "unread chunks follow the listed files"
    );
    assert_eq!(map(15), map(1) + 14 * chunk);
    assert_eq!(map(18), map(15) + chunk);

    let reader = ErofsReader::open(img.as_slice()).unwrap();
    let inode = reader
        .inode(reader.resolve("big").unwrap().unwrap())
        .unwrap();
    let mut back = vec![0u8; big.len() + 10];
    assert_eq!(reader.read(&inode, 0, &mut back).unwrap(), big.len());
    assert!(
        back[..big.len()] == big[..],
        "a chunk-based file reads back whole"
    );

    // Read in full (or mostly), the same file stays one run of blocks.
    let opts = ErofsOptions {
        prefetch: Some(PrefetchList::parse(&format!("/big\t0+{}\n", 2 * mib)).unwrap()),
        uuid: [0; 16],
    };
    let (img, built) = build(&layer, opts);
    assert_eq!(superblock(&img).feature_incompat.get(), 0);
    assert_eq!(data_offset(&img, "big"), built.metadata_end);
}

fn layer_of(entries: Vec<LayerEntry>) -> Layer {
    let mut input = ingest(&tar_of(&[])).input;
    input.raw_entries = entries.len() as u64;
    Layer::from_parts(entries, tempfile::tempfile().unwrap(), input).unwrap()
}

fn build_err(entries: Vec<LayerEntry>) -> String {
    let layer = layer_of(entries);
    let mut out = Vec::new();
    let err = ErofsBuilder::new(ErofsOptions::default())
        .build(&layer, &mut out)
        .unwrap_err();
    assert!(
        out.is_empty(),
        "nothing is written before the plan succeeds"
    );
    err.to_string()
}

#[test]
fn bad_entries_are_errors_naming_them() {
    let mut dangling = LayerEntry::new("x/hard", EntryKind::Hardlink);
    dangling.link_name = "elsewhere".into();
    let err = build_err(vec![dangling]);
    assert!(
        err.contains("entry `x/hard`") && err.contains("not in this layer"),
        "{err}"
    );

    let long = format!("d/{}", "n".repeat(256));
    let err = build_err(vec![LayerEntry::new(long.as_str(), EntryKind::Fifo)]);
    assert!(err.contains(&format!("entry `{long}`")), "{err}");

    let mut bad_xattr = LayerEntry::new("f", EntryKind::Fifo);
    bad_xattr.xattrs.insert("unknown.ns".into(), b"v".to_vec());
    let err = build_err(vec![bad_xattr]);
    assert!(
        err.contains("entry `f`") && err.contains("unknown.ns"),
        "{err}"
    );

    let mut big_xattr = LayerEntry::new("big", EntryKind::Fifo);
    big_xattr.xattrs.insert("user.big".into(), vec![0; 5000]);
    let err = build_err(vec![big_xattr]);
    assert!(
        err.contains("entry `big`") && err.contains("inline"),
        "{err}"
    );

    let err = build_err(vec![
        LayerEntry::new("file", EntryKind::Fifo),
        LayerEntry::new("file/child", EntryKind::Fifo),
    ]);
    assert!(
        err.contains("entry `file/child`") && err.contains("not a directory"),
        "{err}"
    );

    let mut dir_link = LayerEntry::new("l", EntryKind::Hardlink);
    dir_link.link_name = "d".into();
    let err = build_err(vec![LayerEntry::new("d", EntryKind::Dir), dir_link]);
    assert!(
        err.contains("entry `l`") && err.contains("directory"),
        "{err}"
    );

    let mut huge_uid = LayerEntry::new("u", EntryKind::Fifo);
    huge_uid.uid = 1 << 40;
    assert!(build_err(vec![huge_uid]).contains("entry `u`"));

    let err = build_err(vec![LayerEntry::new("a/.wh.b/c", EntryKind::Fifo)]);
    assert!(err.contains("entry `a/.wh.b/c`"), "{err}");
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let layer = ingest(&tar_of(&[
        T::dir("d/"),
        T::file("d/.wh.gone", vec![]).owner(5, 6),
        T::file("d/.wh..wh..opq", vec![]),
        T::dir("kept/"),
        T::file(".wh.kept", vec![]),
        T::file(".wh..wh.plnk", vec![]),
    ]));
    let tree = super::tree::Tree::build(&layer).unwrap();
    let gone = &tree.nodes[tree.paths["d/gone"]];
    assert!(matches!(gone.kind, super::tree::NodeKind::Char { rdev: 0 }));
    assert_eq!((gone.perm, gone.uid, gone.gid), (0, 5, 6));
    for opaque in ["d", "kept"] {
        let d = &tree.nodes[tree.paths[opaque]];
        assert_eq!(d.xattrs[super::tree::OVERLAY_OPAQUE], b"y");
    }
    assert!(tree
        .paths
        .keys()
        .all(|p| !p.split('/').any(|c| c.starts_with(".wh."))));
}

#[test]
fn directories_are_sorted_and_complete() {
    for l in sample::layers(4096).into_iter().chain([edge_layer()]) {
        let (img, built) = build(&ingest(&l.tar), ErofsOptions::default());
        let mut stack = vec![(36u64, 36u64)];
        let mut dirs = 0;
        while let Some((nid, parent)) = stack.pop() {
            dirs += 1;
            let entries = fixtures::read_dir(&img, nid);
            let names: Vec<&[u8]> = entries.iter().map(|(n, _, _)| n.as_slice()).collect();
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "{}: unsorted dir",
                l.name
            );
            for (name, child, ft) in &entries {
                match name.as_slice() {
                    b"." => assert_eq!(*child, nid),
                    b".." => assert_eq!(*child, parent),
                    _ if *ft == crate::erofs::format::FT_DIR => stack.push((*child, nid)),
                    _ => {}
                }
                assert!(*child * 32 < built.metadata_end);
            }
            assert!(names.contains(&&b"."[..]) && names.contains(&&b".."[..]));
        }
        assert!(dirs >= 1);
    }
}

/// A sink that takes at most 777 bytes per call, like a pipe under pressure.
struct Trickle(Vec<u8>);

impl std::io::Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(777);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn short_writes_give_the_same_image() {
    let layer = ingest(&edge_layer().tar);
    let (whole, built) = build(&layer, ErofsOptions::default());
    let mut sink = Trickle(Vec::new());
    let again = ErofsBuilder::new(ErofsOptions::default())
        .build(&layer, &mut sink)
        .unwrap();
    assert_eq!(built, again);
    assert!(sink.0 == whole);
}

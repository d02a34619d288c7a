//! The test corpus: one layer per corner of the tar and OCI layer formats.

use tar::EntryType;

use super::entry::{build_tar, Entry, BASE_MTIME};
use super::{random_bytes, SampleLayer};

/// A `security.capability` value (VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE permitted+effective).
const CAPABILITY: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

/// The corpus, with chunk-boundary files sized around `chunk_size` (use the `--chunk-size` the
/// conversion under test uses). Each layer is a complete uncompressed tar.
pub fn layers(chunk_size: u64) -> Vec<SampleLayer> {
    let chunk = usize::try_from(chunk_size.max(1)).unwrap_or(usize::MAX / 8);
    let specs: [(&'static str, Vec<Entry>); 8] = [
        ("types", types()),
        ("pax", pax()),
        ("whiteouts", whiteouts()),
        ("chunks", chunks(chunk)),
        ("many-files", many_files(3000)),
        ("large", large(20 << 20)),
        ("repeated", repeated()),
        ("loose-names", loose_names()),
    ];
    specs
        .into_iter()
        .map(|(name, entries)| SampleLayer {
            name,
            tar: build_tar(&entries).expect("sample entries always encode"),
        })
        .collect()
}

/// (a) Every entry type, special mode bits, unusual owners.
fn types() -> Vec<Entry> {
    let long_target = format!("{}/target-file", "long-symlink-target-dir".repeat(6));
    assert!(long_target.len() > 100);
    vec![
        Entry::dir("types/"),
        Entry::file("types/file", b"hello, lazypull\n".to_vec()),
        Entry::file("types/empty", Vec::new()),
        Entry::dir("types/sub/").mode(0o750),
        Entry::file("types/sub/exec", b"#!/bin/sh\necho hi\n".to_vec()).mode(0o755),
        Entry::hardlink("types/sub/hard-2", "types/file"),
        Entry::dir("types/sticky/").mode(0o1777),
        Entry::file("types/setuid", b"suid\n".to_vec()).mode(0o4755),
        Entry::file("types/setgid", b"sgid\n".to_vec()).mode(0o2711),
        Entry::file("types/readonly", b"ro\n".to_vec()).mode(0o400),
        Entry::dir("types/setgid-dir/").mode(0o2775),
        Entry::symlink("types/link-short", "file"),
        Entry::symlink("types/link-abs", "/etc/passwd"),
        Entry::symlink("types/link-dangling", "does/not/exist"),
        Entry::symlink("types/link-long", long_target),
        Entry::symlink("types/link-dir", "sub"),
        Entry::hardlink("types/hard-1", "types/file"),
        Entry::hardlink("types/hard-setuid", "types/setuid"),
        Entry::hardlink("types/hard-empty", "types/empty"),
        Entry::device("types/null", EntryType::Char, 1, 3).mode(0o666),
        Entry::device("types/tty9", EntryType::Char, 4, 9).mode(0o620),
        Entry::device("types/loop7", EntryType::Block, 7, 7),
        Entry::device("types/bigdev", EntryType::Block, 259, 65537),
        Entry::fifo("types/fifo"),
        Entry::file("types/owned-odd", b"odd owner\n".to_vec()).owner(
            1_000_001,
            2_000_002,
            "odd.user-name",
            "odd_group",
        ),
        Entry::file("types/owned-nobody", b"nobody\n".to_vec())
            .owner(65534, 65534, "nobody", "nogroup"),
        Entry::file("types/owned-huge", b"ids past ustar\n".to_vec()).owner(
            3_000_000_000,
            4_000_000_000,
            "a-user-name-that-is-longer-than-32-bytes",
            "",
        ),
        Entry::file("types/owned-nameless", b"no names\n".to_vec()).owner(4242, 4343, "", ""),
        Entry::dir("types/owned-dir/")
            .owner(1000, 1000, "user", "user")
            .mode(0o700),
        Entry::file("types/old-mtime", b"1970\n".to_vec()).mtime(1, None),
    ]
}

/// (b) PAX records: long names, UTF-8, xattrs, nanosecond mtimes.
fn pax() -> Vec<Entry> {
    let mut entries = vec![Entry::dir("pax/")];
    // A name over 100 bytes, then one over 255 (needs PAX even with the USTAR prefix).
    let d1 = format!("pax/{}", "d".repeat(60));
    let d2 = format!("{d1}/{}", "e".repeat(60));
    let d3 = format!("{d2}/{}", "f".repeat(80));
    let d4 = format!("{d3}/{}", "g".repeat(90));
    let name_gt100 = format!("{d2}/file-past-100-bytes.txt");
    let name_gt255 = format!("{d4}/file-past-255-bytes.txt");
    assert!(name_gt100.len() > 100 && name_gt255.len() > 255);
    // Each directory's entries contiguous: extractors restore a directory's mtime when they
    // leave it, so revisiting one later would change it.
    entries.extend([
        Entry::dir(format!("{d1}/")),
        Entry::dir(format!("{d2}/")),
        Entry::file(name_gt100.clone(), b"long name\n".to_vec()),
        Entry::dir(format!("{d3}/")),
        Entry::dir(format!("{d4}/")),
        Entry::file(name_gt255.clone(), b"longer name\n".to_vec()),
        Entry::hardlink(format!("{d4}/hard-with-long-name"), name_gt255.clone()),
        Entry::symlink("pax/link-to-long", name_gt255),
        Entry::hardlink("pax/hard-to-long", name_gt100),
    ]);
    // UTF-8 names.
    entries.extend([
        Entry::dir("pax/ünïcødé/"),
        Entry::file("pax/ünïcødé/日本語.txt", "こんにちは\n".as_bytes().to_vec()),
        Entry::file("pax/ünïcødé/emoji-🦀.rs", b"fn main() {}\n".to_vec()),
        Entry::symlink("pax/ünïcødé/ссылка", "日本語.txt"),
        Entry::file("pax/space and\ttab", b"whitespace\n".to_vec()),
    ]);
    // Extended attributes of every namespace a runtime may meet.
    entries.extend([
        Entry::file("pax/xattr-user", b"x\n".to_vec())
            .xattr("user.mime_type", b"text/plain")
            .xattr("user.empty", b"")
            .xattr("user.binary", &[0, 1, 2, 0xff, 0xfe, b'=', b'\n']),
        Entry::file("pax/xattr-cap", b"\x7fELF-ish\n".to_vec())
            .mode(0o755)
            .xattr("security.capability", &CAPABILITY),
        Entry::file("pax/xattr-trusted", b"t\n".to_vec())
            .xattr("trusted.lazypull.test", b"trusted value"),
        Entry::dir("pax/xattr-dir/").xattr("user.dir-attr", b"on a directory"),
    ]);
    // Nanosecond mtimes, including ones that round up and down.
    entries.extend([
        Entry::file("pax/mtime-ns", b"ns\n".to_vec()).mtime(BASE_MTIME + 5, Some(123_456_789)),
        Entry::file("pax/mtime-ns-high", b"ns\n".to_vec()).mtime(BASE_MTIME + 6, Some(999_999_999)),
        Entry::file("pax/mtime-ns-low", b"ns\n".to_vec()).mtime(BASE_MTIME + 7, Some(1)),
        Entry::dir("pax/mtime-dir/").mtime(BASE_MTIME + 8, Some(500_000_000)),
    ]);
    entries
}

/// (c) OCI whiteouts: a plain whiteout and an opaque directory marker.
fn whiteouts() -> Vec<Entry> {
    vec![
        Entry::dir("wh/"),
        Entry::dir("wh/dir/"),
        Entry::file("wh/dir/.wh.removed-file", Vec::new()),
        Entry::file("wh/.wh.removed-dir", Vec::new()),
        Entry::dir("wh/opaque/"),
        Entry::file("wh/opaque/.wh..wh..opq", Vec::new()),
        Entry::file(
            "wh/opaque/kept",
            b"new content under an opaque dir\n".to_vec(),
        ),
        Entry::file(".wh.top-level", Vec::new()),
    ]
}

/// (d) Files at the chunk boundaries, all incompressible.
fn chunks(chunk: usize) -> Vec<Entry> {
    vec![
        Entry::dir("chunks/"),
        Entry::file("chunks/one-byte", random_bytes(1, 1)),
        Entry::file("chunks/below", random_bytes(2, chunk - 1)),
        Entry::file("chunks/exact", random_bytes(3, chunk)),
        Entry::file("chunks/past", random_bytes(4, chunk + 1)),
        Entry::file("chunks/two-exact", random_bytes(5, 2 * chunk)),
        Entry::file("chunks/three-and-a-half", random_bytes(6, chunk * 7 / 2)),
        Entry::hardlink("chunks/hard-to-multi", "chunks/three-and-a-half"),
        Entry::file("chunks/after", b"small file after the big ones\n".to_vec()),
    ]
}

/// (e) `count` small files spread over nested directories; some share content. Each
/// directory's entries are contiguous, as tar writes a walked tree.
fn many_files(count: usize) -> Vec<Entry> {
    let mut entries = vec![Entry::dir("many/")];
    let place = |i: usize| (i % 30, (i / 30) % 10);
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|&i| (place(i), i));
    let mut dirs_done = std::collections::BTreeSet::new();
    for i in order {
        let (a, b) = place(i);
        let dir_a = format!("many/d{a:02}/");
        let dir_b = format!("many/d{a:02}/e{b}/");
        for d in [dir_a, dir_b] {
            if dirs_done.insert(d.clone()) {
                entries.push(Entry::dir(d));
            }
        }
        let body = if i % 7 == 0 {
            b"shared content\n".to_vec()
        } else {
            let mut v = format!("file {i}\n").into_bytes();
            v.extend(random_bytes(i as u64 + 100, i % 300));
            v
        };
        let mtime = BASE_MTIME + (i as u64 % 86_400);
        entries
            .push(Entry::file(format!("many/d{a:02}/e{b}/f{i:04}.txt"), body).mtime(mtime, None));
    }
    entries
}

/// (f) One large incompressible file.
fn large(size: usize) -> Vec<Entry> {
    vec![
        Entry::dir("large/"),
        Entry::file("large/blob.bin", random_bytes(0x1a6e, size)),
    ]
}

/// (g) The same path more than once in a layer: the later entry wins.
fn repeated() -> Vec<Entry> {
    vec![
        Entry::dir("dup/"),
        Entry::file("dup/file", b"first version\n".to_vec()).mode(0o644),
        Entry::file("dup/other", b"unrelated\n".to_vec()),
        Entry::file("dup/file", b"second, longer version wins\n".to_vec()).mode(0o600),
        Entry::symlink("dup/was-link", "other"),
        Entry::file("dup/was-link", b"now a regular file\n".to_vec()),
        Entry::file("dup/was-file", b"replaced by a symlink\n".to_vec()),
        Entry::symlink("dup/was-file", "other"),
        Entry::file("dup/thrice", b"1\n".to_vec()).owner(1, 1, "daemon", "daemon"),
        Entry::file("dup/thrice", b"2\n".to_vec()).owner(2, 2, "bin", "bin"),
        Entry::file("dup/thrice", b"3\n".to_vec())
            .owner(3, 3, "sys", "sys")
            .mode(0o640),
    ]
}

/// (h) Names as real-world tars write them: no parent entries, `./` prefixes, absolute paths.
fn loose_names() -> Vec<Entry> {
    vec![
        Entry::file("noparent/deeper/still/file", b"parents implied\n".to_vec()),
        Entry::dir("./dotted/"),
        Entry::file("./dotted/file", b"dot-slash\n".to_vec()),
        Entry::symlink("./dotted/link", "file"),
        Entry::hardlink("./dotted/hard", "./dotted/file"),
        Entry::file("/abs/x", b"absolute name\n".to_vec()),
        Entry::hardlink("/abs/hard-x", "/abs/x"),
        Entry::file("plain-top-level", b"top\n".to_vec()),
    ]
}

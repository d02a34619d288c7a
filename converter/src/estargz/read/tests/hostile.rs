//! Hostile I/O, truncation, tampering and forged TOCs: always an error, never a panic, never
//! wrong content.

use std::sync::atomic::Ordering;

use super::*;

#[test]
fn split_reads_and_read_counts() {
    for zstd in [false, true] {
        let (blob, digest) = sample(zstd);
        let r = EstargzReader::open(HostileBlob::new(blob), Some(&digest)).unwrap();
        // Footer, then the whole TOC: two round trips to open a remote blob.
        assert_eq!(r.blob().reads.load(Ordering::Relaxed), 2);
        let hosts = r.lookup("etc/hosts").unwrap();
        assert_eq!(r.read_chunk(&hosts.chunks[1]).unwrap(), b"0.0.");
        assert_eq!(
            r.blob().reads.load(Ordering::Relaxed),
            3,
            "one read per chunk"
        );
        assert_eq!(r.read_file("etc/hosts").unwrap(), HOSTS);
    }
}

#[test]
fn truncated_blobs_are_errors() {
    for zstd in [false, true] {
        let (blob, digest) = sample(zstd);
        for n in 0..blob.len() {
            assert!(
                EstargzReader::open(&blob[..n], Some(&digest)).is_err(),
                "len {n}"
            );
            assert!(EstargzReader::open(&blob[..n], None).is_err(), "len {n}");
        }
    }
}

#[test]
fn a_flipped_payload_byte_fails_only_its_file() {
    let mut b = sample_builder(false);
    b.level = 0; // Stored members: a flipped byte changes content, not the deflate stream.
    b.file("big", b"0123456789");
    let (mut blob, digest) = b.finish();
    let r = EstargzReader::open(&blob, Some(&digest)).unwrap();
    let c = r.lookup("big").unwrap().chunks[1].clone();
    // Stored members hold the data verbatim.
    let member = &blob[c.blob_offset as usize..c.blob_end as usize];
    let at = c.blob_offset as usize + member.windows(4).position(|w| w == b"4567").unwrap();
    blob[at + 1] ^= 0x20;
    let r = EstargzReader::open(&blob, Some(&digest)).unwrap();
    let err = r.read_file("big").unwrap_err();
    assert!(matches!(err.root(), Error::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("entry `big` chunk at offset 4"),
        "{err}"
    );
    let big = r.lookup("big").unwrap();
    assert!(r.read_chunk(&big.chunks[0]).is_ok() && r.read_chunk(&big.chunks[2]).is_ok());
    for name in ["etc/hosts", "etc/four", "usr/bin/ln"] {
        assert!(r.read_file(name).is_ok(), "{name}");
    }
}

#[test]
fn any_flipped_byte_gives_an_error_or_the_right_content() {
    for zstd in [false, true] {
        let (blob, digest) = sample(zstd);
        let good = EstargzReader::open(&blob, Some(&digest)).unwrap();
        let files: Vec<(String, Vec<u8>)> = good
            .entries()
            .iter()
            .filter(|e| e.kind == EntryKind::Reg)
            .map(|e| (e.name.clone(), good.read_file(&e.name).unwrap()))
            .collect();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            let Ok(r) = EstargzReader::open(&bad, Some(&digest)) else {
                continue;
            };
            for (name, content) in &files {
                if let Ok(got) = r.read_file(name) {
                    assert_eq!(&got, content, "byte {i} flipped, file {name}");
                }
            }
        }
    }
}

#[test]
fn wrong_toc_digest_is_refused() {
    let (blob, _) = sample(false);
    let err = EstargzReader::open(&blob, Some(&Digest::of(b"other")))
        .err()
        .unwrap();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[test]
fn garbage_and_external_footers() {
    assert!(EstargzReader::open(vec![0u8; 100], None).is_err());
    assert!(EstargzReader::open(Vec::new(), None).is_err());
    let mut ext = vec![0u8; 10];
    let mut f = [0u8; 46];
    f[..4].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04]);
    f[12..14].copy_from_slice(b"SG");
    f[16..33].copy_from_slice(b"STARGZEXTERNALTOC");
    ext.extend_from_slice(&f);
    let err = EstargzReader::open(ext, None).err().unwrap();
    assert!(matches!(err.root(), Error::Unsupported(_)), "{err}");
}

/// A huge, mostly-zero blob: opening it must not fetch or allocate what the footer claims.
struct Sparse {
    len: u64,
    tail: Vec<u8>,
}

impl BlobRead for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        assert!(buf.len() <= 1 << 20, "read of {} bytes", buf.len());
        let tail_start = self.len - self.tail.len() as u64;
        for (i, b) in buf.iter_mut().enumerate() {
            let p = off + i as u64;
            *b = if p >= tail_start {
                self.tail[(p - tail_start) as usize]
            } else {
                0
            };
        }
        Ok(())
    }
}

#[test]
fn oversized_tocs_are_refused_before_reading() {
    let len = 1u64 << 40;
    let gz = Sparse {
        len,
        tail: format::gzip_footer(8).to_vec(),
    };
    let err = EstargzReader::open(gz, None).err().unwrap();
    assert!(err.to_string().contains("exceeds"), "{err}");
    let z = Sparse {
        len,
        tail: format::zstd_footer(8, 100, 1 << 40).to_vec(),
    };
    let err = EstargzReader::open(z, None).err().unwrap();
    assert!(err.to_string().contains("exceeds"), "{err}");
}

/// Open a blob whose TOC is `entries` (no payload: open-time checks only).
fn forge(entries: Vec<TocEntry>, verify: bool) -> Result<EstargzReader<Vec<u8>>> {
    let mut b = BlobBuilder::new(false);
    b.entries = entries;
    let (blob, digest) = b.finish();
    EstargzReader::open(blob, verify.then_some(&digest))
}

fn reg(name: &str, size: i64, offset: i64) -> TocEntry {
    TocEntry {
        name: name.into(),
        kind: "reg".into(),
        size,
        offset,
        chunk_digest: Digest::of(b"x").to_string(),
        ..Default::default()
    }
}

fn chunk(offset: i64, chunk_offset: i64, chunk_size: i64) -> TocEntry {
    TocEntry {
        kind: "chunk".into(),
        offset,
        chunk_offset,
        chunk_size,
        chunk_digest: Digest::of(b"y").to_string(),
        ..Default::default()
    }
}

fn with_kind(mut e: TocEntry, kind: &str, link: &str) -> TocEntry {
    e.kind = kind.into();
    e.link_name = link.into();
    e
}

#[test]
fn hostile_tocs_are_errors() {
    let cases: Vec<(&str, Vec<TocEntry>)> = vec![
        ("escapes the root", vec![reg("../x", 1, 10)]),
        ("escapes the root", vec![reg("a/../../x", 1, 10)]),
        ("NUL", vec![reg("a\0b", 1, 10)]),
        (
            "unknown entry type",
            vec![with_kind(reg("a", 0, 0), "socket", "")],
        ),
        ("not before the TOC", vec![reg("a", 1, 1 << 40)]),
        ("negative size", vec![reg("a", -1, 10)]),
        ("negative offset", vec![reg("a", 1, -10)]),
        (
            "also used by entry `a`",
            vec![reg("a", 1, 10), reg("b", 1, 10)],
        ),
        (
            "chunks must tile",
            vec![
                {
                    let mut r = reg("a", 8, 10);
                    r.chunk_size = 4;
                    r
                },
                chunk(20, 5, 0),
            ],
        ),
        (
            "chunks cover 4 of 8",
            vec![{
                let mut r = reg("a", 8, 10);
                r.chunk_size = 4;
                r
            }],
        ),
        (
            "does not fit",
            vec![
                {
                    let mut r = reg("a", 8, 10);
                    r.chunk_size = 4;
                    r
                },
                chunk(20, 4, 9),
            ],
        ),
        ("past the file size", vec![reg("a", 8, 10), chunk(20, 9, 0)]),
        ("chunk entry without a regular file", vec![chunk(20, 0, 1)]),
        ("chunk limit", vec![reg("a", 1 << 40, 10)]),
        (
            "does not exist",
            vec![with_kind(reg("h", 0, 0), "hardlink", "missing")],
        ),
        (
            "loop",
            vec![
                with_kind(reg("h", 0, 0), "hardlink", "g"),
                with_kind(reg("g", 0, 0), "hardlink", "h"),
            ],
        ),
        (
            "is a directory",
            vec![
                with_kind(reg("d", 0, 0), "dir", ""),
                with_kind(reg("h", 0, 0), "hardlink", "d"),
            ],
        ),
        (
            "hardlink without a target",
            vec![with_kind(reg("h", 0, 0), "hardlink", "")],
        ),
        ("not a directory", vec![reg("f", 0, 0), reg("f/x", 0, 0)]),
        ("root entry is not a directory", vec![reg("./", 0, 0)]),
        (
            "invalid modtime",
            vec![{
                let mut r = reg("a", 0, 0);
                r.mod_time = "yesterday".into();
                r
            }],
        ),
        (
            "sha256",
            vec![{
                let mut r = reg("a", 1, 10);
                r.chunk_digest = "md5:00".into();
                r
            }],
        ),
        (
            "devMajor",
            vec![{
                let mut r = with_kind(reg("c", 0, 0), "char", "");
                r.dev_major = 1 << 40;
                r
            }],
        ),
    ];
    for (want, entries) in cases {
        let err = forge(entries.clone(), false)
            .err()
            .unwrap_or_else(|| panic!("{want}: {entries:?}"));
        assert!(err.to_string().contains(want), "want `{want}`, got: {err}");
    }
}

#[test]
fn version_must_be_one() {
    let b = BlobBuilder::new(false);
    let (blob, _) = b.finish_with(br#"{"version":2,"entries":[]}"#);
    let err = EstargzReader::open(blob, None).err().unwrap();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

#[test]
fn toc_tar_must_start_with_the_index() {
    let mut b = BlobBuilder::new(false);
    let toc_offset = b.out.len() as u64;
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    tar.append_data(&mut h, "other.json", &b"{}"[..]).unwrap();
    b.member(&tar.into_inner().unwrap());
    b.out.extend_from_slice(&format::gzip_footer(toc_offset));
    let err = EstargzReader::open(b.out, None).err().unwrap();
    assert!(
        err.to_string().contains("first entry is `other.json`"),
        "{err}"
    );
}

#[test]
fn later_duplicates_win_in_the_first_place() {
    let mut b = BlobBuilder::new(false);
    b.file("a", b"old");
    b.file("b", b"bee");
    b.file("a", b"new!");
    let (blob, digest) = b.finish();
    let r = EstargzReader::open(&blob, Some(&digest)).unwrap();
    let names: Vec<&str> = r.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["", "a", "b"]);
    assert_eq!(r.read_file("a").unwrap(), b"new!");
}

#[test]
fn legacy_tocs_without_chunk_digests_need_insecure_mode() {
    let mut b = BlobBuilder::new(false);
    b.file("a", b"12345678");
    b.file("b", b"xy");
    for e in &mut b.entries {
        e.chunk_digest.clear();
        e.digest.clear();
    }
    let (blob, digest) = b.finish();
    let err = EstargzReader::open(&blob, Some(&digest)).err().unwrap();
    assert!(err.to_string().contains("no chunkDigest"), "{err}");
    let r = EstargzReader::open(&blob, None).unwrap();
    assert!(!r.is_verified());
    assert_eq!(r.read_file("a").unwrap(), b"12345678");
}

#[test]
fn unchunked_files_fall_back_to_the_file_digest() {
    let mut b = BlobBuilder::new(false);
    b.chunk_size = 100;
    b.file("a", b"12345678");
    b.entries[0].chunk_digest.clear();
    let (blob, digest) = b.finish();
    let r = EstargzReader::open(&blob, Some(&digest)).unwrap();
    assert_eq!(
        r.lookup("a").unwrap().chunks[0].digest,
        Some(Digest::of(b"12345678"))
    );
    assert_eq!(r.read_file("a").unwrap(), b"12345678");
}

#[test]
fn shared_members_with_inner_offsets() {
    // Min-chunk-size layout: two small files in one member, the second at an inner offset.
    let mut b = BlobBuilder::new(true);
    let off = b.member(b"HDR1firstHDR2second");
    let mut x = reg("x", 5, off);
    x.chunk_digest = Digest::of(b"first").to_string();
    x.inner_offset = 4;
    let mut y = reg("y", 6, off);
    y.chunk_digest = Digest::of(b"second").to_string();
    y.inner_offset = 13;
    b.entries = vec![x, y];
    let (blob, digest) = b.finish();
    let r = EstargzReader::open(&blob, Some(&digest)).unwrap();
    assert_eq!(r.read_file("x").unwrap(), b"first");
    assert_eq!(r.read_file("y").unwrap(), b"second");
    // A chunk not from this blob is refused rather than fetched.
    let mut forged = r.lookup("y").unwrap().chunks[0].clone();
    forged.blob_end = blob.len() as u64;
    assert!(matches!(r.read_chunk(&forged), Err(Error::Invalid(_))));
}

#[test]
fn short_member_is_an_error() {
    let mut b = BlobBuilder::new(false);
    let off = b.member(b"abc");
    let mut e = reg("a", 4, off);
    e.chunk_digest = Digest::of(b"abcd").to_string();
    b.entries = vec![e];
    let (blob, _) = b.finish();
    let r = EstargzReader::open(&blob, None).unwrap();
    let err = r.read_file("a").unwrap_err();
    assert!(
        err.to_string().contains("member ends after 3 bytes"),
        "{err}"
    );
}

/// A TOC of `n` minimal directory entries (26 bytes of JSON each).
fn many_dirs_json(n: usize) -> Vec<u8> {
    let mut json = br#"{"version":1,"entries":["#.to_vec();
    for i in 0..n {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(format!(r#"{{"name":"d{i}","type":"dir"}}"#).as_bytes());
    }
    json.extend_from_slice(b"]}");
    json
}

#[test]
fn tocs_with_too_many_entries_are_refused_while_parsing() {
    // Tiny compressed, huge parsed: the entry limit, not the size limits, must stop it.
    let json = many_dirs_json(MAX_TOC_ENTRIES + 1);
    let (blob, digest) = BlobBuilder::new(false).finish_with(&json);
    assert!(blob.len() < json.len() / 4, "{} compressed", blob.len());
    let err = EstargzReader::open(&blob, Some(&digest)).err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("more than {MAX_TOC_ENTRIES} entries")),
        "{msg}"
    );
    // At the limit the TOC is still read.
    let json = many_dirs_json(1000);
    let (blob, digest) = BlobBuilder::new(false).finish_with(&json);
    let r = EstargzReader::open(&blob, Some(&digest)).unwrap();
    assert_eq!(r.entries().len(), 1001, "1000 directories and the root");
}

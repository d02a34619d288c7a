//! Tests of [`Layer::ingest`]: small tars built with the `tar` crate, plus hand-made hostile ones.

use std::io::Write;

use super::*;
use crate::layer::tarwrite::pax_record;
use crate::layer::Compression;

/// Builds test tars header by header, with names written raw (the crate's setters refuse `..`).
struct TarBuf(tar::Builder<Vec<u8>>);

impl TarBuf {
    fn new() -> Self {
        TarBuf(tar::Builder::new(Vec::new()))
    }

    fn header(name: &str, ty: u8, size: u64, link: &str) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(tar::EntryType::new(ty));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h.set_username("alice").unwrap();
        h.set_groupname("users").unwrap();
        h
    }

    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.push(Self::header(name, b'0', data.len() as u64, ""), data)
    }

    fn node(&mut self, name: &str, ty: u8, link: &str) -> &mut Self {
        self.push(Self::header(name, ty, 0, link), b"")
    }

    fn pax(&mut self, ty: u8, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            pax_record(&mut data, k, v);
        }
        self.push(Self::header("PaxHeader", ty, data.len() as u64, ""), &data)
    }

    /// The tar with its two EOF blocks.
    fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn ingest(blob: &[u8]) -> Result<Layer> {
    Layer::ingest(blob, &IngestOptions::default())
}

fn content(layer: &Layer, e: &LayerEntry) -> Vec<u8> {
    let mut buf = vec![0u8; e.size as usize];
    layer.read_content(e, 0, &mut buf).unwrap();
    buf
}

fn names(layer: &Layer) -> Vec<&str> {
    layer.entries.iter().map(|e| e.name.as_str()).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn err_of(blob: &[u8]) -> String {
    match ingest(blob) {
        Ok(_) => panic!("ingest succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_every_kind() {
    let mut t = TarBuf::new();
    t.node("./", b'5', "")
        .node("etc/", b'5', "")
        .file("etc/passwd", b"root:x:0:0\n")
        .file("etc/empty", b"")
        .node("etc/link", b'2', "../x//y")
        .node("etc/hard", b'1', "./etc/passwd")
        .push(TarBuf::header("bin/contig", b'7', 3, ""), b"abc");
    let mut dev = TarBuf::header("dev/null", b'3', 0, "");
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    t.push(dev, b"");
    let mut dev = TarBuf::header("dev/sda", b'4', 0, "");
    dev.set_device_major(8).unwrap();
    t.push(dev, b"");
    let mut fifo = TarBuf::header("run/fifo", b'6', 0, "");
    fifo.set_mode(0o107777);
    t.push(fifo, b"");
    let layer = ingest(&t.finish()).unwrap();

    let kinds: Vec<_> = layer.entries.iter().map(|e| e.kind).collect();
    use EntryKind::*;
    assert_eq!(
        kinds,
        [Dir, Dir, Reg, Reg, Symlink, Hardlink, Reg, Char, Block, Fifo]
    );
    assert_eq!(layer.input.raw_entries, 10);
    let e = &layer.entries;
    assert_eq!(e[0].name, "");
    assert_eq!(e[2].name, "etc/passwd");
    assert_eq!(content(&layer, &e[2]), b"root:x:0:0\n");
    assert_eq!(e[2].digest, Some(Digest::of(b"root:x:0:0\n")));
    assert_eq!((e[2].uid, e[2].gid, e[2].mode), (1000, 100, 0o644));
    assert_eq!(
        (e[2].uname.as_str(), e[2].gname.as_str()),
        ("alice", "users")
    );
    assert_eq!((e[2].mtime, e[2].mtime_nsec), (1_700_000_000, 0));
    assert_eq!((e[3].size, e[3].digest), (0, Some(Digest::of(b""))));
    assert_eq!(e[4].link_name, "../x//y", "symlink targets stay raw");
    assert_eq!(
        e[5].link_name, "etc/passwd",
        "hardlink targets are normalised"
    );
    assert_eq!(content(&layer, &e[6]), b"abc");
    assert_eq!((e[7].dev_major, e[7].dev_minor), (1, 3));
    assert_eq!((e[8].dev_major, e[8].dev_minor), (8, 0));
    assert_eq!(e[9].mode, 0o7777, "file-type bits are dropped");
}

#[test]
fn pax_records_set_metadata_and_the_rest_is_kept() {
    let long = format!("{}/file", "d".repeat(150));
    let cap: &[u8] = b"\x01\x00\x00\x02\n\x00\xff\n";
    let mut t = TarBuf::new();
    t.pax(b'g', &[("uid", b"7"), ("comment", b"made by hand")])
        .pax(
            b'x',
            &[
                ("path", long.as_bytes()),
                ("gid", b"4000000000"),
                ("uname", "üser".as_bytes()),
                ("mtime", b"1700000000.123456789"),
                ("SCHILY.xattr.security.capability", cap),
                ("SCHILY.xattr.user.empty", b""),
                ("atime", b"1.5"),
                ("LIBARCHIVE.creationtime", b"3"),
            ],
        )
        .file("short", b"x")
        .pax(b'x', &[("mtime", b"-1.25"), ("uid", b"")])
        .file("old", b"")
        // The Go writer zeroes an overflowing ustar size and puts the real one in PAX.
        .pax(b'x', &[("size", b"5")])
        .push(TarBuf::header("sized", b'0', 0, ""), b"hello");
    let layer = ingest(&t.finish()).unwrap();
    assert_eq!(names(&layer), [long.as_str(), "old", "sized"]);

    let e = &layer.entries[0];
    assert_eq!((e.uid, e.gid), (7, 4_000_000_000));
    assert_eq!(e.uname, "üser");
    assert_eq!((e.mtime, e.mtime_nsec), (1_700_000_000, 123_456_789));
    assert_eq!(e.xattrs["security.capability"], cap);
    assert_eq!(e.xattrs["user.empty"], b"");
    let other: Vec<_> = e
        .pax_other
        .iter()
        .map(|(k, v)| (k.as_str(), &v[..]))
        .collect();
    assert_eq!(
        other,
        [("atime", &b"1.5"[..]), ("LIBARCHIVE.creationtime", b"3")]
    );

    let e = &layer.entries[1];
    assert_eq!((e.mtime, e.mtime_nsec), (-2, 750_000_000));
    assert_eq!(e.uid, 1000, "an empty local record cancels the global one");
    assert!(e.pax_other.is_empty(), "global comments are not per entry");
    assert_eq!(content(&layer, &layer.entries[2]), b"hello");
}

#[test]
fn later_duplicate_wins_in_its_position() {
    let mut t = TarBuf::new();
    t.file("a", b"1")
        .file("b", b"")
        .file("./a", b"2")
        .node("d/", b'5', "")
        .file("d/x", b"")
        .file("d", b"not a dir any more");
    let layer = ingest(&t.finish()).unwrap();
    assert_eq!(names(&layer), ["b", "a", "d/x", "d"]);
    assert_eq!(content(&layer, &layer.entries[1]), b"2");
    assert_eq!(layer.input.raw_entries, 6);
}

#[test]
fn names_are_normalised_and_escapes_rejected() {
    let mut t = TarBuf::new();
    t.file("/abs//./x/", b"").file("a/../b", b"");
    let layer = ingest(&t.finish()).unwrap();
    assert_eq!(names(&layer), ["abs/x", "b"]);

    for bad in ["../x", "a/../../x", "/.."] {
        let msg = err_of(&TarBuf::new().file(bad, b"").finish());
        assert_eq!(msg, format!("entry `{bad}`: escapes the layer root"));
    }
    let msg = err_of(&TarBuf::new().file("./", b"").finish());
    assert_eq!(msg, "entry `./`: the layer root must be a directory");
}

#[test]
fn hardlinks_must_name_an_earlier_file() {
    let cases = [
        ("missing", "entry `a`: hardlink to missing target `missing`"),
        (
            "../etc",
            "entry `a`: hardlink target `../etc` escapes the layer root",
        ),
        ("dir/", "entry `a`: hardlink to directory `dir/`"),
        ("later", "entry `a`: hardlink to missing target `later`"),
    ];
    for (target, want) in cases {
        let mut t = TarBuf::new();
        t.node("dir", b'5', "")
            .node("a", b'1', target)
            .file("later", b"");
        assert_eq!(err_of(&t.finish()), want);
    }
}

#[test]
fn landmarks_of_an_earlier_conversion_are_dropped() {
    let mut t = TarBuf::new();
    t.file(".no.prefetch.landmark", b"\x0f")
        .file("./stargz.index.json", b"{}")
        .file(".prefetch.landmark", b"\x0f")
        .file("sub/stargz.index.json", b"{}");
    let layer = ingest(&t.finish()).unwrap();
    assert_eq!(names(&layer), ["sub/stargz.index.json"]);
    assert_eq!(layer.input.raw_entries, 4);
}

#[test]
fn unknown_types_are_errors() {
    let msg = err_of(&TarBuf::new().file("a", b"").node("vol", b'V', "").finish());
    assert_eq!(msg, "entry `vol`: unsupported tar entry type 'V'");
}

#[test]
fn bad_header_checksum_is_an_error() {
    let mut tar = TarBuf::new().file("a", b"x").file("b", b"").finish();
    tar[1024 + 100] ^= 1; // b's mode field
    let msg = err_of(&tar);
    assert_eq!(
        msg,
        "entry `b`: invalid tar header checksum (header at offset 1024)"
    );
    assert!(matches!(
        ingest(&tar).err().unwrap().root(),
        Error::Format(_)
    ));
}

#[test]
fn truncated_streams_are_errors_but_missing_eof_blocks_are_not() {
    let tar = TarBuf::new()
        .file("a", b"x")
        .file("big", &[7u8; 3000])
        .finish();
    let end = tar.len() - 1024;
    let layer = ingest(&tar[..end]).unwrap();
    assert_eq!(names(&layer), ["a", "big"]);

    let msg = err_of(&tar[..1024 + 512 + 100]);
    assert_eq!(
        msg,
        "entry `big`: truncated tar stream: 100 of 3000 content bytes"
    );
    let msg = err_of(&tar[..1024 + 200]);
    assert_eq!(
        msg,
        "after entry `a`: truncated tar stream: partial header at offset 1024"
    );
    let msg = err_of(&tar[..end - 10]);
    assert!(
        msg.contains("truncated tar stream: missing padding"),
        "{msg}"
    );

    let gz = gzip(&tar);
    let err = ingest(&gz[..gz.len() / 2]).err().unwrap();
    assert!(err.to_string().contains("truncated gzip stream"), "{err}");
    assert!(matches!(err.root(), Error::Format(_)));
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    bad[mid - 8..mid + 8].fill(0xaa);
    let msg = ingest(&bad).err().unwrap().to_string();
    assert!(msg.contains("gzip"), "{msg}");
}

#[test]
fn gzip_and_zstd_inputs_and_the_diff_id() {
    let mut tar = TarBuf::new()
        .node("etc/", b'5', "")
        .file("etc/os-release", b"ID=test\n")
        .finish();
    // Record padding after the EOF blocks belongs to the diffID too.
    tar.resize(10240, 0);
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (blob, compression) in [
        (tar.clone(), Compression::None),
        (gzip(&tar), Compression::Gzip),
        (zst, Compression::Zstd),
    ] {
        let layer = ingest(&blob).unwrap();
        assert_eq!(names(&layer), ["etc", "etc/os-release"]);
        let s = &layer.input;
        assert_eq!(s.compression, compression);
        assert_eq!((s.digest, s.size), (Digest::of(&blob), blob.len() as u64));
        assert_eq!(s.diff_id, Digest::of(&tar));
        assert_eq!(s.uncompressed_size, 10240);
    }
}

#[test]
fn input_is_checked_against_the_descriptor() {
    let blob = gzip(&TarBuf::new().file("a", b"x").finish());
    let mut opts = IngestOptions {
        expected_digest: Some(Digest::of(&blob)),
        expected_size: Some(blob.len() as u64),
        ..Default::default()
    };
    Layer::ingest(&blob[..], &opts).unwrap();

    opts.expected_digest = Some(Digest::of(b"other"));
    let err = Layer::ingest(&blob[..], &opts).err().unwrap();
    assert!(matches!(err, Error::DigestMismatch { .. }));
    assert!(err.to_string().starts_with("layer digest: digest mismatch"));

    opts.expected_size = Some(1);
    let msg = Layer::ingest(&blob[..], &opts).err().unwrap().to_string();
    assert!(
        msg.starts_with("layer size mismatch: expected 1 bytes"),
        "{msg}"
    );
}

#[test]
fn source_failures_are_io_errors() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("connection reset"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(0x1f);
            buf[1] = 0x8b;
            self.0 -= n;
            Ok(n)
        }
    }
    let err = Layer::ingest(Failing(4), &IngestOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err.root(), Error::Io { .. }), "{err:?}");
    assert_eq!(err.root().to_string(), "read layer blob: connection reset");
}

#[test]
fn gnu_sparse_files_are_expanded() {
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(1024);
    h.set_mode(0o600);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].set_offset(0);
    gnu.sparse[0].set_length(512);
    gnu.sparse[1].set_offset(4096);
    gnu.sparse[1].set_length(512);
    gnu.set_real_size(8192);
    let mut data = vec![b'a'; 512];
    data.extend([b'b'; 512]);
    let mut t = TarBuf::new();
    t.push(h, &data).file("after", b"z");
    let layer = ingest(&t.finish()).unwrap();

    let mut want = vec![0u8; 8192];
    want[..512].fill(b'a');
    want[4096..4608].fill(b'b');
    let e = &layer.entries[0];
    assert_eq!((e.kind, e.size), (EntryKind::Reg, 8192));
    assert_eq!(content(&layer, e), want);
    assert_eq!(e.digest, Some(Digest::of(&want)));
    assert_eq!(content(&layer, &layer.entries[1]), b"z");
}

#[test]
fn pax_parsing_is_by_length() {
    let mut data = Vec::new();
    pax_record(&mut data, "SCHILY.xattr.user.x", b"a\nb=c\n");
    pax_record(&mut data, "k", b"");
    let records = parse_pax(&data).unwrap();
    assert_eq!(records[0].1, b"a\nb=c\n");
    assert_eq!(records[1], ("k".to_string(), Vec::new()));
    assert!(parse_pax(b"99 k=v\n").is_err());
    assert!(parse_pax(b"6 kv\n").is_err());
    assert_eq!(parse_pax_time(b"-0.5").unwrap(), (-1, 500_000_000));
    assert_eq!(parse_pax_time(b"12.0000000019").unwrap(), (12, 1));
    assert!(parse_pax_time(b"1.2.3").is_err());
    assert!(parse_pax_time(b"").is_err());
}

#[test]
fn extension_headers_need_an_entry() {
    let mut t = TarBuf::new();
    t.file("a", b"")
        .push(TarBuf::header("././@LongLink", b'K', 2, ""), b"b\0");
    let msg = err_of(&t.finish());
    assert_eq!(
        msg,
        "after entry `a`: truncated tar stream: extended header with no entry after it"
    );
}

//! The reader against hand-built blobs (here), hostile I/O, tampering and forged TOCs
//! ([`hostile`]), and blobs the Go reference built ([`reference`]).

mod hostile;
mod reference;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::*;
use crate::estargz::format::{self, TocEntry};

/// Assembles small eStargz / zstd:chunked blobs member by member, as the reference lays them
/// out: every chunk starts a member; the TOC and the footer close the blob.
pub(super) struct BlobBuilder {
    zstd: bool,
    level: u32,
    chunk_size: usize,
    out: Vec<u8>,
    entries: Vec<TocEntry>,
}

impl BlobBuilder {
    fn new(zstd: bool) -> Self {
        let mut b = BlobBuilder {
            zstd,
            level: 6,
            chunk_size: 4,
            out: Vec::new(),
            entries: Vec::new(),
        };
        // Stands in for the first tar headers, so no payload sits at offset 0.
        b.member(&[0u8; 512]);
        b
    }

    fn compress(&self, data: &[u8]) -> Vec<u8> {
        if self.zstd {
            zstd::bulk::compress(data, 3).unwrap()
        } else {
            let mut gz =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(self.level));
            gz.write_all(data).unwrap();
            gz.finish().unwrap()
        }
    }

    /// Append one member; returns its offset.
    fn member(&mut self, data: &[u8]) -> i64 {
        let off = self.out.len() as i64;
        let c = self.compress(data);
        self.out.extend_from_slice(&c);
        off
    }

    fn entry(&mut self, name: &str, kind: &str) -> &mut TocEntry {
        self.entries.push(TocEntry {
            name: name.into(),
            kind: kind.into(),
            mode: 0o755,
            ..Default::default()
        });
        self.entries.last_mut().unwrap()
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut pieces = vec![TocEntry {
            name: name.into(),
            kind: "reg".into(),
            size: data.len() as i64,
            mode: 0o100644,
            digest: Digest::of(data).to_string(),
            ..Default::default()
        }];
        let n = data.len().div_ceil(self.chunk_size);
        for (i, piece) in data.chunks(self.chunk_size).enumerate() {
            if i > 0 {
                pieces.push(TocEntry {
                    name: name.into(),
                    kind: "chunk".into(),
                    ..Default::default()
                });
            }
            let offset = self.member(piece);
            let e = pieces.last_mut().unwrap();
            e.offset = offset;
            e.chunk_offset = (i * self.chunk_size) as i64;
            // The reference writes 0 for the last piece unless it is full-sized.
            if n > 1 && piece.len() == self.chunk_size {
                e.chunk_size = piece.len() as i64;
            }
            e.chunk_digest = Digest::of(piece).to_string();
        }
        self.entries.extend(pieces);
        self
    }

    fn finish(self) -> (Vec<u8>, Digest) {
        let toc = Toc {
            version: 1,
            entries: self.entries.clone(),
        };
        self.finish_with(&toc.to_json())
    }

    fn finish_with(mut self, json: &[u8]) -> (Vec<u8>, Digest) {
        let toc_offset = self.out.len() as u64;
        if self.zstd {
            let c = zstd::bulk::compress(json, 3).unwrap();
            self.out
                .extend_from_slice(&format::zstd_skippable_header(c.len() as u32));
            let toc_offset = self.out.len() as u64;
            self.out.extend_from_slice(&c);
            self.out.extend_from_slice(&format::zstd_footer(
                toc_offset,
                c.len() as u64,
                json.len() as u64,
            ));
        } else {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            h.set_size(json.len() as u64);
            h.set_mode(0o444);
            tar.append_data(&mut h, format::TOC_TAR_NAME, json).unwrap();
            let tar = tar.into_inner().unwrap();
            self.member(&tar);
            self.out.extend_from_slice(&format::gzip_footer(toc_offset));
        }
        (self.out, Digest::of(json))
    }
}

const HOSTS: &[u8] = b"127.0.0.1 localhost\n";

/// A small layer touching every entry kind, a chunked file, an empty file, a hardlink, a
/// landmark and the TOC quirks (S_IFMT bits in mode, `./` root, owner names given once).
fn sample_builder(zstd: bool) -> BlobBuilder {
    let mut b = BlobBuilder::new(zstd);
    let root = b.entry("./", "dir");
    root.mode = 0o40711;
    root.uid = 7;
    root.user_name = "seven".into();
    b.entry("etc/", "dir");
    b.file("etc/hosts", HOSTS);
    b.file("etc/empty", b"");
    b.file("etc/four", b"abcd");
    b.entries.last_mut().unwrap().uid = 7;
    b.entry("usr/bin/sh", "symlink").link_name = "busybox".into();
    b.entry("usr/bin/ln", "hardlink").link_name = "/etc/hosts".into();
    let e = b.entry("dev/null", "char");
    (e.dev_major, e.dev_minor) = (1, 3);
    let e = b.entry("run", "dir");
    e.mode = 0o41777;
    e.xattrs.insert("user.k".into(), vec![0, 1, 2]);
    e.mod_time = "2020-09-13T12:26:40Z".into();
    b.file(format::PREFETCH_LANDMARK, &[format::LANDMARK_CONTENT]);
    b
}

fn sample(zstd: bool) -> (Vec<u8>, Digest) {
    sample_builder(zstd).finish()
}

#[test]
fn reads_a_hand_built_blob_in_both_compressions() {
    for zstd in [false, true] {
        let (blob, digest) = sample(zstd);
        let r = EstargzReader::open(&blob, Some(&digest)).unwrap();
        assert_eq!(r.toc_digest(), &digest);
        assert!(r.is_verified());
        let kind = if zstd {
            FooterKind::ZstdChunked
        } else {
            FooterKind::Estargz
        };
        assert_eq!(r.footer().kind, kind);
        let names: Vec<&str> = r.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "",
                "etc",
                "etc/hosts",
                "etc/empty",
                "etc/four",
                "usr",
                "usr/bin",
                "usr/bin/sh",
                "usr/bin/ln",
                "dev",
                "dev/null",
                "run"
            ]
        );
        let root = r.lookup("/").unwrap();
        assert_eq!(
            (root.mode, root.uid, root.uname.as_str()),
            (0o711, 7, "seven")
        );
        let usr = r.lookup("./usr/").unwrap();
        assert_eq!((usr.kind, usr.mode), (EntryKind::Dir, 0o755), "synthesised");
        let hosts = r.lookup("etc/hosts").unwrap();
        assert_eq!((hosts.size, hosts.mode, hosts.chunks.len()), (20, 0o644, 5));
        assert_eq!(r.read_file("etc/hosts").unwrap(), HOSTS);
        assert_eq!(
            r.read_file("/usr/bin/ln").unwrap(),
            HOSTS,
            "through the hardlink"
        );
        assert_eq!(r.lookup("usr/bin/ln").unwrap().link_name, "etc/hosts");
        assert_eq!(r.read_file("etc/empty").unwrap(), b"");
        assert_eq!(r.read_file("etc/four").unwrap(), b"abcd");
        assert_eq!(
            r.lookup("etc/four").unwrap().uname,
            "seven",
            "carried forward"
        );
        assert_eq!(r.lookup("usr/bin/sh").unwrap().link_name, "busybox");
        let null = r.lookup("dev/null").unwrap();
        assert_eq!(
            (null.kind, null.dev_major, null.dev_minor),
            (EntryKind::Char, 1, 3)
        );
        let run = r.lookup("run").unwrap();
        assert_eq!((run.mode, run.mtime), (0o1777, 1_600_000_000));
        assert_eq!(run.xattrs["user.k"], [0, 1, 2]);
        // Chunks tile the file and each fetch range ends at the next member.
        let mut next = 0;
        for c in &hosts.chunks {
            assert_eq!(c.file_offset, next);
            next += c.size;
            assert!(c.blob_offset < c.blob_end && c.blob_end <= r.footer().toc_offset);
            assert_eq!(
                r.read_chunk(c).unwrap(),
                &HOSTS[c.file_offset as usize..][..c.size as usize]
            );
        }
        assert!(r.read_file("etc").is_err() && r.read_file("nope").is_err());
        // The landmark is hidden but marks the prefetch region.
        assert!(r.lookup(format::PREFETCH_LANDMARK).is_none());
        assert_eq!(r.landmarks().len(), 1);
        let lm = r.landmarks()[0].chunks[0].blob_offset;
        assert_eq!(r.prefetch_end(), Some(lm));
        assert!(lm > hosts.chunks[4].blob_offset);
    }
}

#[test]
fn no_prefetch_landmark_and_no_landmark() {
    let mut b = BlobBuilder::new(false);
    b.file(format::NO_PREFETCH_LANDMARK, &[format::LANDMARK_CONTENT]);
    b.file("a", b"x");
    let (blob, _) = b.finish();
    assert_eq!(
        EstargzReader::open(&blob, None).unwrap().prefetch_end(),
        Some(0)
    );
    let mut b = BlobBuilder::new(false);
    b.file("a", b"x");
    let (blob, _) = b.finish();
    assert_eq!(
        EstargzReader::open(&blob, None).unwrap().prefetch_end(),
        None
    );
}

/// A blob source that serves every read as several smaller ones at random splits, and counts
/// the reads it was asked for.
pub(super) struct HostileBlob {
    inner: Vec<u8>,
    reads: AtomicU64,
    rng: Mutex<u64>,
}

impl HostileBlob {
    fn new(inner: Vec<u8>) -> Self {
        HostileBlob {
            inner,
            reads: AtomicU64::new(0),
            rng: Mutex::new(0x9e3779b97f4a7c15),
        }
    }
    fn next(&self) -> u64 {
        let mut s = self.rng.lock().unwrap();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }
}

impl BlobRead for HostileBlob {
    fn len(&self) -> u64 {
        self.inner.len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut done = 0;
        while done < buf.len() {
            let n = (1 + self.next() as usize % 97).min(buf.len() - done);
            self.inner
                .read_at(off + done as u64, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

#[test]
fn legacy_footer_blobs_read_unverified() {
    let mut b = BlobBuilder::new(false);
    b.file("a", b"legacy");
    for e in &mut b.entries {
        e.chunk_digest.clear();
        e.digest.clear();
    }
    let (mut blob, digest) = b.finish();
    let toc_offset = format::parse_footer(&blob[blob.len() - 51..], blob.len() as u64)
        .unwrap()
        .toc_offset;
    // The CRFS footer: an empty gzip member whose Extra field is the bare `%016xSTARGZ`.
    blob.truncate(blob.len() - 51);
    blob.extend_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0]);
    blob.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    blob.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    let r = EstargzReader::open(&blob, None).unwrap();
    assert_eq!(r.footer().kind, FooterKind::Legacy);
    assert_eq!(r.read_file("a").unwrap(), b"legacy");
    assert!(
        EstargzReader::open(&blob, Some(&digest)).is_err(),
        "no chunk digests to verify"
    );
}

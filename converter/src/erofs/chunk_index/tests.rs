//! Round trips through [`ChunkedWriter`], [`read_embedded_index`] and [`ChunkedImage`], checked
//! against the zstd CLI, and the reader against tampered blobs and counted reads.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::erofs::format::{
    ANNOTATION_CHUNK_INDEX_DIGEST, ANNOTATION_CHUNK_INDEX_RANGE,
    ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE, ANNOTATION_LAZYPULL_UNCOMPRESSED_DIGEST,
    ANNOTATION_UNCOMPRESSED_DIGEST, CHUNK_COMPRESSION_NONE, CHUNK_COMPRESSION_ZSTD,
    DEFAULT_CHUNK_SIZE,
};

const MIB: usize = 1 << 20;

use crate::sample::XorShift;

/// `len` bytes of runs of zeros, noise and text: some chunks compress well, some not at all.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seed | 1);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = (rng.below(200_000) as usize + 1).min(len - out.len());
        match rng.below(3) {
            0 => out.resize(out.len() + run, 0),
            1 => out.extend((0..run).map(|_| rng.next_u64() as u8)),
            _ => out.extend(b"lazypull erofs chunk ".iter().cycle().take(run)),
        }
    }
    out
}

/// Write `data` through a [`ChunkedWriter`] in uneven pieces.
fn wrap(data: &[u8], compression: u8, chunk_size: u64) -> (Vec<u8>, WrappedBlob) {
    let mut blob = Vec::new();
    let mut w = ChunkedWriter::new(&mut blob, compression, chunk_size, 3);
    for piece in data.chunks(77_777) {
        w.write_all(piece).unwrap();
    }
    w.flush().unwrap();
    let wrapped = w.finish().unwrap();
    (blob, wrapped)
}

/// `zstd -dc` of `blob`, or `None` (with the reason printed) when the CLI is missing.
fn zstd_cli(blob: &[u8]) -> Option<Vec<u8>> {
    let child = Command::new("zstd")
        .args(["-dc", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the zstd CLI is required under CI=true: {e}"
            );
            eprintln!("skipping the zstd CLI check: cannot run `zstd`: {e}");
            return None;
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let input = blob.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "zstd -dc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

/// Open `blob` as a consumer would: from the annotations alone.
fn open(blob: &[u8], w: &WrappedBlob, zstd: bool) -> (ChunkIndex, u64) {
    let ann = w.annotations(zstd);
    let range = parse_range_annotation(&ann[ANNOTATION_CHUNK_INDEX_RANGE]).unwrap();
    assert_eq!(
        ann[ANNOTATION_CHUNK_INDEX_RANGE],
        ann[ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE]
    );
    let digest: Digest = ann[ANNOTATION_CHUNK_INDEX_DIGEST].parse().unwrap();
    read_embedded_index(&blob.to_vec(), zstd, range, Some(&digest)).unwrap()
}

#[test]
fn round_trips_at_chunk_boundaries() {
    let sizes = [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB + MIB / 2];
    for (n, &size) in sizes.iter().enumerate() {
        let data = image(size, n as u64 + 7);
        for compression in [CHUNK_COMPRESSION_ZSTD, CHUNK_COMPRESSION_NONE] {
            let zstd = compression == CHUNK_COMPRESSION_ZSTD;
            let ctx = format!("size {size}, compression {compression}");
            let (blob, w) = wrap(&data, compression, DEFAULT_CHUNK_SIZE);
            assert_eq!(w.size, blob.len() as u64, "{ctx}");
            assert_eq!(w.digest, Digest::of(&blob), "{ctx}");
            assert_eq!(w.uncompressed_size, size as u64, "{ctx}");
            assert_eq!(w.chunks, size.div_ceil(MIB), "{ctx}");
            let ann = w.annotations(zstd);
            if zstd {
                assert_eq!(w.uncompressed_digest, Digest::of(&data), "{ctx}");
                assert_eq!(
                    ann[ANNOTATION_UNCOMPRESSED_DIGEST],
                    ann[ANNOTATION_LAZYPULL_UNCOMPRESSED_DIGEST]
                );
                assert_eq!(ann.len(), 6);
            } else {
                // Raw: the image, then the bare index; the DiffID is the blob's digest.
                assert_eq!(&blob[..size], &data[..], "{ctx}");
                assert_eq!(w.index_offset, size as u64, "{ctx}");
                assert_eq!(w.uncompressed_digest, w.digest, "{ctx}");
                assert_eq!(ann.len(), 4);
            }

            let (index, start) = open(&blob, &w, zstd);
            assert_eq!(start, w.index_offset);
            assert_eq!(index.entries().len(), w.chunks);
            assert_eq!(index.compression, compression);
            let img = ChunkedImage::new(blob.clone(), index, start);
            assert_eq!(img.len(), size as u64);
            assert_eq!(img.read_vec(0, size as u64).unwrap(), data, "{ctx}");
            let mut rng = XorShift::new(size as u64 + 99);
            for _ in 0..40 {
                let off = rng.below(size as u64 + 1);
                let len = rng.below((size as u64 - off).min(3 * MIB as u64) + 1);
                let got = img.read_vec(off, len).unwrap();
                assert_eq!(got, &data[off as usize..(off + len) as usize], "{ctx}");
            }
            assert!(img.read_vec(size as u64, 1).is_err(), "{ctx}");

            if zstd {
                let decoded = zstd::stream::decode_all(&blob[..]).unwrap();
                assert_eq!(decoded, data, "{ctx}: zstd crate");
                if let Some(cli) = zstd_cli(&blob) {
                    assert_eq!(cli.len(), data.len(), "{ctx}: zstd CLI");
                    assert!(cli == data, "{ctx}: zstd CLI output differs");
                    assert_eq!(Digest::of(&cli), w.uncompressed_digest, "{ctx}");
                }
            }
        }
    }
}

/// Small chunks of every length up to a few frames: every chunk, the last included, is exactly
/// one zstd frame, with nothing between the last frame and the index.
#[test]
fn every_chunk_is_exactly_one_frame() {
    for size in 0..64 {
        let data = image(size, size as u64 + 1);
        let (blob, w) = wrap(&data, CHUNK_COMPRESSION_ZSTD, 16);
        let (index, start) = open(&blob, &w, true);
        for i in 0..index.entries().len() {
            let (on_blob, _) = index.chunk_ranges(i, start);
            let frame = &blob[on_blob.start as usize..on_blob.end as usize];
            let frame_len = zstd::zstd_safe::find_frame_compressed_size(frame).unwrap() as u64;
            assert_eq!(
                frame_len,
                on_blob.end - on_blob.start,
                "size {size}, chunk {i}"
            );
        }
        let img = ChunkedImage::new(blob.clone(), index, start);
        assert_eq!(img.read_vec(0, size as u64).unwrap(), data);
        if size % 16 == 5 {
            if let Some(cli) = zstd_cli(&blob) {
                assert_eq!(cli, data);
            }
        }
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let data = image(3 * MIB + 12_345, 42);
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| wrap(&data, CHUNK_COMPRESSION_ZSTD, 64 << 10))
    };
    let (one, w1) = run(1);
    let (three, w3) = run(3);
    assert_eq!(w1, w3);
    assert!(one == three, "blobs differ between 1 and 3 threads");
}

#[test]
fn a_flipped_byte_fails_only_its_chunk() {
    let data = image(5 * MIB, 3);
    let (mut blob, w) = wrap(&data, CHUNK_COMPRESSION_ZSTD, DEFAULT_CHUNK_SIZE);
    let (index, start) = open(&blob, &w, true);
    let (stored, image) = index.chunk_ranges(2, start);
    blob[(stored.start + stored.end) as usize / 2] ^= 0x10;
    let img = ChunkedImage::new(blob, index, start);

    let err = img.read_vec(image.start + 10, 100).unwrap_err();
    let msg = err.to_string();
    let prefix = format!(
        "chunk 2 (blob [{}, {})): checksum",
        stored.start, stored.end
    );
    assert!(msg.starts_with(&prefix), "{msg}");
    assert!(matches!(err.root(), Error::DigestMismatch { .. }), "{msg}");
    // A read spanning into the chunk fails too; the neighbours read fine.
    assert!(img.read_vec(image.start - 1, 2).is_err());
    let before = img.read_vec(0, image.start).unwrap();
    assert_eq!(before, &data[..image.start as usize]);
    let after = img
        .read_vec(image.end, data.len() as u64 - image.end)
        .unwrap();
    assert_eq!(after, &data[image.end as usize..]);
}

#[test]
fn tampered_blobs_are_refused() {
    let data = image(2 * MIB, 5);
    let (blob, w) = wrap(&data, CHUNK_COMPRESSION_ZSTD, DEFAULT_CHUNK_SIZE);
    let range = (w.index_offset, Some(w.size));
    // A wrong expected index digest.
    let wrong = Digest::of(b"not the index");
    let err = read_embedded_index(&blob, true, range, Some(&wrong)).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    // The zstd index read as a raw layer's.
    assert!(read_embedded_index(&blob, false, (w.index_offset + 8, None), None).is_err());
    // A truncated blob: the range no longer fits.
    let short = blob[..blob.len() - 1].to_vec();
    assert!(read_embedded_index(&short, true, range, None).is_err());
}

/// A frame that holds more than its chunk is refused, not decompressed without bound.
#[test]
fn frames_claiming_more_than_their_chunk_are_refused() {
    let frame = zstd::bulk::compress(&[7u8; 5000], 3).unwrap();
    let mut blob = frame.clone();
    let start = blob.len() as u64;
    let index = ChunkIndex {
        compression: CHUNK_COMPRESSION_ZSTD,
        uncompressed_size: 1000,
        hash_size: 32,
        entries: vec![ChunkEntry {
            block_offset: 0,
            uncompressed_offset: 0,
            checksum: Some(*Digest::of(&frame).as_bytes()),
        }],
    };
    blob.extend_from_slice(&index.to_bytes());
    let img = ChunkedImage::new(blob.clone(), index.clone(), start);
    let msg = img.read_vec(0, 10).unwrap_err().to_string();
    assert!(msg.contains("claims 5000 bytes"), "{msg}");

    // Without a content size in the header, the bounded buffer still refuses it.
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
        .unwrap();
    let frame = c.compress(&[7u8; 5000]).unwrap();
    let mut index = index;
    index.entries[0].checksum = Some(*Digest::of(&frame).as_bytes());
    let start = frame.len() as u64;
    let img = ChunkedImage::new(frame, index, start);
    assert!(img.read_vec(0, 10).is_err());
}

/// Counts reads of the blob.
struct Counting {
    blob: Vec<u8>,
    reads: AtomicUsize,
}

impl BlobRead for Counting {
    fn len(&self) -> u64 {
        self.blob.len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.blob.read_at(off, buf)
    }
}

#[test]
fn one_read_per_chunk_and_cache_hits() {
    let chunk = 64 << 10;
    let data = image(20 * chunk as usize, 11);
    let (blob, w) = wrap(&data, CHUNK_COMPRESSION_ZSTD, chunk);
    let (index, start) = open(&blob, &w, true);
    let counting = Counting {
        blob,
        reads: AtomicUsize::new(0),
    };
    let img = ChunkedImage::new(&counting, index, start);
    let reads = || counting.reads.load(Ordering::Relaxed);
    let check = |off: u64, len: u64| {
        let got = img.read_vec(off, len).unwrap();
        assert_eq!(got, &data[off as usize..(off + len) as usize]);
    };

    check(10, 100);
    assert_eq!(reads(), 1, "one fetch for one chunk");
    check(200, 1000);
    check(chunk - 5, 5);
    assert_eq!(reads(), 1, "same chunk: cache hits");
    check(chunk - 5, 10);
    assert_eq!(reads(), 2, "the next chunk: one more fetch");
    check(3 * chunk, 3 * chunk);
    assert_eq!(reads(), 5, "three chunks, three fetches");
    // Eight chunks later, chunk 0 has been evicted.
    check(8 * chunk, 8 * chunk);
    assert_eq!(reads(), 13);
    check(0, 1);
    assert_eq!(reads(), 14);
}

#[test]
fn bad_options_fail_at_first_use() {
    let mut sink = Vec::new();
    let mut w = ChunkedWriter::new(&mut sink, 2, DEFAULT_CHUNK_SIZE, 3);
    assert!(w.write_all(b"x").is_err());
    assert!(matches!(w.finish(), Err(Error::Invalid(_))));
    let w = ChunkedWriter::new(&mut sink, CHUNK_COMPRESSION_ZSTD, 0, 3);
    assert!(matches!(w.finish(), Err(Error::Invalid(_))));
    assert!(sink.is_empty());
}

/// Without annotations, the index is found at the blob's end, where the annotation says, for
/// zstd and raw blobs and indexes of every size; blobs without one (or cut short) give none.
#[test]
fn the_trailing_index_is_found_without_annotations() {
    for (compression, zstd) in [
        (CHUNK_COMPRESSION_ZSTD, true),
        (CHUNK_COMPRESSION_NONE, false),
    ] {
        // 0 chunks, 1, and enough that the index is past the first 64 KiB tail read.
        for (len, chunk) in [(0, 4096u64), (3 * MIB + 5, MIB as u64), (6 * MIB, 4096)] {
            let data = image(len, len as u64 + 7);
            let (blob, w) = wrap(&data, compression, chunk);
            let ann = w.annotations(zstd);
            let (start, _) = parse_range_annotation(&ann[ANNOTATION_CHUNK_INDEX_RANGE]).unwrap();
            let found = find_trailing_index(&blob).unwrap();
            assert_eq!(
                found,
                Some(TrailingIndex { start, zstd }),
                "{len} bytes in {chunk}-byte chunks, zstd {zstd}"
            );
            let digest: Digest = ann[ANNOTATION_CHUNK_INDEX_DIGEST].parse().unwrap();
            read_embedded_index(&blob, zstd, (start, None), Some(&digest)).unwrap();
            // One byte short: no index ends the blob any more.
            assert_eq!(find_trailing_index(&blob[..blob.len() - 1]).unwrap(), None);
        }
    }
    assert_eq!(find_trailing_index(&image(100_000, 3)).unwrap(), None);
    assert_eq!(find_trailing_index(&Vec::<u8>::new()).unwrap(), None);
}

/// An index header whose count disagrees with the entries after it is a corrupt index, said
/// as such, rather than a blob without an index.
#[test]
fn a_miscounted_trailing_index_is_corrupt() {
    for (compression, zstd) in [
        (CHUNK_COMPRESSION_ZSTD, true),
        (CHUNK_COMPRESSION_NONE, false),
    ] {
        let data = image(3 * MIB + 5, 11);
        let (blob, w) = wrap(&data, compression, MIB as u64);
        let ann = w.annotations(zstd);
        let (start, _) = parse_range_annotation(&ann[ANNOTATION_CHUNK_INDEX_RANGE]).unwrap();
        let header = start as usize + if zstd { 8 } else { 0 };
        for lie in [3u32, 5, u32::MAX] {
            let mut bad = blob.clone();
            bad[header + 16..header + 20].copy_from_slice(&lie.to_le_bytes());
            let err = find_trailing_index(&bad).unwrap_err().to_string();
            assert!(
                err.contains(&format!("counts {lie} chunks, but 4 entries follow")),
                "zstd {zstd}, count {lie}: {err}"
            );
        }
        // The last entry cut off: the header's count no longer matches.
        let entry_len = 48;
        let err = find_trailing_index(&blob[..blob.len() - entry_len])
            .unwrap_err()
            .to_string();
        assert!(err.contains("counts 4 chunks, but 3 entries"), "{err}");
    }
}

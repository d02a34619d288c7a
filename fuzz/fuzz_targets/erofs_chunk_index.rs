//! The erofs-image-spec chunk index: discovery at the end of a blob, the skippable frame, the
//! header and entry rules of §3.4, and `ChunkedImage` reading (verifying, decompressing) the
//! image through it, with the EROFS reader on top.
//!
//! Input: one mode byte, then the blob (even), or a bare index payload for `ChunkIndex::parse`
//! whose section starts at the offset the first 8 bytes give (odd).
#![no_main]

use lazypull_converter::erofs::chunk_index::{
    find_trailing_index, parse_range_annotation, read_embedded_index, ChunkIndex, ChunkedImage,
};
use lazypull_converter::BlobRead;
use lazypull_fuzz::exercise_erofs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        let Some((start, payload)) = rest.split_first_chunk::<8>() else {
            return;
        };
        if let Ok(index) = ChunkIndex::parse(payload, u64::from_le_bytes(*start)) {
            check_index(&index, u64::from_le_bytes(*start));
        }
        if let Ok(s) = std::str::from_utf8(payload) {
            let _ = parse_range_annotation(s);
        }
        return;
    }
    let blob = rest;
    let Ok(Some(found)) = find_trailing_index(blob) else {
        return;
    };
    let Ok((index, start)) = read_embedded_index(&blob, found.zstd, (found.start, None), None)
    else {
        return;
    };
    check_index(&index, start);
    let image = ChunkedImage::new(blob, index, start);
    // Reads that straddle chunk ends, then the EROFS image they make up.
    let len = image.len().min(1 << 20);
    let mut buf = vec![0u8; 5000];
    let mut off = 0;
    while off < len {
        let n = (buf.len() as u64).min(image.len() - off) as usize;
        if image.read_at(off, &mut buf[..n]).is_err() {
            return;
        }
        off += 4093;
    }
    exercise_erofs(&image);
});

/// What a parsed index promises: it writes back to bytes that parse to itself, and its lookups
/// stay inside it.
fn check_index(index: &ChunkIndex, start: u64) {
    let again = ChunkIndex::parse(&index.to_bytes(), start).expect("a parsed index re-parses");
    assert_eq!(&again, index);
    let n = index.entries().len();
    for i in 0..n.min(64) {
        let (blob, image) = index.chunk_ranges(i, start);
        assert!(
            blob.start <= blob.end && image.start <= image.end,
            "chunk {i}"
        );
    }
    let size = index.uncompressed_size;
    for (off, len) in [
        (0, 1),
        (size / 2, 4096),
        (size.saturating_sub(1), 1),
        (size, 1),
    ] {
        let r = index.chunks_for(off, len);
        assert!(
            r.start <= r.end && r.end <= n,
            "chunks_for({off}, {len}) = {r:?} of {n}"
        );
    }
}

//! Shared pieces of lazypull's fuzz targets: walks that drive each reader through every entry
//! point a user reaches, and the wrappers that turn fuzz bytes into a well-framed blob so the
//! fuzzer gets past the footers to the TOC's JSON and validation.
//!
//! The walks ignore errors (hostile input must give one, which is fine) but bound what they
//! read, so a target's time and memory per input stay small whatever the input claims. A panic,
//! a hang or an allocation past libFuzzer's limit is the finding.

use std::io::Write;

use lazypull_converter::erofs::{ErofsReader, Inode};
use lazypull_converter::estargz::{format, EstargzReader};
use lazypull_converter::layer::EntryKind;
use lazypull_converter::BlobRead;

/// Bytes of file content one walk reads at most: enough to cross chunk and block boundaries.
pub const READ_BUDGET: u64 = 4 << 20;
/// Inodes one EROFS walk visits at most.
const INODE_BUDGET: usize = 4096;

/// Split `[len: u32 LE][payload: len bytes][rest]`; a short input gives an empty payload.
pub fn split_payload(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return (&[], data);
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    rest.split_at(len)
}

/// The inverse of [`split_payload`], for the seed generator.
pub fn join_payload(payload: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out.extend_from_slice(rest);
    out
}

/// A gzip eStargz blob: `payload`, then `json` as the TOC (a gzip member holding a tar whose
/// only entry is `stargz.index.json`), then the 51-byte footer pointing at it.
pub fn gzip_blob(payload: &[u8], json: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    // A fixed name and mode always fit a ustar header.
    header.set_path(format::TOC_TAR_NAME).unwrap();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(json);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(payload.to_vec(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let mut blob = gz.finish().unwrap();
    blob.extend_from_slice(&format::gzip_footer(payload.len() as u64));
    blob
}

/// A zstd:chunked blob: `payload`, then `json` as one zstd frame, then the footer frame.
pub fn zstd_blob(payload: &[u8], json: &[u8]) -> Vec<u8> {
    let toc = zstd::bulk::compress(json, 1).unwrap();
    let mut blob = payload.to_vec();
    blob.extend_from_slice(&toc);
    blob.extend_from_slice(&format::zstd_footer(
        payload.len() as u64,
        toc.len() as u64,
        json.len() as u64,
    ));
    blob
}

/// The eStargz-family targets' input: one mode byte, then either the whole blob (even mode
/// byte) or `[len][payload][json]` (odd), which `wrap` makes a well-formed blob of `payload`
/// with `json` as its TOC, so that mutations land in the JSON rather than the framing.
pub fn fuzz_toc_blob(data: &[u8], wrap: fn(&[u8], &[u8]) -> Vec<u8>) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        exercise_estargz(&rest);
    } else {
        let (payload, json) = split_payload(rest);
        exercise_estargz(&wrap(payload, json));
    }
}

/// Open an eStargz / zstd:chunked blob unverified, then verified against the TOC digest it
/// has, and read every entry through the reader's public API (bounded by [`READ_BUDGET`]).
pub fn exercise_estargz<B: BlobRead>(blob: &B) {
    let Ok(reader) = EstargzReader::open(blob, None) else {
        return;
    };
    walk_estargz(&reader);
    // Verified, the reader also insists on every chunk's digest, so it may refuse what the
    // unverified open took.
    let digest = *reader.toc_digest();
    if let Ok(verified) = EstargzReader::open(blob, Some(&digest)) {
        walk_estargz(&verified);
    }
}

fn walk_estargz<B: BlobRead>(reader: &EstargzReader<B>) {
    let _ = (
        reader.footer(),
        reader.toc().entries.len(),
        reader.prefetch_end(),
    );
    let mut budget = READ_BUDGET;
    for entry in reader.entries() {
        assert!(
            reader.lookup(&entry.name).is_some(),
            "entry `{}` is listed but not found by name",
            entry.name
        );
        let Some(target) = reader.resolve(entry) else {
            continue;
        };
        if target.kind != EntryKind::Reg {
            continue;
        }
        if target.size <= budget.min(1 << 20) {
            budget -= target.size;
            if let Ok(data) = reader.read_file(&entry.name) {
                assert_eq!(data.len() as u64, target.size, "`{}`", entry.name);
            }
            continue;
        }
        for chunk in &target.chunks {
            if chunk.size > budget {
                break;
            }
            budget -= chunk.size;
            if let Ok(data) = reader.read_chunk(chunk) {
                assert_eq!(data.len() as u64, chunk.size, "`{}`", entry.name);
            }
        }
    }
}

/// Open an EROFS image and visit what a mount would: every directory by `read_dir`, each name
/// by `lookup` and `resolve`, each inode's xattrs, symlink target and data (bounded), then the
/// reader's own `walk`.
pub fn exercise_erofs<B: BlobRead>(blob: B) {
    let Ok(reader) = ErofsReader::open(blob) else {
        return;
    };
    let _ = reader.superblock();
    let Ok(root) = reader.inode(reader.root()) else {
        return;
    };
    let mut budget = READ_BUDGET;
    let mut seen_dirs = std::collections::HashSet::new();
    let mut queue = vec![(String::new(), root)];
    let mut visited = 0;
    while let Some((path, inode)) = queue.pop() {
        visited += 1;
        if visited > INODE_BUDGET {
            break;
        }
        visit_inode(&reader, &inode, &mut budget);
        let _ = reader.resolve(&path);
        if inode.kind != EntryKind::Dir || !seen_dirs.insert(inode.nid) {
            continue;
        }
        let Ok(entries) = reader.read_dir(&inode) else {
            continue;
        };
        for entry in entries {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let _ = reader.lookup(&inode, &entry.name);
            if let Ok(child) = reader.inode(entry.nid) {
                let name = String::from_utf8_lossy(&entry.name);
                queue.push((format!("{path}/{name}"), child));
            }
        }
    }
    if let Ok(tree) = reader.walk() {
        for (_, inode) in tree.iter().take(INODE_BUDGET) {
            let _ = reader.xattrs(inode);
        }
    }
}

fn visit_inode<B: BlobRead>(reader: &ErofsReader<B>, inode: &Inode, budget: &mut u64) {
    let _ = reader.xattrs(inode);
    match inode.kind {
        EntryKind::Symlink => {
            let _ = reader.read_link(inode);
        }
        EntryKind::Reg | EntryKind::Dir => {
            // The start and the end of the file, in reads that straddle block boundaries.
            let mut buf = vec![0u8; 6000];
            for off in [0, inode.size.saturating_sub(3000)] {
                if *budget < buf.len() as u64 {
                    return;
                }
                *budget -= buf.len() as u64;
                if let Ok(n) = reader.read(inode, off, &mut buf) {
                    // Short only at the end of the file.
                    let want = inode.size.saturating_sub(off).min(buf.len() as u64);
                    assert_eq!(n as u64, want, "nid {} read at {off}", inode.nid);
                }
            }
        }
        _ => {}
    }
}

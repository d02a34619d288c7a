//! Hostile content through the real `lazypull mount`: TOCs with millions of entries, absurd
//! sizes, escaping or NUL names, chunks shared between files, EROFS images with a directory
//! cycle or out-of-range nids, chunk indexes whose count lies. Each is refused (or, for what a
//! lazy mount only meets on demand, answered with an error) with a message naming the layer and
//! what is wrong, in bounded time and memory; the parsers' own unit tests cover the same
//! ground case by case, these prove the binary's paths.

use std::io::Write;
use std::mem::offset_of;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use lazypull_converter::erofs::chunk_index::{find_trailing_index, ChunkIndex};
use lazypull_converter::erofs::{format as erofs_format, ErofsReader, Nid};
use lazypull_converter::estargz::format::gzip_footer;
use lazypull_converter::estargz::{Toc, TocEntry, MAX_TOC_ENTRIES};

use crate::mount::{fuse_support, Served};
use crate::util::tarbuild::LayerTar;
use crate::util::{
    convert_ok, gzip_layout, have_tool, lazypull_bin, oci_ref, run_measured, sha256, skip_unless,
    Layout, Measured,
};

/// Why refused mounts cannot be run and measured here, if they cannot.
fn measure_support() -> Result<(), String> {
    fuse_support()?;
    match have_tool("time") {
        true => Ok(()),
        false => Err("no GNU time (Debian package `time`) to measure peak memory".into()),
    }
}

/// `lazypull mount` of `blob` that must fail: its measured run and its stderr.
fn mount_refused(blob: &Path, trust: &[&str], timeout: Duration) -> (Measured, String) {
    let dir = blob.parent().unwrap();
    let mnt = dir.join("mnt");
    let m = run_measured(
        Command::new(lazypull_bin())
            .arg("mount")
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .args(trust)
            .arg(blob)
            .arg(&mnt),
        None,
        timeout,
    );
    let stderr = String::from_utf8_lossy(&m.output.stderr).into_owned();
    assert!(
        !m.output.status.success(),
        "mounting hostile {} succeeded: {stderr}",
        blob.display(),
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&*mnt.to_string_lossy()),
        "a refused mount left {} mounted",
        mnt.display()
    );
    (m, stderr)
}

/// An eStargz blob of one gzip member of zeros (what forged entries point into), the TOC (JSON
/// `json`) and the footer.
fn toc_only_blob(json: &[u8]) -> Vec<u8> {
    let mut payload = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    payload.write_all(&[0u8; 4096]).unwrap();
    let mut blob = payload.finish().unwrap();
    let toc_offset = blob.len() as u64;
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "stargz.index.json", json).unwrap();
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    blob.extend_from_slice(&gz.finish().unwrap());
    blob.extend_from_slice(&gzip_footer(toc_offset));
    blob
}

/// The TOC's JSON and its digest as `--toc-digest` takes it.
fn toc_json(entries: Vec<TocEntry>) -> (Vec<u8>, String) {
    let json = serde_json::to_vec(&Toc {
        version: 1,
        entries,
    })
    .unwrap();
    let digest = sha256(&json);
    (json, digest)
}

/// Three million entries in a few MiB of gzip: refused while parsing, long before the memory
/// the parsed entries would take (15 million took a mount to 15 GiB before the limit).
#[test]
fn a_toc_with_millions_of_entries_is_refused_in_bounded_memory() {
    let support = measure_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let n = 3_000_000;
    let mut json = br#"{"version":1,"entries":["#.to_vec();
    for i in 0..n {
        if i > 0 {
            json.push(b',');
        }
        write!(json, r#"{{"name":"d{i}","type":"dir"}}"#).unwrap();
    }
    json.extend_from_slice(b"]}");
    let digest = sha256(&json);
    let blob = tmp.path().join("huge-toc.stargz");
    std::fs::write(&blob, toc_only_blob(&json)).unwrap();
    let size = std::fs::metadata(&blob).unwrap().len();
    drop(json);

    let (m, stderr) = mount_refused(&blob, &["--toc-digest", &digest], Duration::from_secs(300));
    println!(
        "{n}-entry TOC ({} MiB of JSON in {} KiB of gzip): refused in {:.1} s, peak RSS {} MiB",
        n * 26 / (1 << 20),
        size / 1024,
        m.elapsed.as_secs_f64(),
        m.max_rss_mib
    );
    assert!(
        stderr.contains(&format!("more than {MAX_TOC_ENTRIES} entries")),
        "{}",
        stderr
    );
    assert!(
        stderr.contains("huge-toc.stargz"),
        "names the blob: {}",
        stderr
    );
    // Parsing stops at the limit: 2 million entries of ~400 bytes, plus the JSON.
    assert!(m.max_rss_mib < 2048, "peak RSS {} MiB", m.max_rss_mib);
}

fn reg(name: &str, size: i64, offset: i64) -> TocEntry {
    TocEntry {
        name: name.into(),
        kind: "reg".into(),
        size,
        offset,
        chunk_digest: sha256(b"x"),
        ..Default::default()
    }
}

/// Forged TOCs (well-formed JSON, trusted digest) that lie about names, sizes and chunks.
#[test]
fn forged_tocs_are_refused_naming_the_entry() {
    let support = measure_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let hardlink = |name: &str, target: &str| TocEntry {
        name: name.into(),
        kind: "hardlink".into(),
        link_name: target.into(),
        ..Default::default()
    };
    let cases: Vec<(&str, Vec<TocEntry>, &[&str])> = vec![
        (
            "absurd-size",
            vec![reg("big", 1 << 62, 0)],
            &["`big`", "chunk limit"],
        ),
        (
            "escaping-name",
            vec![reg("a/../../etc/shadow", 1, 0)],
            &["escapes the root"],
        ),
        ("nul-name", vec![reg("a\0b", 1, 0)], &["NUL"]),
        (
            "shared-chunk",
            vec![reg("one", 1, 0), reg("two", 1, 0)],
            &["`two`", "also used by entry `one`"],
        ),
        (
            "hardlink-loop",
            vec![hardlink("h", "g"), hardlink("g", "h")],
            &["loop"],
        ),
        (
            "negative-offset",
            vec![reg("neg", 1, -4096)],
            &["`neg`", "negative offset"],
        ),
    ];
    for (name, entries, wants) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (json, digest) = toc_json(entries);
        let blob = tmp.path().join(format!("{name}.stargz"));
        std::fs::write(&blob, toc_only_blob(&json)).unwrap();
        let (_, stderr) = mount_refused(&blob, &["--toc-digest", &digest], Duration::from_secs(30));
        for want in wants
            .iter()
            .chain(&[&*blob.file_name().unwrap().to_string_lossy()])
        {
            assert!(
                stderr.contains(want),
                "{name}: want `{want}` in: {}",
                stderr
            );
        }
    }
}

/// An uncompressed chunk-indexed EROFS layer blob converted from `tar`, as bytes.
fn erofs_raw_blob(dir: &Path, tar: &[u8]) -> Vec<u8> {
    let src = dir.join("src");
    gzip_layout(&src, "t", &[("layer", tar)]);
    let out = dir.join("out");
    let report = convert_ok(&[
        "--format",
        "erofs",
        "--erofs-compression",
        "none",
        &oci_ref(&src, "t"),
        &oci_ref(&out, "t"),
    ]);
    let digest = report["manifests"][0]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    Layout::new(&out).blob(&digest)
}

/// Where the directory entry naming `child` lies in the image: within the blocks that reading
/// `parent`'s entries touched, the one 12-byte record (nid, name offset, file type, reserved)
/// holding `child`'s nid.
fn dirent_offset(image: &[u8], parent: &str, child: &str) -> usize {
    let r = ErofsReader::open(image).unwrap();
    let parent_inode = r.inode(r.resolve(parent).unwrap().unwrap()).unwrap();
    let child_nid = r.resolve(&format!("{parent}/{child}")).unwrap().unwrap();
    let bs = r.block_size() as usize;
    let touched = std::sync::Mutex::new(Vec::new());
    let rec = Recording {
        image,
        block_size: bs,
        touched: &touched,
    };
    ErofsReader::open(&rec)
        .unwrap()
        .read_dir(&parent_inode)
        .unwrap();
    let pattern = child_nid.0.to_le_bytes();
    // The parent's own `.` entry sorts first, a few records before the child's.
    let dot = r.resolve(parent).unwrap().unwrap().0.to_le_bytes();
    let after_dot =
        |o: usize| (1..=8).any(|k| o >= 12 * k && image[o - 12 * k..o - 12 * k + 8] == dot);
    let mut hits: Vec<usize> = touched
        .into_inner()
        .unwrap()
        .into_iter()
        .flat_map(|b| b..(b + bs).min(image.len()).saturating_sub(12))
        .filter(|&o| {
            image[o..o + 8] == pattern
                && (u16::from_le_bytes([image[o + 8], image[o + 9]]) as usize) < bs
                && (1..=7).contains(&image[o + 10])
                && image[o + 11] == 0
                && after_dot(o)
        })
        .collect();
    hits.dedup();
    assert_eq!(hits.len(), 1, "dirent of `{child}` in `{parent}`: {hits:?}");
    hits[0]
}

/// A blob that notes the block starts it was asked for.
struct Recording<'a> {
    image: &'a [u8],
    block_size: usize,
    touched: &'a std::sync::Mutex<Vec<usize>>,
}

impl lazypull_converter::BlobRead for Recording<'_> {
    fn len(&self) -> u64 {
        self.image.len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> lazypull_converter::Result<()> {
        let bs = self.block_size;
        let mut t = self.touched.lock().unwrap();
        for b in (off as usize / bs..(off as usize + buf.len()).div_ceil(bs)).map(|b| b * bs) {
            if !t.contains(&b) {
                t.push(b);
            }
        }
        self.image.read_at(off, buf)
    }
}

/// Write `bytes` at `at` in the raw blob's image and refresh that chunk's checksum in the
/// trailing index, as a hostile producer would (the index then vouches for the bad metadata).
fn patch_image(blob: &mut [u8], at: usize, bytes: &[u8]) {
    blob[at..at + bytes.len()].copy_from_slice(bytes);
    // The superblock's CRC32C covers the rest of block 0, where small directories live.
    let sb = erofs_format::SUPER_OFFSET as usize;
    let block = 1usize << blob[sb + offset_of!(erofs_format::SuperBlock, blkszbits)];
    if at < block {
        let sum_at = sb + offset_of!(erofs_format::SuperBlock, checksum);
        blob[sum_at..sum_at + 4].fill(0);
        let sum = erofs_format::superblock_checksum(&blob[sb..block]);
        blob[sum_at..sum_at + 4].copy_from_slice(&sum.to_le_bytes());
    }
    let found = find_trailing_index(&blob[..])
        .unwrap()
        .expect("trailing index");
    assert!(!found.zstd);
    let start = found.start as usize;
    let index = ChunkIndex::parse(&blob[start..], found.start).unwrap();
    let i = (0..index.entries().len())
        .find(|&i| index.chunk_ranges(i, found.start).0.contains(&(at as u64)))
        .unwrap();
    let (on_blob, _) = index.chunk_ranges(i, found.start);
    let sum = sha256_raw(&blob[on_blob.start as usize..on_blob.end as usize]);
    // The header, then per entry its offsets and the 32-byte SHA-256.
    let head = size_of::<erofs_format::ChunkEntryHead>();
    let at = start + size_of::<erofs_format::ChunkIndexHeader>() + i * (head + 32) + head;
    blob[at..at + 32].copy_from_slice(&sum);
}

fn sha256_raw(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// A directory entry pointing at its own ancestor and one pointing past the image: the lazy
/// mount reads metadata on demand, so it cannot refuse them up front. A directory holding a
/// nid past the end fails as a whole (EIO, the log naming the entry and the nid); the kernel
/// refuses the loop (a directory inode met under a second name); nothing hangs, and the rest
/// of the layer is served.
#[test]
fn erofs_directory_cycles_and_bad_nids_fail_only_their_names() {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let mut t = LayerTar::new();
    t.dir("cyc", 0o755, 1)
        .dir("cyc/sub", 0o755, 1)
        .dir("cyc/sub/loop", 0o755, 1)
        .file("cyc/sub/kept", b"still here\n", 0o644, 1)
        .dir("bad", 0o755, 1)
        .file("bad/gone", b"replaced by a bad nid\n", 0o644, 1)
        .dir("fine", 0o755, 1)
        .file("fine/data", &[7u8; 100_000], 0o644, 1);
    let mut blob = erofs_raw_blob(tmp.path(), &t.finish());
    let found = find_trailing_index(&blob[..]).unwrap().unwrap();
    let image = blob[..found.start as usize].to_vec();
    let cyc_nid: Nid = ErofsReader::open(&image[..])
        .unwrap()
        .resolve("cyc")
        .unwrap()
        .unwrap();
    let bad_nid = u64::MAX >> 8;
    let loop_at = dirent_offset(&image, "cyc/sub", "loop");
    let gone_at = dirent_offset(&image, "bad", "gone");
    patch_image(&mut blob, loop_at, &cyc_nid.0.to_le_bytes());
    patch_image(&mut blob, gone_at, &bad_nid.to_le_bytes());
    let path = tmp.path().join("hostile.erofs");
    std::fs::write(&path, &blob).unwrap();

    let mnt = tmp.path().join("mnt");
    let served = Served::start_with(
        &["--insecure-skip-verify", "--no-background-fetch"],
        &path.display().to_string(),
        &mnt,
        &tmp.path().join("cache"),
    );
    let start = Instant::now();
    // `find` ends (no endless descent through the loop).
    let find = crate::util::run_with_timeout(
        Command::new("find").arg(&mnt),
        None,
        Duration::from_secs(30),
    );
    let listed = String::from_utf8_lossy(&find.stdout);
    assert!(
        listed.lines().count() < 20,
        "find descended into the cycle: {listed}"
    );
    assert!(!find.status.success(), "find met no error: {listed}");
    // The loop is not served as a second copy of `cyc`.
    let looped = std::fs::metadata(mnt.join("cyc/sub/loop")).unwrap_err();
    assert_eq!(looped.raw_os_error(), Some(libc::ELOOP), "{looped}");
    assert!(
        std::fs::metadata(mnt.join("cyc/sub/loop/sub/kept")).is_err(),
        "the cycle was served as a real directory"
    );
    assert_eq!(
        std::fs::read(mnt.join("cyc/sub/kept")).unwrap(),
        b"still here\n"
    );
    let gone = std::fs::metadata(mnt.join("bad/gone")).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::EIO), "{gone}");
    assert_eq!(
        std::fs::read(mnt.join("fine/data")).unwrap(),
        vec![7u8; 100_000]
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    let log = served.stop();
    assert!(
        log.contains(&format!("nid {bad_nid}")) && log.contains("`gone`"),
        "the log names the entry and the bad nid: {log}"
    );
}

/// A chunk index whose count disagrees with its entries: refused when the mount opens the layer.
#[test]
fn chunk_index_with_a_wrong_count_is_refused() {
    let support = measure_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let mut t = LayerTar::new();
    t.dir("d", 0o755, 1).file("d/a", &[1u8; 3 << 20], 0o644, 1);
    let blob = erofs_raw_blob(tmp.path(), &t.finish());
    let found = find_trailing_index(&blob[..]).unwrap().unwrap();
    let count_at = found.start as usize + offset_of!(erofs_format::ChunkIndexHeader, num_chunks);
    let count = u32::from_le_bytes(blob[count_at..count_at + 4].try_into().unwrap());
    assert!(count >= 2, "{count} chunks");
    for (what, lie) in [
        ("more", count + 1),
        ("fewer", count - 1),
        ("huge", u32::MAX),
    ] {
        let mut bad = blob.clone();
        bad[count_at..count_at + 4].copy_from_slice(&lie.to_le_bytes());
        let path = tmp.path().join(format!("count-{what}.erofs"));
        std::fs::write(&path, &bad).unwrap();
        let (m, stderr) =
            mount_refused(&path, &["--insecure-skip-verify"], Duration::from_secs(30));
        assert!(
            stderr.contains(&*path.file_name().unwrap().to_string_lossy()),
            "{what}: names the blob: {}",
            stderr
        );
        assert!(
            stderr.contains("corrupt chunk index")
                && stderr.contains(&format!("counts {lie} chunks, but {count} entries")),
            "{what}: {}",
            stderr
        );
        assert!(m.max_rss_mib < 512, "{what}: {} MiB", m.max_rss_mib);
        println!("chunk index counting {what} chunks: {}", stderr.trim());
    }
}

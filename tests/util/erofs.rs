//! EROFS outputs judged without the converter's code: an own reader of the erofs-image-spec
//! chunk index (§3.4) that checks every rule it states, kernel mounts (EROFS loop mounts,
//! read-only overlays) that always come down again, and `fsck.erofs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run_with_timeout, sha256, TIMEOUT};

/// Descriptor annotations of an EROFS layer (spec §2.3, then lazypull's mirrors).
pub const ANN_RANGE: &str = "org.erofs.chunk-index.range";
pub const ANN_INDEX_DIGEST: &str = "org.erofs.chunk-index.digest";
pub const ANN_UNCOMPRESSED_DIGEST: &str = "org.erofs.uncompressed-digest";
pub const ANN_LP_RANGE: &str = "containerd.io/snapshot/lazypull/erofs.chunk-index.range";
pub const ANN_LP_INDEX_DIGEST: &str = "containerd.io/snapshot/lazypull/erofs.chunk-index.digest";
pub const ANN_LP_UNCOMPRESSED_DIGEST: &str =
    "containerd.io/snapshot/lazypull/erofs.uncompressed-digest";
pub const ANN_LP_PREFETCH_RANGE: &str = "containerd.io/snapshot/lazypull/erofs.prefetch-range";
pub const ANN_SOURCE_DIGEST: &str = "org.lazypull.source.digest";

pub const MEDIA_TYPE_EROFS: &str = "application/vnd.erofs";
pub const MEDIA_TYPE_EROFS_ZSTD: &str = "application/vnd.erofs+zstd";

/// The zstd skippable frame lazypull wraps the index in (`0x184D2A50`, little-endian).
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2A, 0x4D, 0x18];
/// Chunk index header magic (§3.4.1).
pub const INDEX_MAGIC: [u8; 4] = [0xCD, 0xE4, 0xEC, 0x67];
pub const HEADER_LEN: usize = 32;
/// `BlockOffset`, `UncompressedOffset`, a SHA-256 checksum.
pub const ENTRY_LEN: usize = 16 + 32;

/// How the image is carried in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `application/vnd.erofs+zstd`: one zstd frame per chunk, the index in a skippable frame.
    Zstd,
    /// `application/vnd.erofs`: the image bytes, then the raw index.
    Raw,
}

impl Framing {
    pub fn media_type(self) -> &'static str {
        match self {
            Framing::Zstd => MEDIA_TYPE_EROFS_ZSTD,
            Framing::Raw => MEDIA_TYPE_EROFS,
        }
    }
    /// The `--erofs-compression` value that asks for it.
    pub fn arg(self) -> &'static str {
        match self {
            Framing::Zstd => "zstd",
            Framing::Raw => "none",
        }
    }
    fn compression_type(self) -> u8 {
        match self {
            Framing::Zstd => 1,
            Framing::Raw => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct IndexEntry {
    pub block_offset: u64,
    pub uncompressed_offset: u64,
    pub checksum: [u8; 32],
}

/// A parsed chunk index and where it sits in the blob.
#[derive(Clone, Debug)]
pub struct ChunkIndex {
    /// `chunkIndexStart`: the range annotation's offset (skippable frame or raw header).
    pub start: u64,
    pub end: u64,
    /// Header and entries, no frame header: what the digest annotation covers.
    pub payload: Vec<u8>,
    pub uncompressed_size: u64,
    pub entries: Vec<IndexEntry>,
}

impl ChunkIndex {
    /// On-blob byte range of chunk `i` (§3.4.2).
    pub fn on_blob(&self, i: usize, framing: Framing) -> (u64, u64) {
        let e = &self.entries[i];
        let end = match framing {
            Framing::Raw => e.block_offset + self.uncompressed_len(i),
            Framing::Zstd => self
                .entries
                .get(i + 1)
                .map_or(self.start, |n| n.block_offset),
        };
        (e.block_offset, end)
    }

    /// Uncompressed length of chunk `i` (§3.4.2).
    pub fn uncompressed_len(&self, i: usize) -> u64 {
        let next = self
            .entries
            .get(i + 1)
            .map_or(self.uncompressed_size, |n| n.uncompressed_offset);
        next.saturating_sub(self.entries[i].uncompressed_offset)
    }
}

/// Parse an `OFFSET[:END]` range annotation.
pub fn parse_range(value: &str) -> Result<(u64, Option<u64>), String> {
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|e| format!("range `{value}`: `{s}` is not a decimal offset ({e})"))
    };
    match value.split_once(':') {
        Some((a, b)) => Ok((num(a)?, Some(num(b)?))),
        None => Ok((num(value)?, None)),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Locate the index through the range annotation and check its frame, header and length.
pub fn read_chunk_index(blob: &[u8], range: &str, framing: Framing) -> Result<ChunkIndex, String> {
    let (start, end) = parse_range(range)?;
    let end = end.unwrap_or(blob.len() as u64);
    if end != blob.len() as u64 {
        return Err(format!(
            "range {range}: the index must be the blob's trailing section (blob is {} bytes)",
            blob.len()
        ));
    }
    if start >= end {
        return Err(format!("range {range} is empty or reversed"));
    }
    let section = &blob[start as usize..end as usize];
    let payload = match framing {
        Framing::Zstd => {
            if section.len() < 8 {
                return Err(format!("range {range}: shorter than a frame header"));
            }
            if section[..4] != SKIPPABLE_MAGIC {
                return Err(format!(
                    "range {range}: no skippable frame magic at {start}: {:02x?}",
                    &section[..4]
                ));
            }
            let len = u32_at(section, 4) as usize;
            if len != section.len() - 8 {
                return Err(format!(
                    "skippable frame length {len} != {} bytes up to the range end",
                    section.len() - 8
                ));
            }
            &section[8..]
        }
        Framing::Raw => section,
    };
    if payload.len() < HEADER_LEN {
        return Err(format!(
            "index payload of {} bytes has no header",
            payload.len()
        ));
    }
    let h = &payload[..HEADER_LEN];
    let checks: [(&str, bool, String); 7] = [
        ("magic", h[..4] == INDEX_MAGIC, format!("{:02x?}", &h[..4])),
        ("version", h[4] == 1, h[4].to_string()),
        (
            "compression type",
            h[5] == framing.compression_type(),
            h[5].to_string(),
        ),
        ("flags", u16_at(h, 6) == 0, u16_at(h, 6).to_string()),
        ("hash algo", h[20] == 1, h[20].to_string()),
        ("hash size", h[21] == 32, h[21].to_string()),
        (
            "reserved bytes",
            h[22..32].iter().all(|&b| b == 0),
            format!("{:02x?}", &h[22..32]),
        ),
    ];
    for (what, ok, got) in checks {
        if !ok {
            return Err(format!("index header {what}: unexpected value {got}"));
        }
    }
    let uncompressed_size = u64_at(h, 8);
    let num = u32_at(h, 16) as usize;
    let want = HEADER_LEN + num * ENTRY_LEN;
    if payload.len() != want {
        return Err(format!(
            "index payload is {} bytes, 32 + {num} × {ENTRY_LEN} = {want} expected",
            payload.len()
        ));
    }
    let entries = payload[HEADER_LEN..]
        .chunks_exact(ENTRY_LEN)
        .map(|e| IndexEntry {
            block_offset: u64_at(e, 0),
            uncompressed_offset: u64_at(e, 8),
            checksum: e[16..48].try_into().unwrap(),
        })
        .collect();
    Ok(ChunkIndex {
        start,
        end,
        payload: payload.to_vec(),
        uncompressed_size,
        entries,
    })
}

/// Check every entry against the blob (§3.4.2, §3.4.5) and return the image the chunks make.
pub fn check_chunks(blob: &[u8], idx: &ChunkIndex, framing: Framing) -> Result<Vec<u8>, String> {
    let n = idx.entries.len();
    if n == 0 {
        return if idx.uncompressed_size == 0 {
            Ok(Vec::new())
        } else {
            Err("no chunks but a non-zero uncompressed size".into())
        };
    }
    if idx.entries[0].uncompressed_offset != 0 {
        return Err("the first chunk's uncompressed offset is not 0".into());
    }
    if idx.entries[0].block_offset != 0 {
        return Err("the first chunk does not start the blob".into());
    }
    for (i, pair) in idx.entries.windows(2).enumerate() {
        if pair[1].uncompressed_offset <= pair[0].uncompressed_offset {
            return Err(format!(
                "chunk {}: uncompressed offset not increasing",
                i + 1
            ));
        }
        if pair[1].block_offset <= pair[0].block_offset {
            return Err(format!("chunk {}: block offset not increasing", i + 1));
        }
    }
    if idx.entries[n - 1].uncompressed_offset >= idx.uncompressed_size {
        return Err("the last chunk starts at or past the uncompressed size".into());
    }
    if framing == Framing::Raw && idx.start != idx.uncompressed_size {
        return Err(format!(
            "raw blob: the index starts at {} but the image is {} bytes",
            idx.start, idx.uncompressed_size
        ));
    }
    let mut image = Vec::with_capacity(idx.uncompressed_size as usize);
    let mut covered = 0;
    for i in 0..n {
        let (from, to) = idx.on_blob(i, framing);
        if from != covered || to <= from || to > idx.start {
            return Err(format!(
                "chunk {i}: on-blob range {from}..{to} does not continue at {covered} within 0..{}",
                idx.start
            ));
        }
        covered = to;
        let bytes = &blob[from as usize..to as usize];
        if sha256(bytes)[7..] != super::hex(&idx.entries[i].checksum) {
            return Err(format!(
                "chunk {i}: checksum differs from its on-blob bytes"
            ));
        }
        let want = idx.uncompressed_len(i);
        let data = match framing {
            Framing::Raw => bytes.to_vec(),
            Framing::Zstd => {
                let frame = zstd::zstd_safe::find_frame_compressed_size(bytes)
                    .map_err(|e| format!("chunk {i}: not a zstd frame ({e})"))?;
                if frame != bytes.len() {
                    return Err(format!(
                        "chunk {i}: {} on-blob bytes hold a {frame}-byte frame and more",
                        bytes.len()
                    ));
                }
                zstd::stream::decode_all(bytes)
                    .map_err(|e| format!("chunk {i}: frame does not decode alone ({e})"))?
            }
        };
        if data.len() as u64 != want {
            return Err(format!(
                "chunk {i}: decodes to {} bytes, the index says {want}",
                data.len()
            ));
        }
        image.extend_from_slice(&data);
    }
    if covered != idx.start {
        return Err(format!(
            "chunks end at {covered}, the index starts at {}",
            idx.start
        ));
    }
    Ok(image)
}

/// `zstd -dc BLOB` as a user runs it.
pub fn zstd_cli_decompress(blob: &Path) -> Vec<u8> {
    let out = run_with_timeout(
        Command::new("zstd").arg("-dcq").arg("--").arg(blob),
        None,
        TIMEOUT,
    );
    assert!(
        out.status.success(),
        "zstd -dc {} failed: {}",
        blob.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether kernel EROFS loop mounts (and overlays, if asked) work here; why not otherwise.
pub fn mount_support(overlay: bool) -> Result<(), String> {
    if !super::is_root() {
        return Err("loop-mounting EROFS images needs root".into());
    }
    let tools = ["mount", "umount", "losetup", "fsck.erofs", "zstd", "tar"];
    if let Some(t) = super::missing_tool(&tools) {
        return Err(format!(
            "`{t}` is not installed (erofs-utils, zstd, util-linux)"
        ));
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no /dev/loop-control: loop devices are unavailable".into());
    }
    let mut fs = vec!["erofs"];
    if overlay {
        fs.push("overlay");
    }
    for name in fs {
        if !filesystem_known(name) {
            // Not built in: try loading the module once.
            let _ = Command::new("modprobe").arg(name).output();
            if !filesystem_known(name) {
                return Err(format!("the kernel does not support `{name}` mounts"));
            }
        }
    }
    Ok(())
}

fn filesystem_known(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| t.lines().any(|l| l.split_whitespace().last() == Some(name)))
        .unwrap_or(false)
}

/// A mount that is taken down when dropped (also when the test panics), with the loop device
/// `mount -o loop` made for it detached.
pub struct Mount {
    dir: PathBuf,
    backing: Option<PathBuf>,
}

impl Mount {
    /// `mount -t erofs -o loop,ro IMG DIR` (DIR created).
    pub fn erofs(img: &Path, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let out = run_with_timeout(
            Command::new("mount")
                .args(["-t", "erofs", "-o", "loop,ro"])
                .arg(img)
                .arg(dir),
            None,
            TIMEOUT,
        );
        let mount = Mount {
            dir: dir.to_path_buf(),
            backing: Some(img.to_path_buf()),
        };
        if !out.status.success() {
            // Nothing is mounted; the guard still detaches a loop device left behind.
            panic!(
                "mount -t erofs -o loop,ro {} failed: {}\nkernel log:\n{}",
                img.display(),
                String::from_utf8_lossy(&out.stderr),
                kernel_log_tail()
            );
        }
        mount
    }

    /// `mount -t overlay overlay -o lowerdir=TOP:…:BOTTOM DIR`: read-only, no upper layer.
    pub fn overlay(lowers_top_first: &[&Path], dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let lowerdir = lowers_top_first
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let out = run_with_timeout(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!("ro,lowerdir={lowerdir}"))
                .arg(dir),
            None,
            TIMEOUT,
        );
        assert!(
            out.status.success(),
            "overlay mount of {lowerdir} failed: {}\nkernel log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            kernel_log_tail()
        );
        Mount {
            dir: dir.to_path_buf(),
            backing: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Compare with mountinfo by the resolved path (TMPDIR may be a symlink).
        let dir = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .map(|t| {
                    let dir = dir.to_string_lossy();
                    t.lines().any(|l| l.split(' ').nth(4) == Some(dir.as_ref()))
                })
                .unwrap_or(false)
        };
        for attempt in 0..5 {
            let ok = Command::new("umount")
                .arg(&dir)
                .output()
                .is_ok_and(|o| o.status.success());
            if ok || !mounted() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100 * (attempt + 1)));
        }
        if mounted() {
            let _ = Command::new("umount").arg("-l").arg(&dir).output();
            eprintln!("warning: {} needed a lazy unmount", dir.display());
        }
        if let Some(img) = &self.backing {
            // `mount -o loop` sets autoclear, but a failed mount can leave the device behind.
            if let Ok(out) = Command::new("losetup").arg("-j").arg(img).output() {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some((dev, _)) = line.split_once(':') {
                        let _ = Command::new("losetup").arg("-d").arg(dev).output();
                    }
                }
            }
        }
    }
}

/// The last lines of the kernel log (EROFS explains its refusals there), if readable.
pub fn kernel_log_tail() -> String {
    Command::new("dmesg")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        })
        .unwrap_or_default()
}

/// `fsck.erofs IMG` must exit 0; its output is shown when it does not.
pub fn assert_fsck_ok(img: &Path, what: &str) {
    let out = run_with_timeout(Command::new("fsck.erofs").arg(img), None, TIMEOUT);
    assert!(
        out.status.success(),
        "{what}: fsck.erofs {} exited {}:\n{}{}",
        img.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tree of an EROFS image as lazypull's own reader reports it, in the same form as
/// [`super::tree::snapshot`] of a mounted copy (the root itself left out).
pub fn reader_snapshot(image: &Path) -> super::tree::Tree {
    use lazypull_converter::erofs::ErofsReader;
    use lazypull_converter::layer::EntryKind;
    use lazypull_converter::FileBlob;
    use std::collections::{BTreeMap, HashMap};

    let fs = ErofsReader::open(FileBlob::open(image).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    let mut tree = super::tree::Tree::new();
    let mut by_nid: HashMap<u64, Vec<String>> = HashMap::new();
    for (path, inode) in fs
        .walk()
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()))
    {
        if path.is_empty() {
            continue;
        }
        let is_char = inode.mode & 0o170000 == 0o020000;
        let kind = match inode.kind {
            EntryKind::Dir => 'd',
            EntryKind::Reg => 'f',
            EntryKind::Symlink => 'l',
            EntryKind::Char => 'c',
            EntryKind::Block => 'b',
            EntryKind::Fifo => 'p',
            EntryKind::Hardlink => panic!("the reader never reports hardlink kinds"),
        };
        assert_eq!(is_char, kind == 'c', "{path}: mode and kind disagree");
        let content = (kind == 'f').then(|| {
            let mut data = vec![0u8; inode.size as usize];
            let n = fs.read(&inode, 0, &mut data).unwrap();
            assert_eq!(n as u64, inode.size, "{path}: short read");
            sha256(&data)
        });
        let link = (kind == 'l')
            .then(|| String::from_utf8(fs.read_link(&inode).unwrap()).expect("UTF-8 link target"));
        let xattrs: BTreeMap<String, Vec<u8>> = if kind == 'l' {
            BTreeMap::new()
        } else {
            fs.xattrs(&inode)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (String::from_utf8(k).expect("UTF-8 xattr name"), v))
                .collect()
        };
        if kind == 'f' && inode.nlink > 1 {
            by_nid.entry(inode.nid.0).or_default().push(path.clone());
        }
        let node = super::tree::Node {
            kind,
            mode: inode.mode & 0o7777,
            uid: inode.uid,
            gid: inode.gid,
            mtime: inode.mtime,
            mtime_nsec: i64::from(inode.mtime_nsec),
            size: if kind == 'f' { inode.size } else { 0 },
            content,
            link,
            dev: matches!(kind, 'c' | 'b').then(|| (inode.rdev.0 as u64, inode.rdev.1 as u64)),
            xattrs,
            hardlink_group: None,
        };
        tree.insert(path, node);
    }
    for names in by_nid.values().filter(|n| n.len() > 1) {
        let first = names.iter().min().unwrap().clone();
        for n in names {
            tree.get_mut(n).unwrap().hardlink_group = Some(first.clone());
        }
    }
    tree
}

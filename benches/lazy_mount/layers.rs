//! The benchmark's layers: generated deterministically (seeded `sample::XorShift`), put in a
//! one-layer OCI layout, and converted by the built `lazypull convert`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use lazypull_converter::oci::{self, Descriptor, ImageNode, ImageRef};
use lazypull_converter::sample::{self, ImageLayer, XorShift};
use tar::{Builder, EntryType, Header};

/// Every entry's mtime: a fixed instant, so the layers are the same on every run.
const MTIME: u64 = 1_700_000_000;

/// A tar under construction, in memory.
pub struct LayerTar {
    builder: Builder<Vec<u8>>,
    /// Entries written, directories included.
    pub entries: u64,
}

impl LayerTar {
    pub fn new() -> Self {
        LayerTar {
            builder: Builder::new(Vec::new()),
            entries: 0,
        }
    }

    fn append(&mut self, kind: EntryType, mode: u32, path: &str, link: &str, data: &[u8]) {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name(link).expect("short link target");
        }
        self.builder
            .append_data(&mut h, path, data)
            .unwrap_or_else(|e| panic!("tar entry {path}: {e}"));
        self.entries += 1;
    }

    pub fn dir(&mut self, path: &str) {
        self.append(EntryType::Directory, 0o755, &format!("{path}/"), "", &[]);
    }

    pub fn file(&mut self, path: &str, data: &[u8]) {
        self.append(EntryType::Regular, 0o644, path, "", data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.append(EntryType::Symlink, 0o777, path, target, &[]);
    }

    pub fn finish(self) -> (Vec<u8>, u64) {
        let entries = self.entries;
        let tar = self.builder.into_inner().expect("tar into memory");
        (tar, entries)
    }
}

/// `len` bytes of text-like data: 16 symbols, so zstd and gzip halve it, as they do real files.
fn text(rng: &mut XorShift, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend(
            rng.next_u64()
                .to_le_bytes()
                .map(|b| b"etaoinshrdlu \n_.("[(b & 15) as usize]),
        );
    }
    out.truncate(len);
    out
}

/// Small files for the first-read figure: `prefetch/p*` (listed for prefetch) and
/// `small/f0000`…`small/f3999`, 4 KiB each, so every 400th one lies in its own 1 MiB EROFS
/// chunk. Returns the tar, its entry count and the prefetch list.
pub fn small_files() -> (Vec<u8>, u64, String) {
    let mut rng = XorShift::new(1);
    let mut t = LayerTar::new();
    let mut list = String::new();
    t.dir("prefetch");
    for i in 0..50 {
        let name = format!("prefetch/p{i:03}");
        t.file(&name, &text(&mut rng, 4096));
        list.push_str(&name);
        list.push('\n');
    }
    t.dir("small");
    for i in 0..4000 {
        t.file(&format!("small/f{i:04}"), &text(&mut rng, 4096));
    }
    let (tar, n) = t.finish();
    (tar, n, list)
}

/// The small files whose first reads are timed: one per 1 MiB of the `small/` data.
pub fn small_files_read() -> Vec<String> {
    (0..10)
        .map(|i| format!("small/f{:04}", 200 + 400 * i))
        .collect()
}

/// Large files for the throughput figure: `big/file0`… of `file_mb` MiB each.
pub fn large_files(files: usize, file_mb: usize) -> (Vec<u8>, u64) {
    let mut rng = XorShift::new(2);
    let mut t = LayerTar::new();
    t.dir("big");
    for i in 0..files {
        t.file(&format!("big/file{i}"), &text(&mut rng, file_mb << 20));
    }
    t.finish()
}

/// A tree of about `entries` entries shaped like a language runtime's library directory:
/// `usr/lib/pkgNNNN/` holding 99 names each, one in ten a symlink, files of 0–1023 bytes.
pub fn tree(entries: u64) -> (Vec<u8>, u64) {
    let mut rng = XorShift::new(3);
    let mut t = LayerTar::new();
    t.dir("usr");
    t.dir("usr/lib");
    let mut pkg = 0;
    while t.entries < entries {
        let dir = format!("usr/lib/pkg{pkg:04}");
        t.dir(&dir);
        for i in 0..99 {
            if t.entries >= entries {
                break;
            }
            let name = format!("{dir}/module_{i:03}.py");
            if i % 10 == 9 {
                t.symlink(&name, &format!("module_{:03}.py", i - 1));
            } else {
                let len = rng.below(1024) as usize;
                t.file(&name, &text(&mut rng, len));
            }
        }
        pkg += 1;
    }
    t.finish()
}

/// One converted layer: its blob on disk and its descriptor (media type, annotations).
#[derive(Clone, Debug)]
pub struct Converted {
    pub blob: PathBuf,
    pub desc: Descriptor,
}

/// The layout of one tar layer at `dir/in`, converted by `lazypull convert` with `args` into
/// `dir/<out>`.
pub fn convert(lazypull: &Path, dir: &Path, tar: &[u8], out: &str, args: &[&str]) -> Converted {
    let input = dir.join("in");
    if !input.exists() {
        sample::write_oci_layout(&input, "b", &[ImageLayer::tar(tar, "bench")])
            .expect("writing the input layout");
    }
    let output = dir.join(out);
    let status = Command::new(lazypull)
        .args(["convert", "--no-progress"])
        .args(args)
        .arg(format!("oci:{}:b", input.display()))
        .arg(format!("oci:{}:b", output.display()))
        .status()
        .expect("running lazypull convert");
    assert!(status.success(), "lazypull convert {args:?} failed");
    let r: ImageRef = format!("oci:{}:b", output.display()).parse().unwrap();
    let source = oci::open_source(&r).unwrap();
    let root = source.root().unwrap();
    let ImageNode::Manifest(m) = ImageNode::read(source.as_ref(), &root).unwrap() else {
        panic!("expected a manifest");
    };
    let desc = m.layers[0].clone();
    Converted {
        blob: output.join("blobs/sha256").join(desc.digest.hex()),
        desc,
    }
}

/// The EROFS image inside a `+zstd` blob (the frames decompress to exactly the image), written
/// to `to` for a kernel loop mount.
pub fn erofs_image(c: &Converted, to: &Path) -> PathBuf {
    let input = std::fs::File::open(&c.blob).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(to).unwrap());
    zstd::stream::copy_decode(input, &mut out).expect("decompressing the EROFS blob");
    out.flush().unwrap();
    to.to_path_buf()
}

/// A prefetch list file for `convert --prefetch-list`.
pub fn write_list(dir: &Path, list: &str) -> PathBuf {
    let p = dir.join("prefetch.txt");
    std::fs::write(&p, list).unwrap();
    p
}

//! Tests of the layer filesystem.
//!
//! - `tree`: the [`LayerTree`]s directly, no kernel involved (inode numbering, listings,
//!   whiteouts, reads across chunks).
//! - `reference`: a snapshot of a directory tree, and the reference tree a layer should give
//!   (GNU tar's extraction with OCI whiteouts turned into overlayfs ones).
//! - `mounted`: real FUSE mounts compared with the reference, a tampered chunk reading as EIO,
//!   and overlayfs stacking two mounted layers. These need root and `/dev/fuse`: without them
//!   they print `SKIPPED: reason`, and fail under `CI=true`.
//! - `passthrough`: files read in full reopened through FUSE passthrough: no chunk-cache read,
//!   the budget, leftovers of dead mounts, a tampered chunk never materialised. Same needs.

mod mounted;
mod passthrough;
mod reference;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lazypull_converter::erofs::chunk_index::{
    read_embedded_index, ChunkIndex, ChunkedImage, ChunkedWriter,
};
use lazypull_converter::erofs::{ErofsBuilder, ErofsOptions, ErofsReader};
use lazypull_converter::estargz::{BlobFormat, EstargzOptions, EstargzReader, EstargzWriter};
use lazypull_converter::layer::{IngestOptions, Layer};
use lazypull_converter::{Digest, FileBlob};

use super::{ErofsTree, EstargzTree, LayerTree};

/// Chunk size of the sample layers and of both blob formats: small, so files span chunks.
const CHUNK: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Estargz,
    Erofs,
}

const FORMATS: [Format; 2] = [Format::Estargz, Format::Erofs];

/// A converted layer on disk, with what is needed to open it verified.
struct Blob {
    format: Format,
    path: PathBuf,
    /// eStargz: the TOC digest. EROFS: the chunk index's offset and digest.
    toc_digest: Option<Digest>,
    index: Option<(u64, Digest)>,
}

impl Blob {
    /// An EROFS blob's chunk index, verified against its digest, and where its frames start.
    fn erofs_index(&self, file: &FileBlob) -> (ChunkIndex, u64) {
        let (offset, digest) = self.index.as_ref().expect("an EROFS blob");
        read_embedded_index(file, true, (*offset, None), Some(digest)).unwrap()
    }
}

fn ingest(tar: &[u8]) -> Layer {
    Layer::ingest(tar, &IngestOptions::default()).expect("sample layers ingest")
}

/// Convert `tar` to `format`, written to `dir/name.<format>`.
fn convert(tar: &[u8], format: Format, dir: &Path, name: &str) -> Blob {
    let layer = ingest(tar);
    let mut out = Vec::new();
    match format {
        Format::Estargz => {
            let mut opts = EstargzOptions::new(BlobFormat::Estargz);
            opts.chunk_size = CHUNK;
            let written = EstargzWriter::new(opts)
                .write(&layer, &mut out, &|_| {})
                .expect("eStargz conversion");
            let path = dir.join(format!("{name}.stargz"));
            std::fs::write(&path, &out).unwrap();
            Blob {
                format,
                path,
                toc_digest: Some(written.toc_digest),
                index: None,
            }
        }
        Format::Erofs => {
            let mut w = ChunkedWriter::new(&mut out, 1, CHUNK, 3);
            ErofsBuilder::new(ErofsOptions {
                prefetch: None,
                uuid: [0; 16],
            })
            .build(&layer, &mut w)
            .expect("EROFS conversion");
            let wrapped = w.finish().expect("chunk index");
            let path = dir.join(format!("{name}.erofs.zst"));
            std::fs::write(&path, &out).unwrap();
            Blob {
                format,
                path,
                toc_digest: None,
                index: Some((wrapped.index_offset, wrapped.index_digest)),
            }
        }
    }
}

/// The verified tree of a blob, read from its file.
fn open_tree(blob: &Blob) -> Arc<dyn LayerTree> {
    let file = FileBlob::open(&blob.path).unwrap();
    match blob.format {
        Format::Estargz => {
            let reader = EstargzReader::open(file, blob.toc_digest.as_ref()).unwrap();
            Arc::new(EstargzTree::new(reader).unwrap())
        }
        Format::Erofs => {
            let (index, start) = blob.erofs_index(&file);
            let image = ChunkedImage::new(file, index, start);
            let reader = ErofsReader::open(image).unwrap();
            Arc::new(ErofsTree::new(reader, blob.path.display().to_string()))
        }
    }
}

/// `true` if `ok`; otherwise prints why the test is skipped, or panics under `CI=true`.
fn require(ok: bool, why: &str) -> bool {
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {why}"
        );
        println!("SKIPPED: {why}");
        eprintln!("SKIPPED: {why}");
    }
    ok
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether FUSE mounts can be made here (printing why not).
fn can_mount() -> bool {
    require(
        is_root(),
        "not root: FUSE mounts without fusermount need it",
    ) && require(Path::new("/dev/fuse").exists(), "no /dev/fuse")
}

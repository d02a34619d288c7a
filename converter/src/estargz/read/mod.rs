//! Reading eStargz and zstd:chunked blobs through [`BlobRead`].
//!
//! [`EstargzReader::open`] fetches the footer (the last 51 bytes), then the TOC in one more
//! read, checks the TOC digest, and normalises the entries ([`FileEntry`]). Each later
//! [`EstargzReader::read_chunk`] fetches one compressed member range, inflates that single
//! member and checks the chunk's digest before handing out a byte. A server that keeps its own
//! index of the entries turns the reader into a [`ChunkReader`], which drops the TOC and keeps
//! only what reading chunks needs. Nothing here trusts the blob: malformed or hostile input gives
//! an [`Error`], with bounded allocation.

mod index;
mod toc;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::blob::BlobRead;
use crate::digest::Digest;
use crate::error::{Error, Result, ResultExt};
use crate::estargz::format::{Footer, FooterKind, Toc, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};
use crate::layer::EntryKind;

pub use crate::estargz::format::MAX_TOC_ENTRIES;
pub use index::{normalise_name, MAX_CHUNK_SIZE};
pub use toc::MAX_TOC_SIZE;

/// One file, directory, link or device of the layer, normalised from the TOC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Normalised path: no leading `/` or `./`, no trailing `/`; the root is `""`.
    pub name: String,
    pub kind: EntryKind,
    /// Content size (regular files; 0 otherwise).
    pub size: u64,
    /// Permission bits plus setuid/setgid/sticky; never file-type bits.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Owner names, carried forward from the first entry naming each uid/gid.
    pub uname: String,
    pub gname: String,
    /// Seconds since the epoch (the TOC rounds to the second; 0 when absent).
    pub mtime: i64,
    /// Symlinks: the raw target. Hardlinks: the normalised name of the final, non-link target.
    pub link_name: String,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Digest of the whole content (regular files).
    pub digest: Option<Digest>,
    /// The content's chunks, tiling `[0, size)` in order; empty for empty and non-regular files.
    pub chunks: Vec<ChunkRef>,
}

/// Where one chunk of a file lives in the blob, and how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// Offset of the chunk within its file.
    pub file_offset: u64,
    /// Uncompressed length.
    pub size: u64,
    /// Compressed offset of the member holding the chunk.
    pub blob_offset: u64,
    /// Uncompressed bytes to skip inside that member before the chunk starts.
    pub inner_offset: u64,
    /// End of the compressed range to fetch: the next member's offset, or the TOC's.
    pub blob_end: u64,
    /// SHA-256 of the chunk (`chunkDigest`, or the file digest of an unchunked file); `None`
    /// only in legacy TOCs read without verification.
    pub digest: Option<Digest>,
}

/// A reader of one eStargz (gzip, legacy stargz) or zstd:chunked blob.
pub struct EstargzReader<B: BlobRead> {
    chunks: ChunkReader<B>,
    footer: Footer,
    toc: Toc,
    toc_digest: Digest,
    index: index::Index,
}

/// Reads chunks of one blob by their [`ChunkRef`]s, each inflated and checked against its
/// digest, without holding the TOC: [`EstargzReader::into_chunk_reader`].
pub struct ChunkReader<B: BlobRead> {
    blob: B,
    kind: FooterKind,
    /// The TOC was checked against a trusted digest, so every chunk must carry one.
    verified: bool,
}

impl<B: BlobRead> EstargzReader<B> {
    /// Find the footer, read the TOC and, when `expected_toc_digest` is given, check it against
    /// the sha256 of the TOC JSON. Without it the reader is *unverified*: chunks lacking a digest
    /// (legacy stargz) can then be read unchecked.
    pub fn open(blob: B, expected_toc_digest: Option<&Digest>) -> Result<Self> {
        let footer = toc::read_footer(&blob).context("eStargz footer")?;
        let json = toc::read_toc_json(&blob, &footer).context("eStargz TOC")?;
        let toc_digest = Digest::of(&json);
        if let Some(want) = expected_toc_digest {
            if *want != toc_digest {
                return Err(Error::DigestMismatch {
                    what: "eStargz TOC".into(),
                    expected: want.to_string(),
                    actual: toc_digest.to_string(),
                });
            }
        }
        let toc = Toc::from_json(&json).context("eStargz TOC")?;
        drop(json);
        if toc.version != 1 {
            return Err(Error::Unsupported(format!(
                "eStargz TOC version {} (only version 1 is known)",
                toc.version
            )));
        }
        let verified = expected_toc_digest.is_some();
        let index = index::build(&toc, footer.toc_offset, verified).context("eStargz TOC")?;
        Ok(EstargzReader {
            chunks: ChunkReader {
                blob,
                kind: footer.kind,
                verified,
            },
            footer,
            toc,
            toc_digest,
            index,
        })
    }

    /// The footer found at the end of the blob.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The TOC as stored (raw names, implicit fields not filled in).
    pub fn toc(&self) -> &Toc {
        &self.toc
    }

    /// The sha256 of the TOC JSON bytes.
    pub fn toc_digest(&self) -> &Digest {
        &self.toc_digest
    }

    /// Whether the TOC was checked against an expected digest at open.
    pub fn is_verified(&self) -> bool {
        self.chunks.verified
    }

    /// The underlying blob.
    pub fn blob(&self) -> &B {
        &self.chunks.blob
    }

    /// Keep only what reading chunks needs, dropping the TOC and the entries: for a caller that
    /// has built its own index of [`Self::entries`] and keeps their [`ChunkRef`]s.
    pub fn into_chunk_reader(self) -> ChunkReader<B> {
        self.chunks
    }

    /// Every entry of the layer, root first, in TOC order except that each directory comes
    /// before its contents (missing parents are synthesised). Landmarks are not included.
    pub fn entries(&self) -> &[FileEntry] {
        &self.index.all[..self.index.visible]
    }

    /// The prefetch landmark files (`.prefetch.landmark` / `.no.prefetch.landmark`), which
    /// [`Self::entries`] hides; an eager extractor may want them.
    pub fn landmarks(&self) -> &[FileEntry] {
        &self.index.all[self.index.visible..]
    }

    /// The entry called `name` (normalised as TOC names are: `/a/b`, `./a/b/` and `a/b` are one
    /// name). Hardlinks are returned as such; see [`Self::resolve`].
    pub fn lookup(&self, name: &str) -> Option<&FileEntry> {
        let name = normalise_name(name).ok()?;
        self.index.by_name.get(&name).map(|&i| &self.index.all[i])
    }

    /// The entry a hardlink points at; any other entry itself.
    pub fn resolve<'a>(&'a self, entry: &'a FileEntry) -> Option<&'a FileEntry> {
        if entry.kind == EntryKind::Hardlink {
            self.lookup(&entry.link_name)
        } else {
            Some(entry)
        }
    }

    /// A regular file's whole content (through hardlinks), every chunk and the file digest
    /// checked. Holds the file in memory: for large files read chunk by chunk instead.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let entry = self
            .lookup(name)
            .and_then(|e| self.resolve(e))
            .ok_or_else(|| Error::Invalid(format!("no entry `{name}` in the eStargz TOC")))?;
        if entry.kind != EntryKind::Reg {
            return Err(Error::Invalid(format!(
                "entry `{}` is a {}, not a regular file",
                entry.name,
                entry.kind.toc_name()
            )));
        }
        // The TOC's size is a claim, not an allocation budget.
        let mut out = Vec::with_capacity(entry.size.min(16 << 20) as usize);
        for chunk in &entry.chunks {
            out.extend_from_slice(&self.read_chunk(chunk)?);
        }
        if let Some(want) = entry.digest {
            let got = Digest::of(&out);
            if got != want {
                return Err(Error::DigestMismatch {
                    what: format!("entry `{}`", entry.name),
                    expected: want.to_string(),
                    actual: got.to_string(),
                });
            }
        }
        Ok(out)
    }

    /// One chunk's uncompressed bytes, checked against its digest. `chunk` must come from this
    /// reader's entries.
    pub fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        let owner = self
            .index
            .chunk_owner
            .get(&(chunk.blob_offset, chunk.inner_offset))
            .map(|&(e, c)| (&self.index.all[e], c));
        let entry = match owner {
            Some((entry, c)) if entry.chunks[c] == *chunk => entry,
            _ => {
                return Err(Error::Invalid(format!(
                    "chunk at blob offset {} is not one of this blob's chunks",
                    chunk.blob_offset
                )))
            }
        };
        self.chunks.read_chunk(chunk).with_context(|| {
            format!(
                "entry `{}` chunk at offset {}",
                entry.name, chunk.file_offset
            )
        })
    }

    /// End of the prefetch region: the offset of the `.prefetch.landmark` member, `Some(0)` when
    /// `.no.prefetch.landmark` says to prefetch nothing, `None` without a landmark.
    pub fn prefetch_end(&self) -> Option<u64> {
        let landmark = |name: &str| self.landmarks().iter().find(|l| l.name == name);
        if landmark(NO_PREFETCH_LANDMARK).is_some() {
            return Some(0);
        }
        landmark(PREFETCH_LANDMARK).and_then(|l| l.chunks.first().map(|c| c.blob_offset))
    }
}

impl<B: BlobRead> ChunkReader<B> {
    /// The underlying blob.
    pub fn blob(&self) -> &B {
        &self.blob
    }

    /// One chunk's uncompressed bytes, checked against its digest. Unlike
    /// [`EstargzReader::read_chunk`] nothing checks that `chunk` is one of the blob's chunks:
    /// the caller keeps the [`ChunkRef`]s the reader gave it.
    pub fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        if chunk.digest.is_none() && self.verified {
            return Err(Error::format(
                "no chunkDigest, and the blob was opened with verification",
            ));
        }
        let compressed = self
            .blob
            .read_vec(chunk.blob_offset, chunk.blob_end - chunk.blob_offset)?;
        let data = match self.kind {
            FooterKind::ZstdChunked => {
                let dec = zstd::stream::read::Decoder::with_buffer(&compressed[..])
                    .map_err(|e| Error::io("starting zstd", e))?
                    .single_frame();
                take_chunk(dec, chunk)?
            }
            // One gzip member only: the next member belongs to another chunk.
            _ => take_chunk(flate2::read::GzDecoder::new(&compressed[..]), chunk)?,
        };
        if let Some(want) = chunk.digest {
            let got = Digest::of(&data);
            if got != want {
                return Err(Error::DigestMismatch {
                    what: "chunk".into(),
                    expected: want.to_string(),
                    actual: got.to_string(),
                });
            }
        }
        Ok(data)
    }
}

/// Skip `inner_offset` decompressed bytes, then take exactly `size`.
fn take_chunk(mut dec: impl Read, chunk: &ChunkRef) -> Result<Vec<u8>> {
    let skipped = io::copy(&mut (&mut dec).take(chunk.inner_offset), &mut io::sink())
        .map_err(|e| Error::format(format!("decompressing: {e}")))?;
    let mut out = Vec::with_capacity(chunk.size.min(4 << 20) as usize);
    dec.take(chunk.size)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(format!("decompressing: {e}")))?;
    if skipped != chunk.inner_offset || out.len() as u64 != chunk.size {
        return Err(Error::format(format!(
            "member ends after {} bytes, expected {} then {} bytes of chunk",
            skipped + out.len() as u64,
            chunk.inner_offset,
            chunk.size
        )));
    }
    Ok(out)
}

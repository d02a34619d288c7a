//! [`EstargzTree`]: an eStargz (or zstd:chunked) layer as a [`LayerTree`].
//!
//! At open, the reader's normalised entries become compact tables (`build`): one node per inode
//! (hardlinks share their target's) with its attributes inline, one dirent per name, grouped by
//! directory and sorted by name, names interned in one arena, every file's chunks in one `Vec`.
//! The reader then keeps only what reading chunks needs ([`ChunkReader`]): the TOC and its
//! entries are dropped, so a mounted layer costs about 150 bytes per entry.
//!
//! OCI whiteouts are shown the way overlayfs reads them: `.wh.NAME` becomes a character device
//! 0:0 called `NAME`, `.wh..wh..opq` disappears and gives its directory
//! `trusted.overlay.opaque=y`. Other aufs metadata (`.wh..wh.plnk/…`) is hidden. A name both
//! whited out and present in the layer keeps the present entry (a directory then turns
//! opaque), as the EROFS writer does.
//!
//! File bytes come through a [`ChunkSource`], so the chunk cache and fetcher sit in front of the
//! blob; [`ReaderChunks`] reads and verifies through the [`ChunkReader`] itself.

mod build;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use lazypull_converter::estargz::{ChunkReader, ChunkRef, EstargzReader};
use lazypull_converter::{BlobRead, Error, Result};

use super::tree::{blocks_of, Attr, DirEntry, FileKind, FsError, FsResult, Ino, LayerTree, StatFs};
use build::{Chunk, Dirent, Node, Tables, OPAQUE, WHITEOUT};

const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// How many verified chunks [`ReaderChunks`] keeps for the reads that follow.
const RECENT_CHUNKS: usize = 4;

/// Where a file's chunks come from: the verified, uncompressed bytes of one chunk.
pub trait ChunkSource: Send + Sync {
    fn chunk(&self, chunk: &ChunkRef) -> Result<Arc<[u8]>>;
}

/// The default [`ChunkSource`]: [`ChunkReader::read_chunk`] (fetch, decompress, verify),
/// keeping the last few chunks, since the kernel reads a multi-MiB chunk in 128 KiB pieces.
pub struct ReaderChunks<B: BlobRead> {
    reader: ChunkReader<B>,
    recent: Mutex<VecDeque<(ChunkKey, Arc<[u8]>)>>,
}

/// A chunk's position in the blob: (member offset, offset inside the member).
type ChunkKey = (u64, u64);

impl<B: BlobRead> ReaderChunks<B> {
    pub fn new(reader: ChunkReader<B>) -> Self {
        ReaderChunks {
            reader,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CHUNKS)),
        }
    }
}

impl<B: BlobRead> ChunkSource for ReaderChunks<B> {
    fn chunk(&self, chunk: &ChunkRef) -> Result<Arc<[u8]>> {
        let key = (chunk.blob_offset, chunk.inner_offset);
        {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, data)) = recent.iter().find(|(k, _)| *k == key) {
                return Ok(Arc::clone(data));
            }
        }
        // Without the lock: other threads read other chunks meanwhile.
        let data: Arc<[u8]> = self.reader.read_chunk(chunk)?.into();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if !recent.iter().any(|(k, _)| *k == key) {
            recent.push_front((key, Arc::clone(&data)));
            recent.truncate(RECENT_CHUNKS);
        }
        Ok(data)
    }
}

/// An eStargz layer as a [`LayerTree`].
pub struct EstargzTree {
    source: Arc<dyn ChunkSource>,
    t: Tables,
    total_size: u64,
    name: String,
}

impl EstargzTree {
    /// The tree of `reader`, reading chunks through [`ReaderChunks`].
    pub fn new<B: BlobRead + 'static>(reader: EstargzReader<B>) -> Result<Self> {
        Self::with_chunk_source(reader, |chunks| Arc::new(ReaderChunks::new(chunks)))
    }

    /// The tree of `reader`, whose chunks are read through what `source` makes of the
    /// reader's [`ChunkReader`] (a cache in front of it, say). The reader's TOC and entries are
    /// dropped once the tree is built.
    pub fn with_chunk_source<B: BlobRead>(
        reader: EstargzReader<B>,
        source: impl FnOnce(ChunkReader<B>) -> Arc<dyn ChunkSource>,
    ) -> Result<Self> {
        let t = Tables::new(reader.entries())?;
        let total_size = t
            .nodes
            .iter()
            .filter(|n| n.kind == FileKind::Reg)
            .map(|n| n.size)
            .sum();
        let name = format!("eStargz layer (TOC {})", reader.toc_digest());
        Ok(EstargzTree {
            source: source(reader.into_chunk_reader()),
            t,
            total_size,
            name,
        })
    }

    /// Name the tree in log messages (a layer digest, say) instead of by its TOC digest.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Where chunks are read from.
    pub fn chunk_source(&self) -> &Arc<dyn ChunkSource> {
        &self.source
    }

    /// Every chunk of every regular file, each once, in TOC order (a background fetch walks
    /// them; a prefetch takes those inside its region).
    pub fn chunks(&self) -> impl Iterator<Item = ChunkRef> + '_ {
        self.t
            .nodes
            .iter()
            .filter(|n| n.kind == FileKind::Reg)
            .flat_map(move |n| (0..n.count as usize).map(move |i| self.chunk_ref(n, i)))
    }

    /// Chunk `i` of regular file `node`, as the reader gave it.
    fn chunk_ref(&self, node: &Node, i: usize) -> ChunkRef {
        let chunks = self.file_chunks(node);
        let c = &chunks[i];
        let end = chunks.get(i + 1).map_or(node.size, |next| next.file_offset);
        ChunkRef {
            file_offset: c.file_offset,
            size: end.saturating_sub(c.file_offset),
            blob_offset: c.blob_offset,
            inner_offset: c.inner_offset,
            blob_end: c.blob_end,
            digest: c.digest,
        }
    }

    fn file_chunks(&self, node: &Node) -> &[Chunk] {
        &self.t.chunks[node.first as usize..(node.first + node.count) as usize]
    }

    fn node(&self, ino: Ino) -> FsResult<&Node> {
        ino.0
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.t.nodes.get(i))
            .ok_or(FsError::NoInode(ino))
    }

    fn dir(&self, ino: Ino) -> FsResult<&[Dirent]> {
        let node = self.node(ino)?;
        if node.kind != FileKind::Dir {
            return Err(FsError::NotDir(ino));
        }
        Ok(&self.t.dirents[node.first as usize..(node.first + node.count) as usize])
    }

    fn dirent_name(&self, d: &Dirent) -> &[u8] {
        &self.t.names[d.name as usize..(d.name + d.len) as usize]
    }

    fn extra(&self, node: &Node) -> Option<&build::Extra> {
        node.extra
            .checked_sub(1)
            .and_then(|i| self.t.extras.get(i as usize))
    }
}

impl LayerTree for EstargzTree {
    fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let node = self.node(ino)?;
        Ok(Attr {
            ino,
            kind: node.kind,
            perm: node.perm,
            nlink: node.nlink,
            uid: node.uid,
            gid: node.gid,
            size: node.size,
            mtime: node.mtime,
            mtime_nsec: 0,
            rdev: self.extra(node).map_or((0, 0), |x| x.rdev),
            blocks: blocks_of(node.size),
        })
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
        let dir = self.dir(parent)?;
        Ok(dir
            .binary_search_by(|d| self.dirent_name(d).cmp(name))
            .ok()
            .map(|i| Ino(u64::from(dir[i].node) + 1)))
    }

    fn readdir(&self, ino: Ino) -> FsResult<Vec<DirEntry>> {
        let dir = self.dir(ino)?;
        let parent = Ino(u64::from(self.node(ino)?.parent) + 1);
        let mut out = Vec::with_capacity(dir.len() + 2);
        for (name, ino) in [(&b"."[..], ino), (&b".."[..], parent)] {
            out.push(DirEntry {
                name: name.to_vec(),
                ino,
                kind: FileKind::Dir,
            });
        }
        out.extend(dir.iter().map(|d| DirEntry {
            name: self.dirent_name(d).to_vec(),
            ino: Ino(u64::from(d.node) + 1),
            kind: self.t.nodes[d.node as usize].kind,
        }));
        Ok(out)
    }

    fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        if node.kind != FileKind::Symlink {
            return Err(FsError::WrongKind(ino, "not a symlink"));
        }
        Ok(self
            .extra(node)
            .map(|x| self.t.get(x.link).to_vec())
            .unwrap_or_default())
    }

    fn read(&self, ino: Ino, off: u64, size: u32) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        match node.kind {
            FileKind::Reg => {}
            FileKind::Dir => return Err(FsError::IsDir(ino)),
            _ => return Err(FsError::WrongKind(ino, "not a regular file")),
        }
        let end = off.saturating_add(u64::from(size)).min(node.size);
        let mut out = Vec::with_capacity(end.saturating_sub(off) as usize);
        let chunks = self.file_chunks(node);
        // The chunk holding `off`: the last one starting at or before it.
        let first = chunks
            .partition_point(|c| c.file_offset <= off)
            .saturating_sub(1);
        for i in first..chunks.len() {
            let pos = off + out.len() as u64;
            if pos >= end {
                break;
            }
            let chunk = self.chunk_ref(node, i);
            let data = self
                .source
                .chunk(&chunk)
                .map_err(|e| FsError::layer(ino, e))?;
            if data[..].len() as u64 != chunk.size {
                return Err(FsError::layer(
                    ino,
                    Error::format(format!(
                        "chunk at offset {}: {} bytes, expected {}",
                        chunk.file_offset,
                        data[..].len(),
                        chunk.size
                    )),
                ));
            }
            let from = (pos - chunk.file_offset) as usize;
            let to = (end.min(chunk.file_offset + chunk.size) - chunk.file_offset) as usize;
            out.extend_from_slice(&data[from..to]);
        }
        Ok(out)
    }

    fn xattrs(&self, ino: Ino) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let node = self.node(ino)?;
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = self
            .extra(node)
            .map(|x| {
                let (first, count) = (x.xattrs.0 as usize, x.xattrs.1 as usize);
                self.t.xattrs[first..first + count]
                    .iter()
                    .map(|&(k, v)| (self.t.get(k).to_vec(), self.t.get(v).to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        if node.flags & WHITEOUT == 0
            && node.flags & OPAQUE != 0
            && !out.iter().any(|(k, _)| k == OVERLAY_OPAQUE)
        {
            out.push((OVERLAY_OPAQUE.to_vec(), b"y".to_vec()));
        }
        Ok(out)
    }

    fn statfs(&self) -> StatFs {
        StatFs {
            blocks: self.total_size.div_ceil(4096),
            files: self.t.nodes.len() as u64,
            block_size: 4096,
            name_max: 255,
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

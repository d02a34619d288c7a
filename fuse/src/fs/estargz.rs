//! [`EstargzTree`]: an eStargz (or zstd:chunked) layer as a [`LayerTree`].
//!
//! At open, the reader's normalised entries become a compact inode table: one [`Node`] per
//! inode (hardlinks share their target's), and one [`Dirent`] per name, grouped by directory
//! and sorted by name. Both refer to entries by index into [`EstargzReader::entries`] instead
//! of copying names, so the resident cost is about 32 bytes per entry on top of the reader's.
//!
//! OCI whiteouts are shown the way overlayfs reads them: `.wh.NAME` becomes a character device
//! 0:0 called `NAME`, `.wh..wh..opq` disappears and gives its directory
//! `trusted.overlay.opaque=y`. Other aufs metadata (`.wh..wh.plnk/…`) is hidden. A name both
//! whited out and present in the layer keeps the present entry (a directory then turns
//! opaque), as the EROFS writer does.
//!
//! File bytes come through a [`ChunkSource`], so the chunk cache and fetcher can be put in
//! front of the reader later; [`ReaderChunks`] reads and verifies through the reader itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use lazypull_converter::estargz::{ChunkRef, EstargzReader, FileEntry};
use lazypull_converter::layer::EntryKind;
use lazypull_converter::{BlobRead, Error, Result};

use super::tree::{blocks_of, Attr, DirEntry, FileKind, FsError, FsResult, Ino, LayerTree, StatFs};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// The id shown for owners that do not fit 32 bits (the kernel's overflow id).
const OVERFLOW_ID: u32 = 65534;
/// How many verified chunks [`ReaderChunks`] keeps for the reads that follow.
const RECENT_CHUNKS: usize = 4;

/// Where a file's chunks come from: verified, uncompressed bytes of one chunk of `file`.
pub trait ChunkSource: Send + Sync {
    fn chunk(&self, file: &FileEntry, chunk: &ChunkRef) -> Result<Arc<[u8]>>;
}

/// The default [`ChunkSource`]: [`EstargzReader::read_chunk`] (fetch, decompress, verify),
/// keeping the last few chunks, since the kernel reads a multi-MiB chunk in 128 KiB pieces.
pub struct ReaderChunks<B: BlobRead> {
    reader: Arc<EstargzReader<B>>,
    recent: Mutex<VecDeque<(ChunkKey, Arc<[u8]>)>>,
}

/// A chunk's position in the blob: (member offset, offset inside the member).
type ChunkKey = (u64, u64);

impl<B: BlobRead> ReaderChunks<B> {
    pub fn new(reader: Arc<EstargzReader<B>>) -> Self {
        ReaderChunks {
            reader,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CHUNKS)),
        }
    }
}

impl<B: BlobRead> ChunkSource for ReaderChunks<B> {
    fn chunk(&self, _file: &FileEntry, chunk: &ChunkRef) -> Result<Arc<[u8]>> {
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

/// Node flags.
const WHITEOUT: u8 = 1;
const OPAQUE: u8 = 2;

/// One inode: node `n` has inode number `n + 1`, so the root (node 0) is 1.
#[derive(Clone, Copy, Debug)]
struct Node {
    /// The entry giving the attributes (never a hardlink entry).
    entry: u32,
    /// The parent directory's node (the root is its own parent).
    parent: u32,
    nlink: u32,
    /// Directories: `dirents[first..first + count]`.
    first: u32,
    count: u32,
    flags: u8,
}

/// One name in a directory: the entry naming it (its leaf, less `.wh.` for whiteouts) and the
/// node it names.
#[derive(Clone, Copy, Debug)]
struct Dirent {
    entry: u32,
    node: u32,
}

/// An eStargz layer as a [`LayerTree`].
pub struct EstargzTree<B: BlobRead> {
    reader: Arc<EstargzReader<B>>,
    chunks: Arc<dyn ChunkSource>,
    nodes: Vec<Node>,
    dirents: Vec<Dirent>,
    total_size: u64,
    name: String,
}

impl<B: BlobRead + 'static> EstargzTree<B> {
    /// The tree of `reader`, reading chunks through [`ReaderChunks`].
    pub fn new(reader: EstargzReader<B>) -> Result<Self> {
        let reader = Arc::new(reader);
        let chunks = Arc::new(ReaderChunks::new(Arc::clone(&reader)));
        Self::with_chunk_source(reader, chunks)
    }
}

impl<B: BlobRead> EstargzTree<B> {
    /// The tree of `reader`, reading chunks through `chunks`.
    pub fn with_chunk_source(
        reader: Arc<EstargzReader<B>>,
        chunks: Arc<dyn ChunkSource>,
    ) -> Result<Self> {
        let (nodes, dirents) = build(reader.entries())?;
        let total_size = nodes
            .iter()
            .map(|n| reader.entries()[n.entry as usize].size)
            .sum();
        let name = format!("eStargz layer (TOC {})", reader.toc_digest());
        Ok(EstargzTree {
            reader,
            chunks,
            nodes,
            dirents,
            total_size,
            name,
        })
    }

    /// The reader the tree was built from.
    pub fn reader(&self) -> &EstargzReader<B> {
        &self.reader
    }

    /// Name the tree in log messages (a layer digest, say) instead of by its TOC digest.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    fn node(&self, ino: Ino) -> FsResult<&Node> {
        ino.0
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.nodes.get(i))
            .ok_or(FsError::NoInode(ino))
    }

    fn entry(&self, node: &Node) -> &FileEntry {
        &self.reader.entries()[node.entry as usize]
    }

    fn dir(&self, ino: Ino) -> FsResult<&[Dirent]> {
        let node = self.node(ino)?;
        if node.flags & WHITEOUT != 0 || self.entry(node).kind != EntryKind::Dir {
            return Err(FsError::NotDir(ino));
        }
        Ok(&self.dirents[node.first as usize..(node.first + node.count) as usize])
    }

    fn dirent_name(&self, d: &Dirent) -> &str {
        dirent_name(&self.reader.entries()[d.entry as usize].name)
    }

    fn kind_of(&self, node: &Node) -> FileKind {
        if node.flags & WHITEOUT != 0 {
            return FileKind::Char;
        }
        match self.entry(node).kind {
            EntryKind::Dir => FileKind::Dir,
            EntryKind::Reg | EntryKind::Hardlink => FileKind::Reg,
            EntryKind::Symlink => FileKind::Symlink,
            EntryKind::Char => FileKind::Char,
            EntryKind::Block => FileKind::Block,
            EntryKind::Fifo => FileKind::Fifo,
        }
    }
}

impl<B: BlobRead> LayerTree for EstargzTree<B> {
    fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let node = self.node(ino)?;
        let e = self.entry(node);
        let kind = self.kind_of(node);
        let whiteout = node.flags & WHITEOUT != 0;
        let size = match kind {
            FileKind::Reg => e.size,
            FileKind::Symlink => e.link_name.len() as u64,
            _ => 0,
        };
        Ok(Attr {
            ino,
            kind,
            perm: if whiteout {
                0
            } else {
                (e.mode & 0o7777) as u16
            },
            nlink: node.nlink,
            uid: u32::try_from(e.uid).unwrap_or(OVERFLOW_ID),
            gid: u32::try_from(e.gid).unwrap_or(OVERFLOW_ID),
            size,
            mtime: e.mtime,
            mtime_nsec: 0,
            rdev: match kind {
                FileKind::Char | FileKind::Block if !whiteout => (e.dev_major, e.dev_minor),
                _ => (0, 0),
            },
            blocks: blocks_of(size),
        })
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
        let dir = self.dir(parent)?;
        Ok(dir
            .binary_search_by(|d| self.dirent_name(d).as_bytes().cmp(name))
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
            name: self.dirent_name(d).as_bytes().to_vec(),
            ino: Ino(u64::from(d.node) + 1),
            kind: self.kind_of(&self.nodes[d.node as usize]),
        }));
        Ok(out)
    }

    fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        if self.kind_of(node) != FileKind::Symlink {
            return Err(FsError::WrongKind(ino, "not a symlink"));
        }
        Ok(self.entry(node).link_name.as_bytes().to_vec())
    }

    fn read(&self, ino: Ino, off: u64, size: u32) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        match self.kind_of(node) {
            FileKind::Reg => {}
            FileKind::Dir => return Err(FsError::IsDir(ino)),
            _ => return Err(FsError::WrongKind(ino, "not a regular file")),
        }
        let file = self.entry(node);
        let end = off.saturating_add(u64::from(size)).min(file.size);
        let mut out = Vec::with_capacity(end.saturating_sub(off) as usize);
        let first = file
            .chunks
            .partition_point(|c| c.file_offset + c.size <= off);
        for chunk in &file.chunks[first..] {
            let pos = off + out.len() as u64;
            if pos >= end {
                break;
            }
            let data = self
                .chunks
                .chunk(file, chunk)
                .map_err(|e| FsError::layer(ino, e))?;
            if data[..].len() as u64 != chunk.size {
                return Err(FsError::layer(
                    ino,
                    Error::format(format!(
                        "chunk at offset {} of `{}`: {} bytes, expected {}",
                        chunk.file_offset,
                        file.name,
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
        if node.flags & WHITEOUT != 0 {
            return Ok(Vec::new());
        }
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = self
            .entry(node)
            .xattrs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect();
        if node.flags & OPAQUE != 0 && !out.iter().any(|(k, _)| k == OVERLAY_OPAQUE) {
            out.push((OVERLAY_OPAQUE.to_vec(), b"y".to_vec()));
        }
        Ok(out)
    }

    fn statfs(&self) -> StatFs {
        StatFs {
            blocks: self.total_size.div_ceil(4096),
            files: self.nodes.len() as u64,
            block_size: 4096,
            name_max: 255,
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// The last component of a normalised name.
fn leaf(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, l)| l)
}

fn parent_name(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(p, _)| p)
}

/// The name a dirent shows: the leaf, less the `.wh.` of a whiteout.
fn dirent_name(entry_name: &str) -> &str {
    let l = leaf(entry_name);
    l.strip_prefix(WHITEOUT_PREFIX).unwrap_or(l)
}

/// How an entry enters the tree.
enum Class {
    Plain,
    Hardlink,
    Whiteout,
    Opaque,
    Hidden,
}

fn classify(e: &FileEntry) -> Class {
    let l = leaf(&e.name);
    if l == OPAQUE_MARKER && e.kind != EntryKind::Dir {
        Class::Opaque
    } else if l.starts_with(WHITEOUT_META_PREFIX)
        || (l.starts_with(WHITEOUT_PREFIX) && e.kind == EntryKind::Dir)
    {
        // aufs metadata, or a directory under a whiteout name: hidden with its contents.
        Class::Hidden
    } else if let Some(hidden) = l.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            Class::Hidden
        } else {
            Class::Whiteout
        }
    } else if e.kind == EntryKind::Hardlink {
        Class::Hardlink
    } else {
        Class::Plain
    }
}

fn index(i: usize, what: &str) -> Result<u32> {
    u32::try_from(i).map_err(|_| Error::Unsupported(format!("more than 2^32 {what}")))
}

/// The inode table and directory listings of `entries` (root first, parents before children).
fn build(entries: &[FileEntry]) -> Result<(Vec<Node>, Vec<Dirent>)> {
    if entries.first().is_none_or(|r| r.kind != EntryKind::Dir) {
        return Err(Error::format("eStargz TOC: the root is not a directory"));
    }
    let mut nodes = vec![Node {
        entry: 0,
        parent: 0,
        nlink: 2,
        first: 0,
        count: 0,
        flags: 0,
    }];
    // Every shown path → its node; only for the build.
    let mut by_path: HashMap<&str, u32> = HashMap::from([("", 0)]);
    // (directory node, dirent), sorted into place at the end.
    let mut links: Vec<(u32, Dirent)> = Vec::with_capacity(entries.len());
    let (mut hardlinks, mut whiteouts) = (Vec::new(), Vec::new());

    let parent_dir = |by_path: &HashMap<&str, u32>, nodes: &[Node], name: &str| {
        by_path
            .get(parent_name(name))
            .copied()
            .filter(|&p| nodes[p as usize].flags & WHITEOUT == 0)
            .filter(|&p| entries[nodes[p as usize].entry as usize].kind == EntryKind::Dir)
    };

    for (i, e) in entries.iter().enumerate().skip(1) {
        let class = classify(e);
        match class {
            Class::Hidden => continue,
            Class::Hardlink => {
                hardlinks.push(i);
                continue;
            }
            Class::Whiteout | Class::Opaque => {
                whiteouts.push(i);
                continue;
            }
            Class::Plain => {}
        }
        // A parent hidden (aufs metadata) hides its contents.
        let Some(parent) = parent_dir(&by_path, &nodes, &e.name) else {
            continue;
        };
        let id = index(nodes.len(), "inodes")?;
        let is_dir = e.kind == EntryKind::Dir;
        nodes.push(Node {
            entry: index(i, "entries")?,
            parent,
            nlink: if is_dir { 2 } else { 1 },
            first: 0,
            count: 0,
            flags: 0,
        });
        if is_dir {
            nodes[parent as usize].nlink += 1;
        }
        by_path.insert(&e.name, id);
        links.push((
            parent,
            Dirent {
                entry: index(i, "entries")?,
                node: id,
            },
        ));
    }

    for i in hardlinks {
        let e = &entries[i];
        let (Some(parent), Some(&target)) = (
            parent_dir(&by_path, &nodes, &e.name),
            by_path.get(e.link_name.as_str()),
        ) else {
            // The target or the parent is hidden aufs metadata.
            continue;
        };
        nodes[target as usize].nlink += 1;
        by_path.insert(&e.name, target);
        links.push((
            parent,
            Dirent {
                entry: index(i, "entries")?,
                node: target,
            },
        ));
    }

    for i in whiteouts {
        let e = &entries[i];
        let Some(parent) = parent_dir(&by_path, &nodes, &e.name) else {
            continue;
        };
        if leaf(&e.name) == OPAQUE_MARKER {
            nodes[parent as usize].flags |= OPAQUE;
            continue;
        }
        let dir = parent_name(&e.name);
        let hidden = dirent_name(&e.name);
        let shown = if dir.is_empty() {
            hidden.to_string()
        } else {
            format!("{dir}/{hidden}")
        };
        if let Some(&present) = by_path.get(shown.as_str()) {
            // Replaced in this layer: a directory must not merge with the lower one.
            let n = &mut nodes[present as usize];
            if n.flags & WHITEOUT == 0 && entries[n.entry as usize].kind == EntryKind::Dir {
                n.flags |= OPAQUE;
            }
            continue;
        }
        let id = index(nodes.len(), "inodes")?;
        nodes.push(Node {
            entry: index(i, "entries")?,
            parent,
            nlink: 1,
            first: 0,
            count: 0,
            flags: WHITEOUT,
        });
        links.push((
            parent,
            Dirent {
                entry: index(i, "entries")?,
                node: id,
            },
        ));
    }

    links.sort_unstable_by(|(pa, a), (pb, b)| {
        pa.cmp(pb).then_with(|| {
            dirent_name(&entries[a.entry as usize].name)
                .cmp(dirent_name(&entries[b.entry as usize].name))
        })
    });
    let mut dirents = Vec::with_capacity(links.len());
    let mut start = 0;
    while start < links.len() {
        let dir = links[start].0;
        let end = start + links[start..].partition_point(|(p, _)| *p == dir);
        nodes[dir as usize].first = index(start, "names")?;
        nodes[dir as usize].count = index(end - start, "names")?;
        dirents.extend(links[start..end].iter().map(|(_, d)| *d));
        start = end;
    }
    Ok((nodes, dirents))
}

//! Where everything goes: nids for inodes, blocks for directory, symlink and file data.
//!
//! The image is planned in full before a byte is written, so it can be emitted in increasing
//! offset order to a sequential sink:
//!
//! ```text
//! block 0..      superblock at 1024, then inodes from nid 36, each followed by its inline
//!                xattrs and inline data (never crossing a block)
//! then           directory blocks and long symlink targets        } the metadata region
//! then           data of prefetch-listed files, in list order
//! then           data of every other regular file, in layer order
//! ```
//!
//! A prefetch-listed file the workload read sparsely (a large file of which it read little)
//! is stored chunk-based instead: a block map of [`CHUNK_BITS`]-sized chunks after its inode,
//! the chunks it read in the prefetch region at its place in the list, the rest at its place
//! among the other files. Every other file is one run of blocks.

use std::collections::{HashMap, HashSet};

use crate::erofs::format::{BLOCK_BITS, BLOCK_SIZE, NULL_ADDR, SLOT_SIZE, SUPER_OFFSET};
use crate::error::{Error, Result};
use crate::prefetch::PrefetchList;

use super::dir::DirShape;
use super::tree::{NodeId, NodeKind, Tree, ROOT};
use super::xattr::{self, XattrBody};

/// An inode number: the inode's byte offset / 32 (the metadata area starts at block 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nid(pub u64);

impl Nid {
    /// Byte offset of the inode in the image.
    pub fn offset(self) -> u64 {
        self.0 * SLOT_SIZE
    }
}

/// Every inode is extended (64 bytes): per-file mtimes with nanoseconds on every kernel.
pub(super) const INODE_SIZE: u64 = 64;

/// Regular files up to this size go inline with their inode when they fit: they arrive with
/// the metadata, and tiny files cost no data block of their own. Larger ones go to the data
/// area, so the metadata region (always fetched) stays small for lazy pulls.
pub(super) const INLINE_FILE_MAX: u64 = 1024;

/// Chunk size of sparsely read files (64 KiB): small enough that the prefetch region holds
/// little the workload did not read, large enough that the block map stays small (4 bytes per
/// chunk: 8 KiB for a 130 MB file).
pub(super) const CHUNK_BITS: u8 = 16;

/// Bytes of one block-map entry (a 32-bit start block).
const BLOCK_MAP_ENTRY: u64 = 4;

/// The first inode sits right after the superblock's 128 bytes (nid 36, as mkfs does).
const FIRST_INODE: u64 = SUPER_OFFSET + 128;

/// Where an inode's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Data {
    /// No data: devices, FIFOs, empty files (FLAT_PLAIN, `i_u` 0 or the device number).
    None,
    /// All of it right after inode and xattrs (FLAT_INLINE, no full blocks).
    Inline,
    /// Full blocks from `startblk`, the tail inline (FLAT_INLINE; directories only).
    BlocksAndTail { startblk: u32 },
    /// Every byte in blocks from `startblk` (FLAT_PLAIN).
    Blocks { startblk: u32 },
    /// Chunks of 2^[`CHUNK_BITS`] bytes, each starting at its entry of `chunk_blocks`
    /// (CHUNK_BASED with a block map right after inode and xattrs).
    Chunked,
}

/// The plan of one inode.
#[derive(Debug)]
pub(super) struct InodePlan {
    pub node: NodeId,
    pub nid: Nid,
    pub xattrs: XattrBody,
    /// `i_size`.
    pub size: u64,
    pub data: Data,
    /// Directories: how the entries split into blocks.
    pub dir_shape: Option<DirShape>,
    /// Bytes of data stored inline after the xattrs.
    pub inline_len: u64,
    /// Bytes stored in blocks (`Data::Blocks*`, `Data::Chunked`), before padding.
    pub block_len: u64,
    /// `Data::Chunked`: each chunk's start block.
    pub chunk_blocks: Vec<u32>,
}

impl InodePlan {
    /// Bytes of the block map after the xattrs (chunk-based files only).
    pub fn table_len(&self) -> u64 {
        self.chunk_blocks.len() as u64 * BLOCK_MAP_ENTRY
    }
}

/// A run of a regular file's bytes in the data area, starting on a block boundary and padded
/// to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extent {
    /// Index in `Plan::inodes`.
    pub inode: usize,
    /// Offset in the file.
    pub offset: u64,
    pub len: u64,
}

/// The plan of the whole image.
#[derive(Debug)]
pub(super) struct Plan {
    /// Inodes in nid order.
    pub inodes: Vec<InodePlan>,
    /// Node → index in `inodes`.
    pub by_node: Vec<usize>,
    pub metadata_end: u64,
    /// The data area after `metadata_end`, in image order.
    pub extents: Vec<Extent>,
    /// Whether some file is chunk-based (a feature flag for the superblock).
    pub chunked: bool,
    pub prefetch_end: u64,
    /// Image size in bytes (whole blocks).
    pub size: u64,
}

impl Plan {
    /// Plans the image of `tree`, the files of `prefetch` first.
    pub fn new(tree: &Tree, prefetch: Option<&PrefetchList>) -> Result<Plan> {
        let (listed, sparse) = resolve(tree, prefetch);
        let order = nid_order(tree);
        let mut inodes = Vec::with_capacity(order.len());
        let mut by_node = vec![usize::MAX; tree.nodes.len()];
        let mut cursor = FIRST_INODE;
        for node in order {
            let mut p = shape(tree, node, sparse.contains_key(&node))?;
            let footprint = INODE_SIZE + p.xattrs.bytes.len() as u64 + p.inline_len + p.table_len();
            // The inline tail must not cross a block; keeping inode and xattrs in the same
            // block too means no reader ever stitches an inode from two blocks. (A block map
            // may span blocks: its 4-byte entries never straddle one.)
            if cursor % BLOCK_SIZE + footprint > BLOCK_SIZE {
                cursor = cursor.next_multiple_of(BLOCK_SIZE);
            }
            p.nid = Nid(cursor / SLOT_SIZE);
            cursor += footprint.next_multiple_of(SLOT_SIZE);
            by_node[node] = inodes.len();
            inodes.push(p);
        }
        let inode_area_end = cursor.next_multiple_of(BLOCK_SIZE);

        // Directory blocks and long symlinks: metadata, placed right after the inodes.
        let mut next_block = inode_area_end / BLOCK_SIZE;
        for p in inodes.iter_mut() {
            if tree.nodes[p.node].is_reg() || p.block_len == 0 {
                continue;
            }
            let startblk = block_no(next_block)?;
            p.data = match p.data {
                Data::BlocksAndTail { .. } => Data::BlocksAndTail { startblk },
                _ => Data::Blocks { startblk },
            };
            next_block += p.block_len.div_ceil(BLOCK_SIZE);
        }
        let metadata_end = next_block * BLOCK_SIZE;

        // Regular files' data: prefetch-listed ones in list order (only the chunks read, for
        // sparse ones), then the rest in the layer's order.
        let mut area = DataArea {
            next_block,
            extents: Vec::new(),
        };
        let mut whole = HashSet::new();
        for &node in &listed {
            let i = by_node[node];
            if inodes[i].block_len == 0 || whole.contains(&i) {
                continue;
            }
            match sparse.get(&node) {
                Some(chunks) => area.chunks(&mut inodes[i], i, chunks.iter().copied())?,
                None => {
                    area.whole(&mut inodes[i], i)?;
                    whole.insert(i);
                }
            }
        }
        let prefetch_end = area.next_block * BLOCK_SIZE;
        let mut rest: Vec<usize> = (0..inodes.len())
            .filter(|&i| {
                inodes[i].block_len > 0
                    && tree.nodes[inodes[i].node].is_reg()
                    && !whole.contains(&i)
            })
            .collect();
        rest.sort_by_key(|&i| tree.nodes[inodes[i].node].order);
        for i in rest {
            let p = &mut inodes[i];
            if p.data == Data::Chunked {
                let unplaced: Vec<u64> = (0..p.chunk_blocks.len() as u64)
                    .filter(|&k| p.chunk_blocks[k as usize] == NULL_ADDR)
                    .collect();
                area.chunks(p, i, unplaced.into_iter())?;
            } else {
                area.whole(p, i)?;
            }
        }
        // `blocks` in the superblock is a u32 too.
        block_no(area.next_block)?;
        Ok(Plan {
            chunked: !sparse.is_empty(),
            inodes,
            by_node,
            metadata_end,
            extents: area.extents,
            prefetch_end,
            size: area.next_block * BLOCK_SIZE,
        })
    }

    /// The plan of `node`.
    pub fn of(&self, node: NodeId) -> &InodePlan {
        &self.inodes[self.by_node[node]]
    }
}

fn block_no(block: u64) -> Result<u32> {
    u32::try_from(block).map_err(|_| {
        Error::Unsupported(format!(
            "image of {block}+ blocks exceeds EROFS's 32-bit block addresses (16 TiB)"
        ))
    })
}

/// The data area as it fills up.
struct DataArea {
    next_block: u64,
    extents: Vec<Extent>,
}

impl DataArea {
    /// The next blocks for `len` bytes of inode `i` from `offset`; returns the first.
    fn take(&mut self, i: usize, offset: u64, len: u64) -> Result<u32> {
        let first = block_no(self.next_block)?;
        self.extents.push(Extent {
            inode: i,
            offset,
            len,
        });
        self.next_block += len.div_ceil(BLOCK_SIZE);
        Ok(first)
    }

    /// All of a flat file, in one run.
    fn whole(&mut self, p: &mut InodePlan, i: usize) -> Result<()> {
        p.data = Data::Blocks {
            startblk: self.take(i, 0, p.block_len)?,
        };
        Ok(())
    }

    /// Chunks `chunks` (increasing) of a chunk-based file, consecutive ones in one run.
    fn chunks(
        &mut self,
        p: &mut InodePlan,
        i: usize,
        chunks: impl Iterator<Item = u64>,
    ) -> Result<()> {
        let chunk = 1u64 << CHUNK_BITS;
        let per_chunk = 1u32 << (CHUNK_BITS - BLOCK_BITS);
        let mut chunks = chunks.peekable();
        while let Some(first) = chunks.next() {
            let mut last = first;
            while chunks.peek() == Some(&(last + 1)) {
                last = chunks.next().expect("peeked");
            }
            let offset = first * chunk;
            let len = ((last + 1) * chunk).min(p.size) - offset;
            let mut blk = self.take(i, offset, len)?;
            for k in first..=last {
                p.chunk_blocks[k as usize] = blk;
                blk += per_chunk;
            }
        }
        Ok(())
    }
}

/// The regular files `prefetch` lists, in its order, and of those the sparsely read ones with
/// the chunks read (increasing, deduplicated).
fn resolve(
    tree: &Tree,
    prefetch: Option<&PrefetchList>,
) -> (Vec<NodeId>, HashMap<NodeId, Vec<u64>>) {
    let mut listed = Vec::new();
    let mut sparse = HashMap::new();
    let mut seen = HashSet::new();
    for e in prefetch.into_iter().flat_map(PrefetchList::entries) {
        let Some(&node) = tree.paths.get(e.path.as_str()) else {
            continue;
        };
        let NodeKind::Reg { size, .. } = tree.nodes[node].kind else {
            continue;
        };
        if !seen.insert(node) {
            continue;
        }
        listed.push(node);
        if let Some(ranges) = e.ranges.as_ref().filter(|_| e.is_sparse(size)) {
            let mut chunks: Vec<u64> = ranges
                .iter()
                .filter(|&(s, _)| s < size)
                .flat_map(|(s, end)| (s >> CHUNK_BITS)..=((end.min(size) - 1) >> CHUNK_BITS))
                .collect();
            chunks.dedup();
            sparse.insert(node, chunks);
        }
    }
    (listed, sparse)
}

/// Root first, then depth-first in name order, each inode at its first link: a directory's
/// children sit near it, and the order is a function of the tree alone.
fn nid_order(tree: &Tree) -> Vec<NodeId> {
    let mut seen = vec![false; tree.nodes.len()];
    let mut order = Vec::with_capacity(tree.nodes.len());
    let mut stack = vec![ROOT];
    while let Some(node) = stack.pop() {
        if std::mem::replace(&mut seen[node], true) {
            continue;
        }
        order.push(node);
        if let NodeKind::Dir { children, .. } = &tree.nodes[node].kind {
            stack.extend(children.values().rev().copied().filter(|&c| !seen[c]));
        }
    }
    order
}

/// Size, data placement (blocks not yet numbered) and xattrs of `node`; `chunked`: a regular
/// file stored chunk-based.
fn shape(tree: &Tree, node: NodeId, chunked: bool) -> Result<InodePlan> {
    let n = &tree.nodes[node];
    let xattrs = xattr::encode(&n.path, &n.xattrs)?;
    let room = BLOCK_SIZE - INODE_SIZE;
    if xattrs.bytes.len() as u64 > room {
        return Err(Error::Unsupported(format!(
            "entry `{}`: {} bytes of xattrs do not fit inline in one block (shared xattrs are \
             not written)",
            n.path,
            xattrs.bytes.len()
        )));
    }
    let room = room - xattrs.bytes.len() as u64;
    let mut p = InodePlan {
        node,
        nid: Nid(0),
        xattrs,
        size: 0,
        data: Data::None,
        dir_shape: None,
        inline_len: 0,
        block_len: 0,
        chunk_blocks: Vec::new(),
    };
    match &n.kind {
        NodeKind::Dir { children, .. } => {
            let mut lens: Vec<&[u8]> = children.keys().map(|k| k.as_bytes()).collect();
            lens.extend([&b"."[..], &b".."[..]]);
            lens.sort_unstable();
            let s = DirShape::pack(lens.iter().map(|n| n.len()));
            p.size = s.size();
            if s.tail_len as u64 <= room {
                p.inline_len = s.tail_len as u64;
                p.block_len = s.full_blocks() * BLOCK_SIZE;
                p.data = if p.block_len > 0 {
                    Data::BlocksAndTail { startblk: 0 }
                } else {
                    Data::Inline
                };
            } else {
                p.block_len = p.size;
                p.data = Data::Blocks { startblk: 0 };
            }
            p.dir_shape = Some(s);
        }
        NodeKind::Symlink { target } => {
            p.size = target.len() as u64;
            place_whole(&mut p, room);
        }
        NodeKind::Reg { size, .. } => {
            p.size = *size;
            if chunked && p.size > 0 {
                p.block_len = p.size;
                p.data = Data::Chunked;
                p.chunk_blocks = vec![NULL_ADDR; p.size.div_ceil(1 << CHUNK_BITS) as usize];
            } else if p.size > 0 && p.size <= INLINE_FILE_MAX {
                place_whole(&mut p, room);
            } else if p.size > 0 {
                p.block_len = p.size;
                p.data = Data::Blocks { startblk: 0 };
            }
        }
        NodeKind::Char { .. } | NodeKind::Block { .. } | NodeKind::Fifo => {}
    }
    Ok(p)
}

/// Inline if it fits beside the inode, else in blocks.
fn place_whole(p: &mut InodePlan, room: u64) {
    if p.size <= room {
        p.inline_len = p.size;
        p.data = Data::Inline;
    } else {
        p.block_len = p.size;
        p.data = Data::Blocks { startblk: 0 };
    }
}

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

use std::collections::HashSet;

use crate::erofs::format::{BLOCK_SIZE, SLOT_SIZE, SUPER_OFFSET};
use crate::error::{Error, Result};

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
    /// Bytes stored in blocks (`Data::Blocks*`), before padding.
    pub block_len: u64,
}

/// The plan of the whole image.
#[derive(Debug)]
pub(super) struct Plan {
    /// Inodes in nid order.
    pub inodes: Vec<InodePlan>,
    /// Node → index in `inodes`.
    pub by_node: Vec<usize>,
    pub metadata_end: u64,
    /// Regular files in the data area, in the order their blocks follow `metadata_end`.
    pub data_files: Vec<usize>,
    pub prefetch_end: u64,
    /// Image size in bytes (whole blocks).
    pub size: u64,
}

impl Plan {
    /// Plans the image of `tree`; `prefetch` holds normalised paths.
    pub fn new(tree: &Tree, prefetch: &[String]) -> Result<Plan> {
        let order = nid_order(tree);
        let mut inodes = Vec::with_capacity(order.len());
        let mut by_node = vec![usize::MAX; tree.nodes.len()];
        let mut cursor = FIRST_INODE;
        for node in order {
            let mut p = shape(tree, node)?;
            let footprint = INODE_SIZE + p.xattrs.bytes.len() as u64 + p.inline_len;
            // The inline tail must not cross a block; keeping inode and xattrs in the same
            // block too means no reader ever stitches an inode from two blocks.
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

        // Regular files' blocks: prefetch-listed ones in list order, then the layer's order.
        let mut data_files = Vec::new();
        let mut placed = HashSet::new();
        for path in prefetch {
            let Some(&node) = tree.paths.get(path.as_str()) else {
                continue;
            };
            let i = by_node[node];
            if inodes[i].block_len > 0 && tree.nodes[node].is_reg() && placed.insert(i) {
                data_files.push(i);
            }
        }
        let prefetched = data_files.len();
        let mut rest: Vec<usize> = (0..inodes.len())
            .filter(|&i| {
                inodes[i].block_len > 0
                    && tree.nodes[inodes[i].node].is_reg()
                    && !placed.contains(&i)
            })
            .collect();
        rest.sort_by_key(|&i| tree.nodes[inodes[i].node].order);
        data_files.extend(rest);
        let mut prefetch_end = metadata_end;
        for (k, &i) in data_files.iter().enumerate() {
            let p = &mut inodes[i];
            p.data = Data::Blocks {
                startblk: block_no(next_block)?,
            };
            next_block += p.block_len.div_ceil(BLOCK_SIZE);
            if k + 1 == prefetched {
                prefetch_end = next_block * BLOCK_SIZE;
            }
        }
        // `blocks` in the superblock is a u32 too.
        block_no(next_block)?;
        Ok(Plan {
            inodes,
            by_node,
            metadata_end,
            data_files,
            prefetch_end,
            size: next_block * BLOCK_SIZE,
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

/// Size, data placement (blocks not yet numbered) and xattrs of `node`.
fn shape(tree: &Tree, node: NodeId) -> Result<InodePlan> {
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
            if p.size > 0 && p.size <= INLINE_FILE_MAX {
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

//! Bytes of a planned image: the metadata region built in memory, then file data streamed from
//! the layer's spool, all in increasing offset order.

use std::io::Write;

use zerocopy::IntoBytes;

use crate::erofs::format::{
    i_format, superblock_checksum, InodeExtended, SuperBlock, BLOCK_BITS, BLOCK_SIZE, COMPAT_MTIME,
    COMPAT_SB_CHKSUM, FT_BLKDEV, FT_CHRDEV, FT_DIR, FT_FIFO, FT_REG_FILE, FT_SYMLINK,
    INCOMPAT_CHUNKED_FILE, LAYOUT_CHUNK_BASED, LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN, NULL_ADDR,
    SUPER_MAGIC, SUPER_OFFSET, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG,
};
use crate::error::{Error, Result, ResultExt};
use crate::layer::Layer;

use super::dir::{self, DirEntry};
use super::layout::{Data, InodePlan, Plan, CHUNK_BITS, INODE_SIZE};
use super::tree::{Node, NodeKind, Tree};

/// Spool reads are bounded by this, whatever the file size.
const COPY_BUF: usize = 1 << 20;

/// The metadata region `[0, plan.metadata_end)`: superblock, inodes, xattrs, inline data,
/// directory blocks, long symlinks. Small regular files are read from the spool into it.
pub(super) fn metadata(tree: &Tree, plan: &Plan, layer: &Layer, uuid: [u8; 16]) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; plan.metadata_end as usize];
    for (i, p) in plan.inodes.iter().enumerate() {
        let node = &tree.nodes[p.node];
        let at = p.nid.offset() as usize;
        let inode = inode(node, p, i as u32 + 1);
        buf[at..at + INODE_SIZE as usize].copy_from_slice(inode.as_bytes());
        let xat = at + INODE_SIZE as usize;
        buf[xat..xat + p.xattrs.bytes.len()].copy_from_slice(&p.xattrs.bytes);
        let inline_at = xat + p.xattrs.bytes.len();
        let block_at = match p.data {
            Data::Blocks { startblk } | Data::BlocksAndTail { startblk } => {
                (u64::from(startblk) * BLOCK_SIZE) as usize
            }
            Data::None | Data::Inline | Data::Chunked => 0,
        };
        if p.data == Data::Chunked {
            // The block map, right after the xattrs (4-byte aligned: inode and xattrs are).
            debug_assert_eq!(inline_at % 4, 0);
            for (k, blk) in p.chunk_blocks.iter().enumerate() {
                let at = inline_at + 4 * k;
                buf[at..at + 4].copy_from_slice(&blk.to_le_bytes());
            }
        }
        match &node.kind {
            NodeKind::Dir { parent, children } => {
                let mut entries = vec![
                    DirEntry {
                        name: b".",
                        nid: p.nid.0,
                        file_type: FT_DIR,
                    },
                    DirEntry {
                        name: b"..",
                        nid: plan.of(*parent).nid.0,
                        file_type: FT_DIR,
                    },
                ];
                entries.extend(children.iter().map(|(name, &child)| DirEntry {
                    name: name.as_bytes(),
                    nid: plan.of(child).nid.0,
                    file_type: file_type(&tree.nodes[child].kind),
                }));
                entries.sort_unstable_by(|a, b| a.name.cmp(b.name));
                let shape = p
                    .dir_shape
                    .as_ref()
                    .expect("directories are planned with a shape");
                let bytes = dir::encode(&entries, shape);
                place(&mut buf, p, &bytes, inline_at, block_at);
            }
            NodeKind::Symlink { target } => place(&mut buf, p, target, inline_at, block_at),
            NodeKind::Reg { entry, size } if p.inline_len > 0 => {
                let e = &layer.entries[*entry];
                let dst = &mut buf[inline_at..inline_at + *size as usize];
                layer
                    .read_content(e, 0, dst)
                    .with_context(|| format!("entry `{}`", e.name))?;
            }
            _ => {}
        }
    }
    write_superblock(&mut buf, plan, uuid);
    Ok(buf)
}

/// Puts `bytes` where the plan says: blocks first (whole blocks, the last padded), the
/// remainder inline.
fn place(buf: &mut [u8], p: &InodePlan, bytes: &[u8], inline_at: usize, block_at: usize) {
    let in_blocks = p.block_len as usize;
    buf[block_at..block_at + in_blocks].copy_from_slice(&bytes[..in_blocks]);
    let tail = &bytes[in_blocks..];
    debug_assert_eq!(tail.len() as u64, p.inline_len);
    buf[inline_at..inline_at + tail.len()].copy_from_slice(tail);
}

fn inode(node: &Node, p: &InodePlan, ino: u32) -> InodeExtended {
    let layout = match p.data {
        Data::Inline | Data::BlocksAndTail { .. } => LAYOUT_FLAT_INLINE,
        Data::None | Data::Blocks { .. } => LAYOUT_FLAT_PLAIN,
        Data::Chunked => LAYOUT_CHUNK_BASED,
    };
    let (ifmt, i_u) = match node.kind {
        NodeKind::Dir { .. } => (S_IFDIR, startblk(p.data)),
        // A chunk-based file's `i_u` is its chunk format: log2(chunk / block), no flags (a
        // block map, not chunk indexes).
        NodeKind::Reg { .. } if p.data == Data::Chunked => {
            (S_IFREG, u32::from(CHUNK_BITS - BLOCK_BITS))
        }
        NodeKind::Reg { .. } => (S_IFREG, startblk(p.data)),
        NodeKind::Symlink { .. } => (S_IFLNK, startblk(p.data)),
        NodeKind::Char { rdev } => (S_IFCHR, rdev),
        NodeKind::Block { rdev } => (S_IFBLK, rdev),
        NodeKind::Fifo => (S_IFIFO, 0),
    };
    InodeExtended {
        i_format: i_format(true, layout).into(),
        i_xattr_icount: p.xattrs.icount.into(),
        i_mode: (ifmt | node.perm).into(),
        i_nb: 0.into(),
        i_size: p.size.into(),
        i_u: i_u.into(),
        i_ino: ino.into(),
        i_uid: node.uid.into(),
        i_gid: node.gid.into(),
        // Two's complement: the kernel reads the field as a signed time64_t.
        i_mtime: (node.mtime as u64).into(),
        i_mtime_nsec: node.mtime_nsec.into(),
        i_nlink: node.nlink.into(),
        reserved: [0; 16],
    }
}

/// `i_u` of a flat inode: its first block; "none" for inline-only data (as mkfs writes), and 0
/// for no data (FLAT_PLAIN with a null address reads as a hole only on 6.15+).
fn startblk(data: Data) -> u32 {
    match data {
        Data::None | Data::Chunked => 0,
        Data::Inline => NULL_ADDR,
        Data::BlocksAndTail { startblk } | Data::Blocks { startblk } => startblk,
    }
}

fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::Dir { .. } => FT_DIR,
        NodeKind::Reg { .. } => FT_REG_FILE,
        NodeKind::Symlink { .. } => FT_SYMLINK,
        NodeKind::Char { .. } => FT_CHRDEV,
        NodeKind::Block { .. } => FT_BLKDEV,
        NodeKind::Fifo => FT_FIFO,
    }
}

/// The superblock goes in last: its checksum covers the rest of block 0, inodes included.
fn write_superblock(buf: &mut [u8], plan: &Plan, uuid: [u8; 16]) {
    let sb = SuperBlock {
        magic: SUPER_MAGIC.into(),
        checksum: 0.into(),
        feature_compat: (COMPAT_SB_CHKSUM | COMPAT_MTIME).into(),
        blkszbits: BLOCK_BITS,
        sb_extslots: 0,
        // Below 65536: the root is the first inode, at nid 36.
        root_nid: (plan.of(super::tree::ROOT).nid.0 as u16).into(),
        inos: (plan.inodes.len() as u64).into(),
        build_time: 0.into(),
        build_time_nsec: 0.into(),
        // Plan::new checked the block count fits.
        blocks: ((plan.size / BLOCK_SIZE) as u32).into(),
        meta_blkaddr: 0.into(),
        xattr_blkaddr: 0.into(),
        uuid,
        volume_name: [0; 16],
        feature_incompat: if plan.chunked {
            INCOMPAT_CHUNKED_FILE
        } else {
            0
        }
        .into(),
        u1: 0.into(),
        extra_devices: 0.into(),
        devt_slotoff: 0.into(),
        dirblkbits: 0,
        xattr_prefix_count: 0,
        xattr_prefix_start: 0.into(),
        packed_nid: 0.into(),
        xattr_filter_reserved: 0,
        reserved: [0; 23],
    };
    let at = SUPER_OFFSET as usize;
    buf[at..at + size_of::<SuperBlock>()].copy_from_slice(sb.as_bytes());
    let csum = superblock_checksum(&buf[at..BLOCK_SIZE as usize]);
    buf[at + 4..at + 8].copy_from_slice(&csum.to_le_bytes());
}

/// Streams the data area: each planned extent's bytes from the spool, padded to its last block.
pub(super) fn data<W: Write>(tree: &Tree, plan: &Plan, layer: &Layer, out: &mut W) -> Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    for x in &plan.extents {
        let p = &plan.inodes[x.inode];
        let NodeKind::Reg { entry, .. } = tree.nodes[p.node].kind else {
            unreachable!("only regular files are in the data area")
        };
        let e = &layer.entries[entry];
        let write_err = |err| Error::io(format!("write EROFS data of `{}`", e.name), err);
        let mut done = 0;
        while done < x.len {
            let n = (x.len - done).min(COPY_BUF as u64) as usize;
            layer
                .read_content(e, x.offset + done, &mut buf[..n])
                .with_context(|| format!("entry `{}`", e.name))?;
            out.write_all(&buf[..n]).map_err(write_err)?;
            done += n as u64;
        }
        let pad = (x.len.next_multiple_of(BLOCK_SIZE) - x.len) as usize;
        buf[..pad].fill(0);
        out.write_all(&buf[..pad]).map_err(write_err)?;
    }
    Ok(())
}

//! The superblock: what must hold before anything else is read.

use zerocopy::FromBytes;

use crate::blob::BlobRead;
use crate::erofs::format::{self, SuperBlock};
use crate::error::{Error, Result};

/// feature_incompat bits that only change how compressed file data is stored. Images with them
/// open (their metadata reads like any other); reading a compressed file is `Unsupported`.
const INCOMPAT_COMPRESSION_ONLY: u32 = 0x01 // LZ4_0PADDING
    | 0x02 // COMPR_CFGS / BIG_PCLUSTER
    | 0x10 // ZTAILPACKING
    | 0x20; // FRAGMENTS / DEDUPE

/// Smallest and largest accepted `blkszbits` (512 B to 4 KiB, what kernels mount on x86-64).
const MIN_BLKBITS: u8 = 9;
const MAX_BLKBITS: u8 = 12;

/// Read and check the superblock of `blob`.
pub(super) fn read<B: BlobRead>(blob: &B) -> Result<SuperBlock> {
    let size = size_of::<SuperBlock>() as u64;
    if blob.len() < format::SUPER_OFFSET + size {
        return Err(Error::format(format!(
            "image of {} bytes is too small to hold a superblock",
            blob.len()
        )));
    }
    let raw = blob.read_vec(format::SUPER_OFFSET, size)?;
    let sb = SuperBlock::read_from_bytes(&raw).expect("buffer has the superblock's size");

    if sb.magic.get() != format::SUPER_MAGIC {
        return Err(Error::format(format!(
            "bad magic {:#010x} (expected {:#010x})",
            sb.magic.get(),
            format::SUPER_MAGIC
        )));
    }
    let bits = sb.blkszbits;
    if !(MIN_BLKBITS..=MAX_BLKBITS).contains(&bits) {
        return Err(Error::format(format!(
            "block size 2^{bits} is not between 2^{MIN_BLKBITS} and 2^{MAX_BLKBITS}"
        )));
    }
    let unknown =
        sb.feature_incompat.get() & !(format::INCOMPAT_SUPPORTED | INCOMPAT_COMPRESSION_ONLY);
    if unknown != 0 {
        return Err(Error::Unsupported(format!(
            "incompatible features {unknown:#x} (of {:#x})",
            sb.feature_incompat.get()
        )));
    }
    if sb.dirblkbits != 0 {
        return Err(Error::format(format!(
            "dirblkbits {} (must be 0)",
            sb.dirblkbits
        )));
    }
    if sb.feature_compat.get() & format::COMPAT_SB_CHKSUM != 0 {
        check_checksum(blob, &sb)?;
    }
    let meta_base = u64::from(sb.meta_blkaddr.get()) << bits;
    let root_end = meta_base + (u64::from(sb.root_nid.get()) + 1) * format::SLOT_SIZE;
    if root_end > blob.len() {
        return Err(Error::format(format!(
            "root nid {} lies past the end of the image ({} bytes)",
            sb.root_nid.get(),
            blob.len()
        )));
    }
    if sb.xattr_blkaddr.get() != 0 && u64::from(sb.xattr_blkaddr.get()) << bits >= blob.len() {
        return Err(Error::format(format!(
            "shared xattr area at block {} lies past the end of the image",
            sb.xattr_blkaddr.get()
        )));
    }
    Ok(sb)
}

/// CRC32C over the rest of the superblock's block (the first block after it for blocks of
/// 1 KiB or less), the checksum field zeroed.
fn check_checksum<B: BlobRead>(blob: &B, sb: &SuperBlock) -> Result<()> {
    let block = 1u64 << sb.blkszbits;
    let len = if block > format::SUPER_OFFSET {
        block - format::SUPER_OFFSET
    } else {
        block
    };
    let mut bytes = blob.read_vec(format::SUPER_OFFSET, len)?;
    bytes[4..8].fill(0);
    let actual = format::superblock_checksum(&bytes);
    if actual != sb.checksum.get() {
        return Err(Error::format(format!(
            "checksum {:#010x} does not match the computed {actual:#010x}",
            sb.checksum.get()
        )));
    }
    Ok(())
}

//! EROFS on-disk definitions, as the Linux kernel reads them (`fs/erofs/erofs_fs.h`), and the
//! erofs-image-spec chunk index (`spec.md` §3.4).
//!
//! Every struct is `#[repr(C)]` with little-endian field types, so a struct is its bytes; each
//! has a compile-time size check. Readers and writers use these and nothing else for layout.
//! See `docs/formats/erofs.md` for the layout lazypull writes.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The superblock sits at this byte offset of the image.
pub const SUPER_OFFSET: u64 = 1024;
/// Superblock magic.
pub const SUPER_MAGIC: u32 = 0xE0F5_E1E2;
/// log2 of the block size lazypull writes (4 KiB, what every kernel mounts).
pub const BLOCK_BITS: u8 = 12;
/// The block size lazypull writes.
pub const BLOCK_SIZE: u64 = 1 << BLOCK_BITS;
/// Inodes are addressed in 32-byte slots: `nid * 32` from the metadata start.
pub const SLOT_BITS: u32 = 5;
/// Size of one inode slot.
pub const SLOT_SIZE: u64 = 1 << SLOT_BITS;
/// "No block" in `startblk` fields.
pub const NULL_ADDR: u32 = 0xFFFF_FFFF;
/// Longest name a directory entry may hold.
pub const NAME_MAX: usize = 255;

/// feature_compat: the superblock checksum is valid.
pub const COMPAT_SB_CHKSUM: u32 = 0x1;
/// feature_compat: compact inodes carry their own mtime offset (informational).
pub const COMPAT_MTIME: u32 = 0x2;
/// feature_incompat: chunk-based files (datalayout 4).
pub const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// feature_incompat: device table present.
pub const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
/// feature_incompat bits a reader of this crate understands.
pub const INCOMPAT_SUPPORTED: u32 = INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE;

/// Superblock (128 bytes at [`SUPER_OFFSET`]). Fields lazypull does not use are reserved and
/// must be zero in what it writes.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    pub magic: U32,
    /// CRC32C over the superblock's block from [`SUPER_OFFSET`], this field zeroed.
    pub checksum: U32,
    pub feature_compat: U32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: U16,
    /// Number of inodes.
    pub inos: U64,
    /// Base time of compact inodes.
    pub build_time: U64,
    pub build_time_nsec: U32,
    /// Image size in blocks.
    pub blocks: U32,
    /// First block of the inode area.
    pub meta_blkaddr: U32,
    /// First block of the shared-xattr area.
    pub xattr_blkaddr: U32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: U32,
    /// `available_compr_algs` or `lz4_max_distance`; 0 without compression.
    pub u1: U16,
    pub extra_devices: U16,
    pub devt_slotoff: U16,
    /// Must be 0.
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    pub xattr_prefix_start: U32,
    pub packed_nid: U64,
    pub xattr_filter_reserved: u8,
    pub reserved: [u8; 23],
}
const _: () = assert!(size_of::<SuperBlock>() == 128);

/// `i_format` bit 0: the inode is extended (64 bytes).
pub const INODE_EXTENDED: u16 = 1;
/// Data layout: `ceil(size/B)` contiguous blocks from `startblk`.
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
/// Data layout: `floor(size/B)` blocks at `startblk`, the tail right after inode and xattrs.
pub const LAYOUT_FLAT_INLINE: u16 = 2;
/// Data layout: a chunk table follows the inode.
pub const LAYOUT_CHUNK_BASED: u16 = 4;

/// `i_format` from version and data layout (bit 4 and up stay zero: older kernels refuse them).
pub const fn i_format(extended: bool, layout: u16) -> u16 {
    (layout << 1) | if extended { INODE_EXTENDED } else { 0 }
}

/// The data layout of an `i_format`.
pub const fn i_format_layout(format: u16) -> u16 {
    (format >> 1) & 0x7
}

/// Compact inode (32 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeCompact {
    pub i_format: U16,
    /// Inline xattr size: 0, or `12 + 4 * (icount - 1)` bytes.
    pub i_xattr_icount: U16,
    pub i_mode: U16,
    pub i_nlink: U16,
    pub i_size: U32,
    /// mtime offset from the superblock's `build_time` (kernels ≥ 6.15; older ones ignore it).
    pub i_mtime: U32,
    /// `startblk`, `rdev`, or the chunk format, by file type and layout.
    pub i_u: U32,
    pub i_ino: U32,
    pub i_uid: U16,
    pub i_gid: U16,
    pub reserved: U32,
}
const _: () = assert!(size_of::<InodeCompact>() == 32);

/// Extended inode (64 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeExtended {
    pub i_format: U16,
    pub i_xattr_icount: U16,
    pub i_mode: U16,
    /// Must be 0.
    pub i_nb: U16,
    pub i_size: U64,
    pub i_u: U32,
    pub i_ino: U32,
    pub i_uid: U32,
    pub i_gid: U32,
    pub i_mtime: U64,
    pub i_mtime_nsec: U32,
    pub i_nlink: U32,
    pub reserved: [u8; 16],
}
const _: () = assert!(size_of::<InodeExtended>() == 64);

/// Directory entry (12 bytes); names follow the entry array in the same block.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Dirent {
    pub nid: U64,
    /// Offset of the name within the block.
    pub nameoff: U16,
    pub file_type: u8,
    pub reserved: u8,
}
const _: () = assert!(size_of::<Dirent>() == 12);

/// Directory entry file types.
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;
/// File types at or above this are invalid.
pub const FT_MAX: u8 = 8;

/// Inline xattr header (12 bytes), followed by `h_shared_count` u32 shared ids, then entries.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrIbodyHeader {
    /// Bloom filter (XATTR_FILTER); 0 when unused.
    pub h_name_filter: U32,
    pub h_shared_count: u8,
    pub h_reserved2: [u8; 7],
}
const _: () = assert!(size_of::<XattrIbodyHeader>() == 12);

/// Xattr entry header (4 bytes), followed by the name suffix and the value, padded to 4.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrEntry {
    pub e_name_len: u8,
    pub e_name_index: u8,
    pub e_value_size: U16,
}
const _: () = assert!(size_of::<XattrEntry>() == 4);

/// Xattr name prefixes by index (`e_name_index`); the name stored is what follows the prefix.
/// Index 2 and 3 name whole attributes (the suffix is empty).
pub const XATTR_PREFIXES: [(u8, &str); 6] = [
    (1, "user."),
    (2, "system.posix_acl_access"),
    (3, "system.posix_acl_default"),
    (4, "trusted."),
    (5, "lustre."),
    (6, "security."),
];

/// Size of the inline xattr area for an `i_xattr_icount`.
pub const fn xattr_ibody_size(icount: u16) -> u64 {
    if icount == 0 {
        0
    } else {
        12 + 4 * (icount as u64 - 1)
    }
}

/// Chunk-based file index entry (8 bytes), used with chunk format [`CHUNK_FORMAT_INDEXES`].
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkIndexEntry {
    /// Must be 0 without the 48-bit feature.
    pub startblk_hi: U16,
    pub device_id: U16,
    pub startblk_lo: U32,
}
const _: () = assert!(size_of::<ChunkIndexEntry>() == 8);

/// Chunk format bit: the table holds [`ChunkIndexEntry`] rather than u32 block addresses.
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;
/// Chunk format mask of `chunkbits - blkszbits`.
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x1f;

/// Device table slot (128 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DeviceSlot {
    pub tag: [u8; 64],
    pub blocks: U32,
    pub mapped_blkaddr: U32,
    pub reserved: [u8; 56],
}
const _: () = assert!(size_of::<DeviceSlot>() == 128);

/// Linux `new_encode_dev`, how EROFS stores `rdev` in `i_u`.
pub const fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Inverse of [`encode_dev`]: `(major, minor)`.
pub const fn decode_dev(rdev: u32) -> (u32, u32) {
    (
        (rdev & 0xfff00) >> 8,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

/// The superblock checksum: CRC32C (Castagnoli) seeded with all ones and not inverted at the
/// end, over `block[SUPER_OFFSET..]` with the checksum field zeroed. `crc32c::crc32c` inverts
/// its result, hence the `!`.
pub fn superblock_checksum(block_from_super: &[u8]) -> u32 {
    !crc32c::crc32c(block_from_super)
}

/// POSIX file type bits of `i_mode`.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFIFO: u16 = 0o010000;

// --- erofs-image-spec chunk index (spec.md §3.4) -------------------------------------------

/// Media type of a raw EROFS layer.
pub const MEDIA_TYPE_EROFS: &str = "application/vnd.erofs";
/// Media type of a zstd-framed EROFS layer.
pub const MEDIA_TYPE_EROFS_ZSTD: &str = "application/vnd.erofs+zstd";
/// [`MEDIA_TYPE_EROFS`] under the OCI layer prefix. containerd 1.6 treats only media types
/// starting with `application/vnd.oci.image.layer.` (and Docker's) as layers: its CRI plugin and
/// `ctr-remote rpull` send a remote snapshotter its labels for those alone, so an EROFS image can
/// be pulled lazily through containerd 1.6 only under this name. Not in the erofs-image-spec.
pub const MEDIA_TYPE_OCI_LAYER_EROFS: &str = "application/vnd.oci.image.layer.v1.erofs";
/// [`MEDIA_TYPE_EROFS_ZSTD`] under the OCI layer prefix, for the reason given at
/// [`MEDIA_TYPE_OCI_LAYER_EROFS`].
pub const MEDIA_TYPE_OCI_LAYER_EROFS_ZSTD: &str = "application/vnd.oci.image.layer.v1.erofs+zstd";
/// Which names an EROFS layer's media type is written under; the bytes are the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErofsMediaTypes {
    /// The erofs-image-spec's: [`MEDIA_TYPE_EROFS_ZSTD`], [`MEDIA_TYPE_EROFS`].
    #[default]
    Spec,
    /// Under the OCI layer prefix, which containerd 1.6 labels for a remote snapshotter:
    /// [`MEDIA_TYPE_OCI_LAYER_EROFS_ZSTD`], [`MEDIA_TYPE_OCI_LAYER_EROFS`].
    OciLayer,
}

impl ErofsMediaTypes {
    /// The media type of a layer with this framing.
    pub fn media_type(self, framing: ErofsFraming) -> &'static str {
        match (self, framing) {
            (ErofsMediaTypes::Spec, ErofsFraming::Zstd) => MEDIA_TYPE_EROFS_ZSTD,
            (ErofsMediaTypes::Spec, ErofsFraming::Raw) => MEDIA_TYPE_EROFS,
            (ErofsMediaTypes::OciLayer, ErofsFraming::Zstd) => MEDIA_TYPE_OCI_LAYER_EROFS_ZSTD,
            (ErofsMediaTypes::OciLayer, ErofsFraming::Raw) => MEDIA_TYPE_OCI_LAYER_EROFS,
        }
    }
}

/// How an EROFS layer blob holds the image (§2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErofsFraming {
    /// One zstd frame per chunk, the chunk index in a skippable frame.
    Zstd,
    /// The image bytes, then the raw chunk index.
    Raw,
}

impl ErofsFraming {
    /// The framing an EROFS layer media type names, under either [`ErofsMediaTypes`]; `None`
    /// when `media_type` is not an EROFS layer's.
    pub fn of_media_type(media_type: &str) -> Option<ErofsFraming> {
        match media_type {
            MEDIA_TYPE_EROFS_ZSTD | MEDIA_TYPE_OCI_LAYER_EROFS_ZSTD => Some(ErofsFraming::Zstd),
            MEDIA_TYPE_EROFS | MEDIA_TYPE_OCI_LAYER_EROFS => Some(ErofsFraming::Raw),
            _ => None,
        }
    }
}

/// Media type of the chunk index format.
pub const MEDIA_TYPE_CHUNK_INDEX_V1: &str = "application/vnd.erofs.chunk-index.v1";

/// Annotation: `offset[:end]` of the embedded chunk index in the blob (§2.3).
pub const ANNOTATION_CHUNK_INDEX_RANGE: &str = "org.erofs.chunk-index.range";
/// Annotation: digest of the chunk-index payload (header and entries, no frame header).
pub const ANNOTATION_CHUNK_INDEX_DIGEST: &str = "org.erofs.chunk-index.digest";
/// Annotation: media type of the chunk index.
pub const ANNOTATION_CHUNK_INDEX_MEDIA_TYPE: &str = "org.erofs.chunk-index.mediaType";
/// Annotation: digest of the decompressed image (the layer's DiffID).
pub const ANNOTATION_UNCOMPRESSED_DIGEST: &str = "org.erofs.uncompressed-digest";
/// The `os.features` value an EROFS image declares (§5.4).
pub const OS_FEATURE_EROFS: &str = "erofs";

/// lazypull's own annotations, under the prefix containerd forwards to snapshotters.
pub const ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE: &str =
    "containerd.io/snapshot/lazypull/erofs.chunk-index.range";
pub const ANNOTATION_LAZYPULL_CHUNK_INDEX_DIGEST: &str =
    "containerd.io/snapshot/lazypull/erofs.chunk-index.digest";
pub const ANNOTATION_LAZYPULL_UNCOMPRESSED_DIGEST: &str =
    "containerd.io/snapshot/lazypull/erofs.uncompressed-digest";
/// `0:END`: the uncompressed range holding all metadata and the prefetch-listed files' data.
pub const ANNOTATION_LAZYPULL_PREFETCH_RANGE: &str =
    "containerd.io/snapshot/lazypull/erofs.prefetch-range";

/// Chunk index magic.
pub const CHUNK_INDEX_MAGIC: [u8; 4] = [0xCD, 0xE4, 0xEC, 0x67];
/// Chunk index version this crate reads and writes.
pub const CHUNK_INDEX_VERSION: u8 = 1;
/// `CompressionType`: raw byte ranges.
pub const CHUNK_COMPRESSION_NONE: u8 = 0;
/// `CompressionType`: each chunk one zstd frame.
pub const CHUNK_COMPRESSION_ZSTD: u8 = 1;
/// `HashAlgo`: no checksums.
pub const CHUNK_HASH_NONE: u8 = 0;
/// `HashAlgo`: SHA-2 family (`HashSize` 32 = SHA-256).
pub const CHUNK_HASH_SHA2: u8 = 1;

/// `HashSize` of SHA-256 checksums (the only size this crate verifies).
pub const CHUNK_HASH_SIZE_SHA256: u8 = 32;
/// `HashSize` of SHA-512 checksums.
pub const CHUNK_HASH_SIZE_SHA512: u8 = 64;
/// The chunk size lazypull writes: small enough for lazy reads, large enough for zstd.
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;
/// zstd skippable frames use any magic in `FIRST..=LAST` (RFC 8878 §3.1.2); §3.4.3 allows all.
pub const ZSTD_SKIPPABLE_MAGIC_FIRST: u32 = 0x184D_2A50;
/// Last skippable-frame magic.
pub const ZSTD_SKIPPABLE_MAGIC_LAST: u32 = 0x184D_2A5F;
/// A skippable frame's header: magic and payload length, 4 bytes each.
pub const ZSTD_SKIPPABLE_HEADER_SIZE: u64 = 8;

/// Chunk index header (32 bytes, spec §3.4.1).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkIndexHeader {
    pub magic: [u8; 4],
    pub version: u8,
    pub compression_type: u8,
    /// All bits reserved in version 1.
    pub flags: U16,
    pub uncompressed_size: U64,
    pub num_chunks: U32,
    pub hash_algo: u8,
    pub hash_size: u8,
    pub reserved: [u8; 10],
}
const _: () = assert!(size_of::<ChunkIndexHeader>() == 32);

/// The fixed part of a chunk index entry (16 bytes, spec §3.4.2); `HashSize` checksum bytes
/// follow it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkEntryHead {
    /// On-blob offset of the chunk (its zstd frame for compression type 1).
    pub block_offset: U64,
    /// Offset of the chunk in the uncompressed image.
    pub uncompressed_offset: U64,
}
const _: () = assert!(size_of::<ChunkEntryHead>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_of_media_types_name_a_framing() {
        for names in [ErofsMediaTypes::Spec, ErofsMediaTypes::OciLayer] {
            for framing in [ErofsFraming::Zstd, ErofsFraming::Raw] {
                let mt = names.media_type(framing);
                assert_eq!(ErofsFraming::of_media_type(mt), Some(framing), "{mt}");
            }
        }
        assert_eq!(
            ErofsMediaTypes::OciLayer.media_type(ErofsFraming::Zstd),
            "application/vnd.oci.image.layer.v1.erofs+zstd"
        );
        for other in [
            MEDIA_TYPE_CHUNK_INDEX_V1,
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.erofs+gzip",
        ] {
            assert_eq!(ErofsFraming::of_media_type(other), None, "{other}");
        }
    }

    #[test]
    fn device_numbers_round_trip() {
        assert_eq!(encode_dev(8, 1), 0x801);
        for (ma, mi) in [(0, 0), (8, 1), (4095, 1_048_575), (259, 300)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
    }

    #[test]
    fn i_format_encodes_version_and_layout() {
        assert_eq!(i_format(false, LAYOUT_FLAT_INLINE), 0x0004);
        assert_eq!(i_format(true, LAYOUT_CHUNK_BASED), 0x0009);
        assert_eq!(i_format_layout(0x0009), LAYOUT_CHUNK_BASED);
    }
}

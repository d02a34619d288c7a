//! The layer model: a tar layer read into a list of entries plus a spool of file contents.
//!
//! Ingesting a layer ([`Layer::ingest`]) decompresses it (tar, tar+gzip or tar+zstd, detected by
//! magic), checks it (names that escape the root, hardlinks to missing targets, bad headers),
//! applies "the later entry wins" for repeated paths, and copies file contents into a temporary
//! spool file so the writers can read them back at random, in any order and in parallel, with
//! bounded memory. Writers then lay the entries out in their own format.

mod compression;
#[cfg(feature = "write")]
mod ingest;
#[cfg(feature = "write")]
mod tarwrite;

use std::collections::BTreeMap;
use std::fs::File;

pub use compression::{detect_compression, Compression};
#[cfg(feature = "write")]
pub use ingest::IngestOptions;
#[cfg(feature = "write")]
pub use tarwrite::{tar_header, tar_name, TAR_BLOCK};

use crate::blob::{BlobRead, FileBlob};
use crate::digest::Digest;
use crate::error::Result;

/// The type of a layer entry (the TOC's `type` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

impl EntryKind {
    /// The eStargz TOC name of this kind.
    pub fn toc_name(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::Reg => "reg",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
        }
    }
}

/// One entry of a layer, with the metadata every output format needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Normalised relative path: no leading `/` or `./`, no trailing `/`, no `.` or `..`
    /// components. The root directory is the empty string.
    pub name: String,
    pub kind: EntryKind,
    /// Permission bits plus setuid/setgid/sticky (`0o7777` at most); no file-type bits.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
    /// Modification time: seconds since the epoch, and nanoseconds (from a PAX `mtime`).
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Symlink target as written in the tar (raw), or hardlink target (normalised like `name`).
    pub link_name: String,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes (PAX `SCHILY.xattr.*`), by full name (`user.foo`, `security.capability`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Other PAX records of the entry that lazypull does not interpret (`atime`, `ctime`,
    /// `LIBARCHIVE.*`, …), kept so the tar a runtime extracts loses nothing. Never `path`,
    /// `linkpath`, `size`, `uid`, `gid`, `uname`, `gname`, `mtime` or `SCHILY.xattr.*`.
    pub pax_other: Vec<(String, Vec<u8>)>,
    /// Content size for `Reg`; 0 for every other kind.
    pub size: u64,
    /// Where the content starts in the layer's spool (meaningful for `Reg` with `size > 0`).
    pub spool_offset: u64,
    /// SHA-256 of the content (for `Reg`, empty files included).
    pub digest: Option<Digest>,
}

impl LayerEntry {
    /// A new entry with everything but name and kind zero or empty.
    pub fn new(name: impl Into<String>, kind: EntryKind) -> Self {
        LayerEntry {
            name: name.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            mtime: 0,
            mtime_nsec: 0,
            link_name: String::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: BTreeMap::new(),
            pax_other: Vec::new(),
            size: 0,
            spool_offset: 0,
            digest: None,
        }
    }

    /// The parent directory's name (`""` for top-level entries and the root).
    pub fn parent(&self) -> &str {
        parent_of(&self.name)
    }
}

/// The parent of a normalised path (`""` for top-level paths).
pub fn parent_of(name: &str) -> &str {
    match name.rfind('/') {
        Some(i) => &name[..i],
        None => "",
    }
}

/// What ingesting a layer learned about its input.
#[derive(Clone, Debug)]
pub struct InputStats {
    /// Compression detected on the input.
    pub compression: Compression,
    /// Digest and size of the input bytes as given (the descriptor's digest and size).
    pub digest: Digest,
    pub size: u64,
    /// Digest and size of the decompressed tar stream (the input's diffID).
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// Entries in the tar stream, before repeated paths were folded.
    pub raw_entries: u64,
}

/// A layer read into entries plus a spool file of their contents.
pub struct Layer {
    /// Entries in tar order, repeated paths folded (the later one wins, in its position).
    pub entries: Vec<LayerEntry>,
    /// File contents, addressed by [`LayerEntry::spool_offset`].
    pub spool: FileBlob,
    /// Facts about the input.
    pub input: InputStats,
}

impl Layer {
    /// The content of a regular file entry.
    pub fn read_content(&self, entry: &LayerEntry, off: u64, buf: &mut [u8]) -> Result<()> {
        self.spool.read_at(entry.spool_offset + off, buf)
    }

    /// Index from name to position in [`Layer::entries`].
    pub fn index_by_name(&self) -> std::collections::HashMap<&str, usize> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect()
    }

    /// A spool-less layer for writers' unit tests: contents come from an anonymous temp file.
    pub fn from_parts(entries: Vec<LayerEntry>, spool: File, input: InputStats) -> Result<Self> {
        let len = spool
            .metadata()
            .map_err(|e| crate::error::Error::io("stat spool", e))?
            .len();
        Ok(Layer {
            entries,
            spool: FileBlob::window(spool, 0, len, "layer spool".into()),
            input,
        })
    }
}

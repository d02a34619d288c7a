//! Building the inode table of an eStargz layer from the reader's entries.
//!
//! [`build`] works on the normalised entries, naming each by its index: one [`BuildNode`] per
//! inode (hardlinks share their target's) and one [`BuildDirent`] per name, grouped by
//! directory and sorted by name. [`Tables::compact`] then copies what serving needs out of the
//! entries into flat tables (attributes inline, names in one interned arena, every chunk in one
//! `Vec`, the rare link targets, device numbers and xattrs aside), so the entries and the TOC can
//! be dropped: a few hundred bytes per entry less than keeping them.

use std::collections::HashMap;

use lazypull_converter::estargz::FileEntry;
use lazypull_converter::layer::EntryKind;
use lazypull_converter::{Digest, Error, Result};

use super::super::tree::FileKind;

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The id shown for owners that do not fit 32 bits (the kernel's overflow id).
const OVERFLOW_ID: u32 = 65534;

/// Node flags.
pub(super) const WHITEOUT: u8 = 1;
pub(super) const OPAQUE: u8 = 2;

/// One inode while building: node `n` has inode number `n + 1`, so the root (node 0) is 1.
#[derive(Clone, Copy, Debug)]
pub(super) struct BuildNode {
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

/// One name in a directory while building: the entry naming it (its leaf, less `.wh.` for
/// whiteouts) and the node it names.
#[derive(Clone, Copy, Debug)]
pub(super) struct BuildDirent {
    entry: u32,
    node: u32,
}

/// One inode as served: 48 bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Node {
    /// Regular files: the content length; symlinks: the target's.
    pub size: u64,
    pub mtime: i64,
    pub uid: u32,
    pub gid: u32,
    /// The parent directory's node (the root is its own parent).
    pub parent: u32,
    pub nlink: u32,
    /// Directories: `dirents[first..first + count]`; regular files: `chunks[first..first + count]`.
    pub first: u32,
    pub count: u32,
    /// `extras[extra - 1]`, or 0 for none.
    pub extra: u32,
    /// Permission bits plus setuid/setgid/sticky.
    pub perm: u16,
    pub kind: FileKind,
    pub flags: u8,
}

/// One name in a directory: `names[name..name + len]` and the node it names.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dirent {
    pub name: u32,
    pub len: u32,
    pub node: u32,
}

/// One chunk of a regular file. Its length is implied: chunks tile their file in order (the
/// reader checked), so a chunk ends where the next starts, the last at the file's end.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chunk {
    pub file_offset: u64,
    pub blob_offset: u64,
    pub inner_offset: u64,
    pub blob_end: u64,
    pub digest: Option<Digest>,
}

/// `len` bytes from `off` of [`Tables::bytes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Span {
    pub off: u32,
    pub len: u32,
}

/// What few inodes have: a symlink target, device numbers, extended attributes
/// (`xattrs[first..first + count]`). Their bytes live in [`Tables::bytes`]: one allocation per
/// inode would pin pages of the freed TOC in the heap, costing far more than it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Extra {
    pub link: Span,
    pub rdev: (u32, u32),
    pub xattrs: (u32, u32),
}

/// The served form of a layer's tree.
pub(super) struct Tables {
    pub nodes: Vec<Node>,
    pub dirents: Vec<Dirent>,
    /// Every dirent's name, each distinct name once.
    pub names: Vec<u8>,
    pub chunks: Vec<Chunk>,
    pub extras: Vec<Extra>,
    /// Extended attributes: (name, value).
    pub xattrs: Vec<(Span, Span)>,
    /// Link targets, xattr names and values.
    pub bytes: Vec<u8>,
}

impl Tables {
    /// The tables of `entries`, built by [`build`].
    pub fn new(entries: &[FileEntry]) -> Result<Tables> {
        let (nodes, dirents) = build(entries)?;
        Tables::compact(entries, &nodes, &dirents)
    }

    fn compact(
        entries: &[FileEntry],
        nodes: &[BuildNode],
        dirents: &[BuildDirent],
    ) -> Result<Self> {
        let chunk_count: usize = nodes
            .iter()
            .map(|n| entries[n.entry as usize].chunks.len())
            .sum();
        let mut t = Tables {
            nodes: Vec::with_capacity(nodes.len()),
            dirents: Vec::with_capacity(dirents.len()),
            names: Vec::new(),
            chunks: Vec::with_capacity(chunk_count),
            extras: Vec::new(),
            xattrs: Vec::new(),
            bytes: Vec::new(),
        };
        for n in nodes {
            let e = &entries[n.entry as usize];
            let whiteout = n.flags & WHITEOUT != 0;
            let kind = if whiteout {
                FileKind::Char
            } else {
                kind_of(e.kind)
            };
            let (mut first, mut count) = (n.first, n.count);
            if kind == FileKind::Reg {
                first = index(t.chunks.len(), "chunks")?;
                count = index(e.chunks.len(), "chunks")?;
                t.chunks.extend(e.chunks.iter().map(|c| Chunk {
                    file_offset: c.file_offset,
                    blob_offset: c.blob_offset,
                    inner_offset: c.inner_offset,
                    blob_end: c.blob_end,
                    digest: c.digest,
                }));
            }
            let mut extra = Extra::default();
            if !whiteout {
                if kind == FileKind::Symlink {
                    extra.link = t.put(e.link_name.as_bytes())?;
                }
                if matches!(kind, FileKind::Char | FileKind::Block) {
                    extra.rdev = (e.dev_major, e.dev_minor);
                }
                extra.xattrs = (
                    index(t.xattrs.len(), "xattrs")?,
                    index(e.xattrs.len(), "xattrs")?,
                );
                for (k, v) in &e.xattrs {
                    let kv = (t.put(k.as_bytes())?, t.put(v)?);
                    t.xattrs.push(kv);
                }
            }
            let extra = if extra.link.len == 0 && extra.rdev == (0, 0) && extra.xattrs.1 == 0 {
                0
            } else {
                t.extras.push(extra);
                index(t.extras.len(), "inodes")?
            };
            t.nodes.push(Node {
                size: match kind {
                    FileKind::Reg => e.size,
                    FileKind::Symlink => e.link_name.len() as u64,
                    _ => 0,
                },
                mtime: e.mtime,
                uid: u32::try_from(e.uid).unwrap_or(OVERFLOW_ID),
                gid: u32::try_from(e.gid).unwrap_or(OVERFLOW_ID),
                parent: n.parent,
                nlink: n.nlink,
                first,
                count,
                extra,
                perm: if whiteout {
                    0
                } else {
                    (e.mode & 0o7777) as u16
                },
                kind,
                flags: n.flags,
            });
        }
        // Names repeat across directories (`__init__.py`, `module_000.py`): keep each once.
        let mut interned: HashMap<&str, u32> = HashMap::new();
        for d in dirents {
            let name = dirent_name(&entries[d.entry as usize].name);
            let at = match interned.get(name) {
                Some(&at) => at,
                None => {
                    let at = index(t.names.len(), "name bytes")?;
                    t.names.extend_from_slice(name.as_bytes());
                    interned.insert(name, at);
                    at
                }
            };
            t.dirents.push(Dirent {
                name: at,
                len: index(name.len(), "name bytes")?,
                node: d.node,
            });
        }
        t.names.shrink_to_fit();
        t.extras.shrink_to_fit();
        t.xattrs.shrink_to_fit();
        t.bytes.shrink_to_fit();
        Ok(t)
    }

    /// Append `data` to [`Self::bytes`].
    fn put(&mut self, data: &[u8]) -> Result<Span> {
        let span = Span {
            off: index(self.bytes.len(), "link and xattr bytes")?,
            len: index(data.len(), "link and xattr bytes")?,
        };
        self.bytes.extend_from_slice(data);
        Ok(span)
    }

    /// The bytes of `span`.
    pub fn get(&self, span: Span) -> &[u8] {
        &self.bytes[span.off as usize..(span.off + span.len) as usize]
    }
}

fn kind_of(kind: EntryKind) -> FileKind {
    match kind {
        EntryKind::Dir => FileKind::Dir,
        EntryKind::Reg | EntryKind::Hardlink => FileKind::Reg,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::Char => FileKind::Char,
        EntryKind::Block => FileKind::Block,
        EntryKind::Fifo => FileKind::Fifo,
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
fn build(entries: &[FileEntry]) -> Result<(Vec<BuildNode>, Vec<BuildDirent>)> {
    if entries.first().is_none_or(|r| r.kind != EntryKind::Dir) {
        return Err(Error::format("eStargz TOC: the root is not a directory"));
    }
    let mut nodes = vec![BuildNode {
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
    let mut links: Vec<(u32, BuildDirent)> = Vec::with_capacity(entries.len());
    let (mut hardlinks, mut whiteouts) = (Vec::new(), Vec::new());

    let parent_dir = |by_path: &HashMap<&str, u32>, nodes: &[BuildNode], name: &str| {
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
        nodes.push(BuildNode {
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
            BuildDirent {
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
            BuildDirent {
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
        nodes.push(BuildNode {
            entry: index(i, "entries")?,
            parent,
            nlink: 1,
            first: 0,
            count: 0,
            flags: WHITEOUT,
        });
        links.push((
            parent,
            BuildDirent {
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

//! From the TOC's raw entries to normalised, validated [`FileEntry`]s.
//!
//! The reference reader fills in what the TOC leaves implicit (chunk sizes, parent directories,
//! owner names); this does the same, and refuses what the reference would trip over or silently
//! misread: names escaping the root, chunks that do not tile their file, offsets outside the
//! payload, hardlinks to nothing.

use std::collections::{HashMap, HashSet};

use super::{ChunkRef, FileEntry};
use crate::digest::Digest;
use crate::error::{Error, Result, ResultExt};
use crate::estargz::format::{self, Toc, TocEntry, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};
use crate::layer::{parent_of, EntryKind};

/// The largest chunk read into memory at once. The reference writer's default is 4 MiB; this
/// only stops a hostile TOC from making one read allocate without bound.
pub const MAX_CHUNK_SIZE: u64 = 256 << 20;

/// Normalised entries plus the lookups the reader needs.
pub(super) struct Index {
    /// Visible entries first (root at 0), then landmarks from `visible` on.
    pub all: Vec<FileEntry>,
    pub visible: usize,
    /// Name → position in `all[..visible]`.
    pub by_name: HashMap<String, usize>,
    /// (member offset, inner offset) → (position in `all`, chunk index): chunk positions are
    /// unique, so a [`ChunkRef`] leads back to its entry.
    pub chunk_owner: HashMap<(u64, u64), (usize, usize)>,
}

/// Normalise a TOC name as the reference does (clean("/"+n) without the leading "/"), except
/// that `..` above the root and NUL bytes are refused rather than clamped.
pub fn normalise_name(raw: &str) -> Result<String> {
    if raw.contains('\0') {
        return Err(Error::format(format!(
            "name `{}` contains NUL",
            raw.escape_debug()
        )));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(Error::format(format!("name `{raw}` escapes the root")));
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn parse_kind(s: &str) -> Result<EntryKind> {
    Ok(match s {
        "dir" => EntryKind::Dir,
        "reg" => EntryKind::Reg,
        "symlink" => EntryKind::Symlink,
        "hardlink" => EntryKind::Hardlink,
        "char" => EntryKind::Char,
        "block" => EntryKind::Block,
        "fifo" => EntryKind::Fifo,
        other => return Err(Error::format(format!("unknown entry type `{other}`"))),
    })
}

fn non_negative(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::format(format!("negative {what} {v}")))
}

fn small(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::format(format!("{what} {v} out of range")))
}

fn opt_digest(s: &str, what: &str) -> Result<Option<Digest>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).context(what)
}

fn synthesised_dir(name: String) -> FileEntry {
    FileEntry {
        name,
        kind: EntryKind::Dir,
        size: 0,
        mode: 0o755,
        uid: 0,
        gid: 0,
        uname: String::new(),
        gname: String::new(),
        mtime: 0,
        link_name: String::new(),
        dev_major: 0,
        dev_minor: 0,
        xattrs: Default::default(),
        digest: None,
        chunks: Vec::new(),
    }
}

/// The first or only chunk of a `reg`, or a `chunk` entry, with sizes filled in.
fn chunk_of(e: &TocEntry, file_size: u64) -> Result<ChunkRef> {
    let file_offset = non_negative(e.chunk_offset, "chunkOffset")?;
    let size = match non_negative(e.chunk_size, "chunkSize")? {
        // 0 means "to the end of the file".
        0 => file_size.checked_sub(file_offset).ok_or_else(|| {
            Error::format(format!(
                "chunkOffset {file_offset} is past the file size {file_size}"
            ))
        })?,
        n => n,
    };
    Ok(ChunkRef {
        file_offset,
        size,
        blob_offset: non_negative(e.offset, "offset")?,
        inner_offset: non_negative(e.inner_offset, "innerOffset")?,
        blob_end: 0,
        digest: opt_digest(&e.chunk_digest, "chunkDigest")?,
    })
}

/// Build the index. `toc_offset` bounds every payload offset; with `require_digests` (the TOC
/// was verified), every chunk must carry a digest, as the reference's `VerifyTOC` demands.
pub(super) fn build(toc: &Toc, toc_offset: u64, require_digests: bool) -> Result<Index> {
    let mut staged: Vec<FileEntry> = vec![synthesised_dir(String::new())];
    let mut landmarks: Vec<FileEntry> = Vec::new();
    let mut slot_of: HashMap<String, usize> = HashMap::from([(String::new(), 0)]);
    // Where chunk entries go: the last non-chunk entry, if it was a regular file.
    let mut current: Option<(bool, usize)> = None;
    let mut unames: HashMap<u64, String> = HashMap::new();
    let mut gnames: HashMap<u64, String> = HashMap::new();

    for (i, raw) in toc.entries.iter().enumerate() {
        let at = || format!("TOC entry {i} `{}`", raw.name.escape_debug());
        if raw.kind == "chunk" {
            let (is_landmark, slot) = current
                .ok_or_else(|| Error::format("chunk entry without a regular file before it"))
                .with_context(at)?;
            let file = if is_landmark {
                &mut landmarks[slot]
            } else {
                &mut staged[slot]
            };
            let chunk = chunk_of(raw, file.size).with_context(at)?;
            file.chunks.push(chunk);
            continue;
        }
        let e = normalise_entry(raw, &mut unames, &mut gnames).with_context(at)?;
        let is_landmark = e.kind == EntryKind::Reg
            && (e.name == PREFETCH_LANDMARK || e.name == NO_PREFETCH_LANDMARK);
        let (list, slots) = if is_landmark {
            (&mut landmarks, None)
        } else {
            (&mut staged, Some(&mut slot_of))
        };
        // A repeated name: the later entry wins, in the earlier one's place, so a directory
        // still precedes what it holds.
        let existing = match &slots {
            Some(s) => s.get(&e.name).copied(),
            None => list.iter().position(|l| l.name == e.name),
        };
        let slot = match existing {
            Some(s) => {
                list[s] = e;
                s
            }
            None => {
                if let Some(s) = slots {
                    s.insert(e.name.clone(), list.len());
                }
                list.push(e);
                list.len() - 1
            }
        };
        current = (list[slot].kind == EntryKind::Reg).then_some((is_landmark, slot));
    }
    if staged[0].kind != EntryKind::Dir {
        return Err(Error::format("the root entry is not a directory"));
    }

    let mut all = order_with_parents(staged, &slot_of);
    let visible = all.len();
    let by_name: HashMap<String, usize> = all
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.clone(), i))
        .collect();
    for e in &all[1..] {
        let parent = &all[by_name[parent_of(&e.name)]];
        if parent.kind != EntryKind::Dir {
            return Err(Error::format(format!(
                "entry `{}`: parent `{}` is a {}, not a directory",
                e.name,
                parent.name,
                parent.kind.toc_name()
            )));
        }
    }
    resolve_hardlinks(&mut all, &by_name)?;
    all.extend(landmarks);

    let chunk_owner = check_chunks(&mut all, toc_offset, require_digests)?;
    Ok(Index {
        all,
        visible,
        by_name,
        chunk_owner,
    })
}

fn normalise_entry(
    raw: &TocEntry,
    unames: &mut HashMap<u64, String>,
    gnames: &mut HashMap<u64, String>,
) -> Result<FileEntry> {
    let name = normalise_name(&raw.name)?;
    let kind = parse_kind(&raw.kind)?;
    let uid = non_negative(raw.uid, "uid")?;
    let gid = non_negative(raw.gid, "gid")?;
    // Writers name an owner only on its first entry; later ones inherit it.
    let uname = carry(unames, uid, &raw.user_name);
    let gname = carry(gnames, gid, &raw.group_name);
    if raw.link_name.contains('\0') {
        return Err(Error::format("link name contains NUL"));
    }
    let link_name = match kind {
        EntryKind::Hardlink if raw.link_name.is_empty() => {
            return Err(Error::format("hardlink without a target"))
        }
        EntryKind::Hardlink => normalise_name(&raw.link_name)?,
        EntryKind::Symlink => raw.link_name.clone(),
        _ => String::new(),
    };
    let size = if kind == EntryKind::Reg {
        non_negative(raw.size, "size")?
    } else {
        0
    };
    let digest = opt_digest(&raw.digest, "digest")?;
    let mut chunks = Vec::new();
    if size > 0 {
        let first = chunk_of(raw, size)?;
        if first.file_offset != 0 {
            return Err(Error::format(format!(
                "regular file starts at chunkOffset {}",
                first.file_offset
            )));
        }
        chunks.push(first);
    }
    Ok(FileEntry {
        name,
        kind,
        size,
        // The TOC carries the raw tar mode, sometimes with S_IFMT bits.
        mode: (raw.mode & 0o7777) as u32,
        uid,
        gid,
        uname,
        gname,
        mtime: format::parse_modtime(&raw.mod_time)?,
        link_name,
        dev_major: small(raw.dev_major, "devMajor")?,
        dev_minor: small(raw.dev_minor, "devMinor")?,
        xattrs: raw.xattrs.clone(),
        digest,
        chunks,
    })
}

fn carry(names: &mut HashMap<u64, String>, id: u64, given: &str) -> String {
    if given.is_empty() {
        names.get(&id).cloned().unwrap_or_default()
    } else {
        names.insert(id, given.to_string());
        given.to_string()
    }
}

/// TOC order, except that each directory is placed before its first descendant, and missing
/// parents are synthesised (mode 0755) where first needed.
fn order_with_parents(staged: Vec<FileEntry>, slot_of: &HashMap<String, usize>) -> Vec<FileEntry> {
    let mut staged: Vec<Option<FileEntry>> = staged.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(staged.len());
    let mut emitted: HashSet<String> = HashSet::new();
    for i in 0..staged.len() {
        let Some(e) = staged[i].take() else { continue };
        // Ancestors not yet emitted, nearest first.
        let mut missing = Vec::new();
        let mut p = if e.name.is_empty() {
            None
        } else {
            Some(parent_of(&e.name))
        };
        while let Some(dir) = p {
            if emitted.contains(dir) {
                break;
            }
            missing.push(dir.to_string());
            p = if dir.is_empty() {
                None
            } else {
                Some(parent_of(dir))
            };
        }
        for dir in missing.into_iter().rev() {
            let entry = match slot_of.get(&dir) {
                Some(&s) => staged[s]
                    .take()
                    .unwrap_or_else(|| synthesised_dir(dir.clone())),
                None => synthesised_dir(dir.clone()),
            };
            emitted.insert(dir);
            out.push(entry);
        }
        emitted.insert(e.name.clone());
        out.push(e);
    }
    out
}

/// Point every hardlink at its final, non-link target, which must exist and not be a directory.
fn resolve_hardlinks(all: &mut [FileEntry], by_name: &HashMap<String, usize>) -> Result<()> {
    for i in 0..all.len() {
        if all[i].kind != EntryKind::Hardlink {
            continue;
        }
        let fail = |msg: String| Error::format(format!("hardlink `{}`: {msg}", all[i].name));
        let mut target = all[i].link_name.clone();
        let mut hops = 0;
        loop {
            let Some(&t) = by_name.get(&target) else {
                return Err(fail(format!("target `{target}` does not exist")));
            };
            match all[t].kind {
                EntryKind::Hardlink => {
                    // A chain longer than the entry count must loop.
                    hops += 1;
                    if hops > all.len() {
                        return Err(fail("links loop".into()));
                    }
                    target = all[t].link_name.clone();
                }
                EntryKind::Dir => return Err(fail(format!("target `{target}` is a directory"))),
                _ => break,
            }
        }
        all[i].link_name = target;
    }
    Ok(())
}

/// Check that chunks tile their files and sit inside the payload at distinct positions; fill in
/// digests and fetch ranges. Returns the chunk-position index.
fn check_chunks(
    all: &mut [FileEntry],
    toc_offset: u64,
    require_digests: bool,
) -> Result<HashMap<(u64, u64), (usize, usize)>> {
    let mut owner: HashMap<(u64, u64), (usize, usize)> = HashMap::new();
    let mut member_starts: Vec<u64> = vec![toc_offset];
    for (i, e) in all.iter().enumerate() {
        let mut next = 0u64;
        for (j, c) in e.chunks.iter().enumerate() {
            let fail = |msg: String| {
                Error::format(format!(
                    "entry `{}` chunk at offset {}: {msg}",
                    e.name, c.file_offset
                ))
            };
            if c.file_offset != next {
                return Err(fail(format!(
                    "expected chunkOffset {next} (chunks must tile the file)"
                )));
            }
            if c.size == 0 || c.size > e.size - next {
                return Err(fail(format!(
                    "size {} does not fit the file size {}",
                    c.size, e.size
                )));
            }
            if c.size > MAX_CHUNK_SIZE {
                return Err(Error::Unsupported(format!(
                    "entry `{}` chunk at offset {}: {} bytes exceeds the {MAX_CHUNK_SIZE}-byte chunk limit",
                    e.name, c.file_offset, c.size
                )));
            }
            next += c.size;
            if c.blob_offset >= toc_offset {
                return Err(fail(format!(
                    "offset {} is not before the TOC at {toc_offset}",
                    c.blob_offset
                )));
            }
            let key = (c.blob_offset, c.inner_offset);
            if let Some(&(pi, _)) = owner.get(&key) {
                return Err(fail(format!(
                    "offset {} (inner {}) is also used by entry `{}`",
                    c.blob_offset, c.inner_offset, all[pi].name
                )));
            }
            owner.insert(key, (i, j));
            if c.inner_offset == 0 {
                member_starts.push(c.blob_offset);
            }
        }
        if next != e.size {
            return Err(Error::format(format!(
                "entry `{}`: chunks cover {next} of {} bytes",
                e.name, e.size
            )));
        }
    }
    member_starts.sort_unstable();
    member_starts.dedup();
    for e in all.iter_mut() {
        let single = e.chunks.len() == 1;
        for c in &mut e.chunks {
            // An unchunked file's digest is its one chunk's digest (the reference's fallback
            // for TOCs without chunkDigest).
            if c.digest.is_none() && single {
                c.digest = e.digest;
            }
            if require_digests && c.digest.is_none() {
                return Err(Error::format(format!(
                    "entry `{}` chunk at offset {}: no chunkDigest in a TOC that must be verified",
                    e.name, c.file_offset
                )));
            }
            // The member ends where the next one starts; the TOC offset is always greater.
            let k = member_starts.partition_point(|&s| s <= c.blob_offset);
            c.blob_end = member_starts[k];
        }
    }
    Ok(owner)
}

//! Directories: blocks of dirents then names, sorted by name across the whole directory.
//! `read_dir` checks every block; `lookup` binary-searches blocks by their first name, then
//! the one block that can hold the name; `walk` visits the tree once.

use std::collections::HashSet;

use zerocopy::FromBytes;

use super::inode::Inode;
use super::{div_ceil_pow2, ErofsReader, Nid};
use crate::blob::BlobRead;
use crate::erofs::format::{self, Dirent};
use crate::error::{Error, Result, ResultExt};
use crate::layer::EntryKind;

/// Longest path `walk` builds (Linux `PATH_MAX`); it also bounds the depth of the walk.
pub(super) const PATH_MAX: usize = 4096;

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// 1 to 255 bytes, no `/` and no NUL.
    pub name: Vec<u8>,
    pub nid: Nid,
    /// `format::FT_*`, below [`format::FT_MAX`].
    pub file_type: u8,
}

const DIRENT_SIZE: usize = size_of::<Dirent>();

impl<B: BlobRead> ErofsReader<B> {
    /// [`ErofsReader::read_dir`] without the nid prefix on errors.
    pub(super) fn dir_entries(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        let blocks = self.dir_blocks(dir)?;
        let mut all: Vec<DirEntry> = Vec::new();
        for index in 0..blocks {
            let entries = self.dir_block(dir, index)?;
            if let (Some(prev), Some(first)) = (all.last(), entries.first()) {
                if prev.name >= first.name {
                    return Err(Error::format(format!(
                        "block {index}: first name `{}` does not sort after the previous \
                         block's last name `{}`",
                        first.name.escape_ascii(),
                        prev.name.escape_ascii()
                    )));
                }
            }
            all.extend(entries);
        }
        // Names are strictly sorted, so each appears at most once.
        let find = |name: &[u8]| all.iter().find(|e| e.name == name).map(|e| e.nid);
        match find(b".") {
            Some(nid) if nid == dir.nid => {}
            Some(nid) => {
                return Err(Error::format(format!(
                    "`.` points to nid {nid}, not to the directory itself"
                )))
            }
            None => return Err(Error::format("no `.` entry")),
        }
        if find(b"..").is_none() {
            return Err(Error::format("no `..` entry"));
        }
        Ok(all)
    }

    /// [`ErofsReader::lookup`] without the nid prefix on errors.
    pub(super) fn dir_lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<Nid>> {
        let blocks = self.dir_blocks(dir)?;
        if name.is_empty() || name.len() > format::NAME_MAX || name.contains(&b'/') {
            return Ok(None);
        }
        // The last block whose first name sorts before `name` is the only one that can hold it.
        let (mut lo, mut hi) = (0, blocks);
        let mut candidate = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entries = self.dir_block(dir, mid)?;
            match entries[0].name.as_slice().cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(entries[0].nid)),
                std::cmp::Ordering::Less => {
                    lo = mid + 1;
                    candidate = Some(entries);
                }
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(candidate.and_then(|entries| {
            entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .ok()
                .map(|i| entries[i].nid)
        }))
    }

    /// Number of blocks of a directory, which must have some.
    fn dir_blocks(&self, dir: &Inode) -> Result<u64> {
        if dir.kind != EntryKind::Dir {
            return Err(Error::Invalid(format!(
                "a {:?} inode is not a directory",
                dir.kind
            )));
        }
        if dir.size == 0 {
            return Err(Error::format("empty directory (no `.` or `..`)"));
        }
        Ok(div_ceil_pow2(dir.size, self.blkbits))
    }

    /// Block `index` of a directory, parsed and checked; never empty.
    fn dir_block(&self, dir: &Inode, index: u64) -> Result<Vec<DirEntry>> {
        let start = index << self.blkbits;
        // A flat directory's data lies inside the image (checked by `read_inode`).
        let len = self.block_size().min(dir.size - start) as usize;
        let mut buf = vec![0u8; len];
        let n = self.read_data(dir, start, &mut buf)?;
        buf.truncate(n);
        parse_block(&buf, |nid| self.nid_in_image(nid)).with_context(|| format!("block {index}"))
    }

    /// Whether an inode slot at `nid` starts inside the image.
    fn nid_in_image(&self, nid: u64) -> bool {
        nid.checked_mul(format::SLOT_SIZE)
            .and_then(|o| o.checked_add(self.meta_base))
            .is_some_and(|o| o < self.blob.len())
    }

    /// [`ErofsReader::walk`].
    pub(super) fn walk_tree(&self) -> Result<Vec<(String, Inode)>> {
        let root_nid = self.root();
        let root = self
            .read_inode(root_nid)
            .with_context(|| format!("nid {root_nid} (``)"))?;
        let mut visited = HashSet::from([root_nid]);
        let mut out = Vec::new();
        // (path, inode, parent directory); popped in directory order.
        let mut stack = vec![(String::new(), root, root_nid)];
        while let Some((path, inode, parent)) = stack.pop() {
            if inode.kind != EntryKind::Dir {
                out.push((path, inode));
                continue;
            }
            let at = |nid: Nid, path: &str| format!("nid {nid} (`{path}`)");
            let entries = self
                .dir_entries(&inode)
                .with_context(|| at(inode.nid, &path))?;
            let mut children = Vec::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                match e.name.as_slice() {
                    b"." => continue,
                    b".." if e.nid == parent => continue,
                    b".." => {
                        return Err(Error::format(format!(
                            "`..` points to nid {}, not to the parent nid {parent}",
                            e.nid
                        ))
                        .context(at(inode.nid, &path)))
                    }
                    _ => {}
                }
                let name = String::from_utf8_lossy(&e.name);
                let child_path = if path.is_empty() {
                    name.into_owned()
                } else {
                    format!("{path}/{name}")
                };
                if child_path.len() > PATH_MAX {
                    return Err(Error::format(format!(
                        "dirent {i}: path longer than {PATH_MAX} bytes"
                    ))
                    .context(at(inode.nid, &path)));
                }
                let child = self
                    .read_inode(e.nid)
                    .with_context(|| at(e.nid, &child_path))?;
                if e.file_type != format::FT_UNKNOWN && e.file_type != file_type_of(child.kind) {
                    return Err(Error::format(format!(
                        "dirent type {} contradicts the inode's {:?}",
                        e.file_type, child.kind
                    ))
                    .context(at(e.nid, &child_path)));
                }
                if child.kind == EntryKind::Dir && !visited.insert(e.nid) {
                    return Err(Error::format(
                        "directory reached twice (a cycle or a directory hard link)",
                    )
                    .context(at(e.nid, &child_path)));
                }
                children.push((child_path, child, inode.nid));
            }
            out.push((path, inode));
            stack.extend(children.into_iter().rev());
        }
        Ok(out)
    }
}

/// The dirent file type of an inode kind.
fn file_type_of(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Reg | EntryKind::Hardlink => format::FT_REG_FILE,
        EntryKind::Dir => format::FT_DIR,
        EntryKind::Char => format::FT_CHRDEV,
        EntryKind::Block => format::FT_BLKDEV,
        EntryKind::Fifo => format::FT_FIFO,
        EntryKind::Symlink => format::FT_SYMLINK,
    }
}

/// Parse one directory block: `n` dirents, then their names packed in order; the last name
/// ends at the first NUL or at the end of the block.
fn parse_block(block: &[u8], nid_ok: impl Fn(u64) -> bool) -> Result<Vec<DirEntry>> {
    let Ok((first, _)) = Dirent::read_from_prefix(block) else {
        return Err(Error::format(format!(
            "{} bytes cannot hold a dirent",
            block.len()
        )));
    };
    let names_start = usize::from(first.nameoff.get());
    if names_start < DIRENT_SIZE || names_start % DIRENT_SIZE != 0 || names_start >= block.len() {
        return Err(Error::format(format!(
            "dirent 0: name offset {names_start} does not end a dirent array inside the block \
             of {} bytes",
            block.len()
        )));
    }
    let dirents = <[Dirent]>::ref_from_bytes(&block[..names_start])
        .map_err(|_| Error::format("misaligned dirent array"))?;
    let mut out: Vec<DirEntry> = Vec::with_capacity(dirents.len());
    for (i, d) in dirents.iter().enumerate() {
        let start = usize::from(d.nameoff.get());
        let end = match dirents.get(i + 1) {
            Some(next) => usize::from(next.nameoff.get()),
            None => block[start.min(block.len())..]
                .iter()
                .position(|&b| b == 0)
                .map_or(block.len(), |p| start + p),
        };
        if start >= block.len() {
            return Err(Error::format(format!(
                "dirent {i}: name offset {start} outside the block of {} bytes",
                block.len()
            )));
        }
        if end <= start || end > block.len() {
            return Err(Error::format(format!(
                "dirent {i}: name offsets {start}..{end} out of order or outside the block of \
                 {} bytes",
                block.len()
            )));
        }
        let name = &block[start..end];
        if name.len() > format::NAME_MAX || name.contains(&b'/') || name.contains(&0) {
            return Err(Error::format(format!(
                "dirent {i}: invalid name `{}`",
                name.escape_ascii()
            )));
        }
        if d.file_type >= format::FT_MAX {
            return Err(Error::format(format!(
                "dirent {i} (`{}`): file type {} out of range",
                name.escape_ascii(),
                d.file_type
            )));
        }
        if let Some(prev) = out.last() {
            if prev.name.as_slice() >= name {
                return Err(Error::format(format!(
                    "dirent {i}: name `{}` does not sort after `{}`",
                    name.escape_ascii(),
                    prev.name.escape_ascii()
                )));
            }
        }
        if !nid_ok(d.nid.get()) {
            return Err(Error::format(format!(
                "dirent {i} (`{}`): nid {} lies past the end of the image",
                name.escape_ascii(),
                d.nid.get()
            )));
        }
        out.push(DirEntry {
            name: name.to_vec(),
            nid: Nid(d.nid.get()),
            file_type: d.file_type,
        });
    }
    Ok(out)
}

//! Directory data: blocks of dirents followed by their names (erofs.md §3).
//!
//! The kernel binary-searches a directory by each block's first name and then within the
//! block, so names are sorted by bytes across the whole directory, `.` and `..` included.
//! A dirent and its name never straddle blocks; non-last blocks are zero-padded and the last
//! one ends exactly at `i_size`.

use zerocopy::IntoBytes;

use crate::erofs::format::{Dirent, BLOCK_SIZE};

const DIRENT_SIZE: usize = size_of::<Dirent>();
const BLOCK: usize = BLOCK_SIZE as usize;

/// One directory entry to write.
#[derive(Debug, Clone)]
pub(super) struct DirEntry<'a> {
    pub name: &'a [u8],
    pub nid: u64,
    pub file_type: u8,
}

/// How a directory's sorted entries split into blocks. It depends only on name lengths, so the
/// layout can be planned before nids are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirShape {
    /// Number of entries in each block.
    pub per_block: Vec<usize>,
    /// Bytes used in the last block.
    pub tail_len: usize,
}

impl DirShape {
    /// Packs entries with these name lengths (in sorted order) greedily into blocks. Every
    /// length must be 1..=255, which [`super::tree`] checked.
    pub fn pack(name_lens: impl IntoIterator<Item = usize>) -> DirShape {
        let mut per_block = Vec::new();
        let (mut count, mut used) = (0, 0);
        for len in name_lens {
            if count > 0 && used + DIRENT_SIZE + len > BLOCK {
                per_block.push(count);
                (count, used) = (0, 0);
            }
            count += 1;
            used += DIRENT_SIZE + len;
        }
        per_block.push(count);
        DirShape {
            per_block,
            tail_len: used,
        }
    }

    /// Blocks before the last one.
    pub fn full_blocks(&self) -> u64 {
        self.per_block.len() as u64 - 1
    }

    /// The directory's `i_size`.
    pub fn size(&self) -> u64 {
        self.full_blocks() * BLOCK_SIZE + self.tail_len as u64
    }
}

/// Encodes `entries` (sorted, shaped by `shape`): the full blocks, then the tail.
pub(super) fn encode(entries: &[DirEntry<'_>], shape: &DirShape) -> Vec<u8> {
    let mut out = Vec::with_capacity(shape.size() as usize);
    let mut rest = entries;
    for (i, &n) in shape.per_block.iter().enumerate() {
        let (block, tail) = rest.split_at(n);
        rest = tail;
        let start = out.len();
        let mut nameoff = n * DIRENT_SIZE;
        for e in block {
            let d = Dirent {
                nid: e.nid.into(),
                // Fits: a block holds at most 4096 bytes.
                nameoff: (nameoff as u16).into(),
                file_type: e.file_type,
                reserved: 0,
            };
            out.extend_from_slice(d.as_bytes());
            nameoff += e.name.len();
        }
        for e in block {
            out.extend_from_slice(e.name);
        }
        if i + 1 < shape.per_block.len() {
            out.resize(start + BLOCK, 0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_hundred_entries_fill_one_block_and_a_tail() {
        // erofs.md §3: mkfs puts 300 such entries in one full block (195 dirents) + a tail.
        let names: Vec<String> = [".".to_string(), "..".to_string()]
            .into_iter()
            .chain((0..298).map(|i| format!("file{i:04}.dat")))
            .collect();
        let shape = DirShape::pack(names.iter().map(String::len));
        assert_eq!(shape.per_block.len(), 2);
        let entries: Vec<DirEntry> = names
            .iter()
            .map(|n| DirEntry {
                name: n.as_bytes(),
                nid: 36,
                file_type: 1,
            })
            .collect();
        let bytes = encode(&entries, &shape);
        assert_eq!(bytes.len() as u64, shape.size());
        let first = shape.per_block[0];
        let used = first * DIRENT_SIZE + names[..first].iter().map(String::len).sum::<usize>();
        assert!(used <= BLOCK && used + DIRENT_SIZE + names[first].len() > BLOCK);
        assert!(bytes[used..BLOCK].iter().all(|&b| b == 0));
    }

    #[test]
    fn empty_directory_is_dot_and_dotdot() {
        let shape = DirShape::pack([1, 2]);
        assert_eq!(shape.size(), 27);
        assert_eq!(shape.full_blocks(), 0);
    }
}

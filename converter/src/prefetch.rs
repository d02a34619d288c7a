//! Prefetch lists: the files a workload reads first, in the order it first reads them, as
//! `lazypull mount --record` writes them and `lazypull convert --prefetch-list` reads them.
//!
//! One file per line, its path from the image root (`/usr/bin/python3`; `./a` and `a` name the
//! same file). A file the workload read only part of carries, after a TAB, the byte ranges it
//! read: `START+LEN` pairs in increasing order, separated by commas —
//! `/usr/lib/jvm/lib/modules<TAB>0+65536,1048576+131072`. A line without ranges stands for the
//! whole file, so hand-written lists of paths keep working. Blank lines and lines starting
//! with `#` are ignored.
//!
//! The converters use the ranges to keep large files read sparsely (a JDK's 130 MB
//! `lib/modules`, read through mmap a few pages at a time) from filling the prefetch region:
//! eStargz, which must store a file's bytes in one piece, leaves such a file out of the region;
//! EROFS stores it chunk by chunk and puts only the chunks read there.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::error::{Error, Result};

/// A file counts as read sparsely when it is larger than this…
pub const SPARSE_MIN_SIZE: u64 = 1 << 20;
/// …and the ranges read cover less than this share of it (in percent).
pub const SPARSE_MAX_PERCENT: u64 = 50;

/// Disjoint, non-adjacent byte ranges `[start, end)` in increasing order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteRanges(Vec<(u64, u64)>);

impl ByteRanges {
    /// Add `[start, end)`, merging it with the ranges it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // The first range that ends at or after `start` is the first that can merge.
        let i = self.0.partition_point(|&(_, e)| e < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < self.0.len() && self.0[j].0 <= e {
            s = s.min(self.0[j].0);
            e = e.max(self.0[j].1);
            j += 1;
        }
        self.0.splice(i..j, [(s, e)]);
    }

    /// Bytes covered.
    pub fn covered(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether the ranges cover all of `[0, size)`.
    pub fn covers(&self, size: u64) -> bool {
        size == 0 || (self.0.len() == 1 && self.0[0].0 == 0 && self.0[0].1 >= size)
    }

    /// The ranges, `[start, end)` each, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One file of a prefetch list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchEntry {
    /// The path as a layer entry name: no leading `/` or `./`, no trailing `/`.
    pub path: String,
    /// The bytes read, if the workload read only part of the file; `None`: all of it.
    pub ranges: Option<ByteRanges>,
}

impl PrefetchEntry {
    /// Whether a file of `size` bytes was read so sparsely that bringing all of it with the
    /// prefetch region would cost more than fetching the parts on demand: larger than
    /// [`SPARSE_MIN_SIZE`], and less than [`SPARSE_MAX_PERCENT`] of it read.
    pub fn is_sparse(&self, size: u64) -> bool {
        match &self.ranges {
            Some(r) => size > SPARSE_MIN_SIZE && r.covered() * 100 < size * SPARSE_MAX_PERCENT,
            None => false,
        }
    }
}

/// A parsed prefetch list, in access order, each path once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefetchList {
    entries: Vec<PrefetchEntry>,
    /// Path → index in `entries`.
    at: HashMap<String, usize>,
}

impl PrefetchList {
    /// Parse the text of a list file. A path listed twice keeps its first position; its
    /// ranges are merged, and a line without ranges makes it whole.
    pub fn parse(text: &str) -> Result<PrefetchList> {
        let mut list = PrefetchList::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (path, ranges) = match line.split_once('\t') {
                Some((path, ranges)) => (path, Some(parse_ranges(ranges, n + 1)?)),
                None => (line.trim(), None),
            };
            let path = normalise_path(path);
            if !path.is_empty() {
                list.push(PrefetchEntry { path, ranges });
            }
        }
        Ok(list)
    }

    /// A list of whole files.
    pub fn from_paths<I: IntoIterator<Item = S>, S: AsRef<str>>(paths: I) -> PrefetchList {
        let mut list = PrefetchList::default();
        for p in paths {
            let path = normalise_path(p.as_ref());
            if !path.is_empty() {
                list.push(PrefetchEntry { path, ranges: None });
            }
        }
        list
    }

    /// Add a file at the end, or merge it into its earlier entry: ranges add up, and a whole
    /// file stays whole.
    pub fn push(&mut self, entry: PrefetchEntry) {
        let Some(&i) = self.at.get(&entry.path) else {
            self.at.insert(entry.path.clone(), self.entries.len());
            self.entries.push(entry);
            return;
        };
        let old = &mut self.entries[i].ranges;
        match (old.as_mut(), entry.ranges) {
            (Some(old), Some(new)) => {
                for (s, e) in new.iter() {
                    old.insert(s, e);
                }
            }
            _ => *old = None,
        }
    }

    pub fn entries(&self) -> &[PrefetchEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The list as a file: `/path`, and for partly read files a TAB and the ranges. A path
    /// that holds a TAB or a line break cannot be written as a line and is left out.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            if e.path.contains(['\t', '\n', '\r']) {
                continue;
            }
            out.push('/');
            out.push_str(&e.path);
            if let Some(r) = &e.ranges {
                out.push('\t');
                for (k, (s, end)) in r.iter().enumerate() {
                    let sep = if k == 0 { "" } else { "," };
                    let _ = write!(out, "{sep}{s}+{}", end - s);
                }
            }
            out.push('\n');
        }
        out
    }
}

fn parse_ranges(text: &str, line: usize) -> Result<ByteRanges> {
    let bad = |what: &str| {
        Error::Invalid(format!(
            "prefetch list line {line}: {what} (ranges are START+LEN[,START+LEN...])"
        ))
    };
    let mut ranges = ByteRanges::default();
    for part in text.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let (s, l) = part.trim().split_once('+').ok_or_else(|| bad(part))?;
        let s: u64 = s.parse().map_err(|_| bad(part))?;
        let l: u64 = l.parse().map_err(|_| bad(part))?;
        let e = s.checked_add(l).ok_or_else(|| bad("range past 2^64"))?;
        ranges.insert(s, e);
    }
    Ok(ranges)
}

/// A list path as a layer entry name: `/usr/bin/x`, `./usr/bin/x` and `usr/bin/x/` all name
/// `usr/bin/x`.
pub fn normalise_path(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(r: &[(u64, u64)]) -> ByteRanges {
        let mut out = ByteRanges::default();
        for &(s, e) in r {
            out.insert(s, e);
        }
        out
    }

    #[test]
    fn ranges_merge_overlapping_and_touching() {
        let r = ranges(&[(10, 20), (30, 40), (20, 25), (50, 60), (35, 52), (0, 1)]);
        assert_eq!(r.iter().collect::<Vec<_>>(), [(0, 1), (10, 25), (30, 60)]);
        assert_eq!(r.covered(), 1 + 15 + 30);
        assert!(!r.covers(60));
        let r = ranges(&[(4096, 8192), (0, 4096)]);
        assert!(r.covers(8192) && r.covers(5000) && !r.covers(8193));
        assert!(ranges(&[(5, 5)]).is_empty());
    }

    #[test]
    fn lists_round_trip_and_merge_repeated_paths() {
        let text = "# recorded\n/usr/bin/java\n\n./lib/modules\t0+4096,8192+4096\n\
                    lib/modules/\t4096+100\n/etc/x\t0+1\n/etc/x\n";
        let list = PrefetchList::parse(text).unwrap();
        let e = list.entries();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].path, "usr/bin/java");
        assert_eq!(e[0].ranges, None);
        assert_eq!(
            e[1].ranges.as_ref().unwrap().iter().collect::<Vec<_>>(),
            [(0, 4196), (8192, 12288)]
        );
        assert_eq!(e[2].ranges, None, "a whole-file line makes the file whole");
        let again = PrefetchList::parse(&list.render()).unwrap();
        assert_eq!(again, list);
        assert_eq!(
            list.render(),
            "/usr/bin/java\n/lib/modules\t0+4196,8192+4096\n/etc/x\n"
        );
    }

    #[test]
    fn bad_ranges_name_the_line() {
        for bad in [
            "/a\t12",
            "/a\tx+1",
            "/a\t1+-2",
            "/a\t18446744073709551615+2",
        ] {
            let err = PrefetchList::parse(&format!("/ok\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains("line 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn sparse_means_large_and_mostly_unread() {
        let read = |r: &[(u64, u64)]| PrefetchEntry {
            path: "f".into(),
            ranges: Some(ranges(r)),
        };
        let mib = 1 << 20;
        assert!(read(&[(0, mib)]).is_sparse(10 * mib));
        assert!(!read(&[(0, 6 * mib)]).is_sparse(10 * mib));
        assert!(!read(&[(0, 4096)]).is_sparse(mib), "small files go whole");
        let whole = PrefetchEntry {
            path: "f".into(),
            ranges: None,
        };
        assert!(!whole.is_sparse(100 * mib));
    }
}

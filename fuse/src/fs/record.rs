//! `--record`: the files a workload reads, in the order it first reads them, with the byte
//! ranges it read of each — the input of `lazypull convert --prefetch-list`
//! (`lazypull_converter::prefetch` has the format).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lazypull_converter::prefetch::{ByteRanges, PrefetchEntry, PrefetchList};

use super::tree::Ino;

/// Collects reads from every layer of a mounted image and writes them as a prefetch list.
/// The file is replaced whole (written beside it, then renamed) by [`AccessRecorder::save`],
/// which the mount calls every half second while reads come in and once more at unmount, so
/// it is usable while the mount runs.
pub struct AccessRecorder {
    path: PathBuf,
    inner: Mutex<Recorded>,
}

impl std::fmt::Debug for AccessRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessRecorder({})", self.path.display())
    }
}

#[derive(Default)]
struct Recorded {
    /// Files in first-read order.
    files: Vec<File>,
    at: HashMap<Arc<str>, usize>,
    /// Reads since the last save.
    dirty: bool,
}

struct File {
    path: Arc<str>,
    size: u64,
    read: ByteRanges,
}

impl AccessRecorder {
    /// Record into `path`, created (empty) at once so a bad path fails before mounting.
    pub fn create(path: &Path) -> io::Result<Self> {
        let r = AccessRecorder {
            path: path.to_path_buf(),
            inner: Mutex::new(Recorded::default()),
        };
        r.write(&PrefetchList::default())?;
        Ok(r)
    }

    /// Note a read of `len` bytes at `offset` of the file at `path` (relative to the mount);
    /// `size` gives the file's size on its first read.
    pub fn record(&self, path: &Arc<str>, offset: u64, len: u64, size: impl FnOnce() -> u64) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let i = match r.at.get(path) {
            Some(&i) => i,
            None => {
                let i = r.files.len();
                r.files.push(File {
                    path: Arc::clone(path),
                    size: size(),
                    read: ByteRanges::default(),
                });
                r.at.insert(Arc::clone(path), i);
                r.dirty = true;
                i
            }
        };
        let read = &mut r.files[i].read;
        let before = read.covered();
        read.insert(offset, offset.saturating_add(len));
        if read.covered() != before {
            r.dirty = true;
        }
    }

    /// The list so far: files read in full (or empty ones) without ranges.
    pub fn list(&self) -> PrefetchList {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = PrefetchList::default();
        for f in &r.files {
            list.push(PrefetchEntry {
                path: f.path.to_string(),
                ranges: (!f.read.covers(f.size)).then(|| f.read.clone()),
            });
        }
        list
    }

    /// Write the file if reads came in since the last save.
    pub fn save(&self) -> io::Result<()> {
        let dirty = std::mem::take(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()).dirty);
        if !dirty {
            return Ok(());
        }
        let list = self.list();
        self.write(&list).inspect_err(|_| {
            // Try again next time.
            self.inner.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
        })
    }

    fn write(&self, list: &PrefetchList) -> io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, list.render())?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl Drop for AccessRecorder {
    fn drop(&mut self) {
        if let Err(e) = self.save() {
            tracing::warn!("writing the record {}: {e}", self.path.display());
        }
    }
}

/// The paths inodes were reached by (lookups and directory listings), for recording reads.
#[derive(Default)]
pub(super) struct PathsSeen {
    paths: Mutex<HashMap<Ino, Arc<str>>>,
}

impl PathsSeen {
    /// `child` is `name` in `parent`.
    pub(super) fn reached(&self, parent: Ino, name: &[u8], child: Ino) {
        if name == b"." || name == b".." {
            return;
        }
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        if paths.contains_key(&child) {
            return;
        }
        let name = String::from_utf8_lossy(name);
        let path: Arc<str> = match paths.get(&parent) {
            Some(p) if !p.is_empty() => format!("{p}/{name}").into(),
            _ if parent == Ino::ROOT => name.into_owned().into(),
            // A parent reached some other way (the kernel kept its entry): unknown path.
            _ => return,
        };
        paths.insert(child, path);
    }

    /// The path `ino` was reached by, if known.
    pub(super) fn path(&self, ino: Ino) -> Option<Arc<str>> {
        self.paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_read_order_and_ranges_of_partly_read_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.txt");
        let r = AccessRecorder::create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        let (a, big, empty): (Arc<str>, Arc<str>, Arc<str>) =
            ("etc/a".into(), "lib/big".into(), "etc/empty".into());
        r.record(&a, 0, 4096, || 10);
        r.record(&big, 1 << 20, 131072, || 100 << 20);
        r.record(&empty, 0, 0, || 0);
        r.record(&big, 0, 4096, || unreachable!("size is asked once"));
        r.record(&a, 0, 4096, || 10);
        r.save().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "/etc/a\n/lib/big\t0+4096,1048576+131072\n/etc/empty\n"
        );
        r.record(&big, 4096, 8192, || 0);
        drop(r);
        let list = PrefetchList::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            list.entries()[1]
                .ranges
                .as_ref()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            [(0, 12288), (1048576, 1179648)],
            "the last reads are saved on drop"
        );
    }
}

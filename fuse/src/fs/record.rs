//! `--record`: the paths of files as they are first read, in order — the input of
//! `lazypull convert --prefetch-list`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::tree::Ino;

/// Appends each path the first time a file is read, one per line, flushed at once so the file
/// is usable while the mount still runs. Shared by every layer of a mounted image.
pub struct AccessRecorder {
    inner: Mutex<Recorded>,
}

impl std::fmt::Debug for AccessRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessRecorder")
    }
}

struct Recorded {
    out: BufWriter<File>,
    seen: HashSet<String>,
}

impl AccessRecorder {
    /// Record into a new (truncated) file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(AccessRecorder {
            inner: Mutex::new(Recorded {
                out: BufWriter::new(File::create(path)?),
                seen: HashSet::new(),
            }),
        })
    }

    /// Note a read of `path` (relative to the mount); only its first read is written.
    pub fn record(&self, path: &str) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if r.seen.insert(path.to_string()) {
            let line = format!("/{path}\n");
            if let Err(e) = r.out.write_all(line.as_bytes()).and_then(|_| r.out.flush()) {
                tracing::warn!("recording `{path}`: {e}");
            }
        }
    }
}

/// The paths inodes were reached by (lookups and directory listings), for recording reads.
#[derive(Default)]
pub(super) struct PathsSeen {
    paths: Mutex<HashMap<Ino, Arc<str>>>,
    read: Mutex<HashSet<Ino>>,
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

    /// The path of `ino` if this is its first read.
    pub(super) fn first_read(&self, ino: Ino) -> Option<Arc<str>> {
        if !self
            .read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino)
        {
            return None;
        }
        self.paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned()
    }
}

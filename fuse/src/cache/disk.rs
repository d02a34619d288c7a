//! The disk tier: one file per chunk, named by its digest, under `DIR/chunks/ab/abcdef…`.
//!
//! The index (size and use order of every file) lives in memory and is rebuilt from the directory
//! at open, ordered by mtime. There is no index file because the directory already is the index:
//! a second file would have to be kept transactionally in step with it (a `redb` dependency and a
//! write per hit), and a crash between the two would leave them disagreeing. Rebuilding costs one
//! `stat` per chunk at open, which for a cache of 10⁵ chunks is well under a second.
//!
//! Crash safety comes from two things. A chunk becomes visible only by `rename` of a complete,
//! fsynced temp file from `DIR/tmp/`, so no reader sees a half-written chunk under its final name;
//! temp files left by a crash are removed at the next open. And every read is verified against
//! the digest, so whatever a crash, a full disk or another program leaves behind is dropped, not
//! served.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use lazypull_converter::{Digest, Error, Result};

use super::lru::ByteLru;

/// How often a chunk's mtime is refreshed while it is in use. The in-memory order is exact; the
/// mtime only has to carry it approximately across a restart, and writing it on every hit would
/// turn every read into an inode update.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// A temp file older than this belongs to no running `put` (a put writes one chunk), whatever
/// its name claims.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// What the index keeps per chunk file: when its mtime was last refreshed by this process.
struct Entry {
    touched: Option<Instant>,
}

/// What a disk read found.
pub(crate) enum DiskRead {
    /// The chunk, verified.
    Hit(Vec<u8>),
    /// No file.
    Miss,
    /// A file whose content does not hash to its name; it has been deleted.
    Corrupt,
}

/// Counts from [`DiskStore::open`].
pub(crate) struct OpenReport {
    pub(crate) temps_removed: u64,
}

pub(crate) struct DiskStore {
    chunks: PathBuf,
    tmp: PathBuf,
    index: Mutex<ByteLru<Entry>>,
    /// Makes temp names unique within the process; the pid makes them unique across processes.
    temp_seq: AtomicU64,
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(what, e)
}

impl DiskStore {
    /// Open (creating) the store in `dir`, remove temp files left by crashed writers and rebuild
    /// the index from the chunk files.
    pub(crate) fn open(dir: &Path) -> Result<(Self, OpenReport)> {
        let chunks = dir.join("chunks");
        let tmp = dir.join("tmp");
        for d in [&chunks, &tmp] {
            fs::create_dir_all(d)
                .map_err(io_err(format!("creating cache directory {}", d.display())))?;
        }
        let temps_removed = remove_dead_temps(&tmp)?;
        let mut found = scan_chunks(&chunks)?;
        // Oldest first, so the rebuilt order is the order of last use as far as mtimes know it.
        found.sort_by_key(|(mtime, digest, _)| (*mtime, *digest));
        let mut index = ByteLru::default();
        for (_, digest, size) in found {
            index.insert(digest, Entry { touched: None }, size);
        }
        let store = DiskStore {
            chunks,
            tmp,
            index: Mutex::new(index),
            temp_seq: AtomicU64::new(0),
        };
        Ok((store, OpenReport { temps_removed }))
    }

    fn index(&self) -> MutexGuard<'_, ByteLru<Entry>> {
        // The index is updated in single statements that cannot panic halfway, so a panic
        // elsewhere while it was held leaves it consistent.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fan_out(&self, digest: &Digest) -> PathBuf {
        self.chunks.join(&digest.hex()[..2])
    }

    /// Where the chunk `digest` lives.
    pub(crate) fn path_of(&self, digest: &Digest) -> PathBuf {
        self.fan_out(digest).join(digest.hex())
    }

    /// Read and verify the chunk `digest`. A file that fails verification is deleted.
    pub(crate) fn read(&self, digest: &Digest) -> Result<DiskRead> {
        let path = self.path_of(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Deleted behind our back (another process's eviction, an operator): forget it.
                // Checked again under the lock, which every rename in this process holds: a put
                // may have published the file since our open failed, and its entry must stay.
                let mut index = self.index();
                if !path.exists() {
                    index.remove(digest);
                }
                return Ok(DiskRead::Miss);
            }
            Err(e) => {
                return Err(Error::io(
                    format!("opening cached chunk {}", path.display()),
                    e,
                ))
            }
        };
        let meta = file
            .metadata()
            .map_err(io_err(format!("reading cached chunk {}", path.display())))?;
        let mut data = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut data)
            .map_err(io_err(format!("reading cached chunk {}", path.display())))?;
        if Digest::of(&data) != *digest {
            self.drop_corrupt(digest, &path, meta.ino());
            return Ok(DiskRead::Corrupt);
        }
        let refresh = {
            let mut index = self.index();
            match index.touch(digest) {
                Some(entry) => take_touch(entry),
                None => {
                    // Written by another process sharing the directory: adopt it, unless it was
                    // evicted while we read it (the path then no longer names our inode).
                    let ours = fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == meta.ino());
                    if ours {
                        index.insert(*digest, Entry { touched: None }, data.len() as u64);
                    }
                    ours
                }
            }
        };
        if refresh {
            // Best effort: a failed touch only makes the order after a restart less exact.
            let _ = file.set_modified(SystemTime::now());
        }
        Ok(DiskRead::Hit(data))
    }

    /// Delete a chunk file that failed verification, unless a concurrent `put` has meanwhile
    /// replaced it with a fresh file (a different inode), which must not be lost.
    fn drop_corrupt(&self, digest: &Digest, path: &Path, ino: u64) {
        let mut index = self.index();
        let still_same = fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino);
        if still_same {
            // If this fails the file stays, and the next read finds it corrupt again.
            let _ = fs::remove_file(path);
            index.remove(digest);
        }
    }

    /// Mark `digest` as used (a memory-tier hit), refreshing its mtime now and then.
    pub(crate) fn touch(&self, digest: &Digest) {
        let refresh = self.index().touch(digest).is_some_and(take_touch);
        if refresh {
            if let Ok(f) = File::open(self.path_of(digest)) {
                let _ = f.set_modified(SystemTime::now());
            }
        }
    }

    /// Whether `digest` has a file (which a read may still find corrupt).
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.index().contains(digest) || self.path_of(digest).is_file()
    }

    /// Store `data` (already verified to hash to `digest`). Returns whether it was new.
    pub(crate) fn write(&self, digest: &Digest, data: &[u8]) -> Result<bool> {
        if self.index().touch(digest).is_some() {
            return Ok(false);
        }
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .tmp
            .join(format!("{}-{seq}-{}", std::process::id(), digest.hex()));
        let written = write_synced(&temp, data);
        let dir = self.fan_out(digest);
        let made_dir = written.and_then(|()| fs::create_dir_all(&dir));
        if let Err(e) = made_dir {
            let _ = fs::remove_file(&temp);
            return Err(Error::io(
                format!("writing cached chunk {digest} to {}", temp.display()),
                e,
            ));
        }
        let path = dir.join(digest.hex());
        // Rename under the index lock so the directory and the index change together with
        // respect to eviction and corrupt-file removal in this process.
        let mut index = self.index();
        if let Err(e) = fs::rename(&temp, &path) {
            drop(index);
            let _ = fs::remove_file(&temp);
            return Err(Error::io(
                format!("renaming {} to {}", temp.display(), path.display()),
                e,
            ));
        }
        // The rename itself is not made durable (no directory fsync): losing it in a crash only
        // loses a cache entry, never exposes a partial one.
        let entry = Entry {
            touched: Some(Instant::now()),
        };
        Ok(index.insert(*digest, entry, data.len() as u64))
    }

    /// Delete least recently used chunks until at most `max_bytes` remain. Returns the bytes and
    /// the number of chunks deleted.
    pub(crate) fn trim(&self, max_bytes: u64) -> Result<(u64, u64)> {
        let mut index = self.index();
        let (mut freed, mut count) = (0, 0);
        while index.bytes() > max_bytes {
            let Some(victim) = index.oldest() else { break };
            let path = self.path_of(&victim);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("evicting cached chunk {}", path.display()),
                        e,
                    ))
                }
            }
            if let Some((_, size)) = index.remove(&victim) {
                freed += size;
                count += 1;
            }
        }
        Ok((freed, count))
    }

    /// Bytes of chunk files in the index.
    pub(crate) fn bytes(&self) -> u64 {
        self.index().bytes()
    }

    /// Chunk files in the index.
    pub(crate) fn len(&self) -> usize {
        self.index().len()
    }

    /// Whether `digest` is in the index (not checking the file).
    #[cfg(test)]
    pub(crate) fn indexed(&self, digest: &Digest) -> bool {
        self.index().contains(digest)
    }

    #[cfg(test)]
    pub(crate) fn order(&self) -> Vec<Digest> {
        self.index().keys_oldest_first()
    }

    #[cfg(test)]
    pub(crate) fn temp_dir(&self) -> &Path {
        &self.tmp
    }
}

/// Whether this use should refresh the file's mtime; if so, records that it did.
fn take_touch(entry: &mut Entry) -> bool {
    let now = Instant::now();
    let due = entry
        .touched
        .is_none_or(|t| now.duration_since(t) >= TOUCH_INTERVAL);
    if due {
        entry.touched = Some(now);
    }
    due
}

/// Write `data` to a new file at `path` and fsync it, so the rename that publishes it can never
/// expose an empty or partial file after a crash (ext4's delayed allocation would otherwise).
fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Remove temp files whose writer is gone: named by a pid that no longer runs, not named by us
/// at all, or too old to belong to any running `put`. Temp files of live writers stay, because
/// another process may share the directory and be mid-`put`.
fn remove_dead_temps(tmp: &Path) -> Result<u64> {
    let what = || format!("cleaning cache temp directory {}", tmp.display());
    let mut removed = 0;
    for item in fs::read_dir(tmp).map_err(io_err(what()))? {
        let item = item.map_err(io_err(what()))?;
        let name = item.file_name();
        let writer = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        let alive = writer.is_some_and(process_alive);
        let stale = item
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP);
        if alive && !stale {
            continue;
        }
        let path = item.path();
        let gone = if item.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match gone {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("removing leftover temp file {}", path.display()),
                    e,
                ))
            }
        }
    }
    Ok(removed)
}

/// Whether a process with this pid runs (Linux: lazypull only runs where FUSE does).
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Every chunk file under `chunks/`: its mtime, digest and size. Names that are not a
/// lowercase digest in the right fan-out directory are not ours and are left alone.
fn scan_chunks(chunks: &Path) -> Result<Vec<(SystemTime, Digest, u64)>> {
    let mut found = Vec::new();
    let outer = fs::read_dir(chunks).map_err(io_err(format!(
        "reading cache directory {}",
        chunks.display()
    )))?;
    for fan in outer {
        let fan = fan.map_err(io_err(format!("reading {}", chunks.display())))?;
        let fan_name = fan.file_name();
        let Some(prefix) = fan_name.to_str().filter(|n| n.len() == 2) else {
            continue;
        };
        if !fan.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = fan.path();
        let what = || format!("reading cache directory {}", dir.display());
        for item in fs::read_dir(&dir).map_err(io_err(what()))? {
            let item = item.map_err(io_err(what()))?;
            let name = item.file_name();
            let Some(digest) = name.to_str().and_then(|n| chunk_name(prefix, n)) else {
                continue;
            };
            let meta = match item.metadata() {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Evicted by another process while we scanned.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("stat {}", item.path().display()), e)),
            };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((mtime, digest, meta.len()));
        }
    }
    Ok(found)
}

/// The digest a chunk file name stands for, if it is one of ours.
fn chunk_name(prefix: &str, name: &str) -> Option<Digest> {
    let digest: Digest = format!("sha256:{name}").parse().ok()?;
    (digest.hex() == name && name.starts_with(prefix)).then_some(digest)
}

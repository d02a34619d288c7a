//! FUSE passthrough of files read in full: their verified bytes are assembled once into a
//! *materialised* file, and later opens hand the kernel that file (`FOPEN_PASSTHROUGH`, Linux
//! ≥ 6.9), so reads are the kernel's own, from the backing file's page cache or disk, with no
//! chunk-cache read, hash or decompression per read.
//!
//! Trust: a materialised file is written by this process, during this mount, only from bytes the
//! layer's readers verified (read with the network forbidden, so nothing is fetched for it). It
//! is trusted for the life of its mount and no longer: the mount's directory is deleted at
//! unmount, and a directory left by a mount that died is deleted by the next [`Passthrough::new`]
//! on the same root. Each mount holds a `flock` on a lock file beside its directory, which is how
//! a dead one is told from a live one (the lock goes with the process).
//!
//! Which files: a regular file once it has been read to its end, or on an open when every one of
//! its chunks is already local (the attempt gives up at the first chunk that is not). Not every
//! file of a fully fetched layer: that would double the disk used for files nobody reads twice.
//! Materialised bytes are bounded by a budget shared by the layers of a mount. The copying runs on
//! one low-priority thread per layer, which gives way while reads wait on the network.
//!
//! The kernel's rules the open path keeps (`fs/fuse/iomode.c`): while an inode is open through a
//! backing file, every open of it must name the same backing file, and an inode open in cached
//! mode cannot be opened through a backing file (the open fails with EIO). So an open gets
//! passthrough only when no cached open of the inode is outstanding, and always while a
//! passthrough one is; one backing id per inode is kept until unmount.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fuser::BackingId;

use super::pool::Pool;
use super::{Ino, LayerTree};
use crate::demand::{self, Demand};

/// File handle of an open served through the layer (the chunk cache path).
pub(crate) const FH_CACHED: u64 = 0;
/// File handle of an open served by the kernel from a materialised file.
pub(crate) const FH_PASSTHROUGH: u64 = 1;

/// The default budget of materialised bytes per mount.
pub const DEFAULT_BUDGET: u64 = 1 << 30;

/// Bytes read from the layer per step of a materialisation: a step is where it gives way.
const STEP: u64 = 4 << 20;
/// How long no read must have waited on the network before a materialisation goes on.
const QUIET: Duration = Duration::from_millis(100);
/// Disk is allocated in blocks: a file is charged to the budget rounded up to one.
const BLOCK: u64 = 4096;

/// Setting up the materialised directories failed.
#[derive(Debug, thiserror::Error)]
#[error("passthrough directory {}: {what}: {source}", path.display())]
pub struct PassthroughError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PassthroughError + 'a {
    move |source| PassthroughError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Counters of passthrough since [`Passthrough::new`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassthroughStats {
    /// Opens answered with a backing file: the kernel serves their reads.
    pub opens: u64,
    /// Files materialised.
    pub files: u64,
    /// Bytes of the files materialised.
    pub bytes: u64,
    /// The budget of materialised bytes (files are charged in 4 KiB blocks).
    pub budget: u64,
    /// Files read in full that were not materialised for lack of budget.
    pub over_budget: u64,
    /// Directories of dead mounts removed by [`Passthrough::new`].
    pub leftovers_removed: u64,
    /// Whether the kernel refused passthrough (no support, no permission, a backing file it
    /// cannot use); reads then go through the chunk cache as without passthrough.
    pub refused: bool,
}

/// Passthrough for the layers of one mount: where their materialised files go, the budget they
/// share, and what they did. Give it to [`super::MountOptions::passthrough`].
#[derive(Debug)]
pub struct Passthrough {
    root: PathBuf,
    budget: u64,
    used: AtomicU64,
    opens: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    over_budget: AtomicU64,
    leftovers_removed: u64,
    refused: AtomicBool,
}

impl Passthrough {
    /// Materialise files under `root` (say `CACHE/materialised`, created if missing), at most
    /// `budget` bytes of them. Directories left there by mounts that died are removed first.
    pub fn new(root: &Path, budget: u64) -> Result<Arc<Passthrough>, PassthroughError> {
        std::fs::create_dir_all(root).map_err(err("creating", root))?;
        let leftovers_removed = remove_dead(root)?;
        Ok(Arc::new(Passthrough {
            root: root.to_path_buf(),
            budget,
            used: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            over_budget: AtomicU64::new(0),
            leftovers_removed,
            refused: AtomicBool::new(false),
        }))
    }

    /// Where the mounts' directories are.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stats(&self) -> PassthroughStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PassthroughStats {
            opens: load(&self.opens),
            files: load(&self.files),
            bytes: load(&self.bytes),
            budget: self.budget,
            over_budget: load(&self.over_budget),
            leftovers_removed: self.leftovers_removed,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// A new directory for one mounted layer, locked as alive.
    pub(crate) fn layer_dir(&self) -> Result<Arc<LayerDir>, PassthroughError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.root.join(&id);
        let lock_path = self.root.join(format!("{id}.lock"));
        // The lock first, then the directory: a directory without its lock file is dead.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(err("creating a lock file", &lock_path))?;
        if !try_lock(&lock) {
            return Err(err("locking", &lock_path)(io::Error::from(
                io::ErrorKind::WouldBlock,
            )));
        }
        // A cleaner may have unlinked the file between our open and our lock.
        let same = std::fs::metadata(&lock_path)
            .and_then(|m| lock.metadata().map(|l| l.ino() == m.ino()))
            .unwrap_or(false);
        if !same {
            return Err(err("locking", &lock_path)(io::Error::other(
                "the lock file was removed while being locked",
            )));
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(err("creating", &path))?;
        Ok(Arc::new(LayerDir {
            path,
            lock_path,
            _lock: lock,
            removed: AtomicBool::new(false),
        }))
    }

    /// Take `charge` bytes of the budget, if they are left.
    fn reserve(&self, charge: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(charge).filter(|&n| n <= self.budget)
            })
            .is_ok()
    }

    fn unreserve(&self, charge: u64) {
        self.used.fetch_sub(charge, Ordering::Relaxed);
    }

    fn fits(&self, charge: u64) -> bool {
        self.used
            .load(Ordering::Relaxed)
            .checked_add(charge)
            .is_some_and(|n| n <= self.budget)
    }

    /// The kernel refused passthrough: say so once, at info (nothing is wrong, reads are slower).
    fn refuse(&self, why: &dyn std::fmt::Display) {
        if !self.refused.swap(true, Ordering::Relaxed) {
            tracing::info!("FUSE passthrough unavailable ({why}): reads stay on the chunk cache");
        }
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: whether the lock was taken.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a valid open descriptor; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Remove the directories of dead mounts under `root`: those whose lock file nobody holds, and
/// those without a lock file. Returns how many were removed.
fn remove_dead(root: &Path) -> Result<u64, PassthroughError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(root).map_err(err("listing", root))? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".lock") {
            let Ok(lock) = File::open(entry.path()) else {
                continue;
            };
            if try_lock(&lock) {
                // Held now by us, so no live mount can be using it.
                if remove_tree(&root.join(id)) {
                    removed += 1;
                }
                let _ = std::fs::remove_file(entry.path());
            }
        } else if entry.file_type().is_ok_and(|t| t.is_dir())
            && !root.join(format!("{name}.lock")).exists()
            && remove_tree(&entry.path())
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// `remove_dir_all`, tried again when a file appears meanwhile (a materialisation finishing).
/// Whether there was anything to remove.
fn remove_tree(dir: &Path) -> bool {
    for _ in 0..3 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(e) => tracing::debug!("removing {}: {e}", dir.display()),
        }
    }
    true
}

/// The materialised files of one mounted layer, deleted at unmount (or when dropped).
#[derive(Debug)]
pub(crate) struct LayerDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    removed: AtomicBool,
}

impl LayerDir {
    /// Delete the directory and then its lock file; later materialisations fail to write.
    pub(crate) fn remove(&self) {
        if !self.removed.swap(true, Ordering::Relaxed) {
            let _ = remove_tree(&self.path);
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }

    fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

impl Drop for LayerDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Where an inode stands.
enum Stage {
    /// Not materialised; an attempt may be made.
    Waiting,
    Queued,
    /// Materialised; the backing id is registered at the first passthrough open.
    Ready {
        file: File,
        backing: Option<Arc<BackingId>>,
    },
    /// Never materialised: its bytes failed verification, the budget was short, or it is empty.
    Never,
}

struct InodeState {
    size: u64,
    stage: Stage,
    cached_opens: u32,
    passthrough_opens: u32,
}

/// How an open is to be answered.
pub(crate) enum OpenAs {
    /// Through the layer; `queue`: try to materialise the file now.
    Cached {
        queue: bool,
    },
    Passthrough(Arc<BackingId>),
}

/// Passthrough state of one mounted layer.
pub(crate) struct LayerPass {
    shared: Arc<Passthrough>,
    dir: Arc<LayerDir>,
    /// Off once the kernel refused passthrough: nothing more is materialised or registered.
    on: AtomicBool,
    inodes: Mutex<HashMap<Ino, InodeState>>,
    /// The one thread that materialises files, at a low CPU priority.
    worker: Pool,
}

fn charge(size: u64) -> u64 {
    size.div_ceil(BLOCK).saturating_mul(BLOCK)
}

impl LayerPass {
    pub(crate) fn new(shared: Arc<Passthrough>, dir: Arc<LayerDir>) -> LayerPass {
        let worker = Pool::new(1, "lazypull-materialise");
        // On-demand reads are CPU-bound too when warm: the copy takes what they leave.
        worker.run(|| {
            // SAFETY: setpriority of this thread (gettid); no memory is involved.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS as _, libc::gettid() as libc::id_t, 10);
            }
        });
        LayerPass {
            shared,
            dir,
            on: AtomicBool::new(true),
            inodes: Mutex::new(HashMap::new()),
            worker,
        }
    }

    fn inodes(&self) -> MutexGuard<'_, HashMap<Ino, InodeState>> {
        self.inodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn refuse(&self, why: &dyn std::fmt::Display) {
        self.on.store(false, Ordering::Relaxed);
        self.shared.refuse(why);
    }

    /// Queue an attempt for `st` if one may be made now.
    fn should_queue(&self, st: &mut InodeState) -> bool {
        if !matches!(st.stage, Stage::Waiting) || !self.on.load(Ordering::Relaxed) {
            return false;
        }
        if st.size == 0 {
            st.stage = Stage::Never;
            return false;
        }
        if !self.shared.fits(charge(st.size)) {
            st.stage = Stage::Never;
            self.shared.over_budget.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        st.stage = Stage::Queued;
        true
    }

    /// Decide how to answer an open of the regular file `ino` of `size` bytes; `register` makes
    /// the backing id of a materialised file (once per inode).
    pub(crate) fn open(
        &self,
        ino: Ino,
        size: u64,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> OpenAs {
        let mut inodes = self.inodes();
        let st = inodes.entry(ino).or_insert(InodeState {
            size,
            stage: Stage::Waiting,
            cached_opens: 0,
            passthrough_opens: 0,
        });
        if let Stage::Ready { file, backing } = &mut st.stage {
            if st.cached_opens == 0 {
                if backing.is_none() && self.on.load(Ordering::Relaxed) {
                    match register(file) {
                        Ok(id) => *backing = Some(Arc::new(id)),
                        Err(e) => {
                            let why = format!("registering a backing file: {e}");
                            self.on.store(false, Ordering::Relaxed);
                            self.shared.refuse(&why);
                        }
                    }
                }
                if let Some(id) = backing {
                    st.passthrough_opens += 1;
                    self.shared.opens.fetch_add(1, Ordering::Relaxed);
                    return OpenAs::Passthrough(Arc::clone(id));
                }
            }
        }
        st.cached_opens += 1;
        let queue = self.should_queue(st);
        OpenAs::Cached { queue }
    }

    /// An open with handle `fh` of `ino` was closed.
    pub(crate) fn release(&self, ino: Ino, fh: u64) {
        if let Some(st) = self.inodes().get_mut(&ino) {
            let count = if fh == FH_PASSTHROUGH {
                &mut st.passthrough_opens
            } else {
                &mut st.cached_opens
            };
            *count = count.saturating_sub(1);
        }
    }

    /// A read of `ino` through the layer ended at byte `end`: at the file's end, try to
    /// materialise it. Returns whether to queue the attempt.
    pub(crate) fn read_to(&self, ino: Ino, end: u64) -> bool {
        let mut inodes = self.inodes();
        match inodes.get_mut(&ino) {
            Some(st) if end >= st.size => self.should_queue(st),
            _ => false,
        }
    }

    /// Run in [`Self::spawn`]'s thread: copy `ino`'s verified bytes from `tree` into the layer's
    /// directory, with the network forbidden, giving way to reads that wait on `demand`.
    pub(crate) fn materialise<T: LayerTree + ?Sized>(&self, tree: &T, demand: &Demand, ino: Ino) {
        let Some(size) = self.inodes().get(&ino).map(|s| s.size) else {
            return;
        };
        let charge = charge(size);
        let stage = if !self.on.load(Ordering::Relaxed) {
            Stage::Never
        } else if !self.shared.reserve(charge) {
            self.shared.over_budget.fetch_add(1, Ordering::Relaxed);
            Stage::Never
        } else {
            match self.copy(tree, demand, ino, size) {
                Ok(file) => {
                    self.shared.files.fetch_add(1, Ordering::Relaxed);
                    self.shared.bytes.fetch_add(size, Ordering::Relaxed);
                    Stage::Ready {
                        file,
                        backing: None,
                    }
                }
                Err(Attempt::Incomplete) => {
                    self.shared.unreserve(charge);
                    Stage::Waiting
                }
                Err(Attempt::Failed(why)) => {
                    self.shared.unreserve(charge);
                    tracing::debug!(ino = ino.0, "not materialised: {why}");
                    Stage::Never
                }
            }
        };
        if let Some(st) = self.inodes().get_mut(&ino) {
            st.stage = stage;
        }
    }

    /// Queue `job` on the materialising thread.
    pub(crate) fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        self.worker.run(job);
    }

    fn copy<T: LayerTree + ?Sized>(
        &self,
        tree: &T,
        demand: &Demand,
        ino: Ino,
        size: u64,
    ) -> Result<File, Attempt> {
        let tmp = self.dir.path.join(format!(".{ino}.tmp"));
        let done = self.dir.path.join(ino.to_string());
        let outcome = self.write(tree, demand, ino, size, &tmp).and_then(|file| {
            std::fs::rename(&tmp, &done).map_err(|e| Attempt::Failed(format!("renaming: {e}")))?;
            Ok(file)
        });
        if outcome.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        outcome
    }

    fn write<T: LayerTree + ?Sized>(
        &self,
        tree: &T,
        demand: &Demand,
        ino: Ino,
        size: u64,
        tmp: &Path,
    ) -> Result<File, Attempt> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| Attempt::Failed(format!("{what}: {e}"));
        // No fsync: the file is worth nothing after a crash (the next mount deletes it).
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(tmp)
            .map_err(|e| failed("creating", &e))?;
        let mut off = 0;
        while off < size {
            if self.dir.removed() {
                return Err(Attempt::Failed("unmounted".into()));
            }
            if demand.waiting() > 0 {
                demand.wait_idle(QUIET);
            }
            let len = (size - off).min(STEP) as u32;
            let data = match demand::local_only(|| tree.read(ino, off, len)) {
                Ok(d) => d,
                Err(e) if e.needs_network() => return Err(Attempt::Incomplete),
                Err(e) => return Err(failed("reading", &e)),
            };
            if data.is_empty() {
                return Err(Attempt::Failed(format!("ends at {off} of {size} bytes")));
            }
            file.write_all(&data).map_err(|e| failed("writing", &e))?;
            off += data.len() as u64;
        }
        Ok(file)
    }
}

/// Why a materialisation stopped.
enum Attempt {
    /// A chunk is not local yet: try again on a later read to the end or open.
    Incomplete,
    Failed(String),
}

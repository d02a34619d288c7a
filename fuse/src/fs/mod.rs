//! The FUSE filesystem of one layer: [`LayerFs`] serves a [`LayerTree`] through `fuser`.
//!
//! - `tree`: the [`LayerTree`] abstraction ([`Ino`], [`Attr`], [`FsError`]).
//! - `estargz`: [`EstargzTree`], an in-memory inode table over an eStargz TOC, reading chunks
//!   through a [`ChunkSource`].
//! - `erofs`: [`ErofsTree`], an EROFS image read on demand.
//! - `mount`: [`mount`] in background threads, [`MountHandle`], [`unmount`].
//! - `passthrough`: [`Passthrough`]: files read in full are materialised from verified bytes
//!   and reopened through FUSE passthrough, so the kernel serves their reads.
//!
//! Content is immutable, so the kernel is told to cache everything for long ([`MountOptions::ttl`]):
//! entries, negative lookups, attributes, pages (`FOPEN_KEEP_CACHE`), directory listings
//! (`FOPEN_CACHE_DIR`) and symlinks. Errors become an errno in exactly one place, [`errno`];
//! data that fails verification is `EIO`, and is logged naming the layer, inode and offset.
//!
//! Requests are answered asynchronously: a FUSE thread (one `/dev/fuse` clone each) first tries
//! a request with the network forbidden ([`crate::demand::local_only`]), so metadata and cached
//! data are answered at once; a request that needs a fetch goes to a pool of reader threads,
//! which reply when the fetch is done. A slow fetch never holds a FUSE thread.

mod erofs;
mod estargz;
mod mount;
mod passthrough;
mod pool;
mod record;
mod tree;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};
use lazypull_converter::Error;

use crate::demand::{self, Demand};
use pool::Pool;

pub use erofs::ErofsTree;
pub use estargz::{ChunkSource, EstargzTree, ReaderChunks};
pub use mount::{is_disconnected, mount, unmount, MountError, MountHandle, MountOptions};
use passthrough::{LayerDir, LayerPass, OpenAs, FH_CACHED, FH_PASSTHROUGH};
pub use passthrough::{Passthrough, PassthroughError, PassthroughStats, DEFAULT_BUDGET};
pub use record::AccessRecorder;
use record::PathsSeen;
pub use tree::{Attr, DirEntry, FileKind, FsError, FsResult, Ino, LayerTree, StatFs};

/// The errno the kernel gets for `err`: the one place internal errors become errnos.
///
/// Anything wrong with the layer's bytes (a digest mismatch, an I/O or fetch failure, a
/// malformed blob) is `EIO`: the caller cannot do better than retry or give up.
pub fn errno(err: &FsError) -> Errno {
    match err {
        FsError::NoInode(_) => Errno::ENOENT,
        FsError::NotDir(_) => Errno::ENOTDIR,
        FsError::IsDir(_) => Errno::EISDIR,
        FsError::WrongKind(..) => Errno::EINVAL,
        FsError::Layer { source, .. } => match source.root() {
            Error::DigestMismatch { .. }
            | Error::Io { .. }
            | Error::Format(_)
            | Error::Unsupported(_)
            | Error::Invalid(_)
            | Error::Context { .. } => Errno::EIO,
        },
    }
}

/// A [`LayerTree`] served through FUSE. Mount it with [`mount`].
pub struct LayerFs<T: LayerTree> {
    core: Arc<Core<T>>,
    /// Threads answering the requests that need the network.
    readers: Pool,
}

/// What every thread serving a layer shares.
struct Core<T: LayerTree> {
    tree: T,
    ttl: Duration,
    /// Where first reads are recorded (`--record`), and the paths needed to name them.
    recorder: Option<(Arc<AccessRecorder>, PathsSeen)>,
    /// Listings of open directories by handle, so paging through a directory with offsets
    /// reads it once.
    dirs: Mutex<HashMap<u64, Arc<[DirEntry]>>>,
    next_handle: AtomicU64,
    /// Requests waiting on the network, which background fetches give way to.
    demand: Arc<Demand>,
    /// Added to the tree's inode numbers (but the root's) in everything the kernel sees.
    ino_offset: u64,
    /// Passthrough of files read in full, when asked for.
    pass: Option<LayerPass>,
}

impl<T: LayerTree + 'static> LayerFs<T> {
    /// Serve `tree`, letting the kernel cache entries and attributes for `ttl`.
    pub fn new(tree: T, ttl: Duration) -> Self {
        Self::with_readers(tree, ttl, MountOptions::default().readers, Arc::default())
    }

    /// Serve `tree` with `readers` threads for requests that wait on the network, counting
    /// them in `demand`.
    pub fn with_readers(tree: T, ttl: Duration, readers: usize, demand: Arc<Demand>) -> Self {
        let readers = Pool::new(readers, "lazypull-read");
        LayerFs {
            core: Arc::new(Core {
                tree,
                ttl,
                recorder: None,
                dirs: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
                demand,
                ino_offset: 0,
                pass: None,
            }),
            readers,
        }
    }

    /// Shift every inode number but the root's by `offset` (one per layer of an image, so that
    /// the layers' numbers never collide).
    pub fn with_ino_offset(mut self, offset: u64) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.ino_offset = offset;
        }
        self
    }

    /// Record the path of every file on its first read.
    pub fn with_recorder(mut self, recorder: Arc<AccessRecorder>) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.recorder = Some((recorder, PathsSeen::default()));
        }
        self
    }

    /// Materialise files read in full into `dir` and reopen them through FUSE passthrough.
    pub(crate) fn with_passthrough(mut self, shared: Arc<Passthrough>, dir: Arc<LayerDir>) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.pass = Some(LayerPass::new(shared, dir));
        }
        self
    }

    /// The tree served.
    pub fn tree(&self) -> &T {
        &self.core.tree
    }

    /// Answer one request: `work` runs here with the network forbidden; if it needs the
    /// network, it runs again on a reader thread, so a slow fetch never holds a FUSE thread.
    /// `respond` sends the outcome to the kernel.
    fn answer<V, R>(
        &self,
        reply: R,
        work: impl Fn(&Core<T>) -> FsResult<V> + Send + 'static,
        respond: impl FnOnce(&Arc<Core<T>>, R, FsResult<V>) + Send + 'static,
    ) where
        R: Send + 'static,
    {
        match demand::local_only(|| work(&self.core)) {
            Err(e) if e.needs_network() => {
                let core = Arc::clone(&self.core);
                self.readers.run(move || {
                    let waiting = core.demand.enter();
                    let outcome = work(&core);
                    drop(waiting);
                    respond(&core, reply, outcome);
                });
            }
            outcome => respond(&self.core, reply, outcome),
        }
    }
}

impl<T: LayerTree + 'static> Core<T> {
    /// Materialise `ino` on the layer's materialising thread (which holds no reference that
    /// would keep the layer alive after unmount).
    fn materialise(self: &Arc<Self>, ino: Ino) {
        let Some(pass) = &self.pass else { return };
        let core = Arc::downgrade(self);
        pass.spawn(move || {
            if let Some(core) = core.upgrade() {
                if let Some(pass) = &core.pass {
                    pass.materialise(&core.tree, &core.demand, ino);
                }
            }
        });
    }
}

impl<T: LayerTree> Core<T> {
    fn reached(&self, parent: Ino, name: &[u8], child: Ino) {
        if let Some((_, seen)) = &self.recorder {
            seen.reached(parent, name, child);
        }
    }

    /// The errno for a failed `op`, logging layer failures (which the caller sees only as EIO).
    fn fail(&self, op: &str, ino: Ino, offset: Option<u64>, err: &FsError) -> Errno {
        let e = errno(err);
        if e == Errno::EIO {
            tracing::error!(
                layer = %self.tree.describe(),
                op,
                ino = ino.0,
                offset,
                error = %err,
                "layer read failed"
            );
        }
        e
    }

    fn file_attr(&self, ino: Ino) -> FsResult<FileAttr> {
        let mut attr = file_attr(&self.tree.getattr(ino)?);
        attr.ino = self.kernel(ino);
        Ok(attr)
    }

    /// The inode number the kernel sees for the tree's `ino`: shifted by the layer's offset, so
    /// that the layers of one image never share a number (overlayfs passes lower inode numbers
    /// through, and the dynamic loader takes two files with one `(st_dev, st_ino)` for one).
    /// The root stays 1, as FUSE requires.
    fn kernel(&self, ino: Ino) -> INodeNo {
        if ino == Ino::ROOT {
            INodeNo(ino.0)
        } else {
            INodeNo(ino.0.wrapping_add(self.ino_offset))
        }
    }

    /// The tree's inode for the kernel's `i`.
    fn local(&self, i: INodeNo) -> Ino {
        if i.0 == Ino::ROOT.0 {
            Ino::ROOT
        } else {
            Ino(i.0.wrapping_sub(self.ino_offset))
        }
    }

    fn listing(&self, ino: Ino, fh: FileHandle) -> FsResult<Arc<[DirEntry]>> {
        let open = self.lock_dirs().get(&fh.0).cloned();
        match open {
            Some(l) => Ok(l),
            // Not opened through us (should not happen): list afresh.
            None => self.tree.readdir(ino).map(Arc::from),
        }
    }

    /// Add the entries of `list` from `offset` with their attributes to `reply`, until it is
    /// full. Where an entry's attributes need the network, stop there: a short listing is fine
    /// (the kernel asks again from the next offset) unless it is empty, which is the error.
    fn fill_plus(
        &self,
        dir: Ino,
        list: &[DirEntry],
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) -> FsResult<()> {
        for (n, d) in list.iter().enumerate().skip(offset as usize) {
            let attr = match self.file_attr(d.ino) {
                Ok(a) => a,
                Err(e) if e.needs_network() && n > offset as usize => return Ok(()),
                // A failing entry's error names its inode.
                Err(e) => return Err(e),
            };
            self.reached(dir, &d.name, d.ino);
            let name = OsStr::from_bytes(&d.name);
            if reply.add(
                INodeNo(d.ino.0),
                n as u64 + 1,
                name,
                &self.ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        Ok(())
    }

    fn lock_dirs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<[DirEntry]>>> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Dir => FileType::Directory,
        FileKind::Reg => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Char => FileType::CharDevice,
        FileKind::Block => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// Seconds and nanoseconds since the epoch (before it for negative `secs`) as a `SystemTime`.
fn system_time(secs: i64, nsec: u32) -> SystemTime {
    let whole = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    t.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec.min(999_999_999)))))
        .unwrap_or(UNIX_EPOCH)
}

/// `(major, minor)` as the kernel's 32-bit `new_encode_dev` packs it into `fuse_attr.rdev`.
fn encode_dev((major, minor): (u32, u32)) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn file_attr(a: &Attr) -> FileAttr {
    let mtime = system_time(a.mtime, a.mtime_nsec);
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: encode_dev(a.rdev),
        blksize: 4096,
        flags: 0,
    }
}

/// The attributes of a negative lookup reply: inode 0 tells the kernel to cache the absence.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl<T: LayerTree + 'static> Filesystem for LayerFs<T> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each on its own: a kernel lacking one still gets the others.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks FUSE capability");
            }
        }
        if let Some(pass) = &self.core.pass {
            // Depth 1: the backing files must be on a plain filesystem, and overlayfs can still
            // stack on this mount.
            let offered = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !offered {
                pass.refuse(&"the kernel offers no FUSE_PASSTHROUGH");
            }
        }
        // Reads waiting on the network are answered by reader threads: let the kernel keep
        // more of them in flight than the default of 16.
        if let Err(max) = config.set_max_background(64) {
            tracing::debug!(max, "kernel limits background FUSE requests");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (parent, name) = (self.core.local(parent), name.as_bytes().to_vec());
        self.answer(
            reply,
            move |core| {
                let Some(child) = core.tree.lookup(parent, &name)? else {
                    return Ok(None);
                };
                core.reached(parent, &name, child);
                core.file_attr(child).map(Some)
            },
            move |core, reply, found| match found {
                Ok(Some(attr)) => reply.entry(&core.ttl, &attr, Generation(0)),
                Ok(None) => reply.entry(&core.ttl, &negative_attr(), Generation(0)),
                Err(e) => reply.error(core.fail("lookup", parent, None, &e)),
            },
        );
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let i = self.core.local(i);
        self.answer(
            reply,
            move |core| core.file_attr(i),
            move |core, reply, attr| match attr {
                Ok(attr) => reply.attr(&core.ttl, &attr),
                Err(e) => reply.error(core.fail("getattr", i, None, &e)),
            },
        );
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        let i = self.core.local(i);
        self.answer(
            reply,
            move |core| core.tree.readlink(i),
            move |core, reply, target| match target {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(core.fail("readlink", i, None, &e)),
            },
        );
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let i = self.core.local(i);
        self.answer(
            reply,
            move |core| core.tree.getattr(i),
            move |core, reply, attr| match attr {
                Ok(attr) => match &core.pass {
                    Some(pass) if attr.kind == FileKind::Reg => {
                        match pass.open(i, attr.size, |file| reply.open_backing(file)) {
                            OpenAs::Passthrough(id) => reply.opened_passthrough(
                                FileHandle(FH_PASSTHROUGH),
                                FopenFlags::empty(),
                                &id,
                            ),
                            OpenAs::Cached { queue } => {
                                if queue {
                                    core.materialise(i);
                                }
                                reply.opened(FileHandle(FH_CACHED), FopenFlags::FOPEN_KEEP_CACHE)
                            }
                        }
                    }
                    _ => reply.opened(FileHandle(FH_CACHED), FopenFlags::FOPEN_KEEP_CACHE),
                },
                Err(e) => reply.error(core.fail("open", i, None, &e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let i = self.core.local(i);
        self.answer(
            reply,
            move |core| core.tree.read(i, offset, size),
            move |core, reply, data| match data {
                Ok(data) => {
                    if let Some((recorder, seen)) = &core.recorder {
                        if let Some(path) = seen.path(i) {
                            let size = || core.tree.getattr(i).map_or(0, |a| a.size);
                            recorder.record(&path, offset, data.len() as u64, size);
                        }
                    }
                    // Before the reply: whoever reads the end learns at once what was decided.
                    let end = offset + data.len() as u64;
                    if core.pass.as_ref().is_some_and(|p| p.read_to(i, end)) {
                        core.materialise(i);
                    }
                    reply.data(&data)
                }
                Err(e) => reply.error(core.fail("read", i, Some(offset), &e)),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(pass) = &self.core.pass {
            pass.release(self.core.local(i), fh.0);
        }
        reply.ok();
    }

    /// Nothing is ever written, so closing has nothing to flush.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let i = self.core.local(i);
        self.answer(
            reply,
            move |core| core.tree.readdir(i),
            move |core, reply, list| match list {
                Ok(list) => {
                    let fh = core.next_handle.fetch_add(1, Ordering::Relaxed);
                    core.lock_dirs().insert(fh, Arc::from(list));
                    reply.opened(
                        FileHandle(fh),
                        FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
                    );
                }
                Err(e) => reply.error(core.fail("opendir", i, None, &e)),
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let core = &self.core;
        let dir = core.local(i);
        let list = match core.listing(dir, fh) {
            Ok(l) => l,
            Err(e) => return reply.error(core.fail("readdir", dir, Some(offset), &e)),
        };
        for (n, d) in list.iter().enumerate().skip(offset as usize) {
            core.reached(dir, &d.name, d.ino);
            let name = OsStr::from_bytes(&d.name);
            if reply.add(core.kernel(d.ino), n as u64 + 1, file_type(d.kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = self.core.local(i);
        let list = match self.core.listing(dir, fh) {
            Ok(l) => l,
            Err(e) => return reply.error(self.core.fail("readdirplus", dir, Some(offset), &e)),
        };
        match demand::local_only(|| self.core.fill_plus(dir, &list, offset, &mut reply)) {
            Ok(()) => reply.ok(),
            // Not even the first entry's attributes are here: list on a reader thread.
            Err(e) if e.needs_network() => {
                let core = Arc::clone(&self.core);
                self.readers.run(move || {
                    let waiting = core.demand.enter();
                    let filled = core.fill_plus(dir, &list, offset, &mut reply);
                    drop(waiting);
                    match filled {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(core.fail("readdirplus", dir, Some(offset), &e)),
                    }
                });
            }
            Err(e) => reply.error(self.core.fail("readdirplus", dir, Some(offset), &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.lock_dirs().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        let s = self.core.tree.statfs();
        reply.statfs(
            s.blocks,
            0,
            0,
            s.files,
            0,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (i, name) = (self.core.local(i), name.as_bytes().to_vec());
        self.answer(
            reply,
            move |core| core.tree.getxattr(i, &name),
            move |core, reply, value| match value {
                Ok(Some(value)) => reply_sized(reply, size, &value),
                Ok(None) => reply.error(Errno::NO_XATTR),
                Err(e) => reply.error(core.fail("getxattr", i, None, &e)),
            },
        );
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let i = self.core.local(i);
        self.answer(
            reply,
            move |core| core.tree.xattrs(i),
            move |core, reply, all| match all {
                Ok(all) => {
                    let mut names = Vec::new();
                    for (name, _) in all {
                        names.extend_from_slice(&name);
                        names.push(0);
                    }
                    reply_sized(reply, size, &names);
                }
                Err(e) => reply.error(core.fail("listxattr", i, None, &e)),
            },
        );
    }

    fn access(&self, _req: &Request, i: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are the kernel's business (`default_permissions`); only writes are
        // refused here, and missing inodes.
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        let i = self.core.local(i);
        self.answer(
            reply,
            move |core| core.tree.getattr(i),
            move |core, reply, attr| match attr {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(core.fail("access", i, None, &e)),
            },
        );
    }
}

/// The xattr size-probe protocol: `size` 0 asks for the length; too small a buffer is ERANGE.
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    let Ok(len) = u32::try_from(value.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

//! Mounting a [`LayerFs`] in background threads, and unmounting it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use super::passthrough::LayerDir;
use super::{LayerFs, LayerTree, Passthrough};

/// How to mount a layer.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let every user in (`allow_other`): root and overlayfs need it when the server runs as
    /// another user, and containers run as any user.
    pub allow_other: bool,
    /// Let the kernel check permissions against the attributes (`default_permissions`).
    pub default_permissions: bool,
    /// The mount's source in `/proc/mounts`.
    pub fsname: String,
    /// The type shown as `fuse.<subtype>`.
    pub subtype: Option<String>,
    /// FUSE worker threads, each with its own `/dev/fuse` clone.
    pub threads: usize,
    /// How long the kernel may cache entries and attributes; content never changes.
    pub ttl: Duration,
    /// Record the path of every file on its first read (`--record`).
    pub recorder: Option<std::sync::Arc<super::AccessRecorder>>,
    /// Reader threads answering requests that wait on the network.
    pub readers: usize,
    /// Counts requests waiting on the network; share it with background fetches so they yield.
    pub demand: std::sync::Arc<crate::demand::Demand>,
    /// Added to every inode number but the root's: give each layer of an image its own range
    /// (say `index << 48`) so their numbers never collide under overlayfs.
    pub ino_offset: u64,
    /// The kernel's readahead window on the mount, in bytes (0: the kernel's default, 128 KiB).
    /// A wider window keeps several reads in flight, so a sequential reader has the FUSE threads
    /// fetching, verifying and decompressing chunks side by side.
    pub readahead: u32,
    /// Serve files read in full through FUSE passthrough from materialised copies (shared by
    /// the layers of one mount: one budget, one set of counters). `None`: never.
    pub passthrough: Option<std::sync::Arc<Passthrough>>,
}

impl Default for MountOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        MountOptions {
            allow_other: true,
            default_permissions: true,
            fsname: "lazypull".into(),
            subtype: Some("lazypull".into()),
            threads: cpus.clamp(2, 8),
            ttl: Duration::from_secs(3600),
            recorder: None,
            readers: 16,
            demand: std::sync::Arc::default(),
            ino_offset: 0,
            readahead: 4 << 20,
            passthrough: None,
        }
    }
}

/// Mounting or unmounting failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct MountError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl MountError {
    fn new(what: &'static str, path: &Path, source: io::Error) -> Self {
        MountError {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The underlying I/O error.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

/// A mounted layer, served by background threads. Dropping it unmounts (lazily if busy).
#[must_use = "dropping the handle unmounts the layer"]
pub struct MountHandle {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    /// The layer's materialised files, deleted once it is unmounted.
    materialised: Option<std::sync::Arc<LayerDir>>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("mountpoint", &self.mountpoint)
            .field("mounted", &self.session.is_some())
            .finish()
    }
}

/// Mount `tree` read-only at `mountpoint` and serve it from background threads until the
/// returned handle is unmounted or dropped.
pub fn mount<T: LayerTree + 'static>(
    tree: T,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<MountHandle, MountError> {
    let mut options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::FSName(opts.fsname.clone()),
    ];
    if let Some(subtype) = &opts.subtype {
        // As a kernel option: the pure-Rust mount passes only those to mount(2).
        options.push(MountOption::CUSTOM(format!("subtype={subtype}")));
    }
    if opts.default_permissions {
        options.push(MountOption::DefaultPermissions);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let mut fs = LayerFs::with_readers(
        tree,
        opts.ttl,
        opts.readers,
        std::sync::Arc::clone(&opts.demand),
    )
    .with_ino_offset(opts.ino_offset);
    if let Some(r) = &opts.recorder {
        fs = fs.with_recorder(std::sync::Arc::clone(r));
    }
    let mut materialised = None;
    if let Some(p) = &opts.passthrough {
        match p.layer_dir() {
            Ok(dir) => {
                fs = fs.with_passthrough(std::sync::Arc::clone(p), std::sync::Arc::clone(&dir));
                materialised = Some(dir);
            }
            // Passthrough only speeds reads up: serve without it.
            Err(e) => tracing::warn!("{}: no passthrough: {e}", mountpoint.display()),
        }
    }
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .map_err(|e| MountError::new("mounting", mountpoint, e))?;
    let handle = MountHandle {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        materialised,
    };
    if opts.readahead > 0 {
        if let Err(e) = set_readahead(mountpoint, opts.readahead) {
            tracing::debug!(error = %e, "cannot widen the readahead of {}", mountpoint.display());
        }
    }
    Ok(handle)
}

/// Set the readahead of the FUSE mount at `mountpoint` through its backing device in sysfs
/// (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`). FUSE's INIT offers no more than 128 KiB and,
/// once answered, clamps the window to what was negotiated, so this runs after it: the `stat`
/// of the mountpoint waits for INIT.
fn set_readahead(mountpoint: &Path, bytes: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(bdi, (bytes / 1024).to_string())
}

impl MountHandle {
    /// Where the layer is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmount and wait for the server threads to end. A busy mount (an overlay over it still
    /// letting go, a process inside) is detached instead: the kernel finishes once the last
    /// user is gone. Errs only when neither works.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> Result<(), MountError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let outcome = match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "unmount failed; detaching instead");
                unmount(&self.mountpoint)
            }
        };
        // Trusted for this mount only. A detached mount still in use keeps reading the files it
        // has open: the kernel holds them.
        if let Some(dir) = self.materialised.take() {
            dir.remove();
        }
        outcome
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            tracing::warn!(error = %e, "detaching failed");
        }
    }
}

/// Detach whatever is mounted at `path` (`umount2(MNT_DETACH)`): for mounts left behind by a
/// server that died. The kernel finishes the unmount once the last user is gone.
pub fn unmount(path: &Path) -> Result<(), MountError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        MountError::new(
            "detaching",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
        )
    })?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(MountError::new(
            "detaching",
            path,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether `path` is a mount whose FUSE server is gone ("Transport endpoint is not
/// connected"). `statfs` asks the server every time, where `stat` may be answered from
/// attributes the kernel cached while the server lived, and an overlay passes it on to its
/// lower layers, so a dead layer below an overlay counts too.
pub fn is_disconnected(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `buf` has room for one `statfs`, for the whole call.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    rc != 0
        && matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        )
}

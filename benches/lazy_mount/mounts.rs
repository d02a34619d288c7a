//! The contenders: a lazy mount served over HTTP (in this process, as `lazypull mount` does
//! it), the `lazypull mount` binary (for its resident memory), and the kernel's EROFS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazypull_fuse::cache::{CacheOptions, ChunkCache};
use lazypull_fuse::fetch::{FetchOptions, HttpBlob, RangeFetcher};
use lazypull_fuse::fs::{Passthrough, DEFAULT_BUDGET};
use lazypull_fuse::layer::{open_layer, LayerHints};
use lazypull_fuse::serve::{RangeServer, Throttle};
use lazypull_fuse::{mount, MountHandle, MountOptions};

use crate::layers::Converted;

/// Blobs served over loopback HTTP, shaped by a throttle, with a fetcher to read them.
pub struct Remote {
    pub server: RangeServer,
    pub fetcher: RangeFetcher,
}

impl Remote {
    pub fn serve(layers: &[&Converted], throttle: Throttle) -> Remote {
        let files: HashMap<String, PathBuf> = layers
            .iter()
            .map(|c| (c.desc.digest.hex(), c.blob.clone()))
            .collect();
        Remote {
            server: RangeServer::start_on(0, files, throttle).expect("starting the HTTP server"),
            fetcher: RangeFetcher::new(FetchOptions::default()).expect("a fetcher"),
        }
    }

    pub fn url(&self, c: &Converted) -> String {
        self.server.url(&c.desc.digest.hex())
    }

    /// One range GET of `len` bytes of `c`'s blob, timed: the network's share of any read.
    pub fn timed_get(&self, c: &Converted, off: u64, len: u64) -> Duration {
        let blob = HttpBlob::with_size(&self.fetcher, &self.url(c), c.desc.size).unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; len as usize];
        lazypull_fuse::converter::BlobRead::read_at(&blob, off, &mut buf).expect("range GET");
        started.elapsed()
    }
}

/// A layer mounted lazily the way `lazypull mount --no-background-fetch --no-passthrough` mounts
/// it (or, [`LazyMount::with_passthrough`], without `--no-passthrough`): opened over HTTP (TOC
/// or chunk index fetched and verified), prefetch region in, FUSE with the default options.
/// Unmounted on drop.
pub struct LazyMount {
    pub dir: PathBuf,
    handle: Option<MountHandle>,
    pub passthrough: Option<Arc<Passthrough>>,
}

impl LazyMount {
    pub fn new(remote: &Remote, c: &Converted, dir: &Path, cache_dir: &Path) -> LazyMount {
        Self::mount(remote, c, dir, cache_dir, false)
    }

    /// With passthrough of files read in full, materialised under `cache_dir` as `lazypull
    /// mount` does (the default budget, 1 GiB).
    pub fn with_passthrough(
        remote: &Remote,
        c: &Converted,
        dir: &Path,
        cache_dir: &Path,
    ) -> LazyMount {
        Self::mount(remote, c, dir, cache_dir, true)
    }

    /// Wait until `files` files are materialised for passthrough.
    pub fn wait_materialised(&self, files: u64) {
        let pass = self.passthrough.as_ref().expect("a passthrough mount");
        let deadline = Instant::now() + Duration::from_secs(300);
        while pass.stats().files < files {
            assert!(Instant::now() < deadline, "materialised {:?}", pass.stats());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn mount(
        remote: &Remote,
        c: &Converted,
        dir: &Path,
        cache_dir: &Path,
        passthrough: bool,
    ) -> LazyMount {
        std::fs::create_dir_all(dir).unwrap();
        let blob = HttpBlob::with_size(&remote.fetcher, &remote.url(c), c.desc.size).unwrap();
        let hints = LayerHints {
            name: c.desc.digest.to_string(),
            media_type: Some(c.desc.media_type.clone()),
            annotations: c.desc.annotations.clone(),
            ..LayerHints::default()
        };
        let cache = Arc::new(ChunkCache::open(CacheOptions::new(cache_dir, 10 << 30)).unwrap());
        let opened = open_layer(Arc::new(blob), &hints, Some(cache)).expect("opening the layer");
        opened.prefetch().expect("prefetching");
        let passthrough = passthrough.then(|| {
            Passthrough::new(&cache_dir.join("materialised"), DEFAULT_BUDGET)
                .expect("a passthrough directory")
        });
        let opts = MountOptions {
            passthrough: passthrough.clone(),
            ..MountOptions::default()
        };
        let handle = mount(opened.tree, dir, &opts).expect("mounting");
        LazyMount {
            dir: dir.to_path_buf(),
            handle: Some(handle),
            passthrough,
        }
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.unmount();
        }
    }
}

/// An EROFS image mounted by the kernel (`mount -t erofs -o loop,ro`). Unmounted on drop.
pub struct KernelMount {
    pub dir: PathBuf,
}

impl KernelMount {
    pub fn new(image: &Path, dir: &Path) -> KernelMount {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(image)
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "kernel mount of {}", image.display());
        KernelMount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// `lazypull mount --no-background-fetch` as its own process, to measure what it keeps
/// resident. Unmounted and reaped on drop.
pub struct ServedProcess {
    child: Child,
    lazypull: PathBuf,
    pub dir: PathBuf,
}

impl ServedProcess {
    pub fn new(lazypull: &Path, url: &str, toc: &str, dir: &Path, cache: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(lazypull)
            .args(["mount", "--no-background-fetch", "--toc-digest", toc])
            .arg("--cache-dir")
            .arg(cache)
            .arg(url)
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting lazypull mount");
        let served = ServedProcess {
            child,
            lazypull: lazypull.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !is_mounted(dir) {
            assert!(Instant::now() < deadline, "lazypull mount did not mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    /// The process's resident set (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status")
            * 1024
    }
}

impl Drop for ServedProcess {
    fn drop(&mut self) {
        let _ = Command::new(&self.lazypull)
            .arg("umount")
            .arg(&self.dir)
            .status();
        let _ = self.child.wait();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*path)))
}

/// Write back and drop the page cache, dentries and inodes: what is read next comes from the
/// filesystem's server (lazypull) or the image file on disk (the kernel's EROFS), not memory.
pub fn drop_caches() {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("writing /proc/sys/vm/drop_caches");
}

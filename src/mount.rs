//! `lazypull mount` and `lazypull umount`: serve converted layers lazily through FUSE.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazypull_converter::oci::{
    self, media, Descriptor, ImageNode, ImageRef, ImageSource, PlatformFilter,
};
use lazypull_converter::registry::RegistrySource;
use lazypull_converter::{BlobRead, Digest, FileBlob};
use lazypull_fuse::background::{BackgroundFetch, BackgroundOptions, LayerProgress};
use lazypull_fuse::cache::{CacheOptions, ChunkCache};
use lazypull_fuse::fetch::{open_http_layout, split_url_tag, FetchOptions, HttpBlob, RangeFetcher};
use lazypull_fuse::fs::{AccessRecorder, Passthrough};
use lazypull_fuse::layer::{open_layer, LayerHints, OpenedLayer, SharedBlob};
use lazypull_fuse::{mount, MountHandle, MountOptions};

/// Arguments of `lazypull mount`.
#[derive(Clone, Debug)]
pub struct MountArgs {
    pub source: String,
    pub mountpoint: PathBuf,
    /// Only this layer of an image (`sha256:…`).
    pub layer: Option<String>,
    /// The platform of a multi-platform image (default: the first manifest).
    pub platform: Option<String>,
    pub toc_digest: Option<String>,
    pub insecure_skip_verify: bool,
    pub cache_dir: Option<PathBuf>,
    pub cache_size: u64,
    /// Bound on the chunk bytes the cache keeps in memory.
    pub cache_memory_size: u64,
    /// Write the paths of files as they are first read here (a prefetch list).
    pub record: Option<PathBuf>,
    /// Fetch every remaining chunk in the background after mounting.
    pub background_fetch: bool,
    /// Bytes per second the background fetch may use (0: no limit).
    pub background_rate: u64,
    /// Per-request timeout of HTTP range reads; a read fails with EIO after the retries.
    pub fetch_timeout: Duration,
    /// Retries of a failed HTTP range read.
    pub fetch_retries: u32,
    /// Bytes fetched after a small eStargz read that misses, for the reads that follow.
    pub readahead: u64,
    /// Serve files read in full through FUSE passthrough (materialised beside the cache).
    pub passthrough: bool,
    /// Bound on the bytes materialised for passthrough.
    pub passthrough_size: u64,
    /// Passthrough for an image of several layers too, although the merged mount is then at the
    /// kernel's stacking limit (no overlayfs can take it as a lower layer).
    pub stacked_passthrough: bool,
    /// How a registry SOURCE is reached.
    pub registry: crate::RegistryArgs,
    /// Fetch each layer's prefetch region before serving it.
    pub prefetch: bool,
    /// Where the statistics are kept while mounted (default: `CACHE_DIR/stats.json`).
    pub stats_file: Option<PathBuf>,
}

/// One layer to serve.
pub(crate) struct LayerToMount {
    pub(crate) blob: SharedBlob,
    pub(crate) hints: LayerHints,
}

/// Where the layers of an image of several layers are mounted, beside `mountpoint`.
fn staging_dir(mountpoint: &Path) -> PathBuf {
    mountpoint.with_file_name(format!(
        ".{}.lazypull-layers",
        mountpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
}

/// Layers mounted, and stacked by overlayfs when there are several.
pub(crate) struct MountedImage {
    handles: Vec<MountHandle>,
    overlay: Option<PathBuf>,
    staging: PathBuf,
    /// The whole-layer fetches to run in the background, one per layer.
    pub(crate) backgrounds: Vec<(BackgroundFetch, Arc<LayerProgress>)>,
    /// What each layer's prefetch and background fetch did, bottom layer first.
    pub(crate) progress: Vec<Arc<LayerProgress>>,
}

/// Open every layer (prefetching its region), mount each, and stack them read-only at
/// `mountpoint`; a single layer is mounted there directly.
pub(crate) fn mount_image(
    layers: Vec<LayerToMount>,
    mountpoint: &Path,
    cache: &Arc<ChunkCache>,
    opts: &MountOptions,
    with_prefetch: bool,
) -> Result<MountedImage> {
    let staging = staging_dir(mountpoint);
    let mut image = MountedImage {
        handles: Vec::new(),
        overlay: None,
        staging,
        backgrounds: Vec::new(),
        progress: Vec::new(),
    };
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("creating {}", mountpoint.display()))?;
    let single = layers.len() == 1;
    // Open and prefetch the layers at once: their metadata and prefetch regions are fetched
    // in parallel, not one round trip after another.
    let opened: Vec<Result<(OpenedLayer, Arc<LayerProgress>)>> = std::thread::scope(|s| {
        let tasks: Vec<_> = layers
            .into_iter()
            .map(|l| {
                s.spawn(move || {
                    let opened = open_layer(l.blob, &l.hints, Some(Arc::clone(cache)))?;
                    let progress = Arc::new(LayerProgress::new(&l.hints.name));
                    if with_prefetch {
                        prefetch(&opened, &progress);
                    }
                    Ok((opened, progress))
                })
            })
            .collect();
        tasks
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| bail!("opening a layer panicked"))
            })
            .collect()
    });
    let mut lower = Vec::new();
    for (i, opened) in opened.into_iter().enumerate() {
        let (opened, progress) = opened?;
        let dir = if single {
            mountpoint.to_path_buf()
        } else {
            image.staging.join(i.to_string())
        };
        clear_stale_mount(&dir);
        std::fs::create_dir_all(&dir)?;
        if let Some(fetch) = opened.background_fetch() {
            progress.chunks.store(fetch.chunks, Ordering::Relaxed);
            image.backgrounds.push((fetch, Arc::clone(&progress)));
        }
        image.progress.push(progress);
        // Each layer its own inode range: overlayfs shows lower inode numbers as they are, and
        // a container's overlay on top of ours would then see two files as one.
        let layer_opts = MountOptions {
            ino_offset: (i as u64) << 48,
            ..opts.clone()
        };
        image.handles.push(mount(opened.tree, &dir, &layer_opts)?);
        lower.push(dir.display().to_string());
    }
    if !single {
        // overlayfs takes the top layer first.
        lower.reverse();
        mount_overlay(mountpoint, &format!("lowerdir={}", lower.join(":")))?;
        image.overlay = Some(mountpoint.to_path_buf());
    }
    Ok(image)
}

impl MountedImage {
    /// Unmount the overlay (unless already gone) and every layer.
    pub(crate) fn unmount(self) {
        if let Some(path) = self.overlay.filter(|p| is_mountpoint(p)) {
            let _ = umount(&path);
        }
        for h in self.handles {
            let _ = h.unmount();
        }
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// `lazypull mount SOURCE MOUNTPOINT`: mount, serve until Ctrl-C, SIGTERM or `lazypull umount`,
/// then unmount and print the cache statistics.
pub fn run_mount(args: MountArgs) -> Result<()> {
    bound_transient_heap();
    let trusted = args
        .toc_digest
        .as_deref()
        .map(str::parse::<Digest>)
        .transpose()?;
    let remote = ["http://", "https://", "oci:http://", "oci:https://"];
    let fetcher =
        if remote.iter().any(|p| args.source.starts_with(p)) || is_registry_source(&args.source) {
            Some(RangeFetcher::new(FetchOptions {
                timeout: args.fetch_timeout,
                retries: args.fetch_retries,
                accept_invalid_certs: args.registry.insecure,
                ..FetchOptions::default()
            })?)
        } else {
            None
        };
    let layers = resolve_source(&args, trusted, fetcher.as_ref())?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let cache = Arc::new(
        ChunkCache::open(CacheOptions {
            memory_bytes: args.cache_memory_size,
            ..CacheOptions::new(&cache_dir, args.cache_size)
        })
        .with_context(|| format!("opening the chunk cache {}", cache_dir.display()))?,
    );
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("creating {}", args.mountpoint.display()))?;
    // A mount left by a crashed server answers ENOTCONN: clear it before mounting again.
    clear_stale_mount(&args.mountpoint);

    let mut opts = MountOptions::default();
    // A passthrough open hands the file to the kernel, whose reads a recording would miss.
    let passthrough = if args.passthrough && args.record.is_some() {
        tracing::info!("recording reads: no passthrough");
        None
    } else if args.passthrough {
        // Also when it will not be used below: this removes what dead mounts left.
        Passthrough::new(&cache_dir.join("materialised"), args.passthrough_size)
            .map_err(|e| tracing::warn!("serving without passthrough: {e}"))
            .ok()
    } else {
        None
    };
    // FUSE with passthrough is one stacking level deep; our overlay on top makes two, the
    // kernel's limit, and a container's overlay on that would fail to mount.
    if layers.len() == 1 || args.stacked_passthrough {
        opts.passthrough = passthrough.clone();
    } else if passthrough.is_some() {
        tracing::info!(
            "{} layers stacked by overlayfs: no passthrough (--stacked-passthrough)",
            layers.len()
        );
    }
    if let Some(path) = &args.record {
        let recorder = AccessRecorder::create(path)
            .with_context(|| format!("creating the record file {}", path.display()))?;
        opts.recorder = Some(Arc::new(recorder));
    }
    let mut image = mount_image(layers, &args.mountpoint, &cache, &opts, args.prefetch)?;
    release_freed_heap();
    let backgrounds = std::mem::take(&mut image.backgrounds);
    let progress = std::mem::take(&mut image.progress);
    eprintln!(
        "lazypull: serving {} at {} (Ctrl-C or `lazypull umount {}` to stop)",
        args.source,
        args.mountpoint.display(),
        args.mountpoint.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = if args.background_fetch {
        let bg = BackgroundOptions {
            rate: args.background_rate,
            ..BackgroundOptions::default()
        };
        backgrounds
            .into_iter()
            .map(|(fetch, progress)| {
                let (stop, demand) = (Arc::clone(&stop), Arc::clone(&opts.demand));
                std::thread::spawn(move || {
                    if fetch.run(bg, &demand, &stop, &progress) {
                        tracing::info!(layer = progress.name, "background fetch done");
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let usr1 = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
        .context("installing the SIGUSR1 handler")?;
    let stats_file = args
        .stats_file
        .clone()
        .unwrap_or_else(|| cache_dir.join("stats.json"));
    let report = |final_report: bool| -> String {
        let json = stats_json(
            &args,
            &cache,
            fetcher.as_ref(),
            opts.passthrough.as_deref(),
            &progress,
            final_report,
        );
        // Written beside the cache, replaced atomically, for monitoring while mounted.
        let tmp = stats_file.with_extension("json.tmp");
        if std::fs::write(&tmp, &json)
            .and_then(|_| std::fs::rename(&tmp, &stats_file))
            .is_err()
        {
            tracing::warn!("cannot write {}", stats_file.display());
        }
        json
    };
    let mut last_stats = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the signal handler")?;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(()) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                save_record(&opts);
                // `lazypull umount` (or a plain umount) took the mount away: stop serving.
                if !is_mountpoint(&args.mountpoint) {
                    break;
                }
                if usr1.swap(false, Ordering::Relaxed) {
                    eprintln!("{}", report(false));
                    last_stats = Instant::now();
                } else if last_stats.elapsed() > Duration::from_secs(5) {
                    report(false);
                    last_stats = Instant::now();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    image.unmount();
    save_record(&opts);
    eprintln!("lazypull: unmounted {}", args.mountpoint.display());
    eprintln!("{}", report(true));
    Ok(())
}

/// Bring the `--record` file up to date, if recording.
fn save_record(opts: &MountOptions) {
    if let Some(r) = &opts.recorder {
        if let Err(e) = r.save() {
            tracing::warn!("writing the record file: {e}");
        }
    }
}

/// Opening a layer parses its whole TOC (tens of MB for 100k entries) and keeps only compact
/// tables; a mount then serves for hours. Left to itself glibc keeps the freed TOC resident:
/// its mmap threshold grows past the TOC's buffers, which then land in heaps (a fetcher
/// thread's among them) that `malloc_trim` does not shrink. A fixed threshold keeps such
/// buffers in their own mappings, returned when freed.
fn bound_transient_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Give the heap pages freed while opening the layers back to the system.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bring a layer's prefetch region in before serving it; a failure only costs the head start.
fn prefetch(layer: &OpenedLayer, progress: &LayerProgress) {
    let name = &progress.name;
    match layer.prefetch() {
        Ok(s) if s.chunks > 0 => {
            progress.prefetch_bytes.store(s.bytes, Ordering::Relaxed);
            progress.prefetch_chunks.store(s.chunks, Ordering::Relaxed);
            eprintln!(
                "lazypull: prefetched {} chunks ({} bytes, one request) of {name}",
                s.chunks, s.bytes
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("{name}: prefetch failed, reads will fetch on demand: {e}"),
    }
}

/// The statistics report: what was fetched, from where, how the cache did, and where each
/// layer's prefetch and background fetch are.
fn stats_json(
    args: &MountArgs,
    cache: &ChunkCache,
    fetcher: Option<&RangeFetcher>,
    passthrough: Option<&Passthrough>,
    layers: &[Arc<LayerProgress>],
    unmounted: bool,
) -> String {
    let c = cache.stats();
    let fetch = fetcher.map(|f| {
        let s = f.stats();
        serde_json::json!({
            "requests": s.requests, "bytes": s.bytes, "retries": s.retries, "failures": s.failures,
        })
    });
    let passthrough = passthrough.map(|p| {
        let s = p.stats();
        serde_json::json!({
            "opens": s.opens, "files": s.files, "bytes": s.bytes, "budget": s.budget,
            "overBudget": s.over_budget, "leftoversRemoved": s.leftovers_removed,
            "refused": s.refused,
        })
    });
    serde_json::json!({
        "source": args.source,
        "mountpoint": args.mountpoint,
        "unmounted": unmounted,
        "fetch": fetch,
        "cache": {
            "memoryHits": c.memory_hits, "diskHits": c.disk_hits, "misses": c.misses,
            "fetches": c.fetches, "fetchWaits": c.fetch_waits, "inserts": c.inserts,
            "evictions": c.evictions,
            "verificationFailures": c.corrupt_dropped + c.fetched_mismatches,
            "corruptDropped": c.corrupt_dropped, "fetchedMismatches": c.fetched_mismatches,
            "refetches": c.refetches,
            "readErrors": c.read_errors, "writeErrors": c.write_errors,
            "bytesOnDisk": c.bytes_on_disk, "entries": c.entries,
        },
        "passthrough": passthrough,
        "layers": layers.iter().map(|l| l.to_json()).collect::<Vec<_>>(),
    })
    .to_string()
}

/// `lazypull umount MOUNTPOINT`.
pub fn run_umount(mountpoint: &Path) -> Result<()> {
    if !is_mountpoint(mountpoint) {
        bail!("{} is not mounted", mountpoint.display());
    }
    umount(mountpoint).or_else(|_| {
        lazypull_fuse::fs::unmount(mountpoint)
            .with_context(|| format!("unmounting {}", mountpoint.display()))
    })?;
    // A live server unmounts its layers itself once the overlay is gone; the layers of a dead
    // one are left to us.
    let staging = staging_dir(mountpoint);
    if let Ok(dirs) = std::fs::read_dir(&staging) {
        for dir in dirs.flatten() {
            if clear_stale_mount(&dir.path()) {
                let _ = std::fs::remove_dir(dir.path());
            }
        }
        // Only when empty: a live server still uses its directories until it has unmounted.
        let _ = std::fs::remove_dir(&staging);
    }
    Ok(())
}

fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("lazypull");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("lazypull"),
        None => PathBuf::from("/var/cache/lazypull"),
    }
}

/// Whether SOURCE names an image in a registry (and not a file that happens to look like one).
fn is_registry_source(source: &str) -> bool {
    !Path::new(source).exists()
        && matches!(source.parse::<ImageRef>(), Ok(ImageRef::Registry { .. }))
}

/// The layers SOURCE names: a blob file or URL, or the image of an OCI layout (local or on an
/// HTTP server) or of a registry (one layer with `--layer`). Registry layers are read by range
/// requests through `fetcher`, with the registry's authentication.
fn resolve_source(
    args: &MountArgs,
    trusted: Option<Digest>,
    fetcher: Option<&RangeFetcher>,
) -> Result<Vec<LayerToMount>> {
    let registry = is_registry_source(&args.source);
    if !args.source.starts_with("oci:") && !registry {
        let blob: SharedBlob = match fetcher {
            Some(f) => Arc::new(HttpBlob::open(f, &args.source)?),
            None => Arc::new(FileBlob::open(&PathBuf::from(&args.source))?),
        };
        return Ok(vec![LayerToMount {
            blob,
            hints: LayerHints {
                name: args.source.clone(),
                trusted_digest: trusted,
                insecure_skip_verify: args.insecure_skip_verify,
                readahead: args.readahead,
                ..LayerHints::default()
            },
        }]);
    }
    let (source, remote): (Arc<dyn ImageSource>, Option<Arc<RegistrySource>>) =
        match (args.source.strip_prefix("oci:"), fetcher) {
            // An image layout on a plain HTTP server.
            (Some(rest), Some(fetcher)) if rest.starts_with("http") => {
                let (url, tag) = split_url_tag(rest);
                let layout = open_http_layout(fetcher, url, tag.map(String::from))?;
                (Arc::new(layout), None)
            }
            _ => match args.source.parse::<ImageRef>()? {
                ImageRef::Registry { reference } => {
                    let s = Arc::new(RegistrySource::open(
                        &reference.parse()?,
                        &args.registry.options()?,
                    )?);
                    (s.clone(), Some(s))
                }
                r => (Arc::from(oci::open_source(&r)?), None),
            },
        };
    let root = source.root()?;
    let manifest = match ImageNode::read(source.as_ref(), &root)? {
        ImageNode::Manifest(m) => m,
        ImageNode::Index(index) => {
            let filter: Option<PlatformFilter> =
                args.platform.as_deref().map(str::parse).transpose()?;
            let desc: &Descriptor = index
                .descriptors
                .iter()
                .filter(|d| media::is_manifest(&d.media_type) && !d.is_attestation())
                .find(|d| match &filter {
                    Some(f) => d.platform.as_ref().is_some_and(|p| f.matches(p)),
                    None => true,
                })
                .context("no manifest in the index matches")?;
            match ImageNode::read(source.as_ref(), desc)? {
                ImageNode::Manifest(m) => m,
                ImageNode::Index(_) => bail!("nested indexes are not supported"),
            }
        }
    };
    let wanted = args
        .layer
        .as_deref()
        .map(str::parse::<Digest>)
        .transpose()?;
    let mut out = Vec::new();
    for l in &manifest.layers {
        if wanted.is_some_and(|w| w != l.digest) {
            continue;
        }
        let blob: SharedBlob = match (&remote, fetcher) {
            (Some(reg), Some(f)) => {
                let (client, url) = reg.blob_location(&l.digest);
                Arc::new(HttpBlob::with_auth(f, url.as_str(), l.size, client)?)
            }
            _ => Arc::from(source.blob(l)?),
        };
        if blob.len() != l.size {
            bail!("layer {}: blob size differs from its descriptor", l.digest);
        }
        out.push(LayerToMount {
            blob,
            hints: LayerHints {
                name: l.digest.to_string(),
                media_type: Some(l.media_type.clone()),
                annotations: l.annotations.clone(),
                trusted_digest: if wanted.is_some() { trusted } else { None },
                insecure_skip_verify: args.insecure_skip_verify,
                readahead: args.readahead,
            },
        });
    }
    if out.is_empty() {
        bail!("{}: no layer matches {:?}", args.source, args.layer);
    }
    Ok(out)
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        // A dead FUSE mount fails to stat: it is still in the mount table.
        return std::fs::read_to_string("/proc/self/mounts")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == path.to_str()));
    };
    let target = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(1) == Some(target.as_str()))
    })
}

/// Detach a mount at `path` left by a server that died (`kill -9`, a crash, OOM); whether
/// there was one.
fn clear_stale_mount(path: &Path) -> bool {
    let stale = is_mountpoint(path) && lazypull_fuse::fs::is_disconnected(path);
    if stale {
        tracing::warn!("{}: clearing a stale mount", path.display());
        let _ = lazypull_fuse::fs::unmount(path);
    }
    stale
}

fn mount_overlay(target: &Path, data: &str) -> Result<()> {
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,{data}"))
        .arg(target)
        .status()
        .context("running mount -t overlay")?;
    if !status.success() {
        bail!("mount -t overlay {} failed ({status})", target.display());
    }
    Ok(())
}

fn umount(path: &Path) -> Result<()> {
    let status = std::process::Command::new("umount")
        .arg(path)
        .status()
        .context("running umount")?;
    if !status.success() {
        bail!("umount {} failed ({status})", path.display());
    }
    Ok(())
}

//! Remote layers: which Prepare asks for one, whether the layer can be served lazily, and the
//! FUSE server that serves it.
//!
//! A layer is lazy when its descriptor is eStargz (a TOC digest annotation) or EROFS (an EROFS
//! media type or chunk-index annotation). Each lazy layer is served by its own `lazypull mount`
//! process, started in its own process group and never stopped by the snapshotter's exit: the
//! gRPC process can restart while containers keep reading their layers. A layer whose server is
//! gone (a reboot, a crash) is mounted again when a snapshot over it is next mounted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lazypull_fuse::converter::erofs::format as erofs_format;
use lazypull_fuse::converter::estargz::format as estargz_format;
use lazypull_fuse::converter::oci::{media, Descriptor, ImageNode, ImageSource};
use lazypull_fuse::converter::registry::{Credentials, Reference, RegistryOptions, RegistrySource};
use lazypull_fuse::converter::Digest;

use crate::config::Config;
use crate::store::{RemoteFormat, RemoteLayer};

/// The name the committed snapshot of a remote layer gets (its chain ID).
pub const LABEL_TARGET_REF: &str = "containerd.io/snapshot.ref";
/// CRI's labels: the image, the layer and the manifest it belongs to.
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const LABEL_CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The labels of stargz-snapshotter's `ctr-remote images rpull`.
pub const LABEL_STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
pub const LABEL_STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
/// Set on the committed snapshot of a layer served lazily (stargz-snapshotter sets the same).
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";

/// What a Prepare names when it asks for a remote snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRequest {
    /// The committed snapshot to create (`containerd.io/snapshot.ref`).
    pub target: String,
    /// The image, as the client named it.
    pub image: String,
    /// The layer's digest.
    pub layer: Digest,
    /// The manifest holding the layer, when the client said (CRI does).
    pub manifest: Option<Digest>,
}

impl RemoteRequest {
    /// The request in Prepare's labels, if they ask for a remote snapshot and name the layer.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        let target = labels.get(LABEL_TARGET_REF)?;
        let (image, layer) = match (
            labels.get(LABEL_CRI_IMAGE_REF),
            labels.get(LABEL_CRI_LAYER_DIGEST),
        ) {
            (Some(i), Some(l)) => (i, l),
            _ => (
                labels.get(LABEL_STARGZ_REFERENCE)?,
                labels.get(LABEL_STARGZ_DIGEST)?,
            ),
        };
        Some(RemoteRequest {
            target: target.clone(),
            image: image.clone(),
            layer: layer.parse().ok()?,
            manifest: labels
                .get(LABEL_CRI_MANIFEST_DIGEST)
                .and_then(|d| d.parse().ok()),
        })
    }
}

/// Why a remote snapshot became a plain one; the metrics count each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FallbackReason {
    /// The layer is neither eStargz nor EROFS.
    NotLazy,
    /// The image or its manifest could not be read.
    Resolve,
    /// The layer server failed or did not mount in time.
    Mount,
    /// An EROFS layer did not mount lazily. Not served as a plain snapshot either: containerd
    /// cannot apply a layer that is not a tar, so Prepare fails with the reason instead.
    ErofsMount,
}

impl FallbackReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::NotLazy => "not_lazy",
            FallbackReason::Resolve => "resolve",
            FallbackReason::Mount => "mount",
            FallbackReason::ErofsMount => "erofs_mount",
        }
    }
}

/// A fallback with its reason and what happened.
#[derive(Debug)]
pub struct Fallback {
    pub reason: FallbackReason,
    pub why: String,
}

impl Fallback {
    pub fn new(reason: FallbackReason, why: impl Into<String>) -> Self {
        Fallback {
            reason,
            why: why.into(),
        }
    }
}

/// The registry options of the configuration.
pub fn registry_options(config: &Config) -> Result<RegistryOptions, String> {
    Ok(RegistryOptions {
        creds: config
            .registry
            .creds
            .as_deref()
            .map(Credentials::parse)
            .transpose()
            .map_err(|e| e.to_string())?,
        plain_http: config.registry.plain_http,
        insecure: config.registry.insecure,
        mirrors: config.registry.mirrors.clone(),
        ..RegistryOptions::default()
    })
}

/// Find the layer's descriptor in the registry and decide whether it is served lazily; blocks
/// on the registry (call it off the async runtime).
pub fn resolve(req: &RemoteRequest, opts: &RegistryOptions) -> Result<RemoteLayer, Fallback> {
    let resolve_err =
        |e: &dyn std::fmt::Display| Fallback::new(FallbackReason::Resolve, e.to_string());
    let mut reference: Reference = req.image.parse().map_err(|e| resolve_err(&e))?;
    if let Some(m) = req.manifest {
        reference.digest = Some(m);
        reference.tag = None;
    }
    let source = RegistrySource::open(&reference, opts).map_err(|e| resolve_err(&e))?;
    let root = source.root().map_err(|e| resolve_err(&e))?;
    let found = match ImageNode::read(&source, &root).map_err(|e| resolve_err(&e))? {
        ImageNode::Manifest(m) => Some((root.digest, m)),
        ImageNode::Index(index) => index
            .descriptors
            .iter()
            .filter(|d| media::is_manifest(&d.media_type) && !d.is_attestation())
            .find_map(|d| match ImageNode::read(&source, d) {
                Ok(ImageNode::Manifest(m)) if m.layers.iter().any(|l| l.digest == req.layer) => {
                    Some((d.digest, m))
                }
                _ => None,
            }),
    };
    let Some((manifest, m)) = found else {
        return Err(Fallback::new(
            FallbackReason::Resolve,
            format!("no manifest of {} has layer {}", req.image, req.layer),
        ));
    };
    let desc = m
        .layers
        .iter()
        .find(|l| l.digest == req.layer)
        .ok_or_else(|| {
            Fallback::new(
                FallbackReason::Resolve,
                format!("manifest {manifest} lacks the layer"),
            )
        })?;
    let format = layer_format(desc)?;
    let a = &desc.annotations;
    let pinned = Reference {
        digest: Some(manifest),
        tag: None,
        ..reference
    };
    Ok(RemoteLayer {
        image: pinned.to_string(),
        layer: req.layer,
        format,
        size: desc.size,
        uncompressed_size: a
            .get(estargz_format::ANNOTATION_UNCOMPRESSED_SIZE)
            .and_then(|s| s.parse().ok()),
    })
}

/// How a layer descriptor is served lazily: eStargz by its TOC annotation, EROFS by either
/// family of EROFS media types or its chunk-index annotation.
pub fn layer_format(desc: &Descriptor) -> Result<RemoteFormat, Fallback> {
    let a = &desc.annotations;
    if a.contains_key(estargz_format::ANNOTATION_TOC_DIGEST) {
        Ok(RemoteFormat::Estargz)
    } else if erofs_format::ErofsFraming::of_media_type(&desc.media_type).is_some()
        || a.contains_key(erofs_format::ANNOTATION_CHUNK_INDEX_RANGE)
        || a.contains_key(erofs_format::ANNOTATION_LAZYPULL_CHUNK_INDEX_RANGE)
    {
        Ok(RemoteFormat::Erofs)
    } else {
        Err(Fallback::new(
            FallbackReason::NotLazy,
            format!("{} is neither eStargz nor EROFS", desc.media_type),
        ))
    }
}

/// Starts and stops the `lazypull mount` processes of remote layers.
#[derive(Clone, Debug)]
pub struct Mounter {
    program: PathBuf,
    config: Config,
}

impl Mounter {
    pub fn new(config: &Config) -> std::io::Result<Self> {
        let program = match &config.mount_program {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        Ok(Mounter {
            program,
            config: config.clone(),
        })
    }

    /// The command serving `layer` at `mountpoint`, its statistics written to `stats`.
    fn command(
        &self,
        layer: &RemoteLayer,
        mountpoint: &Path,
        stats: &Path,
    ) -> std::process::Command {
        let c = &self.config;
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg("--log")
            .arg("info")
            .arg("mount")
            .arg(&layer.image)
            .arg(mountpoint)
            .arg("--layer")
            .arg(layer.layer.to_string())
            .arg("--cache-dir")
            .arg(c.cache_dir())
            .arg("--cache-size")
            .arg(c.cache.size.to_string())
            .arg("--stats-file")
            .arg(stats)
            .arg("--fetch-timeout")
            .arg(c.fetch.timeout_secs.to_string())
            .arg("--fetch-retries")
            .arg(c.fetch.retries.to_string())
            .arg("--background-rate")
            .arg(c.fetch.background_rate.to_string());
        if !c.fetch.background {
            cmd.arg("--no-background-fetch");
        }
        if !c.fetch.prefetch {
            cmd.arg("--no-prefetch");
        }
        if c.registry.plain_http {
            cmd.arg("--plain-http");
        }
        if c.registry.insecure {
            cmd.arg("--insecure");
        }
        for m in &c.registry.mirrors {
            cmd.arg("--mirror").arg(m);
        }
        if let Some(creds) = &c.registry.creds {
            // Through the environment, not the command line every user can read.
            cmd.env("LAZYPULL_CREDS", creds);
        }
        cmd
    }

    /// Serve `layer` at `mountpoint` from a new, detached process; returns once it is mounted.
    /// The process's output goes to `log`.
    pub async fn mount(
        &self,
        layer: &RemoteLayer,
        mountpoint: &Path,
        stats: &Path,
        log: &Path,
    ) -> Result<(), String> {
        clear_stale(mountpoint);
        if is_mounted(mountpoint) {
            return Ok(());
        }
        std::fs::create_dir_all(mountpoint)
            .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::from(self.command(layer, mountpoint, stats));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Its own process group: a Ctrl-C or SIGTERM to the snapshotter's group leaves the
            // layer served.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.program.display()))?;
        let deadline = Instant::now() + Duration::from_secs(self.config.fetch.mount_timeout_secs);
        loop {
            if is_mounted(mountpoint) {
                let name = layer.layer.to_string();
                // Reap it when it ends (its mount was taken away), so no zombie is left.
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(s) => tracing::info!(layer = name, "layer server exited ({s})"),
                        Err(e) => tracing::warn!(layer = name, "layer server: {e}"),
                    }
                });
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the layer server exited ({status}): {}",
                    log_tail(log)
                ));
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!(
                    "not mounted after {} s: {}",
                    self.config.fetch.mount_timeout_secs,
                    log_tail(log)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The last line of a layer server's log that says something.
fn log_tail(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(String::from)
        })
        .unwrap_or_else(|| "no output".into())
}

/// Whether something is mounted at `path` (per `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    let Some(want) = path.to_str() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(want))
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Detach a mount whose server is gone (it answers ENOTCONN; a `stat` would not tell, the
/// kernel caches the root's attributes for an hour).
pub fn clear_stale(path: &Path) {
    if is_mounted(path) && lazypull_fuse::fs::is_disconnected(path) {
        tracing::warn!("{}: clearing a stale layer mount", path.display());
        let _ = lazypull_fuse::fs::unmount(path);
    }
}

/// Take a remote layer's mount away; its server notices and exits.
pub fn unmount(path: &Path) -> Result<(), String> {
    if !is_mounted(path) {
        return Ok(());
    }
    lazypull_fuse::fs::unmount(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::labels;

    const L: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const M: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn erofs_layers_are_recognised_under_either_media_type() {
        let layer = |media_type: &str| -> Descriptor {
            serde_json::from_value(serde_json::json!({
                "mediaType": media_type, "digest": L, "size": 1,
            }))
            .unwrap()
        };
        for mt in [
            "application/vnd.oci.image.layer.v1.erofs+zstd",
            "application/vnd.oci.image.layer.v1.erofs",
            "application/vnd.erofs+zstd",
            "application/vnd.erofs",
        ] {
            assert_eq!(
                layer_format(&layer(mt)).unwrap(),
                RemoteFormat::Erofs,
                "{mt}"
            );
        }
        let plain = layer_format(&layer("application/vnd.oci.image.layer.v1.tar+gzip"));
        assert_eq!(plain.unwrap_err().reason, FallbackReason::NotLazy);
    }

    #[test]
    fn remote_requests_come_from_cri_or_stargz_labels() {
        let cri = labels(&[
            (LABEL_TARGET_REF, "sha256:chain"),
            (LABEL_CRI_IMAGE_REF, "127.0.0.1:5000/a:1"),
            (LABEL_CRI_LAYER_DIGEST, L),
            (LABEL_CRI_MANIFEST_DIGEST, M),
        ]);
        let r = RemoteRequest::from_labels(&cri).unwrap();
        assert_eq!(r.target, "sha256:chain");
        assert_eq!(r.layer.to_string(), L);
        assert_eq!(r.manifest.map(|m| m.to_string()).as_deref(), Some(M));
        let stargz = labels(&[
            (LABEL_TARGET_REF, "sha256:chain"),
            (LABEL_STARGZ_REFERENCE, "127.0.0.1:5000/a:esgz"),
            (LABEL_STARGZ_DIGEST, L),
        ]);
        let r = RemoteRequest::from_labels(&stargz).unwrap();
        assert_eq!(
            (r.image.as_str(), r.manifest),
            ("127.0.0.1:5000/a:esgz", None)
        );
        // No target, or no layer: a plain Prepare.
        assert!(RemoteRequest::from_labels(&labels(&[(LABEL_STARGZ_DIGEST, L)])).is_none());
        assert!(RemoteRequest::from_labels(&labels(&[(LABEL_TARGET_REF, "x")])).is_none());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/proc/self")));
    }
}

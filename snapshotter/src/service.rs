//! The snapshots gRPC service: containerd's requests turned into store transactions, snapshot
//! directories and mounts.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::mounts::{mounts, Layout};
use crate::proto::snapshots_server::Snapshots;
use crate::proto::{self as pb, Mount};
use crate::remote::{self, Fallback, FallbackReason, Mounter, RemoteRequest};
use crate::store::{Kind, RemoteFormat, Snapshot, SnapshotId, Store};

/// Infos per `ListSnapshotsResponse` message.
const LIST_CHUNK: usize = 100;

/// The snapshotter: store, directories, remote layers and metrics.
pub struct Service {
    store: Store,
    layout: Layout,
    mounter: Mounter,
    config: Config,
    metrics: Arc<Metrics>,
    /// One remote Prepare at a time: two pulls sharing a layer mount it once.
    remote_lock: tokio::sync::Mutex<()>,
}

impl Service {
    /// Open the store under the configured root (created if missing).
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Self> {
        let layout = Layout::new(&config.root);
        std::fs::create_dir_all(layout.snapshots())
            .map_err(|e| Error::io("creating", layout.snapshots(), e))?;
        let store = Store::open(&config.root.join("metadata.redb"))?;
        let mounter =
            Mounter::new(config).map_err(|e| Error::io("finding", "the executable", e))?;
        Ok(Service {
            store,
            layout,
            mounter,
            config: config.clone(),
            metrics,
            remote_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The store, for inspection.
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<Mount>> {
        tracing::debug!(key, parent, ?labels, ?kind, "prepare");
        let parent = (!parent.is_empty()).then_some(parent);
        if kind == Kind::Active {
            if let Some(req) = RemoteRequest::from_labels(&labels) {
                match self.prepare_remote(&req, parent, &labels).await {
                    Ok(()) => return Err(Error::AlreadyExists(req.target)),
                    Err(RemoteOutcome::Error(e)) => return Err(e),
                    Err(RemoteOutcome::Fallback(f)) => {
                        // containerd cannot unpack an EROFS layer: no plain snapshot to give.
                        let fatal = f.reason == FallbackReason::ErofsMount;
                        tracing::warn!(
                            layer = %req.layer,
                            image = req.image,
                            reason = f.reason.as_str(),
                            "{}: {}",
                            if fatal {
                                "failing Prepare"
                            } else {
                                "not mounting lazily, containerd unpacks the layer"
                            },
                            f.why
                        );
                        self.metrics.fallback(f.reason);
                        if fatal {
                            return Err(Error::Remote {
                                layer: req.layer.to_string(),
                                why: f.why,
                            });
                        }
                    }
                }
            }
        }
        let id = self.store.allocate_id()?;
        let (fs, work) = (self.layout.fs(id), self.layout.work(id));
        let made = std::fs::create_dir_all(&fs)
            .and_then(|()| match kind {
                Kind::Active => std::fs::create_dir_all(&work),
                _ => Ok(()),
            })
            .map_err(|e| Error::io("creating", &fs, e));
        let created = made.and_then(|()| self.store.create(id, key, parent, kind, labels, None));
        if let Err(e) = created {
            let _ = std::fs::remove_dir_all(self.layout.dir(id));
            return Err(e);
        }
        self.mounts(key).await
    }

    /// Mount the layer `req` names lazily and commit it under its target name.
    async fn prepare_remote(
        &self,
        req: &RemoteRequest,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RemoteOutcome> {
        let _one = self.remote_lock.lock().await;
        if self.store.get(&req.target).is_ok() {
            return Ok(());
        }
        if let Some(p) = parent {
            // Mounting is wasted if the parent is wrong: say so now, as a plain Prepare would.
            let s = self.store.get(p)?;
            if s.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!("parent {p} is not committed")).into());
            }
        }
        let opts = remote::registry_options(&self.config)
            .map_err(|why| Fallback::new(FallbackReason::Resolve, why))?;
        let r = req.clone();
        let layer = tokio::task::spawn_blocking(move || remote::resolve(&r, &opts))
            .await
            .map_err(|e| Fallback::new(FallbackReason::Resolve, e.to_string()))??;
        let id = self.store.allocate_id()?;
        let dir = self.layout.dir(id);
        let fs = self.layout.fs(id);
        std::fs::create_dir_all(&fs).map_err(|e| Error::io("creating", &fs, e))?;
        if let Err(why) = self
            .mounter
            .mount(&layer, &fs, &dir.join("stats.json"), &dir.join("mount.log"))
            .await
        {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(match layer.format {
                RemoteFormat::Erofs => Fallback::new(
                    FallbackReason::ErofsMount,
                    format!(
                        "an EROFS layer of {} that did not mount lazily ({why}); containerd \
                         cannot unpack an EROFS layer (it is not a tar), so the snapshot cannot \
                         be made. Check the snapshotter's access to the registry and /dev/fuse",
                        req.image
                    ),
                ),
                RemoteFormat::Estargz => Fallback::new(FallbackReason::Mount, why),
            }
            .into());
        }
        let mut labels = labels.clone();
        labels.insert(remote::LABEL_REMOTE.into(), "remote snapshot".into());
        let format = layer.format.as_str();
        if let Err(e) = self.store.create(
            id,
            &req.target,
            parent,
            Kind::Committed,
            labels,
            Some(layer),
        ) {
            let _ = remote::unmount(&fs);
            let _ = std::fs::remove_dir_all(&dir);
            return match e {
                // Committed meanwhile by another path: that one wins.
                Error::AlreadyExists(_) => Ok(()),
                e => Err(e.into()),
            };
        }
        self.metrics.remote_mount();
        tracing::info!(layer = %req.layer, target = req.target, format, "mounted lazily");
        Ok(())
    }

    /// Make sure a remote layer's server runs (it may be gone after a reboot or a crash).
    async fn ensure_mounted(&self, s: &Snapshot) -> Result<()> {
        let Some(layer) = &s.remote else {
            return Ok(());
        };
        let fs = self.layout.fs(s.id);
        remote::clear_stale(&fs);
        if remote::is_mounted(&fs) {
            return Ok(());
        }
        let dir = self.layout.dir(s.id);
        let _one = self.remote_lock.lock().await;
        tracing::info!(layer = %layer.layer, "remounting a remote layer");
        self.mounter
            .mount(layer, &fs, &dir.join("stats.json"), &dir.join("mount.log"))
            .await
            .map_err(|why| Error::Remote {
                layer: layer.layer.to_string(),
                why,
            })
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let s = self.store.get(key)?;
        let chain = self.store.ancestors(key)?;
        for (_, a) in &chain {
            self.ensure_mounted(a).await?;
        }
        self.ensure_mounted(&s).await?;
        let lowers: Vec<PathBuf> = chain.iter().map(|(_, a)| self.layout.fs(a.id)).collect();
        let kind = if s.kind == Kind::Committed {
            Kind::View
        } else {
            s.kind
        };
        Ok(mounts(
            kind,
            &self.layout.fs(s.id),
            &self.layout.work(s.id),
            &lowers,
        ))
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let s = self.store.remove(key)?;
        let fs = self.layout.fs(s.id);
        if s.remote.is_some() {
            if let Err(e) = remote::unmount(&fs) {
                tracing::warn!("{key}: unmounting {}: {e}", fs.display());
            }
        }
        let dir = self.layout.dir(s.id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            // Cleanup takes it later.
            tracing::warn!("{key}: removing {}: {e}", dir.display());
        }
        Ok(())
    }

    async fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let s = self.store.get(key)?;
        let fs = self.layout.fs(s.id);
        if let Some(layer) = &s.remote {
            if !remote::is_mounted(&fs) {
                return Ok((layer.uncompressed_size.unwrap_or(layer.size) as i64, 0));
            }
        }
        let (size, inodes) = tokio::task::spawn_blocking(move || disk_usage(&fs))
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        let size = match &s.remote {
            Some(l) => l.uncompressed_size.map_or(size, |u| u as i64),
            None => size,
        };
        Ok((size, inodes))
    }

    /// Delete snapshot directories no record names, and trim the chunk cache to its bound.
    async fn cleanup(&self) -> Result<()> {
        let known: std::collections::HashSet<SnapshotId> =
            self.store.list()?.into_iter().map(|(_, s)| s.id).collect();
        let _one = self.remote_lock.lock().await;
        let dir = self.layout.snapshots();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        for entry in entries.flatten() {
            let id = entry.file_name().to_str().and_then(|n| n.parse().ok());
            if id.is_some_and(|id| known.contains(&SnapshotId(id))) {
                continue;
            }
            let path = entry.path();
            let _ = remote::unmount(&path.join("fs"));
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!("cleanup: removing {}: {e}", path.display());
            }
        }
        let cache =
            lazypull_fuse::CacheOptions::new(self.config.cache_dir(), self.config.cache.size);
        if self.config.cache_dir().exists() {
            // Opening evicts down to the bound, whichever layer server filled it.
            tokio::task::spawn_blocking(move || lazypull_fuse::ChunkCache::open(cache).map(drop))
                .await
                .map_err(|e| Error::Store(e.to_string()))?
                .map_err(|e| Error::Store(format!("trimming the chunk cache: {e}")))?;
        }
        Ok(())
    }
}

/// A remote Prepare that did not mount: fall back, or fail the request.
enum RemoteOutcome {
    Fallback(Fallback),
    Error(Error),
}

impl From<Fallback> for RemoteOutcome {
    fn from(f: Fallback) -> Self {
        RemoteOutcome::Fallback(f)
    }
}

impl From<Error> for RemoteOutcome {
    fn from(e: Error) -> Self {
        RemoteOutcome::Error(e)
    }
}

/// Bytes of disk blocks and inodes under `path` (hard links once), as containerd counts.
fn disk_usage(path: &Path) -> (i64, i64) {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    let (mut size, mut inodes) = (0i64, 0i64);
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((m.dev(), m.ino())) {
            inodes += 1;
            size += (m.blocks() * 512) as i64;
        }
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    (size, inodes)
}

fn info(name: &str, s: &Snapshot) -> pb::Info {
    let ts = |nanos: i64| prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    };
    pb::Info {
        name: name.to_string(),
        parent: s.parent.clone().unwrap_or_default(),
        kind: match s.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(ts(s.created)),
        updated_at: Some(ts(s.updated)),
        labels: s.labels.clone().into_iter().collect(),
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// The shared service behind tonic, timing every request into the metrics.
#[derive(Clone)]
pub struct Grpc(pub Arc<Service>);

impl Grpc {
    fn done<T>(
        &self,
        method: &'static str,
        start: Instant,
        r: Result<T>,
    ) -> Result<Response<T>, Status> {
        // AlreadyExists is how a remote Prepare succeeds: not an error to count.
        let ok = matches!(&r, Ok(_) | Err(Error::AlreadyExists(_)));
        self.0.metrics.request(method, start.elapsed(), ok);
        if let Err(e) = &r {
            if !matches!(e, Error::NotFound(_) | Error::AlreadyExists(_)) {
                tracing::warn!("{method}: {e}");
            }
        }
        r.map(Response::new).map_err(Status::from)
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for Grpc {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let (start, r) = (Instant::now(), request.into_inner());
        let out = self
            .0
            .prepare(&r.key, &r.parent, labels(r.labels), Kind::Active)
            .await
            .map(|mounts| pb::PrepareSnapshotResponse { mounts });
        self.done("Prepare", start, out)
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let (start, r) = (Instant::now(), request.into_inner());
        let out = self
            .0
            .prepare(&r.key, &r.parent, labels(r.labels), Kind::View)
            .await
            .map(|mounts| pb::ViewSnapshotResponse { mounts });
        self.done("View", start, out)
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let (start, r) = (Instant::now(), request.into_inner());
        let out = self
            .0
            .mounts(&r.key)
            .await
            .map(|mounts| pb::MountsResponse { mounts });
        self.done("Mounts", start, out)
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let (start, r) = (Instant::now(), request.into_inner());
        let out = self
            .0
            .store
            .commit(&r.name, &r.key, labels(r.labels))
            .map(drop);
        self.done("Commit", start, out)
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let (start, r) = (Instant::now(), request.into_inner());
        let out = self.0.remove(&r.key).await;
        self.done("Remove", start, out)
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let (start, r) = (Instant::now(), request.into_inner());
        let out = self.0.store.get(&r.key).map(|s| pb::StatSnapshotResponse {
            info: Some(info(&r.key, &s)),
        });
        self.done("Stat", start, out)
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let (start, r) = (Instant::now(), request.into_inner());
        let out = match r.info {
            None => Err(Error::InvalidArgument("update without info".into())),
            Some(i) => {
                let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
                self.0
                    .store
                    .update_labels(&i.name, labels(i.labels), &paths)
                    .map(|s| pb::UpdateSnapshotResponse {
                        info: Some(info(&i.name, &s)),
                    })
            }
        };
        self.done("Update", start, out)
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        _request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<ListStream>, Status> {
        // Filters are left to containerd, which applies them to what it gets.
        let start = Instant::now();
        let out = self.0.store.list().map(|all| {
            let infos: Vec<pb::Info> = all.iter().map(|(k, s)| info(k, s)).collect();
            let chunks: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
                .chunks(LIST_CHUNK)
                .map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() }))
                .collect();
            Box::pin(tokio_stream::iter(chunks)) as ListStream
        });
        self.done("List", start, out)
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let (start, r) = (Instant::now(), request.into_inner());
        let out = self
            .0
            .usage(&r.key)
            .await
            .map(|(size, inodes)| pb::UsageResponse { size, inodes });
        self.done("Usage", start, out)
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let start = Instant::now();
        let out = self.0.cleanup().await;
        self.done("Cleanup", start, out)
    }
}

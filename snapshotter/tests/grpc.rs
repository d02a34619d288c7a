//! The snapshots service over a real unix socket, through the generated gRPC client: the plain
//! (non-lazy) path end to end, with the status codes containerd's client maps back to errdefs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use lazypull_snapshotter::fuse::converter::Digest;
use lazypull_snapshotter::fuse::{CacheOptions, ChunkCache};
use lazypull_snapshotter::metrics::Metrics;
use lazypull_snapshotter::proto::snapshots_client::SnapshotsClient;
use lazypull_snapshotter::proto::snapshots_server::SnapshotsServer;
use lazypull_snapshotter::proto::{self as pb, Kind};
use lazypull_snapshotter::remote::FallbackReason;
use lazypull_snapshotter::service::{Grpc, Service};
use lazypull_snapshotter::Config;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

async fn start(root: &Path) -> SnapshotsClient<Channel> {
    start_with_metrics(root).await.0
}

async fn start_with_metrics(root: &Path) -> (SnapshotsClient<Channel>, Arc<Metrics>) {
    let mut config = Config {
        root: root.join("root"),
        socket: root.join("snap.sock"),
        ..Config::default()
    };
    config.cache.size = CACHE_SIZE;
    let metrics = Arc::new(Metrics::new(config.root.join("snapshots")));
    let service = Arc::new(Service::open(&config, Arc::clone(&metrics)).unwrap());
    let listener = tokio::net::UnixListener::bind(&config.socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SnapshotsServer::new(Grpc(service)))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let socket = config.socket.clone();
    let channel = Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .unwrap();
    (SnapshotsClient::new(channel), metrics)
}

/// The chunk cache bound of the service under test.
const CACHE_SIZE: u64 = 250_000;

fn prepare(key: &str, parent: &str) -> pb::PrepareSnapshotRequest {
    pb::PrepareSnapshotRequest {
        snapshotter: "lazypull".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    }
}

#[tokio::test]
async fn plain_snapshots_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;

    // A base layer: rw bind mount of its dir, which "containerd" fills, then Commit.
    let m = c
        .prepare(prepare("default/1/extract-1 sha256:a", ""))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].r#type.as_str(), &m[0].options[..]),
        ("bind", &["rbind".to_string(), "rw".into()][..])
    );
    std::fs::write(Path::new(&m[0].source).join("file"), b"12345").unwrap();
    let e = c
        .prepare(prepare("default/1/extract-1 sha256:a", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // A parent that is still active is refused.
    let e = c
        .prepare(prepare("default/2/x", "default/1/extract-1 sha256:a"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: "lazypull".into(),
        name: "sha256:a".into(),
        key: "default/1/extract-1 sha256:a".into(),
        labels: HashMap::from([("containerd.io/gc.root".into(), "x".into())]),
    })
    .await
    .unwrap();
    let e = c
        .stat(pb::StatSnapshotRequest {
            snapshotter: "lazypull".into(),
            key: "default/1/extract-1 sha256:a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let info = c
        .stat(pb::StatSnapshotRequest {
            snapshotter: "lazypull".into(),
            key: "sha256:a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.kind, Kind::Committed as i32);
    assert_eq!(
        info.labels.get("containerd.io/gc.root").map(String::as_str),
        Some("x")
    );

    // Over it: an active overlay and a read-only bind view of the single parent.
    let active = c
        .prepare(prepare("default/3/ctr", "sha256:a"))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(active[0].r#type, "overlay");
    let lower = active[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    assert!(
        Path::new(lower).join("file").exists(),
        "lowerdir is the committed layer"
    );
    let view = c
        .view(pb::ViewSnapshotRequest {
            snapshotter: "lazypull".into(),
            key: "default/4/view".into(),
            parent: "sha256:a".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(
        (view[0].r#type.as_str(), view[0].source.as_str()),
        ("bind", lower)
    );
    assert!(view[0].options.contains(&"ro".to_string()));
    let again = c
        .mounts(pb::MountsRequest {
            snapshotter: "lazypull".into(),
            key: "default/3/ctr".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, active);

    let usage = c
        .usage(pb::UsageRequest {
            snapshotter: "lazypull".into(),
            key: "sha256:a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.inodes, 2, "the dir and its file");
    assert!(usage.size >= 5);

    let updated = c
        .update(pb::UpdateSnapshotRequest {
            snapshotter: "lazypull".into(),
            info: Some(pb::Info {
                name: "sha256:a".into(),
                labels: HashMap::from([("k".into(), "v".into())]),
                ..pb::Info::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.k".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(updated.labels.len(), 2, "labels.k added, gc.root kept");

    let mut stream = c
        .list(pb::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        names.extend(msg.info.into_iter().map(|i| i.name));
    }
    names.sort();
    assert_eq!(names, ["default/3/ctr", "default/4/view", "sha256:a"]);

    let remove = |key: &str| pb::RemoveSnapshotRequest {
        snapshotter: "lazypull".into(),
        key: key.into(),
    };
    let e = c.remove(remove("sha256:a")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "it has children");
    c.remove(remove("default/3/ctr")).await.unwrap();
    c.remove(remove("default/4/view")).await.unwrap();
    c.remove(remove("sha256:a")).await.unwrap();
    assert_eq!(
        c.remove(remove("sha256:a")).await.unwrap_err().code(),
        Code::NotFound
    );

    // Cleanup deletes directories no snapshot names, and trims the chunk cache (filled by layer
    // servers with their own bounds) to the configured size.
    let cache_dir = dir.path().join("root/cache");
    {
        let cache = ChunkCache::open(CacheOptions::new(&cache_dir, 10 << 20)).unwrap();
        for i in 0..5u8 {
            let chunk = vec![i; 100_000];
            cache.put(&Digest::of(&chunk), &chunk).unwrap();
        }
        assert_eq!(cache.stats().bytes_on_disk, 500_000);
    }
    let stray = dir.path().join("root/snapshots/999/fs");
    std::fs::create_dir_all(&stray).unwrap();
    c.cleanup(pb::CleanupRequest::default()).await.unwrap();
    assert!(!stray.exists());
    let cache = ChunkCache::open(CacheOptions::new(&cache_dir, 10 << 20)).unwrap();
    let kept = cache.stats().bytes_on_disk;
    assert!(kept <= CACHE_SIZE && kept > 0, "{kept} bytes kept");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("root/snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "removed snapshots leave no directory");
}

/// A remote Prepare whose registry cannot be reached becomes a plain snapshot that containerd
/// fills, and the fallback is counted.
#[tokio::test]
async fn unreachable_registry_falls_back_to_a_plain_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, metrics) = start_with_metrics(dir.path()).await;
    let mut req = prepare("default/1/extract-1 sha256:chain", "");
    req.labels = HashMap::from([
        ("containerd.io/snapshot.ref".into(), "sha256:chain".into()),
        (
            "containerd.io/snapshot/remote/stargz.reference".into(),
            // Nothing listens on port 1 of loopback: the connection is refused at once.
            "127.0.0.1:1/nobody/image:tag".into(),
        ),
        (
            "containerd.io/snapshot/remote/stargz.digest".into(),
            format!("sha256:{}", "ab".repeat(32)),
        ),
    ]);
    let m = c.prepare(req).await.unwrap().into_inner().mounts;
    assert_eq!((m[0].r#type.as_str(), &m[0].options[1][..]), ("bind", "rw"));
    assert_eq!(metrics.fallbacks(FallbackReason::Resolve), 1);
    assert_eq!(metrics.fallbacks(FallbackReason::NotLazy), 0);
    let info = c
        .stat(pb::StatSnapshotRequest {
            snapshotter: "lazypull".into(),
            key: "default/1/extract-1 sha256:chain".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(
        info.kind,
        Kind::Active as i32,
        "an active snapshot to unpack into"
    );
    assert!(
        c.stat(pb::StatSnapshotRequest {
            snapshotter: "lazypull".into(),
            key: "sha256:chain".into(),
        })
        .await
        .is_err(),
        "no committed snapshot under the target name"
    );
}

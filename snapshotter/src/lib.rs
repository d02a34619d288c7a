//! lazypull-snapshotter: the containerd proxy snapshotter.
//!
//! containerd dials [`Config::socket`] and calls the snapshots gRPC API
//! (`containerd.services.snapshots.v1.Snapshots`, our own [`proto`] text compiled by protox at
//! build time). [`service::Service`] keeps every snapshot in a [`store::Store`] (redb, under
//! [`Config::root`]), so containerd's names survive restarts, and answers with the
//! [`mounts::mounts`] containerd performs: overlayfs with the parents as lowerdirs, or a bind
//! mount.
//!
//! A Prepare whose labels name an image layer ([`remote::RemoteRequest`], from CRI's or
//! stargz-snapshotter's labels) is served lazily when the layer is eStargz or EROFS: a
//! `lazypull mount` process ([`remote::Mounter`]) serves it through [`lazypull_fuse`], the
//! snapshot is committed under the requested name and containerd hears `ALREADY_EXISTS`, so it
//! never downloads the layer. Anything else, or a lazy mount that fails, becomes a plain
//! snapshot that containerd fills ([`remote::FallbackReason`], counted in [`metrics`]).
//!
//! ```no_run
//! # fn main() -> Result<(), lazypull_snapshotter::Error> {
//! let config = lazypull_snapshotter::Config::parse("root = \"/tmp/snap\"\nsocket = \"/tmp/snap.sock\"")
//!     .map_err(|why| lazypull_snapshotter::Error::InvalidArgument(why))?;
//! lazypull_snapshotter::run(config)?; // serves until SIGINT or SIGTERM
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod error;
pub mod metrics;
pub mod mounts;
pub mod remote;
pub mod service;
pub mod store;
#[cfg(test)]
mod test_util;

use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use error::{Error, Result};
pub use lazypull_fuse as fuse;

/// The generated protobuf types and gRPC code.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    /// containerd's packages, nested as the generated code refers to them.
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
    pub use containerd::services::snapshots::v1::*;
    pub use containerd::types::Mount;
}

/// Serve the snapshots API on the configured socket (and metrics, when an address is set)
/// until SIGINT or SIGTERM. Remote layers stay mounted when it returns: their servers are
/// processes of their own.
pub fn run(config: Config) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Serve {
            what: "the runtime".into(),
            why: e.to_string(),
        })?;
    let result = runtime.block_on(serve(config));
    // Blocking tasks (a registry lookup, a disk walk) are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(config: Config) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::new(config.root.join("snapshots")));
    let service = Arc::new(service::Service::open(&config, Arc::clone(&metrics))?);
    if let Some(addr) = &config.metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Serve {
                what: format!("metrics on {addr}"),
                why: e.to_string(),
            })?;
        tracing::info!("metrics on http://{addr}/metrics");
        tokio::spawn(metrics::serve(listener, metrics));
    }
    let socket = &config.socket;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    }
    // A socket left by an earlier run: nobody answers on it any more.
    let _ = std::fs::remove_file(socket);
    let listener =
        tokio::net::UnixListener::bind(socket).map_err(|e| Error::io("binding", socket, e))?;
    eprintln!("lazypull: snapshotter serving on {}", socket.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Serve {
            what: "SIGTERM".into(),
            why: e.to_string(),
        })?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::snapshots_server::SnapshotsServer::new(
                service::Grpc(service),
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return finish(socket, r),
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping; remote layers stay mounted");
    let _ = stop_tx.send(());
    // containerd keeps its connection open: give requests in flight a moment, not forever.
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), &mut server).await {
        return finish(socket, r);
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

fn finish(
    socket: &std::path::Path,
    r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<()> {
    let _ = std::fs::remove_file(socket);
    r.map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|why| Error::Serve {
            what: socket.display().to_string(),
            why,
        })
}

//! Call the snapshotter's socket directly, bypassing containerd: for trying labels that no
//! containerd client sends (e.g. CRI's on an EROFS layer).
//!
//! `cargo run -p lazypull-snapshotter --example snapctl -- SOCKET prepare KEY PARENT [LABEL=VALUE…]`
//! `… SOCKET mounts KEY`, `… SOCKET stat KEY`, `… SOCKET remove KEY`

use hyper_util::rt::TokioIo;
use lazypull_snapshotter::proto::snapshots_client::SnapshotsClient;
use lazypull_snapshotter::proto::{self as pb};
use tonic::transport::Endpoint;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, op, key, rest @ ..] = args.as_slice() else {
        return Err("usage: snapctl SOCKET prepare|mounts|stat|remove KEY [PARENT] [K=V…]".into());
    };
    let socket = socket.clone();
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await?;
    let mut c = SnapshotsClient::new(channel);
    let snapshotter = "lazypull".to_string();
    let key = key.clone();
    match op.as_str() {
        "prepare" => {
            let parent = rest.first().cloned().unwrap_or_default();
            let labels = rest
                .iter()
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let r = c
                .prepare(pb::PrepareSnapshotRequest {
                    snapshotter,
                    key,
                    parent,
                    labels,
                })
                .await;
            match r {
                Ok(m) => println!("{:?}", m.into_inner().mounts),
                Err(s) => println!("{:?}: {}", s.code(), s.message()),
            }
        }
        "mounts" => println!(
            "{:?}",
            c.mounts(pb::MountsRequest { snapshotter, key })
                .await?
                .into_inner()
                .mounts
        ),
        "stat" => println!(
            "{:?}",
            c.stat(pb::StatSnapshotRequest { snapshotter, key })
                .await?
                .into_inner()
                .info
        ),
        "remove" => {
            c.remove(pb::RemoveSnapshotRequest { snapshotter, key })
                .await?;
            println!("removed");
        }
        other => return Err(format!("unknown operation {other}").into()),
    }
    Ok(())
}

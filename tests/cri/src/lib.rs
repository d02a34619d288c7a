//! A minimal CRI v1 `ImageService` client for lazypull's integration tests: containerd's CRI
//! plugin is the only client that makes a lazy pull with the `containerd.io/snapshot/cri.*`
//! labels, and `crictl` is not packaged. The proto (`proto/cri.proto`) is our own subset.
//!
//! ```no_run
//! let mut cri = lazypull_test_cri::Cri::connect("/run/containerd/containerd.sock").unwrap();
//! let image_ref = cri.pull("127.0.0.1:5000/x:esgz").unwrap();
//! cri.remove(&image_ref).unwrap();
//! ```

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// The generated `runtime.v1` messages and client.
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use v1::image_service_client::ImageServiceClient;

/// A blocking CRI image client over containerd's unix socket (its own small runtime).
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    client: ImageServiceClient<Channel>,
}

/// What went wrong talking to the CRI socket.
#[derive(Debug)]
pub enum Error {
    Connect(String),
    Call(tonic::Status),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect to the CRI socket: {e}"),
            Error::Call(s) => write!(f, "CRI call failed: {:?}: {}", s.code(), s.message()),
        }
    }
}

impl std::error::Error for Error {}

impl Cri {
    /// Connect to the gRPC unix socket at `socket` (containerd's `[grpc] address`).
    pub fn connect(socket: impl AsRef<Path>) -> Result<Cri, Error> {
        let socket: PathBuf = socket.as_ref().to_path_buf();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Connect(e.to_string()))?;
        let channel = runtime
            .block_on(async {
                // The URI is a placeholder: the connector below ignores it and dials the socket.
                Endpoint::from_static("http://cri.invalid")
                    .connect_with_connector(tower::service_fn(move |_| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .map_err(|e| Error::Connect(format!("{e:?}")))?;
        Ok(Cri {
            runtime,
            client: ImageServiceClient::new(channel),
        })
    }

    /// `PullImage`: the image reference containerd answers (the image id, `sha256:…`).
    pub fn pull(&mut self, image: &str) -> Result<String, Error> {
        let request = v1::PullImageRequest {
            image: Some(spec(image)),
        };
        let answer = self
            .runtime
            .block_on(self.client.pull_image(request))
            .map_err(Error::Call)?;
        Ok(answer.into_inner().image_ref)
    }

    /// `ListImages` without a filter.
    pub fn list(&mut self) -> Result<Vec<v1::Image>, Error> {
        let answer = self
            .runtime
            .block_on(
                self.client
                    .list_images(v1::ListImagesRequest { filter: None }),
            )
            .map_err(Error::Call)?;
        Ok(answer.into_inner().images)
    }

    /// `RemoveImage` by reference or id.
    pub fn remove(&mut self, image: &str) -> Result<(), Error> {
        let request = v1::RemoveImageRequest {
            image: Some(spec(image)),
        };
        self.runtime
            .block_on(self.client.remove_image(request))
            .map_err(Error::Call)?;
        Ok(())
    }
}

fn spec(image: &str) -> v1::ImageSpec {
    v1::ImageSpec {
        image: image.to_string(),
        annotations: Default::default(),
    }
}

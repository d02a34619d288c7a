//! The OCI distribution client: images pulled from and pushed to registries.
//!
//! - [`Reference`] parses `[HOST[:PORT]/]REPO[:TAG][@DIGEST]` as docker does (`busybox` is
//!   `docker.io/library/busybox:latest`, served by `registry-1.docker.io`).
//! - [`Client`] speaks to one repository: anonymous, `Basic`, or `Bearer` tokens fetched from the
//!   `WWW-Authenticate` challenge's realm and renewed on expiry or on a new `401`; credentials
//!   from `--creds`, else the docker config ([`docker_config_credentials`]: `auths`,
//!   `credHelpers`, `credsStore`); retries of connection failures and 5xx with backoff; errors
//!   that name the registry, the repository, the step and the digest.
//! - [`RegistrySource`] is an [`ImageSource`](crate::oci::ImageSource): the converter pulls
//!   from a registry exactly as from a layout, with every blob verified before it is read.
//! - [`push_image`] pushes any source's image: blobs (skipping those present, mounting those in
//!   another repository of the registry, chunked uploads for large ones), then manifests, then
//!   the tag, last.
//!
//! Range reads of layers (the lazy filesystem's) go through `lazypull-fuse`'s fetcher, which
//! asks a [`Client`] for its `Authorization` header and to re-authenticate on a `401`.
//!
//! ```no_run
//! use lazypull_converter::oci::ImageSource;
//! use lazypull_converter::registry::{Reference, RegistryOptions, RegistrySource};
//! let r: Reference = "127.0.0.1:5000/app:1.0".parse()?;
//! let src = RegistrySource::open(&r, &RegistryOptions::default())?;
//! println!("{}", src.root()?.digest);
//! # Ok::<(), lazypull_converter::Error>(())
//! ```

mod auth;
mod client;
mod push;
mod reference;
mod source;

pub use auth::{
    credentials_from_config, docker_config_credentials, docker_config_path, Challenge, Credentials,
};
pub use client::{Client, RegistryOptions};
pub use push::{push_image, PushProgress, PushReport};
pub use reference::{Reference, DOCKER_HUB};
pub use source::{RegistrySource, MANIFEST_ACCEPT};

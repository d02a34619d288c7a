//! A registry image as an [`ImageSource`]: manifests by the manifests endpoint, blobs streamed
//! to temporary files and verified before anyone reads them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use tempfile::TempDir;

use crate::blob::{BlobRead, FileBlob};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::oci::{media, Descriptor, ImageSource, MAX_JSON_BLOB};

use super::client::{is_transient, read_small, Client, RegistryOptions};
use super::reference::Reference;

/// Every manifest type lazypull reads, for `Accept`.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// An image in a registry, read by tag or digest.
///
/// The root manifest is fetched once and kept; child manifests and configs are read whole and
/// verified; layers are streamed into a temporary directory (removed with the source), their
/// size and digest checked on the way, and served from there as [`FileBlob`]s. Mirrors
/// ([`RegistryOptions::mirrors`]) are asked first, each failure falling through to the next and
/// finally to the image's own registry; content is verified by digest whoever served it.
pub struct RegistrySource {
    client: Arc<Client>,
    /// The mirrors' clients, in order, then `client`.
    clients: Vec<Arc<Client>>,
    name: String,
    temp: TempDir,
    manifests: Mutex<HashMap<Digest, Vec<u8>>>,
    files: Mutex<HashMap<Digest, PathBuf>>,
}

impl RegistrySource {
    /// A source for `reference`; nothing is asked of the registry until [`ImageSource::root`].
    pub fn open(reference: &Reference, opts: &RegistryOptions) -> Result<Self> {
        let client = Arc::new(Client::new(reference, false, &[], opts)?);
        let mut clients = Vec::new();
        for host in &opts.mirrors {
            let mirrored = Reference {
                registry: host.clone(),
                ..reference.clone()
            };
            clients.push(Arc::new(Client::new(&mirrored, false, &[], opts)?));
        }
        clients.push(client.clone());
        let temp = tempfile::Builder::new()
            .prefix("lazypull-pull-")
            .tempdir()
            .map_err(|e| Error::io("create a temporary directory for pulled blobs", e))?;
        Ok(RegistrySource {
            client,
            clients,
            name: format!("docker://{reference}"),
            temp,
            manifests: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
        })
    }

    /// The client, shared with range readers of the same repository.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Where range reads of a blob should go: the first mirror that has it, else the image's
    /// own registry. The client authorises the requests.
    pub fn blob_location(&self, digest: &Digest) -> (Arc<Client>, reqwest::Url) {
        for c in &self.clients[..self.clients.len() - 1] {
            let step = format!("check blob {digest}");
            let url = c.blob_url(digest);
            if let Ok(r) = c.send(&step, Method::HEAD, url.clone(), &[], None, false) {
                if r.status() == StatusCode::OK {
                    return (c.clone(), url);
                }
            }
        }
        (self.client.clone(), self.client.blob_url(digest))
    }

    /// `op` on each mirror, then on the image's registry: the first success.
    fn first_ok<T>(&self, op: impl Fn(&Client) -> Result<T>) -> Result<T> {
        let (source, mirrors) = self
            .clients
            .split_last()
            .expect("the source is always there");
        for c in mirrors {
            match op(c) {
                Ok(v) => return Ok(v),
                Err(e) => tracing::info!("mirror: {e}; trying the next source"),
            }
        }
        op(source)
    }

    /// GET a manifest by tag or digest: its bytes and media type.
    fn get_manifest(&self, target: &str) -> Result<(Vec<u8>, String)> {
        self.first_ok(|c| Self::get_manifest_from(c, target))
    }

    fn get_manifest_from(client: &Client, target: &str) -> Result<(Vec<u8>, String)> {
        let step = format!("pull manifest {target}");
        let url = client.manifest_url(target);
        let response = client.send(
            &step,
            Method::GET,
            url,
            &[(ACCEPT, MANIFEST_ACCEPT)],
            None,
            true,
        )?;
        if response.status() != StatusCode::OK {
            return Err(client.status_error(&step, response));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let bytes =
            read_small(response, MAX_JSON_BLOB).map_err(|e| Error::io(client.context(&step), e))?;
        Ok((bytes, content_type))
    }

    /// Stream a blob into `sink`, checking its size and digest; the bytes are only trusted
    /// once this returns `Ok`.
    fn stream_blob(
        client: &Client,
        desc: &Descriptor,
        sink: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let step = format!("pull blob {}", desc.digest);
        let url = client.blob_url(&desc.digest);
        let response = client.send(&step, Method::GET, url, &[], None, true)?;
        if response.status() != StatusCode::OK {
            return Err(client.status_error(&step, response));
        }
        let what = || client.context(&step);
        let mut hasher = Hasher::new();
        let mut body = response.take(desc.size + 1);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = body.read(&mut buf).map_err(|e| Error::io(what(), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if hasher.len() > desc.size {
                return Err(Error::format(format!(
                    "{}: the registry sent more than the descriptor's {} bytes",
                    what(),
                    desc.size
                )));
            }
            sink.write_all(&buf[..n])
                .map_err(|e| Error::io(what(), e))?;
            progress(hasher.len());
        }
        if hasher.len() != desc.size {
            return Err(Error::io(
                what(),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("got {} of {} bytes", hasher.len(), desc.size),
                ),
            ));
        }
        let actual = hasher.finish();
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                what: what(),
                expected: desc.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// Download a blob to the temporary directory (once), restarting after transient failures.
    fn download(&self, desc: &Descriptor, progress: &dyn Fn(u64)) -> Result<PathBuf> {
        if let Some(p) = self.lock_files().get(&desc.digest) {
            return Ok(p.clone());
        }
        let path = self.temp.path().join(desc.digest.hex());
        let part = self.temp.path().join(format!("{}.part", desc.digest.hex()));
        let mut attempt = 0;
        loop {
            let result = self.first_ok(|c| {
                let f = File::create(&part)
                    .map_err(|e| Error::io(format!("create {}", part.display()), e))?;
                let mut w = BufWriter::new(f);
                progress(0);
                Self::stream_blob(c, desc, &mut w, progress)?;
                w.flush()
                    .map_err(|e| Error::io(format!("write {}", part.display()), e))
            });
            match result {
                Ok(()) => break,
                Err(e) if is_transient(&e) && attempt < self.client.options().retries => {
                    attempt += 1;
                    tracing::warn!("{e}; starting the download again");
                    std::thread::sleep(self.client.delay(attempt));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(e);
                }
            }
        }
        std::fs::rename(&part, &path)
            .map_err(|e| Error::io(format!("rename {}", part.display()), e))?;
        self.lock_files().insert(desc.digest, path.clone());
        Ok(path)
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, PathBuf>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ImageSource for RegistrySource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn root(&self) -> Result<Descriptor> {
        let reference = self.client.reference();
        let (bytes, content_type) = self.get_manifest(&reference.target())?;
        let digest = Digest::of(&bytes);
        if let Some(pinned) = reference.digest {
            if pinned != digest {
                return Err(Error::DigestMismatch {
                    what: self.client.context(&format!("pull manifest {pinned}")),
                    expected: pinned.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let media_type = if media::is_manifest(&content_type) || media::is_index(&content_type) {
            content_type
        } else {
            guess_media_type(&bytes)
        };
        let desc = Descriptor::new(media_type, digest, bytes.len() as u64);
        self.manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, bytes);
        Ok(desc)
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn BlobRead>> {
        self.blob_with_progress(desc, &|_| {})
    }

    fn blob_with_progress(
        &self,
        desc: &Descriptor,
        progress: &dyn Fn(u64),
    ) -> Result<Box<dyn BlobRead>> {
        let path = self.download(desc, progress)?;
        Ok(Box::new(FileBlob::open(&path)?))
    }

    fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        crate::oci::check_json_size(desc, &self.name)?;
        let cached = self
            .manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&desc.digest)
            .cloned();
        let bytes = match cached {
            Some(b) => b,
            None if media::is_manifest(&desc.media_type) || media::is_index(&desc.media_type) => {
                self.get_manifest(&desc.digest.to_string())?.0
            }
            None => self.first_ok(|c| {
                let mut out = Vec::with_capacity(desc.size as usize);
                Self::stream_blob(c, desc, &mut out, &|_| {})?;
                Ok(out)
            })?,
        };
        let actual = Digest::of(&bytes);
        if actual != desc.digest || bytes.len() as u64 != desc.size {
            return Err(Error::DigestMismatch {
                what: format!("{}: blob {}", self.name, desc.digest),
                expected: format!("{} ({} bytes)", desc.digest, desc.size),
                actual: format!("{actual} ({} bytes)", bytes.len()),
            });
        }
        Ok(bytes)
    }
}

/// A manifest's media type from its own `mediaType`, or from its shape when it has none.
fn guess_media_type(bytes: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(mt) => mt.to_string(),
        None if v.get("manifests").is_some() => media::OCI_INDEX.to_string(),
        None => media::OCI_MANIFEST.to_string(),
    }
}

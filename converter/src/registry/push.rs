//! Pushing an image to a registry: blobs, then manifests, then the tag.
//!
//! The order is what keeps a failed push harmless: the tag is the last request, so until it
//! succeeds the registry's tag still names the image it named before. Blobs go up four at a
//! time; manifests only once every blob is there. Blobs the registry already
//! has are skipped (`HEAD`); blobs of another repository of the same registry are mounted
//! instead of uploaded; large blobs go up in `PATCH` chunks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;

use crate::blob::BlobRead;
use crate::digest::Digest;
use crate::error::{Error, Result, ResultExt};
use crate::oci::{media, Descriptor, ImageSource, Index, Manifest};

use super::client::{is_transient, Client, RegistryOptions};
use super::reference::Reference;

/// Blobs uploaded at once (as docker does, a few: registries and links do not gain from more).
const PUSH_WORKERS: usize = 4;

/// What a push did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    /// The reference pushed to.
    pub reference: String,
    /// The root (manifest or index) digest.
    pub digest: Option<Digest>,
    /// Blobs the image references (configs and layers).
    pub blobs: usize,
    /// Of those, already in the repository.
    pub existing: usize,
    /// Of those, mounted from another repository.
    pub mounted: usize,
    /// Of those, uploaded; and their bytes.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Manifests and indexes put.
    pub manifests: usize,
}

/// Receives push progress per blob; may be called from any thread.
pub trait PushProgress: Sync {
    /// `done` of the `size` bytes of a blob were sent (0 when its upload starts, again 0 when
    /// it starts over, `size` when it is complete).
    fn blob(&self, _digest: &Digest, _size: u64, _done: u64) {}
}

impl PushProgress for () {}

/// Push the image `root` of `src` to `dest` (its tag, or its digest when it names no tag).
/// `mount_from` names a repository of the same registry that may hold some of the blobs.
pub fn push_image(
    src: &dyn ImageSource,
    root: &Descriptor,
    dest: &Reference,
    mount_from: Option<&str>,
    opts: &RegistryOptions,
    progress: &dyn PushProgress,
) -> Result<PushReport> {
    let mount: Vec<String> = mount_from.map(str::to_string).into_iter().collect();
    let client = Arc::new(Client::new(dest, true, &mount, opts)?);
    let mut report = PushReport {
        reference: dest.to_string(),
        digest: Some(root.digest),
        ..PushReport::default()
    };
    // Children first, the root last.
    let mut manifests: Vec<(Descriptor, Vec<u8>)> = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    let root_bytes = src.read_blob(root)?;
    if media::is_index(&root.media_type) {
        let index =
            Index::from_json(&root_bytes).with_context(|| format!("index {}", root.digest))?;
        for d in &index.descriptors {
            if !media::is_manifest(&d.media_type) {
                return Err(Error::Unsupported(format!(
                    "index {}: entry {} is a {}; only image manifests can be pushed",
                    root.digest, d.digest, d.media_type
                )));
            }
            let bytes = src.read_blob(d)?;
            collect_blobs(&bytes, d, &mut blobs)?;
            manifests.push((d.clone(), bytes));
        }
    } else {
        collect_blobs(&root_bytes, root, &mut blobs)?;
    }
    let mut seen = HashSet::new();
    blobs.retain(|b| seen.insert(b.digest));
    report.blobs = blobs.len();
    push_blobs(&client, src, &blobs, mount_from, progress, &mut report)?;
    for (d, bytes) in &manifests {
        put_manifest(&client, &d.digest.to_string(), &d.media_type, bytes)?;
        report.manifests += 1;
    }
    let target = match (&dest.tag, &dest.digest) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) if *d == root.digest => d.to_string(),
        (None, Some(d)) => {
            return Err(Error::Invalid(format!(
                "{}: the destination pins {d}, but the image is {}",
                client.context("push"),
                root.digest
            )))
        }
        (None, None) => "latest".into(),
    };
    put_manifest(&client, &target, &root.media_type, &root_bytes)?;
    report.manifests += 1;
    Ok(report)
}

/// The config and layers of a manifest.
fn collect_blobs(bytes: &[u8], desc: &Descriptor, out: &mut Vec<Descriptor>) -> Result<()> {
    let m = Manifest::from_json(bytes).with_context(|| format!("manifest {}", desc.digest))?;
    out.push(m.config);
    out.extend(m.layers);
    Ok(())
}

fn put_manifest(client: &Client, target: &str, media_type: &str, bytes: &[u8]) -> Result<()> {
    let step = format!("put manifest {target}");
    let response = client.send(
        &step,
        Method::PUT,
        client.manifest_url(target),
        &[(CONTENT_TYPE, media_type)],
        Some(bytes),
        true,
    )?;
    if response.status() != StatusCode::CREATED && !response.status().is_success() {
        return Err(client.status_error(&step, response));
    }
    Ok(())
}

/// How a blob reached the repository.
enum Pushed {
    Existing,
    Mounted,
    Uploaded,
}

/// Push `blobs` with [`PUSH_WORKERS`] threads taking them in order; the first error wins.
fn push_blobs(
    client: &Client,
    src: &dyn ImageSource,
    blobs: &[Descriptor],
    mount_from: Option<&str>,
    progress: &dyn PushProgress,
    report: &mut PushReport,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Vec<(usize, Result<Pushed>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PUSH_WORKERS.min(blobs.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(desc) = blobs.get(i) else { break };
                        let r = push_blob(client, src, desc, mount_from, progress);
                        failed.fetch_or(r.is_err(), Ordering::Relaxed);
                        done.push((i, r));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    let e = Error::Invalid(client.context("push: a push thread panicked"));
                    vec![(usize::MAX, Err(e))]
                })
            })
            .collect()
    });
    let mut results: Vec<(usize, Result<Pushed>)> = results.into_iter().flatten().collect();
    results.sort_by_key(|(i, _)| *i);
    for (i, r) in results {
        match r? {
            Pushed::Existing => report.existing += 1,
            Pushed::Mounted => report.mounted += 1,
            Pushed::Uploaded => {
                report.uploaded += 1;
                report.uploaded_bytes += blobs[i].size;
            }
        }
    }
    Ok(())
}

fn push_blob(
    client: &Client,
    src: &dyn ImageSource,
    desc: &Descriptor,
    mount_from: Option<&str>,
    progress: &dyn PushProgress,
) -> Result<Pushed> {
    let step = format!("push blob {}", desc.digest);
    let response = client.send(
        &format!("check blob {}", desc.digest),
        Method::HEAD,
        client.blob_url(&desc.digest),
        &[],
        None,
        true,
    )?;
    match response.status() {
        StatusCode::OK => return Ok(Pushed::Existing),
        StatusCode::NOT_FOUND => {}
        _ => return Err(client.status_error(&format!("check blob {}", desc.digest), response)),
    }
    let blob = src.blob(desc)?;
    let mut attempt = 0;
    loop {
        let result =
            start_upload(client, &desc.digest, mount_from, &step).and_then(|start| match start {
                Upload::Mounted => Ok(true),
                Upload::At(location) => {
                    upload(client, blob.as_ref(), desc, location, &step, progress).map(|_| false)
                }
            });
        match result {
            Ok(true) => return Ok(Pushed::Mounted),
            Ok(false) => return Ok(Pushed::Uploaded),
            Err(e) if is_transient(&e) && attempt < client.options().retries => {
                attempt += 1;
                tracing::warn!("{e}; starting the upload again");
                std::thread::sleep(client.delay(attempt));
            }
            Err(e) => return Err(e),
        }
    }
}

enum Upload {
    /// The registry mounted the blob from the other repository: nothing to send.
    Mounted,
    /// An upload session.
    At(Url),
}

fn start_upload(
    client: &Client,
    digest: &Digest,
    mount_from: Option<&str>,
    step: &str,
) -> Result<Upload> {
    let mut url = client.url("blobs/uploads/");
    if let Some(from) = mount_from {
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
    }
    let response = client.send(
        step,
        Method::POST,
        url,
        &[(CONTENT_LENGTH, "0")],
        None,
        true,
    )?;
    match response.status() {
        StatusCode::CREATED if mount_from.is_some() => Ok(Upload::Mounted),
        StatusCode::ACCEPTED => Ok(Upload::At(location(client, &response, step)?)),
        _ => Err(client.status_error(step, response)),
    }
}

/// The upload session URL an answer names.
fn location(client: &Client, response: &reqwest::blocking::Response, step: &str) -> Result<Url> {
    let loc = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::format(format!(
                "{}: answer without a Location",
                client.context(step)
            ))
        })?;
    response
        .url()
        .join(loc)
        .map_err(|e| Error::format(format!("{}: Location `{loc}`: {e}", client.context(step))))
}

/// Send the blob to an upload session: one `PUT` when it fits in a chunk, else `PATCH` chunks
/// and a closing `PUT`.
fn upload(
    client: &Client,
    blob: &dyn BlobRead,
    desc: &Descriptor,
    mut location: Url,
    step: &str,
    progress: &dyn PushProgress,
) -> Result<()> {
    let chunk = client.options().upload_chunk_size.max(1);
    progress.blob(&desc.digest, desc.size, 0);
    let mut last: Option<Vec<u8>> = None;
    if desc.size <= chunk {
        last = Some(blob.read_vec(0, desc.size)?);
    } else {
        let mut off = 0;
        while off < desc.size {
            let n = chunk.min(desc.size - off);
            let data = blob.read_vec(off, n)?;
            let range = format!("{}-{}", off, off + n - 1);
            let response = client.send(
                step,
                Method::PATCH,
                location.clone(),
                &[
                    (CONTENT_TYPE, "application/octet-stream"),
                    (CONTENT_RANGE, &range),
                ],
                Some(&data),
                false,
            )?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(client.status_error(&format!("{step}: bytes {range}"), response));
            }
            location = location_or(client, &response, step, location)?;
            off += n;
            progress.blob(&desc.digest, desc.size, off);
        }
    }
    location
        .query_pairs_mut()
        .append_pair("digest", &desc.digest.to_string());
    let body = last.as_deref().unwrap_or(&[]);
    let len = body.len().to_string();
    let response = client.send(
        step,
        Method::PUT,
        location,
        &[
            (CONTENT_TYPE, "application/octet-stream"),
            (CONTENT_LENGTH, &len),
        ],
        Some(body),
        false,
    )?;
    if response.status() != StatusCode::CREATED {
        return Err(client.status_error(step, response));
    }
    progress.blob(&desc.digest, desc.size, desc.size);
    Ok(())
}

/// The next upload URL: the answer's Location, or the current one when it names none.
fn location_or(
    client: &Client,
    response: &reqwest::blocking::Response,
    step: &str,
    current: Url,
) -> Result<Url> {
    if response.headers().contains_key(LOCATION) {
        location(client, response, step)
    } else {
        Ok(current)
    }
}

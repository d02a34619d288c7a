//! `docker save` tarballs, presented as an image with a Docker v2 schema 2 manifest.
//!
//! The tarball's `manifest.json` lists, per image, a config file, its `RepoTags` and its layer
//! files. Older Docker writes `<id>/layer.tar` (uncompressed, duplicates as symlinks) and
//! `<id>.json`; Docker 25+ and skopeo write content-addressed `blobs/sha256/<hex>` files. Both
//! are read the same way: the config's digest is that of its bytes, each layer's media type is
//! chosen from its magic bytes and its digest is computed by reading it once at open.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::blob::{BlobRead, FileBlob};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result, ResultExt};
use crate::layer::{detect_compression, Compression};

use super::descriptor::Descriptor;
use super::layout::display_name;
use super::media;
use super::reference::ArchiveSelector;
use super::source::{check_size, ImageSource, MAX_JSON_BLOB};
use super::tar_index::TarIndex;

/// One image of `manifest.json`.
#[derive(Deserialize)]
struct ArchiveImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

enum Stored {
    /// Synthesised JSON (the manifest) or a config read at open.
    Memory(Arc<Vec<u8>>),
    /// A member of the tarball.
    Member(String),
}

/// An image of a `docker save` tarball.
pub struct DockerArchiveSource {
    tar: TarIndex,
    name: String,
    root: Descriptor,
    blobs: HashMap<Digest, Stored>,
}

impl DockerArchiveSource {
    /// Index the tarball at `file` and synthesise the manifest of the image `selector` picks
    /// (the first one when `None`).
    pub fn open(file: &Path, selector: Option<ArchiveSelector>) -> Result<Self> {
        let sel_text = selector.as_ref().map(|s| match s {
            ArchiveSelector::RepoTag(t) => t.clone(),
            ArchiveSelector::Index(i) => format!("@{i}"),
        });
        let name = display_name("docker-archive", file, sel_text.as_deref());
        let tar = TarIndex::open(file).context(&name)?;
        let images = read_manifest_json(&tar).context(&name)?;
        let image = select_image(&images, selector.as_ref()).context(&name)?;
        let mut blobs = HashMap::new();

        let config_bytes = read_member(&tar, &image.config, MAX_JSON_BLOB).context(&name)?;
        let config = Descriptor::new(
            media::DOCKER_CONFIG,
            Digest::of(&config_bytes),
            config_bytes.len() as u64,
        );
        blobs.insert(config.digest, Stored::Memory(Arc::new(config_bytes)));

        let mut layers = Vec::with_capacity(image.layers.len());
        for path in &image.layers {
            let layer =
                describe_layer(&tar, path).with_context(|| format!("{name}: layer `{path}`"))?;
            blobs.insert(layer.digest, Stored::Member(path.clone()));
            layers.push(layer);
        }

        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": config.to_value(),
            "layers": layers.iter().map(Descriptor::to_value).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).expect("a JSON value always serialises");
        let root = Descriptor::new(
            media::DOCKER_MANIFEST,
            Digest::of(&manifest),
            manifest.len() as u64,
        );
        blobs.insert(root.digest, Stored::Memory(Arc::new(manifest)));
        Ok(DockerArchiveSource {
            tar,
            name,
            root,
            blobs,
        })
    }
}

fn read_member(tar: &TarIndex, path: &str, limit: u64) -> Result<Vec<u8>> {
    let blob = tar
        .member(path)?
        .ok_or_else(|| Error::format(format!("`{path}` is not in the archive")))?;
    if blob.len() > limit {
        return Err(Error::Unsupported(format!(
            "`{path}`: {} bytes is too large",
            blob.len()
        )));
    }
    blob.read_vec(0, blob.len())
}

fn read_manifest_json(tar: &TarIndex) -> Result<Vec<ArchiveImage>> {
    let bytes = read_member(tar, "manifest.json", MAX_JSON_BLOB).map_err(|e| {
        if tar.paths().any(|p| p == "index.json") {
            e.context("not a docker-archive (it looks like an OCI archive: use oci-archive:)")
        } else {
            e
        }
    })?;
    let images: Vec<ArchiveImage> =
        serde_json::from_slice(&bytes).map_err(|e| Error::format(format!("manifest.json: {e}")))?;
    if images.is_empty() {
        return Err(Error::format("manifest.json lists no images"));
    }
    Ok(images)
}

fn select_image<'a>(
    images: &'a [ArchiveImage],
    selector: Option<&ArchiveSelector>,
) -> Result<&'a ArchiveImage> {
    match selector {
        None => Ok(&images[0]),
        Some(ArchiveSelector::Index(i)) => images.get(*i).ok_or_else(|| {
            Error::Invalid(format!(
                "image @{i} requested, manifest.json lists {}",
                images.len()
            ))
        }),
        Some(ArchiveSelector::RepoTag(want)) => {
            let want = canonical_repo_tag(want);
            let tags = || images.iter().flat_map(|i| i.repo_tags.iter().flatten());
            images
                .iter()
                .find(|i| {
                    i.repo_tags
                        .iter()
                        .flatten()
                        .any(|t| canonical_repo_tag(t) == want)
                })
                .ok_or_else(|| {
                    let all: Vec<&str> = tags().map(String::as_str).collect();
                    Error::Invalid(format!(
                        "no image tagged `{want}` (tags: {})",
                        if all.is_empty() {
                            "none".into()
                        } else {
                            all.join(", ")
                        }
                    ))
                })
        }
    }
}

/// `busybox` → `docker.io/library/busybox:latest`, so that Docker's short names and skopeo's
/// full ones compare equal.
fn canonical_repo_tag(s: &str) -> String {
    let last_slash = s.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match s[last_slash..].rfind(':') {
        Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
        None => (s, "latest"),
    };
    let (host, path) = match repo.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => {
            (h, p.to_string())
        }
        _ => ("docker.io", repo.to_string()),
    };
    let host = if host == "index.docker.io" {
        "docker.io"
    } else {
        host
    };
    let path = if host == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    format!("{host}/{path}:{tag}")
}

fn describe_layer(tar: &TarIndex, path: &str) -> Result<Descriptor> {
    let blob = tar
        .member(path)?
        .ok_or_else(|| Error::format("not in the archive"))?;
    let mut head = [0u8; 4];
    let n = head.len().min(blob.len() as usize);
    blob.read_at(0, &mut head[..n])?;
    let media_type = match detect_compression(&head[..n]) {
        Compression::Gzip => media::DOCKER_LAYER_GZIP,
        Compression::Zstd => media::OCI_LAYER_TAR_ZSTD,
        Compression::None => media::DOCKER_LAYER_TAR,
    };
    Ok(Descriptor::new(media_type, hash_blob(&blob)?, blob.len()))
}

fn hash_blob(blob: &FileBlob) -> Result<Digest> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < blob.len() {
        let n = (blob.len() - off).min(buf.len() as u64) as usize;
        blob.read_at(off, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hasher.finish())
}

impl ImageSource for DockerArchiveSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn root(&self) -> Result<Descriptor> {
        Ok(self.root.clone())
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn BlobRead>> {
        let blob: Box<dyn BlobRead> = match self.blobs.get(&desc.digest) {
            Some(Stored::Memory(bytes)) => Box::new(Arc::clone(bytes)),
            Some(Stored::Member(path)) => Box::new(
                self.tar
                    .member(path)?
                    .ok_or_else(|| Error::format(format!("{}: `{path}` vanished", self.name)))?,
            ),
            None => {
                return Err(Error::format(format!(
                    "{}: no blob {} in this image",
                    self.name, desc.digest
                )))
            }
        };
        check_size(blob.as_ref(), desc, &self.name)?;
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_compare_canonically() {
        assert_eq!(
            canonical_repo_tag("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            canonical_repo_tag("index.docker.io/library/busybox:1"),
            "docker.io/library/busybox:1"
        );
        assert_eq!(
            canonical_repo_tag("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(canonical_repo_tag("org/x:v"), "docker.io/org/x:v");
    }
}

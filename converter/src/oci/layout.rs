//! Reading OCI image layouts: a directory (`oci:`) or the same tree inside a tar (`oci-archive:`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::blob::{BlobRead, FileBlob};
use crate::error::{Error, Result, ResultExt};

use super::descriptor::Descriptor;
use super::image::Index;
use super::source::{check_size, ImageSource};
use super::ANNOTATION_REF_NAME;

/// Files of a layout by relative path (`index.json`, `blobs/sha256/<hex>`): a directory, the
/// members of an indexed tar, or a layout served over HTTP (in the lazy filesystem's crate).
pub trait LayoutFiles: Send + Sync {
    /// The file at `path`, or `None` if there is none. `size`, when known (a blob's
    /// descriptor), lets a remote implementation skip asking for it; the caller still checks it.
    fn open(&self, path: &str, size: Option<u64>) -> Result<Option<Box<dyn BlobRead>>>;
}

struct DirFiles(PathBuf);

impl LayoutFiles for DirFiles {
    fn open(&self, path: &str, _size: Option<u64>) -> Result<Option<Box<dyn BlobRead>>> {
        let full = self.0.join(path);
        match std::fs::metadata(&full) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("stat {}", full.display()), e)),
            Ok(m) if !m.is_file() => Err(Error::format(format!(
                "{} is not a regular file",
                full.display()
            ))),
            Ok(_) => Ok(Some(Box::new(FileBlob::open(&full)?))),
        }
    }
}

/// An image in an OCI image layout, selected by tag.
pub struct LayoutSource {
    files: Box<dyn LayoutFiles>,
    name: String,
    tag: Option<String>,
}

impl LayoutSource {
    /// The layout directory `dir`; `tag` selects a manifest of `index.json` by its
    /// `org.opencontainers.image.ref.name` annotation.
    pub fn open_dir(dir: &Path, tag: Option<String>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "oci:{}: not a directory",
                dir.display()
            )));
        }
        let name = display_name("oci", dir, tag.as_deref());
        LayoutSource::new(Box::new(DirFiles(dir.to_path_buf())), name, tag)
    }

    /// A layout over `files`, checking its `oci-layout` marker; `name` is for messages.
    pub fn new(files: Box<dyn LayoutFiles>, name: String, tag: Option<String>) -> Result<Self> {
        let src = LayoutSource { files, name, tag };
        let marker = src.small_file("oci-layout")?.ok_or_else(|| {
            Error::format(format!(
                "{}: not an OCI image layout (no `oci-layout` file)",
                src.name
            ))
        })?;
        let v: serde_json::Value = serde_json::from_slice(&marker)
            .map_err(|e| Error::format(format!("{}: oci-layout: {e}", src.name)))?;
        match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(ver) if ver.starts_with("1.") => Ok(src),
            other => Err(Error::Unsupported(format!(
                "{}: unsupported imageLayoutVersion {other:?}",
                src.name
            ))),
        }
    }

    fn small_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(blob) = self.files.open(path, None).context(&self.name)? else {
            return Ok(None);
        };
        if blob.len() > super::MAX_JSON_BLOB {
            return Err(Error::Unsupported(format!(
                "{}: {path} is too large",
                self.name
            )));
        }
        Ok(Some(blob.read_vec(0, blob.len())?))
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> Result<Index> {
        let bytes = self
            .small_file("index.json")?
            .ok_or_else(|| Error::format(format!("{}: no index.json", self.name)))?;
        Index::from_json(&bytes).with_context(|| format!("{}: index.json", self.name))
    }
}

/// `transport:path[:tag]` for messages.
pub(crate) fn display_name(transport: &str, path: &Path, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("{transport}:{}:{t}", path.display()),
        None => format!("{transport}:{}", path.display()),
    }
}

/// Pick the `index.json` entry `tag` names, or the only entry when there is no tag.
pub(crate) fn select_tagged(index: &Index, tag: Option<&str>, name: &str) -> Result<Descriptor> {
    let tags = || {
        let t: Vec<&str> = index
            .descriptors
            .iter()
            .filter_map(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str))
            .collect();
        if t.is_empty() {
            "none".to_string()
        } else {
            t.join(", ")
        }
    };
    let picked: Vec<&Descriptor> = match tag {
        Some(tag) => index
            .descriptors
            .iter()
            .filter(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(tag))
            .collect(),
        None => index.descriptors.iter().collect(),
    };
    match (picked.as_slice(), tag) {
        ([one], _) => Ok((*one).clone()),
        ([], Some(tag)) => Err(Error::Invalid(format!(
            "{name}: no image tagged `{tag}` (tags: {})",
            tags()
        ))),
        ([], None) => Err(Error::format(format!("{name}: index.json lists no images"))),
        (_, Some(tag)) => Err(Error::Unsupported(format!(
            "{name}: {} images are tagged `{tag}`; lazypull needs exactly one",
            picked.len()
        ))),
        (_, None) => Err(Error::Invalid(format!(
            "{name}: index.json lists {} images; name one by tag (tags: {})",
            picked.len(),
            tags()
        ))),
    }
}

fn blob_path(desc: &Descriptor) -> String {
    format!("blobs/sha256/{}", desc.digest.hex())
}

impl ImageSource for LayoutSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn root(&self) -> Result<Descriptor> {
        select_tagged(&self.index()?, self.tag.as_deref(), &self.name)
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn BlobRead>> {
        let blob = self
            .files
            .open(&blob_path(desc), Some(desc.size))?
            .ok_or_else(|| {
                Error::format(format!("{}: blob {} is missing", self.name, desc.digest))
            })?;
        check_size(blob.as_ref(), desc, &self.name)?;
        Ok(blob)
    }
}

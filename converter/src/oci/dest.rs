//! Writing an OCI image layout atomically.
//!
//! Blobs are written into a staging directory beside the destination (same filesystem, so the
//! final moves are renames). [`LayoutDest::commit`] either renames the whole staging tree into
//! place (new destination) or moves new blobs into the existing layout and then replaces its
//! `index.json` with one rename. Until then the destination is untouched; a dropped, uncommitted
//! `LayoutDest` removes its staging directory.

use std::fs::{self, File};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::{NamedTempFile, TempDir};

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};

use super::descriptor::Descriptor;
use super::media;
use super::ANNOTATION_REF_NAME;

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An OCI image layout being written; see the module docs.
pub struct LayoutDest {
    dir: PathBuf,
    tag: Option<String>,
    staging: TempDir,
    /// Whether `dir` already holds a layout to merge into.
    existing: bool,
}

/// The digest and size of a blob written with a [`BlobWriter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrittenBlob {
    pub digest: Digest,
    pub size: u64,
}

impl WrittenBlob {
    /// A descriptor for this blob with the given media type.
    pub fn descriptor(&self, media_type: &str) -> Descriptor {
        Descriptor::new(media_type, self.digest, self.size)
    }
}

impl LayoutDest {
    /// Prepare to write a layout at `dir`, tagging the committed root with `tag`. `dir` must not
    /// exist, be an empty directory, or be an OCI layout (which is then added to); anything else
    /// is refused here, before any work is done.
    pub fn create(dir: &Path, tag: Option<String>) -> Result<Self> {
        if let Some(t) = &tag {
            if !super::reference::is_tag(t) {
                return Err(Error::Invalid(format!("`{t}` is not a valid tag")));
            }
        }
        let shown = dir.display();
        let existing = match fs::metadata(dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(format!("stat {shown}"), e)),
            Ok(m) if !m.is_dir() => {
                return Err(Error::Invalid(format!(
                    "{shown} exists and is not a directory"
                )))
            }
            Ok(_) if dir.join("oci-layout").is_file() && dir.join("index.json").is_file() => true,
            Ok(_) => {
                let mut entries =
                    fs::read_dir(dir).map_err(|e| Error::io(format!("list {shown}"), e))?;
                if entries.next().is_some() {
                    return Err(Error::Invalid(format!(
                        "{shown} exists and is neither empty nor an OCI image layout"
                    )));
                }
                false
            }
        };
        let name = dir
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{shown}: not a usable directory name")))?
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent)
            .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.lazypull-tmp-"))
            .tempdir_in(&parent)
            .map_err(|e| {
                Error::io(
                    format!("create a staging directory in {}", parent.display()),
                    e,
                )
            })?;
        let blobs = staging.path().join("blobs/sha256");
        fs::create_dir_all(&blobs)
            .map_err(|e| Error::io(format!("create {}", blobs.display()), e))?;
        Ok(LayoutDest {
            dir: dir.to_path_buf(),
            tag,
            staging,
            existing,
        })
    }

    /// The staging directory; writers may put their temporary files here.
    pub fn staging_dir(&self) -> &Path {
        self.staging.path()
    }

    /// A writer for a new blob; [`BlobWriter::finish`] names it by digest.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let tmp = NamedTempFile::with_prefix_in(".blob-", self.staging.path()).map_err(|e| {
            Error::io(
                format!("create a blob in {}", self.staging.path().display()),
                e,
            )
        })?;
        Ok(BlobWriter {
            inner: HashingWriter::new(BufWriter::new(tmp)),
            blobs: self.staging.path().join("blobs/sha256"),
        })
    }

    /// Store `bytes` (a manifest, index or config) as a blob.
    pub fn put_bytes(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(|e| Error::io("write a blob to the staging directory", e))?;
        Ok(w.finish()?.descriptor(media_type))
    }

    /// Publish the layout with `root` (a manifest or index written through this `LayoutDest`)
    /// as its entry for the tag.
    pub fn commit(self, root: Descriptor) -> Result<()> {
        if !media::is_manifest(&root.media_type) && !media::is_index(&root.media_type) {
            return Err(Error::Invalid(format!(
                "the root of a layout must be a manifest or index, not {}",
                root.media_type
            )));
        }
        let hex = root.digest.hex();
        let staged_root = self.staging.path().join("blobs/sha256").join(&hex);
        if !staged_root.is_file() && !self.dir.join("blobs/sha256").join(&hex).is_file() {
            return Err(Error::Invalid(format!(
                "root {} was not written to the layout",
                root.digest
            )));
        }
        let mut entry = root;
        if let Some(tag) = &self.tag {
            entry
                .annotations
                .insert(ANNOTATION_REF_NAME.to_string(), tag.clone());
        }
        if self.existing {
            self.merge_into_existing(entry)
        } else {
            self.publish_new(entry)
        }
    }

    fn publish_new(self, entry: Descriptor) -> Result<()> {
        let staging = self.staging.path();
        write_synced(&staging.join("oci-layout"), OCI_LAYOUT)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [entry.to_value()],
        });
        write_synced(&staging.join("index.json"), &to_json(&index))?;
        sync_dir(&staging.join("blobs/sha256"))?;
        sync_dir(staging)?;
        let staging = self.staging.keep();
        // An empty destination directory is replaced by the rename; a non-empty one fails it.
        if let Err(e) = fs::rename(&staging, &self.dir) {
            let _ = fs::remove_dir_all(&staging);
            return Err(Error::io(
                format!("rename {} to {}", staging.display(), self.dir.display()),
                e,
            ));
        }
        sync_parent(&self.dir)
    }

    fn merge_into_existing(self, entry: Descriptor) -> Result<()> {
        let index_path = self.dir.join("index.json");
        let old = fs::read(&index_path)
            .map_err(|e| Error::io(format!("read {}", index_path.display()), e))?;
        let mut index: Value = serde_json::from_slice(&old)
            .map_err(|e| Error::format(format!("{}: {e}", index_path.display())))?;
        let manifests = index
            .as_object_mut()
            .ok_or_else(|| Error::format(format!("{}: not a JSON object", index_path.display())))?
            .entry("manifests")
            .or_insert_with(|| Value::Array(Vec::new()));
        let list = manifests.as_array_mut().ok_or_else(|| {
            Error::format(format!(
                "{}: `manifests` is not an array",
                index_path.display()
            ))
        })?;
        // Same tag → replace. Untagged → replace an untagged entry of the same digest only.
        let tag = entry.annotations.get(ANNOTATION_REF_NAME).cloned();
        list.retain(|m| {
            let m_tag = m
                .get("annotations")
                .and_then(|a| a.get(ANNOTATION_REF_NAME))
                .and_then(Value::as_str);
            match (&tag, m_tag) {
                (Some(t), Some(mt)) => t != mt,
                (None, None) => {
                    m.get("digest").and_then(Value::as_str) != Some(&entry.digest.to_string())
                }
                _ => true,
            }
        });
        list.push(entry.to_value());

        let dst_blobs = self.dir.join("blobs/sha256");
        fs::create_dir_all(&dst_blobs)
            .map_err(|e| Error::io(format!("create {}", dst_blobs.display()), e))?;
        let staged_blobs = self.staging.path().join("blobs/sha256");
        let listing = fs::read_dir(&staged_blobs)
            .map_err(|e| Error::io(format!("list {}", staged_blobs.display()), e))?;
        for item in listing {
            let item =
                item.map_err(|e| Error::io(format!("list {}", staged_blobs.display()), e))?;
            let target = dst_blobs.join(item.file_name());
            // Content-addressed: an existing blob of the same name already has these bytes.
            if target.exists() {
                continue;
            }
            fs::rename(item.path(), &target).map_err(|e| {
                Error::io(
                    format!("rename {} to {}", item.path().display(), target.display()),
                    e,
                )
            })?;
        }
        sync_dir(&dst_blobs)?;

        let tmp_index = self.staging.path().join("index.json");
        write_synced(&tmp_index, &to_json(&index))?;
        fs::rename(&tmp_index, &index_path).map_err(|e| {
            Error::io(
                format!("rename {} to {}", tmp_index.display(), index_path.display()),
                e,
            )
        })?;
        sync_dir(&self.dir)
        // Dropping `self.staging` removes what is left of the staging directory.
    }
}

/// A blob being written: hashes as it goes, lands in `blobs/sha256/<hex>` on [`BlobWriter::finish`].
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<NamedTempFile>>,
    blobs: PathBuf,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.inner.written()
    }

    /// Flush, fsync and move the blob to its content address.
    pub fn finish(self) -> Result<WrittenBlob> {
        let (buf, digest, size) = self.inner.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| Error::io("flush a staged blob", e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(format!("fsync {}", tmp.path().display()), e))?;
        let target = self.blobs.join(digest.hex());
        if !target.exists() {
            tmp.persist(&target).map_err(|e| {
                Error::io(
                    format!("rename a staged blob to {}", target.display()),
                    e.error,
                )
            })?;
        }
        Ok(WrittenBlob { digest, size })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serialises")
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let what = || format!("write {}", path.display());
    let mut f = File::create(path).map_err(|e| Error::io(what(), e))?;
    f.write_all(bytes).map_err(|e| Error::io(what(), e))?;
    f.sync_all().map_err(|e| Error::io(what(), e))
}

/// Make renames into `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

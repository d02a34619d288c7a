//! The image source trait and how a reference opens one.

use crate::blob::BlobRead;
use crate::digest::Digest;
use crate::error::{Error, Result};

use super::descriptor::Descriptor;
use super::layout::LayoutSource;
use super::reference::ImageRef;

/// The largest JSON blob (manifest, index, config) a source reads into memory. Real ones are a few
/// KiB to a few MiB; the bound keeps a hostile descriptor from making us allocate gigabytes.
pub const MAX_JSON_BLOB: u64 = 64 << 20;

/// Where an image comes from: a root descriptor and the blobs it (transitively) references.
///
/// Implementations exist for OCI layout directories, OCI archives and `docker save` tarballs; a
/// registry client implements the same four methods with HTTP (the root is the resolved tag, blobs
/// are range-fetched).
pub trait ImageSource: Send + Sync {
    /// The source as the user would write it, for messages (`oci:/tmp/x:latest`).
    fn name(&self) -> String;

    /// The manifest or index the reference selects.
    fn root(&self) -> Result<Descriptor>;

    /// A blob for range reads, typically a layer. Its size is checked against `desc.size`, but its
    /// digest is not (that needs a full read): whoever streams it through must compare.
    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn BlobRead>>;

    /// Like [`ImageSource::blob`], telling `progress` how many bytes have arrived when the
    /// source has to download the blob first (a registry); local sources never call it.
    fn blob_with_progress(
        &self,
        desc: &Descriptor,
        progress: &dyn Fn(u64),
    ) -> Result<Box<dyn BlobRead>> {
        let _ = progress;
        self.blob(desc)
    }

    /// A small blob (manifest, index, config) read whole; its size and digest are verified and
    /// blobs larger than [`MAX_JSON_BLOB`] are refused.
    fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        // Refuse an oversized descriptor before touching the blob at all.
        check_json_size(desc, &self.name())?;
        let blob = self.blob(desc)?;
        read_verified(blob.as_ref(), desc, &self.name())
    }
}

/// Open the source `r` names, with default registry options (see [`open_source_with`]).
pub fn open_source(r: &ImageRef) -> Result<Box<dyn ImageSource>> {
    #[cfg(feature = "registry")]
    return open_source_with(r, &crate::registry::RegistryOptions::default());
    #[cfg(not(feature = "registry"))]
    open_source_inner(r)
}

/// Open the source `r` names; a registry is reached with `opts`.
#[cfg(feature = "registry")]
pub fn open_source_with(
    r: &ImageRef,
    opts: &crate::registry::RegistryOptions,
) -> Result<Box<dyn ImageSource>> {
    if let ImageRef::Registry { reference } = r {
        let parsed: crate::registry::Reference = reference.parse()?;
        return Ok(Box::new(crate::registry::RegistrySource::open(
            &parsed, opts,
        )?));
    }
    open_source_inner(r)
}

fn open_source_inner(r: &ImageRef) -> Result<Box<dyn ImageSource>> {
    match r {
        ImageRef::Layout { dir, tag } => Ok(Box::new(LayoutSource::open_dir(dir, tag.clone())?)),
        #[cfg(feature = "write")]
        ImageRef::OciArchive { file, tag } => Ok(Box::new(super::tar_index::open_oci_archive(
            file,
            tag.clone(),
        )?)),
        #[cfg(feature = "write")]
        ImageRef::DockerArchive { file, selector } => Ok(Box::new(
            super::docker_archive::DockerArchiveSource::open(file, selector.clone())?,
        )),
        #[cfg(not(feature = "write"))]
        ImageRef::OciArchive { .. } | ImageRef::DockerArchive { .. } => Err(Error::Unsupported(
            format!("{r}: reading archives needs lazypull-converter's `write` feature"),
        )),
        ImageRef::Registry { reference } => Err(Error::Unsupported(format!(
            "{reference}: reading registries needs lazypull-converter's `registry` feature"
        ))),
    }
}

/// Read all of `blob`, checking size and digest against `desc`.
pub(crate) fn read_verified(
    blob: &dyn BlobRead,
    desc: &Descriptor,
    source: &str,
) -> Result<Vec<u8>> {
    let what = || format!("{source}: blob {}", desc.digest);
    check_json_size(desc, source)?;
    check_size(blob, desc, source)?;
    let bytes = blob.read_vec(0, desc.size)?;
    let actual = Digest::of(&bytes);
    if actual != desc.digest {
        return Err(Error::DigestMismatch {
            what: what(),
            expected: desc.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(bytes)
}

/// Fail if `desc` is too large to be read whole.
pub(crate) fn check_json_size(desc: &Descriptor, source: &str) -> Result<()> {
    if desc.size > MAX_JSON_BLOB {
        return Err(Error::Unsupported(format!(
            "{source}: blob {}: {} bytes is larger than the {} MiB allowed for a manifest, \
             index or config",
            desc.digest,
            desc.size,
            MAX_JSON_BLOB >> 20
        )));
    }
    Ok(())
}

/// Fail unless `blob` has the size `desc` promises.
pub(crate) fn check_size(blob: &dyn BlobRead, desc: &Descriptor, source: &str) -> Result<()> {
    if blob.len() != desc.size {
        return Err(Error::format(format!(
            "{source}: blob {}: descriptor says {} bytes, the blob has {}",
            desc.digest,
            desc.size,
            blob.len()
        )));
    }
    Ok(())
}

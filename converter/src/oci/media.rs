//! Media types of OCI and Docker (v2 schema 2) images, and how lazypull classifies them.
//!
//! OCI names follow the image-spec (`media-types.md`); Docker names follow the distribution
//! project's "Image Manifest V2, Schema 2". lazypull reads both and always writes OCI.

use crate::error::{Error, Result};
use crate::layer::Compression;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI empty descriptor content (`{}`), used by artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// OCI layer: uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer: gzip-compressed tar.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer: zstd-compressed tar.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable layer (deprecated in image-spec 1.1 but still met): uncompressed tar.
pub const OCI_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable layer: gzip-compressed tar.
pub const OCI_NONDIST_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable layer: zstd-compressed tar.
pub const OCI_NONDIST_TAR_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (the Docker counterpart of an OCI index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer: gzip-compressed tar.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker layer: uncompressed tar. Not in the schema 2 spec, but what tools (and lazypull's
/// docker-archive source) use for the plain tars of a `docker save` tarball.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign layer (Windows base layers): gzip-compressed tar, fetched from `urls`.
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker schema 1 manifests: recognised only to refuse them with a clear message.
pub const DOCKER_SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker schema 1 manifest.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Whether `mt` is an index (OCI index or Docker manifest list).
pub fn is_index(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
}

/// Whether `mt` is an image manifest (OCI or Docker v2 schema 2).
pub fn is_manifest(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

/// Whether `mt` is an image config (OCI or Docker).
pub fn is_config(mt: &str) -> bool {
    mt == OCI_CONFIG || mt == DOCKER_CONFIG
}

/// The compression a layer media type announces, or `None` if `mt` is not a known layer type.
/// Only a hint: layer readers detect compression from magic bytes.
pub fn layer_compression_hint(mt: &str) -> Option<Compression> {
    LayerMediaType::classify(mt).ok().map(|l| l.compression)
}

/// The OCI media type equivalent to `mt`; OCI and unknown types are returned unchanged.
pub fn to_oci(mt: &str) -> &str {
    match mt {
        DOCKER_MANIFEST => OCI_MANIFEST,
        DOCKER_MANIFEST_LIST => OCI_INDEX,
        DOCKER_CONFIG => OCI_CONFIG,
        DOCKER_LAYER_GZIP => OCI_LAYER_TAR_GZIP,
        DOCKER_LAYER_TAR => OCI_LAYER_TAR,
        DOCKER_FOREIGN_LAYER_GZIP => OCI_NONDIST_TAR_GZIP,
        other => other,
    }
}

/// What a layer's media type says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerMediaType {
    /// The compression the media type announces.
    pub compression: Compression,
    /// A non-distributable (OCI) or foreign (Docker) layer: registries may not hold it, and it is
    /// usually fetched from the descriptor's `urls`. Converters should pass it through untouched.
    pub non_distributable: bool,
}

impl LayerMediaType {
    /// Classify a layer media type; anything that is not a (possibly compressed) tar layer,
    /// encrypted layers included, is an error naming the type.
    pub fn classify(mt: &str) -> Result<Self> {
        let (compression, non_distributable) = match mt {
            OCI_LAYER_TAR | DOCKER_LAYER_TAR => (Compression::None, false),
            OCI_LAYER_TAR_GZIP | DOCKER_LAYER_GZIP => (Compression::Gzip, false),
            OCI_LAYER_TAR_ZSTD => (Compression::Zstd, false),
            OCI_NONDIST_TAR => (Compression::None, true),
            OCI_NONDIST_TAR_GZIP | DOCKER_FOREIGN_LAYER_GZIP => (Compression::Gzip, true),
            OCI_NONDIST_TAR_ZSTD => (Compression::Zstd, true),
            _ if mt.contains("+encrypted") => {
                return Err(Error::Unsupported(format!(
                    "encrypted layers are not supported (media type `{mt}`)"
                )))
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "unknown layer media type `{mt}`"
                )))
            }
        };
        Ok(LayerMediaType {
            compression,
            non_distributable,
        })
    }

    /// The OCI media type of a layer with this classification.
    pub fn oci_media_type(self) -> &'static str {
        match (self.non_distributable, self.compression) {
            (false, Compression::None) => OCI_LAYER_TAR,
            (false, Compression::Gzip) => OCI_LAYER_TAR_GZIP,
            (false, Compression::Zstd) => OCI_LAYER_TAR_ZSTD,
            (true, Compression::None) => OCI_NONDIST_TAR,
            (true, Compression::Gzip) => OCI_NONDIST_TAR_GZIP,
            (true, Compression::Zstd) => OCI_NONDIST_TAR_ZSTD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_types_map_to_oci() {
        assert_eq!(to_oci(DOCKER_MANIFEST), OCI_MANIFEST);
        assert_eq!(to_oci(DOCKER_MANIFEST_LIST), OCI_INDEX);
        assert_eq!(to_oci(DOCKER_CONFIG), OCI_CONFIG);
        assert_eq!(to_oci(DOCKER_LAYER_GZIP), OCI_LAYER_TAR_GZIP);
        assert_eq!(to_oci("application/x-unknown"), "application/x-unknown");
        assert!(is_index(DOCKER_MANIFEST_LIST) && is_index(OCI_INDEX));
        assert!(is_manifest(DOCKER_MANIFEST) && !is_manifest(OCI_INDEX));
    }

    #[test]
    fn layers_are_classified() {
        let l = LayerMediaType::classify(DOCKER_FOREIGN_LAYER_GZIP).unwrap();
        assert!(l.non_distributable);
        assert_eq!(l.oci_media_type(), OCI_NONDIST_TAR_GZIP);
        assert_eq!(
            layer_compression_hint(OCI_LAYER_TAR_ZSTD),
            Some(Compression::Zstd)
        );
        assert_eq!(layer_compression_hint("application/vnd.in-toto+json"), None);
        let err = LayerMediaType::classify("application/vnd.in-toto+json").unwrap_err();
        assert!(err.to_string().contains("application/vnd.in-toto+json"));
        let err = LayerMediaType::classify("application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
            .unwrap_err();
        assert!(err.to_string().contains("encrypted"));
    }
}

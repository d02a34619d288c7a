//! Content descriptors and platforms, as they appear in manifests, indexes and `index.json`.
//!
//! These are our own types rather than `oci_spec::image::{Descriptor, Platform}` because the
//! converter rewrites descriptors and must not drop what it does not understand: oci-spec keeps
//! no unknown fields (`data`, future additions, vendor extensions) and maps some architectures
//! lossily. Every field we do not name is kept in `extra` and written back out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};

use super::media;

/// A content descriptor: what a blob is, its digest and size, and optional metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Fields lazypull does not interpret (`urls`, `artifactType`, `data`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Descriptor {
    /// A descriptor with just the required fields.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
            extra: Map::new(),
        }
    }

    /// Parse one descriptor from JSON, naming `what` on error.
    pub fn from_value(value: &Value, what: &str) -> Result<Self> {
        Descriptor::deserialize(value).map_err(|e| Error::format(format!("{what}: {e}")))
    }

    /// This descriptor as a JSON value (unknown fields included).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a descriptor always serialises")
    }

    /// The same descriptor with its media type mapped to the OCI equivalent
    /// (Docker manifest → OCI manifest, …); everything else is kept.
    pub fn to_oci(&self) -> Self {
        let mut d = self.clone();
        d.media_type = media::to_oci(&self.media_type).to_string();
        d
    }

    /// The same descriptor with `annotations` added (replacing values of equal keys).
    pub fn with_annotations<I, K, V>(mut self, annotations: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        for (k, v) in annotations {
            self.annotations.insert(k.into(), v.into());
        }
        self
    }

    /// Whether this index entry is a BuildKit attestation manifest (provenance, SBOM) rather than
    /// a runnable image; its layers are in-toto JSON, not tars.
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
    }

    /// A short form for messages: `application/…+json sha256:0123456789ab`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.media_type, self.digest.short())
    }
}

/// The platform an image in an index runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Fields lazypull does not interpret (`features`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Platform {
    /// A platform with just os, architecture and variant.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            architecture: architecture.to_string(),
            os: os.to_string(),
            os_version: None,
            os_features: None,
            variant: variant.map(str::to_string),
            extra: Map::new(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let d = Digest::of(b"x");
        let json = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d.to_string(),
            "size": 12,
            "urls": ["https://example.com/x"],
            "artifactType": "application/x-test",
            "data": "eA==",
            "annotations": {"b": "2", "a": "1"},
            "platform": {"architecture": "armbe", "os": "linux", "os.version": "1",
                         "features": ["f"]}
        });
        let desc = Descriptor::from_value(&json, "test").unwrap();
        assert_eq!(desc.platform.as_ref().unwrap().architecture, "armbe");
        let back = desc.to_value();
        for key in ["urls", "artifactType", "data", "annotations", "platform"] {
            assert_eq!(back[key], json[key], "{key}");
        }
        let bad = serde_json::json!({"mediaType": "x", "digest": "sha256:12", "size": 1});
        let err = Descriptor::from_value(&bad, "index.json manifests[0]").unwrap_err();
        assert!(
            err.to_string().starts_with("index.json manifests[0]: "),
            "{err}"
        );
    }
}

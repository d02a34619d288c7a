//! Indexes and manifests: parsing what a source serves, selecting platforms, and building the
//! converted image's JSON.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::error::{Error, Result, ResultExt};

use super::descriptor::{Descriptor, Platform};
use super::media;
use super::source::ImageSource;

/// An image index (OCI index or Docker manifest list).
#[derive(Clone, Debug)]
pub struct Index {
    /// The `manifests` entries, in order.
    pub descriptors: Vec<Descriptor>,
    /// The whole document, unknown fields included.
    pub raw: Value,
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Clone, Debug)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The whole document, unknown fields included.
    pub raw: Value,
}

/// A parsed root or child of an image.
// Nodes are built one per blob read and matched on at once; boxing the manifest would only add
// a deref to every caller.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum ImageNode {
    Index(Index),
    Manifest(Manifest),
}

impl ImageNode {
    /// Read and parse the blob `desc` names, dispatching on its media type.
    pub fn read(src: &dyn ImageSource, desc: &Descriptor) -> Result<Self> {
        let ctx = || format!("{}: {}", src.name(), desc.describe());
        if media::is_index(&desc.media_type) {
            let bytes = src.read_blob(desc).with_context(ctx)?;
            Ok(ImageNode::Index(
                Index::from_json(&bytes).with_context(ctx)?,
            ))
        } else if media::is_manifest(&desc.media_type) {
            let bytes = src.read_blob(desc).with_context(ctx)?;
            Ok(ImageNode::Manifest(
                Manifest::from_json(&bytes).with_context(ctx)?,
            ))
        } else if desc.media_type == media::DOCKER_SCHEMA1_MANIFEST
            || desc.media_type == media::DOCKER_SCHEMA1_SIGNED
        {
            Err(Error::Unsupported(format!(
                "{}: Docker schema 1 manifests are not supported (convert with a newer tool first)",
                ctx()
            )))
        } else {
            Err(Error::Unsupported(format!(
                "{}: not an image manifest or index",
                ctx()
            )))
        }
    }
}

fn parse_object(bytes: &[u8], what: &str) -> Result<Value> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| Error::format(format!("{what}: {e}")))?;
    if !v.is_object() {
        return Err(Error::format(format!("{what}: not a JSON object")));
    }
    if let Some(sv) = v.get("schemaVersion") {
        if sv != 2 {
            return Err(Error::Unsupported(format!(
                "{what}: schemaVersion {sv} (only 2 is supported)"
            )));
        }
    }
    Ok(v)
}

impl Index {
    /// Parse an index (also an OCI layout's `index.json`).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let raw = parse_object(bytes, "index")?;
        let descriptors = match raw.get("manifests") {
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| Descriptor::from_value(v, &format!("index: manifests[{i}]")))
                .collect::<Result<_>>()?,
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(Error::format("index: `manifests` is not an array")),
        };
        Ok(Index { descriptors, raw })
    }

    /// The entries `filter` selects, in order. Entries without a platform never match a filter.
    pub fn select(&self, filter: &PlatformFilter) -> Vec<&Descriptor> {
        self.descriptors
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| filter.matches(p)))
            .collect()
    }

    /// This index as OCI JSON with `manifests` replaced: every other field of the source index
    /// (annotations, subject, vendor fields) is kept, `mediaType` becomes the OCI index type.
    pub fn to_oci_json(&self, manifests: &[Descriptor]) -> Vec<u8> {
        let mut out = Map::new();
        out.insert("schemaVersion".into(), 2.into());
        out.insert("mediaType".into(), media::OCI_INDEX.into());
        out.insert(
            "manifests".into(),
            manifests.iter().map(Descriptor::to_value).collect(),
        );
        merge_rest(&mut out, &self.raw);
        to_json(out)
    }
}

impl Manifest {
    /// Parse an image manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let raw = parse_object(bytes, "manifest")?;
        let config = Descriptor::from_value(
            raw.get("config")
                .ok_or_else(|| Error::format("manifest: no `config`"))?,
            "manifest: config",
        )?;
        let layers = match raw.get("layers") {
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| Descriptor::from_value(v, &format!("manifest: layers[{i}]")))
                .collect::<Result<_>>()?,
            _ => {
                return Err(Error::format(
                    "manifest: `layers` is missing or not an array",
                ))
            }
        };
        Ok(Manifest {
            config,
            layers,
            raw,
        })
    }

    /// This manifest as OCI JSON with `config` and `layers` replaced: annotations and every other
    /// field of the source manifest are kept, `mediaType` becomes the OCI manifest type.
    pub fn to_oci_json(&self, config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
        let mut out = Map::new();
        out.insert("schemaVersion".into(), 2.into());
        out.insert("mediaType".into(), media::OCI_MANIFEST.into());
        out.insert("config".into(), config.to_value());
        out.insert(
            "layers".into(),
            layers.iter().map(Descriptor::to_value).collect(),
        );
        merge_rest(&mut out, &self.raw);
        to_json(out)
    }
}

/// Copy the source document's fields that `out` does not already set, in their order.
fn merge_rest(out: &mut Map<String, Value>, raw: &Value) {
    if let Value::Object(src) = raw {
        for (k, v) in src {
            if !out.contains_key(k) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
}

fn to_json(map: Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&Value::Object(map)).expect("a JSON value always serialises")
}

/// A `--platform os/arch[/variant]` selector.
///
/// Matching is deliberately simple: os and architecture must be equal (after mapping the common
/// aliases `x86_64` → `amd64`, `aarch64` → `arm64`); a filter without a variant matches every
/// variant, and a filter with one matches that variant, or an entry without a variant when the
/// filter's is the architecture's only one in practice (`arm64/v8`, `amd64/v1`). `linux/arm` thus
/// matches v6 and v7 entries alike; say `linux/arm/v7` to pick one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformFilter {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformFilter {
    /// Whether an index entry's platform is one this filter selects.
    pub fn matches(&self, p: &Platform) -> bool {
        if p.os != self.os || normalise_arch(&p.architecture) != self.architecture {
            return false;
        }
        match (&self.variant, &p.variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => default_variant(&self.architecture) == Some(want.as_str()),
        }
    }
}

fn normalise_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "amd64" => Some("v1"),
        _ => None,
    }
}

impl FromStr for PlatformFilter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(Error::Invalid(format!(
                "platform `{s}`: expected OS/ARCH[/VARIANT], such as linux/arm64"
            )));
        }
        Ok(PlatformFilter {
            os: parts[0].to_string(),
            architecture: normalise_arch(parts[1]).to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for PlatformFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    use crate::digest::Digest;

    fn desc(mt: &str, data: &[u8]) -> Descriptor {
        Descriptor::new(mt, Digest::of(data), data.len() as u64)
    }

    #[test]
    fn platforms_match_as_documented() {
        let f: PlatformFilter = "linux/aarch64".parse().unwrap();
        assert!(f.matches(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(f.matches(&Platform::new("linux", "arm64", None)));
        assert!(!f.matches(&Platform::new("linux", "amd64", None)));
        let f: PlatformFilter = "linux/arm64/v8".parse().unwrap();
        assert!(f.matches(&Platform::new("linux", "arm64", None)));
        let f: PlatformFilter = "linux/arm/v7".parse().unwrap();
        assert!(!f.matches(&Platform::new("linux", "arm", Some("v6"))));
        assert!(!f.matches(&Platform::new("linux", "arm", None)));
        assert!("linux".parse::<PlatformFilter>().is_err());
        assert!("linux/amd64/v1/x".parse::<PlatformFilter>().is_err());
    }

    #[test]
    fn manifest_output_keeps_source_fields() {
        let cfg = desc(media::DOCKER_CONFIG, b"{}");
        let layer = desc(media::DOCKER_LAYER_GZIP, b"layer");
        let src = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": cfg.to_value(),
            "layers": [layer.to_value()],
            "annotations": {"org.example": "kept"},
            "x-vendor": [1, 2]
        });
        let m = Manifest::from_json(&serde_json::to_vec(&src).unwrap()).unwrap();
        assert_eq!(m.layers, vec![layer.clone()]);
        let new_layer = desc(media::OCI_LAYER_TAR_GZIP, b"new")
            .with_annotations([("containerd.io/snapshot/stargz/toc.digest", "x")]);
        let out = m.to_oci_json(&cfg.to_oci(), std::slice::from_ref(&new_layer));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["mediaType"], media::OCI_MANIFEST);
        assert_eq!(v["config"]["mediaType"], media::OCI_CONFIG);
        assert_eq!(v["layers"][0], new_layer.to_value());
        assert_eq!(v["annotations"]["org.example"], "kept");
        assert_eq!(v["x-vendor"], serde_json::json!([1, 2]));
        assert!(Manifest::from_json(b"{\"schemaVersion\":1}").is_err());
        assert!(Manifest::from_json(b"[]").is_err());
    }

    #[test]
    fn index_selects_and_rebuilds() {
        let mut amd = desc(media::OCI_MANIFEST, b"a");
        amd.platform = Some(Platform::new("linux", "amd64", None));
        let mut arm = desc(media::OCI_MANIFEST, b"b");
        arm.platform = Some(Platform::new("linux", "arm64", Some("v8")));
        let att = desc(media::OCI_MANIFEST, b"c")
            .with_annotations([("vnd.docker.reference.type", "attestation-manifest")]);
        let src = serde_json::json!({
            "schemaVersion": 2, "mediaType": media::DOCKER_MANIFEST_LIST,
            "manifests": [amd.to_value(), arm.to_value(), att.to_value()],
            "annotations": {"k": "v"}
        });
        let idx = Index::from_json(src.to_string().as_bytes()).unwrap();
        assert!(idx.descriptors[2].is_attestation());
        let f: PlatformFilter = "linux/arm64".parse().unwrap();
        let picked: Vec<_> = idx.select(&f).into_iter().cloned().collect();
        assert_eq!(picked, vec![arm.clone()]);
        let v: Value = serde_json::from_slice(&idx.to_oci_json(&picked)).unwrap();
        assert_eq!(v["mediaType"], media::OCI_INDEX);
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(v["annotations"]["k"], "v");
    }
}

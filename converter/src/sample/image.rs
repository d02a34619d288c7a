//! A minimal OCI image layout writer for sample images (the real OCI code lives in `oci/`).
//!
//! It writes `oci-layout`, content-addressed blobs, one config, one manifest and an `index.json`
//! entry named by the tag. Every JSON document is produced from fixed inputs, so the same layers
//! give the same manifest digest.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::{write::GzEncoder, Compression};
use serde_json::{json, Value};

use super::entry::{build_tar, Entry};
use super::random_bytes;
use crate::digest::Digest;
use crate::error::{Error, Result};

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The index annotation that names a manifest by tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Fixed creation time of sample images.
const CREATED: &str = "2024-01-01T00:00:00Z";

/// A layer to put in a layout: its blob as stored, its media type and its diffID.
#[derive(Clone, Debug)]
pub struct ImageLayer {
    pub media_type: String,
    pub blob: Vec<u8>,
    pub diff_id: Digest,
    /// What made the layer, for the config's history.
    pub created_by: String,
}

impl ImageLayer {
    /// A gzip layer from an uncompressed tar (deterministic: no name, mtime 0 in the gzip header).
    pub fn gzip(tar: &[u8], created_by: &str) -> Self {
        let mut enc = GzEncoder::new(Vec::new(), Compression::new(6));
        enc.write_all(tar).expect("gzip into memory");
        ImageLayer {
            media_type: MEDIA_TYPE_LAYER_GZIP.into(),
            blob: enc.finish().expect("gzip into memory"),
            diff_id: Digest::of(tar),
            created_by: created_by.into(),
        }
    }

    /// An uncompressed layer.
    pub fn tar(tar: &[u8], created_by: &str) -> Self {
        ImageLayer {
            media_type: MEDIA_TYPE_LAYER_TAR.into(),
            blob: tar.to_vec(),
            diff_id: Digest::of(tar),
            created_by: created_by.into(),
        }
    }
}

/// A blob written to a layout, as a descriptor names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleBlob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// What [`write_oci_layout`] wrote.
#[derive(Clone, Debug)]
pub struct SampleImage {
    pub dir: PathBuf,
    pub tag: String,
    pub manifest: SampleBlob,
    pub config: SampleBlob,
    pub layers: Vec<SampleBlob>,
    pub diff_ids: Vec<Digest>,
}

impl SampleImage {
    /// Path of a blob of this layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.dir, digest)
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

fn write_blob(dir: &Path, media_type: &str, data: &[u8]) -> Result<SampleBlob> {
    let digest = Digest::of(data);
    let path = blob_path(dir, &digest);
    fs::write(&path, data).map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    Ok(SampleBlob {
        media_type: media_type.into(),
        digest,
        size: data.len() as u64,
    })
}

fn descriptor(blob: &SampleBlob) -> Value {
    json!({"mediaType": blob.media_type, "digest": blob.digest.to_string(), "size": blob.size})
}

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON values always serialise")
}

/// Write an OCI image layout at `dir` (created if missing) holding one linux/amd64 image of
/// `layers`, tagged `tag`. An existing `index.json` keeps its other entries; one with the same tag
/// is replaced.
pub fn write_oci_layout(dir: &Path, tag: &str, layers: &[ImageLayer]) -> Result<SampleImage> {
    let io = |what: &str, e| Error::io(format!("{what} {}", dir.display()), e);
    fs::create_dir_all(dir.join("blobs").join("sha256")).map_err(|e| io("create", e))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| io("write oci-layout in", e))?;

    let mut layer_blobs = Vec::new();
    for layer in layers {
        layer_blobs.push(write_blob(dir, &layer.media_type, &layer.blob)?);
    }
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
    let history: Vec<Value> = layers
        .iter()
        .map(|l| json!({"created": CREATED, "created_by": l.created_by, "comment": "lazypull sample"}))
        .collect();
    let config = json!({
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "Labels": {"org.lazypull.sample": tag},
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        },
        "history": history,
    });
    let config_blob = write_blob(dir, MEDIA_TYPE_CONFIG, &to_json(&config))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": descriptor(&config_blob),
        "layers": layer_blobs.iter().map(descriptor).collect::<Vec<_>>(),
    });
    let manifest_blob = write_blob(dir, MEDIA_TYPE_MANIFEST, &to_json(&manifest))?;

    let index_path = dir.join("index.json");
    let mut entries: Vec<Value> = match fs::read(&index_path) {
        Ok(bytes) => {
            let index: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::format(format!("{}: {e}", index_path.display())))?;
            index["manifests"].as_array().cloned().unwrap_or_default()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io("read index.json in", e)),
    };
    entries.retain(|m| m["annotations"][REF_NAME] != tag);
    let mut entry = descriptor(&manifest_blob);
    entry["annotations"] = json!({ REF_NAME: tag });
    entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
    entries.push(entry);
    let index = json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries});
    fs::write(&index_path, to_json(&index)).map_err(|e| io("write index.json in", e))?;

    Ok(SampleImage {
        dir: dir.to_path_buf(),
        tag: tag.into(),
        manifest: manifest_blob,
        config: config_blob,
        layers: layer_blobs,
        diff_ids,
    })
}

/// Write the demo image: a base layer (a small root filesystem with many small files), an app
/// layer (a medium file, symlinks, a hardlink) and a top layer (a whiteout and a config file).
pub fn write_sample_image(dir: &Path, tag: &str) -> Result<SampleImage> {
    let layers = [
        ("base", base_layer()),
        ("app", app_layer()),
        ("top", top_layer()),
    ];
    let mut image_layers = Vec::new();
    for (name, entries) in layers {
        let tar = build_tar(&entries)?;
        image_layers.push(ImageLayer::gzip(
            &tar,
            &format!("lazypull sample: {name} layer"),
        ));
    }
    write_oci_layout(dir, tag, &image_layers)
}

fn base_layer() -> Vec<Entry> {
    // Each directory's entries contiguous, as tar writes a walked tree.
    let mut e = vec![
        Entry::dir("bin/"),
        Entry::dir("etc/"),
        Entry::file("etc/hostname", b"lazypull-sample\n".to_vec()),
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
        ),
        Entry::file("etc/obsolete.conf", b"removed by the top layer\n".to_vec()),
        Entry::dir("tmp/").mode(0o1777),
        Entry::dir("var/"),
        Entry::dir("usr/"),
        Entry::dir("usr/bin/"),
        Entry::dir("usr/share/"),
        Entry::dir("usr/share/doc/"),
    ];
    for pkg in 0..40 {
        e.push(Entry::dir(format!("usr/share/doc/pkg{pkg:02}/")));
        for f in 0..25 {
            let text = format!("package {pkg} document {f}\n").repeat(1 + (pkg * f) % 40);
            e.push(Entry::file(
                format!("usr/share/doc/pkg{pkg:02}/doc{f:02}.txt"),
                text,
            ));
        }
    }
    e
}

fn app_layer() -> Vec<Entry> {
    // Half text, half noise: compresses a little, like a real binary.
    let mut medium = b"lazypull sample application\n".repeat(40_000);
    medium.extend(random_bytes(0xa99, 1 << 20));
    vec![
        Entry::dir("app/"),
        Entry::file("app/server", medium).mode(0o755),
        Entry::file("app/config.json", br#"{"listen": ":8080"}"#.to_vec()),
        Entry::symlink("usr/bin/server", "../../app/server"),
        Entry::symlink("app/current", "server"),
        Entry::hardlink("app/server-hardlink", "app/server"),
    ]
}

fn top_layer() -> Vec<Entry> {
    vec![
        Entry::dir("etc/"),
        Entry::file("etc/.wh.obsolete.conf", Vec::new()),
        Entry::file("etc/motd", b"converted by lazypull\n".to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn sample_image_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ia = write_sample_image(a.path(), "demo").unwrap();
        let ib = write_sample_image(b.path(), "demo").unwrap();
        assert_eq!(ia.manifest, ib.manifest);
        assert_eq!(
            fs::read(a.path().join("index.json")).unwrap(),
            fs::read(b.path().join("index.json")).unwrap()
        );
    }

    #[test]
    fn sample_image_layout_is_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let image = write_sample_image(dir.path(), "demo").unwrap();
        assert_eq!(image.layers.len(), 3);
        let layout = read_json(&dir.path().join("oci-layout"));
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");

        // Every blob is stored under its own digest.
        for entry in fs::read_dir(dir.path().join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let data = fs::read(entry.path()).unwrap();
            assert_eq!(Digest::of(&data).hex(), entry.file_name().to_str().unwrap());
        }

        let index = read_json(&dir.path().join("index.json"));
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"][REF_NAME], "demo");
        assert_eq!(m["digest"], image.manifest.digest.to_string());
        let manifest = read_json(&image.blob_path(&image.manifest.digest));
        assert_eq!(
            manifest["config"]["digest"],
            image.config.digest.to_string()
        );
        let config = read_json(&image.blob_path(&image.config.digest));
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(diff_ids.len(), 3);
        assert_eq!(config["history"].as_array().unwrap().len(), 3);
        assert_eq!(config["config"]["Labels"]["org.lazypull.sample"], "demo");

        // diffID = sha256 of the decompressed layer.
        for (layer, diff_id) in manifest["layers"].as_array().unwrap().iter().zip(diff_ids) {
            assert_eq!(layer["mediaType"], MEDIA_TYPE_LAYER_GZIP);
            let digest: Digest = layer["digest"].as_str().unwrap().parse().unwrap();
            let blob = fs::read(image.blob_path(&digest)).unwrap();
            assert_eq!(layer["size"], blob.len() as u64);
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut tar)
                .unwrap();
            assert_eq!(diff_id, &Digest::of(&tar).to_string());
        }
    }

    #[test]
    fn a_second_tag_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        write_sample_image(dir.path(), "one").unwrap();
        write_sample_image(dir.path(), "two").unwrap();
        write_sample_image(dir.path(), "two").unwrap();
        let index = read_json(&dir.path().join("index.json"));
        let tags: Vec<_> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["annotations"][REF_NAME].as_str().unwrap().to_string())
            .collect();
        assert_eq!(tags, ["one", "two"]);
    }
}

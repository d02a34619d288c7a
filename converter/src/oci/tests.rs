//! Sources, walking and the layout destination, end to end on small hand-built images.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;
use crate::digest::Digest;
use crate::error::Error;

fn layer_tar(content: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", content.as_bytes())
        .unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn config(arch: &str, diff_ids: &[Digest]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Labels": {"l": "v"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "test"}]
    }))
    .unwrap()
}

fn manifest(mt: &str, config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": mt,
        "config": config, "layers": layers,
        "annotations": {"org.example": "source"}
    }))
    .unwrap()
}

/// Write `bytes` as a blob of the layout at `dir`.
fn put(dir: &Path, mt: &str, bytes: &[u8]) -> Descriptor {
    let d = Descriptor::new(mt, Digest::of(bytes), bytes.len() as u64);
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("blobs/sha256").join(d.digest.hex()), bytes).unwrap();
    d
}

fn tagged(d: &Descriptor, tag: &str) -> Descriptor {
    d.clone().with_annotations([(ANNOTATION_REF_NAME, tag)])
}

/// A layout with `multi` (an OCI index of amd64 and arm64 images) and `docker` (a Docker v2s2
/// manifest). Returns the arm64 layer's bytes.
fn build_layout(dir: &Path) -> Vec<u8> {
    let mut platforms = Vec::new();
    let mut arm_layer = Vec::new();
    for arch in ["amd64", "arm64"] {
        let tar = layer_tar(arch);
        let layer = put(dir, media::OCI_LAYER_TAR_GZIP, &gzip(&tar));
        let cfg = put(dir, media::OCI_CONFIG, &config(arch, &[Digest::of(&tar)]));
        let mut m = put(
            dir,
            media::OCI_MANIFEST,
            &manifest(media::OCI_MANIFEST, &cfg, &[layer]),
        );
        m.platform = Some(Platform::new(
            "linux",
            arch,
            (arch == "arm64").then_some("v8"),
        ));
        platforms.push(m);
        arm_layer = gzip(&tar);
    }
    let index = put(
        dir,
        media::OCI_INDEX,
        &serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX,
                                     "manifests": platforms}))
        .unwrap(),
    );
    let tar = layer_tar("docker");
    let layer = put(dir, media::DOCKER_LAYER_GZIP, &gzip(&tar));
    let cfg = put(
        dir,
        media::DOCKER_CONFIG,
        &config("amd64", &[Digest::of(&tar)]),
    );
    let docker = put(
        dir,
        media::DOCKER_MANIFEST,
        &manifest(media::DOCKER_MANIFEST, &cfg, &[layer]),
    );
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index_json = json!({"schemaVersion": 2,
        "manifests": [tagged(&index, "multi"), tagged(&docker, "docker")]});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index_json).unwrap(),
    )
    .unwrap();
    arm_layer
}

fn open(r: &str) -> Box<dyn ImageSource> {
    open_source(&r.parse().unwrap()).unwrap_or_else(|e| panic!("{r}: {e}"))
}

fn manifest_of(src: &dyn ImageSource, desc: &Descriptor) -> Manifest {
    match ImageNode::read(src, desc).unwrap() {
        ImageNode::Manifest(m) => m,
        ImageNode::Index(_) => panic!("{}: expected a manifest", desc.describe()),
    }
}

fn read_all(src: &dyn ImageSource, desc: &Descriptor) -> Vec<u8> {
    let b = src.blob(desc).unwrap();
    b.read_vec(0, b.len()).unwrap()
}

#[test]
fn layout_walks_index_to_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let arm_layer = build_layout(tmp.path());
    let src = open(&format!("oci:{}:multi", tmp.path().display()));
    let root = src.root().unwrap();
    let ImageNode::Index(index) = ImageNode::read(src.as_ref(), &root).unwrap() else {
        panic!("expected an index");
    };
    let arm = index.select(&"linux/arm64".parse().unwrap());
    assert_eq!(arm.len(), 1);
    let m = manifest_of(src.as_ref(), arm[0]);
    assert_eq!(read_all(src.as_ref(), &m.layers[0]), arm_layer);
    let cfg = src.read_blob(&m.config).unwrap();
    assert!(String::from_utf8(cfg).unwrap().contains("arm64"));

    let src = open(&format!("oci:{}:docker", tmp.path().display()));
    let m = manifest_of(src.as_ref(), &src.root().unwrap());
    assert_eq!(m.layers[0].media_type, media::DOCKER_LAYER_GZIP);
    assert_eq!(m.config.media_type, media::DOCKER_CONFIG);
}

#[test]
fn layout_errors_name_tags_and_digests() {
    let tmp = tempfile::tempdir().unwrap();
    build_layout(tmp.path());
    for r in [
        format!("oci:{}:nope", tmp.path().display()),
        format!("oci:{}", tmp.path().display()),
    ] {
        let err = open(&r).root().unwrap_err().to_string();
        assert!(err.contains("tags: multi, docker"), "{err}");
    }

    let src = open(&format!("oci:{}:docker", tmp.path().display()));
    let m = manifest_of(src.as_ref(), &src.root().unwrap());
    let path = tmp.path().join("blobs/sha256").join(m.config.digest.hex());
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = src.read_blob(&m.config).unwrap_err();
    assert!(matches!(err.root(), Error::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&m.config.digest.to_string()),
        "{err}"
    );

    let mut huge = m.config.clone();
    huge.size = MAX_JSON_BLOB + 1;
    let err = src.read_blob(&huge).unwrap_err();
    assert!(matches!(err.root(), Error::Unsupported(_)), "{err}");
    let mut wrong_size = m.layers[0].clone();
    wrong_size.size += 1;
    assert!(src.blob(&wrong_size).is_err());
    // A registry source is opened without a request; the first one is `root()`.
    let registry = open_source(&"docker://example.com/x:1".parse().unwrap()).unwrap();
    assert_eq!(registry.name(), "docker://example.com/x:1");
}

/// Tar up a directory tree (the layout), optionally gzip-compressed.
fn tar_dir(dir: &Path, out: &Path, compress: bool) {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    let bytes = b.into_inner().unwrap();
    fs::write(out, if compress { gzip(&bytes) } else { bytes }).unwrap();
}

#[test]
fn oci_archive_reads_like_a_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let arm_layer = build_layout(&layout);
    for compress in [false, true] {
        let file = tmp.path().join(format!("a{compress}.tar"));
        tar_dir(&layout, &file, compress);
        let src = open(&format!("oci-archive:{}:multi", file.display()));
        let ImageNode::Index(index) = ImageNode::read(src.as_ref(), &src.root().unwrap()).unwrap()
        else {
            panic!("expected an index");
        };
        let m = manifest_of(src.as_ref(), &index.descriptors[1]);
        assert_eq!(read_all(src.as_ref(), &m.layers[0]), arm_layer);
    }
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, path, data).unwrap();
}

/// A two-image `docker save` tarball: `busybox:latest` in the old layout (plain `layer.tar`s, a
/// duplicate as a symlink) and `other:1` in the new one (`blobs/sha256`, a gzip layer).
fn build_docker_archive(out: &Path) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    let old_layer = layer_tar("old");
    append(&mut b, "aaaa/layer.tar", &old_layer);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_cksum();
    b.append_link(&mut h, "bbbb/layer.tar", "../aaaa/layer.tar")
        .unwrap();
    let old_cfg = config("amd64", &[Digest::of(&old_layer), Digest::of(&old_layer)]);
    append(&mut b, "cccc.json", &old_cfg);

    let new_layer = gzip(&layer_tar("new"));
    let new_cfg = config("amd64", &[Digest::of(&layer_tar("new"))]);
    let (lhex, chex) = (Digest::of(&new_layer).hex(), Digest::of(&new_cfg).hex());
    append(&mut b, &format!("blobs/sha256/{lhex}"), &new_layer);
    append(&mut b, &format!("blobs/sha256/{chex}"), &new_cfg);

    let manifest = json!([
        {"Config": "cccc.json", "RepoTags": ["busybox:latest"],
         "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"]},
        {"Config": format!("blobs/sha256/{chex}"), "RepoTags": ["docker.io/library/other:1"],
         "Layers": [format!("blobs/sha256/{lhex}")]}
    ]);
    append(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    fs::write(out, b.into_inner().unwrap()).unwrap();
    (old_layer, new_layer)
}

#[test]
fn docker_archive_old_and_new_style() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("d.tar");
    let (old_layer, new_layer) = build_docker_archive(&file);

    let src = open(&format!("docker-archive:{}", file.display()));
    let root = src.root().unwrap();
    assert_eq!(root.media_type, media::DOCKER_MANIFEST);
    let m = manifest_of(src.as_ref(), &root);
    assert_eq!(m.layers.len(), 2);
    assert_eq!(m.layers[0], m.layers[1]);
    assert_eq!(m.layers[0].media_type, media::DOCKER_LAYER_TAR);
    assert_eq!(m.layers[0].digest, Digest::of(&old_layer));
    assert_eq!(read_all(src.as_ref(), &m.layers[1]), old_layer);
    let cfg = src.read_blob(&m.config).unwrap();
    let rewritten = rewrite_config(&cfg, &[Digest::of(b"a"), Digest::of(b"b")]).unwrap();
    assert!(String::from_utf8(rewritten)
        .unwrap()
        .contains(&Digest::of(b"b").to_string()));

    let src = open(&format!("docker-archive:{}:other:1", file.display()));
    let m = manifest_of(src.as_ref(), &src.root().unwrap());
    assert_eq!(m.layers[0].media_type, media::DOCKER_LAYER_GZIP);
    assert_eq!(read_all(src.as_ref(), &m.layers[0]), new_layer);
    assert!(
        open(&format!("docker-archive:{}:@1", file.display()))
            .root()
            .unwrap()
            == src.root().unwrap()
    );

    let err = open_source(
        &format!("docker-archive:{}:missing:x", file.display())
            .parse()
            .unwrap(),
    );
    let err = err.err().unwrap().to_string();
    assert!(
        err.contains("busybox:latest, docker.io/library/other:1"),
        "{err}"
    );
}

/// A one-layer image written through a `LayoutDest`; returns the manifest descriptor.
fn write_image(dest: &LayoutDest, content: &str) -> Descriptor {
    let tar = layer_tar(content);
    let mut w = dest.blob_writer().unwrap();
    w.write_all(&gzip(&tar)).unwrap();
    let layer = w.finish().unwrap().descriptor(media::OCI_LAYER_TAR_GZIP);
    let cfg = dest
        .put_bytes(media::OCI_CONFIG, &config("amd64", &[Digest::of(&tar)]))
        .unwrap();
    dest.put_bytes(
        media::OCI_MANIFEST,
        &manifest(media::OCI_MANIFEST, &cfg, &[layer]),
    )
    .unwrap()
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn layout_dest_commits_and_merges_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let dest = LayoutDest::create(&dir, Some("a".into())).unwrap();
    let a = write_image(&dest, "a");
    assert!(!dir.exists(), "nothing is visible before commit");
    dest.commit(a.clone()).unwrap();
    let src = open(&format!("oci:{}:a", dir.display()));
    assert_eq!(src.root().unwrap().digest, a.digest);
    manifest_of(src.as_ref(), &a);

    for (tag, content) in [("b", "b"), ("a", "a2")] {
        let dest = LayoutDest::create(&dir, Some(tag.into())).unwrap();
        let m = write_image(&dest, content);
        dest.commit(m).unwrap();
    }
    let index = LayoutSource::open_dir(&dir, None).unwrap().index().unwrap();
    let tags: Vec<_> = index
        .descriptors
        .iter()
        .map(|d| d.annotations[ANNOTATION_REF_NAME].as_str())
        .collect();
    assert_eq!(tags, ["b", "a"]);
    assert_ne!(index.descriptors[1].digest, a.digest, "tag a was replaced");
    let src = open(&format!("oci:{}:b", dir.display()));
    let m = manifest_of(src.as_ref(), &src.root().unwrap());
    assert_eq!(read_all(src.as_ref(), &m.layers[0]), gzip(&layer_tar("b")));

    // An abandoned conversion leaves the destination and its parent as they were.
    let before_dir = listing(&dir.join("blobs/sha256"));
    let before_parent = listing(tmp.path());
    let index_before = fs::read(dir.join("index.json")).unwrap();
    let dest = LayoutDest::create(&dir, Some("c".into())).unwrap();
    write_image(&dest, "c");
    assert!(dest.staging_dir().starts_with(tmp.path()));
    drop(dest);
    assert_eq!(listing(&dir.join("blobs/sha256")), before_dir);
    assert_eq!(listing(tmp.path()), before_parent);
    assert_eq!(fs::read(dir.join("index.json")).unwrap(), index_before);
}

#[test]
fn layout_dest_refuses_what_it_would_clobber() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(LayoutDest::create(&file, None).is_err());
    let full = tmp.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("something"), b"x").unwrap();
    let err = LayoutDest::create(&full, None).err().unwrap().to_string();
    assert!(
        err.contains("neither empty nor an OCI image layout"),
        "{err}"
    );
    // An empty directory is fine, and ends up holding the layout.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let dest = LayoutDest::create(&empty, None).unwrap();
    let m = write_image(&dest, "e");
    let stray = Descriptor::new(media::OCI_MANIFEST, Digest::of(b"never written"), 13);
    assert!(LayoutDest::create(&empty, None)
        .unwrap()
        .commit(stray)
        .is_err());
    dest.commit(m.clone()).unwrap();
    assert_eq!(open(&format!("oci:{}", empty.display())).root().unwrap(), m);
}

/// Runs `skopeo ARGS`, panicking with its stderr on failure.
fn skopeo(args: &[&str]) -> String {
    let out = std::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Layouts we write must satisfy skopeo, and archives skopeo writes must open through our
/// sources with the same layers (by diffID, since docker-archive stores layers uncompressed).
#[test]
fn skopeo_interop() {
    if std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "skopeo is required under CI=true"
        );
        eprintln!("skipping skopeo_interop: skopeo is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let dest = LayoutDest::create(&a, Some("t".into())).unwrap();
    let m = write_image(&dest, "interop");
    dest.commit(m.clone()).unwrap();
    let diff_id = Digest::of(&layer_tar("interop"));

    let inspect: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("oci:{}:t", a.display())])).unwrap();
    assert_eq!(inspect["Digest"], m.digest.to_string());

    let a_ref = format!("oci:{}:t", a.display());
    let b = tmp.path().join("b");
    let c = tmp.path().join("c.tar");
    let d = tmp.path().join("d.tar");
    skopeo(&["copy", &a_ref, &format!("oci:{}:t", b.display())]);
    skopeo(&["copy", &a_ref, &format!("oci-archive:{}:t", c.display())]);
    skopeo(&[
        "copy",
        &a_ref,
        &format!("docker-archive:{}:repo:t", d.display()),
    ]);

    for r in [
        format!("oci:{}:t", b.display()),
        format!("oci-archive:{}:t", c.display()),
        format!("docker-archive:{}:repo:t", d.display()),
        format!("docker-archive:{}", d.display()),
    ] {
        let src = open(&r);
        let man = manifest_of(src.as_ref(), &src.root().unwrap());
        assert_eq!(man.layers.len(), 1, "{r}");
        let cfg: serde_json::Value =
            serde_json::from_slice(&src.read_blob(&man.config).unwrap()).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], diff_id.to_string(), "{r}");
        let layer = read_all(src.as_ref(), &man.layers[0]);
        assert_eq!(Digest::of(&layer), man.layers[0].digest, "{r}");
        let tar = match media::layer_compression_hint(&man.layers[0].media_type) {
            Some(crate::layer::Compression::Gzip) => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer[..]), &mut out)
                    .unwrap();
                out
            }
            _ => layer,
        };
        assert_eq!(Digest::of(&tar), diff_id, "{r}");
    }
}

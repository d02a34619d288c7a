//! `lazypull convert` keeps every layer's meaning: extracting an output blob with
//! `gzip -dc | tar` (or `zstd -dc | tar`) gives the same tree as extracting its input, and the
//! output image's descriptors, annotations and config agree with the blobs.

use std::collections::BTreeSet;
use std::path::Path;

use lazypull_converter::estargz::format::{
    ANNOTATION_TOC_DIGEST, ANNOTATION_UNCOMPRESSED_SIZE, ANNOTATION_ZSTD_MANIFEST_CHECKSUM,
    NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK,
};
use lazypull_converter::sample;
use serde_json::Value;

use crate::util::toc::{read_toc, toc_names};
use crate::util::tree::{assert_same_tree, tar_names};
use crate::util::{
    assert_identical_runs, convert_ok, corpus_layer, decompress, gzip_layout, is_root,
    missing_tool, oci_ref, report_layers, sha256, skip_unless, str_field, Layout, CHUNK,
};

pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Output format under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Estargz,
    ZstdChunked,
}

impl Format {
    pub fn arg(self) -> &'static str {
        match self {
            Format::Estargz => "estargz",
            Format::ZstdChunked => "zstdchunked",
        }
    }
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Estargz => GZIP_LAYER,
            Format::ZstdChunked => ZSTD_LAYER,
        }
    }
}

/// Convert the layout `input:t` to `out:t` with `--chunk-size CHUNK --format F` plus `extra`.
pub fn convert_layout(input: &Path, out: &Path, format: Format, extra: &[&str]) -> Value {
    let chunk = CHUNK.to_string();
    let mut args = vec!["--format", format.arg(), "--chunk-size", &chunk];
    args.extend_from_slice(extra);
    let (src, dst) = (oci_ref(input, "t"), oci_ref(out, "t"));
    args.extend([src.as_str(), dst.as_str()]);
    convert_ok(&args)
}

/// Check the output image against its report and its blobs: descriptors, annotations, diffIDs.
pub fn check_output_image(out: &Layout, report: &Value, format: Format) {
    assert_eq!(report["format"], format.arg(), "report format");
    let index_entry = out.index_entry("t");
    let manifest = out.manifest("t");
    assert_eq!(
        report["root"]["digest"], index_entry["digest"],
        "report root"
    );
    let rm = &report["manifests"][0];
    assert_eq!(
        rm["digest"], index_entry["digest"],
        "report manifest digest"
    );
    assert_eq!(
        rm["config"], manifest["config"]["digest"],
        "report config digest"
    );
    let config = out.json(str_field(&manifest["config"], "digest"));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    let descs = manifest["layers"].as_array().expect("manifest layers");
    let layers = report_layers(report);
    assert_eq!(
        descs.len(),
        layers.len(),
        "manifest and report layer counts"
    );
    assert_eq!(descs.len(), diff_ids.len(), "manifest layers and diff_ids");

    for (i, (desc, layer)) in descs.iter().zip(layers).enumerate() {
        let digest = str_field(desc, "digest");
        let what = format!("layer {i} ({digest})");
        assert_eq!(desc["mediaType"], format.media_type(), "{what} media type");
        assert_eq!(
            layer["mediaType"],
            format.media_type(),
            "{what} report media type"
        );
        assert_eq!(layer["digest"], digest, "{what} report digest");
        let blob = out.blob(digest);
        assert_eq!(sha256(&blob), digest, "{what} blob content");
        assert_eq!(desc["size"], blob.len() as u64, "{what} descriptor size");
        assert_eq!(layer["size"], blob.len() as u64, "{what} report size");

        let raw = decompress(&blob, format.media_type());
        assert_eq!(diff_ids[i], sha256(&raw), "{what}: config diff_id");
        assert_eq!(layer["diffId"], sha256(&raw), "{what}: report diffId");
        assert_eq!(
            layer["uncompressedSize"],
            raw.len() as u64,
            "{what}: uncompressedSize"
        );

        let toc = read_toc(&out.blob_path(digest));
        let ann = &desc["annotations"];
        assert_eq!(
            ann[ANNOTATION_TOC_DIGEST], toc.digest,
            "{what}: toc.digest annotation"
        );
        assert_eq!(layer["tocDigest"], toc.digest, "{what}: report tocDigest");
        assert_eq!(
            ann[ANNOTATION_UNCOMPRESSED_SIZE],
            raw.len().to_string(),
            "{what}: uncompressed-size annotation"
        );
        if format == Format::ZstdChunked {
            assert!(
                ann[ANNOTATION_ZSTD_MANIFEST_CHECKSUM].is_string(),
                "{what}: zstd:chunked manifest checksum annotation in {ann}"
            );
        }
        let entries = toc.toc.entries.iter().filter(|e| e.kind != "chunk").count();
        assert_eq!(layer["entries"], entries as u64, "{what}: report entries");
        assert!(layer["chunks"].as_u64().is_some(), "{what}: report chunks");
        assert!(
            layer["seconds"].as_f64().is_some(),
            "{what}: report seconds"
        );
        assert!(
            layer["sourceDigest"].is_string(),
            "{what}: report sourceDigest"
        );
    }
    assert!(report["seconds"].as_f64().is_some(), "report seconds");
}

/// Convert the corpus layer `name` alone and compare extracted trees.
fn roundtrip(name: &str, format: Format) {
    skip_unless!(
        is_root(),
        "extracting device nodes and foreign owners needs root"
    );
    let decomp = if format == Format::ZstdChunked {
        "zstd"
    } else {
        "gzip"
    };
    let missing = missing_tool(&["tar", "bash", decomp]);
    skip_unless!(missing.is_none(), "{missing:?} is not installed");

    let layer = corpus_layer(name);
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    let image = gzip_layout(&input, "t", &[(name, &layer.tar)]);
    let report = convert_layout(&input, &out, format, &[]);
    let out = Layout::new(&out);
    check_output_image(&out, &report, format);

    let layers = report_layers(&report);
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["sourceDigest"],
        image.layers[0].digest.to_string()
    );
    assert_eq!(layers[0]["sourceSize"], image.layers[0].size);
    assert_eq!(layers[0]["kept"], false);
    let blob = out.blob_path(str_field(&layers[0], "digest"));
    assert_same_tree(
        &layer.tar,
        &blob,
        format.media_type(),
        &tmp.path().join("trees"),
    );
}

macro_rules! roundtrip_tests {
    ($($test:ident: $layer:literal, $format:ident;)*) => {
        $(
            #[test]
            fn $test() {
                roundtrip($layer, Format::$format);
            }
        )*
    };
}

roundtrip_tests! {
    estargz_entry_types: "types", Estargz;
    estargz_pax_records: "pax", Estargz;
    estargz_whiteouts: "whiteouts", Estargz;
    estargz_chunk_boundaries: "chunks", Estargz;
    estargz_many_files: "many-files", Estargz;
    estargz_large_file: "large", Estargz;
    estargz_repeated_entries: "repeated", Estargz;
    estargz_loose_names: "loose-names", Estargz;
    zstdchunked_entry_types: "types", ZstdChunked;
    zstdchunked_pax_records: "pax", ZstdChunked;
    zstdchunked_chunk_boundaries: "chunks", ZstdChunked;
    zstdchunked_repeated_entries: "repeated", ZstdChunked;
    zstdchunked_loose_names: "loose-names", ZstdChunked;
}

/// The demo image (three layers, one whiteout) converts with consistent descriptors.
#[test]
fn sample_image_descriptors() {
    for format in [Format::Estargz, Format::ZstdChunked] {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        sample::write_sample_image(&input, "t").unwrap();
        let report = convert_layout(&input, &out, format, &[]);
        assert_eq!(report_layers(&report).len(), 3);
        check_output_image(&Layout::new(&out), &report, format);
    }
}

/// `--threads 1` and `--threads 2` (and a second run) give byte-identical images.
#[test]
fn output_is_reproducible_across_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let layers: Vec<(&str, &[u8])> = ["types", "chunks", "many-files"]
        .iter()
        .map(|n| (*n, corpus_layer(n).tar.as_slice()))
        .collect();
    gzip_layout(&input, "t", &layers);
    for format in [Format::Estargz, Format::ZstdChunked] {
        let runs: Vec<(Value, Layout)> = [("1", "a"), ("2", "b"), ("2", "c")]
            .iter()
            .map(|(threads, dir)| {
                let out = tmp.path().join(format!("{}-{dir}", format.arg()));
                let report = convert_layout(&input, &out, format, &["--threads", threads]);
                (report, Layout::new(&out))
            })
            .collect();
        assert_identical_runs(&runs, &format!("{format:?}"));
    }
}

/// The TOC order a prefetch list gives: the listed files in list order, each preceded by its
/// not-yet-listed parent directories, then `.prefetch.landmark`, then the rest.
fn expected_prefetch_prefix(listed: &[&str], layer_names: &BTreeSet<String>) -> Vec<String> {
    let mut prefix: Vec<String> = Vec::new();
    for file in listed.iter().filter(|f| layer_names.contains(**f)) {
        let parts: Vec<&str> = file.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if layer_names.contains(&dir) && !prefix.contains(&dir) {
                prefix.push(dir);
            }
        }
        prefix.push(file.to_string());
    }
    prefix.push(PREFETCH_LANDMARK.to_string());
    prefix
}

#[test]
fn prefetch_list_orders_the_toc() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    let names = ["many-files", "types"];
    let layers: Vec<(&str, &[u8])> = names
        .iter()
        .map(|n| (*n, corpus_layer(n).tar.as_slice()))
        .collect();
    gzip_layout(&input, "t", &layers);
    // One path per line; a path missing from the image is skipped.
    let listed = [
        "many/d05/e1/f0035.txt",
        "types/sub/exec",
        "does/not/exist",
        "types/file",
        "many/d00/e0/f0000.txt",
    ];
    let list = tmp.path().join("prefetch.txt");
    std::fs::write(&list, listed.join("\n") + "\n").unwrap();
    let report = convert_layout(
        &input,
        &out,
        Format::Estargz,
        &["--prefetch-list", list.to_str().unwrap()],
    );
    let out = Layout::new(&out);
    for (layer, name) in report_layers(&report).iter().zip(names) {
        let toc = read_toc(&out.blob_path(str_field(layer, "digest")));
        let order = toc_names(&toc.toc);
        let want = expected_prefetch_prefix(&listed, &tar_names(&corpus_layer(name).tar));
        assert_eq!(
            &order[..want.len().min(order.len())],
            want.as_slice(),
            "layer {name}"
        );
        assert!(
            !order.iter().any(|n| n == NO_PREFETCH_LANDMARK),
            "layer {name}: no-prefetch landmark next to a prefetch list"
        );
        let landmark = toc
            .toc
            .entries
            .iter()
            .find(|e| e.name == PREFETCH_LANDMARK)
            .unwrap();
        assert_eq!((landmark.kind.as_str(), landmark.size), ("reg", 1));
    }
}

#[test]
fn no_prefetch_list_puts_the_no_prefetch_landmark_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    gzip_layout(&input, "t", &[("types", &corpus_layer("types").tar)]);
    let report = convert_layout(&input, &out, Format::Estargz, &[]);
    let out = Layout::new(&out);
    let toc = read_toc(&out.blob_path(str_field(&report_layers(&report)[0], "digest")));
    let order = toc_names(&toc.toc);
    assert_eq!(order[0], NO_PREFETCH_LANDMARK);
    assert!(!order.iter().any(|n| n == PREFETCH_LANDMARK));
}

/// Converting an image that is already eStargz keeps its layers and its manifest as they are.
#[test]
fn converting_twice_keeps_layers() {
    for format in [Format::Estargz, Format::ZstdChunked] {
        let tmp = tempfile::tempdir().unwrap();
        let (input, once, twice) = (
            tmp.path().join("in"),
            tmp.path().join("once"),
            tmp.path().join("twice"),
        );
        sample::write_sample_image(&input, "t").unwrap();
        let first = convert_layout(&input, &once, format, &[]);
        let second = convert_layout(&once, &twice, format, &[]);
        for (a, b) in report_layers(&first).iter().zip(report_layers(&second)) {
            assert_eq!(
                b["kept"], true,
                "{format:?}: second conversion re-encoded {b}"
            );
            assert_eq!(b["digest"], a["digest"]);
            assert_eq!(b["sourceDigest"], a["digest"]);
            assert_eq!(b["tocDigest"], a["tocDigest"]);
        }
        assert_eq!(second["root"]["digest"], first["root"]["digest"]);
        check_output_image(&Layout::new(&twice), &second, format);
    }
}

/// The comparison itself: two extractions of one layer agree, and a changed mode, xattr,
/// content, owner or hardlink is caught.
#[test]
fn tree_comparison_catches_differences() {
    use crate::util::tree::{compare, extract_tar, snapshot};
    skip_unless!(
        is_root(),
        "extracting device nodes and foreign owners needs root"
    );
    skip_unless!(
        missing_tool(&["tar", "bash"]).is_none(),
        "GNU tar is not installed"
    );
    let tmp = tempfile::tempdir().unwrap();
    for name in ["types", "pax", "loose-names", "repeated"] {
        let tar = &corpus_layer(name).tar;
        let (a, b) = (
            tmp.path().join(format!("{name}-a")),
            tmp.path().join(format!("{name}-b")),
        );
        extract_tar(tar, &a);
        extract_tar(tar, &b);
        let diff = compare(&snapshot(&a), &snapshot(&b), Some(&tar_names(tar)));
        assert!(diff.0.is_empty(), "{name}: two extractions differ:\n{diff}");
    }
    // The `gzip -dc | tar` path agrees with extracting the tar itself, for every corpus layer.
    for layer in crate::util::corpus() {
        let image = gzip_layout(
            &tmp.path().join(format!("{}-in", layer.name)),
            "t",
            &[(layer.name, &layer.tar)],
        );
        let blob = image.blob_path(&image.layers[0].digest);
        assert_same_tree(
            &layer.tar,
            &blob,
            GZIP_LAYER,
            &tmp.path().join(format!("{}-trees", layer.name)),
        );
    }
    let (a, b) = (tmp.path().join("types-a"), tmp.path().join("types-b"));
    let want = snapshot(&a);
    let t = |p: &str| b.join(p);
    std::fs::set_permissions(
        t("types/setuid"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(t("types/sub/exec"), b"changed").unwrap();
    std::os::unix::fs::lchown(t("types/owned-odd"), Some(1), None).unwrap();
    std::fs::remove_file(t("types/hard-1")).unwrap();
    std::fs::copy(t("types/file"), t("types/hard-1")).unwrap();
    xattr::set(t("types/empty"), "user.added", b"1").unwrap();
    let diff = compare(&want, &snapshot(&b), None);
    let text = diff.to_string();
    for needle in [
        "`types/setuid`: mode",
        "`types/sub/exec`: content",
        "`types/owned-odd`: uid",
        "`types/hard-1`: hardlink group",
        "`types/empty`: xattrs",
    ] {
        assert!(text.contains(needle), "comparison missed {needle}:\n{text}");
    }
    // Implied directories get no metadata comparison; explicit ones do.
    let pax = tmp.path().join("pax-a");
    let tree = snapshot(&pax);
    assert!(
        tree["pax/xattr-dir"].xattrs.contains_key("user.dir-attr"),
        "{:?}",
        tree["pax/xattr-dir"]
    );
    assert!(
        tree["pax/xattr-cap"]
            .xattrs
            .contains_key("security.capability"),
        "{:?}",
        tree["pax/xattr-cap"]
    );
    assert_eq!(tree["pax/mtime-ns-high"].mtime, 1_700_000_006);
}

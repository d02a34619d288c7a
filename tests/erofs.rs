//! `lazypull convert --format erofs`: every layer becomes an EROFS image the kernel mounts and
//! `fsck.erofs` accepts, whose mounted tree is what extracting the source tar gives (with OCI
//! whiteouts in overlayfs form), wrapped in a blob whose chunk index follows the
//! erofs-image-spec (§3.4) as read by this module's own parser (`util::erofs`). Stacked layers
//! mount as an overlay equal to applying the tars in order; prefetch-listed files come first;
//! output is reproducible; hostile links fail cleanly.
//!
//! The `harness` submodule checks the judges themselves (index parser, whiteout translation,
//! overlay merge, mount-and-compare) against hand-made blobs, `mkfs.erofs` and the kernel's
//! overlayfs, so they run before the EROFS writer exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lazypull_converter::sample::{self, random_bytes, ImageLayer, SampleBlob};
use serde_json::Value;

use crate::util::erofs::{
    assert_fsck_ok, check_chunks, mount_support, parse_range, read_chunk_index, reader_snapshot,
    zstd_cli_decompress, ChunkIndex, Framing, Mount, ANN_INDEX_DIGEST, ANN_LP_INDEX_DIGEST,
    ANN_LP_PREFETCH_RANGE, ANN_LP_RANGE, ANN_LP_UNCOMPRESSED_DIGEST, ANN_RANGE, ANN_SOURCE_DIGEST,
    ANN_UNCOMPRESSED_DIGEST,
};
use crate::util::tarbuild::{LayerTar, MTIME};
use crate::util::tree::{
    compare, compare_mtime_nsec, extract_layers_merged, extract_tar, snapshot, tar_names,
    whiteouts_as_overlay, without_markers, Diff, Tree,
};
use crate::util::{
    assert_identical_runs, convert_fails_with, convert_ok, corpus, corpus_layer, gzip_layout,
    layout_state, oci_ref, report_layers, sha256, skip_unless, str_field, wrap_in_image_index,
    Layout, CHUNK,
};

/// The contract's default chunk size for EROFS output.
const DEFAULT_EROFS_CHUNK: u64 = 1 << 20;
/// EROFS block size the contract fixes.
const BLOCK: u64 = 4096;
/// A failing conversion must end well within this.
const FAIL_TIMEOUT: Duration = Duration::from_secs(120);

/// `lazypull convert --format erofs --erofs-compression … [--chunk-size CHUNK] EXTRA… in:t out:t`.
fn convert_erofs(
    input: &Path,
    out: &Path,
    framing: Framing,
    chunk: Option<u64>,
    extra: &[&str],
) -> Value {
    let chunk = chunk.map(|c| c.to_string());
    let mut args = vec!["--format", "erofs", "--erofs-compression", framing.arg()];
    if let Some(c) = &chunk {
        args.extend(["--chunk-size", c.as_str()]);
    }
    args.extend_from_slice(extra);
    let (src, dst) = (oci_ref(input, "t"), oci_ref(out, "t"));
    args.extend([src.as_str(), dst.as_str()]);
    convert_ok(&args)
}

/// One checked output layer.
struct ErofsLayer {
    digest: String,
    /// The decompressed EROFS image, written to a file for fsck and mount.
    image: PathBuf,
    index: ChunkIndex,
    annotations: Value,
}

/// The manifest `tag` of `out` names, through an image index if there is one; each index entry
/// must declare the `erofs` OS feature (spec §5.4).
fn erofs_manifest(out: &Layout, tag: &str) -> Value {
    let entry = out.index_entry(tag);
    if entry["mediaType"] != sample::MEDIA_TYPE_INDEX {
        return out.json(str_field(&entry, "digest"));
    }
    let index = out.json(str_field(&entry, "digest"));
    let manifests = index["manifests"].as_array().expect("index manifests");
    for m in manifests {
        let features = m["platform"]["os.features"].as_array();
        assert!(
            features.is_some_and(|f| f.iter().any(|v| v == "erofs")),
            "index entry {m} lacks platform.os.features [\"erofs\"]"
        );
    }
    out.json(str_field(&manifests[0], "digest"))
}

/// Check the output image against the contract and spec: descriptors, report, annotations, the
/// chunk index (own parser), image bytes, config diff_ids and `os.features`. `sources` are the
/// input layers in order; `chunk` the chunk size asked for. Writes each image to `work`.
fn check_erofs_output(
    out: &Layout,
    report: &Value,
    framing: Framing,
    sources: &[SampleBlob],
    chunk: u64,
    work: &Path,
) -> Vec<ErofsLayer> {
    std::fs::create_dir_all(work).unwrap();
    assert_eq!(report["format"], "erofs", "report format");
    let manifest = erofs_manifest(out, "t");
    let config = out.json(str_field(&manifest["config"], "digest"));
    let features = config["os.features"].as_array();
    assert!(
        features.is_some_and(|f| f.iter().any(|v| v == "erofs")),
        "config os.features lacks \"erofs\": {}",
        config["os.features"]
    );
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    let descs = manifest["layers"].as_array().expect("manifest layers");
    let layers = report_layers(report);
    assert_eq!(
        descs.len(),
        sources.len(),
        "one output layer per input layer"
    );
    assert_eq!(
        layers.len(),
        descs.len(),
        "report and manifest layer counts"
    );
    assert_eq!(diff_ids.len(), descs.len(), "diff_ids and manifest layers");

    let mut checked = Vec::new();
    for (i, ((desc, layer), source)) in descs.iter().zip(layers).zip(sources).enumerate() {
        let digest = str_field(desc, "digest").to_string();
        let what = format!("layer {i} ({digest})");
        let blob_path = out.blob_path(&digest);
        let blob = out.blob(&digest);
        assert_eq!(sha256(&blob), digest, "{what}: blob content");
        assert_eq!(
            desc["mediaType"],
            framing.media_type(),
            "{what}: media type"
        );
        assert_eq!(desc["size"], blob.len() as u64, "{what}: descriptor size");

        let ann = &desc["annotations"];
        let text = |key: &str| -> String {
            ann[key]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: annotation {key} missing in {ann}"))
                .to_string()
        };
        assert_eq!(text(ANN_SOURCE_DIGEST), source.digest.to_string(), "{what}");
        let range = text(ANN_RANGE);
        assert_eq!(text(ANN_LP_RANGE), range, "{what}: mirrored range");
        let index = read_chunk_index(&blob, &range, framing)
            .unwrap_or_else(|e| panic!("{what}: chunk index: {e}"));
        let chunks_image =
            check_chunks(&blob, &index, framing).unwrap_or_else(|e| panic!("{what}: {e}"));
        for c in 0..index.entries.len().saturating_sub(1) {
            assert_eq!(
                index.uncompressed_len(c),
                chunk,
                "{what}: chunk {c} is not --chunk-size long"
            );
        }
        let index_digest = sha256(&index.payload);
        assert_eq!(text(ANN_INDEX_DIGEST), index_digest, "{what}: index digest");
        assert_eq!(text(ANN_LP_INDEX_DIGEST), index_digest, "{what}: mirrored");

        let image = match framing {
            Framing::Zstd => {
                let cli = zstd_cli_decompress(&blob_path);
                assert!(
                    cli == chunks_image,
                    "{what}: zstd -dc differs from the chunks"
                );
                cli
            }
            Framing::Raw => {
                let prefix = &blob[..index.uncompressed_size as usize];
                assert!(
                    prefix == chunks_image,
                    "{what}: blob prefix differs from chunks"
                );
                prefix.to_vec()
            }
        };
        let image_digest = sha256(&image);
        let diff_id = match framing {
            Framing::Zstd => {
                assert_eq!(text(ANN_UNCOMPRESSED_DIGEST), image_digest, "{what}");
                assert_eq!(text(ANN_LP_UNCOMPRESSED_DIGEST), image_digest, "{what}");
                image_digest
            }
            Framing::Raw => {
                // Spec §2.3: for a raw layer the uncompressed digest is the blob's digest.
                if let Some(v) = ann[ANN_UNCOMPRESSED_DIGEST].as_str() {
                    assert_eq!(v, digest, "{what}: raw uncompressed-digest");
                }
                digest.clone()
            }
        };
        assert_eq!(diff_ids[i], diff_id, "{what}: config diff_id");

        assert_eq!(
            image.len() as u64,
            index.uncompressed_size,
            "{what}: image size"
        );
        assert_eq!(
            image.len() as u64 % BLOCK,
            0,
            "{what}: image not whole 4 KiB blocks"
        );
        assert!(
            image.len() >= 2048,
            "{what}: image too short for a superblock"
        );
        assert_eq!(
            image[1024..1028],
            [0xe2, 0xe1, 0xf5, 0xe0],
            "{what}: EROFS magic"
        );
        assert_eq!(image[1024 + 0x0c], 12, "{what}: blkszbits (4 KiB blocks)");

        let (start, end) = parse_range(&text(ANN_LP_PREFETCH_RANGE)).unwrap();
        assert_eq!(start, 0, "{what}: prefetch range starts at 0");
        let end = end.expect("prefetch range has an END");
        assert!(
            end > 0 && end <= image.len() as u64,
            "{what}: prefetch END {end} outside the image ({})",
            image.len()
        );

        assert_eq!(layer["sourceDigest"], source.digest.to_string(), "{what}");
        assert_eq!(layer["digest"], digest, "{what}: report digest");
        assert_eq!(layer["mediaType"], framing.media_type(), "{what}");
        assert_eq!(layer["size"], blob.len() as u64, "{what}: report size");
        assert_eq!(layer["diffId"], diff_id, "{what}: report diffId");
        let usize_ = layer["uncompressedSize"].as_u64();
        assert!(
            usize_ == Some(image.len() as u64)
                || (framing == Framing::Raw && usize_ == Some(blob.len() as u64)),
            "{what}: report uncompressedSize {usize_:?}, image is {} bytes",
            image.len()
        );
        assert!(
            layer["entries"].as_u64().is_some_and(|n| n > 0),
            "{what}: entries"
        );
        assert_eq!(
            layer["chunks"],
            index.entries.len() as u64,
            "{what}: chunks"
        );
        assert!(
            layer["prefetchSize"].as_u64().is_some(),
            "{what}: prefetchSize"
        );
        assert_eq!(layer["kept"], false, "{what}: kept");

        let image_path = work.join(format!("layer-{i}.img"));
        std::fs::write(&image_path, &image).unwrap();
        checked.push(ErofsLayer {
            digest,
            image: image_path,
            index,
            annotations: ann.clone(),
        });
    }
    checked
}

/// Directories holding whiteouts may carry an empty `trusted.overlay.origin` (what
/// `mkfs.erofs --aufs` adds so overlayfs never lists them directly); the contract neither asks
/// for nor forbids it, so a comparison ignores exactly that.
fn ignore_empty_origin(tree: &mut Tree) {
    for node in tree.values_mut().filter(|n| n.kind == 'd') {
        if node
            .xattrs
            .get("trusted.overlay.origin")
            .is_some_and(|v| v.is_empty())
        {
            node.xattrs.remove("trusted.overlay.origin");
        }
    }
}

/// Both comparisons (everything GNU tar keeps, then nanosecond mtimes) as one list.
fn full_diff(want: &Tree, got: &Tree, explicit: &BTreeSet<String>) -> Diff {
    let mut d = compare(want, got, Some(explicit)).0;
    d.extend(compare_mtime_nsec(want, got, Some(explicit)).0);
    Diff(d)
}

/// Mount `img` and compare its tree with extracting `tar`, whiteouts in overlayfs form.
fn assert_image_matches_tar(img: &Path, tar: &[u8], work: &Path, what: &str) {
    let want_dir = work.join("want");
    extract_tar(tar, &want_dir);
    let want = whiteouts_as_overlay(&snapshot(&want_dir));
    let explicit = without_markers(&tar_names(tar));
    let mnt = Mount::erofs(img, &work.join("mnt"));
    let mut got = snapshot(mnt.path());
    drop(mnt);
    ignore_empty_origin(&mut got);
    let diff = full_diff(&want, &got, &explicit);
    assert!(
        diff.0.is_empty(),
        "{what}: the mounted image differs from extracting its source:\n{diff}"
    );
    // lazypull's own reader must report exactly what the kernel shows, every path included.
    let read = reader_snapshot(img);
    let all: BTreeSet<String> = got.keys().cloned().collect();
    let diff = full_diff(&got, &read, &all);
    assert!(
        diff.0.is_empty() && read.len() == got.len(),
        "{what}: lazypull's EROFS reader differs from the kernel mount ({} vs {} paths):\n{diff}",
        read.len(),
        got.len()
    );
}

/// Test 1: convert one corpus layer alone, fsck its image, mount it, compare with GNU tar.
fn mount_matches_tar(name: &str, framing: Framing) {
    let support = mount_support(false);
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let layer = corpus_layer(name);
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    let source = gzip_layout(&input, "t", &[(name, &layer.tar)]);
    let report = convert_erofs(&input, &out, framing, Some(CHUNK), &[]);
    let checked = check_erofs_output(
        &Layout::new(&out),
        &report,
        framing,
        &source.layers,
        CHUNK,
        &tmp.path().join("img"),
    );
    let what = format!("{name} ({})", framing.media_type());
    assert_fsck_ok(&checked[0].image, &what);
    assert_image_matches_tar(
        &checked[0].image,
        &layer.tar,
        &tmp.path().join("tree"),
        &what,
    );
}

macro_rules! mount_tests {
    ($($test:ident: $layer:literal, $framing:ident;)*) => {
        $(
            #[test]
            fn $test() {
                mount_matches_tar($layer, Framing::$framing);
            }
        )*
    };
}

mount_tests! {
    erofs_zstd_entry_types: "types", Zstd;
    erofs_zstd_pax_records: "pax", Zstd;
    erofs_zstd_whiteouts: "whiteouts", Zstd;
    erofs_zstd_chunk_boundaries: "chunks", Zstd;
    erofs_zstd_many_files: "many-files", Zstd;
    erofs_zstd_large_file: "large", Zstd;
    erofs_zstd_repeated_entries: "repeated", Zstd;
    erofs_zstd_loose_names: "loose-names", Zstd;
    erofs_raw_entry_types: "types", Raw;
    erofs_raw_chunk_boundaries: "chunks", Raw;
    erofs_raw_whiteouts: "whiteouts", Raw;
}

/// Every corpus layer has a mount test above (a new corpus layer must get one).
#[test]
fn every_corpus_layer_has_a_mount_test() {
    let covered = [
        "types",
        "pax",
        "whiteouts",
        "chunks",
        "many-files",
        "large",
        "repeated",
        "loose-names",
    ];
    for layer in corpus() {
        assert!(
            covered.contains(&layer.name),
            "corpus layer `{}` has no EROFS mount test",
            layer.name
        );
    }
}

/// Test 2: the chunk index of every layer of a multi-layer, multi-platform image follows spec
/// §3.4 (checked in `check_erofs_output`), in both framings, at 64 KiB and the 1 MiB default.
#[test]
fn chunk_index_conforms_to_spec() {
    let names = ["types", "chunks", "large", "whiteouts"];
    let tars: Vec<(&str, &[u8])> = names
        .iter()
        .map(|n| (*n, corpus_layer(n).tar.as_slice()))
        .collect();
    for (framing, chunk) in [
        (Framing::Zstd, Some(CHUNK)),
        (Framing::Zstd, None),
        (Framing::Raw, Some(CHUNK)),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        let source = gzip_layout(&input, "t", &tars);
        wrap_in_image_index(&input, "t");
        let report = convert_erofs(&input, &out, framing, chunk, &[]);
        let checked = check_erofs_output(
            &Layout::new(&out),
            &report,
            framing,
            &source.layers,
            chunk.unwrap_or(DEFAULT_EROFS_CHUNK),
            &tmp.path().join("img"),
        );
        let large = &checked[2];
        let want_chunks = large
            .index
            .uncompressed_size
            .div_ceil(chunk.unwrap_or(DEFAULT_EROFS_CHUNK));
        assert_eq!(
            large.index.entries.len() as u64,
            want_chunks,
            "{framing:?}: the 20 MB layer ({}) is cut into chunk-size chunks",
            large.digest
        );
    }
}

/// The three stacked layers of test 3, bottom first. Every layer lists each directory it
/// changes, so directory metadata has one answer.
fn stacked_layers() -> [Vec<u8>; 3] {
    let t = MTIME;
    let mut l1 = LayerTar::new();
    l1.dir("etc", 0o755, t)
        .file("etc/keep.conf", b"kept from layer 1\n", 0o644, t + 1)
        .file("etc/gone.conf", b"deleted by layer 2\n", 0o644, t + 2)
        .file("etc/replace.conf", b"old\n", 0o644, t + 3)
        .dir("data", 0o755, t)
        .dir("data/old", 0o750, t)
        .file("data/old/a", b"a, deleted with its directory\n", 0o644, t)
        .dir("data/old/sub", 0o755, t)
        .file("data/old/sub/b", b"b\n", 0o644, t)
        .dir("opq", 0o755, t)
        .file("opq/lower-file", b"hidden by the opaque marker\n", 0o644, t)
        .dir("opq/lower-dir", 0o755, t)
        .file("opq/lower-dir/x", b"x\n", 0o644, t)
        .dir("bin", 0o755, t)
        .file("bin/tool", b"#!/bin/sh\necho tool\n", 0o755, t + 4)
        .hardlink("bin/tool-link", "bin/tool")
        .symlink("bin/tool-sym", "tool")
        .file("recreate", b"version 1\n", 0o644, t + 5);
    let mut l2 = LayerTar::new();
    l2.dir("etc", 0o755, t + 100)
        .marker("etc/.wh.gone.conf")
        .file(
            "etc/replace.conf",
            b"new, longer content from layer 2\n",
            0o600,
            t + 101,
        )
        .dir("data", 0o775, t + 100)
        .marker("data/.wh.old")
        .dir("opq", 0o700, t + 100)
        .marker("opq/.wh..wh..opq")
        .file("opq/new", b"fresh\n", 0o644, t + 102)
        .dir("opq/new-dir", 0o755, t + 100)
        .file("opq/new-dir/y", b"y\n", 0o644, t + 103)
        .marker(".wh.recreate");
    let mut l3 = LayerTar::new();
    l3.file("recreate", b"version 3, re-created\n", 0o640, t + 200)
        .dir("data", 0o755, t + 200)
        .dir("data/old", 0o700, t + 200)
        .file(
            "data/old/again",
            b"a new directory under the old name\n",
            0o644,
            t + 201,
        );
    [l1.finish(), l2.finish(), l3.finish()]
}

/// Paths test 3's merge must and must not show, so the oracle itself is pinned down.
fn assert_stack_semantics(tree: &Tree) {
    for gone in [
        "etc/gone.conf",
        "data/old/a",
        "data/old/sub",
        "opq/lower-file",
        "opq/lower-dir",
    ] {
        assert!(!tree.contains_key(gone), "`{gone}` should be deleted");
    }
    for kept in [
        "etc/keep.conf",
        "data/old/again",
        "opq/new",
        "opq/new-dir/y",
        "bin/tool-link",
        "recreate",
    ] {
        assert!(tree.contains_key(kept), "`{kept}` should exist");
    }
    assert!(
        tree.keys().all(|k| !k.contains(".wh.")),
        "a marker remained"
    );
    assert_eq!(
        tree["recreate"].content,
        Some(sha256(b"version 3, re-created\n"))
    );
    assert_eq!(
        tree["etc/replace.conf"].content,
        Some(sha256(b"new, longer content from layer 2\n"))
    );
    assert_eq!(tree["etc/replace.conf"].mode, 0o600);
}

/// Explicit names of a stack: every layer's tar names, markers removed.
fn stack_names(tars: &[&[u8]]) -> BTreeSet<String> {
    tars.iter()
        .flat_map(|t| without_markers(&tar_names(t)))
        .collect()
}

/// Test 3: the converted layers, mounted and stacked as an overlay, equal the tars applied in
/// order with OCI whiteout semantics.
#[test]
fn overlay_of_converted_layers_matches_applied_tars() {
    let support = mount_support(true);
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tars = stacked_layers();
    let tar_refs: Vec<&[u8]> = tars.iter().map(|t| t.as_slice()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    let layers: Vec<ImageLayer> = tars
        .iter()
        .enumerate()
        .map(|(i, t)| ImageLayer::gzip(t, &format!("stacked layer {}", i + 1)))
        .collect();
    let source = sample::write_oci_layout(&input, "t", &layers).unwrap();
    let report = convert_erofs(&input, &out, Framing::Zstd, Some(CHUNK), &[]);
    let checked = check_erofs_output(
        &Layout::new(&out),
        &report,
        Framing::Zstd,
        &source.layers,
        CHUNK,
        &tmp.path().join("img"),
    );

    let merged = tmp.path().join("merged");
    extract_layers_merged(&tar_refs, &merged);
    let want = snapshot(&merged);
    assert_stack_semantics(&want);

    let mounts: Vec<Mount> = checked
        .iter()
        .enumerate()
        .map(|(i, l)| {
            assert_fsck_ok(&l.image, &format!("stacked layer {i}"));
            Mount::erofs(&l.image, &tmp.path().join(format!("l{i}")))
        })
        .collect();
    let lowers: Vec<&Path> = mounts.iter().rev().map(|m| m.path()).collect();
    let overlay = Mount::overlay(&lowers, &tmp.path().join("ovl"));
    let got = snapshot(overlay.path());
    drop(overlay);
    drop(mounts);
    let diff = full_diff(&want, &got, &stack_names(&tar_refs));
    assert!(
        diff.0.is_empty(),
        "overlay of the EROFS layers differs from applying the tars:\n{diff}"
    );
}

/// Test 4: prefetch-listed files' data lies inside the prefetch range, in list order, before
/// every other file's data; an unlisted large file's data lies outside it.
#[test]
fn prefetch_list_puts_listed_data_first() {
    // Whole blocks, so no tail is inlined next to its inode and each file's data is contiguous.
    let listed: [(&str, Vec<u8>); 3] = [
        ("app/lib/z-last-by-name.so", random_bytes(41, 64 << 10)),
        ("app/bin/main", random_bytes(42, 128 << 10)),
        ("app/etc/config.bin", random_bytes(43, 8 << 10)),
    ];
    let unlisted = random_bytes(44, 2 << 20);
    let mut tar = LayerTar::new();
    tar.dir("app", 0o755, MTIME)
        .dir("app/bin", 0o755, MTIME)
        .file(
            "app/bin/aaa-unlisted-first-by-name",
            &unlisted,
            0o644,
            MTIME,
        )
        .file("app/bin/main", &listed[1].1, 0o755, MTIME)
        .dir("app/etc", 0o755, MTIME)
        .file("app/etc/config.bin", &listed[2].1, 0o644, MTIME)
        .dir("app/lib", 0o755, MTIME)
        .file("app/lib/z-last-by-name.so", &listed[0].1, 0o644, MTIME);
    let tar = tar.finish();

    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    let source = gzip_layout(&input, "t", &[("prefetch", &tar)]);
    let list = tmp.path().join("prefetch.txt");
    let lines: Vec<&str> = listed.iter().map(|(p, _)| *p).collect();
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();
    let report = convert_erofs(
        &input,
        &out,
        Framing::Zstd,
        Some(CHUNK),
        &["--prefetch-list", list.to_str().unwrap()],
    );
    let checked = check_erofs_output(
        &Layout::new(&out),
        &report,
        Framing::Zstd,
        &source.layers,
        CHUNK,
        &tmp.path().join("img"),
    );
    let layer = &checked[0];
    let image = std::fs::read(&layer.image).unwrap();
    let (_, end) = parse_range(layer.annotations[ANN_LP_PREFETCH_RANGE].as_str().unwrap()).unwrap();
    let end = end.unwrap() as usize;
    let at = |data: &[u8]| find(&image, data);
    let mut last = 0;
    for (path, data) in &listed {
        let off = at(data).unwrap_or_else(|| panic!("`{path}`'s data is not in the image"));
        assert!(
            off + data.len() <= end,
            "`{path}` ({off}..{}) lies outside the prefetch range 0:{end}",
            off + data.len()
        );
        assert!(off >= last, "`{path}` is not in prefetch-list order");
        last = off;
    }
    let off = at(&unlisted).expect("the unlisted file's data is in the image");
    assert!(
        off >= end && off >= last,
        "the unlisted file's data ({off}) is inside the prefetch range 0:{end}"
    );
    // prefetchSize is the prefetch range, uncompressed (END) or as the chunks covering it
    // are stored.
    let prefetch = report_layers(&report)[0]["prefetchSize"].as_u64().unwrap();
    let covering: u64 = (0..layer.index.entries.len())
        .filter(|&i| layer.index.entries[i].uncompressed_offset < end as u64)
        .map(|i| {
            let (a, b) = layer.index.on_blob(i, Framing::Zstd);
            b - a
        })
        .sum();
    assert!(
        prefetch == end as u64 || prefetch == covering,
        "prefetchSize {prefetch}: neither END {end} nor the {covering} stored bytes covering it"
    );
}

/// First offset of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle.first()?;
    (0..=hay.len().checked_sub(needle.len())?)
        .filter(|&i| hay[i] == *first)
        .find(|&i| &hay[i..i + needle.len()] == needle)
}

/// Test 5: `--threads 1`, `--threads 2` and a second run give byte-identical images.
#[test]
fn erofs_output_is_reproducible_across_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let layers: Vec<(&str, &[u8])> = ["types", "chunks", "many-files"]
        .iter()
        .map(|n| (*n, corpus_layer(n).tar.as_slice()))
        .collect();
    gzip_layout(&input, "t", &layers);
    for framing in [Framing::Zstd, Framing::Raw] {
        let runs: Vec<(Value, Layout)> = [("1", "a"), ("2", "b"), ("2", "c")]
            .iter()
            .map(|(threads, dir)| {
                let out = tmp.path().join(format!("{}-{dir}", framing.arg()));
                let report =
                    convert_erofs(&input, &out, framing, Some(CHUNK), &["--threads", threads]);
                (report, Layout::new(&out))
            })
            .collect();
        assert_identical_runs(&runs, &format!("{framing:?}"));
    }
}

/// Test 6: a few hundred MB of a real tree (the realistic topic's layer), converted at the
/// default chunk size; fsck, mount, compare.
#[test]
fn realistic_tree_converts_to_a_mountable_erofs() {
    let support = mount_support(false);
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let tar = crate::realistic::realistic_tar(tmp.path());
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    let layer = ImageLayer::tar(&tar, "tar of a real tree");
    let source = sample::write_oci_layout(&input, "t", &[layer]).unwrap();
    let report = convert_erofs(&input, &out, Framing::Zstd, None, &[]);
    let checked = check_erofs_output(
        &Layout::new(&out),
        &report,
        Framing::Zstd,
        &source.layers,
        DEFAULT_EROFS_CHUNK,
        &tmp.path().join("img"),
    );
    // Only the image is needed from here on.
    std::fs::remove_dir_all(&input).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    assert_fsck_ok(&checked[0].image, "realistic layer");
    assert_image_matches_tar(
        &checked[0].image,
        &tar,
        &tmp.path().join("tree"),
        "realistic layer",
    );
}

/// Convert `layers` expecting failure: stderr names the layer `culprit` and `entry`, and an
/// absent DST stays absent (nothing left beside it), an existing one unchanged.
fn assert_refused(layers: &[ImageLayer], culprit: usize, entry: &str, what: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let image = sample::write_oci_layout(&input, "t", layers).unwrap();
    let src = oci_ref(&input, "t");
    let args = |dst: &Path| -> Vec<String> {
        ["--format", "erofs", &src, &oci_ref(dst, "t")]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let listing = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    let absent = tmp.path().join("absent");
    let before = listing();
    let stderr = convert_fails_with(&args(&absent), FAIL_TIMEOUT);
    assert!(!absent.exists(), "{what}: DST was created");
    assert_eq!(listing(), before, "{what}: leftovers next to DST");
    let short = image.layers[culprit].digest.short();
    assert!(
        stderr.contains(&short),
        "{what}: stderr does not name layer {short}:\n{stderr}"
    );
    assert!(
        stderr.contains(entry),
        "{what}: stderr does not name `{entry}`:\n{stderr}"
    );

    let existing = tmp.path().join("existing");
    sample::write_sample_image(&existing, "old").unwrap();
    let before = layout_state(&existing);
    convert_fails_with(&args(&existing), FAIL_TIMEOUT);
    assert!(
        layout_state(&existing) == before,
        "{what}: existing DST changed"
    );
}

/// Test 7a: a hardlink to a file that only a lower layer holds cannot be one inode in this
/// layer's image: refused, naming the upper layer and the link.
#[test]
fn hardlink_into_a_lower_layer_is_refused() {
    let mut lower = LayerTar::new();
    lower.dir("shared", 0o755, MTIME).file(
        "shared/file",
        b"only in the lower layer\n",
        0o644,
        MTIME,
    );
    let mut upper = LayerTar::new();
    upper
        .dir("shared", 0o755, MTIME)
        .file("shared/own", b"upper\n", 0o644, MTIME)
        .hardlink("shared/link-to-lower", "shared/file");
    let layers = [
        ImageLayer::gzip(&lower.finish(), "lower"),
        ImageLayer::gzip(&upper.finish(), "upper"),
    ];
    assert_refused(&layers, 1, "shared/link-to-lower", "cross-layer hardlink");
}

/// Test 7b: an xattr outside the namespaces EROFS can encode (`foo.bar`) is refused with the
/// entry named, not silently dropped.
#[test]
fn xattr_in_an_unknown_namespace_is_refused() {
    let mut tar = LayerTar::new();
    tar.dir("x", 0o755, MTIME)
        .file("x/plain", b"fine\n", 0o644, MTIME)
        .file_with_xattr("x/odd-xattr", b"odd\n", "foo.bar", b"value");
    let layers = [ImageLayer::gzip(&tar.finish(), "odd xattr")];
    assert_refused(&layers, 0, "x/odd-xattr", "unknown xattr namespace");
}

/// The judges above, checked against hand-made blobs, `mkfs.erofs` and the kernel's overlayfs.
mod harness;

/// `--erofs-media-type oci-layer` writes the same blobs and annotations under the OCI layer
/// prefix (what containerd 1.6 labels for a remote snapshotter); converting again keeps the
/// layers, renamed when the other names are asked for.
#[test]
fn oci_layer_media_types_name_the_same_layers() {
    let oci_layer = ["--erofs-media-type", "oci-layer"];
    for (framing, want) in [
        (
            Framing::Zstd,
            "application/vnd.oci.image.layer.v1.erofs+zstd",
        ),
        (Framing::Raw, "application/vnd.oci.image.layer.v1.erofs"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |name: &str| tmp.path().join(name);
        sample::write_sample_image(&dir("in"), "t").unwrap();
        convert_erofs(&dir("in"), &dir("spec"), framing, None, &[]);
        let first = convert_erofs(&dir("in"), &dir("oci"), framing, None, &oci_layer);
        let layers = |name: &str| erofs_manifest(&Layout::new(&dir(name)), "t")["layers"].clone();
        let (spec, oci) = (layers("spec"), layers("oci"));
        let (spec, oci) = (spec.as_array().unwrap(), oci.as_array().unwrap());
        assert_eq!(spec.len(), oci.len());
        for (s, o) in spec.iter().zip(oci) {
            assert_eq!(
                s["mediaType"],
                framing.media_type(),
                "{framing:?}: spec name"
            );
            assert_eq!(o["mediaType"], want, "{framing:?}: oci-layer name");
            for field in ["digest", "size", "annotations"] {
                assert_eq!(s[field], o[field], "{framing:?}: {field} differs by name");
            }
        }

        let again = convert_erofs(&dir("oci"), &dir("again"), framing, None, &oci_layer);
        for (a, b) in report_layers(&first).iter().zip(report_layers(&again)) {
            assert_eq!(b["kept"], true, "{framing:?}: re-encoded {b}");
            assert_eq!(
                (&b["digest"], &b["mediaType"]),
                (&a["digest"], &a["mediaType"])
            );
        }
        assert_eq!(again["root"]["digest"], first["root"]["digest"]);

        let renamed = convert_erofs(&dir("spec"), &dir("renamed"), framing, None, &oci_layer);
        assert!(report_layers(&renamed).iter().all(|l| l["kept"] == true));
        assert_eq!(
            layers("renamed"),
            layers("oci"),
            "{framing:?}: spec layers renamed"
        );
    }
}

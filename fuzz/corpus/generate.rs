//! Writes the seed corpora in `fuzz/corpus/TARGET/` from lazypull's own sample layers (the ones
//! the tests use), converted by the real writers: run `scripts/fuzz.sh seeds`.
//!
//! Seeds are named by what they hold and are deterministic, so regenerating them gives a
//! reviewable diff (none, unless a writer changed).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lazypull_converter::erofs::chunk_index::ChunkedWriter;
use lazypull_converter::erofs::format::{CHUNK_COMPRESSION_NONE, CHUNK_COMPRESSION_ZSTD};
use lazypull_converter::erofs::{ErofsBuilder, ErofsOptions};
use lazypull_converter::estargz::{BlobFormat, EstargzOptions, EstargzReader, EstargzWriter};
use lazypull_converter::layer::{IngestOptions, Layer};
use lazypull_converter::sample;
use lazypull_fuzz::join_payload;
// The instrumented build needs libFuzzer's coverage callbacks linked in; its `main` is not.
use libfuzzer_sys as _;

/// Sample layers too large to be useful seeds (libFuzzer favours small inputs).
const SKIPPED: [&str; 2] = ["large", "many-files"];
/// Chunk size of the conversions: small, so files span several chunks.
const CHUNK: u64 = 4096;

fn main() {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    for layer in sample::layers(CHUNK) {
        if SKIPPED.contains(&layer.name) {
            continue;
        }
        let name = layer.name;
        let tar = &layer.tar;
        put(&root, "tar_ingest", &format!("{name}.tar"), tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        put(
            &root,
            "tar_ingest",
            &format!("{name}.tar.gz"),
            &gz.finish().unwrap(),
        );
        let zst = zstd::bulk::compress(tar, 1).unwrap();
        put(&root, "tar_ingest", &format!("{name}.tar.zst"), &zst);

        let ingested = Layer::ingest(&tar[..], &IngestOptions::default()).expect("sample ingests");
        for (target, format) in [
            ("estargz", BlobFormat::Estargz),
            ("zstd_chunked", BlobFormat::ZstdChunked),
        ] {
            let mut opts = EstargzOptions::new(format);
            opts.chunk_size = CHUNK;
            let mut blob = Vec::new();
            EstargzWriter::new(opts)
                .write(&ingested, &mut blob, &|_| {})
                .expect("sample converts");
            put(
                &root,
                target,
                &format!("{name}.blob"),
                &[&[0][..], &blob].concat(),
            );
            // The split form: what precedes the TOC, and the TOC JSON for the target to frame.
            let reader = EstargzReader::open(&blob, None).expect("sample blob opens");
            let payload = &blob[..reader.footer().toc_offset as usize];
            let framed = join_payload(payload, &reader.toc().to_json());
            put(
                &root,
                target,
                &format!("{name}.split"),
                &[&[1][..], &framed].concat(),
            );
        }

        let mut image = Vec::new();
        ErofsBuilder::new(ErofsOptions::default())
            .build(&ingested, &mut image)
            .expect("sample builds");
        put(&root, "erofs_image", &format!("{name}.erofs"), &image);
        for (suffix, compression) in [
            ("zstd", CHUNK_COMPRESSION_ZSTD),
            ("raw", CHUNK_COMPRESSION_NONE),
        ] {
            let mut blob = Vec::new();
            let mut w = ChunkedWriter::new(&mut blob, compression, 2 * CHUNK, 3);
            w.write_all(&image).unwrap();
            let wrapped = w.finish().expect("sample wraps");
            put(
                &root,
                "erofs_chunk_index",
                &format!("{name}.{suffix}"),
                &[&[0][..], &blob].concat(),
            );
            // The bare index payload, for the target's `ChunkIndex::parse` mode.
            let start = wrapped.index_offset;
            let frame = if compression == CHUNK_COMPRESSION_ZSTD {
                8
            } else {
                0
            };
            let payload = &blob[(start + frame) as usize..];
            let seed = [&[1][..], &start.to_le_bytes(), payload].concat();
            put(
                &root,
                "erofs_chunk_index",
                &format!("{name}.{suffix}.index"),
                &seed,
            );
        }
    }
    oci(&root);
    auth(&root);
}

/// The sample image's index, manifest and config, and a Docker manifest list.
fn oci(root: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let img = sample::write_sample_image(&dir.path().join("layout"), "latest").unwrap();
    let read = |p: PathBuf| fs::read(p).unwrap();
    put(
        root,
        "oci_json",
        "index.json",
        &read(img.dir.join("index.json")),
    );
    put(
        root,
        "oci_json",
        "manifest.json",
        &read(img.blob_path(&img.manifest.digest)),
    );
    put(
        root,
        "oci_json",
        "config.json",
        &read(img.blob_path(&img.config.digest)),
    );
    let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270","platform":{"architecture":"arm","os":"linux","variant":"v7"}}]}"#;
    put(root, "oci_json", "docker-list.json", list);
}

/// Challenges registries send, `--creds` values and references.
fn auth(root: &Path) {
    let seeds: [(&str, &str); 6] = [
        ("bearer", r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/busybox:pull""#),
        ("bearer-escaped", r#"Bearer realm="http://127.0.0.1:5001/token", scope="repository:a/b:pull,push", error="insufficient_scope", x="q\"uoted""#),
        ("basic", r#"Basic realm="Registry Realm""#),
        ("creds", "user:pa:ss"),
        ("reference", "127.0.0.1:5000/library/app:1.0@sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"),
        ("reference-hub", "docker://busybox"),
    ];
    for (name, s) in seeds {
        put(root, "auth_challenge", name, s.as_bytes());
    }
}

fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

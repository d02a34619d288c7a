//! Criterion micro-benchmarks of the conversion hot paths: tar ingestion and the eStargz writer
//! at gzip levels 1, 6 and 9 and zstd:chunked, on a layer of mixed real files.
//!
//! The layer is a tar of up to 64 MB of files from a real directory tree (`/usr/lib/go-*` or
//! `/usr/include`, whichever exists), so compression works on realistic content. Throughput is
//! reported in uncompressed bytes per second. End-to-end comparisons against the reference Go
//! implementation and pigz live in `benches/estargz_vs_reference.sh`. Two baselines run in the
//! same group: copying the tar into a temp file (the floor of ingesting) and one gzip stream of
//! the same bytes at level 6 on one thread (what a plain `tar | gzip` costs).

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lazypull_converter::estargz::{BlobFormat, EstargzOptions, EstargzWriter};
use lazypull_converter::layer::{IngestOptions, Layer};

const CAP: u64 = 64 << 20;

fn real_tree() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("go-"))
        })
        .collect();
    candidates.push("/usr/include".into());
    candidates.into_iter().find(|p| p.is_dir())
}

/// A tar of regular files under `dir`, in sorted order, up to `CAP` bytes of content.
fn build_tar(dir: &Path) -> Vec<u8> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files.push(e.path());
            }
        }
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut total = 0;
    for f in files {
        let Ok(data) = std::fs::read(&f) else {
            continue;
        };
        if total + data.len() as u64 > CAP {
            break;
        }
        total += data.len() as u64;
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        let name = f.strip_prefix("/").unwrap_or(&f);
        builder
            .append_data(&mut h, name, &data[..])
            .expect("append to an in-memory tar");
    }
    builder.into_inner().expect("finish an in-memory tar")
}

fn benches(c: &mut Criterion) {
    let Some(dir) = real_tree() else {
        eprintln!("no real directory tree to benchmark on; skipping");
        return;
    };
    let tar = build_tar(&dir);
    let mut group = c.benchmark_group("convert");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(tar.len() as u64));
    // Baselines run side by side: the floor of ingesting (copying the tar into a temp file)
    // and of compressing (one gzip stream of the same bytes, flate2/zlib-rs, one thread).
    group.bench_function("baseline-copy-to-tempfile", |b| {
        b.iter(|| {
            let mut f = tempfile::tempfile().expect("temp file");
            std::io::copy(&mut &tar[..], &mut f).expect("copy")
        })
    });
    group.bench_function("ingest", |b| {
        b.iter(|| Layer::ingest(&tar[..], &IngestOptions::default()).expect("ingest"))
    });
    group.bench_function("baseline-gzip-level6-one-stream", |b| {
        b.iter(|| {
            let mut enc =
                flate2::write::GzEncoder::new(std::io::sink(), flate2::Compression::new(6));
            std::io::Write::write_all(&mut enc, &tar).expect("gzip");
            enc.finish().expect("gzip")
        })
    });
    let layer = Layer::ingest(&tar[..], &IngestOptions::default()).expect("ingest");
    for (format, level) in [
        (BlobFormat::Estargz, 1),
        (BlobFormat::Estargz, 6),
        (BlobFormat::Estargz, 9),
        (BlobFormat::ZstdChunked, 3),
    ] {
        let mut opts = EstargzOptions::new(format);
        opts.level = level;
        let writer = EstargzWriter::new(opts);
        group.bench_function(format!("write-{}-level{level}", format.name()), |b| {
            b.iter(|| {
                writer
                    .write(&layer, std::io::sink(), &|_| {})
                    .expect("write")
            })
        });
    }
    group.finish();
}

criterion_group!(convert, benches);
criterion_main!(convert);

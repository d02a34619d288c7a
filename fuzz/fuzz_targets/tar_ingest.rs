//! The tar ingestion pipeline: compression detection, gzip/zstd decoding, tar framing (ustar,
//! GNU long names and sparse files, PAX records and xattrs), name checks and folding, then the
//! conversion of what it accepted to eStargz or zstd:chunked and to EROFS, each read back.
//!
//! Whatever ingestion accepts must convert, and the converted blob must give back each file's
//! bytes: a failure there is a writer or reader bug, not bad input.
#![no_main]

use lazypull_converter::erofs::{ErofsBuilder, ErofsOptions, ErofsReader};
use lazypull_converter::estargz::{BlobFormat, EstargzOptions, EstargzReader, EstargzWriter};
use lazypull_converter::layer::{EntryKind, IngestOptions, Layer};
use libfuzzer_sys::fuzz_target;

/// Conversions of layers holding more content than this are skipped: they would only slow the
/// fuzzer down (ingestion itself still reads all of it).
const CONVERT_LIMIT: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(layer) = Layer::ingest(data, &IngestOptions::default()) else {
        return;
    };
    let content: u64 = layer.entries.iter().map(|e| e.size).sum();
    if content > CONVERT_LIMIT {
        return;
    }
    // The input's length picks the format, so both writers see every kind of layer.
    let format = if data.len() % 2 == 0 {
        BlobFormat::Estargz
    } else {
        BlobFormat::ZstdChunked
    };
    let mut opts = EstargzOptions::new(format);
    opts.chunk_size = 4096;
    opts.level = 1;
    let mut blob = Vec::new();
    let written = EstargzWriter::new(opts)
        .write(&layer, &mut blob, &|_| {})
        .expect("an ingested layer converts");
    let reader = EstargzReader::open(&blob, Some(&written.toc_digest))
        .expect("a converted blob opens against its TOC digest");
    for entry in layer.entries.iter().filter(|e| e.kind == EntryKind::Reg) {
        let got = reader
            .read_file(&entry.name)
            .unwrap_or_else(|e| panic!("`{}` of the converted blob: {e}", entry.name));
        assert_eq!(got, content_of(&layer, entry), "`{}`", entry.name);
    }

    let mut image = Vec::new();
    if ErofsBuilder::new(ErofsOptions::default())
        .build(&layer, &mut image)
        .is_err()
    {
        return;
    }
    let fs = ErofsReader::open(&image).expect("a built EROFS image opens");
    fs.walk().expect("a built EROFS image walks");
    for entry in layer.entries.iter().filter(|e| e.kind == EntryKind::Reg) {
        let Ok(Some(nid)) = fs.resolve(&entry.name) else {
            continue;
        };
        let inode = fs.inode(nid).expect("a resolved inode reads");
        let mut got = vec![0u8; inode.size as usize];
        let n = fs.read(&inode, 0, &mut got).expect("a built file reads");
        assert_eq!(n as u64, inode.size);
        assert_eq!(got, content_of(&layer, entry), "EROFS `{}`", entry.name);
    }
});

fn content_of(layer: &Layer, entry: &lazypull_converter::layer::LayerEntry) -> Vec<u8> {
    let mut buf = vec![0u8; entry.size as usize];
    layer
        .read_content(entry, 0, &mut buf)
        .expect("the spool holds every ingested file");
    buf
}

//! Interoperability with the reference Go `estargz` package (v0.12, via `tests/gohelper/`):
//! Go verifies every blob lazypull writes, and lazypull's reader reads every blob Go writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde_json::Value;

use crate::convert_compat::{convert_layout, Format};
use crate::util::gohelper::{self, gohelper};
use crate::util::tree::{normalize, ADDED_NAMES};
use crate::util::{corpus, gzip_layout, report_layers, skip_unless, str_field, Layout, CHUNK};

/// The converter's reader, behind the few calls these tests make, so the tests adapt in one
/// place when the reader API changes.
///
/// Calls: `EstargzReader::open(FileBlob::open(path)?, Some(&toc_digest))`, `.entries()` (each
/// entry's name, type, size, uid, gid, link name, device numbers) and `.read_file(name)`.
mod reader {
    use std::path::Path;

    /// An entry as the reader reports it, in the tests' terms.
    #[derive(Debug, Clone)]
    pub struct ReadEntry {
        pub name: String,
        /// TOC type name: `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo`.
        pub kind: String,
        pub size: u64,
        pub uid: u64,
        pub gid: u64,
        pub link_name: String,
        pub dev: (u64, u64),
    }

    /// An opened blob.
    pub trait Opened {
        fn entries(&self) -> Vec<ReadEntry>;
        fn read_file(&self, name: &str) -> Result<Vec<u8>, String>;
    }

    pub fn open(blob: &Path, toc_digest: &str) -> Result<Box<dyn Opened>, String> {
        use lazypull_converter::estargz::EstargzReader;
        use lazypull_converter::{Digest, FileBlob};

        struct Real(EstargzReader<FileBlob>);
        impl Opened for Real {
            fn entries(&self) -> Vec<ReadEntry> {
                self.0
                    .entries()
                    .iter()
                    .map(|e| ReadEntry {
                        name: e.name.to_string(),
                        kind: e.kind.toc_name().to_string(),
                        size: e.size,
                        uid: e.uid,
                        gid: e.gid,
                        link_name: e.link_name.to_string(),
                        dev: (e.dev_major as u64, e.dev_minor as u64),
                    })
                    .collect()
            }
            fn read_file(&self, name: &str) -> Result<Vec<u8>, String> {
                self.0.read_file(name).map_err(|e| e.to_string())
            }
        }
        let digest: Digest = toc_digest.parse().map_err(|e| format!("{e}"))?;
        let file = FileBlob::open(blob).map_err(|e| e.to_string())?;
        let reader = EstargzReader::open(file, Some(&digest)).map_err(|e| e.to_string())?;
        Ok(Box::new(Real(reader)))
    }
}

/// Every blob of a converted image passes Go's `VerifyTOC` and reads back through Go's
/// chunk verifiers.
fn go_verifies(format: Format) {
    let helper = gohelper();
    skip_unless!(
        helper.is_ok(),
        "Go helper unavailable: {}",
        helper.unwrap_err()
    );
    let helper = helper.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    let layers: Vec<(&str, &[u8])> = corpus()
        .iter()
        .map(|l| (l.name, l.tar.as_slice()))
        .collect();
    gzip_layout(&input, "t", &layers);
    let report = convert_layout(&input, &out, format, &[]);
    let out = Layout::new(&out);
    let report_layers = report_layers(&report);
    assert_eq!(report_layers.len(), corpus().len());
    for (layer, sample) in report_layers.iter().zip(corpus()) {
        let blob = out.blob_path(str_field(layer, "digest"));
        eprintln!("verifying layer {} ({})", sample.name, blob.display());
        gohelper::verify(helper, &blob, str_field(layer, "tocDigest"));
    }
}

#[test]
fn go_verifies_estargz_output() {
    go_verifies(Format::Estargz);
}

#[test]
fn go_verifies_zstdchunked_output() {
    go_verifies(Format::ZstdChunked);
}

/// What a source tar holds once "the later entry wins": name → (TOC type, contents of regular
/// files that are not hardlinks).
fn source_entries(tar: &[u8]) -> BTreeMap<String, (String, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        if name.is_empty() {
            continue;
        }
        use tar::EntryType::*;
        let kind = match entry.header().entry_type() {
            Directory => "dir",
            Regular | Continuous => "reg",
            Symlink => "symlink",
            Link => "hardlink",
            Char => "char",
            Block => "block",
            Fifo => "fifo",
            other => panic!("unexpected entry type {other:?} in the corpus"),
        };
        let data = (kind == "reg").then(|| {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            data
        });
        out.insert(name, (kind.to_string(), data));
    }
    out
}

fn json_u64(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn json_str(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("").to_string()
}

/// Blobs written by Go's `estargz.Build` from each corpus layer read back through lazypull's
/// reader with the same entries Go lists and the source's file contents.
#[test]
fn lazypull_reads_go_built_blobs() {
    let helper = gohelper();
    skip_unless!(
        helper.is_ok(),
        "Go helper unavailable: {}",
        helper.unwrap_err()
    );
    let helper = helper.unwrap();
    let tmp = tempfile::tempdir().unwrap();

    for sample in corpus() {
        let what = format!("Go-built blob of corpus layer `{}`", sample.name);
        let tar_path = tmp.path().join(format!("{}.tar", sample.name));
        let blob = tmp.path().join(format!("{}.esgz", sample.name));
        std::fs::write(&tar_path, &sample.tar).unwrap();
        let built = gohelper::build_blob(helper, &tar_path, &blob, CHUNK);
        let toc_digest = str_field(&built, "tocDigest");
        gohelper::verify(helper, &blob, toc_digest);

        let opened = reader::open(&blob, toc_digest).unwrap_or_else(|e| panic!("{what}: {e}"));
        let ours: BTreeMap<String, reader::ReadEntry> = opened
            .entries()
            .into_iter()
            .map(|e| (normalize(&e.name), e))
            .filter(|(n, _)| !n.is_empty() && !ADDED_NAMES.contains(&n.as_str()))
            .collect();

        // Against Go's own listing of the same blob.
        let go: BTreeMap<String, Value> = gohelper::list(helper, &blob)
            .into_iter()
            .map(|e| (normalize(&json_str(&e, "name")), e))
            .filter(|(n, _)| !n.is_empty())
            .collect();
        for (name, g) in &go {
            let o = ours
                .get(name)
                .unwrap_or_else(|| panic!("{what}: Go lists `{name}`, lazypull does not"));
            assert_eq!(o.kind, json_str(g, "type"), "{what}: `{name}` type");
            if o.kind == "reg" {
                assert_eq!(o.size, json_u64(g, "size"), "{what}: `{name}` size");
            }
            assert_eq!(o.uid, json_u64(g, "uid"), "{what}: `{name}` uid");
            assert_eq!(o.gid, json_u64(g, "gid"), "{what}: `{name}` gid");
            if matches!(o.kind.as_str(), "symlink" | "hardlink") {
                let (a, b) = (o.link_name.clone(), json_str(g, "linkName"));
                let same = a == b || (o.kind == "hardlink" && normalize(&a) == normalize(&b));
                assert!(same, "{what}: `{name}` link {a:?} vs Go's {b:?}");
            }
            if matches!(o.kind.as_str(), "char" | "block") {
                let dev = (json_u64(g, "devMajor"), json_u64(g, "devMinor"));
                assert_eq!(o.dev, dev, "{what}: `{name}` device");
            }
        }
        // Anything we list beyond Go must be a directory implied by a deeper path.
        let implied: BTreeSet<String> = go
            .keys()
            .flat_map(|n| {
                let parts: Vec<&str> = n.split('/').collect();
                (1..parts.len()).map(move |i| parts[..i].join("/"))
            })
            .collect();
        for (name, o) in &ours {
            assert!(
                go.contains_key(name) || (o.kind == "dir" && implied.contains(name)),
                "{what}: lazypull lists `{name}` ({}), Go does not",
                o.kind
            );
        }

        // Against the source tar.
        for (name, (kind, data)) in source_entries(&sample.tar) {
            let o = ours
                .get(&name)
                .unwrap_or_else(|| panic!("{what}: source entry `{name}` missing"));
            assert_eq!(&o.kind, &kind, "{what}: `{name}` type against the source");
            if let Some(data) = data {
                let got = opened
                    .read_file(&name)
                    .unwrap_or_else(|e| panic!("{what}: read `{name}`: {e}"));
                assert!(
                    got == data,
                    "{what}: `{name}` contents differ from the source"
                );
            }
        }
    }
}

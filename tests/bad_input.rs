//! Hostile and broken input: `lazypull convert` fails with a message naming the layer digest and
//! the entry, never panics or hangs, and leaves the destination exactly as it was.

use std::path::Path;
use std::time::Duration;

use lazypull_converter::sample::{self, random_bytes, ImageLayer};
use lazypull_converter::Digest;
use tar::{EntryType, Header};

use crate::util::toc::read_toc;
use crate::util::tree::normalize;
use crate::util::{
    convert_ok, decompress, lazypull_bin, oci_ref, report_layers, run_with_timeout, str_field,
    Layout,
};

/// A failing conversion must end well within this.
const FAIL_TIMEOUT: Duration = Duration::from_secs(120);

/// A raw tar member: written without the checks `tar::Builder` would apply to its name.
struct Raw<'a> {
    name: &'a str,
    kind: EntryType,
    link: &'a str,
    data: Vec<u8>,
}

fn reg<'a>(name: &'a str, data: &[u8]) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Regular,
        link: "",
        data: data.to_vec(),
    }
}

fn link<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Link,
        link: target,
        data: Vec::new(),
    }
}

fn dir(name: &str) -> Raw<'_> {
    Raw {
        name,
        kind: EntryType::Directory,
        link: "",
        data: Vec::new(),
    }
}

/// Serialise `members` as a tar; `eof` adds the two zero blocks.
fn raw_tar(members: &[Raw], eof: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut h = Header::new_ustar();
        {
            let u = h.as_ustar_mut().unwrap();
            u.name[..m.name.len()].copy_from_slice(m.name.as_bytes());
            u.linkname[..m.link.len()].copy_from_slice(m.link.as_bytes());
        }
        h.set_entry_type(m.kind);
        h.set_mode(if m.kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(m.data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&m.data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    if eof {
        out.resize(out.len() + 1024, 0);
    }
    out
}

/// One broken input: the layout to convert and what the error must name.
struct Case {
    name: &'static str,
    layers: Vec<ImageLayer>,
    /// Overwrite the stored blob of layer 0 after writing the layout (digest mismatch).
    replace_blob: Option<Vec<u8>>,
    /// Substrings stderr must contain besides the layer digest.
    names: Vec<&'static str>,
}

fn gz(tar: &[u8]) -> ImageLayer {
    ImageLayer::gzip(tar, "bad input")
}

fn cases() -> Vec<Case> {
    let ok = raw_tar(&[dir("ok/"), reg("ok/a", b"fine\n")], true);

    let mut corrupt = gz(&raw_tar(
        &[dir("ok/"), reg("ok/data", &random_bytes(1, 200_000))],
        true,
    ));
    let mid = corrupt.blob.len() / 2;
    for b in &mut corrupt.blob[mid..mid + 64] {
        *b ^= 0x5a;
    }

    let big = random_bytes(2, 100_000);
    let mut truncated = raw_tar(&[dir("trunc/"), reg("trunc/big", &big)], true);
    truncated.truncate(512 + 512 + 50_000);

    let mut bad_sum = raw_tar(
        &[reg("ok-a", b"0123456789"), reg("bad-checksum", b"x")],
        true,
    );
    // The second header starts after the first's header and one data block.
    bad_sum[1024 + 148..1024 + 156].copy_from_slice(b"0001234\0");

    let mut unknown = gz(&ok);
    unknown.media_type = "application/vnd.example.mystery.layer.v1+bin".into();

    vec![
        Case {
            name: "corrupt gzip",
            layers: vec![corrupt],
            replace_blob: None,
            names: vec![],
        },
        Case {
            name: "truncated tar",
            layers: vec![gz(&truncated)],
            replace_blob: None,
            names: vec!["trunc/big"],
        },
        Case {
            name: "bad header checksum",
            layers: vec![gz(&bad_sum)],
            replace_blob: None,
            names: vec!["bad-checksum"],
        },
        Case {
            name: "layer digest differs from its descriptor",
            layers: vec![gz(&ok)],
            replace_blob: Some(gz(&raw_tar(&[reg("other", b"tampered\n")], true)).blob),
            names: vec![],
        },
        Case {
            name: "unknown layer media type",
            layers: vec![unknown],
            replace_blob: None,
            names: vec!["application/vnd.example.mystery.layer.v1+bin"],
        },
        Case {
            name: "entry ../x",
            layers: vec![gz(&raw_tar(
                &[reg("fine", b"1"), reg("../x", b"escape\n")],
                true,
            ))],
            replace_blob: None,
            names: vec!["../x"],
        },
        Case {
            name: "hardlink to a missing target",
            layers: vec![gz(&raw_tar(
                &[
                    reg("present", b"1"),
                    link("dangling-hardlink", "no/such/file"),
                ],
                true,
            ))],
            replace_blob: None,
            names: vec!["dangling-hardlink"],
        },
        Case {
            name: "hardlink outside the root",
            layers: vec![gz(&raw_tar(
                &[
                    reg("present", b"1"),
                    link("escaping-hardlink", "../../etc/passwd"),
                ],
                true,
            ))],
            replace_blob: None,
            names: vec!["escaping-hardlink"],
        },
    ]
}

/// A directory's state: `index.json` bytes and blob names, or `None` if it does not exist.
fn dst_state(dst: &Path) -> Option<(Vec<u8>, Vec<String>)> {
    if !dst.exists() {
        return None;
    }
    let index = std::fs::read(dst.join("index.json")).unwrap_or_default();
    Some((index, Layout::new(dst).blob_names()))
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Run `lazypull convert SRC DST` expecting failure; returns stderr.
fn convert_fails(src: &str, dst: &str) -> String {
    let out = run_with_timeout(
        std::process::Command::new(lazypull_bin()).args(["convert", src, dst]),
        None,
        FAIL_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "convert {src} succeeded");
    assert!(
        !stderr.contains("panicked"),
        "convert {src} panicked:\n{stderr}"
    );
    assert!(!stderr.trim().is_empty(), "convert {src} failed silently");
    stderr
}

#[test]
fn broken_layers_fail_cleanly_and_leave_dst_alone() {
    for case in cases() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        let image = sample::write_oci_layout(&input, "t", &case.layers).unwrap();
        let digest: Digest = image.layers[0].digest;
        if let Some(blob) = &case.replace_blob {
            std::fs::write(image.blob_path(&digest), blob).unwrap();
        }
        let src = oci_ref(&input, "t");

        // DST that does not exist stays absent, with nothing left beside it.
        let absent = tmp.path().join("absent");
        let before = dir_listing(tmp.path());
        let stderr = convert_fails(&src, &oci_ref(&absent, "t"));
        assert!(!absent.exists(), "{}: DST was created", case.name);
        assert_eq!(
            dir_listing(tmp.path()),
            before,
            "{}: leftovers next to DST",
            case.name
        );
        assert!(
            stderr.contains(&digest.short()),
            "{}: stderr does not name layer {}:\n{stderr}",
            case.name,
            digest.short()
        );
        for name in &case.names {
            assert!(
                stderr.contains(name),
                "{}: stderr does not name `{name}`:\n{stderr}",
                case.name
            );
        }

        // DST that is an existing layout keeps its index and blobs.
        let existing = tmp.path().join("existing");
        sample::write_sample_image(&existing, "old").unwrap();
        let before = dst_state(&existing);
        convert_fails(&src, &oci_ref(&existing, "t"));
        assert!(
            dst_state(&existing) == before,
            "{}: existing DST changed",
            case.name
        );
    }
}

/// Missing sources and garbage blobs fail quickly, without a panic.
#[test]
fn garbage_and_missing_sources_fail_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = oci_ref(&tmp.path().join("out"), "t");
    convert_fails(&oci_ref(&tmp.path().join("nowhere"), "t"), &out);
    convert_fails(
        &format!("docker-archive:{}", tmp.path().join("none.tar").display()),
        &out,
    );
    convert_fails("bogus-transport:/x", &out);

    let garbage: [(&str, ImageLayer); 4] = [
        ("random bytes as gzip", {
            let mut l = ImageLayer::gzip(b"", "garbage");
            l.blob = random_bytes(3, 100_000);
            l
        }),
        ("empty blob as gzip", {
            let mut l = ImageLayer::gzip(b"", "garbage");
            l.blob = Vec::new();
            l
        }),
        (
            "gzip of non-tar bytes",
            ImageLayer::gzip(&random_bytes(4, 70_000), "garbage"),
        ),
        (
            "tar of random bytes",
            ImageLayer::tar(&random_bytes(5, 10_240), "garbage"),
        ),
    ];
    for (what, layer) in garbage {
        let input = tmp.path().join(what.replace(' ', "-"));
        sample::write_oci_layout(&input, "t", &[layer]).unwrap();
        let stderr = convert_fails(&oci_ref(&input, "t"), &out);
        eprintln!("{what}: {}", stderr.lines().last().unwrap_or(""));
    }
    // A missing tag in an existing layout.
    let input = tmp.path().join("tagged");
    sample::write_sample_image(&input, "present").unwrap();
    convert_fails(&oci_ref(&input, "absent"), &out);
}

/// Absolute member names (`/abs/x`) become relative, as runtimes would extract them.
#[test]
fn absolute_names_become_relative() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = raw_tar(
        &[
            dir("/abs/"),
            reg("/abs/x", b"absolute\n"),
            link("/abs/hard-x", "/abs/x"),
            reg("./dotted", b"dot\n"),
        ],
        true,
    );
    let input = tmp.path().join("in");
    sample::write_oci_layout(&input, "t", &[gz(&tar)]).unwrap();
    let out = tmp.path().join("out");
    let report = convert_ok(&[oci_ref(&input, "t"), oci_ref(&out, "t")]);
    let out = Layout::new(&out);
    let layer = &report_layers(&report)[0];
    let path = out.blob_path(str_field(layer, "digest"));

    let toc = read_toc(&path).toc;
    for e in &toc.entries {
        assert!(
            !e.name.starts_with('/'),
            "TOC keeps absolute name {}",
            e.name
        );
        assert!(
            !e.link_name.starts_with('/') || e.kind == "symlink",
            "TOC link {}",
            e.link_name
        );
    }
    let names: Vec<String> = toc.entries.iter().map(|e| normalize(&e.name)).collect();
    for want in ["abs", "abs/x", "abs/hard-x", "dotted"] {
        assert!(
            names.iter().any(|n| n == want),
            "TOC lacks {want}: {names:?}"
        );
    }

    // The tar stream a runtime extracts has no absolute names either.
    let raw = decompress(
        &out.blob(str_field(layer, "digest")),
        str_field(layer, "mediaType"),
    );
    let mut archive = tar::Archive::new(raw.as_slice());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let name = entry.path_bytes().into_owned();
        assert!(
            !name.starts_with(b"/"),
            "absolute member {:?}",
            String::from_utf8_lossy(&name)
        );
        if entry.header().entry_type() == EntryType::Link {
            let target = entry.link_name_bytes().unwrap().into_owned();
            assert!(!target.starts_with(b"/"), "absolute hardlink target");
        }
    }
}

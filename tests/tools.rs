//! Other OCI tools accept lazypull's images: skopeo copies them, umoci unpacks them.
//! The same checks run on the sample input image, which keeps the generator honest.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use lazypull_converter::estargz::format::ANNOTATION_TOC_DIGEST;
use lazypull_converter::sample;

use crate::convert_compat::{convert_layout, Format};
use crate::util::{have_tool, is_root, run_ok, skip_unless, str_field, Layout};

/// `skopeo copy oci:SRC:t oci:COPY:t` succeeds and keeps layers and their annotations.
fn skopeo_copies(src: &Path, work: &Path) {
    let copy = work.join("copy");
    run_ok(Command::new("skopeo").args(["inspect", &format!("oci:{}:t", src.display())]));
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:t", src.display()),
        &format!("oci:{}:t", copy.display()),
    ]));
    let (a, b) = (
        Layout::new(src).manifest("t"),
        Layout::new(&copy).manifest("t"),
    );
    let digests = |m: &serde_json::Value| -> Vec<String> {
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| str_field(l, "digest").to_string())
            .collect()
    };
    assert_eq!(digests(&a), digests(&b), "skopeo changed the layers");
    for (la, lb) in a["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["layers"].as_array().unwrap())
    {
        assert_eq!(
            la["annotations"], lb["annotations"],
            "skopeo dropped layer annotations"
        );
    }
}

/// `umoci unpack` gives the sample image's root filesystem.
fn umoci_unpacks(src: &Path, work: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let bundle = work.join("bundle");
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !is_root() {
        cmd.arg("--rootless");
    }
    cmd.arg("--image")
        .arg(format!("{}:t", src.display()))
        .arg(&bundle);
    run_ok(&mut cmd);
    let rootfs = bundle.join("rootfs");
    for file in [
        "etc/hostname",
        "etc/passwd",
        "etc/motd",
        "app/server",
        "app/config.json",
        "usr/share/doc/pkg00/doc00.txt",
        "usr/share/doc/pkg39/doc24.txt",
    ] {
        assert!(rootfs.join(file).is_file(), "rootfs lacks {file}");
    }
    assert_eq!(
        std::fs::read(rootfs.join("etc/motd")).unwrap(),
        b"converted by lazypull\n"
    );
    assert!(
        std::fs::symlink_metadata(rootfs.join("etc/obsolete.conf")).is_err(),
        "the top layer's whiteout was not applied"
    );
    assert!(
        std::fs::symlink_metadata(rootfs.join("etc/.wh.obsolete.conf")).is_err(),
        "a whiteout file leaked into the rootfs"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("usr/bin/server")).unwrap(),
        Path::new("../../app/server")
    );
    let a = std::fs::metadata(rootfs.join("app/server")).unwrap();
    let b = std::fs::metadata(rootfs.join("app/server-hardlink")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlink lost");
    assert_eq!(a.mode() & 0o7777, 0o755);
    assert!(
        bundle.join("config.json").is_file(),
        "no runtime config in the bundle"
    );
}

fn converted_sample(work: &Path, format: Format) -> std::path::PathBuf {
    let (input, out) = (work.join("in"), work.join("out"));
    sample::write_sample_image(&input, "t").unwrap();
    convert_layout(&input, &out, format, &[]);
    let manifest = Layout::new(&out).manifest("t");
    for layer in manifest["layers"].as_array().unwrap() {
        assert!(layer["annotations"][ANNOTATION_TOC_DIGEST].is_string());
    }
    out
}

#[test]
fn skopeo_copies_converted_image() {
    skip_unless!(have_tool("skopeo"), "skopeo is not installed");
    for format in [Format::Estargz, Format::ZstdChunked] {
        let tmp = tempfile::tempdir().unwrap();
        let out = converted_sample(tmp.path(), format);
        skopeo_copies(&out, tmp.path());
    }
}

/// umoci 0.4.7 (Debian bookworm) knows no zstd layers, so only eStargz goes through it.
#[test]
fn umoci_unpacks_converted_image() {
    skip_unless!(have_tool("umoci"), "umoci is not installed");
    let tmp = tempfile::tempdir().unwrap();
    let out = converted_sample(tmp.path(), Format::Estargz);
    umoci_unpacks(&out, tmp.path());
}

/// The generator's sample image is itself a valid image for both tools.
#[test]
fn sample_image_is_valid_for_skopeo_and_umoci() {
    skip_unless!(
        have_tool("skopeo") && have_tool("umoci"),
        "skopeo or umoci is not installed"
    );
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    sample::write_sample_image(&input, "t").unwrap();
    skopeo_copies(&input, tmp.path());
    umoci_unpacks(&input, &tmp.path().join("unpack"));
}

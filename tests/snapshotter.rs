//! `lazypull snapshotter` as containerd's proxy snapshotter, with every component real: the
//! distribution registry holding the busybox image as plain gzip, eStargz and EROFS; a private
//! containerd 1.6 whose CRI plugin pulls into `lazypull`; runc running the containers.
//! The first test proves the harness on containerd's own overlayfs snapshotter.

use std::path::Path;

use lazypull_test_cri::Cri;

use crate::util::containerd::{
    access_log, containerd_support, payload_files, push_plain, TestContainerd, CRI_NS, NS,
};
use crate::util::registry::{Auth, TestRegistry};
use crate::util::skip;

/// Whether containerd tests can run here (else skip, or fail under CI).
fn supported() -> bool {
    match containerd_support() {
        Ok(()) => true,
        Err(reason) => {
            skip(&reason);
            false
        }
    }
}

/// `sha256sum -c /checksums.sha256` inside a fresh container of `reference` passes and checks
/// every payload file.
fn checksums_pass(containerd: &TestContainerd, ns: &str, snapshotter: &str, reference: &str) {
    let out = containerd.run(
        ns,
        snapshotter,
        reference,
        &["sha256sum", "-c", "/checksums.sha256"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sha256sum -c in {reference} ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, _) in payload_files() {
        assert!(
            stdout.contains(&format!("/{path}: OK")),
            "{path} not checked:\n{stdout}"
        );
    }
}

/// A detached container of `reference` reads the image and its write lands in the upper dir
/// of its overlay rootfs, under `upper_root`.
fn write_lands_in_upper_dir(
    containerd: &TestContainerd,
    ns: &str,
    snapshotter: &str,
    reference: &str,
    upper_root: &Path,
) {
    let container = containerd.run_detached(ns, snapshotter, reference);
    assert_eq!(
        container.exec_ok("cat /data/small.txt | wc -c").trim(),
        "13"
    );
    container.exec_ok("echo written by the test > /written.txt");
    let upper = container.upper_dir();
    assert!(
        upper.starts_with(upper_root),
        "upper dir {} is not under {}",
        upper.display(),
        upper_root.display()
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("written.txt")).unwrap(),
        "written by the test\n"
    );
    assert!(
        !upper.join("data").exists(),
        "image files were copied up: {}",
        upper.display()
    );
}

/// The harness itself, on containerd's overlayfs: `ctr pull` and CRI `PullImage` of the plain
/// image, `sha256sum -c` in a container, a write in the upper dir, and the registry's access
/// log showing containerd fetching every layer blob (what the lazy tests assert it does not).
#[test]
fn harness_runs_busybox_on_overlayfs() {
    if !supported() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(Auth::Anonymous);
    let image = push_plain(&registry, tmp.path(), "bb");
    let reference = format!("{}/bb:plain", registry.host);
    // No lazypull snapshotter runs: containerd dials proxy plugins only when they are used.
    let containerd = TestContainerd::start(
        &tmp.path().join("containerd"),
        &tmp.path().join("no-snapshotter.sock"),
        "overlayfs",
        &registry.host,
    );
    let overlay_root = containerd
        .dir
        .join("root/io.containerd.snapshotter.v1.overlayfs");

    containerd.pull(NS, "overlayfs", &reference);
    checksums_pass(&containerd, NS, "overlayfs", &reference);
    write_lands_in_upper_dir(&containerd, NS, "overlayfs", &reference, &overlay_root);

    let mut cri = Cri::connect(&containerd.socket).unwrap();
    let image_ref = cri.pull(&reference).unwrap();
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let listed = cri.list().unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.id == image_ref && i.repo_tags.contains(&reference)),
        "{listed:?}"
    );
    checksums_pass(&containerd, CRI_NS, "overlayfs", &reference);

    let log = access_log(&registry);
    for layer in &image.layers {
        let digest = layer.digest.to_string();
        let fetched = log
            .iter()
            .filter(|a| a.gets_blob(&digest) && a.agent.starts_with("containerd/"))
            .count();
        assert!(fetched >= 1, "containerd never fetched {digest}: {log:?}");
    }

    cri.remove(&image_ref).unwrap();
    assert!(!cri.list().unwrap().iter().any(|i| i.id == image_ref));
}

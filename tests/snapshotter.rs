//! `lazypull snapshotter` as containerd's proxy snapshotter, with every component real: the
//! distribution registry holding the busybox image as plain gzip, eStargz and EROFS; a private
//! containerd 1.6 whose CRI plugin pulls into `lazypull`; runc running the containers.
//! The first test proves the harness on containerd's own overlayfs snapshotter.

use std::path::Path;
use std::time::{Duration, Instant};

use lazypull_converter::sample::SampleImage;
use lazypull_test_cri::Cri;

use crate::util::containerd::{
    access_log, containerd_support, convert_in_registry, mount_options, mounts_under,
    payload_files, push_plain, TestContainerd, TestSnapshotter, CRI_NS, NS, SNAPSHOTTER,
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

/// The registry holding the busybox image (`bb:plain`, and `bb:esgz` and `bb:erofs` converted by
/// lazypull),
/// the snapshotter, and containerd using it; dropped in that order of fields (containerd first).
struct Lazy {
    containerd: TestContainerd,
    snapshotter: TestSnapshotter,
    registry: TestRegistry,
    image: SampleImage,
    _tmp: tempfile::TempDir,
}

impl Lazy {
    fn start() -> Lazy {
        let tmp = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start(Auth::Anonymous);
        let image = push_plain(&registry, tmp.path(), "bb");
        convert_in_registry(&registry, "bb", "estargz", &[], "esgz");
        // containerd 1.6 labels only `application/vnd.oci.image.layer.*` layers for a remote
        // snapshotter, so EROFS goes under those names.
        convert_in_registry(
            &registry,
            "bb",
            "erofs",
            &["--erofs-media-type", "oci-layer"],
            "erofs",
        );
        let snapshotter = TestSnapshotter::start(&tmp.path().join("snapshotter"));
        let containerd = TestContainerd::start(
            &tmp.path().join("containerd"),
            &snapshotter.socket,
            SNAPSHOTTER,
            &registry.host,
        );
        containerd.wait_for_snapshotter(NS);
        Lazy {
            containerd,
            snapshotter,
            registry,
            image,
            _tmp: tmp,
        }
    }

    fn reference(&self, tag: &str) -> String {
        format!("{}/bb:{tag}", self.registry.host)
    }

    /// The layer digests of the manifest `bb:TAG` names.
    fn layers(&self, tag: &str) -> Vec<String> {
        let raw = self
            .registry
            .skopeo_raw(&format!("docker://{}", self.reference(tag)));
        let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every layer of `bb:TAG` was served remotely: nobody but lazypull fetched its blob, and
    /// each of lazypull's fetches of it was a range (206).
    fn assert_served_remotely(&self, tag: &str) {
        let log = access_log(&self.registry);
        for layer in self.layers(tag) {
            let gets: Vec<_> = log.iter().filter(|a| a.gets_blob(&layer)).collect();
            let whole: Vec<_> = gets
                .iter()
                .filter(|a| !a.agent.starts_with("lazypull/") || a.status != 206)
                .collect();
            assert!(
                whole.is_empty(),
                "{tag}: layer {layer} fetched other than by lazypull's range requests: {whole:?}\n\
                 snapshotter log:\n{}",
                self.snapshotter.log()
            );
            assert!(
                !gets.is_empty(),
                "{tag}: lazypull never read layer {layer}: {log:?}\nsnapshotter log:\n{}",
                self.snapshotter.log()
            );
        }
    }

    /// Wait until `done` holds (polling every 200 ms), or fail after `secs` with `what`.
    fn wait_until(&self, secs: u64, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} within {secs} s\nsnapshotter log:\n{}",
                self.snapshotter.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The FUSE mounts under the snapshotter's root.
    fn fuse_mounts(&self) -> Vec<String> {
        mounts_under(&self.snapshotter.root)
            .into_iter()
            .filter(|m| mount_options(m).is_some_and(|(fstype, _)| fstype.starts_with("fuse")))
            .map(|m| m.display().to_string())
            .collect()
    }
}

/// `ctr-remote images rpull` of the eStargz image: every layer is mounted lazily (containerd
/// fetches no layer blob, lazypull only ranges), and `ctr run` containers check every file and
/// write into an upper dir under the snapshotter's root.
#[test]
fn estargz_rpull_is_lazy_and_runs() {
    rpull_is_lazy_and_runs("esgz");
}

/// The same for the EROFS image.
#[test]
fn erofs_rpull_is_lazy_and_runs() {
    rpull_is_lazy_and_runs("erofs");
}

fn rpull_is_lazy_and_runs(tag: &str) {
    if !supported() {
        return;
    }
    let lazy = Lazy::start();
    let reference = lazy.reference(tag);
    let out = lazy.containerd.rpull(NS, &reference);
    assert!(
        out.status.success(),
        "rpull: {}\nsnapshotter log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        lazy.snapshotter.log()
    );
    assert_eq!(lazy.fuse_mounts().len(), 2, "one FUSE mount per layer");
    checksums_pass(&lazy.containerd, NS, SNAPSHOTTER, &reference);
    write_lands_in_upper_dir(
        &lazy.containerd,
        NS,
        SNAPSHOTTER,
        &reference,
        &lazy.snapshotter.root,
    );
    lazy.assert_served_remotely(tag);
}

/// CRI `PullImage` (with `disable_snapshot_annotations = false`) of the eStargz image is lazy
/// too, the pulled image runs, and after `RemoveImage` containerd's own GC run unmounts it.
#[test]
fn estargz_cri_pull_is_lazy_and_runs() {
    cri_pull_is_lazy_and_runs("esgz");
}

/// The same for the EROFS image.
#[test]
fn erofs_cri_pull_is_lazy_and_runs() {
    cri_pull_is_lazy_and_runs("erofs");
}

fn cri_pull_is_lazy_and_runs(tag: &str) {
    if !supported() {
        return;
    }
    let lazy = Lazy::start();
    let reference = lazy.reference(tag);
    let mut cri = Cri::connect(&lazy.containerd.socket).unwrap();
    let image_ref = cri
        .pull(&reference)
        .unwrap_or_else(|e| panic!("{e}\nsnapshotter log:\n{}", lazy.snapshotter.log()));
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    assert_eq!(lazy.fuse_mounts().len(), 2, "one FUSE mount per layer");
    checksums_pass(&lazy.containerd, CRI_NS, SNAPSHOTTER, &reference);
    lazy.assert_served_remotely(tag);

    // CRI's RemoveImage does not wait for GC: containerd's scheduler runs it on its own.
    cri.remove(&image_ref).unwrap();
    lazy.wait_until(30, "GC after RemoveImage left mounts", || {
        mounts_under(&lazy.snapshotter.root).is_empty()
    });
}

/// The plain gzip image has nothing to mount lazily: the snapshotter logs why and gives
/// containerd plain snapshots to unpack into; containers run from it.
#[test]
fn gzip_image_falls_back_with_the_reason_logged() {
    if !supported() {
        return;
    }
    let lazy = Lazy::start();
    let reference = lazy.reference("plain");
    let out = lazy.containerd.rpull(NS, &reference);
    assert!(
        out.status.success(),
        "rpull: {}\nsnapshotter log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        lazy.snapshotter.log()
    );
    let log = lazy.snapshotter.log();
    assert!(
        log.contains("not mounting lazily") && log.contains("not_lazy"),
        "no fallback reason in the log:\n{log}"
    );
    assert!(lazy.fuse_mounts().is_empty(), "{:?}", lazy.fuse_mounts());
    // containerd fetched and unpacked every layer itself.
    let access = access_log(&lazy.registry);
    for layer in &lazy.image.layers {
        let digest = layer.digest.to_string();
        assert!(
            access
                .iter()
                .any(|a| a.gets_blob(&digest) && a.agent.starts_with("containerd/")),
            "containerd did not fetch {digest}"
        );
    }
    checksums_pass(&lazy.containerd, NS, SNAPSHOTTER, &reference);
    write_lands_in_upper_dir(
        &lazy.containerd,
        NS,
        SNAPSHOTTER,
        &reference,
        &lazy.snapshotter.root,
    );
}

/// Restarting the snapshotter while a container runs: the container still reads every file
/// (first reads after the restart included), and new containers start from the same image.
#[test]
fn restart_keeps_running_containers_and_images() {
    if !supported() {
        return;
    }
    let mut lazy = Lazy::start();
    let reference = lazy.reference("esgz");
    let out = lazy.containerd.rpull(NS, &reference);
    assert!(out.status.success(), "rpull: {:?}", out);
    let container = lazy.containerd.run_detached(NS, SNAPSHOTTER, &reference);
    container.exec_ok("cat /data/small.txt > /dev/null");

    let status = lazy
        .snapshotter
        .stop()
        .expect("the snapshotter was running");
    assert!(
        status.success(),
        "SIGTERM: {status}\n{}",
        lazy.snapshotter.log()
    );
    container.exec_ok("sha256sum -c /checksums.sha256 | head -1");
    lazy.snapshotter.resume();
    lazy.containerd.wait_for_snapshotter(NS);

    let checked = container.exec_ok("sha256sum -c /checksums.sha256");
    assert_eq!(
        checked.matches(": OK").count(),
        payload_files().len(),
        "{checked}"
    );
    drop(container);
    checksums_pass(&lazy.containerd, NS, SNAPSHOTTER, &reference);
    assert_eq!(
        lazy.fuse_mounts().len(),
        2,
        "layers mounted twice after the restart"
    );
    lazy.assert_served_remotely("esgz");
}

/// Removing the image lets containerd's GC remove its snapshots: Remove reaches the
/// snapshotter, which unmounts its layers, so nothing stays mounted under its root.
#[test]
fn removed_image_leaves_no_mount_after_gc() {
    if !supported() {
        return;
    }
    let lazy = Lazy::start();
    let reference = lazy.reference("esgz");
    let out = lazy.containerd.rpull(NS, &reference);
    assert!(out.status.success(), "rpull: {:?}", out);
    checksums_pass(&lazy.containerd, NS, SNAPSHOTTER, &reference);
    assert!(!lazy.fuse_mounts().is_empty());

    lazy.containerd
        .ctr_ok(NS, &["images", "rm", "--sync", &reference]);
    lazy.wait_until(30, "containerd's GC did not remove the snapshots", || {
        lazy.containerd.snapshots(NS, SNAPSHOTTER).is_empty()
    });
    lazy.wait_until(30, "mounts are left under the snapshotter's root", || {
        mounts_under(&lazy.snapshotter.root).is_empty()
    });
    let snapshots = lazy.snapshotter.root.join("snapshots");
    let left: Vec<_> = std::fs::read_dir(&snapshots)
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "snapshot directories left: {left:?}");
}

/// `kill -9` of the snapshotter in the middle of a lazy pull: the pull fails, and after a
/// restart on the same root (its redb metadata as the crash left it) the pull completes, a
/// container reads every file, each layer is mounted once, and removing the image leaves no
/// mount behind.
#[test]
fn snapshotter_killed_during_a_lazy_pull_recovers() {
    if !supported() {
        return;
    }
    let mut lazy = Lazy::start();
    let reference = lazy.reference("esgz");
    std::thread::scope(|s| {
        let pull = s.spawn(|| lazy.containerd.rpull(NS, &reference));
        // Killed once the first layer is being served: the pull is past its first Prepare.
        let deadline = Instant::now() + Duration::from_secs(60);
        while lazy.fuse_mounts().is_empty() && !pull.is_finished() {
            assert!(Instant::now() < deadline, "no layer was mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        lazy.snapshotter.kill();
        let out = pull.join().unwrap();
        eprintln!(
            "rpull with the snapshotter killed: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    });
    lazy.snapshotter.resume();
    lazy.containerd.wait_for_snapshotter(NS);
    // containerd's gRPC client backs off after the connection failures of the crash and fails
    // calls fast with "unavailable" until it dials again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = lazy.containerd.rpull(NS, &reference);
        let unavailable = String::from_utf8_lossy(&out.stderr).contains(": unavailable");
        if out.status.success() || !unavailable || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        out.status.success(),
        "rpull after the restart: {}\nsnapshotter running: {}, log:\n{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        lazy.snapshotter.running(),
        lazy.snapshotter.log(),
        lazy.containerd.log()
    );
    checksums_pass(&lazy.containerd, NS, SNAPSHOTTER, &reference);
    assert_eq!(lazy.fuse_mounts().len(), 2, "one FUSE mount per layer");
    let committed = lazy.containerd.snapshots(NS, SNAPSHOTTER);
    assert!(
        committed.iter().filter(|s| s.2 == "Committed").count() >= 2,
        "{committed:?}"
    );
    lazy.assert_served_remotely("esgz");
    remove_and_expect_no_mounts(&lazy, &reference);
}

/// `kill -9` of a layer's `lazypull mount` server (and, separately, of the snapshotter after a
/// pull): the next container's Prepare clears the dead mount and serves the layer again, the
/// container reads every file, and no mount outlives the image.
#[test]
fn killed_layer_server_and_snapshotter_are_recovered() {
    if !supported() {
        return;
    }
    let mut lazy = Lazy::start();
    let reference = lazy.reference("erofs");
    let out = lazy.containerd.rpull(NS, &reference);
    assert!(out.status.success(), "rpull: {out:?}");
    let servers = lazy.snapshotter.layer_servers();
    assert_eq!(servers.len(), 2, "one layer server per layer: {servers:?}");
    // SAFETY: kill(2) on a pid we just read; no memory is involved.
    assert_eq!(unsafe { libc::kill(servers[1] as i32, libc::SIGKILL) }, 0);
    lazy.wait_until(10, "the killed layer server is still there", || {
        !lazy.snapshotter.layer_servers().contains(&servers[1])
    });
    checksums_pass(&lazy.containerd, NS, SNAPSHOTTER, &reference);
    assert_eq!(lazy.fuse_mounts().len(), 2, "layers mounted twice");
    assert_eq!(lazy.snapshotter.layer_servers().len(), 2);

    // Now the snapshotter itself, with its layers served: they stay, and are adopted.
    let before = lazy.containerd.snapshots(NS, SNAPSHOTTER);
    lazy.snapshotter.kill();
    lazy.snapshotter.resume();
    lazy.containerd.wait_for_snapshotter(NS);
    assert_eq!(lazy.containerd.snapshots(NS, SNAPSHOTTER), before);
    checksums_pass(&lazy.containerd, NS, SNAPSHOTTER, &reference);
    assert_eq!(lazy.fuse_mounts().len(), 2, "layers mounted twice");
    remove_and_expect_no_mounts(&lazy, &reference);
}

/// `ctr images rm --sync`, then containerd's GC removes the snapshots and nothing stays
/// mounted under the snapshotter's root.
fn remove_and_expect_no_mounts(lazy: &Lazy, reference: &str) {
    lazy.containerd
        .ctr_ok(NS, &["images", "rm", "--sync", reference]);
    lazy.wait_until(30, "containerd's GC did not remove the snapshots", || {
        lazy.containerd.snapshots(NS, SNAPSHOTTER).is_empty()
    });
    lazy.wait_until(30, "mounts are left under the snapshotter's root", || {
        mounts_under(&lazy.snapshotter.root).is_empty()
    });
}

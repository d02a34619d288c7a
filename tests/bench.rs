//! `lazypull bench --quick`, the cold-start benchmark's smoke test: it builds a small image from
//! this machine's files, converts it, records a prefetch list, and runs every mode once over an
//! emulated 100 Mbit/s link with 20 ms RTT: the harness modes, and the containerd modes
//! (containerd's own full pull, `lazypull snapshotter` with `ctr run`) when containerd is
//! installed (under CI it must be). Only that every mode reaches ready and that the lazy modes
//! fetch less than their full pull is asserted: times are for the benchmark, not for tests.

use crate::util::{ci, is_root, lazypull, skip_unless};

const HARNESS_MODES: [&str; 5] = [
    "full pull",
    "lazy eStargz",
    "lazy eStargz + prefetch",
    "lazy EROFS",
    "lazy EROFS + prefetch",
];
const CONTAINERD_MODES: [&str; 5] = [
    "containerd full pull",
    "snapshotter eStargz",
    "snapshotter eStargz + prefetch",
    "snapshotter EROFS",
    "snapshotter EROFS + prefetch",
];

#[test]
fn quick_bench_reaches_ready_in_every_mode_and_lazy_modes_fetch_less() {
    skip_unless!(
        is_root(),
        "the benchmark mounts FUSE, overlayfs and /proc and chroots: it needs root"
    );
    skip_unless!(
        std::path::Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing"
    );
    let containerd = lazypull::bench::containerd_support();
    if let Err(why) = &containerd {
        assert!(!ci(), "CI=true and the containerd modes cannot run: {why}");
        eprintln!("SKIPPED (containerd modes only): {why}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = lazypull(&[
        "bench".to_string(),
        "--quick".into(),
        "--work".into(),
        tmp.path().join("work").display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "lazypull bench --quick failed: {stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("coldstart.json")).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let modes: Vec<&str> = results
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    let mut expected = HARNESS_MODES.to_vec();
    if containerd.is_ok() {
        expected.extend(CONTAINERD_MODES);
    }
    assert_eq!(modes, expected);
    let summary = |mode: &str| &results.iter().find(|r| r["mode"] == mode).unwrap()["summary"];
    for r in results {
        let s = &r["summary"];
        assert!(s["readyMedian"].as_f64().unwrap() > 0.0, "{r}");
        assert!(s["requestsMedian"].as_u64().unwrap() > 0, "{r}");
        assert!(s["bytesMedian"].as_u64().unwrap() > 0, "{r}");
        let mode = r["mode"].as_str().unwrap();
        let baseline = if HARNESS_MODES.contains(&mode) {
            "full pull"
        } else {
            "containerd full pull"
        };
        if mode != baseline {
            let full = summary(baseline);
            assert!(
                s["bytesMedian"].as_u64() < full["bytesMedian"].as_u64(),
                "{mode} fetched no less than the {baseline}: {r}"
            );
            assert!(s["peakRssKibMax"].as_u64().unwrap() > 0, "{r}");
        }
    }
    // Both full pulls moved the whole gzip image.
    let gzip = report["images"][0]["gzipBytes"].as_u64().unwrap();
    assert!(summary("full pull")["bytesMedian"].as_u64().unwrap() >= gzip);
    if containerd.is_ok() {
        let full = summary("containerd full pull")["bytesMedian"]
            .as_u64()
            .unwrap();
        assert!(full >= gzip, "containerd full pull: {full} < {gzip}");
    }
    let svg = std::fs::read_to_string(out.join("coldstart.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("lazy EROFS"));
    // `--merge` of this report (twice, as two networks' runs would be) keeps every result.
    let merged = tmp.path().join("merged");
    let run = lazypull(&[
        "bench".to_string(),
        "--merge".into(),
        out.display().to_string(),
        "--merge".into(),
        out.display().to_string(),
        "--out".into(),
        merged.display().to_string(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("coldstart.json")).unwrap()).unwrap();
    assert_eq!(
        again["results"].as_array().unwrap().len(),
        2 * results.len()
    );
    assert_eq!(again["images"], report["images"]);
    // No mount is left behind.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&tmp.path().display().to_string()),
        "{mounts}"
    );
}

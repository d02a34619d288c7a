//! `lazypull bench --quick`, the cold-start benchmark's smoke test: it builds a small image from
//! this machine's files, converts it, records a prefetch list, and runs every mode once over an
//! emulated 100 Mbit/s link with 20 ms RTT. Only that every mode reaches ready and that the lazy
//! modes fetch less than the full pull is asserted: times are for the benchmark, not for tests.

use crate::util::{is_root, lazypull, skip_unless};

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
    assert_eq!(
        modes,
        [
            "full pull",
            "lazy eStargz",
            "lazy eStargz + prefetch",
            "lazy EROFS",
            "lazy EROFS + prefetch"
        ]
    );
    let full = &results[0]["summary"];
    for r in results {
        let s = &r["summary"];
        assert!(s["readyMedian"].as_f64().unwrap() > 0.0, "{r}");
        assert!(s["requestsMedian"].as_u64().unwrap() > 0, "{r}");
        if r["mode"] != "full pull" {
            assert!(
                s["bytesMedian"].as_u64() < full["bytesMedian"].as_u64(),
                "{} fetched no less than the full pull: {r}",
                r["mode"]
            );
            assert!(s["peakRssKibMax"].as_u64().unwrap() > 0, "{r}");
        }
    }
    // The full pull moved the whole gzip image.
    let gzip = report["images"][0]["gzipBytes"].as_u64().unwrap();
    assert!(full["bytesMedian"].as_u64().unwrap() >= gzip);
    let svg = std::fs::read_to_string(out.join("coldstart.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("lazy EROFS"));
    // No mount is left behind.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&tmp.path().display().to_string()),
        "{mounts}"
    );
}

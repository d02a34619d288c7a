//! Prometheus metrics in the text format, served on `GET /metrics` by a small HTTP listener.
//!
//! The snapshotter counts its own requests, remote mounts and fallbacks; what the layer servers
//! fetched and how their cache did is summed from the statistics file each of them keeps
//! (`ROOT/snapshots/ID/stats.json`, rewritten every few seconds).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::remote::FallbackReason;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0];

#[derive(Default)]
struct Latency {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The snapshotter's counters.
#[derive(Default)]
pub struct Metrics {
    latency: Mutex<BTreeMap<&'static str, Latency>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    remote_mounts: AtomicU64,
    fallbacks: Mutex<BTreeMap<FallbackReason, u64>>,
    /// Where the layer servers' statistics files are.
    snapshots_dir: PathBuf,
}

impl Metrics {
    pub fn new(snapshots_dir: PathBuf) -> Self {
        Metrics {
            snapshots_dir,
            ..Metrics::default()
        }
    }

    /// One gRPC request of `method` took `elapsed`; `ok` says whether it succeeded.
    pub fn request(&self, method: &'static str, elapsed: Duration, ok: bool) {
        let secs = elapsed.as_secs_f64();
        let mut all = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let l = all.entry(method).or_default();
        l.count += 1;
        l.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                l.buckets[i] += 1;
            }
        }
        if !ok {
            *self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(method)
                .or_default() += 1;
        }
    }

    /// A remote layer was mounted lazily.
    pub fn remote_mount(&self) {
        self.remote_mounts.fetch_add(1, Ordering::Relaxed);
    }

    /// A remote snapshot became a plain one.
    pub fn fallback(&self, reason: FallbackReason) {
        *self
            .fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// How often `reason` caused a fallback.
    pub fn fallbacks(&self, reason: FallbackReason) -> u64 {
        self.fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&reason)
            .copied()
            .unwrap_or(0)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP lazypull_snapshotter_request_duration_seconds gRPC request latency.\n\
             # TYPE lazypull_snapshotter_request_duration_seconds histogram\n",
        );
        for (method, l) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let name = "lazypull_snapshotter_request_duration_seconds";
            for (bound, n) in BUCKETS.iter().zip(l.buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{method=\"{method}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                l.count
            );
            let _ = writeln!(out, "{name}_sum{{method=\"{method}\"}} {}", l.sum);
            let _ = writeln!(out, "{name}_count{{method=\"{method}\"}} {}", l.count);
        }
        out.push_str(
            "# HELP lazypull_snapshotter_request_errors_total gRPC requests answered with an error.\n\
             # TYPE lazypull_snapshotter_request_errors_total counter\n",
        );
        for (method, n) in self.errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "lazypull_snapshotter_request_errors_total{{method=\"{method}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP lazypull_snapshotter_remote_mounts_total Layers mounted lazily.\n\
             # TYPE lazypull_snapshotter_remote_mounts_total counter\n\
             lazypull_snapshotter_remote_mounts_total {}",
            self.remote_mounts.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP lazypull_snapshotter_fallbacks_total Remote snapshots served as plain ones, by reason.\n\
             # TYPE lazypull_snapshotter_fallbacks_total counter\n",
        );
        for reason in [
            FallbackReason::NotLazy,
            FallbackReason::Resolve,
            FallbackReason::Mount,
            FallbackReason::ErofsMount,
        ] {
            let _ = writeln!(
                out,
                "lazypull_snapshotter_fallbacks_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.fallbacks(reason)
            );
        }
        let s = self.layer_stats();
        let lookups = s.hits + s.misses;
        let ratio = if lookups == 0 {
            0.0
        } else {
            s.hits as f64 / lookups as f64
        };
        for (name, kind, help, value) in [
            (
                "lazypull_fetched_bytes_total",
                "counter",
                "Bytes fetched from registries by the layer servers.",
                s.bytes as f64,
            ),
            (
                "lazypull_fetch_requests_total",
                "counter",
                "Range requests of the layer servers.",
                s.requests as f64,
            ),
            (
                "lazypull_cache_hits_total",
                "counter",
                "Chunk cache hits (memory and disk).",
                s.hits as f64,
            ),
            (
                "lazypull_cache_misses_total",
                "counter",
                "Chunk cache misses.",
                s.misses as f64,
            ),
            (
                "lazypull_cache_hit_ratio",
                "gauge",
                "Chunk cache hits over lookups.",
                ratio,
            ),
            (
                "lazypull_verification_failures_total",
                "counter",
                "Chunks that failed their digest.",
                s.verification_failures as f64,
            ),
            (
                "lazypull_layer_servers",
                "gauge",
                "Layer servers reporting statistics.",
                s.servers as f64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }

    /// The sum of the layer servers' statistics files.
    fn layer_stats(&self) -> LayerStats {
        let mut total = LayerStats::default();
        let Ok(dirs) = std::fs::read_dir(&self.snapshots_dir) else {
            return total;
        };
        for d in dirs.flatten() {
            let Ok(text) = std::fs::read_to_string(d.path().join("stats.json")) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let n = |path: &[&str]| {
                path.iter()
                    .try_fold(&v, |v, k| v.get(k))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
            };
            total.servers += 1;
            total.bytes += n(&["fetch", "bytes"]);
            total.requests += n(&["fetch", "requests"]);
            total.hits += n(&["cache", "memoryHits"]) + n(&["cache", "diskHits"]);
            total.misses += n(&["cache", "misses"]);
            total.verification_failures += n(&["cache", "verificationFailures"]);
        }
        total
    }
}

#[derive(Default)]
struct LayerStats {
    servers: u64,
    bytes: u64,
    requests: u64,
    hits: u64,
    misses: u64,
    verification_failures: u64,
}

/// Serve `GET /metrics` on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            // The request head only; a client sending more than 8 KiB of it is dropped.
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&req);
            let path = head.split(' ').nth(1).unwrap_or("");
            let (status, body) = if head.starts_with("GET ") && (path == "/metrics" || path == "/")
            {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_requests_fallbacks_and_layer_stats() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("7")).unwrap();
        std::fs::write(
            dir.path().join("7/stats.json"),
            r#"{"fetch":{"bytes":1000,"requests":3},"cache":{"memoryHits":2,"diskHits":1,"misses":1,"verificationFailures":0}}"#,
        )
        .unwrap();
        let m = Metrics::new(dir.path().to_path_buf());
        m.request("Prepare", Duration::from_millis(3), true);
        m.request("Prepare", Duration::from_secs(2), false);
        m.fallback(FallbackReason::NotLazy);
        m.remote_mount();
        let text = m.render();
        assert!(
            text.contains("request_duration_seconds_bucket{method=\"Prepare\",le=\"0.005\"} 1\n")
        );
        assert!(text.contains("request_duration_seconds_count{method=\"Prepare\"} 2\n"));
        assert!(text.contains("request_errors_total{method=\"Prepare\"} 1\n"));
        assert!(text.contains("fallbacks_total{reason=\"not_lazy\"} 1\n"));
        assert!(text.contains("fallbacks_total{reason=\"mount\"} 0\n"));
        assert!(text.contains("lazypull_snapshotter_remote_mounts_total 1\n"));
        assert!(text.contains("lazypull_fetched_bytes_total 1000\n"));
        assert!(text.contains("lazypull_cache_hit_ratio 0.75\n"));
    }
}

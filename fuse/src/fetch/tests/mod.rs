//! The fetcher against a local server that misbehaves on demand.

use std::io;
use std::time::{Duration, Instant};

use lazypull_converter::{BlobRead, Error};

use super::{FetchError, FetchErrorKind, FetchOptions, HttpBlob, RangeFetcher};
use lazypull_faultserver::{Fault, Server};

use lazypull_converter::sample::XorShift as Rng;

const SIZE: usize = 1 << 20;

fn blob_bytes() -> Vec<u8> {
    let mut rng = Rng::new(0x5eed);
    (0..SIZE).map(|_| rng.next_u64() as u8).collect()
}

/// Quick retries so fault tests take milliseconds.
fn quick() -> FetchOptions {
    FetchOptions {
        timeout: Duration::from_secs(2),
        retries: 3,
        backoff: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(50),
        connections: 4,
        ..FetchOptions::default()
    }
}

fn setup(opts: FetchOptions) -> (Server, RangeFetcher, Vec<u8>) {
    let data = blob_bytes();
    (
        Server::start(data.clone()),
        RangeFetcher::new(opts).unwrap(),
        data,
    )
}

fn fetch_kind(e: &Error) -> &FetchErrorKind {
    &FetchError::find(e).expect("a fetch error").kind
}

fn io_kind(e: &Error) -> io::ErrorKind {
    match e.root() {
        Error::Io { source, .. } => source.kind(),
        other => panic!("not an I/O error: {other}"),
    }
}

#[test]
fn random_reads_equal_the_blob() {
    let (server, fetcher, data) = setup(quick());
    let blob = HttpBlob::open(&fetcher, &server.url("/blob")).unwrap();
    assert_eq!(blob.len(), SIZE as u64);
    let mut rng = Rng::new(42);
    for _ in 0..100 {
        let off = rng.below(SIZE as u64);
        let len = rng.below(70_000).min(SIZE as u64 - off);
        let got = blob.read_vec(off, len).unwrap();
        assert!(
            got == data[off as usize..(off + len) as usize],
            "read at {off}+{len}"
        );
    }
    for _ in 0..20 {
        let ranges: Vec<(u64, u64)> = (0..rng.below(12))
            .map(|_| (rng.below(SIZE as u64 + 10), rng.below(200_000)))
            .collect();
        for (got, &(off, len)) in blob.read_ranges(&ranges).unwrap().iter().zip(&ranges) {
            let start = (off as usize).min(SIZE);
            let end = (off.saturating_add(len) as usize).min(SIZE);
            assert!(*got == data[start..end], "range {off}+{len}");
        }
    }
    let stats = fetcher.stats();
    assert_eq!((stats.retries, stats.failures), (0, 0));
}

#[test]
fn ranges_are_clamped_to_the_blob() {
    let (server, fetcher, data) = setup(quick());
    let blob = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    let size = SIZE as u64;
    let got = blob
        .read_ranges(&[(size - 10, 100), (size + 5, 10), (3, 0)])
        .unwrap();
    assert_eq!(got[0], data[SIZE - 10..]);
    assert!(got[1].is_empty() && got[2].is_empty());
    assert_eq!(
        server.ranges(),
        vec![format!("bytes={}-{}", size - 10, size - 1)]
    );
    // Past the end is the caller's error, asked of nobody; an empty read asks nothing.
    assert!(blob.read_at(size - 1, &mut [0u8; 2]).is_err());
    blob.read_at(size, &mut []).unwrap();
    assert_eq!(fetcher.stats().requests, 1);
}

#[test]
fn each_fault_is_retried_and_recovered() {
    let faults = [
        Fault::Drop,
        Fault::Status(500),
        Fault::Status(503),
        Fault::ShortBody,
        Fault::Truncated,
        Fault::Stall(Duration::from_millis(600)),
    ];
    let (server, fetcher, data) = setup(FetchOptions {
        timeout: Duration::from_millis(300),
        ..quick()
    });
    let blob = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    for (n, fault) in faults.into_iter().enumerate() {
        server.push(&[fault]);
        let before = (fetcher.stats(), server.hits("/blob"));
        let got = blob.read_vec(1000, 5000).unwrap();
        assert!(got == data[1000..6000], "{fault:?}");
        let stats = fetcher.stats();
        assert_eq!(stats.retries - before.0.retries, 1, "{fault:?}");
        assert_eq!(stats.requests - before.0.requests, 2, "{fault:?}");
        assert_eq!(server.hits("/blob") - before.1, 2, "{fault:?}");
        assert_eq!(stats.retries, n as u64 + 1);
    }
    assert_eq!(fetcher.stats().failures, 0);
}

#[test]
fn too_many_requests_waits_for_retry_after() {
    let (server, fetcher, data) = setup(FetchOptions {
        backoff_cap: Duration::from_secs(2),
        ..quick()
    });
    let blob = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    server.push(&[Fault::TooMany(1)]);
    let t = Instant::now();
    assert_eq!(blob.read_vec(7, 9).unwrap(), data[7..16]);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(fetcher.stats().retries, 1);
}

#[test]
fn a_server_ignoring_range_is_sliced_and_then_asked_once() {
    let (server, fetcher, data) = setup(quick());
    // A one-off full answer to a range request.
    let blob = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    server.push(&[Fault::FullBody]);
    assert_eq!(blob.read_vec(500, 10).unwrap(), data[500..510]);
    assert_eq!(fetcher.stats().retries, 0);
    assert!(blob.server_ignores_ranges());
    // The next answer is a 206: ranges are fetched apart again, not streamed with their gaps.
    assert_eq!(blob.read_vec(600, 10).unwrap(), data[600..610]);
    assert!(!blob.server_ignores_ranges());
    let hits = server.hits("/blob");
    let got = blob.read_ranges(&[(10, 5), (900_000, 5)]).unwrap();
    assert_eq!(
        got,
        vec![data[10..15].to_vec(), data[900_000..900_005].to_vec()]
    );
    assert_eq!(server.hits("/blob"), hits + 2);
    assert!(fetcher.stats().bytes < 10_000, "{:?}", fetcher.stats());
    // A server that never honours Range: many far ranges become one streamed request.
    let ignoring = HttpBlob::open(&fetcher, &server.url("/ignore")).unwrap();
    assert_eq!(
        ignoring.read_vec(SIZE as u64 - 4, 4).unwrap(),
        data[SIZE - 4..]
    );
    assert!(ignoring.server_ignores_ranges());
    let hits = server.hits("/ignore");
    let got = ignoring
        .read_ranges(&[(10, 5), (600_000, 5), (300_000, 5)])
        .unwrap();
    assert_eq!(
        got,
        vec![
            data[10..15].to_vec(),
            data[600_000..600_005].to_vec(),
            data[300_000..300_005].to_vec()
        ]
    );
    assert_eq!(server.hits("/ignore"), hits + 1);
}

#[test]
fn persistent_503_fails_naming_url_and_range_in_bounded_time() {
    let (server, fetcher, _) = setup(FetchOptions {
        retries: 5,
        backoff: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(40),
        ..quick()
    });
    server.always(Some(Fault::Status(503)));
    let blob =
        HttpBlob::with_size(&fetcher, &server.url("/blob?X-Amz-Signature=hush"), 1000).unwrap();
    let t = Instant::now();
    let err = blob.read_vec(100, 100).unwrap_err();
    // 5 waits of at most 40 ms plus 6 quick answers.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        err.to_string(),
        format!(
            "GET http://{}/blob bytes=100-199: 503 Service Unavailable after 5 retries",
            server.addr
        )
    );
    assert_eq!(server.hits("/blob"), 6);
    let stats = fetcher.stats();
    assert_eq!((stats.requests, stats.retries, stats.failures), (6, 5, 1));
    // Transport errors too keep the query string to themselves.
    server.always(Some(Fault::Drop));
    let err = blob.read_vec(0, 1).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("GET http://{}/blob bytes=0-0: ", server.addr)),
        "{err}"
    );
    assert!(
        err.ends_with("after 5 retries") && !err.contains("hush"),
        "{err}"
    );
}

#[test]
fn a_stalled_server_times_out() {
    let timeout = Duration::from_millis(200);
    let (server, fetcher, _) = setup(FetchOptions {
        timeout,
        retries: 2,
        ..quick()
    });
    server.always(Some(Fault::Stall(Duration::from_millis(1500))));
    let blob = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    let t = Instant::now();
    let err = blob.read_vec(0, 10).unwrap_err();
    let elapsed = t.elapsed();
    // 3 attempts of 200 ms and 2 waits of at most 50 ms.
    assert!(
        elapsed >= timeout * 3 && elapsed < Duration::from_millis(1200),
        "{elapsed:?}"
    );
    assert!(
        matches!(fetch_kind(&err), FetchErrorKind::Timeout { retries: 2, .. }),
        "{err}"
    );
    assert_eq!(io_kind(&err), io::ErrorKind::TimedOut);
}

#[test]
fn client_errors_fail_at_once() {
    let (server, fetcher, _) = setup(quick());
    let blob = HttpBlob::with_size(&fetcher, &server.url("/missing"), 100).unwrap();
    let err = blob.read_vec(0, 10).unwrap_err();
    assert_eq!(io_kind(&err), io::ErrorKind::NotFound);
    assert_eq!(server.hits("/missing"), 1);
    assert!(HttpBlob::open(&fetcher, &server.url("/missing")).is_err());
    // A size larger than the blob's: the 416 (with its lying Content-Length) tells the real size.
    let big = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64 + 100).unwrap();
    let t = Instant::now();
    let err = big.read_vec(SIZE as u64 + 10, 10).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(fetch_kind(&err), FetchErrorKind::NotSatisfiable { size: Some(n), .. } if *n == SIZE as u64),
        "{err}"
    );
    assert_eq!(fetcher.stats().retries, 0);
}

#[test]
fn a_redirect_is_followed_once_and_cached() {
    let (server, fetcher, data) = setup(quick());
    let blob = HttpBlob::open(&fetcher, &server.url("/redirect")).unwrap();
    assert_eq!(blob.len(), SIZE as u64);
    let mut rng = Rng::new(7);
    for _ in 0..20 {
        let off = rng.below(SIZE as u64 - 100);
        assert_eq!(
            blob.read_vec(off, 100).unwrap(),
            data[off as usize..off as usize + 100]
        );
    }
    assert_eq!(server.hits("/redirect"), 1);
    assert_eq!(server.hits("/target"), 21);
}

#[test]
fn an_expired_redirect_target_is_resolved_again() {
    let (server, fetcher, data) = setup(quick());
    let blob = HttpBlob::with_size(&fetcher, &server.url("/redirect"), SIZE as u64).unwrap();
    assert_eq!(blob.read_vec(0, 10).unwrap(), data[..10]);
    server.forbid_target_once();
    assert_eq!(blob.read_vec(10, 10).unwrap(), data[10..20]);
    assert_eq!(blob.read_vec(20, 10).unwrap(), data[20..30]);
    // Resolved at the first read and again after the 403; the third read used the new target.
    assert_eq!(server.redirects_issued(), 2);
    assert_eq!(server.hits("/target"), 4);
    assert_eq!(fetcher.stats().failures, 0);
}

#[test]
fn a_refused_head_falls_back_to_a_one_byte_get() {
    let (server, fetcher, data) = setup(quick());
    let blob = HttpBlob::open(&fetcher, &server.url("/nohead")).unwrap();
    assert_eq!(blob.len(), SIZE as u64);
    assert_eq!(server.ranges(), vec!["bytes=0-0".to_string()]);
    assert_eq!(blob.read_vec(99, 1).unwrap(), data[99..100]);
}

#[test]
fn near_ranges_share_one_request() {
    let (server, fetcher, data) = setup(quick());
    let blob = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    let got = blob
        .read_ranges(&[(100, 100), (0, 100), (150, 10), (300, 50)])
        .unwrap();
    assert_eq!(got[0], data[100..200]);
    assert_eq!(got[1], data[..100]);
    assert_eq!(got[2], data[150..160]);
    assert_eq!(got[3], data[300..350]);
    assert_eq!(server.ranges(), vec!["bytes=0-349".to_string()]);
    // Far apart: one request each, fetched concurrently.
    let far: Vec<(u64, u64)> = (0..8).map(|i| (i * 130_000, 1000)).collect();
    let got = blob.read_ranges(&far).unwrap();
    for (g, &(off, len)) in got.iter().zip(&far) {
        assert!(*g == data[off as usize..(off + len) as usize]);
    }
    assert_eq!(server.hits("/blob"), 9);
}

#[test]
fn keep_alive_reuses_few_connections() {
    let (server, fetcher, data) = setup(quick());
    let blob = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    for i in 0..200u64 {
        assert_eq!(
            blob.read_vec(i * 1000, 1000).unwrap(),
            data[i as usize * 1000..][..1000]
        );
    }
    // hyper hands a finished connection back to the pool from its own task, so a request sent
    // right after a read may find the pool empty for a moment and open another one (more often
    // on a loaded machine: 4 were seen). Without keep-alive it would be 200.
    let sequential = server.connections();
    assert!(
        sequential <= 10,
        "{sequential} connections for sequential reads"
    );
    // Concurrent requests, at most `connections` (4) in flight, need about as many connections.
    let far: Vec<(u64, u64)> = (0..8).map(|i| (i * 130_000 + 1, 100)).collect();
    for _ in 0..10 {
        blob.read_ranges(&far).unwrap();
    }
    let total = server.connections();
    assert!(
        total <= sequential + 12,
        "{total} connections for 80 requests, 4 at a time"
    );
}

#[test]
fn blocking_inside_a_runtime_is_an_error() {
    let (server, fetcher, _) = setup(quick());
    let blob = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    let err = fetcher
        .runtime()
        .block_on(async { blob.read_vec(0, 1) })
        .unwrap_err();
    assert!(
        matches!(fetch_kind(&err), FetchErrorKind::InsideRuntime),
        "{err}"
    );
    assert_eq!(server.hits("/blob"), 0);
}

#[test]
fn bad_urls_are_refused() {
    let fetcher = RangeFetcher::new(quick()).unwrap();
    assert!(HttpBlob::with_size(&fetcher, "ftp://127.0.0.1/x", 1).is_err());
    assert!(HttpBlob::with_size(&fetcher, "not a url", 1).is_err());
}

/// Counts what the fetcher asks of a blob's authentication.
#[derive(Default)]
struct CountingAuth {
    headers: std::sync::atomic::AtomicU64,
    renewals: std::sync::atomic::AtomicU64,
}

impl super::RequestAuth for CountingAuth {
    fn authorization(&self) -> lazypull_converter::Result<Option<String>> {
        self.headers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some("Bearer t".into()))
    }
    fn reauthenticate(&self, _challenge: Option<&str>) -> lazypull_converter::Result<()> {
        self.renewals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn a_401_re_authenticates_once_then_fails() {
    use std::sync::atomic::Ordering::Relaxed;
    let (server, fetcher, data) = setup(quick());
    let auth = std::sync::Arc::new(CountingAuth::default());
    let blob =
        HttpBlob::with_auth(&fetcher, &server.url("/blob"), SIZE as u64, auth.clone()).unwrap();
    // One 401: new credentials, the read goes through without counting as a retry.
    server.push(&[Fault::Status(401)]);
    assert_eq!(blob.read_vec(0, 10).unwrap(), data[..10]);
    assert_eq!(auth.renewals.load(Relaxed), 1);
    assert_eq!(fetcher.stats().retries, 0);
    assert!(auth.headers.load(Relaxed) >= 2);
    // 401 again after renewing: refused, with the status, at once.
    server.push(&[Fault::Status(401), Fault::Status(401)]);
    let err = blob.read_vec(0, 10).unwrap_err();
    assert_eq!(io_kind(&err), io::ErrorKind::PermissionDenied, "{err}");
    assert_eq!(auth.renewals.load(Relaxed), 2);
    // Without authentication a 401 is an ordinary refusal.
    let plain = HttpBlob::with_size(&fetcher, &server.url("/blob"), SIZE as u64).unwrap();
    server.push(&[Fault::Status(401)]);
    assert!(plain.read_vec(0, 10).is_err());
}

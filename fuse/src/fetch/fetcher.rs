//! The shared fetcher: one HTTP client, one connection pool, one small runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lazypull_converter::{Error, Result};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use super::error::{FetchError, FetchErrorKind, RequestDesc};
use super::options::{Counters, FetchOptions, FetchStats};

/// Fetches byte ranges of remote blobs for blocking callers (FUSE threads, parsers).
///
/// Cheap to clone; every clone shares one keep-alive connection pool, the in-flight limit of
/// [`FetchOptions::connections`], and the counters. Requests run on a small runtime owned by the
/// fetcher, so the later registry client (token auth) can share it.
#[derive(Clone)]
pub struct RangeFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    /// `Option` only so that `Drop` can shut it down without blocking.
    runtime: Option<Runtime>,
    net: Arc<Net>,
}

/// What a request needs, apart from the runtime: tasks hold this, never the runtime, so the
/// runtime is never dropped from one of its own threads.
pub(crate) struct Net {
    pub client: reqwest::Client,
    pub opts: FetchOptions,
    pub counters: Counters,
    /// Requests in flight; with it, the pool never needs more than `connections` connections.
    pub permits: Semaphore,
}

impl RangeFetcher {
    /// A fetcher with its own client and runtime.
    pub fn new(opts: FetchOptions) -> Result<Self> {
        let connections = opts.connections.max(1);
        let client = reqwest::Client::builder()
            // Redirects are followed by hand: the target is cached per blob, and an expired one
            // is re-resolved from the original URL.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.timeout)
            .timeout(opts.timeout)
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .danger_accept_invalid_certs(opts.accept_invalid_certs)
            .user_agent(concat!("lazypull/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unsupported(format!("HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lazypull-fetch")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the fetch runtime", e))?;
        Ok(RangeFetcher {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                net: Arc::new(Net {
                    client,
                    opts: FetchOptions {
                        connections,
                        ..opts
                    },
                    counters: Counters::default(),
                    permits: Semaphore::new(connections),
                }),
            }),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> FetchStats {
        self.inner.net.counters.snapshot()
    }

    /// The options in force.
    pub fn options(&self) -> &FetchOptions {
        &self.inner.net.opts
    }

    /// The runtime requests run on, for async users sharing the fetcher.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime_ref().handle()
    }

    pub(crate) fn net(&self) -> &Arc<Net> {
        &self.inner.net
    }

    fn runtime_ref(&self) -> &Runtime {
        // Only `Drop` takes it, and then no `&self` exists any more.
        self.inner
            .runtime
            .as_ref()
            .expect("runtime present until drop")
    }

    /// Runs `fut` to completion on the calling thread. Blocking inside a runtime would panic
    /// (or deadlock a worker), so that is an error instead; so is any request on a thread that
    /// forbade the network ([`crate::demand::local_only`]).
    pub(crate) fn block_on<T>(
        &self,
        request: impl FnOnce() -> RequestDesc,
        fut: impl Future<Output = std::result::Result<T, FetchError>>,
    ) -> Result<T> {
        if !crate::demand::network_allowed() {
            return Err(crate::demand::would_block(request()));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(FetchError::new(request(), FetchErrorKind::InsideRuntime).into());
        }
        self.runtime_ref().block_on(fut).map_err(Error::from)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last clone may be dropped inside some other runtime, where a blocking shutdown panics.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for RangeFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeFetcher")
            .field("options", &self.inner.net.opts)
            .field("stats", &self.stats())
            .finish()
    }
}

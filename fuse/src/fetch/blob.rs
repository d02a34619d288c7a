//! A remote blob read through HTTP range requests.

use std::sync::Arc;

use lazypull_converter::blob::check_range;
use lazypull_converter::{BlobRead, Error, Result};
use reqwest::{StatusCode, Url};

use super::error::{FetchError, FetchErrorKind, RequestDesc};
use super::fetcher::RangeFetcher;
use super::range::{coalesce, Span};
use super::request::{get_span, get_whole, head_size, probe_size, with_retries, Remote};

/// A remote blob of known size, read by `GET` with `Range: bytes=first-last`.
///
/// Cheap to clone. Ranges are clamped to the size, so a request never reaches past the end (some
/// registries answer that with a 416 whose Content-Length is wrong). When the URL redirects (a
/// registry sending clients to blob storage), the final URL is cached and asked directly; when it
/// later answers 403/404/410 (an expired presigned URL) it is resolved again from the original
/// URL. A server that ignores `Range` and answers 200 with the whole blob is served by skipping
/// to the range and closing the connection after it; from then on [`HttpBlob::read_ranges`] asks
/// for all its ranges in one request, since every request streams from the start anyway.
#[derive(Clone)]
pub struct HttpBlob {
    fetcher: RangeFetcher,
    remote: Arc<Remote>,
    size: u64,
}

impl HttpBlob {
    /// Opens `url`, learning its size by `HEAD`, or by `GET Range: bytes=0-0` when `HEAD` is
    /// refused or tells no size.
    pub fn open(fetcher: &RangeFetcher, url: &str) -> Result<Self> {
        let remote = Arc::new(Remote::new(parse_url(url)?, None));
        let net = fetcher.net();
        let desc = || RequestDesc::new("HEAD", &remote.url, None);
        let head = fetcher.block_on(
            desc,
            with_retries(net, &remote, desc, |start, cached| {
                head_size(net, &remote, start, cached)
            }),
        );
        let size = match head {
            Ok(Some(size)) => size,
            // No size, or a 4xx (a presigned URL signed for GET only, HEAD not allowed).
            Ok(None) => probe(fetcher, &remote)?,
            Err(e) if refused(&e) => probe(fetcher, &remote)?,
            Err(e) => return Err(e),
        };
        Ok(HttpBlob {
            fetcher: fetcher.clone(),
            remote,
            size,
        })
    }

    /// A blob whose size is known (from a descriptor): nothing is asked until the first read.
    pub fn with_size(fetcher: &RangeFetcher, url: &str, size: u64) -> Result<Self> {
        Ok(HttpBlob {
            fetcher: fetcher.clone(),
            remote: Arc::new(Remote::new(parse_url(url)?, None)),
            size,
        })
    }

    /// A registry blob of known size (from its descriptor), its requests authorised by `auth`
    /// (a 401 re-authenticates once, then retries).
    pub fn with_auth(
        fetcher: &RangeFetcher,
        url: &str,
        size: u64,
        auth: Arc<dyn super::RequestAuth>,
    ) -> Result<Self> {
        Ok(HttpBlob {
            fetcher: fetcher.clone(),
            remote: Arc::new(Remote::new(parse_url(url)?, Some(auth))),
            size,
        })
    }

    /// A whole small file (an image index, a manifest) by one plain `GET`, at most `max` bytes.
    pub fn fetch_whole(fetcher: &RangeFetcher, url: &str, max: u64) -> Result<Vec<u8>> {
        let remote = Remote::new(parse_url(url)?, None);
        let net = fetcher.net();
        let desc = || RequestDesc::new("GET", &remote.url, None);
        fetcher.block_on(
            desc,
            with_retries(net, &remote, desc, |start, cached| {
                get_whole(net, &remote, start, cached, max)
            }),
        )
    }

    /// The URL the blob was opened with.
    pub fn url(&self) -> &Url {
        &self.remote.url
    }

    /// Whether the server was seen answering a range request with the whole blob.
    pub fn server_ignores_ranges(&self) -> bool {
        self.remote.ignores_ranges()
    }

    /// The fetcher this blob reads through.
    pub fn fetcher(&self) -> &RangeFetcher {
        &self.fetcher
    }

    /// Reads several `(offset, len)` ranges, each clamped to the blob (so a result is shorter
    /// than asked at the end, and empty past it). Ranges at most
    /// [`coalesce_gap`](super::FetchOptions::coalesce_gap) apart, overlapping ones included,
    /// share one request; the requests run concurrently, at most `connections` at a time.
    pub fn read_ranges(&self, ranges: &[(u64, u64)]) -> Result<Vec<Vec<u8>>> {
        let spans: Vec<Span> = ranges
            .iter()
            .map(|&(off, len)| Span::clamped(off, len, self.size))
            .collect();
        let gap = if self.remote.ignores_ranges() {
            u64::MAX
        } else {
            self.fetcher.options().coalesce_gap
        };
        let groups = coalesce(&spans, gap);
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); ranges.len()];
        if groups.is_empty() {
            return Ok(out);
        }
        let first = groups[0].span;
        let bodies = self.fetcher.block_on(|| self.desc(first), async {
            let tasks: Vec<_> = groups
                .iter()
                .map(|g| {
                    tokio::spawn(fetch(
                        self.fetcher.net().clone(),
                        self.remote.clone(),
                        g.span,
                    ))
                })
                .collect();
            let mut bodies = Vec::with_capacity(tasks.len());
            for (task, g) in tasks.into_iter().zip(&groups) {
                let body = task.await.map_err(|e| {
                    let reason = format!("fetch task failed: {e}");
                    FetchError::new(
                        self.desc(g.span),
                        FetchErrorKind::Transport {
                            message: reason,
                            retries: 0,
                        },
                    )
                })??;
                bodies.push(body);
            }
            Ok(bodies)
        })?;
        for (group, body) in groups.iter().zip(bodies) {
            for &i in &group.members {
                let s = spans[i];
                let from = (s.start - group.span.start) as usize;
                out[i] = body[from..from + s.len() as usize].to_vec();
            }
        }
        Ok(out)
    }

    fn desc(&self, span: Span) -> RequestDesc {
        RequestDesc::new("GET", &self.remote.url, span.inclusive())
    }
}

/// Fetches one span with retries; owned arguments so it can run as its own task.
async fn fetch(
    net: Arc<super::fetcher::Net>,
    remote: Arc<Remote>,
    span: Span,
) -> std::result::Result<Vec<u8>, FetchError> {
    let desc = || RequestDesc::new("GET", &remote.url, span.inclusive());
    with_retries(&net, &remote, desc, |start, cached| {
        get_span(&net, &remote, start, cached, span)
    })
    .await
}

/// Learns the size by `GET Range: bytes=0-0`.
fn probe(fetcher: &RangeFetcher, remote: &Remote) -> Result<u64> {
    let net = fetcher.net();
    let desc = || RequestDesc::new("GET", &remote.url, Some((0, 0)));
    fetcher.block_on(
        desc,
        with_retries(net, remote, desc, |start, cached| {
            probe_size(net, remote, start, cached)
        }),
    )
}

/// Whether a HEAD failed with a client error, which a ranged GET may not share.
fn refused(e: &Error) -> bool {
    matches!(
        FetchError::find(e).map(|f| &f.kind),
        Some(FetchErrorKind::Status { status, .. }) if status.is_client_error() && *status != StatusCode::TOO_MANY_REQUESTS
    )
}

fn parse_url(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| Error::Invalid(format!("URL `{url}`: {e}")))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(Error::Invalid(format!(
            "URL `{}`: scheme `{other}` is not http or https",
            super::error::redact(&parsed)
        ))),
    }
}

impl BlobRead for HttpBlob {
    fn len(&self) -> u64 {
        self.size
    }

    /// One range request for exactly `buf`; an empty `buf` asks nothing.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.size, off, buf.len() as u64)?;
        let span = Span::clamped(off, buf.len() as u64, self.size);
        if span.is_empty() {
            return Ok(());
        }
        let body = self.fetcher.block_on(
            || self.desc(span),
            fetch(self.fetcher.net().clone(), self.remote.clone(), span),
        )?;
        buf.copy_from_slice(&body);
        Ok(())
    }
}

impl std::fmt::Debug for HttpBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBlob")
            .field("url", &super::error::redact(&self.remote.url))
            .field("size", &self.size)
            .finish()
    }
}

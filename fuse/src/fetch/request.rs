//! One logical fetch: attempts bounded by the per-request timeout, redirects followed by hand
//! and cached per blob, retryable failures retried with backoff.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use std::sync::Arc;

use reqwest::header::{
    HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::RequestAuth;
use super::error::{FetchError, FetchErrorKind, RequestDesc};
use super::fetcher::Net;
use super::options::Counters;
use super::range::{ContentRange, Span};

/// Hops followed from one URL; registries redirect once, to blob storage.
const MAX_REDIRECTS: usize = 5;

/// A remote blob's addresses: the URL it was opened with and where that last redirected to.
pub(crate) struct Remote {
    pub url: Url,
    /// The final URL of the last redirect chain, asked directly until it stops working.
    location: RwLock<Option<Url>>,
    /// Set once the server answered a range request with the whole body.
    ignores_ranges: AtomicBool,
    /// Authorisation for requests to `url`'s origin (a registry).
    auth: Option<Arc<dyn RequestAuth>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &super::error::redact(&self.url))
            .field("authenticated", &self.auth.is_some())
            .finish()
    }
}

impl Remote {
    pub fn new(url: Url, auth: Option<Arc<dyn RequestAuth>>) -> Self {
        Remote {
            url,
            location: RwLock::new(None),
            ignores_ranges: AtomicBool::new(false),
            auth,
        }
    }

    /// The `Authorization` for a request to `url`: only to the blob's own origin.
    async fn authorization(&self, url: &Url) -> Result<Option<String>, Failure> {
        let Some(auth) = self.auth.clone() else {
            return Ok(None);
        };
        if url.origin() != self.url.origin() {
            return Ok(None);
        }
        blocking(move || auth.authorization()).await
    }

    /// Answer a 401 of the origin: new credentials, or a failure saying why not.
    async fn reauthenticate(&self, challenge: Option<String>) -> Result<(), Failure> {
        let Some(auth) = self.auth.clone() else {
            return Err(Failure::Refused(StatusCode::UNAUTHORIZED));
        };
        blocking(move || auth.reauthenticate(challenge.as_deref())).await
    }

    pub fn ignores_ranges(&self) -> bool {
        self.ignores_ranges.load(Ordering::Relaxed)
    }

    /// Where to send the next request, and whether that is a cached redirect target.
    fn target(&self) -> (Url, bool) {
        match &*self.location.read().unwrap_or_else(|e| e.into_inner()) {
            Some(url) => (url.clone(), true),
            None => (self.url.clone(), false),
        }
    }

    fn remember(&self, last: &Url) {
        if *last != self.url {
            *self.location.write().unwrap_or_else(|e| e.into_inner()) = Some(last.clone());
        }
    }

    fn forget(&self) {
        *self.location.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// How one attempt ended short of success.
pub(crate) enum Failure {
    /// Worth another attempt, after the server's `Retry-After` if it sent one.
    Transient {
        reason: Transient,
        retry_after: Option<Duration>,
    },
    /// A cached redirect target refused (expired presigned URL): resolve again.
    Stale(StatusCode),
    /// A status retrying cannot change.
    Refused(StatusCode),
    /// 401 from the origin, with its `WWW-Authenticate`: re-authenticate, then try again.
    Unauthorized(Option<String>),
    /// Anything else retrying cannot change.
    Fatal(FetchErrorKind),
}

pub(crate) enum Transient {
    Status(StatusCode),
    Timeout,
    Transport(String),
    BodyLength { got: u64, expected: u64 },
}

impl Transient {
    fn into_kind(self, retries: u32, timeout: Duration) -> FetchErrorKind {
        match self {
            Transient::Status(status) => FetchErrorKind::Status { status, retries },
            Transient::Timeout => FetchErrorKind::Timeout { timeout, retries },
            Transient::Transport(message) => FetchErrorKind::Transport { message, retries },
            Transient::BodyLength { got, expected } => FetchErrorKind::BodyLength {
                got,
                expected,
                retries,
            },
        }
    }
}

fn transient(reason: Transient) -> Failure {
    Failure::Transient {
        reason,
        retry_after: None,
    }
}

fn transport(e: reqwest::Error) -> Failure {
    // reqwest names the full URL, query string (presigned secrets) included; ours names it redacted.
    let e = e.without_url();
    if e.is_timeout() {
        return transient(Transient::Timeout);
    }
    if e.is_builder() {
        return Failure::Fatal(FetchErrorKind::Url(e.to_string()));
    }
    // The source chain holds the useful part ("connection reset by peer").
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    transient(Transient::Transport(message))
}

/// Runs `attempt` until it succeeds, fails for good, or the retries are spent.
///
/// Each attempt holds one of the `connections` permits and is cut off after the timeout; the
/// permit is released while backing off.
pub(crate) async fn with_retries<T, F, Fut>(
    net: &Net,
    remote: &Remote,
    desc: impl Fn() -> RequestDesc,
    mut attempt: F,
) -> Result<T, FetchError>
where
    F: FnMut(Url, bool) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let opts = &net.opts;
    let fail = |kind| {
        Counters::add(&net.counters.failures, 1);
        FetchError::new(desc(), kind)
    };
    let mut retries = 0;
    let mut resolved_again = false;
    let mut reauthenticated = false;
    loop {
        let (start, cached) = remote.target();
        let outcome = {
            let _permit = net
                .permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            tokio::time::timeout(opts.timeout, attempt(start, cached))
                .await
                .unwrap_or_else(|_| Err(transient(Transient::Timeout)))
        };
        let (reason, retry_after) = match outcome {
            Ok(value) => return Ok(value),
            Err(Failure::Stale(_)) if cached && !resolved_again => {
                remote.forget();
                resolved_again = true;
                continue;
            }
            Err(Failure::Unauthorized(challenge)) if !reauthenticated => {
                reauthenticated = true;
                match remote.reauthenticate(challenge).await {
                    Ok(()) => continue,
                    Err(Failure::Fatal(kind)) => return Err(fail(kind)),
                    Err(_) => {
                        let status = StatusCode::UNAUTHORIZED;
                        return Err(fail(FetchErrorKind::Status { status, retries }));
                    }
                }
            }
            Err(Failure::Unauthorized(_)) => {
                let status = StatusCode::UNAUTHORIZED;
                return Err(fail(FetchErrorKind::Status { status, retries }));
            }
            Err(Failure::Stale(status) | Failure::Refused(status)) => {
                return Err(fail(FetchErrorKind::Status { status, retries }))
            }
            Err(Failure::Fatal(kind)) => return Err(fail(kind)),
            Err(Failure::Transient {
                reason,
                retry_after,
            }) => (reason, retry_after),
        };
        if retries >= opts.retries {
            return Err(fail(reason.into_kind(retries, opts.timeout)));
        }
        retries += 1;
        Counters::add(&net.counters.retries, 1);
        tokio::time::sleep(opts.delay(retries, retry_after)).await;
    }
}

/// Runs a blocking authentication call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> lazypull_converter::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Fatal(FetchErrorKind::Auth(e.to_string()))),
        Err(e) => Err(Failure::Fatal(FetchErrorKind::Auth(format!(
            "authentication task failed: {e}"
        )))),
    }
}

/// Sends one request from `start`, following redirects; the final response and its URL.
async fn send(
    net: &Net,
    remote: &Remote,
    method: Method,
    start: Url,
    range: Option<(u64, u64)>,
) -> Result<(Response, Url), Failure> {
    let mut url = start;
    for _ in 0..=MAX_REDIRECTS {
        let mut request = net.client.request(method.clone(), url.clone());
        if let Some((first, last)) = range {
            request = request.header(RANGE, format!("bytes={first}-{last}"));
        }
        if let Some(value) = remote.authorization(&url).await? {
            request = request.header(AUTHORIZATION, value);
        }
        Counters::add(&net.counters.requests, 1);
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED && remote.auth.is_some() {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Err(Failure::Unauthorized(challenge));
        }
        if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
            return Ok((response, url));
        }
        let bad = |why: String| Failure::Fatal(FetchErrorKind::Redirect(why));
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad(format!("{status} without a Location")))?;
        let next = url
            .join(location)
            .map_err(|e| bad(format!("Location `{location}`: {e}")))?;
        if !matches!(next.scheme(), "http" | "https") {
            return Err(bad(format!("to a {} URL", next.scheme())));
        }
        url = next;
    }
    Err(Failure::Fatal(FetchErrorKind::Redirect(format!(
        "more than {MAX_REDIRECTS} hops"
    ))))
}

/// What a non-success, non-redirect status means for the fetch.
fn classify(status: StatusCode, headers: &HeaderMap, cached: bool) -> Failure {
    match status {
        // We never ask past the size we know, so the size is wrong; the body of a 416 may
        // disagree with its Content-Length (distribution), so it is never read.
        StatusCode::RANGE_NOT_SATISFIABLE => Failure::Fatal(FetchErrorKind::NotSatisfiable {
            status,
            size: content_range(headers).and_then(|r| r.total()),
        }),
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Failure::Transient {
            reason: Transient::Status(status),
            retry_after: retry_after(headers),
        },
        s if s.is_server_error() => Failure::Transient {
            reason: Transient::Status(status),
            retry_after: retry_after(headers),
        },
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE if cached => {
            Failure::Stale(status)
        }
        _ => Failure::Refused(status),
    }
}

/// `Retry-After` in seconds; the HTTP-date form falls back to our own backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    ContentRange::parse(headers.get(CONTENT_RANGE)?.to_str().ok()?)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One attempt at the bytes of `span` (non-empty, inside the blob).
pub(crate) async fn get_span(
    net: &Net,
    remote: &Remote,
    start: Url,
    cached: bool,
    span: Span,
) -> Result<Vec<u8>, Failure> {
    let (first, last) = span.inclusive().expect("callers skip empty spans");
    let (mut response, last_url) =
        send(net, remote, Method::GET, start, Some((first, last))).await?;
    let status = response.status();
    let want = span.len();
    let skip = match status {
        StatusCode::PARTIAL_CONTENT => {
            match content_range(response.headers()) {
                Some(ContentRange::Bytes {
                    first: f, last: l, ..
                }) if (f, l) == (first, last) => {}
                None if response.headers().get(CONTENT_RANGE).is_none() => {}
                _ => {
                    let got = response.headers().get(CONTENT_RANGE);
                    let got = got.and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                    return Err(Failure::Fatal(FetchErrorKind::ContentRange { got }));
                }
            }
            if let Some(len) = content_length(response.headers()).filter(|&n| n != want) {
                return Err(transient(Transient::BodyLength {
                    got: len,
                    expected: want,
                }));
            }
            // It honours Range after all (one 200 may have come from a misbehaving proxy or a
            // replica): fetch ranges apart again rather than stream the gaps between them.
            remote.ignores_ranges.store(false, Ordering::Relaxed);
            0
        }
        // The server ignored Range and sends the whole blob: skip to the span, stop after it.
        StatusCode::OK => {
            remote.ignores_ranges.store(true, Ordering::Relaxed);
            span.start
        }
        s => return Err(classify(s, response.headers(), cached)),
    };
    remote.remember(&last_url);
    read_body(
        net,
        &mut response,
        skip,
        want,
        status == StatusCode::PARTIAL_CONTENT,
    )
    .await
}

/// Reads `want` bytes after skipping `skip`; with `exact`, the body must end right there.
async fn read_body(
    net: &Net,
    response: &mut Response,
    mut skip: u64,
    want: u64,
    exact: bool,
) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::with_capacity(want as usize);
    let mut seen = 0u64;
    loop {
        let chunk = match response.chunk().await.map_err(transport)? {
            Some(chunk) => chunk,
            None if out.len() as u64 == want => return Ok(out),
            None => {
                return Err(transient(Transient::BodyLength {
                    got: seen,
                    expected: want,
                }))
            }
        };
        Counters::add(&net.counters.bytes, chunk.len() as u64);
        seen += chunk.len() as u64;
        let mut rest = &chunk[..];
        let n = skip.min(rest.len() as u64) as usize;
        rest = &rest[n..];
        skip -= n as u64;
        let take = (want - out.len() as u64).min(rest.len() as u64) as usize;
        out.extend_from_slice(&rest[..take]);
        if exact && take < rest.len() {
            return Err(transient(Transient::BodyLength {
                got: seen,
                expected: want,
            }));
        }
        if !exact && out.len() as u64 == want {
            // Dropping the response closes the connection instead of reading the rest.
            return Ok(out);
        }
    }
}

/// One attempt at a whole small file by a plain `GET`, refusing more than `max` bytes.
pub(crate) async fn get_whole(
    net: &Net,
    remote: &Remote,
    start: Url,
    cached: bool,
    max: u64,
) -> Result<Vec<u8>, Failure> {
    let (mut response, last_url) = send(net, remote, Method::GET, start, None).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(classify(status, response.headers(), cached));
    }
    let len = content_length(response.headers());
    if len.is_some_and(|n| n > max) {
        return Err(Failure::Fatal(FetchErrorKind::NoSize(format!(
            "{} bytes, more than the {max} accepted",
            len.unwrap_or(0)
        ))));
    }
    remote.remember(&last_url);
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        Counters::add(&net.counters.bytes, chunk.len() as u64);
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(Failure::Fatal(FetchErrorKind::NoSize(format!(
                "more than the {max} bytes accepted"
            ))));
        }
        out.extend_from_slice(&chunk);
    }
    if len.is_some_and(|n| n != out.len() as u64) {
        return Err(transient(Transient::BodyLength {
            got: out.len() as u64,
            expected: len.unwrap_or(0),
        }));
    }
    Ok(out)
}

/// One attempt at the size by `HEAD`: `None` when the answer has no Content-Length.
pub(crate) async fn head_size(
    net: &Net,
    remote: &Remote,
    start: Url,
    cached: bool,
) -> Result<Option<u64>, Failure> {
    let (response, last_url) = send(net, remote, Method::HEAD, start, None).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(classify(status, response.headers(), cached));
    }
    remote.remember(&last_url);
    // Not `Response::content_length`: that is the body's length, always 0 for a HEAD.
    Ok(content_length(response.headers()))
}

/// One attempt at the size by `GET Range: bytes=0-0`, for servers that refuse HEAD.
pub(crate) async fn probe_size(
    net: &Net,
    remote: &Remote,
    start: Url,
    cached: bool,
) -> Result<u64, Failure> {
    let (response, last_url) = send(net, remote, Method::GET, start, Some((0, 0))).await?;
    let headers = response.headers();
    let no_size = |why: &str| Failure::Fatal(FetchErrorKind::NoSize(why.to_string()));
    let size = match response.status() {
        StatusCode::PARTIAL_CONTENT => content_range(headers)
            .and_then(|r| r.total())
            .ok_or_else(|| no_size("206 without a total in Content-Range"))?,
        StatusCode::OK => {
            remote.ignores_ranges.store(true, Ordering::Relaxed);
            content_length(headers).ok_or_else(|| no_size("200 without Content-Length"))?
        }
        // The one range that cannot be satisfied with a correct answer: an empty blob.
        StatusCode::RANGE_NOT_SATISFIABLE => match content_range(headers) {
            Some(ContentRange::Unsatisfied { total: 0 }) => 0,
            _ => return Err(classify(response.status(), headers, cached)),
        },
        s => return Err(classify(s, headers, cached)),
    };
    remote.remember(&last_url);
    Ok(size)
}

//! One repository of one registry over HTTP: authentication, retries and error messages.

use std::io::{self, Read};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client as Http, Response};
use reqwest::header::{HeaderName, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, Result};

use super::auth::{docker_config_credentials, Challenge, Credentials};
use super::reference::Reference;

/// How lazypull talks to registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// `--creds USER:PASS`: used for every registry instead of the docker config.
    pub creds: Option<Credentials>,
    /// Speak plain HTTP to every registry (loopback hosts always get plain HTTP).
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// Attempts after the first for connection failures and 5xx/429 answers.
    pub retries: u32,
    /// Base of the exponential backoff between attempts.
    pub backoff: Duration,
    /// Longest wait for a connection, for an answer's headers, and for each read of a body (so
    /// a large blob may take longer as long as its bytes keep coming).
    pub timeout: Duration,
    /// Blobs larger than this are uploaded in PATCH chunks of this size.
    pub upload_chunk_size: u64,
    /// Registries (`HOST[:PORT]`) asked first for pulls, in order; the image's own registry is
    /// the fallback. Pushes never go to a mirror.
    pub mirrors: Vec<String>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            creds: None,
            plain_http: false,
            insecure: false,
            retries: 3,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(60),
            upload_chunk_size: 16 << 20,
            mirrors: Vec::new(),
        }
    }
}

/// What the client currently sends in `Authorization`.
#[derive(Clone, Debug)]
enum AuthState {
    /// Nothing yet: the registry has not asked.
    Anonymous,
    /// `Basic` with the credentials.
    Basic,
    /// A bearer token, good until `expires`, obtained for `challenge`.
    Bearer {
        header: String,
        expires: Instant,
        challenge: Challenge,
    },
}

/// A client for one repository: `GET`/`HEAD`/`PUT`… with the registry's authentication.
///
/// The first `401` tells which scheme the registry wants: `Basic` is answered with the
/// credentials, `Bearer` by asking the challenge's realm for a token covering this client's
/// scopes (pull, or pull and push, plus pull on repositories blobs are mounted from). Tokens are
/// renewed when they expire and whenever the registry answers `401` again.
pub struct Client {
    http: Http,
    base: Url,
    reference: Reference,
    scopes: Vec<String>,
    creds: Option<Credentials>,
    opts: RegistryOptions,
    auth: RwLock<AuthState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("repository", &self.reference.repository)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Client {
    /// A client for `reference`'s repository; `push` asks for push rights too, `mount_from`
    /// names repositories of the same registry to read (for cross-repository blob mounts).
    pub fn new(
        reference: &Reference,
        push: bool,
        mount_from: &[String],
        opts: &RegistryOptions,
    ) -> Result<Self> {
        let scheme = if opts.plain_http || reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let base = Url::parse(&format!("{scheme}://{}/", reference.api_host())).map_err(|e| {
            Error::Invalid(format!(
                "registry {}: not a usable host: {e}",
                reference.registry
            ))
        })?;
        let http = Http::builder()
            .connect_timeout(opts.timeout)
            .timeout(opts.timeout)
            .danger_accept_invalid_certs(opts.insecure)
            .user_agent(concat!("lazypull/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unsupported(format!("HTTP client: {e}")))?;
        let creds = match &opts.creds {
            Some(c) => Some(c.clone()),
            None => docker_config_credentials(&reference.registry)
                .map_err(|e| e.context(format!("registry {}: credentials", reference.registry)))?,
        };
        let actions = if push { "pull,push" } else { "pull" };
        let mut scopes = vec![format!("repository:{}:{actions}", reference.repository)];
        scopes.extend(
            mount_from
                .iter()
                .filter(|r| **r != reference.repository)
                .map(|r| format!("repository:{r}:pull")),
        );
        Ok(Client {
            http,
            base,
            reference: reference.clone(),
            scopes,
            creds,
            opts: opts.clone(),
            auth: RwLock::new(AuthState::Anonymous),
        })
    }

    /// The options the client was made with.
    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The reference the client was made for.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// `…/v2/REPO/PATH`.
    pub fn url(&self, path: &str) -> Url {
        let joined = format!("v2/{}/{path}", self.reference.repository);
        // The repository and path are validated names and digests, so this cannot fail.
        self.base.join(&joined).expect("a valid registry path")
    }

    /// The URL of a blob of this repository.
    pub fn blob_url(&self, digest: &Digest) -> Url {
        self.url(&format!("blobs/{digest}"))
    }

    /// The URL of a manifest by tag or digest.
    pub fn manifest_url(&self, target: &str) -> Url {
        self.url(&format!("manifests/{target}"))
    }

    /// `registry HOST: repository REPO: STEP`, the prefix of every error.
    pub fn context(&self, step: &str) -> String {
        format!(
            "registry {}: repository {}: {step}",
            self.reference.registry, self.reference.repository
        )
    }

    /// The `Authorization` value to send now, renewing an expired token first.
    pub fn authorization(&self) -> Result<Option<String>> {
        let state = self.auth.read().unwrap_or_else(|e| e.into_inner()).clone();
        match state {
            AuthState::Anonymous => Ok(None),
            AuthState::Basic => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            AuthState::Bearer {
                header,
                expires,
                challenge,
            } => {
                if Instant::now() < expires {
                    return Ok(Some(header));
                }
                self.fetch_token(&challenge, "renew the token")?;
                // The new token, however short its life: never loop on renewals.
                match &*self.auth.read().unwrap_or_else(|e| e.into_inner()) {
                    AuthState::Bearer { header, .. } => Ok(Some(header.clone())),
                    _ => Ok(None),
                }
            }
        }
    }

    /// Answer a `401`: pick the scheme its `WWW-Authenticate` asks for and get what it needs.
    pub fn authenticate(&self, step: &str, www_authenticate: Option<&str>) -> Result<()> {
        let denied = |why: String| {
            Error::io(
                self.context(step),
                io::Error::new(io::ErrorKind::PermissionDenied, why),
            )
        };
        let challenge = www_authenticate.and_then(Challenge::parse).ok_or_else(|| {
            denied("401 Unauthorized without a WWW-Authenticate challenge".into())
        })?;
        match challenge.scheme.as_str() {
            "basic" => {
                if self.creds.is_none() {
                    return Err(denied(
                        "401 Unauthorized: the registry wants a user name and password \
                         (give --creds USER:PASS or log in with a docker config)"
                            .into(),
                    ));
                }
                *self.auth.write().unwrap_or_else(|e| e.into_inner()) = AuthState::Basic;
                Ok(())
            }
            "bearer" => self.fetch_token(&challenge, step),
            other => Err(denied(format!(
                "401 Unauthorized: unsupported authentication scheme `{other}`"
            ))),
        }
    }

    /// Ask the challenge's realm for a token covering our scopes and the one the challenge names.
    fn fetch_token(&self, challenge: &Challenge, step: &str) -> Result<()> {
        let realm = challenge.params.get("realm").ok_or_else(|| {
            Error::io(
                self.context(step),
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "Bearer challenge without a realm",
                ),
            )
        })?;
        let what = || format!("{}: token from {realm}", self.context(step));
        let mut url = Url::parse(realm).map_err(|e| Error::Invalid(format!("{}: {e}", what())))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                q.append_pair("service", service);
            }
            let mut scopes = self.scopes.clone();
            if let Some(s) = challenge.params.get("scope") {
                for s in s.split(' ') {
                    if !s.is_empty() && !scopes.iter().any(|x| x == s) {
                        scopes.push(s.to_string());
                    }
                }
            }
            for s in &scopes {
                q.append_pair("scope", s);
            }
        }
        let mut attempt = 0;
        let response = loop {
            let mut request = self.http.get(url.clone());
            if let Some(c) = &self.creds {
                request = request.header(AUTHORIZATION, c.basic_header());
            }
            match request.send() {
                Ok(r) if r.status().is_server_error() && attempt < self.opts.retries => {}
                Ok(r) => break r,
                Err(e) if attempt < self.opts.retries => {
                    tracing::warn!("{}: {}; retrying", what(), describe(&e));
                }
                Err(e) => return Err(transport_error(what(), &e, attempt)),
            }
            attempt += 1;
            std::thread::sleep(self.delay(attempt));
        };
        if !response.status().is_success() {
            return Err(status_error(what(), response));
        }
        let body = read_small(response, 1 << 20).map_err(|e| Error::io(what(), e))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::format(format!("{}: answer is not JSON: {e}", what())))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::format(format!("{}: answer has no token", what())))?;
        // The spec's default lifetime is 60 s; renew a little early so no request carries a
        // token that expires in flight.
        // A day at most: a hostile `expires_in` must not overflow the clock.
        let lifetime = v.get("expires_in").and_then(Value::as_u64).unwrap_or(60);
        let expires = Instant::now() + Duration::from_secs(lifetime.clamp(6, 86_400) - 5);
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = AuthState::Bearer {
            header: format!("Bearer {token}"),
            expires,
            challenge: challenge.clone(),
        };
        Ok(())
    }

    /// The wait before retry number `attempt` (1-based): exponential, capped at 5 s.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.opts
            .backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(10))
            .min(Duration::from_secs(5))
    }

    /// Send one request with authentication; a `401` is answered once, connection failures
    /// and 5xx/429 are retried when `retry` (requests that are safe to repeat). Any other
    /// status is returned for the caller to judge.
    pub fn send(
        &self,
        step: &str,
        method: Method,
        url: Url,
        headers: &[(HeaderName, &str)],
        body: Option<&[u8]>,
        retry: bool,
    ) -> Result<Response> {
        let mut attempt = 0;
        let mut answered_401 = false;
        loop {
            let mut request = self.http.request(method.clone(), url.clone());
            for (name, value) in headers {
                request = request.header(name, *value);
            }
            if let Some(auth) = self.authorization().map_err(|e| e.context(step))? {
                request = request.header(AUTHORIZATION, auth);
            }
            if let Some(b) = body {
                request = request.body(b.to_vec());
            }
            match request.send() {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !answered_401 => {
                    answered_401 = true;
                    let challenge = r
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    self.authenticate(step, challenge.as_deref())?;
                    continue;
                }
                Ok(r) if retry && retryable_status(r.status()) => {
                    if attempt >= self.opts.retries {
                        let retries = format!(" (after {attempt} retries)");
                        return Err(status_error_with(self.context(step), r, &retries));
                    }
                    tracing::warn!("{}: {}; retrying", self.context(step), r.status());
                }
                Ok(r) => return Ok(r),
                Err(e) if retry && attempt < self.opts.retries => {
                    tracing::warn!("{}: {}; retrying", self.context(step), describe(&e));
                }
                Err(e) => return Err(transport_error(self.context(step), &e, attempt)),
            }
            attempt += 1;
            std::thread::sleep(self.delay(attempt));
        }
    }

    /// The error for an unexpected answer to `step`.
    pub fn status_error(&self, step: &str, response: Response) -> Error {
        status_error(self.context(step), response)
    }
}

fn retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

/// A reqwest error with its causes ("error sending request: connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    message
}

fn transport_error(what: String, e: &reqwest::Error, retries: u32) -> Error {
    let kind = if e.is_timeout() {
        io::ErrorKind::TimedOut
    } else {
        io::ErrorKind::ConnectionAborted
    };
    let message = format!("{} (after {retries} retries)", describe(e));
    let source = if retries > 0 {
        io::Error::new(kind, Exhausted(message))
    } else {
        io::Error::new(kind, message)
    };
    Error::io(what, source)
}

/// The reason of a failure that was already retried: starting the transfer over would only
/// retry it again.
#[derive(Debug)]
struct Exhausted(String);

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Exhausted {}

/// "404 Not Found: MANIFEST_UNKNOWN: manifest unknown" from the answer and its error body.
fn status_error(what: String, response: Response) -> Error {
    status_error_with(what, response, "")
}

/// [`status_error`] with `suffix` after the status and detail.
fn status_error_with(what: String, response: Response, suffix: &str) -> Error {
    let status = response.status();
    let kind = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => io::ErrorKind::PermissionDenied,
        StatusCode::NOT_FOUND => io::ErrorKind::NotFound,
        s if s.is_client_error() => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    let body = read_small(response, 64 << 10).unwrap_or_default();
    let detail = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            let code = e.get("code").and_then(Value::as_str).unwrap_or("");
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            Some(format!(": {code}: {msg}"))
        })
        .unwrap_or_default();
    let message = format!("{status}{detail}{suffix}");
    let source = if suffix.is_empty() {
        io::Error::new(kind, message)
    } else {
        io::Error::new(kind, Exhausted(message))
    };
    Error::io(what, source)
}

/// A body of at most `limit` bytes (a larger one is an error, never a large allocation).
pub(crate) fn read_small(response: Response, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    response.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("answer larger than {limit} bytes"),
        ));
    }
    Ok(out)
}

/// Whether an error is worth starting an upload or download over: not a refusal, and not a
/// request that was already retried.
pub(crate) fn is_transient(e: &Error) -> bool {
    match e.root() {
        Error::Io { source, .. } if source.get_ref().is_some_and(|r| r.is::<Exhausted>()) => false,
        Error::Io { source, .. } => !matches!(
            source.kind(),
            io::ErrorKind::PermissionDenied
                | io::ErrorKind::NotFound
                | io::ErrorKind::InvalidData
                | io::ErrorKind::InvalidInput
        ),
        _ => false,
    }
}

//! A real distribution registry (`docker-registry`, the Debian package of distribution 2.8) on
//! 127.0.0.1, started by a test and stopped when dropped: anonymous, htpasswd basic auth, or
//! token auth with a small token server of our own that signs RS256 JWTs with `openssl`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use lazypull::containerd::Registry;

use super::run_ok;

/// The one user the authenticating registries know.
pub const USER: &str = "lazy";
/// Their password.
pub const PASSWORD: &str = "pull:s3cret";
/// The token server's `service` and the tokens' audience.
const SERVICE: &str = "lazypull-test-registry";
/// The tokens' issuer.
const ISSUER: &str = "lazypull-test-token-server";

/// How the registry authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may pull and push.
    Anonymous,
    /// `Basic` against an htpasswd (bcrypt) file.
    Basic,
    /// `Bearer` tokens from [`TokenServer`].
    Token,
}

/// The tools a registry test needs, or the first one missing.
pub fn missing_registry_tools() -> Option<String> {
    super::missing_tool(&["docker-registry", "skopeo", "htpasswd", "openssl"])
}

/// A running registry; stopped (and its storage removed) on drop.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    pub auth: Auth,
    // Declared before `dir`: the process stops before its storage goes.
    registry: Registry,
    token: Option<TokenServer>,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Start a registry with `auth` on a free port.
    pub fn start(auth: Auth) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let token = (auth == Auth::Token).then(|| TokenServer::start(dir.path()));
        let auth_yaml = match (&auth, &token) {
            (Auth::Anonymous, _) => String::new(),
            (Auth::Basic, _) => {
                let htpasswd = run_ok(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, htpasswd).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: lazypull-test\n    path: {}\n",
                    path.display()
                )
            }
            (Auth::Token, Some(t)) => format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {}\n    autoredirect: false\n",
                t.port,
                t.cert_pem.display()
            ),
            (Auth::Token, None) => unreachable!("the token server starts with a token registry"),
        };
        let registry =
            Registry::start(dir.path(), port, &auth_yaml).unwrap_or_else(|e| panic!("{e:#}"));
        TestRegistry {
            host,
            auth,
            registry,
            token,
            dir,
        }
    }

    /// Start the registry process again (same port, same storage) after [`TestRegistry::stop`].
    pub fn resume(&mut self) {
        self.registry.resume().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Kill the registry process (storage is kept).
    pub fn stop(&mut self) {
        self.registry.stop();
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        self.registry.log()
    }

    /// The storage directory.
    pub fn storage(&self) -> PathBuf {
        self.registry.storage()
    }

    /// `USER:PASSWORD` when the registry wants credentials.
    pub fn creds(&self) -> Option<String> {
        (self.auth != Auth::Anonymous).then(|| format!("{USER}:{PASSWORD}"))
    }

    /// `docker://127.0.0.1:PORT/REPO`.
    pub fn docker_ref(&self, repo: &str) -> String {
        format!("docker://{}/{repo}", self.host)
    }

    /// `skopeo copy` from `src` to `dst`, with this registry's credentials on `side`
    /// (`src` or `dest`).
    pub fn skopeo_copy(&self, src: &str, dst: &str, side: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet"])
            .arg(format!("--{side}-tls-verify=false"));
        if let Some(c) = self.creds() {
            cmd.arg(format!("--{side}-creds")).arg(c);
        }
        run_ok(cmd.arg(src).arg(dst));
    }

    /// `skopeo inspect --raw`: the manifest (or index) a reference names, as bytes.
    pub fn skopeo_raw(&self, reference: &str) -> Vec<u8> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if let Some(c) = self.creds() {
            cmd.arg("--creds").arg(c);
        }
        run_ok(cmd.arg(reference))
    }

    /// How many token requests the token server answered (0 without one).
    pub fn tokens_issued(&self) -> u64 {
        self.token
            .as_ref()
            .map_or(0, |t| t.issued.load(Ordering::Relaxed))
    }

    /// Sign tokens with a new key from now on and restart the registry trusting only it: every
    /// token issued before is refused with a 401 (what an expired token gets, without waiting
    /// for distribution's 60 s leeway).
    pub fn rotate_token_key(&mut self) {
        let t = self.token.as_ref().expect("a token registry");
        {
            let mut cert = t.signer.cert_der_b64.lock().unwrap();
            *cert = new_signing_key(&t.signer.key, &t.cert_pem);
        }
        self.stop();
        self.resume();
    }

    /// Make the token server issue tokens valid for `secs` seconds from now on.
    pub fn set_token_lifetime(&self, secs: u64) {
        if let Some(t) = &self.token {
            t.lifetime.store(secs, Ordering::Relaxed);
        }
    }
}

use lazypull::containerd::free_port as try_free_port;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    try_free_port().expect("a free port")
}

/// The token server: `GET /token?service=…&scope=…` with Basic credentials answers a JWT
/// granting every action asked on every repository scope asked; wrong credentials get a 401.
/// distribution 2.8 checks the issuer, the audience (our service), `exp`/`nbf`, and the
/// signature by the `x5c` certificate, which must chain to its `rootcertbundle`.
struct TokenServer {
    port: u16,
    cert_pem: PathBuf,
    signer: Arc<Signer>,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
    lifetime: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

struct Signer {
    key: PathBuf,
    /// The signing certificate (DER, base64) for the `x5c` header; replaced by a key rotation.
    cert_der_b64: Mutex<String>,
    seq: Mutex<u64>,
}

/// A new RSA key and self-signed certificate at `key` and `cert`; the certificate as DER base64.
fn new_signing_key(key: &Path, cert: &Path) -> String {
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=lazypull-test-token"])
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(cert)
            .stderr(Stdio::null()),
    );
    let der = run_ok(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(cert),
    );
    base64::engine::general_purpose::STANDARD.encode(der)
}

impl TokenServer {
    fn start(dir: &Path) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert_pem = dir.join("token-cert.pem");
        let der = new_signing_key(&key, &cert_pem);
        let signer = Arc::new(Signer {
            key,
            cert_der_b64: Mutex::new(der),
            seq: Mutex::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let lifetime = Arc::new(AtomicU64::new(300));
        let signer_handle = signer.clone();
        let thread = {
            let (stop, issued, lifetime) = (stop.clone(), issued.clone(), lifetime.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let lifetime = lifetime.load(Ordering::Relaxed);
                    if serve_token(conn, &signer, lifetime) {
                        issued.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        TokenServer {
            port,
            cert_pem,
            signer: signer_handle,
            stop,
            issued,
            lifetime,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answer one token request; whether a token was issued.
fn serve_token(mut conn: TcpStream, signer: &Signer, lifetime: u64) -> bool {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return false;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    if authorization.as_deref() != Some(expected.as_str()) {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        let _ = write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        return false;
    }
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(("scope", value)) = pair.split_once('=') else {
            continue;
        };
        let scope = percent_decode(value);
        // repository:NAME:ACTIONS, where NAME may hold `/` but not `:`.
        let parts: Vec<&str> = scope.splitn(3, ':').collect();
        if let [kind, name, actions] = parts[..] {
            access.push(serde_json::json!({
                "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jti = {
        let mut seq = signer.seq.lock().unwrap();
        *seq += 1;
        format!("lazypull-{now}-{}", *seq)
    };
    // The key file is replaced only under this lock (key rotation), so key and x5c agree.
    let cert = signer.cert_der_b64.lock().unwrap();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [*cert]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + lifetime, "nbf": now - 10, "iat": now, "jti": jti,
        "access": access,
    });
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    // RS256 is RSASSA-PKCS1-v1_5 over SHA-256: exactly what `openssl dgst -sign` writes.
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&signer.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let mut signature = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut signature)
        .unwrap();
    assert!(child.wait().unwrap().success(), "openssl dgst -sign failed");
    drop(cert);
    let token = format!("{signing_input}.{}", b64(&signature));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": lifetime})
        .to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    true
}

/// `%2F` → `/`, `+` → space: enough for scopes.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A forward HTTP proxy for `http://` URLs, one request per connection: it forwards each
/// request to its origin with `Connection: close` and counts them. Enough to see that a client
/// honours `HTTP_PROXY`.
pub struct ForwardProxy {
    pub port: u16,
    requests: Arc<AtomicU64>,
    /// Milliseconds every request is held before it is forwarded.
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ForwardProxy {
    pub fn start() -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop, delay) = (requests.clone(), stop.clone(), delay_ms.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let requests = requests.clone();
                    let delay = Duration::from_millis(delay.load(Ordering::Relaxed));
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        if forward(conn) {
                            requests.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            })
        };
        ForwardProxy {
            port,
            requests,
            delay_ms,
            stop,
            thread: Some(thread),
        }
    }

    /// Hold every later request this long before forwarding it (a slow link).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Requests forwarded so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forward one request (`METHOD http://host:port/path HTTP/1.1`) and its answer.
fn forward(mut client: TcpStream) -> bool {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return false;
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Some(rest) = target.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    let mut body_len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("proxy-") {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            body_len = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; body_len];
    if reader.read_exact(&mut body).is_err() {
        return false;
    }
    let Ok(mut upstream) = TcpStream::connect(host) else {
        let _ = client.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return false;
    };
    if upstream.write_all(head.as_bytes()).is_err() || upstream.write_all(&body).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = upstream.read_to_end(&mut answer);
    client.write_all(&answer).is_ok()
}

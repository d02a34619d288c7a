//! Credentials (`--creds`, the docker config, credential helpers) and `WWW-Authenticate`
//! challenges.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::Value;

use crate::error::{Error, Result};

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print the secret, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

impl Credentials {
    /// Parse `USER:PASS` as given to `--creds` (the password may contain `:`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials {
                username: u.into(),
                password: p.into(),
            }),
            _ => Err(Error::Invalid(
                "--creds: expected USER:PASSWORD".to_string(),
            )),
        }
    }

    /// The `Authorization: Basic …` header value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `registry` from the docker config (`auths`, `credHelpers`, `credsStore`);
/// `None` when the file or an entry for the registry does not exist.
pub fn docker_config_credentials(registry: &str) -> Result<Option<Credentials>> {
    match docker_config_path() {
        Some(path) if path.is_file() => credentials_from_config(&path, registry),
        _ => Ok(None),
    }
}

/// What [`docker_config_credentials`] does, for one config file.
pub fn credentials_from_config(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("read {shown}"), e))?;
    let config: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(format!("docker config {shown}: {e}")))?;
    let want = normalise_host(registry);
    let entry = |key: &str| {
        config
            .get(key)
            .and_then(Value::as_object)
            .and_then(|m| m.iter().find(|(k, _)| normalise_host(k) == want))
            .map(|(k, v)| (k.clone(), v.clone()))
    };
    // A helper named for this registry wins over the global store, which wins over `auths`.
    if let Some((_, Value::String(helper))) = entry("credHelpers") {
        return run_helper(&helper, registry);
    }
    if let Some(Value::String(store)) = config.get("credsStore") {
        if let Some(c) = run_helper(store, registry)? {
            return Ok(Some(c));
        }
    }
    let Some((key, auth)) = entry("auths") else {
        return Ok(None);
    };
    let bad = |why: &str| Error::format(format!("docker config {shown}: auths `{key}`: {why}"));
    if auth
        .get("identitytoken")
        .is_some_and(|t| t.as_str() != Some(""))
    {
        return Err(Error::Unsupported(format!(
            "docker config {shown}: auths `{key}`: identity tokens (OAuth refresh tokens) are \
             not supported; give --creds USER:PASS"
        )));
    }
    if let Some(encoded) = auth.get("auth").and_then(Value::as_str) {
        if encoded.is_empty() {
            return Ok(None);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad("`auth` is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("`auth` is not UTF-8"))?;
        return Credentials::parse(&text)
            .map(Some)
            .map_err(|_| bad("`auth` is not USER:PASSWORD"));
    }
    match (
        auth.get("username").and_then(Value::as_str),
        auth.get("password").and_then(Value::as_str),
    ) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        })),
        _ => Ok(None),
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/path` → `host:5000`.
fn normalise_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// The server name a credential helper is asked about (Docker Hub's is historical).
fn helper_server(registry: &str) -> String {
    if normalise_host(registry) == "docker.io" {
        "https://index.docker.io/v1/".into()
    } else {
        registry.into()
    }
}

/// Run `docker-credential-NAME get` with the server on stdin; "not found" is `None`.
fn run_helper(name: &str, registry: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    let what = || format!("credential helper {program} (for {registry})");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("{}: start", what()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading closes the pipe; its exit status tells the story.
        let _ = stdin.write_all(helper_server(registry).as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("{}: wait", what()), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let said = format!(
            "{}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(Error::Invalid(format!(
            "{}: failed ({}): {said}",
            what(),
            out.status
        )));
    }
    let v: Value = serde_json::from_str(&stdout)
        .map_err(|e| Error::format(format!("{}: output is not JSON: {e}", what())))?;
    match (
        v.get("Username").and_then(Value::as_str),
        v.get("Secret").and_then(Value::as_str),
    ) {
        (Some(u), Some(s)) if !s.is_empty() => Ok(Some(Credentials {
            username: u.into(),
            password: s.into(),
        })),
        _ => Ok(None),
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer`, lowercase.
    pub scheme: String,
    /// Parameters with lowercase names (`realm`, `service`, `scope`).
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parse `Scheme k="v", k2=v2`; `None` when there is no scheme.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r.trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = BTreeMap::new();
        while !rest.is_empty() {
            let Some((key, after)) = rest.split_once('=') else {
                break;
            };
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let after = after.trim_start();
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                // Quoted string with backslash escapes; scopes contain `,` and `:`.
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.insert(key, value);
            rest = next.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = Challenge::parse("Bearer realm=x, error=\"a\\\"b\"").unwrap();
        assert_eq!(c.params["realm"], "x");
        assert_eq!(c.params["error"], "a\"b");
        assert!(Challenge::parse("  ").is_none());
    }

    #[test]
    fn docker_config_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("u1:p:1");
        std::fs::write(
            &path,
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": auth},
                "127.0.0.1:5000": {"username": "u2", "password": "p2"},
                "bad.io": {"auth": "%%%"},
                "oauth.io": {"identitytoken": "refresh"},
            }})
            .to_string(),
        )
        .unwrap();
        let hub = credentials_from_config(&path, "docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("u1", "p:1")
        );
        let local = credentials_from_config(&path, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(local.username, "u2");
        assert!(credentials_from_config(&path, "other.io")
            .unwrap()
            .is_none());
        let err = credentials_from_config(&path, "bad.io").unwrap_err();
        assert!(err.to_string().contains("auths `bad.io`"), "{err}");
        let err = credentials_from_config(&path, "oauth.io").unwrap_err();
        assert!(err.to_string().contains("identity tokens"), "{err}");
        assert!(!format!("{hub:?}").contains("p:1"));
        assert!(Credentials::parse("nopass").is_err());
    }
}

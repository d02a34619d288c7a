//! Registry references: `[HOST[:PORT]/]REPO[:TAG][@DIGEST]`, normalised as docker does.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::Error;

/// The registry a reference without a host names.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API actually lives.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// An image in a registry, normalised: `busybox` is `docker.io/library/busybox:latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The registry as named (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path (`library/busybox`, `org/app`).
    pub repository: String,
    /// The tag; `None` with a digest, and `latest` when neither was given.
    pub tag: Option<String>,
    /// The manifest digest, when the reference pins one.
    pub digest: Option<Digest>,
}

impl Reference {
    /// The host (and port) the registry's API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB || self.registry == "index.docker.io" {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifests endpoint for: the digest if pinned, else the tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// Whether plain HTTP is the default for this registry: a loopback host.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            // `[::1]:5000` and `host:port`; a bare IPv6 address never appears unbracketed here.
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for Reference {
    type Err = Error;

    /// Parse `[docker://]…`; the rules are docker's: the first path component is a registry
    /// when it has a `.` or a `:` or is `localhost`, Docker Hub repositories without a `/`
    /// live under `library/`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::Invalid(format!("registry reference `{s}`: {why}"));
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => (
                n,
                Some(d.parse::<Digest>().map_err(|e| invalid(&e.to_string()))?),
            ),
            None => (rest, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None => (name, None),
        };
        if let Some(t) = &tag {
            if !crate::oci::is_tag(t) {
                return Err(invalid(&format!("`{t}` is not a valid tag")));
            }
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, repo))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), repo.to_string())
            }
            _ => (DOCKER_HUB.to_string(), path.to_string()),
        };
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(invalid("bad registry host"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
                })
        };
        if !repository.split('/').all(component_ok) {
            return Err(invalid(
                "the repository must be lowercase path components ([a-z0-9._-])",
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = parse("busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(parse("docker://org/app:v1").repository, "org/app");
        assert_eq!(parse("docker.io/busybox:1").repository, "library/busybox");
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let d = Digest::of(b"x");
        let r = parse(&format!("127.0.0.1:5000/a/b:v1.0@{d}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1.0"));
        assert_eq!(r.target(), d.to_string());
        assert!(r.is_loopback());
        let r = parse(&format!("localhost/app@{d}"));
        assert_eq!(r.tag, None);
        assert!(r.is_loopback());
        assert!(!parse("ghcr.io/org/app").is_loopback());
        assert!(!parse("127.example.com/app").is_loopback());
        assert!(parse("127.0.0.2:80/app").is_loopback());
        assert_eq!(parse("ghcr.io/org/app").target(), "latest");
        assert_eq!(parse("[::1]:5000/x:t").registry, "[::1]:5000");
    }

    #[test]
    fn bad_references_are_refused() {
        for s in [
            "UPPER/case",
            "host.io/",
            "a:b:c",
            "x@sha256:zz",
            "a/b:-bad",
            "h st.io/x",
        ] {
            assert!(s.parse::<Reference>().is_err(), "{s}");
        }
    }
}

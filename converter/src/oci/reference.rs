//! Image references as the user types them: `TRANSPORT:LOCATION[:SELECTOR]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// Where an image lives, parsed from a transport string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:DIR[:TAG]`: an OCI image layout directory; TAG is matched against the
    /// `org.opencontainers.image.ref.name` annotations of `index.json`.
    Layout { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: a tar (optionally gzip-compressed) of an OCI image layout.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:REPO:TAG|:@N]`: a `docker save` tarball, optionally selecting an
    /// image by one of its `RepoTags` or by its position in `manifest.json`.
    DockerArchive {
        file: PathBuf,
        selector: Option<ArchiveSelector>,
    },
    /// `docker://HOST/REPO[:TAG|@DIGEST]` or a bare `HOST/REPO:TAG`: an image in a registry.
    Registry { reference: String },
}

/// Which image of a multi-image `docker save` tarball to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveSelector {
    /// An entry of `RepoTags` (`busybox:latest`, `docker.io/library/busybox:latest`).
    RepoTag(String),
    /// The N-th image of `manifest.json`, from 0.
    Index(usize),
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::Invalid(format!("image reference `{s}`: {why}"));
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            if dir.is_empty() {
                return Err(invalid("no directory after `oci:`"));
            }
            return Ok(ImageRef::Layout {
                dir: dir.into(),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest);
            if file.is_empty() {
                return Err(invalid("no file after `oci-archive:`"));
            }
            return Ok(ImageRef::OciArchive {
                file: file.into(),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, selector) = split_archive_selector(rest);
            if file.is_empty() {
                return Err(invalid("no file after `docker-archive:`"));
            }
            return Ok(ImageRef::DockerArchive {
                file: file.into(),
                selector,
            });
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            if !is_registry_reference(rest, true) {
                return Err(invalid(
                    "not a registry reference (HOST/REPO[:TAG|@DIGEST])",
                ));
            }
            return Ok(ImageRef::Registry {
                reference: rest.to_string(),
            });
        }
        // Other transports of containers/image, named so the user learns they exist but are not ours.
        for transport in [
            "dir",
            "docker-daemon",
            "containers-storage",
            "ostree",
            "sif",
            "tarball",
        ] {
            if s.strip_prefix(transport)
                .is_some_and(|r| r.starts_with(':'))
            {
                return Err(Error::Unsupported(format!(
                    "image reference `{s}`: transport `{transport}` is not supported \
                     (use oci:, oci-archive:, docker-archive: or docker://)"
                )));
            }
        }
        if is_registry_reference(s, false) {
            return Ok(ImageRef::Registry {
                reference: s.to_string(),
            });
        }
        Err(invalid(
            "expected oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REPO:TAG] \
             or docker://HOST/REPO:TAG",
        ))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (transport, path, sel) = match self {
            ImageRef::Layout { dir, tag } => ("oci", dir, tag.clone()),
            ImageRef::OciArchive { file, tag } => ("oci-archive", file, tag.clone()),
            ImageRef::DockerArchive { file, selector } => (
                "docker-archive",
                file,
                selector.as_ref().map(|s| match s {
                    ArchiveSelector::RepoTag(t) => t.clone(),
                    ArchiveSelector::Index(i) => format!("@{i}"),
                }),
            ),
            ImageRef::Registry { reference } => return write!(f, "docker://{reference}"),
        };
        write!(f, "{transport}:{}", path.display())?;
        if let Some(sel) = sel {
            write!(f, ":{sel}")?;
        }
        Ok(())
    }
}

/// Whether `s` is a tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(crate) fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Split `PATH[:TAG]` at the last `:` when what follows is a tag (so it has no `/`); a path whose
/// last component contains `:` followed by tag characters is read as PATH:TAG, as skopeo does.
fn split_tag(s: &str) -> (&str, Option<String>) {
    match s.rfind(':') {
        Some(i) if is_tag(&s[i + 1..]) => (&s[..i], Some(s[i + 1..].to_string())),
        _ => (s, None),
    }
}

/// Split `FILE[:REPO:TAG|:@N]` at the first `:` whose remainder is a tagged repository or `@N`,
/// so file names with a `:` in a directory still work.
fn split_archive_selector(s: &str) -> (&str, Option<ArchiveSelector>) {
    for (i, _) in s.match_indices(':') {
        let rest = &s[i + 1..];
        if let Some(n) = rest.strip_prefix('@').and_then(|n| n.parse().ok()) {
            return (&s[..i], Some(ArchiveSelector::Index(n)));
        }
        if is_tagged_repository(rest) {
            return (&s[..i], Some(ArchiveSelector::RepoTag(rest.to_string())));
        }
    }
    (s, None)
}

/// `REPO:TAG` where REPO is a (possibly host-qualified) repository name.
fn is_tagged_repository(s: &str) -> bool {
    match s.rfind(':') {
        Some(i) => is_tag(&s[i + 1..]) && is_repository(&s[..i]),
        None => false,
    }
}

/// `[HOST[:PORT]/]COMPONENT(/COMPONENT)*` with lowercase path components.
fn is_repository(s: &str) -> bool {
    let mut parts: Vec<&str> = s.split('/').collect();
    if parts.len() > 1 && looks_like_host(parts[0]) {
        parts.remove(0);
    }
    !parts.is_empty() && parts.iter().all(|p| is_path_component(p))
}

fn looks_like_host(s: &str) -> bool {
    (s.contains('.') || s.contains(':') || s == "localhost")
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
}

fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// `REPO[:TAG][@sha256:HEX]`. Without the `docker://` prefix (`explicit` false) a name also needs
/// a `/`, a tag or a digest, so that a typo'd local file name is not taken for a registry image.
fn is_registry_reference(s: &str, explicit: bool) -> bool {
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        if d.parse::<crate::digest::Digest>().is_err() {
            return false;
        }
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if tag.is_some_and(|t| !is_tag(t)) || !is_repository(repo) {
        return false;
    }
    explicit || tag.is_some() || digest.is_some() || repo.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn layouts_and_archives() {
        assert_eq!(
            parse("oci:/tmp/x:latest"),
            ImageRef::Layout {
                dir: "/tmp/x".into(),
                tag: Some("latest".into())
            }
        );
        assert_eq!(
            parse("oci:/tmp/x"),
            ImageRef::Layout {
                dir: "/tmp/x".into(),
                tag: None
            }
        );
        // A `:` inside the path, followed by more path, is not a tag.
        assert_eq!(
            parse("oci:/tmp/a:b/c"),
            ImageRef::Layout {
                dir: "/tmp/a:b/c".into(),
                tag: None
            }
        );
        assert_eq!(
            parse("oci-archive:img.tar:v1.2"),
            ImageRef::OciArchive {
                file: "img.tar".into(),
                tag: Some("v1.2".into())
            }
        );
        assert_eq!(
            parse("docker-archive:/tmp/d.tar:docker.io/library/busybox:latest"),
            ImageRef::DockerArchive {
                file: "/tmp/d.tar".into(),
                selector: Some(ArchiveSelector::RepoTag(
                    "docker.io/library/busybox:latest".into()
                ))
            }
        );
        assert_eq!(
            parse("docker-archive:/tmp/a:b/d.tar:@1"),
            ImageRef::DockerArchive {
                file: "/tmp/a:b/d.tar".into(),
                selector: Some(ArchiveSelector::Index(1))
            }
        );
        assert_eq!(
            parse("docker-archive:d.tar"),
            ImageRef::DockerArchive {
                file: "d.tar".into(),
                selector: None
            }
        );
        for s in [
            "oci:/tmp/x:latest",
            "docker-archive:d.tar:repo:t",
            "oci-archive:a.tar",
        ] {
            assert_eq!(parse(s).to_string(), s);
        }
    }

    #[test]
    fn registries_and_errors() {
        for s in [
            "docker://docker.io/library/busybox:latest",
            "ghcr.io/org/img:v1",
            "localhost:5000/img",
            "busybox:latest",
        ] {
            assert!(matches!(parse(s), ImageRef::Registry { .. }), "{s}");
        }
        assert_eq!(parse("docker://busybox").to_string(), "docker://busybox");
        for s in ["oci:", "/tmp/Some Dir", "docker://UPPER/Case", "weird"] {
            assert!(s.parse::<ImageRef>().is_err(), "{s}");
        }
        let err = "dir:/tmp/x".parse::<ImageRef>().unwrap_err();
        assert!(err.to_string().contains("transport `dir`"), "{err}");
    }
}

//! An OCI image layout served by a plain HTTP server (a static file host, a bucket, a CDN):
//! `index.json`, `oci-layout` and `blobs/sha256/…` under one base URL. Blobs are [`HttpBlob`]s,
//! so layers are read by range requests like any remote blob.

use lazypull_converter::oci::{LayoutFiles, LayoutSource, MAX_JSON_BLOB};
use lazypull_converter::{BlobRead, Result};

use super::blob::HttpBlob;
use super::error::FetchError;
use super::fetcher::RangeFetcher;

/// The files of a layout under `base` (which ends with `/`).
struct HttpLayoutFiles {
    fetcher: RangeFetcher,
    base: String,
}

impl LayoutFiles for HttpLayoutFiles {
    /// A blob of known size costs no request until read; `index.json` and `oci-layout` come
    /// whole with one `GET`.
    fn open(&self, path: &str, size: Option<u64>) -> Result<Option<Box<dyn BlobRead>>> {
        let url = format!("{}{path}", self.base);
        let opened = match size {
            Some(size) => HttpBlob::with_size(&self.fetcher, &url, size)
                .map(|b| Box::new(b) as Box<dyn BlobRead>),
            None => HttpBlob::fetch_whole(&self.fetcher, &url, MAX_JSON_BLOB)
                .map(|b| Box::new(b) as Box<dyn BlobRead>),
        };
        match opened {
            Ok(blob) => Ok(Some(blob)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn is_not_found(e: &lazypull_converter::Error) -> bool {
    matches!(
        FetchError::find(e).map(|f| &f.kind),
        Some(super::FetchErrorKind::Status { status, .. }) if status.as_u16() == 404
    )
}

/// The image layout at `url` (`http(s)://host/path`), selected by `tag` as in a local layout.
pub fn open_http_layout(
    fetcher: &RangeFetcher,
    url: &str,
    tag: Option<String>,
) -> Result<LayoutSource> {
    let base = format!("{}/", url.trim_end_matches('/'));
    let name = match &tag {
        Some(t) => format!("oci:{}:{t}", url.trim_end_matches('/')),
        None => format!("oci:{}", url.trim_end_matches('/')),
    };
    LayoutSource::new(
        Box::new(HttpLayoutFiles {
            fetcher: fetcher.clone(),
            base,
        }),
        name,
        tag,
    )
}

/// Split `oci:URL[:TAG]` (already without `oci:`) into the URL and the tag: a tag is what
/// follows the last `:` of the URL's path (so `http://host:5000/img` has none, and a URL without
/// a path cannot carry one).
pub fn split_url_tag(s: &str) -> (&str, Option<&str>) {
    let scheme_end = s.find("://").map_or(0, |i| i + 3);
    let Some(path_start) = s[scheme_end..].find('/').map(|i| scheme_end + i) else {
        return (s, None);
    };
    match s[path_start..].rfind(':') {
        Some(i) if !s[path_start + i..].contains('/') => {
            (&s[..path_start + i], Some(&s[path_start + i + 1..]))
        }
        _ => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_split_from_urls_with_ports() {
        assert_eq!(
            split_url_tag("http://127.0.0.1:8080/img:v1"),
            ("http://127.0.0.1:8080/img", Some("v1"))
        );
        assert_eq!(
            split_url_tag("http://127.0.0.1:8080/img"),
            ("http://127.0.0.1:8080/img", None)
        );
        assert_eq!(
            split_url_tag("https://host/a/b:latest"),
            ("https://host/a/b", Some("latest"))
        );
        assert_eq!(
            split_url_tag("https://host/a/b"),
            ("https://host/a/b", None)
        );
        assert_eq!(
            split_url_tag("http://host:5000"),
            ("http://host:5000", None)
        );
    }
}

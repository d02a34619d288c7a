//! Reading an output blob's TOC directly (footer → TOC bytes → JSON), independent of the
//! converter's reader, so tests can check entry order and digests.

use std::io::Read;
use std::path::Path;

use lazypull_converter::estargz::format::{self, FooterKind, Toc};

use super::sha256;

/// The TOC of a blob and the digest of its JSON bytes (what `toc.digest` must be).
pub struct ReadToc {
    pub toc: Toc,
    pub digest: String,
    pub kind: FooterKind,
}

/// Read the TOC of the eStargz or zstd:chunked blob at `path`.
pub fn read_toc(path: &Path) -> ReadToc {
    let blob = std::fs::read(path).unwrap();
    let size = blob.len() as u64;
    let tail = &blob[blob.len().saturating_sub(format::MAX_FOOTER_SIZE)..];
    let footer = format::parse_footer(tail, size)
        .unwrap_or_else(|e| panic!("{}: no footer: {e}", path.display()));
    let start = footer.toc_offset as usize;
    let json = match footer.kind {
        FooterKind::Estargz | FooterKind::Legacy => {
            let end = blob.len() - footer.footer_size as usize;
            // The TOC is one gzip member holding a tar whose first entry is stargz.index.json.
            let mut tar_bytes = Vec::new();
            flate2::read::GzDecoder::new(&blob[start..end])
                .read_to_end(&mut tar_bytes)
                .unwrap();
            let mut archive = tar::Archive::new(tar_bytes.as_slice());
            let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
            assert_eq!(
                entry.path_bytes().as_ref(),
                format::TOC_TAR_NAME.as_bytes(),
                "first TOC tar entry"
            );
            let mut json = Vec::new();
            entry.read_to_end(&mut json).unwrap();
            json
        }
        FooterKind::ZstdChunked => {
            let end = start + footer.toc_size as usize;
            zstd::stream::decode_all(&blob[start..end]).unwrap()
        }
        FooterKind::ExternalToc => panic!("{}: external TOC", path.display()),
    };
    ReadToc {
        toc: Toc::from_json(&json).unwrap(),
        digest: sha256(&json),
        kind: footer.kind,
    }
}

/// The normalised names of the TOC's non-chunk entries, in TOC order.
pub fn toc_names(toc: &Toc) -> Vec<String> {
    toc.entries
        .iter()
        .filter(|e| e.kind != "chunk")
        .map(|e| super::tree::normalize(&e.name))
        .collect()
}

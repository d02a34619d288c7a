//! eStargz and zstd:chunked on-disk definitions: names, annotations, the TOC JSON and the footers.
//!
//! Facts follow the reference implementation, `containerd/stargz-snapshotter/estargz` v0.12
//! (see `docs/formats/estargz.md`): a blob is a run of compressed members (gzip members or zstd
//! frames); every non-empty file's content and every chunk starts a member; the TOC
//! (`stargz.index.json`) and a footer pointing at it close the blob.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the TOC entry in the gzip variant's final tar.
pub const TOC_TAR_NAME: &str = "stargz.index.json";
/// Landmark placed first when there is no prefetch list: prefetch nothing.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Landmark placed after the prioritised files: prefetch everything before it.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// The one content byte of a landmark file.
pub const LANDMARK_CONTENT: u8 = 0x0f;

/// Layer descriptor annotation: digest of the TOC JSON bytes.
pub const ANNOTATION_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer descriptor annotation: size of the decompressed blob, decimal.
pub const ANNOTATION_UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";
/// zstd:chunked annotation: digest of the compressed TOC.
pub const ANNOTATION_ZSTD_MANIFEST_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
/// zstd:chunked annotation: `offset:compressed:uncompressed:type` of the TOC.
pub const ANNOTATION_ZSTD_MANIFEST_POSITION: &str = "io.containers.zstd-chunked.manifest-position";

/// Size of the gzip eStargz footer.
pub const FOOTER_SIZE: usize = 51;
/// Size of the legacy CRFS stargz footer.
pub const LEGACY_FOOTER_SIZE: usize = 47;
/// Size of the zstd:chunked footer frame payload (without its 8-byte skippable-frame header).
pub const ZSTD_FOOTER_SIZE: usize = 40;
/// Size of the zstd:chunked footer as it stands at the end of a blob (frame header included).
pub const ZSTD_FOOTER_FRAME_SIZE: usize = ZSTD_FOOTER_SIZE + 8;
/// Size of the external-TOC gzip footer.
pub const EXTERNAL_TOC_FOOTER_SIZE: usize = 46;
/// The largest footer, i.e. how many tail bytes a reader fetches first.
pub const MAX_FOOTER_SIZE: usize = FOOTER_SIZE;

/// zstd skippable frame magic (`0x184D2A50`, little-endian).
pub const ZSTD_SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// zstd frame magic.
pub const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Magic closing the zstd:chunked footer.
pub const ZSTD_CHUNKED_MAGIC: [u8; 8] = *b"GnUlInUx";
/// zstd:chunked manifest type for a CRFS-style (eStargz) TOC.
pub const ZSTD_MANIFEST_TYPE_CRFS: u64 = 1;

/// The most entries a TOC may have (files, directories and chunk entries together).
///
/// The size limits alone do not bound memory: 36 MiB of gzip can hold 15 million minimal
/// entries, which took a mount to 15 GiB before it was refused anywhere. Real layers stay far
/// below this (a million files is already rare); every entry costs about 1 KiB while a TOC is
/// parsed and indexed, so the limit keeps a hostile TOC to about 2 GiB.
pub const MAX_TOC_ENTRIES: usize = 1 << 21;

/// The TOC (`stargz.index.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    pub version: i32,
    #[serde(default, deserialize_with = "bounded_entries")]
    pub entries: Vec<TocEntry>,
}

/// Deserialize `entries`, refusing the TOC as soon as it passes [`MAX_TOC_ENTRIES`] (before
/// the rest is parsed into memory).
fn bounded_entries<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<TocEntry>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<TocEntry>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_TOC_ENTRIES} TOC entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(e) = seq.next_element::<TocEntry>()? {
                if out.len() == MAX_TOC_ENTRIES {
                    return Err(serde::de::Error::custom(format_args!(
                        "the TOC has more than {MAX_TOC_ENTRIES} entries, the most accepted"
                    )));
                }
                out.push(e);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded)
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// One TOC entry. Field order and omit-if-zero follow the reference's JSON exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub size: i64,
    #[serde(rename = "modtime", default, skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    #[serde(rename = "linkName", default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub uid: i64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub gid: i64,
    #[serde(rename = "userName", default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(
        rename = "groupName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub group_name: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub offset: i64,
    #[serde(rename = "innerOffset", default, skip_serializing_if = "is_zero_i64")]
    pub inner_offset: i64,
    #[serde(rename = "devMajor", default, skip_serializing_if = "is_zero_i64")]
    pub dev_major: i64,
    #[serde(rename = "devMinor", default, skip_serializing_if = "is_zero_i64")]
    pub dev_minor: i64,
    /// Values are base64 in the JSON (Go's encoding of `[]byte`).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "xattr_base64"
    )]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(rename = "chunkOffset", default, skip_serializing_if = "is_zero_i64")]
    pub chunk_offset: i64,
    #[serde(rename = "chunkSize", default, skip_serializing_if = "is_zero_i64")]
    pub chunk_size: i64,
    #[serde(
        rename = "chunkDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_digest: String,
}

mod xattr_base64 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            m.serialize_entry(k, &base64::engine::general_purpose::STANDARD.encode(v))?;
        }
        m.end()
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let raw: Option<BTreeMap<String, String>> = Option::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (k, v) in raw.unwrap_or_default() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("xattr `{k}`: bad base64: {e}")))?;
            out.insert(k, bytes);
        }
        Ok(out)
    }
}

impl Toc {
    /// The TOC as the reference writes it: JSON indented with tabs.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser)
            .expect("serialising a TOC to memory cannot fail");
        out
    }

    /// Parse TOC JSON.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        serde_json::from_slice(json).map_err(|e| Error::format(format!("invalid TOC JSON: {e}")))
    }
}

/// Format a modification time as the TOC does: RFC 3339 in UTC, rounded to the second; empty for
/// the epoch (the reference omits zero and epoch-0 times).
pub fn format_modtime(secs: i64, nsec: u32) -> String {
    let rounded = if nsec >= 500_000_000 { secs + 1 } else { secs };
    if rounded == 0 && secs == 0 {
        return String::new();
    }
    match chrono::DateTime::from_timestamp(rounded, 0) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => String::new(),
    }
}

/// Parse a TOC `modtime` back into seconds since the epoch (0 when empty).
pub fn parse_modtime(s: &str) -> Result<i64> {
    if s.is_empty() {
        return Ok(0);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|e| Error::format(format!("invalid modtime `{s}`: {e}")))
}

/// The 51-byte gzip eStargz footer: an empty gzip member whose Extra field holds the TOC offset.
pub fn gzip_footer(toc_offset: u64) -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    // ID1 ID2 CM FLG(FEXTRA) MTIME(0) XFL OS(unknown)
    f[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    let payload = format!("{toc_offset:016x}STARGZ");
    f[16..38].copy_from_slice(payload.as_bytes());
    // An empty stored deflate block, then CRC32 0 and ISIZE 0.
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// Which footer a blob ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FooterKind {
    /// 51-byte eStargz footer; TOC is a gzip member holding a tar.
    Estargz,
    /// 47-byte legacy CRFS stargz footer; same TOC layout, no chunk digests.
    Legacy,
    /// 40-byte zstd:chunked footer (in a skippable frame); TOC is zstd JSON.
    ZstdChunked,
    /// 46-byte footer of a layer whose TOC lives outside the blob.
    ExternalToc,
}

/// Where the TOC is, as read from a footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub kind: FooterKind,
    /// Offset of the TOC's compressed bytes.
    pub toc_offset: u64,
    /// Length of the TOC's compressed bytes (up to the footer), when the footer says or implies it.
    pub toc_size: u64,
    /// Uncompressed length of the TOC JSON, when the footer says (zstd:chunked).
    pub toc_raw_size: Option<u64>,
    /// Bytes the footer occupies at the end of the blob.
    pub footer_size: u64,
}

fn parse_hex_offset(b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.len() != 16 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Parse the footer from the blob's tail (`tail` holds the last `tail.len()` bytes of a blob of
/// `blob_size` bytes). Tries the 51-, 47-, 40- and 46-byte forms in the reference's order.
pub fn parse_footer(tail: &[u8], blob_size: u64) -> Result<Footer> {
    let end = |n: usize| -> Option<&[u8]> { tail.len().checked_sub(n).map(|i| &tail[i..]) };
    // 51-byte eStargz.
    if let Some(f) = end(FOOTER_SIZE) {
        if f[..4] == [0x1f, 0x8b, 0x08, 0x04]
            && f[10..12] == 26u16.to_le_bytes()
            && &f[12..14] == b"SG"
            && f[14..16] == 22u16.to_le_bytes()
            && &f[32..38] == b"STARGZ"
        {
            if let Some(off) = parse_hex_offset(&f[16..32]) {
                return footer_at(FooterKind::Estargz, off, blob_size, FOOTER_SIZE);
            }
        }
    }
    // 47-byte legacy.
    if let Some(f) = end(LEGACY_FOOTER_SIZE) {
        if f[..4] == [0x1f, 0x8b, 0x08, 0x04]
            && f[10..12] == 22u16.to_le_bytes()
            && &f[28..34] == b"STARGZ"
        {
            if let Some(off) = parse_hex_offset(&f[12..28]) {
                return footer_at(FooterKind::Legacy, off, blob_size, LEGACY_FOOTER_SIZE);
            }
        }
    }
    // zstd:chunked, inside a skippable frame of 40 bytes.
    if let Some(f) = end(ZSTD_FOOTER_FRAME_SIZE) {
        if f[..4] == ZSTD_SKIPPABLE_MAGIC
            && f[4..8] == (ZSTD_FOOTER_SIZE as u32).to_le_bytes()
            && f[40..48] == ZSTD_CHUNKED_MAGIC
        {
            let le = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().unwrap());
            let (off, comp, raw, kind) = (le(8), le(16), le(24), le(32));
            if kind != ZSTD_MANIFEST_TYPE_CRFS {
                return Err(Error::Unsupported(format!(
                    "zstd:chunked manifest type {kind} (only type 1, an eStargz TOC, is supported)"
                )));
            }
            let tail_start = blob_size.saturating_sub(ZSTD_FOOTER_FRAME_SIZE as u64);
            match off.checked_add(comp) {
                Some(e) if off >= 8 && e <= tail_start => {}
                _ => {
                    return Err(Error::format(format!(
                        "zstd:chunked footer: TOC [{off}, +{comp}) lies outside the blob ({blob_size} bytes)"
                    )))
                }
            }
            return Ok(Footer {
                kind: FooterKind::ZstdChunked,
                toc_offset: off,
                toc_size: comp,
                toc_raw_size: Some(raw),
                footer_size: ZSTD_FOOTER_FRAME_SIZE as u64,
            });
        }
    }
    // 46-byte external TOC.
    if let Some(f) = end(EXTERNAL_TOC_FOOTER_SIZE) {
        if f[..4] == [0x1f, 0x8b, 0x08, 0x04]
            && &f[12..14] == b"SG"
            && &f[16..33] == b"STARGZEXTERNALTOC"
        {
            return Ok(Footer {
                kind: FooterKind::ExternalToc,
                toc_offset: 0,
                toc_size: 0,
                toc_raw_size: None,
                footer_size: EXTERNAL_TOC_FOOTER_SIZE as u64,
            });
        }
    }
    Err(Error::format(
        "no eStargz, legacy stargz or zstd:chunked footer at the end of the blob",
    ))
}

fn footer_at(kind: FooterKind, off: u64, blob_size: u64, size: usize) -> Result<Footer> {
    let toc_end = blob_size.saturating_sub(size as u64);
    if off >= toc_end {
        return Err(Error::format(format!(
            "footer points at TOC offset {off}, past the TOC's end {toc_end}"
        )));
    }
    Ok(Footer {
        kind,
        toc_offset: off,
        toc_size: toc_end - off,
        toc_raw_size: None,
        footer_size: size as u64,
    })
}

/// The zstd:chunked footer as it stands at the end of a blob: a skippable frame of 40 bytes.
pub fn zstd_footer(
    toc_offset: u64,
    toc_compressed: u64,
    toc_raw: u64,
) -> [u8; ZSTD_FOOTER_FRAME_SIZE] {
    let mut f = [0u8; ZSTD_FOOTER_FRAME_SIZE];
    f[..4].copy_from_slice(&ZSTD_SKIPPABLE_MAGIC);
    f[4..8].copy_from_slice(&(ZSTD_FOOTER_SIZE as u32).to_le_bytes());
    f[8..16].copy_from_slice(&toc_offset.to_le_bytes());
    f[16..24].copy_from_slice(&toc_compressed.to_le_bytes());
    f[24..32].copy_from_slice(&toc_raw.to_le_bytes());
    f[32..40].copy_from_slice(&ZSTD_MANIFEST_TYPE_CRFS.to_le_bytes());
    f[40..48].copy_from_slice(&ZSTD_CHUNKED_MAGIC);
    f
}

/// The 8-byte header of a zstd skippable frame holding `len` bytes.
pub fn zstd_skippable_header(len: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&ZSTD_SKIPPABLE_MAGIC);
    h[4..].copy_from_slice(&len.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_footer_round_trips_and_is_an_empty_gzip_member() {
        let f = gzip_footer(0x1234);
        let parsed = parse_footer(&f, 0x1234 + 100 + 51).unwrap();
        assert_eq!(parsed.kind, FooterKind::Estargz);
        assert_eq!(parsed.toc_offset, 0x1234);
        assert_eq!(parsed.toc_size, 100);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&f[..]), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn zstd_footer_round_trips() {
        let f = zstd_footer(1000, 300, 900);
        let parsed = parse_footer(&f, 1000 + 300 + 48).unwrap();
        assert_eq!(parsed.kind, FooterKind::ZstdChunked);
        assert_eq!((parsed.toc_offset, parsed.toc_size), (1000, 300));
        assert_eq!(parsed.toc_raw_size, Some(900));
        // A footer pointing past the blob is refused.
        assert!(parse_footer(&f, 1200).is_err());
    }

    #[test]
    fn garbage_tail_is_an_error() {
        assert!(parse_footer(&[0u8; 51], 51).is_err());
        assert!(parse_footer(&[], 0).is_err());
        let f = gzip_footer(10);
        assert!(parse_footer(&f, 51).is_err(), "TOC offset past its end");
    }

    #[test]
    fn modtime_rounds_and_omits_epoch() {
        assert_eq!(format_modtime(0, 0), "");
        assert_eq!(
            format_modtime(1_600_000_000, 600_000_000),
            "2020-09-13T12:26:41Z"
        );
        assert_eq!(
            parse_modtime("2020-09-13T12:26:41Z").unwrap(),
            1_600_000_001
        );
    }

    #[test]
    fn toc_json_uses_reference_key_order_and_omits_zero() {
        let mut xattrs = BTreeMap::new();
        xattrs.insert("user.a".to_string(), b"v".to_vec());
        let toc = Toc {
            version: 1,
            entries: vec![TocEntry {
                name: "a".into(),
                kind: "reg".into(),
                size: 3,
                mode: 0o644,
                xattrs,
                digest: "sha256:x".into(),
                ..Default::default()
            }],
        };
        let json = String::from_utf8(toc.to_json()).unwrap();
        assert!(json.contains("\t\"version\": 1"));
        let order: Vec<usize> = [
            "\"name\"",
            "\"type\"",
            "\"size\"",
            "\"mode\"",
            "\"xattrs\"",
            "\"digest\"",
        ]
        .iter()
        .map(|k| json.find(k).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(!json.contains("uid"));
        assert!(json.contains("\"user.a\": \"dg==\""));
        assert_eq!(Toc::from_json(json.as_bytes()).unwrap(), toc);
    }
}

//! Finding and decoding the TOC: footer → compressed TOC → JSON bytes.

use std::io::Read;

use crate::blob::BlobRead;
use crate::error::{Error, Result};
use crate::estargz::format::{self, Footer, FooterKind, MAX_FOOTER_SIZE, TOC_TAR_NAME};

/// The largest TOC accepted, compressed or not: a bound on what a hostile footer can make us
/// fetch and inflate (a TOC for a million files is ~300 MiB of JSON).
pub const MAX_TOC_SIZE: u64 = 512 << 20;

const TAR_BLOCK: usize = 512;

/// Read the footer from the blob's tail.
pub(super) fn read_footer<B: BlobRead>(blob: &B) -> Result<Footer> {
    let len = blob.len();
    // Blobs shorter than the largest footer may still end in a smaller one.
    let n = len.min(MAX_FOOTER_SIZE as u64);
    let tail = blob.read_vec(len - n, n)?;
    let footer = format::parse_footer(&tail, len)?;
    if footer.kind == FooterKind::ExternalToc {
        return Err(Error::Unsupported(
            "the blob's TOC is external (46-byte STARGZEXTERNALTOC footer); \
             reading a TOC from a separate image is not supported"
                .into(),
        ));
    }
    Ok(footer)
}

/// Fetch the TOC the footer points at and return its JSON bytes (the bytes the TOC digest
/// covers).
pub(super) fn read_toc_json<B: BlobRead>(blob: &B, footer: &Footer) -> Result<Vec<u8>> {
    if footer.toc_size > MAX_TOC_SIZE {
        return Err(too_big("compressed TOC", footer.toc_size));
    }
    let compressed = blob.read_vec(footer.toc_offset, footer.toc_size)?;
    match footer.kind {
        FooterKind::Estargz | FooterKind::Legacy => toc_from_gzip_tar(compressed),
        FooterKind::ZstdChunked => toc_from_zstd(&compressed, footer.toc_raw_size),
        FooterKind::ExternalToc => Err(Error::Unsupported("external TOC".into())),
    }
}

fn too_big(what: &str, n: u64) -> Error {
    Error::format(format!(
        "{what} of {n} bytes exceeds the {MAX_TOC_SIZE}-byte limit"
    ))
}

/// Read at most `limit` bytes from `r`; more than that is an error rather than an allocation.
fn read_limited(r: impl Read, limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(format!("{what}: {e}")))?;
    if out.len() as u64 > limit {
        return Err(too_big(what, out.len() as u64));
    }
    Ok(out)
}

/// gzip variants: the TOC is one gzip member holding a tar whose first entry is the JSON.
/// Buffers are consumed as they are decoded, so at most two copies of a large TOC are alive.
fn toc_from_gzip_tar(compressed: Vec<u8>) -> Result<Vec<u8>> {
    // `GzDecoder` stops after one member, as the reference does.
    let tar = read_limited(
        flate2::read::GzDecoder::new(&compressed[..]),
        MAX_TOC_SIZE + 64 * TAR_BLOCK as u64,
        "decompressing the TOC member",
    )?;
    drop(compressed);
    first_tar_entry(tar, TOC_TAR_NAME)
}

/// zstd:chunked: the TOC is one zstd frame of bare JSON, whose length the footer states.
fn toc_from_zstd(compressed: &[u8], raw_size: Option<u64>) -> Result<Vec<u8>> {
    let raw = raw_size.unwrap_or(MAX_TOC_SIZE);
    if raw > MAX_TOC_SIZE {
        return Err(too_big("uncompressed TOC", raw));
    }
    let dec = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| Error::format(format!("zstd TOC: {e}")))?
        .single_frame();
    let json = read_limited(dec, raw, "decompressing the zstd TOC")?;
    if raw_size.is_some_and(|r| r != json.len() as u64) {
        return Err(Error::format(format!(
            "zstd TOC decompresses to {} bytes, the footer says {raw}",
            json.len()
        )));
    }
    Ok(json)
}

/// The body of the first entry of `tar`, which must be a regular file called `want`.
/// Understands ustar/GNU headers and a preceding PAX extended header (`path`, `size`).
/// The body is cut out of `tar` in place rather than copied.
fn first_tar_entry(mut tar: Vec<u8>, want: &str) -> Result<Vec<u8>> {
    let bad = |msg: String| Error::format(format!("TOC tar: {msg}"));
    let mut pos = 0usize;
    let mut pax_path: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    // A PAX header, then the entry itself; anything longer is not what writers produce.
    for _ in 0..2 {
        let hdr = tar
            .get(pos..pos + TAR_BLOCK)
            .ok_or_else(|| bad("truncated header".into()))?;
        check_header_checksum(hdr).map_err(bad)?;
        let size = parse_tar_number(&hdr[124..136]).map_err(bad)?;
        let body_start = pos + TAR_BLOCK;
        let body = usize::try_from(size)
            .ok()
            .and_then(|s| tar.get(body_start..body_start.checked_add(s)?))
            .ok_or_else(|| bad(format!("entry of {size} bytes runs past the end")))?;
        match hdr[156] {
            b'x' => {
                for (k, v) in parse_pax(body).map_err(bad)? {
                    match k {
                        "path" => pax_path = Some(v.to_string()),
                        "size" => {
                            pax_size =
                                Some(v.parse().map_err(|_| bad(format!("bad PAX size `{v}`")))?)
                        }
                        _ => {}
                    }
                }
                pos = body_start + body.len().div_ceil(TAR_BLOCK) * TAR_BLOCK;
            }
            b'0' | 0 => {
                let name = match pax_path.take() {
                    Some(p) => p,
                    None => ustar_name(hdr),
                };
                if name != want {
                    return Err(bad(format!("first entry is `{name}`, not `{want}`")));
                }
                let size = pax_size.unwrap_or(size);
                let end = usize::try_from(size)
                    .ok()
                    .and_then(|s| body_start.checked_add(s))
                    .filter(|&end| end <= tar.len())
                    .ok_or_else(|| bad(format!("`{want}` of {size} bytes runs past the end")))?;
                tar.truncate(end);
                tar.drain(..body_start);
                return Ok(tar);
            }
            t => {
                return Err(bad(format!(
                    "first entry has type `{}`, not a regular file",
                    t.escape_ascii()
                )))
            }
        }
    }
    Err(bad("more than one extended header before the TOC".into()))
}

fn check_header_checksum(hdr: &[u8]) -> std::result::Result<(), String> {
    let want = parse_tar_number(&hdr[148..156])?;
    // The checksum field itself counts as eight spaces.
    let sum: u64 = hdr
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u64
            }
        })
        .sum();
    if sum != want {
        return Err(format!("header checksum {want} does not match {sum}"));
    }
    Ok(())
}

fn cstr(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

fn ustar_name(hdr: &[u8]) -> String {
    let name = String::from_utf8_lossy(cstr(&hdr[..100]));
    let prefix = if &hdr[257..262] == b"ustar" {
        String::from_utf8_lossy(cstr(&hdr[345..500]))
    } else {
        "".into()
    };
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// A tar numeric field: NUL/space-terminated octal, or GNU base-256 when the top bit is set.
fn parse_tar_number(field: &[u8]) -> std::result::Result<u64, String> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(b as u64))
                .ok_or("base-256 number overflows")?;
        }
        return Ok(v);
    }
    let s = std::str::from_utf8(field).map_err(|_| "numeric field is not ASCII")?;
    let s = s.trim_matches(|c| c == '\0' || c == ' ');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| format!("bad octal number `{}`", s.escape_debug()))
}

/// PAX records: `<len> <key>=<value>\n`.
fn parse_pax(mut body: &[u8]) -> std::result::Result<Vec<(&str, &str)>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let sp = body
            .iter()
            .position(|&b| b == b' ')
            .ok_or("PAX record without length")?;
        let len: usize = std::str::from_utf8(&body[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad PAX record length")?;
        if len <= sp + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err("malformed PAX record".into());
        }
        let rec =
            std::str::from_utf8(&body[sp + 1..len - 1]).map_err(|_| "PAX record not UTF-8")?;
        let (k, v) = rec.split_once('=').ok_or("PAX record without `=`")?;
        out.push((k, v));
        body = &body[len..];
    }
    Ok(out)
}

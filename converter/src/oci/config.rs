//! Rewriting an image config's `rootfs.diff_ids` for converted layers.
//!
//! Only the `diff_ids` array is replaced, by splicing the original bytes: history, labels, and
//! the exact spelling of everything else (Go's `\u0026` escapes, key order, whitespace) stay as
//! the image's author wrote them, so a reviewer diffing two configs sees only what we changed.

use std::ops::Range;

use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// `config_json` with `rootfs.diff_ids` replaced by `diff_ids`; everything else is kept byte for
/// byte. Fails if the config is not a JSON object with a `rootfs.diff_ids` array, or if that array
/// does not have one entry per layer (a config and a manifest that disagree name a broken image).
pub fn rewrite_config(config_json: &[u8], diff_ids: &[Digest]) -> Result<Vec<u8>> {
    let v: Value = serde_json::from_slice(config_json)
        .map_err(|e| Error::format(format!("image config: {e}")))?;
    let old = v
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .ok_or_else(|| Error::format("image config: no `rootfs.diff_ids` array"))?;
    if old.len() != diff_ids.len() {
        return Err(Error::format(format!(
            "image config: `rootfs.diff_ids` lists {} layers, the manifest {}",
            old.len(),
            diff_ids.len()
        )));
    }
    let rootfs = member(config_json, 0, "rootfs")?
        .ok_or_else(|| Error::format("image config: no `rootfs`"))?;
    let span = member(config_json, rootfs.start, "diff_ids")?
        .ok_or_else(|| Error::format("image config: no `rootfs.diff_ids`"))?;
    let new = serde_json::to_vec(diff_ids).expect("digests always serialise");
    let mut out = Vec::with_capacity(config_json.len() + new.len());
    out.extend_from_slice(&config_json[..span.start]);
    out.extend_from_slice(&new);
    out.extend_from_slice(&config_json[span.end..]);
    Ok(out)
}

/// The byte range of the value of member `key` of the object starting at or after `at`
/// (its last occurrence, as serde_json keeps the last of repeated keys).
fn member(b: &[u8], at: usize, key: &str) -> Result<Option<Range<usize>>> {
    let mut i = ws(b, at);
    expect(b, i, b'{')?;
    i = ws(b, i + 1);
    let mut found = None;
    if b.get(i) == Some(&b'}') {
        return Ok(None);
    }
    loop {
        let k_end = string_end(b, i)?;
        let k: String = serde_json::from_slice(&b[i..k_end]).map_err(|e| bad(i, e))?;
        i = ws(b, k_end);
        expect(b, i, b':')?;
        let v_start = ws(b, i + 1);
        let v_end = value_end(b, v_start)?;
        if k == key {
            found = Some(v_start..v_end);
        }
        i = ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return Ok(found),
            _ => return Err(bad(i, "expected `,` or `}`")),
        }
    }
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

fn expect(b: &[u8], i: usize, c: u8) -> Result<()> {
    if b.get(i) == Some(&c) {
        Ok(())
    } else {
        Err(bad(i, format!("expected `{}`", c as char)))
    }
}

fn bad(at: usize, why: impl std::fmt::Display) -> Error {
    Error::format(format!("image config: byte {at}: {why}"))
}

/// The end of the string starting at `i` (just past its closing quote).
fn string_end(b: &[u8], i: usize) -> Result<usize> {
    expect(b, i, b'"')?;
    let mut j = i + 1;
    loop {
        match b.get(j) {
            Some(b'\\') => j += 2,
            Some(b'"') => return Ok(j + 1),
            Some(_) => j += 1,
            None => return Err(bad(i, "unterminated string")),
        }
    }
}

/// The end of the value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Result<usize> {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j) {
                    Some(b'"') => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    Some(b'{' | b'[') => depth += 1,
                    Some(b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    Some(_) => {}
                    None => return Err(bad(i, "unterminated value")),
                }
                j += 1;
            }
        }
        Some(_) => {
            let mut j = i;
            while !matches!(
                b.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            Ok(j)
        }
        None => Err(bad(i, "expected a value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"architecture":"amd64","config":{"Labels":{"a":"b"},"Cmd":["sh","-c","x \u0026\u0026 y"]},
  "created":"2024-01-01T00:00:00Z","history":[{"created_by":"/bin/sh -c #(nop) ADD file:abc in / "},{"empty_layer":true}],
  "os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},"x-extra":1.50}"#;

    #[test]
    fn only_diff_ids_change() {
        let d = Digest::of(b"new layer");
        let out = rewrite_config(CONFIG.as_bytes(), &[d]).unwrap();
        let expected = CONFIG.replace(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            &d.to_string(),
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn layer_count_must_agree() {
        let d = Digest::of(b"x");
        let err = rewrite_config(CONFIG.as_bytes(), &[d, d]).unwrap_err();
        assert!(
            err.to_string().contains("lists 1 layers, the manifest 2"),
            "{err}"
        );
        assert!(rewrite_config(b"{\"rootfs\":{}}", &[]).is_err());
        assert!(rewrite_config(b"not json", &[]).is_err());
        let empty = rewrite_config(br#"{"rootfs" : {"diff_ids" : [ ] , "type":"layers"}}"#, &[]);
        assert_eq!(
            empty.unwrap(),
            br#"{"rootfs" : {"diff_ids" : [] , "type":"layers"}}"#
        );
    }
}

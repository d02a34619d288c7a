//! Layer compression: detection by magic and streaming decoders.
//!
//! Detection looks at the bytes, never at the media type: registries and `docker save` tarballs
//! are known to mislabel layers, and a blob's own magic cannot lie about how to decode it.

use std::io::{self, Read};

use crate::error::{Error, Result};

/// Compression of a layer blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Detect compression from the first bytes of a blob (four bytes are enough).
pub fn detect_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

impl Compression {
    /// A short name for messages: `none`, `gzip`, `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// A streaming decoder of `r`. Gzip input may hold several members (eStargz blobs do), all
    /// of which are decoded as one stream. Decoder errors read from the returned reader say
    /// which codec failed ("gzip: corrupt deflate stream", "truncated gzip stream").
    pub fn decoder<'a, R: Read + 'a>(self, r: R) -> Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(NamedErrors {
                inner: flate2::read::MultiGzDecoder::new(r),
                codec: self,
            }),
            Compression::Zstd => {
                let dec = zstd::stream::read::Decoder::new(r)
                    .map_err(|e| Error::io("zstd: create decoder", e))?;
                Box::new(NamedErrors {
                    inner: dec,
                    codec: self,
                })
            }
        })
    }
}

/// Prefixes a decoder's errors with its codec, so "unexpected end of file" deep inside a layer
/// reads as what it is: a truncated gzip or zstd stream.
struct NamedErrors<R> {
    inner: R,
    codec: Compression,
}

impl<R: Read> Read for NamedErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let name = self.codec.name();
            let msg = if e.kind() == io::ErrorKind::UnexpectedEof {
                format!("truncated {name} stream")
            } else {
                format!("{name}: {e}")
            };
            io::Error::new(e.kind(), msg)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn decode(c: Compression, blob: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        c.decoder(blob).unwrap().read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn detects_by_magic() {
        assert_eq!(detect_compression(&gzip(b"x")), Compression::Gzip);
        let zst = zstd::encode_all(&b"x"[..], 3).unwrap();
        assert_eq!(detect_compression(&zst), Compression::Zstd);
        assert_eq!(detect_compression(b"usr/"), Compression::None);
        assert_eq!(detect_compression(b""), Compression::None);
    }

    #[test]
    fn gzip_members_decode_as_one_stream() {
        let mut blob = gzip(b"hello ");
        blob.extend(gzip(b"world"));
        assert_eq!(decode(Compression::Gzip, &blob).unwrap(), b"hello world");
    }

    #[test]
    fn zstd_decodes() {
        let zst = zstd::encode_all(&b"hello"[..], 3).unwrap();
        assert_eq!(decode(Compression::Zstd, &zst).unwrap(), b"hello");
    }

    #[test]
    fn errors_name_the_codec() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let blob = gzip(&data);
        let err = decode(Compression::Gzip, &blob[..blob.len() / 2]).unwrap_err();
        assert_eq!(err.to_string(), "truncated gzip stream");

        let mut bad = blob.clone();
        bad[20..40].fill(0xff);
        let err = decode(Compression::Gzip, &bad).unwrap_err();
        assert!(err.to_string().starts_with("gzip: "), "{err}");

        let zst = zstd::encode_all(&data[..], 3).unwrap();
        let err = decode(Compression::Zstd, &zst[..zst.len() / 2]).unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }
}

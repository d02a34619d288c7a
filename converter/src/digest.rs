//! Content digests (`sha256:<hex>`), the identity of every blob, layer, file and chunk.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// A SHA-256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// From raw hash bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The lowercase hex of the hash, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// A short form for messages: `sha256:0123456789ab`.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex()[..12])
    }
}

/// Lowercase hex of `bytes` (sha2 0.11's output no longer formats as hex itself).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Invalid(format!(
                "`{s}` is not a sha256 digest (sha256:<64 hex digits>)"
            ))
        };
        let hexpart = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hexpart.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hexpart.as_bytes().chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Digest(out))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental SHA-256 that also counts bytes.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }
    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.inner.finalize().into())
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
        }
    }
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }
    /// The inner writer and the digest of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        let len = self.hasher.len();
        (self.inner, self.hasher.finish(), len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A hasher on its own thread: `update` hands over a copy of the bytes, so hashing a stream
/// overlaps whatever the reading thread does with it (decompressing, parsing, spooling).
pub struct BackgroundHasher {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<Hasher>>,
}

impl BackgroundHasher {
    /// Start the hashing thread.
    pub fn start() -> Self {
        // A few megabytes in flight at most: the reader never runs far ahead of the hash.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let worker = std::thread::spawn(move || {
            let mut h = Hasher::new();
            for buf in rx {
                h.update(&buf);
            }
            h
        });
        BackgroundHasher {
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    /// Hash `data` (after everything given before).
    pub fn update(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            // The worker only stops when the sender is dropped, so a send cannot fail.
            let _ = tx.send(data.to_vec());
        }
    }

    /// Wait for the hash of everything given, and its length.
    pub fn finish(mut self) -> (Digest, u64) {
        drop(self.tx.take());
        let h = self
            .worker
            .take()
            .expect("a background hasher finishes once")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let len = h.len();
        (h.finish(), len)
    }
}

impl Drop for BackgroundHasher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    /// `None` when only counting.
    hasher: Option<BackgroundHasher>,
    len: u64,
}

impl<R: io::Read> HashingReader<R> {
    /// Wrap `inner`; the hashing runs on a thread of its own.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Some(BackgroundHasher::start()),
            len: 0,
        }
    }
    /// Wrap `inner`, counting bytes without hashing them (when another reader already hashes
    /// the same bytes).
    pub fn counting(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: None,
            len: 0,
        }
    }
    /// The digest (`None` when only counting) and length of everything read; call once, at the
    /// end.
    pub fn finish(&mut self) -> (Option<Digest>, u64) {
        let digest = self.hasher.take().map(|h| h.finish().0);
        (digest, self.len)
    }
    /// The inner reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("sha256:xyz".parse::<Digest>().is_err());
        assert!("md5:ba7816bf".parse::<Digest>().is_err());
        let bad = format!("sha256:{}", "g".repeat(64));
        assert!(bad.parse::<Digest>().is_err());
    }
}

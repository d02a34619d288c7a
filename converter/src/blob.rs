//! The range-read trait every parser reads through.
//!
//! A [`BlobRead`] is a sized, immutable byte source read at offsets: a slice in memory, a local
//! file, or (in the lazy filesystem) an HTTP range source with a chunk cache in front of it. One
//! parser thus serves all of them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A sized byte source read at offsets.
pub trait BlobRead: Send + Sync {
    /// The blob's size in bytes.
    fn len(&self) -> u64;

    /// Fill `buf` from `off`; reading past the end is an error.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()>;

    /// Whether the blob has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Read `len` bytes at `off` into a new vector, checking the range first.
    fn read_vec(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        check_range(self.len(), off, len)?;
        let len = usize::try_from(len)
            .map_err(|_| Error::format(format!("range of {len} bytes is too large")))?;
        let mut buf = vec![0u8; len];
        self.read_at(off, &mut buf)?;
        Ok(buf)
    }
}

/// Fails unless `[off, off+len)` lies inside a blob of `size` bytes.
pub fn check_range(size: u64, off: u64, len: u64) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::format(format!(
            "range [{off}, +{len}) lies past the end of the blob ({size} bytes)"
        ))),
    }
}

impl BlobRead for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        check_range(BlobRead::len(self), off, buf.len() as u64)?;
        let off = off as usize;
        buf.copy_from_slice(&self[off..off + buf.len()]);
        Ok(())
    }
}

impl BlobRead for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.as_slice().read_at(off, buf)
    }
}

impl<B: BlobRead + ?Sized> BlobRead for &B {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(off, buf)
    }
}

impl<B: BlobRead + ?Sized> BlobRead for Box<B> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(off, buf)
    }
}

impl<B: BlobRead + ?Sized> BlobRead for Arc<B> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(off, buf)
    }
}

/// A local file read with `pread`, possibly a window `[start, start+len)` of it
/// (a blob inside a `docker save` tarball, say).
#[derive(Debug)]
pub struct FileBlob {
    file: File,
    start: u64,
    len: u64,
    name: String,
}

impl FileBlob {
    /// The whole file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        Ok(FileBlob {
            file,
            start: 0,
            len,
            name: path.display().to_string(),
        })
    }

    /// A window of an already open file.
    pub fn window(file: File, start: u64, len: u64, name: String) -> Self {
        FileBlob {
            file,
            start,
            len,
            name,
        }
    }

    /// The same window over a cloned file handle.
    pub fn try_clone(&self) -> Result<Self> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io(format!("dup {}", self.name), e))?;
        Ok(FileBlob::window(
            file,
            self.start,
            self.len,
            self.name.clone(),
        ))
    }
}

impl BlobRead for FileBlob {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.len, off, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, self.start + off)
            .map_err(|e| Error::io(format!("read {} at {off}", self.name), e))
    }
}

/// An [`std::io::Read`] over a range of a [`BlobRead`], for streaming a blob into a decoder.
pub struct BlobReader<B> {
    blob: B,
    pos: u64,
    end: u64,
}

impl<B: BlobRead> BlobReader<B> {
    /// Read `[start, end)` of `blob`, clamped to its size.
    pub fn new(blob: B, start: u64, end: u64) -> Self {
        let end = end.min(blob.len());
        BlobReader {
            blob,
            pos: start.min(end),
            end,
        }
    }
}

impl<B: BlobRead> std::io::Read for BlobReader<B> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = ((self.end - self.pos) as usize).min(buf.len()).min(1 << 20);
        if n == 0 {
            return Ok(0);
        }
        self.blob
            .read_at(self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn slice_ranges_are_checked() {
        let data = b"hello world".to_vec();
        let mut buf = [0u8; 5];
        data.read_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        assert!(data.read_at(7, &mut buf).is_err());
        assert!(data.read_vec(u64::MAX, 2).is_err());
    }

    #[test]
    fn reader_streams_a_window() {
        let data = b"0123456789".to_vec();
        let mut s = String::new();
        BlobReader::new(&data, 2, 7).read_to_string(&mut s).unwrap();
        assert_eq!(s, "23456");
    }
}

//! Small hand-written layer tars for tests that need a particular shape (stacked layers,
//! hostile links, unusual xattrs), built with the `tar` crate, fully deterministic.

use tar::{Builder, EntryType, Header};

/// Every entry's mtime unless set: a fixed instant, so layers are reproducible.
pub const MTIME: u64 = 1_700_000_000;

/// A tar under construction.
pub struct LayerTar {
    builder: Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTar {
    pub fn new() -> Self {
        LayerTar {
            builder: Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, mode: u32, mtime: u64, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        h
    }

    fn append(&mut self, mut h: Header, path: &str, data: &[u8]) -> &mut Self {
        self.builder
            .append_data(&mut h, path, data)
            .unwrap_or_else(|e| panic!("tar entry {path}: {e}"));
        self
    }

    /// A directory (`path` without a trailing slash).
    pub fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
        let h = Self::header(EntryType::Directory, mode, mtime, 0);
        self.append(h, &format!("{path}/"), &[])
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32, mtime: u64) -> &mut Self {
        let h = Self::header(EntryType::Regular, mode, mtime, data.len() as u64);
        self.append(h, path, data)
    }

    /// An empty regular file: what OCI whiteout markers are.
    pub fn marker(&mut self, path: &str) -> &mut Self {
        self.file(path, &[], 0o644, MTIME)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, MTIME, 0);
        self.builder
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("tar symlink {path}: {e}"));
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Link, 0o644, MTIME, 0);
        self.builder
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("tar hardlink {path}: {e}"));
        self
    }

    /// A regular file preceded by a PAX header carrying `SCHILY.xattr.NAME=value`.
    pub fn file_with_xattr(
        &mut self,
        path: &str,
        data: &[u8],
        name: &str,
        value: &[u8],
    ) -> &mut Self {
        let key = format!("SCHILY.xattr.{name}");
        self.builder
            .append_pax_extensions([(key.as_str(), value)])
            .unwrap();
        self.file(path, data, 0o644, MTIME)
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("tar into memory")
    }
}

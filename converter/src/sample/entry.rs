//! One tar entry of a sample layer, and how it is written: a USTAR header, preceded by a PAX
//! extended header whenever a field does not fit USTAR (long or non-ASCII names, big ids,
//! nanosecond mtimes, xattrs).

use std::io::Write;

use tar::{Builder, EntryType, Header};

use crate::error::{Error, Result};

/// Largest value a 7-digit octal USTAR id field holds.
const USTAR_ID_MAX: u64 = 0o7777777;
/// Length of the USTAR `name` and `linkname` fields.
const USTAR_NAME_LEN: usize = 100;
/// Length of the USTAR `uname` and `gname` fields (NUL included).
const USTAR_USER_LEN: usize = 32;

/// A tar entry as the generator describes it, before encoding.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub path: String,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
    pub mtime: u64,
    pub mtime_nsec: Option<u32>,
    pub link: String,
    pub dev: (u32, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub data: Vec<u8>,
}

/// Every sample entry is dated from here (2023-11-14), never from the clock.
pub(crate) const BASE_MTIME: u64 = 1_700_000_000;

impl Entry {
    fn new(path: impl Into<String>, kind: EntryType, mode: u32) -> Self {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            uname: "root".into(),
            gname: "root".into(),
            mtime: BASE_MTIME,
            mtime_nsec: None,
            link: String::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn dir(path: impl Into<String>) -> Self {
        Entry::new(path, EntryType::Directory, 0o755)
    }

    pub fn file(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        let mut e = Entry::new(path, EntryType::Regular, 0o644);
        e.data = data.into();
        e
    }

    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        let mut e = Entry::new(path, EntryType::Symlink, 0o777);
        e.link = target.into();
        e
    }

    pub fn hardlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        let mut e = Entry::new(path, EntryType::Link, 0o644);
        e.link = target.into();
        e
    }

    pub fn device(path: impl Into<String>, kind: EntryType, major: u32, minor: u32) -> Self {
        let mut e = Entry::new(path, kind, 0o660);
        e.dev = (major, minor);
        e
    }

    pub fn fifo(path: impl Into<String>) -> Self {
        Entry::new(path, EntryType::Fifo, 0o644)
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64, uname: &str, gname: &str) -> Self {
        self.uid = uid;
        self.gid = gid;
        self.uname = uname.into();
        self.gname = gname.into();
        self
    }

    pub fn mtime(mut self, secs: u64, nsec: Option<u32>) -> Self {
        self.mtime = secs;
        self.mtime_nsec = nsec;
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.into(), value.to_vec()));
        self
    }

    /// The PAX records this entry needs, in a fixed order.
    fn pax_records(&self) -> Vec<(String, Vec<u8>)> {
        let mut pax = Vec::new();
        let needs_pax = |s: &str, max: usize| s.len() > max || !s.is_ascii();
        if needs_pax(&self.path, USTAR_NAME_LEN) {
            pax.push(("path".into(), self.path.as_bytes().to_vec()));
        }
        if needs_pax(&self.link, USTAR_NAME_LEN) {
            pax.push(("linkpath".into(), self.link.as_bytes().to_vec()));
        }
        if self.uid > USTAR_ID_MAX {
            pax.push(("uid".into(), self.uid.to_string().into_bytes()));
        }
        if self.gid > USTAR_ID_MAX {
            pax.push(("gid".into(), self.gid.to_string().into_bytes()));
        }
        if needs_pax(&self.uname, USTAR_USER_LEN - 1) {
            pax.push(("uname".into(), self.uname.as_bytes().to_vec()));
        }
        if needs_pax(&self.gname, USTAR_USER_LEN - 1) {
            pax.push(("gname".into(), self.gname.as_bytes().to_vec()));
        }
        if let Some(nsec) = self.mtime_nsec {
            let v = format!("{}.{:09}", self.mtime, nsec);
            pax.push(("mtime".into(), v.into_bytes()));
        }
        for (name, value) in &self.xattrs {
            pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }
        pax
    }

    /// Append this entry to `builder`.
    pub fn write_to<W: Write>(&self, builder: &mut Builder<W>) -> Result<()> {
        let io = |e| Error::io(format!("sample entry `{}`", self.path), e);
        let pax = self.pax_records();
        if !pax.is_empty() {
            builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io)?;
        }
        let mut header = Header::new_ustar();
        {
            let ustar = header.as_ustar_mut().expect("a ustar header");
            // Names that need PAX keep an ASCII-safe truncated stand-in, as GNU tar does.
            fill(&mut ustar.name, &self.path);
            fill(&mut ustar.linkname, &self.link);
            fill(&mut ustar.uname, &self.uname);
            fill(&mut ustar.gname, &self.gname);
        }
        header.set_entry_type(self.kind);
        header.set_mode(self.mode);
        header.set_uid(self.uid.min(USTAR_ID_MAX));
        header.set_gid(self.gid.min(USTAR_ID_MAX));
        header.set_mtime(self.mtime);
        header.set_size(self.data.len() as u64);
        if matches!(self.kind, EntryType::Char | EntryType::Block) {
            header.set_device_major(self.dev.0).map_err(io)?;
            header.set_device_minor(self.dev.1).map_err(io)?;
        }
        header.set_cksum();
        builder.append(&header, self.data.as_slice()).map_err(io)
    }
}

/// Copy `s` into a fixed NUL-padded field, truncated to fit (leaving room for a NUL where the
/// field is a C string) and to ASCII when it is not.
fn fill(field: &mut [u8], s: &str) {
    let limit = if field.len() == USTAR_NAME_LEN {
        field.len()
    } else {
        field.len() - 1
    };
    field.fill(0);
    let src: Vec<u8> = if s.is_ascii() {
        s.bytes().collect()
    } else {
        s.bytes()
            .map(|b| if b.is_ascii() { b } else { b'_' })
            .collect()
    };
    let n = src.len().min(limit);
    field[..n].copy_from_slice(&src[..n]);
}

/// Write `entries` as a complete tar (with its two zero EOF blocks).
pub(crate) fn build_tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut builder = Builder::new(Vec::new());
    for e in entries {
        e.write_to(&mut builder)?;
    }
    builder
        .into_inner()
        .map_err(|e| Error::io("finish sample tar", e))
}

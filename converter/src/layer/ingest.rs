//! Reading a tar layer into [`Layer`].
//!
//! We frame the tar stream ourselves and use `tar::Header` only to decode header fields. The tar
//! crate's `Archive` splits PAX records at newlines, which corrupts binary xattr values
//! (`security.capability` often holds a 0x0a byte), and its raw mode cannot honour a PAX `size`;
//! neither mode reads every layer we must accept.
//!
//! Following Go's `archive/tar` (which wrote most layers in the wild), header-only types (links,
//! devices, FIFOs, directories) never carry data whatever their size field says, and an empty
//! value in a PAX record means "no override".

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;

use super::tarwrite::TAR_BLOCK;
use super::{detect_compression, EntryKind, InputStats, Layer, LayerEntry};
use crate::blob::FileBlob;
use rayon::prelude::*;

use crate::blob::BlobRead;
use crate::digest::{Digest, Hasher, HashingReader};
use crate::error::{Error, Result, ResultExt};

/// Large reads keep syscalls and decoder calls off the profile for multi-GB layers.
const COPY_BUF: usize = 1 << 20;
/// PAX and GNU long-name data is held in memory, so a hostile size must not exhaust it.
const MAX_EXT_HEADER: u64 = 64 << 20;
/// A sparse file's holes are hashed, so an absurd real size would hash zeros for hours.
const MAX_SPARSE_SIZE: u64 = 1 << 40;
/// Files a previous eStargz conversion added at the root; the writer makes fresh ones.
const DROPPED: [&str; 3] = [
    "stargz.index.json",
    ".prefetch.landmark",
    ".no.prefetch.landmark",
];

/// Options for [`Layer::ingest`].
#[derive(Clone, Debug, Default)]
pub struct IngestOptions {
    /// Directory for the content spool file (the system temp directory if `None`).
    pub spool_dir: Option<PathBuf>,
    /// The digest the input must have (the layer descriptor's digest).
    pub expected_digest: Option<Digest>,
    /// The size the input must have (the layer descriptor's size).
    pub expected_size: Option<u64>,
    /// Skip computing [`LayerEntry::digest`] (EROFS needs no per-file digests); they stay `None`.
    pub skip_content_digests: bool,
}

impl Layer {
    /// Read a layer (tar, tar+gzip or tar+zstd, detected by magic) into entries and a spool of
    /// file contents, checking the input against `opts.expected_*` once it is fully read.
    pub fn ingest<R: Read>(input: R, opts: &IngestOptions) -> Result<Layer> {
        let failed = Rc::new(RefCell::new(None));
        let mut raw = HashingReader::new(Source {
            inner: input,
            failed: Rc::clone(&failed),
        });
        // Read the magic ourselves rather than peek a BufReader: a short first read must not
        // make a gzip blob look uncompressed.
        let mut head = [0u8; 4];
        let mut got = 0;
        while got < head.len() {
            match raw.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(&failed, e)),
            }
        }
        let compression = detect_compression(&head[..got]);
        let mut raw = io::Cursor::new(head).take(got as u64).chain(raw);

        let file = match &opts.spool_dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        }
        .map_err(|e| Error::io("create layer spool", e))?;
        let mut spool = Spool { file, len: 0 };

        let (parsed, diff_id, uncompressed_size) = {
            let decoder = compression.decoder(&mut raw)?;
            // An uncompressed layer's diffID is its digest: hash those bytes once.
            let tar_reader = if compression == super::Compression::None {
                HashingReader::counting(decoder)
            } else {
                HashingReader::new(decoder)
            };
            let mut tar = TarStream {
                inner: BufReader::with_capacity(COPY_BUF, tar_reader),
                pos: 0,
                failed: &failed,
            };
            let parsed = Parser::new().run(&mut tar, &mut spool)?;
            // The diffID covers the whole stream: EOF blocks and any record padding too.
            tar.drain()?;
            let (diff_id, len) = tar.inner.get_mut().finish();
            (parsed, diff_id, len)
        };
        io::copy(&mut raw, &mut io::sink()).map_err(|e| stream_error(&failed, e))?;
        let (digest, size) = raw.get_mut().1.finish();
        let digest = digest.expect("the raw input is always hashed");
        let diff_id = diff_id.unwrap_or(digest);

        if let Some(want) = opts.expected_size {
            if want != size {
                return Err(Error::format(format!(
                    "layer size mismatch: expected {want} bytes, got {size} \
                     (layer digest {digest})"
                )));
            }
        }
        if let Some(want) = opts.expected_digest {
            if want != digest {
                return Err(Error::DigestMismatch {
                    what: "layer digest".into(),
                    expected: want.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        // Trailing sparse holes were never written, only counted.
        spool
            .file
            .set_len(spool.len)
            .map_err(|e| Error::io("extend layer spool", e))?;
        let spool = FileBlob::window(spool.file, 0, spool.len, "layer spool".into());
        let mut entries: Vec<LayerEntry> = parsed.entries.into_iter().flatten().collect();
        if !opts.skip_content_digests {
            hash_contents(&mut entries, &spool)?;
        }
        Ok(Layer {
            entries,
            spool,
            input: InputStats {
                compression,
                digest,
                size,
                diff_id,
                uncompressed_size,
                raw_entries: parsed.raw_entries,
            },
        })
    }
}

/// The caller's reader. Its errors are parked so that, after a decoder has wrapped them, we
/// can still tell "the source failed" (I/O) from "the bytes are bad" (format).
struct Source<R> {
    inner: R,
    failed: Rc<RefCell<Option<io::Error>>>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                return e;
            }
            let kind = e.kind();
            *self.failed.borrow_mut() = Some(e);
            io::Error::new(kind, "layer source read failed")
        })
    }
}

fn stream_error(failed: &RefCell<Option<io::Error>>, e: io::Error) -> Error {
    match failed.borrow_mut().take() {
        Some(source) => Error::io("read layer blob", source),
        None => Error::format(e),
    }
}

fn truncated(what: impl std::fmt::Display) -> Error {
    Error::format(format!("truncated tar stream: {what}"))
}

/// The decompressed tar stream, hashed as it is read, with our position in it.
struct TarStream<'a, R> {
    inner: BufReader<HashingReader<R>>,
    pos: u64,
    failed: &'a RefCell<Option<io::Error>>,
}

impl<R: Read> TarStream<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(self.failed, e)),
            }
        }
    }

    /// Fills `buf` unless the stream ends first; returns how much was read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.read(&mut buf[got..])? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }

    /// Reads the next header block; `false` at the end of the stream between entries.
    fn header(&mut self, block: &mut [u8; TAR_BLOCK]) -> Result<bool> {
        let pad = (TAR_BLOCK as u64 - self.pos % TAR_BLOCK as u64) % TAR_BLOCK as u64;
        let mut scratch = [0u8; TAR_BLOCK];
        if self.fill(&mut scratch[..pad as usize])? < pad as usize {
            return Err(truncated(format!("missing padding at offset {}", self.pos)));
        }
        let off = self.pos;
        match self.fill(block)? {
            0 => Ok(false),
            TAR_BLOCK => Ok(true),
            _ => Err(truncated(format!("partial header at offset {off}"))),
        }
    }

    /// The data of an extension header (PAX, GNU long name), held in memory.
    fn small_data(&mut self, size: u64) -> Result<Vec<u8>> {
        if size > MAX_EXT_HEADER {
            return Err(Error::format(format!(
                "extended header of {size} bytes is too large"
            )));
        }
        let mut data = vec![0u8; size as usize];
        let got = self.fill(&mut data)?;
        if got < data.len() {
            return Err(truncated(format!("{got} of {size} header data bytes")));
        }
        Ok(data)
    }

    fn drain(&mut self) -> Result<()> {
        let mut buf = [0u8; 64 << 10];
        while self.read(&mut buf)? > 0 {}
        Ok(())
    }
}

/// The content spool: file contents back to back, written at offsets so holes cost nothing.
struct Spool {
    file: File,
    len: u64,
}

impl Spool {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, self.len)
            .map_err(|e| Error::io("write layer spool", e))?;
        self.len += data.len() as u64;
        Ok(())
    }
}

/// PAX records as read, in order.
type Records = Vec<(String, Vec<u8>)>;

/// Walks the tar headers and folds entries into the layer's list.
struct Parser {
    /// Entries in tar order; a slot is emptied when a later entry takes its path.
    entries: Vec<Option<LayerEntry>>,
    index: HashMap<String, usize>,
    /// Records of PAX global headers, in order; later records override earlier ones.
    global: Records,
    raw_entries: u64,
    buf: Vec<u8>,
}

/// Extension headers that apply to the next entry.
#[derive(Default)]
struct Pending {
    pax: Option<Records>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Parser {
    fn new() -> Self {
        Parser {
            entries: Vec::new(),
            index: HashMap::new(),
            global: Vec::new(),
            raw_entries: 0,
            buf: vec![0u8; COPY_BUF],
        }
    }

    fn run<R: Read>(mut self, tar: &mut TarStream<'_, R>, spool: &mut Spool) -> Result<Self> {
        let mut pending = Pending::default();
        let mut last: Option<String> = None;
        loop {
            let after = || match &last {
                Some(name) => format!("after entry `{name}`"),
                None => "at the start of the layer".to_string(),
            };
            let mut block = [0u8; TAR_BLOCK];
            if !tar.header(&mut block).with_context(after)? || block.iter().all(|&b| b == 0) {
                let Pending {
                    pax,
                    long_name,
                    long_link,
                } = &pending;
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(truncated("extended header with no entry after it"))
                        .with_context(after);
                }
                return Ok(self);
            }
            let off = tar.pos - TAR_BLOCK as u64;
            let header = tar::Header::from_byte_slice(&block);
            let named = || format!("entry `{}`", String::from_utf8_lossy(&header.path_bytes()));
            if !checksum_ok(&block) {
                return Err(Error::format(format!(
                    "invalid tar header checksum (header at offset {off})"
                )))
                .with_context(named);
            }
            let typeflag = block[156];
            if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
                let size = unsigned(&block[124..136], "size");
                let data = size.and_then(|s| tar.small_data(s)).with_context(named)?;
                match typeflag {
                    b'x' => {
                        let records = parse_pax(&data).with_context(named)?;
                        pending.pax.get_or_insert_with(Vec::new).extend(records);
                    }
                    b'g' => self.global.extend(parse_pax(&data).with_context(named)?),
                    b'L' => pending.long_name = Some(trim_nuls(data)),
                    _ => pending.long_link = Some(trim_nuls(data)),
                }
                continue;
            }
            self.raw_entries += 1;
            let local = pending.pax.take().unwrap_or_default();
            let long_name = pending.long_name.take();
            let long_link = pending.long_link.take();
            let name = pax_value(&local, "path")
                .map(<[u8]>::to_vec)
                .or(long_name)
                .unwrap_or_else(|| header.path_bytes().into_owned());
            let link = pax_value(&local, "linkpath")
                .map(<[u8]>::to_vec)
                .or(long_link)
                .unwrap_or_else(|| header.link_name_bytes().unwrap_or_default().into_owned());
            let display = String::from_utf8_lossy(&name).into_owned();
            self.entry(tar, spool, header, &name, &link, &local)
                .with_context(|| format!("entry `{display}`"))?;
            last = Some(display);
        }
    }

    /// One entry: its metadata, its content into the spool, and its place in the list.
    fn entry<R: Read>(
        &mut self,
        tar: &mut TarStream<'_, R>,
        spool: &mut Spool,
        header: &tar::Header,
        raw_name: &[u8],
        raw_link: &[u8],
        local: &Records,
    ) -> Result<()> {
        let block = header.as_bytes();
        let typeflag = block[156];
        let kind = match typeflag {
            // Pre-POSIX tars mark directories only by the trailing slash.
            b'\0' if raw_name.ends_with(b"/") => EntryKind::Dir,
            b'0' | b'\0' | b'7' | b'S' => EntryKind::Reg,
            b'5' => EntryKind::Dir,
            b'2' => EntryKind::Symlink,
            b'1' => EntryKind::Hardlink,
            b'3' => EntryKind::Char,
            b'4' => EntryKind::Block,
            b'6' => EntryKind::Fifo,
            t => {
                let shown = if t.is_ascii_graphic() {
                    format!("'{}'", t as char)
                } else {
                    format!("0x{t:02x}")
                };
                return Err(Error::Unsupported(format!(
                    "unsupported tar entry type {shown}"
                )));
            }
        };
        let meta = Meta::collect(&self.global, local)?;
        let name = normalise(utf8(raw_name, "name")?).map_err(Error::format)?;
        let mut e = LayerEntry::new(name, kind);
        if e.name.is_empty() && kind != EntryKind::Dir {
            return Err(Error::format("the layer root must be a directory"));
        }
        e.mode = (unsigned(&block[100..108], "mode")? & 0o7777) as u32;
        e.uid = match meta.uid {
            Some(v) => parse_decimal(v, "uid")?,
            None => unsigned(&block[108..116], "uid")?,
        };
        e.gid = match meta.gid {
            Some(v) => parse_decimal(v, "gid")?,
            None => unsigned(&block[116..124], "gid")?,
        };
        e.uname = utf8(
            meta.uname.or(header.username_bytes()).unwrap_or_default(),
            "uname",
        )?
        .into();
        e.gname = utf8(
            meta.gname.or(header.groupname_bytes()).unwrap_or_default(),
            "gname",
        )?
        .into();
        (e.mtime, e.mtime_nsec) = match meta.mtime {
            Some(v) => parse_pax_time(v)?,
            None => (numeric(&block[136..148], "mtime")?, 0),
        };
        e.xattrs = meta.xattrs;
        e.pax_other = meta.other;
        match kind {
            EntryKind::Char | EntryKind::Block => {
                let dev = |field: &[u8], what| {
                    u32::try_from(unsigned(field, what)?)
                        .map_err(|_| Error::format(format!("{what} out of range")))
                };
                e.dev_major = dev(&block[329..337], "devmajor")?;
                e.dev_minor = dev(&block[337..345], "devminor")?;
            }
            EntryKind::Symlink => e.link_name = utf8(raw_link, "link name")?.into(),
            EntryKind::Hardlink => e.link_name = self.hardlink_target(&e.name, raw_link)?,
            _ => {}
        }
        if kind == EntryKind::Reg {
            let stored = match meta.size {
                Some(v) => parse_decimal(v, "size")?,
                None => unsigned(&block[124..136], "size")?,
            };
            e.spool_offset = spool.len;
            // Contents are hashed after the stream, in parallel (see `hash_contents`).
            let mut len = ContentLen(0);
            if typeflag == b'S' {
                self.copy_sparse(tar, spool, header, stored, &mut len)?;
            } else {
                self.copy(tar, spool, stored, &mut len)?;
            }
            e.size = len.0;
        }
        if DROPPED.contains(&e.name.as_str()) {
            return Ok(());
        }
        let slot = self.entries.len();
        if let Some(old) = self.index.insert(e.name.clone(), slot) {
            self.entries[old] = None;
        }
        self.entries.push(Some(e));
        Ok(())
    }

    fn hardlink_target(&self, name: &str, raw_link: &[u8]) -> Result<String> {
        let raw = utf8(raw_link, "hardlink target")?;
        let target = normalise(raw).map_err(|_| {
            Error::format(format!("hardlink target `{raw}` escapes the layer root"))
        })?;
        let found = self
            .index
            .get(&target)
            .and_then(|&i| self.entries[i].as_ref());
        match found {
            None => Err(Error::format(format!("hardlink to missing target `{raw}`"))),
            Some(t) if t.kind == EntryKind::Dir => {
                Err(Error::format(format!("hardlink to directory `{raw}`")))
            }
            Some(_) if target == name => Err(Error::format("hardlink to itself")),
            Some(_) => Ok(target),
        }
    }

    /// Copies `size` bytes of content from the tar into the spool, hashing them.
    fn copy<R: Read>(
        &mut self,
        tar: &mut TarStream<'_, R>,
        spool: &mut Spool,
        size: u64,
        hasher: &mut ContentLen,
    ) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = tar.read(&mut self.buf[..want])?;
            if n == 0 {
                return Err(truncated(format!(
                    "{} of {size} content bytes",
                    size - left
                )));
            }
            hasher.update(&self.buf[..n]);
            spool.write(&self.buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Expands an old-GNU sparse file ('S'): data regions from the tar, holes as zeros.
    fn copy_sparse<R: Read>(
        &mut self,
        tar: &mut TarStream<'_, R>,
        spool: &mut Spool,
        header: &tar::Header,
        stored: u64,
        hasher: &mut ContentLen,
    ) -> Result<()> {
        let gnu = header
            .as_gnu()
            .ok_or_else(|| Error::format("sparse entry without a GNU header"))?;
        let real = gnu.real_size().map_err(Error::format)?;
        if real > MAX_SPARSE_SIZE {
            return Err(Error::Unsupported(format!(
                "sparse file of {real} bytes is too large"
            )));
        }
        let mut regions = Vec::new();
        let mut push = |s: &tar::GnuSparseHeader| -> Result<()> {
            if !s.is_empty() {
                let off = s.offset().map_err(Error::format)?;
                let len = s.length().map_err(Error::format)?;
                regions.push((off, len));
            }
            Ok(())
        };
        gnu.sparse.iter().try_for_each(&mut push)?;
        let mut extended = gnu.is_extended();
        while extended {
            let mut ext = tar::GnuExtSparseHeader::new();
            let off = tar.pos;
            if tar.fill(ext.as_mut_bytes())? < TAR_BLOCK {
                return Err(truncated(format!("partial sparse header at offset {off}")));
            }
            ext.sparse().iter().try_for_each(&mut push)?;
            extended = ext.is_extended();
        }
        let bad_map = || Error::format("inconsistent sparse map");
        let (mut cur, mut data) = (0u64, 0u64);
        for &(off, len) in &regions {
            let end = off.checked_add(len).ok_or_else(bad_map)?;
            if off < cur || end > real {
                return Err(bad_map());
            }
            zeros(spool, hasher, off - cur);
            self.copy(tar, spool, len, hasher)?;
            cur = end;
            data += len;
        }
        if data != stored {
            return Err(bad_map());
        }
        zeros(spool, hasher, real - cur);
        Ok(())
    }
}

/// Counts content bytes as they are spooled.
struct ContentLen(u64);

impl ContentLen {
    fn update(&mut self, data: &[u8]) {
        self.0 += data.len() as u64;
    }
}

/// Every regular file's digest, read back from the spool on all cores: hashing while streaming
/// would serialise it behind decompression and parsing. Holes of sparse files read as zeros.
fn hash_contents(entries: &mut [LayerEntry], spool: &FileBlob) -> Result<()> {
    entries
        .par_iter_mut()
        .filter(|e| e.kind == EntryKind::Reg)
        .try_for_each(|e| {
            let mut h = Hasher::new();
            let mut buf = vec![0u8; (e.size as usize).clamp(1, COPY_BUF)];
            let mut off = 0;
            while off < e.size {
                let n = (e.size - off).min(buf.len() as u64) as usize;
                spool.read_at(e.spool_offset + off, &mut buf[..n])?;
                h.update(&buf[..n]);
                off += n as u64;
            }
            e.digest = Some(h.finish());
            Ok(())
        })
}

/// A hole: hashed as zeros, left unwritten in the spool.
fn zeros(spool: &mut Spool, hasher: &mut ContentLen, mut n: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    spool.len += n;
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// The PAX records that shape an entry, global defaults overridden by the entry's own.
struct Meta<'a> {
    uid: Option<&'a [u8]>,
    gid: Option<&'a [u8]>,
    uname: Option<&'a [u8]>,
    gname: Option<&'a [u8]>,
    mtime: Option<&'a [u8]>,
    size: Option<&'a [u8]>,
    xattrs: BTreeMap<String, Vec<u8>>,
    other: Vec<(String, Vec<u8>)>,
}

impl<'a> Meta<'a> {
    fn collect(global: &'a Records, local: &'a Records) -> Result<Self> {
        let mut m = Meta {
            uid: None,
            gid: None,
            uname: None,
            gname: None,
            mtime: None,
            size: None,
            xattrs: BTreeMap::new(),
            other: Vec::new(),
        };
        let tagged = global.iter().map(|r| (r, false));
        for ((key, value), is_local) in tagged.chain(local.iter().map(|r| (r, true))) {
            let v = (!value.is_empty()).then_some(value.as_slice());
            match key.as_str() {
                "path" | "linkpath" => {}
                "uid" => m.uid = v,
                "gid" => m.gid = v,
                "uname" => m.uname = v,
                "gname" => m.gname = v,
                "mtime" => m.mtime = v,
                "size" if is_local => m.size = v,
                k if k.starts_with("GNU.sparse.") => {
                    return Err(Error::Unsupported(
                        "PAX sparse files (GNU.sparse.*) are not supported".into(),
                    ))
                }
                k => match k.strip_prefix("SCHILY.xattr.") {
                    // An empty xattr value is a value, not a deletion.
                    Some(name) => {
                        m.xattrs.insert(name.to_string(), value.clone());
                    }
                    None if is_local => m.other.push((key.clone(), value.clone())),
                    // Global comments and the like describe the archive, not each entry.
                    None => {}
                },
            }
        }
        Ok(m)
    }
}

fn pax_value<'a>(records: &'a Records, key: &str) -> Option<&'a [u8]> {
    records
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
        .filter(|v| !v.is_empty())
}

/// Parses PAX records (`"<len> <key>=<value>\n"`, the length counting the whole record). Values
/// are raw bytes and may contain newlines, so records are split by length, never by `\n`.
pub(crate) fn parse_pax(mut data: &[u8]) -> Result<Records> {
    let bad = |why: &str| Error::format(format!("malformed PAX record: {why}"));
    let mut out = Vec::new();
    // Some writers pad the extension data with NULs.
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad length"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("bad length"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no `=`"))?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| bad("key is not UTF-8"))?;
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        out.push((key.to_string(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// A PAX time, `[-]secs[.frac]`, as seconds and nanoseconds with the nanoseconds counted
/// forward (so -1.25 is -2 s + 750 000 000 ns, as `timespec` has it).
pub(crate) fn parse_pax_time(v: &[u8]) -> Result<(i64, u32)> {
    let bad = || {
        Error::format(format!(
            "invalid PAX mtime `{}`",
            String::from_utf8_lossy(v)
        ))
    };
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (whole, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &[][..]),
    };
    if whole.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let secs = i64::try_from(parse_decimal(whole, "mtime")?).map_err(|_| bad())?;
    let mut nsec = 0u32;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    Ok(match (neg, nsec) {
        (false, _) => (secs, nsec),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

fn parse_decimal(v: &[u8], what: &str) -> Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::format(format!(
                "invalid PAX {what} `{}`",
                String::from_utf8_lossy(v)
            ))
        })
}

fn utf8<'a>(v: &'a [u8], what: &str) -> Result<&'a str> {
    std::str::from_utf8(v).map_err(|_| Error::Unsupported(format!("{what} is not valid UTF-8")))
}

fn trim_nuls(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Normalises a tar path lexically: no leading `/`, `./` or trailing `/`, no `.` or empty
/// components, `..` resolved. The root is `""`.
pub(crate) fn normalise(raw: &str) -> std::result::Result<String, &'static str> {
    if raw.contains('\0') {
        return Err("name contains a NUL byte");
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or("escapes the layer root")?;
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// A numeric header field: octal, padded with spaces or NULs (empty means 0), or GNU base-256
/// (high bit set, two's complement) for values octal cannot hold.
fn numeric(field: &[u8], what: &str) -> Result<i64> {
    let bad = || Error::format(format!("invalid {what} field in tar header"));
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let invert = if field[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut v: u64 = 0;
        for (i, &b) in field.iter().enumerate() {
            let b = if i == 0 {
                (b ^ invert) & 0x7f
            } else {
                b ^ invert
            };
            if v >> 56 != 0 {
                return Err(bad());
            }
            v = v << 8 | u64::from(b);
        }
        let v = i64::try_from(v).map_err(|_| bad())?;
        return Ok(if invert == 0xff { !v } else { v });
    }
    let trimmed = field
        .iter()
        .position(|&b| b != b' ' && b != 0)
        .map_or(&[][..], |start| {
            let end = field
                .iter()
                .rposition(|&b| b != b' ' && b != 0)
                .unwrap_or(start);
            &field[start..=end]
        });
    if trimmed.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(trimmed).map_err(|_| bad())?;
    i64::from_str_radix(s, 8)
        .ok()
        .filter(|_| s.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .ok_or_else(bad)
}

/// A numeric field that must not be negative (sizes, ids, modes).
fn unsigned(field: &[u8], what: &str) -> Result<u64> {
    u64::try_from(numeric(field, what)?)
        .map_err(|_| Error::format(format!("negative {what} in tar header")))
}

/// POSIX asks for an unsigned byte sum; some old tars summed signed bytes. Accept either.
fn checksum_ok(block: &[u8; TAR_BLOCK]) -> bool {
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Some(stored) = std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| i64::from_str_radix(s, 8).ok())
    else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || stored == signed
}

#[cfg(test)]
mod tests;

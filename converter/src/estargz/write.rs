//! Writing eStargz and zstd:chunked blobs from an ingested layer.
//!
//! The writer first plans the whole blob: the entry order (prefetch-listed files first, then a
//! landmark, then the rest), the tar stream those entries make, and where that stream is cut into
//! compressed members (before every non-empty file's content, before every chunk, and whenever a
//! run of headers grows past the chunk size). The plan depends only on the layer and the options,
//! so the output is byte-identical whatever the thread count. Members are then materialised from
//! the layer's spool and compressed in parallel, a bounded window at a time, and written in order
//! while the TOC's offsets and the digests are filled in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use rayon::prelude::*;

use super::format::{self, Toc, TocEntry};
use crate::blob::BlobRead;
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::layer::{parent_of, tar_header, tar_name, EntryKind, Layer, LayerEntry, TAR_BLOCK};
use crate::prefetch::PrefetchList;

/// Which flavour of blob to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobFormat {
    /// gzip members, TOC in a final tar, 51-byte footer (`tar+gzip`).
    Estargz,
    /// zstd frames, TOC as zstd JSON in a skippable frame, 40-byte footer (`tar+zstd`).
    ZstdChunked,
}

impl BlobFormat {
    /// The layer media type blobs of this format carry.
    pub fn media_type(self) -> &'static str {
        match self {
            BlobFormat::Estargz => "application/vnd.oci.image.layer.v1.tar+gzip",
            BlobFormat::ZstdChunked => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The compression level used when none is given (the reference's defaults).
    pub fn default_level(self) -> u32 {
        match self {
            BlobFormat::Estargz => 9,
            BlobFormat::ZstdChunked => 3,
        }
    }

    /// The format's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BlobFormat::Estargz => "estargz",
            BlobFormat::ZstdChunked => "zstdchunked",
        }
    }
}

/// Options of [`EstargzWriter`].
#[derive(Clone, Debug)]
pub struct EstargzOptions {
    pub format: BlobFormat,
    /// Files larger than this are split into chunks of this size (default 4 MiB).
    pub chunk_size: u64,
    /// gzip 1–9 (default 9) or zstd 1–22 (default 3).
    pub level: u32,
    /// Files in access order; they are placed first, followed by `.prefetch.landmark`,
    /// except large files the list says were read sparsely (see [`crate::prefetch::PrefetchEntry::is_sparse`]).
    pub prefetch: Option<PrefetchList>,
    /// Uncompressed bytes materialised and compressed at once (bounds memory).
    pub window: u64,
}

impl EstargzOptions {
    /// Defaults for `format`.
    pub fn new(format: BlobFormat) -> Self {
        EstargzOptions {
            format,
            chunk_size: 4 << 20,
            level: format.default_level(),
            prefetch: None,
            window: 32 << 20,
        }
    }

    fn check(&self) -> Result<()> {
        if self.chunk_size == 0 {
            return Err(Error::Invalid("chunk size must be at least 1 byte".into()));
        }
        let max = match self.format {
            BlobFormat::Estargz => 9,
            BlobFormat::ZstdChunked => 22,
        };
        if self.level == 0 || self.level > max {
            return Err(Error::Invalid(format!(
                "compression level {} is out of range 1..={max} for {}",
                self.level,
                self.format.name()
            )));
        }
        Ok(())
    }
}

/// What writing a blob produced.
#[derive(Clone, Debug)]
pub struct WrittenBlob {
    /// Digest and size of the compressed blob.
    pub digest: Digest,
    pub size: u64,
    /// Digest and size of the decompressed stream (the layer's new diffID).
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// Digest of the TOC JSON.
    pub toc_digest: Digest,
    /// Entries in the TOC apart from chunks, and chunks (a file of n chunks counts n).
    pub entries: usize,
    pub chunks: usize,
    /// Compressed offset of the prefetch landmark's member: the prefetch region is `[0, this)`.
    pub prefetch_end: Option<u64>,
    /// Annotations to put on the layer descriptor.
    pub annotations: BTreeMap<String, String>,
}

/// Writes one layer as an eStargz or zstd:chunked blob.
///
/// Compression runs on the current rayon pool; install a pool to bound the threads.
#[derive(Clone, Debug)]
pub struct EstargzWriter {
    opts: EstargzOptions,
}

/// An entry of the output: one of the layer's, or a landmark.
#[derive(Clone, Copy, Debug)]
enum Item {
    Layer(usize),
    Landmark(&'static str),
}

/// A piece of a member's uncompressed bytes.
#[derive(Clone, Copy, Debug)]
enum Piece {
    /// The tar header of output item `n`.
    Header(usize),
    /// `len` bytes of content at `off` in the spool.
    Spool {
        off: u64,
        len: u64,
        /// The file's digest when this chunk is the whole file: ingest already hashed it.
        whole: Option<Digest>,
    },
    /// The landmark's one content byte.
    LandmarkByte,
    /// Zero bytes padding content to a tar block.
    Padding(u64),
}

/// A member: a run of the tar stream compressed on its own.
#[derive(Debug, Default)]
struct Member {
    pieces: Vec<Piece>,
    len: u64,
    /// The TOC entry whose chunk starts this member, and whether its digest must be computed.
    chunk_toc: Option<usize>,
}

struct Plan {
    items: Vec<Item>,
    members: Vec<Member>,
    toc: Vec<TocEntry>,
    /// For TOC entries with content: the member holding it.
    toc_member: Vec<Option<usize>>,
    /// Member of the prefetch landmark's content.
    prefetch_member: Option<usize>,
}

/// A compressed member, ready to write.
struct Packed {
    compressed: Vec<u8>,
    raw: Vec<u8>,
    chunk_digest: Option<Digest>,
}

impl EstargzWriter {
    /// A writer with `opts`.
    pub fn new(opts: EstargzOptions) -> Self {
        EstargzWriter { opts }
    }

    /// The options.
    pub fn options(&self) -> &EstargzOptions {
        &self.opts
    }

    /// Write `layer` to `out`. `progress` is called with uncompressed bytes done since last call.
    pub fn write<W: Write>(
        &self,
        layer: &Layer,
        out: W,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<WrittenBlob> {
        self.opts.check()?;
        let items = order_items(layer, self.opts.prefetch.as_ref());
        let mut plan = self.plan(layer, items)?;
        let mut out = CountingWriter::new(out);
        let mut diff = Hasher::new();
        let mut member_offsets = Vec::with_capacity(plan.members.len());

        // Windows of members: each is compressed in parallel while the previous one is hashed
        // and written on this thread, so the sequential part overlaps the parallel one.
        let mut windows = Vec::new();
        let mut start = 0;
        while start < plan.members.len() {
            let mut end = start;
            let mut window = 0;
            while end < plan.members.len() && (end == start || window < self.opts.window) {
                window += plan.members[end].len;
                end += 1;
            }
            windows.push(start..end);
            start = end;
        }
        let Plan {
            items,
            members,
            toc,
            ..
        } = &mut plan;
        let (items, members) = (&*items, &*members);
        let compress = |range: std::ops::Range<usize>| -> Result<Vec<Packed>> {
            members[range]
                .par_iter()
                .map_init(
                    || Codec::new(self.opts.format, self.opts.level),
                    |codec, m| self.pack(layer, items, m, codec),
                )
                .collect()
        };
        let mut pending: Option<(usize, Vec<Packed>)> = None;
        for next in windows.into_iter().map(Some).chain(std::iter::once(None)) {
            let to_write = pending.take();
            let mut compressed = None;
            // `in_place_scope` keeps the writing on this thread, so `out` need not be `Send`.
            let written = rayon::in_place_scope(|scope| {
                if let Some(r) = next {
                    let slot = &mut compressed;
                    let compress = &compress;
                    scope.spawn(move |_| *slot = Some((r.start, compress(r))));
                }
                let Some((first, packed)) = to_write else {
                    return Ok(());
                };
                for (i, p) in packed.into_iter().enumerate() {
                    member_offsets.push(out.count);
                    if let (Some(t), Some(d)) = (members[first + i].chunk_toc, p.chunk_digest) {
                        toc[t].chunk_digest = d.to_string();
                    }
                    diff.update(&p.raw);
                    out.write_all(&p.compressed)
                        .map_err(|e| Error::io("write blob", e))?;
                    progress(p.raw.len() as u64);
                }
                Ok::<(), Error>(())
            });
            written?;
            pending = match compressed {
                Some((first, packed)) => Some((first, packed?)),
                None => None,
            };
        }

        for (t, m) in plan.toc_member.iter().enumerate() {
            if let Some(m) = m {
                plan.toc[t].offset = member_offsets[*m] as i64;
            }
        }
        let prefetch_end = plan.prefetch_member.map(|m| member_offsets[m]);
        let toc = Toc {
            version: 1,
            entries: std::mem::take(&mut plan.toc),
        };
        let toc_json = toc.to_json();
        let toc_digest = Digest::of(&toc_json);
        let mut annotations = BTreeMap::new();
        let toc_offset = out.count;
        match self.opts.format {
            BlobFormat::Estargz => {
                let mut toc_entry = LayerEntry::new(format::TOC_TAR_NAME, EntryKind::Reg);
                toc_entry.size = toc_json.len() as u64;
                let mut tar = tar_header(&toc_entry)?;
                tar.extend_from_slice(&toc_json);
                tar.resize(
                    tar.len() + pad(toc_json.len() as u64) as usize + 2 * TAR_BLOCK,
                    0,
                );
                diff.update(&tar);
                let gz = Codec::new(self.opts.format, self.opts.level).compress(&tar)?;
                out.write_all(&gz)
                    .and_then(|_| out.write_all(&format::gzip_footer(toc_offset)))
                    .map_err(|e| Error::io("write blob TOC", e))?;
            }
            BlobFormat::ZstdChunked => {
                let z = Codec::new(self.opts.format, self.opts.level).compress(&toc_json)?;
                let frame_len = u32::try_from(z.len())
                    .map_err(|_| Error::Unsupported("TOC larger than 4 GiB".into()))?;
                let toc_pos = toc_offset + 8;
                out.write_all(&format::zstd_skippable_header(frame_len))
                    .and_then(|_| out.write_all(&z))
                    .and_then(|_| {
                        out.write_all(&format::zstd_footer(
                            toc_pos,
                            z.len() as u64,
                            toc_json.len() as u64,
                        ))
                    })
                    .map_err(|e| Error::io("write blob TOC", e))?;
                annotations.insert(
                    format::ANNOTATION_ZSTD_MANIFEST_CHECKSUM.to_string(),
                    Digest::of(&z).to_string(),
                );
                annotations.insert(
                    format::ANNOTATION_ZSTD_MANIFEST_POSITION.to_string(),
                    format!(
                        "{}:{}:{}:{}",
                        toc_pos,
                        z.len(),
                        toc_json.len(),
                        format::ZSTD_MANIFEST_TYPE_CRFS
                    ),
                );
            }
        }
        out.flush().map_err(|e| Error::io("flush blob", e))?;
        let uncompressed_size = diff.len();
        annotations.insert(
            format::ANNOTATION_TOC_DIGEST.to_string(),
            toc_digest.to_string(),
        );
        annotations.insert(
            format::ANNOTATION_UNCOMPRESSED_SIZE.to_string(),
            uncompressed_size.to_string(),
        );
        let chunks = toc
            .entries
            .iter()
            .filter(|e| !e.chunk_digest.is_empty())
            .count();
        let entries = toc.entries.iter().filter(|e| e.kind != "chunk").count();
        let (digest, size) = out.finish();
        Ok(WrittenBlob {
            digest,
            size,
            diff_id: diff.finish(),
            uncompressed_size,
            toc_digest,
            entries,
            chunks,
            prefetch_end,
            annotations,
        })
    }

    /// Lay out the tar stream, its members and the TOC (offsets and chunk digests left blank).
    fn plan(&self, layer: &Layer, items: Vec<Item>) -> Result<Plan> {
        let chunk_size = self.opts.chunk_size;
        let mut members: Vec<Member> = vec![Member::default()];
        let mut toc = Vec::with_capacity(items.len());
        let mut toc_member = Vec::with_capacity(items.len());
        let mut prefetch_member = None;
        let mut names = NameMemo::default();
        let mut pending_pad = 0u64;

        for (n, item) in items.iter().enumerate() {
            let landmark;
            let entry = match *item {
                Item::Layer(i) => &layer.entries[i],
                Item::Landmark(name) => {
                    landmark = landmark_entry(name);
                    &landmark
                }
            };
            let header_len = tar_header(entry)
                .map_err(|e| e.context(format!("entry `{}`", entry.name)))?
                .len() as u64;
            // A long run of headers is cut so no member grows without bound.
            let cur = members.last_mut().expect("plan has a member");
            if cur.len > chunk_size && cur.chunk_toc.is_none() && pending_pad == 0 {
                members.push(Member::default());
            }
            let cur = members.last_mut().expect("plan has a member");
            if pending_pad > 0 {
                cur.pieces.push(Piece::Padding(pending_pad));
                cur.len += pending_pad;
                pending_pad = 0;
            }
            cur.pieces.push(Piece::Header(n));
            cur.len += header_len;

            let mut te = toc_entry(entry, &mut names);
            if entry.kind != EntryKind::Reg || entry.size == 0 {
                toc.push(te);
                toc_member.push(None);
                continue;
            }
            let mut written = 0u64;
            while written < entry.size {
                let remain = entry.size - written;
                let this = remain.min(chunk_size);
                if remain >= chunk_size {
                    te.chunk_size = chunk_size as i64;
                }
                te.chunk_offset = written as i64;
                let piece = match *item {
                    Item::Layer(_) => Piece::Spool {
                        off: entry.spool_offset + written,
                        len: this,
                        whole: if this == entry.size {
                            entry.digest
                        } else {
                            None
                        },
                    },
                    Item::Landmark(name) => {
                        if name == format::PREFETCH_LANDMARK {
                            prefetch_member = Some(members.len());
                        }
                        te.chunk_digest = Digest::of(&[format::LANDMARK_CONTENT]).to_string();
                        Piece::LandmarkByte
                    }
                };
                members.push(Member {
                    pieces: vec![piece],
                    len: this,
                    chunk_toc: matches!(item, Item::Layer(_)).then_some(toc.len()),
                });
                toc_member.push(Some(members.len() - 1));
                toc.push(te);
                written += this;
                te = TocEntry {
                    name: tar_name(entry),
                    kind: "chunk".into(),
                    ..Default::default()
                };
            }
            pending_pad = pad(entry.size);
        }
        if pending_pad > 0 {
            let cur = members.last_mut().expect("plan has a member");
            cur.pieces.push(Piece::Padding(pending_pad));
            cur.len += pending_pad;
        }
        Ok(Plan {
            items,
            members,
            toc,
            toc_member,
            prefetch_member,
        })
    }

    /// Materialise and compress one member.
    fn pack(&self, layer: &Layer, items: &[Item], m: &Member, codec: &mut Codec) -> Result<Packed> {
        let mut raw = Vec::with_capacity(m.len as usize);
        let mut chunk_digest = None;
        for piece in &m.pieces {
            match *piece {
                Piece::Header(n) => {
                    let h = match items[n] {
                        Item::Layer(i) => tar_header(&layer.entries[i]),
                        Item::Landmark(name) => tar_header(&landmark_entry(name)),
                    };
                    raw.extend_from_slice(&h?);
                }
                Piece::Spool { off, len, whole } => {
                    let at = raw.len();
                    raw.resize(at + len as usize, 0);
                    layer.spool.read_at(off, &mut raw[at..])?;
                    if m.chunk_toc.is_some() {
                        chunk_digest = Some(whole.unwrap_or_else(|| Digest::of(&raw[at..])));
                    }
                }
                Piece::LandmarkByte => raw.push(format::LANDMARK_CONTENT),
                Piece::Padding(n) => raw.resize(raw.len() + n as usize, 0),
            }
        }
        let compressed = codec.compress(&raw)?;
        Ok(Packed {
            compressed,
            raw,
            chunk_digest,
        })
    }
}

/// Bytes of zero padding after `size` bytes of content.
fn pad(size: u64) -> u64 {
    (TAR_BLOCK as u64 - size % TAR_BLOCK as u64) % TAR_BLOCK as u64
}

/// A landmark file: one byte, mode 0, no owner, no time.
fn landmark_entry(name: &str) -> LayerEntry {
    let mut e = LayerEntry::new(name, EntryKind::Reg);
    e.size = 1;
    e.digest = Some(Digest::of(&[format::LANDMARK_CONTENT]));
    e
}

/// Remembers the last user and group name written per id: the reference writes a name only
/// when it differs from the last one given for that id.
#[derive(Default)]
struct NameMemo {
    users: HashMap<u64, String>,
    groups: HashMap<u64, String>,
}

fn name_if_changed(memo: &mut HashMap<u64, String>, id: u64, name: &str) -> String {
    if name.is_empty() || memo.get(&id).map(String::as_str) == Some(name) {
        return String::new();
    }
    memo.insert(id, name.to_string());
    name.to_string()
}

/// The TOC entry of a layer entry (offset and chunk fields are filled by the planner).
fn toc_entry(e: &LayerEntry, names: &mut NameMemo) -> TocEntry {
    let is_dev = matches!(e.kind, EntryKind::Char | EntryKind::Block);
    TocEntry {
        name: tar_name(e),
        kind: e.kind.toc_name().into(),
        size: if e.kind == EntryKind::Reg {
            e.size as i64
        } else {
            0
        },
        mod_time: format::format_modtime(e.mtime, e.mtime_nsec),
        link_name: match e.kind {
            EntryKind::Symlink | EntryKind::Hardlink => e.link_name.clone(),
            _ => String::new(),
        },
        mode: i64::from(e.mode),
        uid: e.uid as i64,
        gid: e.gid as i64,
        user_name: name_if_changed(&mut names.users, e.uid, &e.uname),
        group_name: name_if_changed(&mut names.groups, e.gid, &e.gname),
        dev_major: if is_dev { i64::from(e.dev_major) } else { 0 },
        dev_minor: if is_dev { i64::from(e.dev_minor) } else { 0 },
        xattrs: e.xattrs.clone(),
        digest: if e.kind == EntryKind::Reg {
            e.digest.map(|d| d.to_string()).unwrap_or_default()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

/// The output order: without a prefetch list, `.no.prefetch.landmark` then the layer's order;
/// with one, the listed files in access order (each after its parent directories and, for
/// hardlinks, their targets), `.prefetch.landmark`, then everything else in the layer's order.
/// A file read sparsely stays out of the prefetch region: a file's bytes are one run of the
/// tar stream, so the region would have to hold all of it.
fn order_items(layer: &Layer, prefetch: Option<&PrefetchList>) -> Vec<Item> {
    let mut items = Vec::with_capacity(layer.entries.len() + 1);
    let Some(list) = prefetch else {
        items.push(Item::Landmark(format::NO_PREFETCH_LANDMARK));
        items.extend((0..layer.entries.len()).map(Item::Layer));
        return items;
    };
    let index = layer.index_by_name();
    let mut placed = HashSet::new();
    for listed in list.entries() {
        let Some(&i) = index.get(listed.path.as_str()) else {
            continue;
        };
        let size = layer.entries[i].size;
        if listed.is_sparse(size) {
            tracing::info!(
                "`{}`: the workload read {} of its {size} bytes; left out of the prefetch region",
                listed.path,
                listed.ranges.as_ref().map_or(size, |r| r.covered()),
            );
            continue;
        }
        place_with_parents(layer, &index, i, &mut placed, &mut items);
    }
    items.push(Item::Landmark(format::PREFETCH_LANDMARK));
    items.extend(
        (0..layer.entries.len())
            .filter(|i| !placed.contains(i))
            .map(Item::Layer),
    );
    items
}

fn place_with_parents(
    layer: &Layer,
    index: &HashMap<&str, usize>,
    i: usize,
    placed: &mut HashSet<usize>,
    items: &mut Vec<Item>,
) {
    if placed.contains(&i) {
        return;
    }
    let entry = &layer.entries[i];
    // Parents first, outermost first; a parent the layer does not hold is skipped.
    let mut parents = Vec::new();
    let mut p = parent_of(&entry.name);
    loop {
        if let Some(&j) = index.get(p) {
            if j != i {
                parents.push(j);
            }
        }
        if p.is_empty() {
            break;
        }
        p = parent_of(p);
    }
    for &j in parents.iter().rev() {
        if placed.insert(j) {
            items.push(Item::Layer(j));
        }
    }
    if entry.kind == EntryKind::Hardlink {
        if let Some(&t) = index.get(entry.link_name.as_str()) {
            place_with_parents(layer, index, t, placed, items);
        }
    }
    if placed.insert(i) {
        items.push(Item::Layer(i));
    }
}

/// A per-thread compressor.
enum Codec {
    Gzip(libdeflater::Compressor),
    Zstd(i32),
}

impl Codec {
    fn new(format: BlobFormat, level: u32) -> Self {
        match format {
            BlobFormat::Estargz => Codec::Gzip(libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(level as i32).unwrap_or_default(),
            )),
            BlobFormat::ZstdChunked => Codec::Zstd(level as i32),
        }
    }

    /// One complete gzip member or zstd frame holding `data`.
    fn compress(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        match self {
            Codec::Gzip(c) => {
                let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
                let n = c
                    .gzip_compress(data, &mut out)
                    .map_err(|e| Error::format(format!("gzip compression failed: {e:?}")))?;
                out.truncate(n);
                Ok(out)
            }
            Codec::Zstd(level) => {
                zstd::bulk::compress(data, *level).map_err(|e| Error::io("zstd compression", e))
            }
        }
    }
}

/// Counts and hashes what is written.
struct CountingWriter<W> {
    inner: W,
    count: u64,
    hasher: Hasher,
}

impl<W: Write> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter {
            inner,
            count: 0,
            hasher: Hasher::new(),
        }
    }
    fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estargz::EstargzReader;
    use crate::layer::IngestOptions;

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_600_000_000);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn write(layer: &Layer, opts: EstargzOptions) -> (Vec<u8>, WrittenBlob) {
        let mut out = Vec::new();
        let w = EstargzWriter::new(opts)
            .write(layer, &mut out, &|_| {})
            .unwrap();
        (out, w)
    }

    fn sample_layer() -> Layer {
        let tar = tar_of(&[
            ("a/small.txt", b"hello".to_vec()),
            ("a/empty", Vec::new()),
            ("big.bin", noise(10_000, 7)),
            ("exact.bin", noise(4096, 9)),
        ]);
        Layer::ingest(&tar[..], &IngestOptions::default()).unwrap()
    }

    #[test]
    fn written_blob_reads_back_verified_in_both_formats() {
        let layer = sample_layer();
        for format in [BlobFormat::Estargz, BlobFormat::ZstdChunked] {
            let mut opts = EstargzOptions::new(format);
            opts.chunk_size = 4096;
            let (blob, w) = write(&layer, opts);
            assert_eq!(w.size, blob.len() as u64);
            assert_eq!(w.digest, Digest::of(&blob));
            let r = EstargzReader::open(&blob, Some(&w.toc_digest)).unwrap();
            assert_eq!(r.read_file("a/small.txt").unwrap(), b"hello");
            assert_eq!(r.read_file("big.bin").unwrap(), noise(10_000, 7));
            assert_eq!(r.read_file("exact.bin").unwrap(), noise(4096, 9));
            assert_eq!(r.read_file("a/empty").unwrap(), b"");
            assert_eq!(r.lookup("big.bin").unwrap().chunks.len(), 3);
            assert_eq!(r.prefetch_end(), Some(0));
            // The diffID covers the whole decompressed stream.
            let mut raw = Vec::new();
            match format {
                BlobFormat::Estargz => {
                    std::io::Read::read_to_end(
                        &mut flate2::read::MultiGzDecoder::new(&blob[..]),
                        &mut raw,
                    )
                    .unwrap();
                }
                BlobFormat::ZstdChunked => {
                    raw = zstd::stream::decode_all(&blob[..]).unwrap();
                }
            }
            assert_eq!(raw.len() as u64, w.uncompressed_size);
            assert_eq!(Digest::of(&raw), w.diff_id);
        }
    }

    #[test]
    fn output_does_not_depend_on_thread_count() {
        let layer = sample_layer();
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let mut opts = EstargzOptions::new(BlobFormat::Estargz);
                    opts.chunk_size = 1000;
                    opts.window = 3000;
                    write(&layer, opts).0
                })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn prefetch_list_comes_first_with_parents_then_landmark() {
        let layer = sample_layer();
        let mut opts = EstargzOptions::new(BlobFormat::Estargz);
        opts.prefetch = Some(PrefetchList::from_paths([
            "/a/small.txt",
            "missing",
            "exact.bin",
        ]));
        let (blob, w) = write(&layer, opts);
        let r = EstargzReader::open(&blob, Some(&w.toc_digest)).unwrap();
        let names: Vec<&str> = r.toc().entries.iter().map(|e| e.name.as_str()).collect();
        let landmark = names
            .iter()
            .position(|n| *n == ".prefetch.landmark")
            .unwrap();
        let small = names.iter().position(|n| *n == "a/small.txt").unwrap();
        let exact = names.iter().position(|n| *n == "exact.bin").unwrap();
        let big = names.iter().position(|n| *n == "big.bin").unwrap();
        assert!(
            small < exact && exact < landmark && landmark < big,
            "{names:?}"
        );
        let end = r.prefetch_end().unwrap();
        assert_eq!(Some(end), w.prefetch_end);
        // The prefetched files' content lies before the landmark.
        let small_chunk = &r.lookup("a/small.txt").unwrap().chunks[0];
        assert!(small_chunk.blob_offset < end);
    }

    #[test]
    fn sparsely_read_large_files_stay_out_of_the_prefetch_region() {
        let mib = 1 << 20;
        let tar = tar_of(&[
            ("small.txt", b"hi".to_vec()),
            ("huge.bin", noise(3 * mib, 3)),
            ("dense.bin", noise(3 * mib, 4)),
        ]);
        let layer = Layer::ingest(&tar[..], &IngestOptions::default()).unwrap();
        let list = PrefetchList::parse(&format!(
            "/small.txt\n/huge.bin\t0+4096,{mib}+65536\n/dense.bin\t0+{}\n",
            2 * mib
        ))
        .unwrap();
        let mut opts = EstargzOptions::new(BlobFormat::Estargz);
        opts.prefetch = Some(list);
        let (blob, _) = write(&layer, opts);
        let r = EstargzReader::open(&blob, None).unwrap();
        let names: Vec<&str> = r.toc().entries.iter().map(|e| e.name.as_str()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        let landmark = at(".prefetch.landmark");
        assert!(at("small.txt") < landmark, "{names:?}");
        assert!(at("dense.bin") < landmark, "two thirds read: {names:?}");
        assert!(at("huge.bin") > landmark, "read 2%: {names:?}");
        assert_eq!(r.read_file("huge.bin").unwrap(), noise(3 * mib, 3));
    }

    #[test]
    fn bad_levels_are_refused() {
        let layer = sample_layer();
        let mut opts = EstargzOptions::new(BlobFormat::Estargz);
        opts.level = 10;
        assert!(EstargzWriter::new(opts)
            .write(&layer, std::io::sink(), &|_| {})
            .is_err());
    }
}

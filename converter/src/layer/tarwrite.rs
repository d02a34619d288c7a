//! Serialising entries back into tar headers, for writers that emit a tar stream (eStargz).
//!
//! We fill the ustar block ourselves rather than through `tar::Header`'s setters: those validate
//! paths for extraction (rejecting `..` and the like), and the crate's `Builder` falls back to GNU
//! long-name headers. Whatever ustar cannot hold exactly goes into a PAX `x` header in front,
//! which every reader that matters (Go's `archive/tar`, GNU tar, libarchive) understands.

use super::{EntryKind, LayerEntry};
use crate::error::{Error, Result};

/// Size of a tar block.
pub const TAR_BLOCK: usize = 512;

const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..265;
const UNAME: std::ops::Range<usize> = 265..297;
const GNAME: std::ops::Range<usize> = 297..329;
const DEVMAJOR: std::ops::Range<usize> = 329..337;
const DEVMINOR: std::ops::Range<usize> = 337..345;
const PREFIX: std::ops::Range<usize> = 345..500;

/// Largest values the octal fields hold (7 and 11 digits).
const MAX_OCTAL_7: u64 = 0o7777777;
const MAX_OCTAL_11: u64 = 0o77777777777;

/// PAX keys `tar_header` writes from typed fields; `pax_other` must not repeat them.
const RESERVED_KEYS: [&str; 8] = [
    "path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime",
];

/// The name an entry gets in the tar we write and in the TOC: `./` for the root, a trailing
/// `/` for directories.
pub fn tar_name(entry: &LayerEntry) -> String {
    if entry.name.is_empty() {
        "./".to_string()
    } else if entry.kind == EntryKind::Dir {
        format!("{}/", entry.name)
    } else {
        entry.name.clone()
    }
}

/// The header blocks for an entry: a PAX `x` header when ustar cannot hold the entry exactly,
/// then the ustar header. Content (for `Reg`) and its padding follow, written by the caller.
pub fn tar_header(entry: &LayerEntry) -> Result<Vec<u8>> {
    let name = tar_name(entry);
    let invalid = |what: String| Error::Invalid(format!("entry `{}`: {what}", entry.name));
    let mut pax = Vec::new();
    let mut block = [0u8; TAR_BLOCK];

    if name.contains('\0') || entry.link_name.contains('\0') {
        return Err(invalid("name or link name contains a NUL byte".into()));
    }
    match split_name(&name) {
        Some((prefix, rest)) => {
            put(&mut block[PREFIX], prefix.as_bytes());
            put(&mut block[NAME], rest.as_bytes());
        }
        None => {
            pax_record(&mut pax, "path", name.as_bytes());
            put(&mut block[NAME], truncate(&name, NAME.len()).as_bytes());
        }
    }
    let link = match entry.kind {
        EntryKind::Symlink | EntryKind::Hardlink => entry.link_name.as_str(),
        _ => "",
    };
    if !(link.is_ascii() && link.len() <= LINKNAME.len()) {
        pax_record(&mut pax, "linkpath", link.as_bytes());
    }
    put(
        &mut block[LINKNAME],
        truncate(link, LINKNAME.len()).as_bytes(),
    );

    octal(&mut block[MODE], u64::from(entry.mode & 0o7777));
    for (key, value, range) in [("uid", entry.uid, UID), ("gid", entry.gid, GID)] {
        if value > MAX_OCTAL_7 {
            pax_record(&mut pax, key, value.to_string().as_bytes());
        }
        octal(&mut block[range], value.min(MAX_OCTAL_7));
    }
    let size = if entry.kind == EntryKind::Reg {
        entry.size
    } else {
        0
    };
    if size > MAX_OCTAL_11 {
        pax_record(&mut pax, "size", size.to_string().as_bytes());
    }
    octal(&mut block[SIZE], if size > MAX_OCTAL_11 { 0 } else { size });
    if entry.mtime_nsec >= 1_000_000_000 {
        return Err(invalid(format!(
            "mtime_nsec {} out of range",
            entry.mtime_nsec
        )));
    }
    let in_range = (0..=MAX_OCTAL_11 as i64).contains(&entry.mtime);
    if entry.mtime_nsec != 0 || !in_range {
        let t = pax_time(entry.mtime, entry.mtime_nsec);
        pax_record(&mut pax, "mtime", t.as_bytes());
    }
    octal(
        &mut block[MTIME],
        entry.mtime.clamp(0, MAX_OCTAL_11 as i64) as u64,
    );

    block[TYPEFLAG] = match entry.kind {
        EntryKind::Reg => b'0',
        EntryKind::Hardlink => b'1',
        EntryKind::Symlink => b'2',
        EntryKind::Char => b'3',
        EntryKind::Block => b'4',
        EntryKind::Dir => b'5',
        EntryKind::Fifo => b'6',
    };
    block[MAGIC].copy_from_slice(b"ustar\x0000");
    // Keep a NUL terminator in the name fields: some readers insist on one.
    for (key, value, range) in [
        ("uname", &entry.uname, UNAME),
        ("gname", &entry.gname, GNAME),
    ] {
        if value.is_ascii() && value.len() < range.len() && !value.contains('\0') {
            put(&mut block[range], value.as_bytes());
        } else {
            pax_record(&mut pax, key, value.as_bytes());
        }
    }
    let (major, minor) = match entry.kind {
        EntryKind::Char | EntryKind::Block => (entry.dev_major, entry.dev_minor),
        _ => (0, 0),
    };
    if u64::from(major.max(minor)) > MAX_OCTAL_7 {
        return Err(invalid(format!(
            "device {major}:{minor} does not fit a tar header"
        )));
    }
    octal(&mut block[DEVMAJOR], u64::from(major));
    octal(&mut block[DEVMINOR], u64::from(minor));

    for (name, value) in &entry.xattrs {
        if name.is_empty() || name.contains('=') {
            return Err(invalid(format!("xattr name `{name}` cannot be a PAX key")));
        }
        pax_record(&mut pax, &format!("SCHILY.xattr.{name}"), value);
    }
    for (key, value) in &entry.pax_other {
        let reserved = RESERVED_KEYS.contains(&key.as_str())
            || key.starts_with("SCHILY.xattr.")
            || key.starts_with("GNU.sparse.");
        if reserved || key.is_empty() || key.contains('=') {
            return Err(invalid(format!("PAX record `{key}` cannot be kept as is")));
        }
        pax_record(&mut pax, key, value);
    }
    set_checksum(&mut block);

    if pax.is_empty() {
        return Ok(block.to_vec());
    }
    let mut x = [0u8; TAR_BLOCK];
    put(&mut x[NAME], b"PaxHeader");
    octal(&mut x[MODE], 0o644);
    octal(&mut x[UID], 0);
    octal(&mut x[GID], 0);
    octal(&mut x[SIZE], pax.len() as u64);
    octal(&mut x[MTIME], 0);
    x[TYPEFLAG] = b'x';
    x[MAGIC].copy_from_slice(b"ustar\x0000");
    octal(&mut x[DEVMAJOR], 0);
    octal(&mut x[DEVMINOR], 0);
    set_checksum(&mut x);

    let mut out = Vec::with_capacity(2 * TAR_BLOCK + pax.len() + TAR_BLOCK);
    out.extend_from_slice(&x);
    out.extend_from_slice(&pax);
    out.resize(out.len().next_multiple_of(TAR_BLOCK), 0);
    out.extend_from_slice(&block);
    Ok(out)
}

/// Splits `name` into ustar (prefix, name) fields, or `None` if only PAX can hold it.
/// Non-ASCII names go to PAX too: ustar fields have no charset, PAX `path` is UTF-8.
fn split_name(name: &str) -> Option<(&str, &str)> {
    if !name.is_ascii() {
        return None;
    }
    if name.len() <= NAME.len() {
        return Some(("", name));
    }
    // The rest must be non-empty: a directory's trailing `/` cannot stand alone.
    name.match_indices('/')
        .map(|(i, _)| i)
        .find(|&i| i <= PREFIX.len() && name.len() - i - 1 <= NAME.len() && i + 1 < name.len())
        .map(|i| (&name[..i], &name[i + 1..]))
}

/// At most `max` bytes of `s`, cut on a character boundary (a stand-in for PAX-held names).
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put(field: &mut [u8], value: &[u8]) {
    field[..value.len()].copy_from_slice(value);
}

/// Zero-padded octal filling all but the last byte of the field, which stays NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    field[..digits.len()].copy_from_slice(digits.as_bytes());
}

fn set_checksum(block: &mut [u8; TAR_BLOCK]) {
    block[CHKSUM].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}\0 ");
    block[CHKSUM].copy_from_slice(digits.as_bytes());
}

/// Appends one PAX record, `"<len> <key>=<value>\n"`, whose length counts its own digits.
pub(crate) fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time, `[-]secs[.frac]`, from seconds plus forward-counted nanoseconds.
fn pax_time(secs: i64, nsec: u32) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    let (sign, whole, frac) = if secs >= 0 {
        ("", secs.unsigned_abs(), nsec)
    } else {
        ("-", (secs + 1).unsigned_abs(), 1_000_000_000 - nsec)
    };
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::layer::ingest::parse_pax;
    use crate::layer::{IngestOptions, Layer};

    fn entry(name: &str, kind: EntryKind) -> LayerEntry {
        let mut e = LayerEntry::new(name, kind);
        e.mode = 0o644;
        e.mtime = 1_700_000_000;
        e
    }

    /// Deterministic content for a regular file.
    fn content_of(e: &LayerEntry) -> Vec<u8> {
        (0..e.size)
            .map(|i| (i * 7 + e.name.len() as u64) as u8)
            .collect()
    }

    /// Writes the entries as an eStargz-style payload (no EOF blocks) and reads them back.
    fn round_trip(entries: &[LayerEntry]) {
        let mut tar = Vec::new();
        for e in entries {
            let header = tar_header(e).unwrap();
            assert_eq!(header.len() % TAR_BLOCK, 0);
            tar.extend(header);
            if e.kind == EntryKind::Reg {
                tar.extend(content_of(e));
                tar.resize(tar.len().next_multiple_of(TAR_BLOCK), 0);
            }
        }
        let layer = Layer::ingest(&tar[..], &IngestOptions::default()).unwrap();
        assert_eq!(layer.entries.len(), entries.len());
        for (want, got) in entries.iter().zip(&layer.entries) {
            let mut want = want.clone();
            if want.kind == EntryKind::Reg {
                let content = content_of(&want);
                let mut buf = vec![0u8; content.len()];
                layer.read_content(got, 0, &mut buf).unwrap();
                assert_eq!(buf, content, "{}", want.name);
                want.digest = Some(Digest::of(&content));
                want.spool_offset = got.spool_offset;
            }
            assert_eq!(got, &want);
        }

        // The tar crate, an independent reader, sees the same names.
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<Vec<u8>> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path_bytes().into_owned())
            .collect();
        let want: Vec<Vec<u8>> = entries.iter().map(|e| tar_name(e).into_bytes()).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn names_in_the_tar() {
        assert_eq!(tar_name(&entry("", EntryKind::Dir)), "./");
        assert_eq!(tar_name(&entry("a/b", EntryKind::Dir)), "a/b/");
        assert_eq!(tar_name(&entry("a/b", EntryKind::Reg)), "a/b");
    }

    #[test]
    fn plain_entries_are_one_ustar_block() {
        let mut e = entry("etc/passwd", EntryKind::Reg);
        e.size = 42;
        e.uname = "root".into();
        let h = tar_header(&e).unwrap();
        assert_eq!(h.len(), TAR_BLOCK);
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(h[156], b'0');
        assert_eq!(&h[124..136], b"00000000052\0");
        let parsed = tar::Header::from_byte_slice(&h);
        assert_eq!(parsed.cksum().unwrap(), {
            let mut b = h.clone();
            b[148..156].fill(b' ');
            b.iter().map(|&x| u32::from(x)).sum::<u32>()
        });
    }

    #[test]
    fn overflowing_fields_go_to_pax() {
        let mut e = entry("big", EntryKind::Reg);
        e.size = 9 << 30;
        e.mtime = -1;
        e.mtime_nsec = 500_000_000;
        let h = tar_header(&e).unwrap();
        assert_eq!(h[156], b'x');
        let size = tar::Header::from_byte_slice(&h[..TAR_BLOCK])
            .entry_size()
            .unwrap() as usize;
        let records = parse_pax(&h[TAR_BLOCK..TAR_BLOCK + size]).unwrap();
        let records: Vec<_> = records
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        assert_eq!(
            records,
            [
                ("size", (9u64 << 30).to_string()),
                ("mtime", "-0.5".to_string()),
            ]
        );
    }

    #[test]
    fn unwritable_entries_are_errors() {
        let mut e = entry("a", EntryKind::Reg);
        e.pax_other.push(("path".into(), b"b".to_vec()));
        assert!(tar_header(&e).is_err());
        let mut e = entry("a", EntryKind::Reg);
        e.xattrs.insert("user.a=b".into(), Vec::new());
        assert!(tar_header(&e).is_err());
        let mut e = entry("a", EntryKind::Char);
        e.dev_major = u32::MAX;
        let msg = tar_header(&e).unwrap_err().to_string();
        assert!(msg.starts_with("entry `a`: device"), "{msg}");
    }

    #[test]
    fn hand_picked_entries_round_trip() {
        let mut v = vec![entry("", EntryKind::Dir)];
        let mut sticky = entry("tmp", EntryKind::Dir);
        sticky.mode = 0o1777;
        v.push(sticky);
        let mut f = entry("tmp/file", EntryKind::Reg);
        (f.mode, f.size, f.uid, f.gid) = (0o6755, 5, 5_000_000_000, 0o10000000);
        (f.uname, f.gname) = ("ünï".into(), "g".repeat(40));
        (f.mtime, f.mtime_nsec) = (1_700_000_000, 123_456_789);
        f.xattrs.insert(
            "security.capability".into(),
            b"\x01\0\0\x02\n\xff=\n".to_vec(),
        );
        f.xattrs.insert("user.empty".into(), Vec::new());
        f.pax_other = vec![
            ("atime".into(), b"1.5".to_vec()),
            ("LIBARCHIVE.creationtime".into(), b"3".to_vec()),
        ];
        v.push(f);
        let split = format!("{}/{}", "a".repeat(60), "b".repeat(90));
        v.push(entry(&split, EntryKind::Fifo));
        v.push(entry(&"x".repeat(100), EntryKind::Dir)); // 101 bytes with its slash
        let deep = vec!["c"; 150].join("/");
        v.push(entry(&deep, EntryKind::Dir));
        let mut old = entry("日本/ファイル", EntryKind::Reg);
        (old.mtime, old.mtime_nsec) = (-1, 250_000_000);
        v.push(old);
        let mut far = entry("far", EntryKind::Reg);
        (far.mtime, far.size) = (1 << 40, 1000);
        v.push(far);
        let mut chr = entry("dev/c", EntryKind::Char);
        (chr.dev_major, chr.dev_minor) = (4095, 1_048_575);
        v.push(chr);
        let mut blk = entry("dev/b", EntryKind::Block);
        (blk.dev_major, blk.dev_minor) = (8, 1);
        v.push(blk);
        let mut hard = entry(&format!("{deep}/hard"), EntryKind::Hardlink);
        hard.link_name = "tmp/file".into();
        v.push(hard);
        let mut sym = entry("sym", EntryKind::Symlink);
        sym.link_name = "../..//./x/".repeat(30);
        v.push(sym);
        v.push(entry("empty", EntryKind::Reg));
        round_trip(&v);
    }

    /// The sample generator, with name components for the property test below.
    struct Rng(crate::sample::XorShift);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }
        fn below(&mut self, n: u64) -> u64 {
            self.0.below(n)
        }
        fn component(&mut self) -> String {
            const CHARS: [&str; 8] = ["a", "Z", "9", "-", " ", "é", "日", "_"];
            let len = 1 + self.below(40);
            (0..len).map(|_| CHARS[self.below(8) as usize]).collect()
        }
    }

    #[test]
    fn generated_entries_round_trip() {
        let mut rng = Rng(crate::sample::XorShift::new(0x9e37_79b9_7f4a_7c15));
        let mut v: Vec<LayerEntry> = Vec::new();
        for i in 0..300 {
            let depth = 1 + rng.below(8);
            let mut name = format!("{i}");
            for _ in 0..depth {
                name = format!("{name}/{}", rng.component());
            }
            let kinds = [
                EntryKind::Dir,
                EntryKind::Reg,
                EntryKind::Symlink,
                EntryKind::Char,
                EntryKind::Fifo,
                EntryKind::Hardlink,
            ];
            let kind = kinds[rng.below(6) as usize];
            let mut e = entry(&name, kind);
            e.mode = rng.below(0o10000) as u32;
            e.uid = [0, 1000, rng.next() >> 1][rng.below(3) as usize];
            e.gid = [0, 0o7777777, 0o7777777 + 1][rng.below(3) as usize];
            e.uname = ["", "root", "ünï"][rng.below(3) as usize].into();
            e.mtime = rng.next() as i64 >> rng.below(64);
            e.mtime_nsec =
                [0, 1, 999_999_999, rng.below(1_000_000_000) as u32][rng.below(4) as usize];
            if rng.below(4) == 0 {
                let value: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                e.xattrs.insert(format!("user.{}", rng.component()), value);
            }
            match kind {
                EntryKind::Reg => e.size = rng.below(2000),
                EntryKind::Symlink => e.link_name = rng.component().repeat(rng.below(8) as usize),
                EntryKind::Char => (e.dev_major, e.dev_minor) = (rng.below(4096) as u32, 7),
                EntryKind::Hardlink => match v.iter().rev().find(|t| t.kind != EntryKind::Dir) {
                    Some(t) => e.link_name = t.name.clone(),
                    None => e.kind = EntryKind::Fifo,
                },
                _ => {}
            }
            v.push(e);
        }
        round_trip(&v);
    }
}

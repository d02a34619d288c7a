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

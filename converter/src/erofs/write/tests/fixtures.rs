//! Hand-made layers for the edge cases the sample corpus does not reach, and a minimal
//! image walker to find where the writer put things.

use tar::{EntryType, Header};
use zerocopy::FromBytes;

use crate::erofs::format::{i_format_layout, xattr_ibody_size, Dirent, InodeExtended};
use crate::erofs::format::{BLOCK_SIZE, LAYOUT_FLAT_INLINE};
use crate::sample::{random_bytes, SampleLayer};

/// One tar entry; every field goes through PAX so any name, target or time is expressible.
pub struct T {
    path: String,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    nsec: u32,
    link: String,
    dev: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
}

impl T {
    fn new(path: &str, kind: EntryType, mode: u32) -> T {
        T {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            nsec: 0,
            link: String::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
            data: Vec::new(),
        }
    }
    pub fn dir(path: &str) -> T {
        T::new(path, EntryType::Directory, 0o755)
    }
    pub fn file(path: &str, data: Vec<u8>) -> T {
        let mut t = T::new(path, EntryType::Regular, 0o644);
        t.data = data;
        t
    }
    pub fn symlink(path: &str, target: &str) -> T {
        let mut t = T::new(path, EntryType::Symlink, 0o777);
        t.link = target.into();
        t
    }
    pub fn hardlink(path: &str, target: &str) -> T {
        let mut t = T::new(path, EntryType::Link, 0o644);
        t.link = target.into();
        t
    }
    pub fn device(path: &str, kind: EntryType, major: u32, minor: u32) -> T {
        let mut t = T::new(path, kind, 0o600);
        t.dev = (major, minor);
        t
    }
    pub fn mode(mut self, mode: u32) -> T {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> T {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, secs: i64, nsec: u32) -> T {
        self.mtime = secs;
        self.nsec = nsec;
        self
    }
    pub fn xattr(mut self, name: &str, value: &[u8]) -> T {
        self.xattrs.push((name.into(), value.to_vec()));
        self
    }
}

/// An uncompressed tar of `entries`, each preceded by a PAX header holding its path, link
/// target, owner, mtime and xattrs.
pub fn tar_of(entries: &[T]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for t in entries {
        let mut pax: Vec<(String, Vec<u8>)> = vec![
            ("path".into(), t.path.clone().into_bytes()),
            ("uid".into(), t.uid.to_string().into_bytes()),
            ("gid".into(), t.gid.to_string().into_bytes()),
            (
                "mtime".into(),
                format!("{}.{:09}", t.mtime, t.nsec).into_bytes(),
            ),
        ];
        if !t.link.is_empty() {
            pax.push(("linkpath".into(), t.link.clone().into_bytes()));
        }
        for (k, v) in &t.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
        let mut h = Header::new_ustar();
        h.set_entry_type(t.kind);
        h.set_mode(t.mode);
        h.set_size(t.data.len() as u64);
        h.set_mtime(t.mtime.max(0) as u64);
        if !t.link.is_empty() {
            h.set_link_name("pax-linkpath").unwrap();
        }
        if t.dev != (0, 0) {
            h.set_device_major(t.dev.0).unwrap();
            h.set_device_minor(t.dev.1).unwrap();
        }
        b.append_data(&mut h, "pax-path", t.data.as_slice())
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// A valid POSIX ACL xattr value (user-space format, version 2): u::rwx, g::r-x, o::r--.
pub fn acl_value() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 4)] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

/// Edge cases: a directory spanning blocks, 255-byte names, long symlinks, sizes around the
/// inline and block limits, xattrs of every namespace, hardlinks, devices, whiteouts, opaque
/// directories, directories too big to inline beside their xattrs, parents given late.
pub fn edge_layer() -> SampleLayer {
    let mut e = vec![
        T::dir("./").mode(0o751).mtime(1_600_000_000, 42),
        T::dir("big/"),
    ];
    for i in 0..300 {
        let name = format!("big/{}{i:03}", "n".repeat(i % 40));
        e.push(
            T::file(&name, format!("{i}\n").into_bytes()).mtime(1_700_000_000 + i as i64, i as u32),
        );
    }
    e.push(T::dir("names/"));
    e.push(T::file(
        &format!("names/{}", "x".repeat(255)),
        b"longest name\n".to_vec(),
    ));
    e.push(T::file(
        &format!("names/{}", "é".repeat(127)),
        b"utf-8\n".to_vec(),
    ));
    e.push(T::symlink("names/link-3000", &"t".repeat(3000)));
    e.push(T::symlink("names/link-4090", &"u".repeat(4090)));
    e.push(T::dir("sizes/"));
    for (i, size) in [
        0usize,
        1,
        1023,
        1024,
        1025,
        4031,
        4095,
        4096,
        4097,
        (1 << 20) + 1,
    ]
    .into_iter()
    .enumerate()
    {
        e.push(T::file(
            &format!("sizes/s{size}"),
            random_bytes(i as u64 + 1, size),
        ));
    }
    e.extend([
        T::dir("x/").xattr("user.dir", b"d"),
        T::file("x/all", b"xattrs\n".to_vec())
            .mode(0o754)
            .xattr("user.a", b"1")
            .xattr("user.empty", b"")
            .xattr("trusted.t", b"trusted")
            .xattr(
                "security.capability",
                &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            )
            .xattr("system.posix_acl_access", &acl_value()),
        T::file("x/crowded", vec![9; 1000]).xattr("user.big", &[7; 3100]),
        T::dir("x/fat/").xattr("user.fat", &[5; 3500]),
    ]);
    for i in 0..40 {
        e.push(T::file(
            &format!("x/fat/child-with-a-longish-name-{i:02}"),
            vec![],
        ));
    }
    e.extend([
        T::file("links/orig", b"shared inode\n".to_vec())
            .mode(0o4755)
            .owner(1000, 2000),
        T::hardlink("links/again", "links/orig"),
        T::hardlink("other/third", "links/orig"),
        T::device("dev/null", EntryType::Char, 1, 3).mode(0o666),
        T::device("dev/big", EntryType::Block, 259, 65537),
        T::new("dev/fifo", EntryType::Fifo, 0o620),
        T::dir("wh/"),
        T::file("wh/.wh.gone", vec![]).owner(7, 8),
        T::dir("wh/opq/"),
        T::file("wh/opq/.wh..wh..opq", vec![]),
        T::file("wh/opq/kept", b"kept\n".to_vec()),
        T::dir("wh/redone/"),
        T::file("wh/.wh.redone", vec![]),
        T::file("implied/deep/er/file", b"parents implied\n".to_vec()),
        T::file("late/child", b"c\n".to_vec()),
        T::dir("late/")
            .mode(0o700)
            .owner(3, 4)
            .mtime(1_650_000_000, 999_999_999),
        T::file("times/old", vec![]).mtime(0, 1),
        T::file("times/huge-ids", vec![]).owner(4_000_000_000, 4_294_967_294),
    ]);
    SampleLayer {
        name: "edge",
        tar: tar_of(&e),
    }
}

fn inode(img: &[u8], nid: u64) -> InodeExtended {
    let at = nid as usize * 32;
    InodeExtended::read_from_bytes(&img[at..at + 64]).unwrap()
}

/// The bytes of a flat inode's data.
fn flat_data(img: &[u8], nid: u64) -> Vec<u8> {
    let ino = inode(img, nid);
    let size = ino.i_size.get() as usize;
    let layout = i_format_layout(ino.i_format.get());
    let block = BLOCK_SIZE as usize;
    let full = if layout == LAYOUT_FLAT_INLINE {
        size / block * block
    } else {
        size
    };
    let start = ino.i_u.get() as usize * block;
    let mut out = if full > 0 {
        img[start..start + full].to_vec()
    } else {
        Vec::new()
    };
    if layout == LAYOUT_FLAT_INLINE {
        let tail = nid as usize * 32 + 64 + xattr_ibody_size(ino.i_xattr_icount.get()) as usize;
        out.extend_from_slice(&img[tail..tail + size - full]);
    }
    out
}

/// `(name, nid)` of a directory's entries, in on-disk order.
pub fn read_dir(img: &[u8], nid: u64) -> Vec<(Vec<u8>, u64, u8)> {
    let data = flat_data(img, nid);
    let mut out = Vec::new();
    for block in data.chunks(BLOCK_SIZE as usize) {
        let de = |i: usize| Dirent::read_from_bytes(&block[i * 12..i * 12 + 12]).unwrap();
        let n = de(0).nameoff.get() as usize / 12;
        for i in 0..n {
            let start = de(i).nameoff.get() as usize;
            let end = if i + 1 < n {
                de(i + 1).nameoff.get() as usize
            } else {
                block[start..]
                    .iter()
                    .position(|&b| b == 0)
                    .map_or(block.len(), |p| start + p)
            };
            out.push((block[start..end].to_vec(), de(i).nid.get(), de(i).file_type));
        }
    }
    out
}

/// The nid of `path` (normalised), walking from the root.
pub fn lookup_nid(img: &[u8], path: &str) -> Option<u64> {
    let mut nid = 36;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        nid = read_dir(img, nid)
            .into_iter()
            .find(|(n, _, _)| n == comp.as_bytes())?
            .1;
    }
    Some(nid)
}

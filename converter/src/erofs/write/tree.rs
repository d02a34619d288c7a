//! Layer entries → an inode tree: one node per inode, directories holding named links to nodes.
//!
//! This is where the OCI layer model becomes a filesystem: missing parents are synthesised,
//! hardlinks become extra links to one node, and OCI whiteouts become what overlayfs reads
//! (a 0:0 character device per `.wh.NAME`, `trusted.overlay.opaque=y` per `.wh..wh..opq`).

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::layer::{EntryKind, Layer, LayerEntry};

use super::entry_err;

/// Index of a node in [`Tree::nodes`].
pub(super) type NodeId = usize;

/// The root is always node 0.
pub(super) const ROOT: NodeId = 0;

const WHITEOUT_PREFIX: &str = ".wh.";
/// aufs metadata names (`.wh..wh.plnk`, `.wh..wh.aufs`, …) and the OCI opaque marker.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to hide a lower directory's contents.
pub(super) const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";

/// What an inode is, with what each kind needs beyond the common attributes.
#[derive(Debug)]
pub(super) enum NodeKind {
    /// Children by name; `BTreeMap<String, _>` iterates in byte order, the order dirents need.
    Dir {
        parent: NodeId,
        children: BTreeMap<String, NodeId>,
    },
    /// A regular file; its content is that of layer entry `entry`.
    Reg {
        entry: usize,
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    Char {
        rdev: u32,
    },
    Block {
        rdev: u32,
    },
    Fifo,
}

/// One inode.
#[derive(Debug)]
pub(super) struct Node {
    pub kind: NodeKind,
    /// Permission bits with setuid/setgid/sticky; the type bits come from `kind`.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Directory entries naming this node (for directories: 2 + subdirectories).
    pub nlink: u32,
    /// The path the node was first created under, for error messages and prefetch lookup.
    pub path: String,
    /// Position in the layer's entries (synthesised nodes sort after their first child), so
    /// data can be laid out in tar order.
    pub order: usize,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }

    pub fn is_reg(&self) -> bool {
        matches!(self.kind, NodeKind::Reg { .. })
    }
}

/// The inode tree of a layer.
#[derive(Debug)]
pub(super) struct Tree {
    pub nodes: Vec<Node>,
    /// Every path (hardlinks included) → its node, for prefetch-list lookup.
    pub paths: HashMap<String, NodeId>,
}

impl Tree {
    /// Builds the tree of `layer`: regular entries first, then hardlinks (so a link may name any
    /// entry of the layer), then whiteouts (so a name both whited-out and present keeps the
    /// present entry, as overlayfs would show it).
    pub fn build(layer: &Layer) -> Result<Tree> {
        let mut tree = Tree {
            nodes: vec![Node {
                kind: NodeKind::Dir {
                    parent: ROOT,
                    children: BTreeMap::new(),
                },
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: BTreeMap::new(),
                nlink: 2,
                path: String::new(),
                order: 0,
            }],
            paths: HashMap::from([(String::new(), ROOT)]),
        };
        let mut hardlinks = Vec::new();
        let mut whiteouts = Vec::new();
        for (i, e) in layer.entries.iter().enumerate() {
            match classify(e)? {
                Class::Skip => {}
                Class::Whiteout => whiteouts.push(i),
                Class::Plain if e.kind == EntryKind::Hardlink => hardlinks.push(i),
                Class::Plain => tree.add_entry(i, e)?,
            }
        }
        for i in hardlinks {
            tree.add_hardlink(i, &layer.entries[i])?;
        }
        for i in whiteouts {
            tree.add_whiteout(i, &layer.entries[i])?;
        }
        Ok(tree)
    }

    fn add_entry(&mut self, order: usize, e: &LayerEntry) -> Result<()> {
        let attrs = Attrs::of(e)?;
        if e.name.is_empty() {
            // The root's own entry: only a directory makes sense there.
            if e.kind != EntryKind::Dir {
                return Err(entry_err(&e.name, "the root must be a directory"));
            }
            attrs.apply(&mut self.nodes[ROOT], e);
            return Ok(());
        }
        let (parent, leaf) = self.parent_dir(&e.name, order)?;
        if let Some(&existing) = self.children(parent).get(leaf) {
            // A directory synthesised for an earlier child, now given its own entry.
            if e.kind == EntryKind::Dir && self.nodes[existing].is_dir() {
                attrs.apply(&mut self.nodes[existing], e);
                return Ok(());
            }
            return Err(entry_err(&e.name, "path occurs twice in the tree"));
        }
        let kind = match e.kind {
            EntryKind::Dir => NodeKind::Dir {
                parent,
                children: BTreeMap::new(),
            },
            EntryKind::Reg => NodeKind::Reg {
                entry: order,
                size: e.size,
            },
            EntryKind::Symlink => {
                if e.link_name.is_empty() {
                    return Err(entry_err(&e.name, "symlink with an empty target"));
                }
                NodeKind::Symlink {
                    target: e.link_name.as_bytes().to_vec(),
                }
            }
            EntryKind::Char => NodeKind::Char { rdev: rdev(e)? },
            EntryKind::Block => NodeKind::Block { rdev: rdev(e)? },
            EntryKind::Fifo => NodeKind::Fifo,
            EntryKind::Hardlink => unreachable!("hardlinks are added in a later pass"),
        };
        let mut node = Node {
            kind,
            perm: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
            nlink: 0,
            path: e.name.clone(),
            order,
        };
        attrs.apply(&mut node, e);
        self.link(parent, leaf, node);
        Ok(())
    }

    fn add_hardlink(&mut self, order: usize, e: &LayerEntry) -> Result<()> {
        let target = *self.paths.get(e.link_name.as_str()).ok_or_else(|| {
            Error::format(format!(
                "entry `{}`: hardlink target `{}` is not in this layer",
                e.name, e.link_name
            ))
        })?;
        if self.nodes[target].is_dir() {
            return Err(entry_err(&e.name, "hardlink to a directory"));
        }
        let (parent, leaf) = self.parent_dir(&e.name, order)?;
        if self.children(parent).contains_key(leaf) {
            return Err(entry_err(&e.name, "path occurs twice in the tree"));
        }
        self.children_mut(parent).insert(leaf.to_owned(), target);
        self.nodes[target].nlink += 1;
        self.paths.insert(e.name.clone(), target);
        Ok(())
    }

    fn add_whiteout(&mut self, order: usize, e: &LayerEntry) -> Result<()> {
        let (dir_name, leaf) = split(&e.name);
        let dir = self.ensure_dir(dir_name, order, &e.name)?;
        if leaf == OPAQUE_MARKER {
            self.nodes[dir]
                .xattrs
                .entry(OVERLAY_OPAQUE.into())
                .or_insert_with(|| b"y".to_vec());
            return Ok(());
        }
        let hidden = &leaf[WHITEOUT_PREFIX.len()..];
        check_component(hidden, &e.name)?;
        if let Some(&existing) = self.children(dir).get(hidden) {
            // Present in this layer too: the lower one is gone and this one replaces it. A
            // directory must then not merge with the lower one, hence opaque.
            if self.nodes[existing].is_dir() {
                self.nodes[existing]
                    .xattrs
                    .entry(OVERLAY_OPAQUE.into())
                    .or_insert_with(|| b"y".to_vec());
            }
            return Ok(());
        }
        let node = Node {
            kind: NodeKind::Char { rdev: 0 },
            perm: 0,
            uid: id(e.uid, "uid", e)?,
            gid: id(e.gid, "gid", e)?,
            mtime: e.mtime,
            mtime_nsec: nsec(e)?,
            xattrs: BTreeMap::new(),
            nlink: 0,
            path: join(dir_name, hidden),
            order,
        };
        self.link(dir, hidden, node);
        Ok(())
    }

    /// The directory that will hold `name`, synthesising missing ancestors, and the leaf name.
    fn parent_dir<'a>(&mut self, name: &'a str, order: usize) -> Result<(NodeId, &'a str)> {
        let (dir, leaf) = split(name);
        check_component(leaf, name)?;
        Ok((self.ensure_dir(dir, order, name)?, leaf))
    }

    /// The directory node at `path`, created (mode 0755, root-owned, mtime 0) if missing.
    fn ensure_dir(&mut self, path: &str, order: usize, entry: &str) -> Result<NodeId> {
        let mut cur = ROOT;
        let mut walked = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            walked = join(&walked, comp);
            check_component(comp, entry)?;
            cur = match self.children(cur).get(comp) {
                Some(&n) if self.nodes[n].is_dir() => n,
                Some(_) => {
                    return Err(entry_err(
                        entry,
                        format!("parent `{walked}` is not a directory"),
                    ))
                }
                None => {
                    let node = Node {
                        kind: NodeKind::Dir {
                            parent: cur,
                            children: BTreeMap::new(),
                        },
                        perm: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: 0,
                        mtime_nsec: 0,
                        xattrs: BTreeMap::new(),
                        nlink: 0,
                        path: walked.clone(),
                        order,
                    };
                    self.link(cur, comp, node)
                }
            };
        }
        Ok(cur)
    }

    /// Adds `node` as `parent/name` and keeps link counts right.
    fn link(&mut self, parent: NodeId, name: &str, mut node: Node) -> NodeId {
        let id = self.nodes.len();
        if let NodeKind::Dir { .. } = node.kind {
            node.nlink = 2;
            self.nodes[parent].nlink += 1;
        } else {
            node.nlink = 1;
        }
        self.paths.insert(node.path.clone(), id);
        self.nodes.push(node);
        self.children_mut(parent).insert(name.to_owned(), id);
        id
    }

    fn children(&self, dir: NodeId) -> &BTreeMap<String, NodeId> {
        match &self.nodes[dir].kind {
            NodeKind::Dir { children, .. } => children,
            _ => unreachable!("only directories are looked into"),
        }
    }

    fn children_mut(&mut self, dir: NodeId) -> &mut BTreeMap<String, NodeId> {
        match &mut self.nodes[dir].kind {
            NodeKind::Dir { children, .. } => children,
            _ => unreachable!("only directories are looked into"),
        }
    }
}

/// How an entry enters the tree.
enum Class {
    Plain,
    Whiteout,
    Skip,
}

fn classify(e: &LayerEntry) -> Result<Class> {
    let (dir, leaf) = split(&e.name);
    if dir.split('/').any(|c| c.starts_with(WHITEOUT_META_PREFIX)) {
        // Inside an aufs metadata directory (`.wh..wh.plnk/…`): not part of the filesystem.
        return Ok(Class::Skip);
    }
    if let Some(c) = dir.split('/').find(|c| c.starts_with(WHITEOUT_PREFIX)) {
        return Err(entry_err(
            &e.name,
            format!("whiteout name `{c}` used as a directory"),
        ));
    }
    if leaf == OPAQUE_MARKER {
        return Ok(Class::Whiteout);
    }
    if leaf.starts_with(WHITEOUT_META_PREFIX) {
        tracing::warn!(entry = %e.name, "dropping aufs metadata entry");
        return Ok(Class::Skip);
    }
    if leaf.starts_with(WHITEOUT_PREFIX) {
        return Ok(Class::Whiteout);
    }
    Ok(Class::Plain)
}

/// The attributes an entry gives its node, checked to fit the inode fields.
struct Attrs {
    perm: u16,
    uid: u32,
    gid: u32,
    mtime_nsec: u32,
}

impl Attrs {
    fn of(e: &LayerEntry) -> Result<Attrs> {
        Ok(Attrs {
            // The mask keeps exactly the bits `i_mode` has room for beside the type.
            perm: (e.mode & 0o7777) as u16,
            uid: id(e.uid, "uid", e)?,
            gid: id(e.gid, "gid", e)?,
            mtime_nsec: nsec(e)?,
        })
    }

    fn apply(self, node: &mut Node, e: &LayerEntry) {
        node.perm = self.perm;
        node.uid = self.uid;
        node.gid = self.gid;
        node.mtime = e.mtime;
        node.mtime_nsec = self.mtime_nsec;
        node.xattrs
            .extend(e.xattrs.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

fn id(v: u64, what: &str, e: &LayerEntry) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::Unsupported(format!(
            "entry `{}`: {what} {v} does not fit in 32 bits",
            e.name
        ))
    })
}

fn nsec(e: &LayerEntry) -> Result<u32> {
    if e.mtime_nsec >= 1_000_000_000 {
        return Err(entry_err(
            &e.name,
            format!("mtime nanoseconds {} out of range", e.mtime_nsec),
        ));
    }
    Ok(e.mtime_nsec)
}

/// Linux device numbers are 12-bit major, 20-bit minor.
fn rdev(e: &LayerEntry) -> Result<u32> {
    if e.dev_major >= 1 << 12 || e.dev_minor >= 1 << 20 {
        return Err(Error::Unsupported(format!(
            "entry `{}`: device {}:{} does not fit Linux's 12-bit major, 20-bit minor",
            e.name, e.dev_major, e.dev_minor
        )));
    }
    Ok(crate::erofs::format::encode_dev(e.dev_major, e.dev_minor))
}

fn check_component(name: &str, entry: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(entry_err(entry, format!("invalid name component `{name}`")));
    }
    if name.len() > crate::erofs::format::NAME_MAX {
        return Err(Error::Unsupported(format!(
            "entry `{entry}`: name component of {} bytes exceeds EROFS's {}",
            name.len(),
            crate::erofs::format::NAME_MAX
        )));
    }
    Ok(())
}

/// `("a/b", "c")` from `"a/b/c"`; `("", "c")` from `"c"`.
fn split(name: &str) -> (&str, &str) {
    match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    }
}

fn join(dir: &str, leaf: &str) -> String {
    if dir.is_empty() {
        leaf.to_owned()
    } else {
        format!("{dir}/{leaf}")
    }
}

//! What containerd mounts for a snapshot: overlayfs over its parents, or a bind mount.
//!
//! Every snapshot owns `ROOT/snapshots/ID/` with `fs` (its contents: an upper dir while active,
//! the applied layer once committed, or the FUSE mountpoint of a remote layer) and `work`
//! (overlayfs's work dir).

use std::path::{Path, PathBuf};

use crate::proto::Mount;
use crate::store::{Kind, SnapshotId};

/// Where snapshots' directories live.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// `ROOT/snapshots`.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `ROOT/snapshots/ID`.
    pub fn dir(&self, id: SnapshotId) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    /// The snapshot's contents.
    pub fn fs(&self, id: SnapshotId) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// overlayfs's work dir of an active snapshot.
    pub fn work(&self, id: SnapshotId) -> PathBuf {
        self.dir(id).join("work")
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The mounts of a snapshot of `kind` whose contents are `fs` (with overlayfs work dir `work`)
/// over `lowers`, its parents' contents nearest first.
pub fn mounts(kind: Kind, fs: &Path, work: &Path, lowers: &[PathBuf]) -> Vec<Mount> {
    let ro = kind != Kind::Active;
    let bind = |source: &Path| Mount {
        r#type: "bind".into(),
        source: path(source),
        target: String::new(),
        options: vec!["rbind".into(), if ro { "ro" } else { "rw" }.into()],
    };
    match (lowers, ro) {
        ([], _) => vec![bind(fs)],
        // One read-only layer needs no overlay.
        ([single], true) => vec![bind(single)],
        (_, true) => vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![format!("lowerdir={}", join(lowers))],
        }],
        (_, false) => vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("workdir={}", path(work)),
                format!("upperdir={}", path(fs)),
                format!("lowerdir={}", join(lowers)),
            ],
        }],
    }
}

fn join(lowers: &[PathBuf]) -> String {
    lowers.iter().map(|p| path(p)).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_follow_containerds_overlay_snapshotter() {
        let (fs, work) = (Path::new("/r/5/fs"), Path::new("/r/5/work"));
        let lowers = [PathBuf::from("/r/4/fs"), PathBuf::from("/r/1/fs")];
        let m = mounts(Kind::Active, fs, work, &[]);
        assert_eq!(
            (m[0].r#type.as_str(), m[0].source.as_str()),
            ("bind", "/r/5/fs")
        );
        assert_eq!(m[0].options, ["rbind", "rw"]);
        let m = mounts(Kind::View, fs, work, &lowers[..1]);
        assert_eq!(
            (m[0].r#type.as_str(), m[0].source.as_str()),
            ("bind", "/r/4/fs")
        );
        assert_eq!(m[0].options, ["rbind", "ro"]);
        let m = mounts(Kind::View, fs, work, &lowers);
        assert_eq!(m[0].options, ["lowerdir=/r/4/fs:/r/1/fs"]);
        let m = mounts(Kind::Active, fs, work, &lowers);
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            m[0].options,
            [
                "workdir=/r/5/work",
                "upperdir=/r/5/fs",
                "lowerdir=/r/4/fs:/r/1/fs"
            ]
        );
    }
}

//! The snapshot metadata store: every snapshot containerd knows, keyed by its key or name, in
//! an embedded transactional database (redb) under the root directory, so containerd's
//! references stay valid across restarts.
//!
//! One write transaction per request keeps the invariants: a key exists once, a parent is
//! committed, a snapshot with children stays. Directories are named by [`SnapshotId`], never by
//! key (keys hold `/` and spaces), and a directory no record names is garbage for `Cleanup`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lazypull_fuse::converter::Digest;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// key → the snapshot's record (JSON).
const SNAPSHOTS: TableDefinition<&str, &str> = TableDefinition::new("snapshots");
/// Counters; `next_id` is the id the next snapshot gets.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The number naming a snapshot's directory, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SnapshotId(pub u64);

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A snapshot's kind, as containerd's API names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// How a remote layer is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteFormat {
    /// eStargz (or zstd:chunked): a TOC digest annotation anchors it.
    Estargz,
    /// An EROFS image with a chunk index.
    Erofs,
}

impl RemoteFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteFormat::Estargz => "estargz",
            RemoteFormat::Erofs => "erofs",
        }
    }
}

/// A lazily mounted layer behind a committed snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The image to mount the layer from, pinned to its manifest (`HOST/REPO@sha256:…`).
    pub image: String,
    /// The layer's digest in that manifest.
    pub layer: Digest,
    pub format: RemoteFormat,
    /// The layer's size as the manifest gives it (compressed bytes).
    pub size: u64,
    /// The uncompressed size, when an annotation gives it.
    #[serde(default)]
    pub uncompressed_size: Option<u64>,
}

/// One snapshot's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub kind: Kind,
    /// The parent's key, for a snapshot over a committed one.
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    pub created: i64,
    pub updated: i64,
    /// Set for committed snapshots served lazily from a registry.
    pub remote: Option<RemoteLayer>,
}

/// The store: a redb database file.
pub struct Store {
    db: Database,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn decode(key: &str, json: &str) -> Result<Snapshot> {
    serde_json::from_str(json).map_err(|e| Error::Store(format!("record of {key}: {e}")))
}

impl Store {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOTS)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// The snapshot `key`.
    pub fn get(&self, key: &str) -> Result<Snapshot> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let record = table.get(key)?.ok_or_else(|| Error::NotFound(key.into()))?;
        decode(key, record.value())
    }

    /// Every snapshot, by key.
    pub fn list(&self) -> Result<Vec<(String, Snapshot)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// The chain from `key`'s parent down to the base layer, nearest first.
    pub fn ancestors(&self, key: &str) -> Result<Vec<(String, Snapshot)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out: Vec<(String, Snapshot)> = Vec::new();
        let start = table.get(key)?.ok_or_else(|| Error::NotFound(key.into()))?;
        let mut next = decode(key, start.value())?.parent;
        while let Some(p) = next {
            let record = table
                .get(p.as_str())?
                .ok_or_else(|| Error::Store(format!("{key}: parent {p} is missing")))?;
            let s = decode(&p, record.value())?;
            next = s.parent.clone();
            out.push((p, s));
            if out.len() > 4096 {
                return Err(Error::Store(format!("{key}: parent chain loops")));
            }
        }
        Ok(out)
    }

    /// A new snapshot id: its directory can be made before the record names it.
    pub fn allocate_id(&self) -> Result<SnapshotId> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut meta = txn.open_table(META)?;
            let id = meta.get("next_id")?.map_or(1, |v| v.value());
            meta.insert("next_id", id + 1)?;
            id
        };
        txn.commit()?;
        Ok(SnapshotId(id))
    }

    /// Create snapshot `key` of `kind` with the id `id` (from [`Store::allocate_id`]) over the
    /// committed `parent`; `remote` only for a committed snapshot of a lazily mounted layer.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        id: SnapshotId,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: BTreeMap<String, String>,
        remote: Option<RemoteLayer>,
    ) -> Result<Snapshot> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("empty snapshot key".into()));
        }
        let txn = self.db.begin_write()?;
        let snapshot = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            if table.get(key)?.is_some() {
                return Err(Error::AlreadyExists(key.into()));
            }
            if let Some(p) = parent {
                let record = table.get(p)?.ok_or_else(|| Error::NotFound(p.into()))?;
                if decode(p, record.value())?.kind != Kind::Committed {
                    // containerd's own metadata store answers InvalidArgument here.
                    return Err(Error::InvalidArgument(format!(
                        "parent {p} is not a committed snapshot"
                    )));
                }
            }
            let t = now();
            let snapshot = Snapshot {
                id,
                kind,
                parent: parent.map(String::from),
                labels,
                created: t,
                updated: t,
                remote,
            };
            table.insert(key, serde_json::to_string(&snapshot)?.as_str())?;
            snapshot
        };
        txn.commit()?;
        Ok(snapshot)
    }

    /// Turn the active snapshot `key` into the committed snapshot `name`, keeping its id (and
    /// so its directory).
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        let txn = self.db.begin_write()?;
        let snapshot = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let active = {
                let record = table.get(key)?.ok_or_else(|| Error::NotFound(key.into()))?;
                decode(key, record.value())?
            };
            if active.kind != Kind::Active {
                return Err(Error::precondition(key, "is not an active snapshot"));
            }
            if table.get(name)?.is_some() {
                return Err(Error::AlreadyExists(name.into()));
            }
            let t = now();
            let committed = Snapshot {
                kind: Kind::Committed,
                labels,
                created: t,
                updated: t,
                ..active
            };
            table.remove(key)?;
            table.insert(name, serde_json::to_string(&committed)?.as_str())?;
            committed
        };
        txn.commit()?;
        Ok(snapshot)
    }

    /// Remove `key`, which must have no children; returns what it was.
    pub fn remove(&self, key: &str) -> Result<Snapshot> {
        let txn = self.db.begin_write()?;
        let snapshot = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let snapshot = {
                let record = table.get(key)?.ok_or_else(|| Error::NotFound(key.into()))?;
                decode(key, record.value())?
            };
            for row in table.iter()? {
                let (k, v) = row?;
                if decode(k.value(), v.value())?.parent.as_deref() == Some(key) {
                    return Err(Error::precondition(
                        key,
                        format!("cannot be removed: snapshot {} is its child", k.value()),
                    ));
                }
            }
            table.remove(key)?;
            snapshot
        };
        txn.commit()?;
        Ok(snapshot)
    }

    /// Update `key`'s labels as containerd's field mask says: no paths or `labels` replaces
    /// them all; `labels.NAME` sets one (or deletes it when `labels` has no NAME).
    pub fn update_labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Snapshot> {
        let txn = self.db.begin_write()?;
        let snapshot = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let mut s = {
                let record = table.get(key)?.ok_or_else(|| Error::NotFound(key.into()))?;
                decode(key, record.value())?
            };
            if paths.is_empty() {
                s.labels = labels;
            } else {
                for path in paths {
                    if path == "labels" {
                        s.labels = labels.clone();
                    } else if let Some(name) = path.strip_prefix("labels.") {
                        match labels.get(name) {
                            Some(v) => s.labels.insert(name.to_string(), v.clone()),
                            None => s.labels.remove(name),
                        };
                    } else {
                        return Err(Error::InvalidArgument(format!(
                            "cannot update field {path:?} of snapshot {key}"
                        )));
                    }
                }
            }
            s.updated = now();
            table.insert(key, serde_json::to_string(&s)?.as_str())?;
            s
        };
        txn.commit()?;
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::labels;

    #[test]
    fn lifecycle_keeps_containerds_rules_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let store = Store::open(&path).unwrap();
        let a = store
            .create(
                store.allocate_id().unwrap(),
                "ns/1/a",
                None,
                Kind::Active,
                BTreeMap::new(),
                None,
            )
            .unwrap();
        // A parent must exist and be committed; a key exists once.
        assert!(matches!(
            store.create(
                SnapshotId(99),
                "ns/2/b",
                Some("nope"),
                Kind::Active,
                BTreeMap::new(),
                None
            ),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            store.create(
                SnapshotId(99),
                "ns/2/b",
                Some("ns/1/a"),
                Kind::Active,
                BTreeMap::new(),
                None
            ),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            store.create(
                SnapshotId(98),
                "ns/1/a",
                None,
                Kind::View,
                BTreeMap::new(),
                None
            ),
            Err(Error::AlreadyExists(_))
        ));
        let c = store
            .commit("sha256:one", "ns/1/a", labels(&[("x", "1")]))
            .unwrap();
        assert_eq!((c.id, c.kind), (a.id, Kind::Committed));
        assert!(matches!(store.get("ns/1/a"), Err(Error::NotFound(_))));
        assert!(matches!(
            store.commit("sha256:two", "sha256:one", BTreeMap::new()),
            Err(Error::FailedPrecondition { .. })
        ));
        let b = store
            .create(
                store.allocate_id().unwrap(),
                "ns/3/b",
                Some("sha256:one"),
                Kind::View,
                BTreeMap::new(),
                None,
            )
            .unwrap();
        assert_ne!(b.id, a.id);
        assert!(matches!(
            store.remove("sha256:one"),
            Err(Error::FailedPrecondition { .. })
        ));
        let chain = store.ancestors("ns/3/b").unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].0, "sha256:one");

        let u = store
            .update_labels(
                "sha256:one",
                labels(&[("y", "2")]),
                &["labels.y".into(), "labels.x".into()],
            )
            .unwrap();
        assert_eq!(u.labels, labels(&[("y", "2")]));
        assert!(matches!(
            store.update_labels("sha256:one", BTreeMap::new(), &["parent".into()]),
            Err(Error::InvalidArgument(_))
        ));
        drop(store);

        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.get("sha256:one").unwrap().labels,
            labels(&[("y", "2")])
        );
        assert_eq!(store.list().unwrap().len(), 2);
        store.remove("ns/3/b").unwrap();
        store.remove("sha256:one").unwrap();
        assert!(store.list().unwrap().is_empty());
        // Ids are never reused, even after everything is gone.
        let d = store
            .create(
                store.allocate_id().unwrap(),
                "ns/4/d",
                None,
                Kind::Active,
                BTreeMap::new(),
                None,
            )
            .unwrap();
        assert!(d.id > b.id);
    }
}

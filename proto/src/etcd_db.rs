//! What an etcd v3 backend file (`member/snap/db`, or a snapshot) records, read with [`Bolt`]
//! without starting etcd: the revision, the cluster version and the membership.
//!
//! Checked against real etcd (agent/tests/recorded_members.rs): 3.4.23 and 3.5.1 write the
//! `members` bucket when a new cluster bootstraps (one JSON value per member, keyed by its hex
//! ID), and keep it current through `member add` and `member remove` (a removed member leaves
//! `members` and its ID is put in `members_removed`). 3.5.1 records no `clientURLs` there; a
//! member added but not yet started has no name. `etcdutl snapshot restore` (3.5) rewrites the
//! bucket for the new cluster; `etcdctl snapshot restore` (3.4) does not: a restored 3.4 data dir
//! still lists the snapshot's members, and once started lists them beside the new ones, since
//! 3.4 reads its membership from the WAL and v2 snapshots only. So a db a 3.4 cluster wrote
//! (`clusterVersion` 3.4) is not trusted for its membership. `meta`/`confState` is no better: a
//! restore leaves the snapshot's there too, until the restored member starts.

use std::path::Path;

use serde::Deserialize;

use crate::bbolt::{Bolt, BoltError};

/// Why a db's membership is not known.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Db(#[from] BoltError),
    #[error(
        "{} was written by etcd {version}, which keeps its membership in its WAL only: its db's \
         `members` bucket can still list the members of the cluster a snapshot came from",
        path.display()
    )]
    NotRecorded {
        path: std::path::PathBuf,
        version: String,
    },
}

/// The revision a snapshot holds, as `snapshot status` reads it: the main revision of the last
/// key in the `key` bucket.
pub fn revision(path: &Path) -> Result<i64, BoltError> {
    let db = Bolt::open(path)?;
    let bucket = db
        .bucket(b"key")?
        .ok_or_else(|| db.bad("no `key` bucket (not an etcd v3 snapshot)"))?;
    let key = db
        .last_key(&bucket)?
        .ok_or_else(|| db.bad("an empty node (is the `key` bucket empty?)"))?;
    // A revision key: the main revision, big-endian, then `_` and the sub revision.
    let main = key.get(..8).ok_or_else(|| db.bad("a revision key"))?;
    let main = main.iter().fold(0, |v, x| v << 8 | u64::from(*x));
    i64::try_from(main).map_err(|_| db.bad("revision out of range"))
}

/// The etcd cluster version a db was written at (`3.5.0`), from its `cluster` bucket's
/// `clusterVersion` key; `None` when it holds none (a cluster that never decided it). etcd 3.5's
/// `snapshot status` does not report it.
pub fn cluster_version(path: &Path) -> Result<Option<String>, BoltError> {
    let db = Bolt::open(path)?;
    let Some(bucket) = db.bucket(b"cluster")? else {
        return Ok(None);
    };
    let Some(value) = db.get(&bucket, b"clusterVersion")? else {
        return Ok(None);
    };
    let version = String::from_utf8(value).map_err(|_| db.bad("clusterVersion is not text"))?;
    Ok(Some(version.trim().to_owned()))
}

/// One member as the db records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbMember {
    pub id: u64,
    /// Empty for a member that did not bootstrap the cluster: etcd 3.5 writes the name of a member
    /// that joined later (`member add`, kubeadm join) to its v2 store only, not to the db.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The membership a db records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Current members, by ID (removed ones left out).
    pub members: Vec<DbMember>,
    /// `meta`/`consistent_index`: the raft index applied when this was written; `None` when the
    /// db holds none.
    pub applied_index: Option<u64>,
}

/// etcd's JSON for a member (`membership.Member`).
#[derive(Deserialize)]
struct MemberJson {
    id: u64,
    #[serde(default, rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "clientURLs")]
    client_urls: Vec<String>,
    #[serde(default, rename = "isLearner")]
    is_learner: bool,
}

/// The membership recorded in the db at `path`. Errors when the db has no `members` bucket, or
/// was written by etcd 3.4 (see the module's notes): then the membership lives only in the WAL
/// and v2 snapshots, which this does not read.
pub fn membership(path: &Path) -> Result<Membership, MembershipError> {
    if let Some(version) = cluster_version(path)?
        && version.starts_with("3.4.")
    {
        return Err(MembershipError::NotRecorded {
            path: path.to_owned(),
            version,
        });
    }
    let db = Bolt::open(path)?;
    let bucket = db.bucket(b"members")?.ok_or_else(|| {
        db.bad("no `members` bucket: this etcd keeps its membership only in its WAL")
    })?;
    let mut raw = Vec::new();
    db.for_each(&bucket, &mut |k, v| raw.push((k.to_vec(), v.to_vec())))?;
    let mut removed = Vec::new();
    if let Some(bucket) = db.bucket(b"members_removed")? {
        db.for_each(&bucket, &mut |k, _| removed.push(k.to_vec()))?;
    }
    let removed: Vec<u64> = removed.iter().filter_map(|k| hex_id(k)).collect();
    let mut members = Vec::new();
    for (key, value) in raw {
        let key_id = hex_id(&key).ok_or_else(|| {
            db.bad(&format!(
                "`members` key {:?} is not a hex member ID",
                String::from_utf8_lossy(&key)
            ))
        })?;
        let m: MemberJson = serde_json::from_slice(&value).map_err(|e| {
            db.bad(&format!(
                "member {key_id:x}'s record is not etcd's JSON: {e}"
            ))
        })?;
        if m.id != key_id {
            return Err(db
                .bad(&format!(
                    "member record under key {key_id:x} holds ID {:x}",
                    m.id
                ))
                .into());
        }
        if removed.contains(&m.id) {
            continue;
        }
        members.push(DbMember {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        });
    }
    let applied_index = match db.bucket(b"meta")? {
        Some(meta) => db
            .get(&meta, b"consistent_index")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes),
        None => None,
    };
    Ok(Membership {
        members,
        applied_index,
    })
}

fn hex_id(key: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(key).ok()?, 16).ok()
}

//! `quorate snapshot save`: stream a snapshot from one healthy member into a temp file beside the
//! target (never held in memory), check its appended sha256, move it into place atomically,
//! describe it in `FILE.json`, and optionally prune older snapshots of the same series.
//!
//! A follower that has caught up with the leader's raft index serves the snapshot when there is
//! one (its disk and network load stays off the leader); otherwise the leader does.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, GetOptions};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::inventory::{Inventory, Member};
use crate::snapshot::{self, SnapshotError};
use crate::snapshot_verify::{file_revision, member_client_with};
use crate::verify::member_client;

/// How long the stream may stay silent before the save is abandoned.
const STREAM_IDLE: Duration = Duration::from_secs(60);
/// Status rounds while looking for a caught-up follower (the raft index moves with every write).
const STATUS_ROUNDS: usize = 3;

#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub out: PathBuf,
    /// Replace an existing `out`.
    pub force: bool,
    /// Keep this many snapshots of `out`'s series (see [`series_of`]), the new one included.
    pub keep: Option<usize>,
}

/// What one member said to Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub name: String,
    pub url: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub leader: u64,
    pub raft_index: u64,
    pub version: String,
    /// Alarms and other errors the member reports (NOSPACE, CORRUPT): such a member never serves.
    pub errors: Vec<String>,
}

/// The member that serves the snapshot, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub status: MemberStatus,
    pub reason: String,
}

/// Picks the member to snapshot from: the first healthy follower at (or past) the leader's raft
/// index, else the leader. `probes` are (member name, its Status or why that failed).
pub fn choose(probes: &[(String, Result<MemberStatus, String>)]) -> Result<Choice, String> {
    let mut healthy = Vec::new();
    let mut others = Vec::new();
    for (name, probe) in probes {
        match probe {
            Ok(s) if s.leader != 0 && s.errors.is_empty() => healthy.push(s),
            Ok(s) if s.leader == 0 => others.push(format!("{name}: no leader")),
            Ok(s) => others.push(format!("{name}: reports {}", s.errors.join(", "))),
            Err(e) => others.push(format!("{name}: {e}")),
        }
    }
    let mut votes: HashMap<u64, usize> = HashMap::new();
    for s in &healthy {
        *votes.entry(s.leader).or_default() += 1;
    }
    let Some((&leader_id, _)) = votes.iter().max_by_key(|(id, n)| (**n, **id)) else {
        return Err(format!("no member is healthy ({})", others.join("; ")));
    };
    let Some(leader) = healthy.iter().find(|s| s.member_id == leader_id) else {
        let best = healthy
            .iter()
            .filter(|s| s.leader == leader_id)
            .max_by_key(|s| s.raft_index)
            .expect("someone voted for this leader");
        let reason = format!(
            "the leader {leader_id:x} did not answer; the most advanced follower (raft index {})",
            best.raft_index
        );
        return Ok(Choice {
            status: (*best).clone(),
            reason,
        });
    };
    let followers = healthy
        .iter()
        .filter(|s| s.member_id != leader_id && s.cluster_id == leader.cluster_id);
    let mut behind = Vec::new();
    for f in followers {
        if f.raft_index >= leader.raft_index {
            let reason = format!(
                "a follower at the leader's raft index ({} at {}, leader {} at {})",
                f.name, f.raft_index, leader.name, leader.raft_index
            );
            return Ok(Choice {
                status: (*f).clone(),
                reason,
            });
        }
        behind.push(format!("{} at {}", f.name, f.raft_index));
    }
    behind.extend(others);
    let reason = format!(
        "the leader: no follower had caught up with its raft index {} ({})",
        leader.raft_index,
        if behind.is_empty() {
            "there are none".to_owned()
        } else {
            behind.join("; ")
        }
    );
    Ok(Choice {
        status: (*leader).clone(),
        reason,
    })
}

/// The series a snapshot file belongs to, for `--keep`: its name up to the first digit (the
/// prefix) and its extension. `etcd-2026-11-25T03.db` is in series (`etcd-`, `db`). A name with
/// no digit, or starting with one, has no series.
pub fn series_of(name: &str) -> Option<(&str, Option<&str>)> {
    let digit = name.find(|c: char| c.is_ascii_digit())?;
    let ext = Path::new(name).extension().and_then(|e| e.to_str());
    (digit > 0).then(|| (&name[..digit], ext))
}

/// Which of `entries` (file name, mtime) to prune so that `keep` snapshots of `new`'s series
/// remain, `new` included: the oldest first; never `new` itself.
pub fn prune_plan(new: &str, entries: &[(String, SystemTime)], keep: usize) -> Vec<String> {
    let Some(series) = series_of(new) else {
        return Vec::new();
    };
    let mut same: Vec<&(String, SystemTime)> = entries
        .iter()
        .filter(|(n, _)| n != new && series_of(n) == Some(series))
        .collect();
    same.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let excess = (same.len() + 1).saturating_sub(keep.max(1));
    same.into_iter()
        .take(excess)
        .map(|(n, _)| n.clone())
        .collect()
}

/// `FILE.json`: what the snapshot holds and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub file: String,
    /// sha256 of the whole file, trailer included (what `quorate restore` stages and checks).
    pub sha256: String,
    pub size: u64,
    pub etcd_version: String,
    /// Hex, as etcdctl prints it.
    pub cluster_id: String,
    pub member: String,
    /// The revision the snapshot holds, read from its key bucket (what `snapshot status` says);
    /// should that fail, the member's revision after the stream (with a warning).
    pub revision: i64,
    /// Live keys at `revision`, counted on the serving member; `None` when it could not count
    /// them (that revision compacted away meanwhile).
    pub keys: Option<i64>,
    /// RFC 3339, UTC.
    pub time: String,
    pub unix_time: u64,
    pub quorate_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaveReport {
    pub path: PathBuf,
    pub meta: SnapshotMeta,
    /// Why `meta.member` served the snapshot.
    pub reason: String,
    pub pruned: Vec<PathBuf>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl SaveReport {
    pub fn render(&self) -> String {
        let m = &self.meta;
        let keys = m
            .keys
            .map_or_else(|| "unknown".to_owned(), |k| k.to_string());
        let mut out = format!(
            "saved {} ({} bytes, sha256 {}) in {:.2}s\n  from {}, etcd {}, cluster {}, revision {}, {keys} keys\n",
            self.path.display(),
            m.size,
            m.sha256,
            self.seconds,
            m.member,
            m.etcd_version,
            m.cluster_id,
            m.revision
        );
        for p in &self.pruned {
            out += &format!("  pruned {}\n", p.display());
        }
        for w in &self.warnings {
            out += &format!("  warning: {w}\n");
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(
        "{path} already exists: nothing was written; pass --force to replace it, or choose another --out"
    )]
    Exists { path: PathBuf },
    #[error("--out {path}: {reason}")]
    BadOut { path: PathBuf, reason: String },
    #[error(
        "no member can serve a snapshot: {0}; check the members (etcdctl endpoint status) and the inventory's client_urls and etcd_tls"
    )]
    NoMember(String),
    #[error(
        "member {member}: the snapshot stream failed after {bytes} bytes: {detail}; nothing was kept, retry"
    )]
    Stream {
        member: String,
        bytes: u64,
        detail: String,
    },
    #[error(
        "member {member}: the snapshot stream ended without its sha256 trailer ({bytes} bytes, not 32 more than a multiple of 512): it cannot be verified, so nothing was kept; retry, or use `etcdctl snapshot save`"
    )]
    NoTrailer { member: String, bytes: u64 },
    #[error("member {member}: the streamed snapshot failed its check, nothing was kept: {source}")]
    Corrupt {
        member: String,
        source: SnapshotError,
    },
    #[error("member {member}: {detail}; nothing was kept")]
    Read { member: String, detail: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot saved at {path}, but {what}: {source}")]
    AfterSave {
        path: PathBuf,
        what: &'static str,
        source: Box<SaveError>,
    },
}

/// Removes the partial file unless disarmed: every early return, error or cancellation cleans up.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _gone_or_never_made = std::fs::remove_file(p);
        }
    }
}

/// Saves a snapshot of the cluster in `inventory` to `options.out`; `progress` hears which member
/// serves it and why before the stream starts.
pub async fn save(
    inventory: &Inventory,
    options: &SaveOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<SaveReport, SaveError> {
    let started = Instant::now();
    let out = &options.out;
    let bad = |reason: &str| SaveError::BadOut {
        path: out.clone(),
        reason: reason.to_owned(),
    };
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("needs a UTF-8 file name"))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(bad("its directory does not exist; create it first"));
    }
    if options.keep.is_some() && series_of(name).is_none() {
        return Err(bad(
            "--keep needs a name with a prefix then a digit (like etcd-2026-11-25T03.db) to know which files are older snapshots of the same series",
        ));
    }
    if !options.force && out.symlink_metadata().is_ok() {
        return Err(SaveError::Exists { path: out.clone() });
    }
    let choice = pick_member(inventory).await?;
    let m = &choice.status;
    progress(&format!(
        "{} ({}) serves the snapshot: {}",
        m.name, m.url, choice.reason
    ));

    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let mut partial = Partial(Some(tmp.clone()));
    let read = |detail: String| SaveError::Read {
        member: m.name.clone(),
        detail,
    };
    let mut client = member_client_with(
        &m.url,
        inventory.etcd_tls.as_ref(),
        Duration::from_secs(120),
    )
    .await
    .map_err(|e| read(format!("connecting to {}: {e:#}", m.url)))?;
    stream_to(&mut client, &m.name, &tmp).await?;
    let checked = snapshot::check(&tmp).map_err(|e| match e {
        SnapshotError::NoTrailer { size, .. } => SaveError::NoTrailer {
            member: m.name.clone(),
            bytes: size,
        },
        source => SaveError::Corrupt {
            member: m.name.clone(),
            source,
        },
    })?;
    let mut warnings = Vec::new();
    let revision = match file_revision(&tmp) {
        Ok(rev) => rev,
        Err(e) => {
            let status = client
                .status()
                .await
                .map_err(|s| read(format!("Status: {s}")))?;
            let rev = status.header().map_or(0, |h| h.revision());
            warnings.push(format!("{e}; recorded {}'s revision after the stream, {rev}, which is later than the snapshot's if writes raced it", m.name));
            rev
        }
    };
    let keys = count_keys(&mut client, revision)
        .await
        .inspect_err(|e| {
            warnings.push(format!(
                "could not count the keys at revision {revision} on {}: {e}",
                m.name
            ))
        })
        .ok();

    place(&tmp, out, options.force)?;
    partial.0 = None;
    let after = |what, source| SaveError::AfterSave {
        path: out.clone(),
        what,
        source: Box::new(source),
    };
    let now = SystemTime::now();
    let meta = SnapshotMeta {
        file: name.to_owned(),
        sha256: checked.sha256,
        size: checked.size,
        etcd_version: m.version.clone(),
        cluster_id: format!("{:x}", m.cluster_id),
        member: m.name.clone(),
        revision,
        keys,
        time: humantime::format_rfc3339_seconds(now).to_string(),
        unix_time: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        quorate_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let text = serde_json::to_string_pretty(&meta).expect("the metadata always serialises");
    write_atomic(&dir.join(format!("{name}.json")), text.as_bytes())
        .map_err(|e| after("writing its metadata failed", e))?;
    let pruned = match options.keep {
        Some(keep) => {
            prune(dir, name, keep).map_err(|e| after("pruning older snapshots failed", e))?
        }
        None => Vec::new(),
    };
    Ok(SaveReport {
        path: out.clone(),
        meta,
        reason: choice.reason,
        pruned,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Asks every member for its Status (one client each, short timeouts), a few rounds when no
/// follower has caught up yet, and picks the member to snapshot from.
async fn pick_member(inventory: &Inventory) -> Result<Choice, SaveError> {
    let tls = inventory.etcd_tls.as_ref();
    let mut round = 0;
    loop {
        let probes: Vec<_> = join_all(
            inventory
                .members
                .iter()
                .map(|m| async move { (m.name.clone(), status_of(m, tls).await) }),
        )
        .await;
        let choice = choose(&probes).map_err(SaveError::NoMember)?;
        round += 1;
        if choice.status.member_id != choice.status.leader || round == STATUS_ROUNDS {
            return Ok(choice);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status_of(
    m: &Member,
    tls: Option<&quorate_proto::tls::TlsFiles>,
) -> Result<MemberStatus, String> {
    let mut errors = Vec::new();
    for url in &m.client_urls {
        let answer = async { anyhow::Ok(member_client(url, tls).await?.status().await?) };
        match answer.await {
            Ok(s) => {
                let h = s
                    .header()
                    .ok_or_else(|| format!("{url}: Status without a header"))?;
                return Ok(MemberStatus {
                    name: m.name.clone(),
                    url: url.clone(),
                    member_id: h.member_id(),
                    cluster_id: h.cluster_id(),
                    leader: s.leader(),
                    raft_index: s.raft_index(),
                    version: s.version().to_owned(),
                    errors: s.errors().to_vec(),
                });
            }
            Err(e) => errors.push(format!("{url}: {e:#}")),
        }
    }
    Err(if errors.is_empty() {
        "no client_urls in the inventory".to_owned()
    } else {
        errors.join(", ")
    })
}

/// Streams the Snapshot RPC into `path` chunk by chunk and fsyncs it. Its last message is the
/// sha256 of everything before it, as in a file from `etcdctl snapshot save`.
async fn stream_to(client: &mut Client, member: &str, path: &Path) -> Result<(), SaveError> {
    let io = |what, source| SaveError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let failed = |bytes, detail: String| SaveError::Stream {
        member: member.to_owned(),
        bytes,
        detail,
    };
    // The snapshot holds every Secret of the cluster: 0600 from its creation (a stale temp file
    // would keep its mode, so it goes first).
    let _stale_or_none = std::fs::remove_file(path);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| io("creating", e))?;
    let mut stream = client
        .snapshot()
        .await
        .map_err(|e| failed(0, e.to_string()))?;
    let mut bytes = 0u64;
    loop {
        let next = tokio::time::timeout(STREAM_IDLE, stream.message())
            .await
            .map_err(|_| failed(bytes, format!("no data for {STREAM_IDLE:?}")))?
            .map_err(|e| failed(bytes, e.to_string()))?;
        let Some(msg) = next else { break };
        file.write_all(msg.blob())
            .await
            .map_err(|e| io("writing", e))?;
        bytes += msg.blob().len() as u64;
    }
    file.flush().await.map_err(|e| io("writing", e))?;
    file.sync_all().await.map_err(|e| io("syncing", e))
}

async fn count_keys(client: &mut Client, revision: i64) -> Result<i64, etcd_client::Error> {
    let options = GetOptions::new()
        .with_range(vec![0u8])
        .with_count_only()
        .with_revision(revision);
    Ok(client.get(vec![0u8], Some(options)).await?.count())
}

/// Moves `tmp` to `out` and fsyncs the directory. Without `force` the move is a hard link, which
/// fails rather than replace a file that appeared meanwhile; `tmp` is removed either way.
fn place(tmp: &Path, out: &Path, force: bool) -> Result<(), SaveError> {
    let io = |what, source| SaveError::Io {
        what,
        path: out.to_owned(),
        source,
    };
    if force {
        std::fs::rename(tmp, out).map_err(|e| io("renaming into", e))?;
    } else {
        match std::fs::hard_link(tmp, out) {
            Ok(()) => {
                std::fs::remove_file(tmp).map_err(|e| io("removing the temp file beside", e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SaveError::Exists {
                    path: out.to_owned(),
                });
            }
            // A filesystem without hard links: rename, `out` was absent a moment ago.
            Err(_) => std::fs::rename(tmp, out).map_err(|e| io("renaming into", e))?,
        }
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))
}

/// Writes a temp file beside `path`, fsyncs, renames, fsyncs the dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SaveError> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let mut partial = Partial(Some(tmp.clone()));
    let io = |what, source| SaveError::Io {
        what,
        path: tmp.clone(),
        source,
    };
    let _stale_or_none = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("writing", e))?;
    place(&tmp, path, true)?;
    partial.0 = None;
    Ok(())
}

/// Removes the older snapshots of `new`'s series in `dir` beyond `keep`, each with its `.json`
/// and `.sig`.
fn prune(dir: &Path, new: &str, keep: usize) -> Result<Vec<PathBuf>, SaveError> {
    let io = |what, path: &Path, source| SaveError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io("listing", dir, e))? {
        let entry = entry.map_err(|e| io("listing", dir, e))?;
        let meta = entry
            .metadata()
            .map_err(|e| io("reading", &entry.path(), e))?;
        if let (true, Some(name)) = (meta.is_file(), entry.file_name().to_str()) {
            entries.push((
                name.to_owned(),
                meta.modified()
                    .map_err(|e| io("reading the mtime of", &entry.path(), e))?,
            ));
        }
    }
    let mut pruned = Vec::new();
    for name in prune_plan(new, &entries, keep) {
        let path = dir.join(&name);
        std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
        for beside in ["json", "sig"] {
            let meta = dir.join(format!("{name}.{beside}"));
            match std::fs::remove_file(&meta) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing", &meta, e));
                }
                _ => {}
            }
        }
        pruned.push(path);
    }
    Ok(pruned)
}

//! Staging the snapshot: streamed into the state dir, hashed while it arrives, never held whole
//! in memory, fsynced and renamed into place only when size and sha256 match the header.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quorate_proto::model::{RestoreId, check_sha256 as check_hex};
use quorate_proto::pb::{SnapshotChunk, SnapshotReceipt};
use sha2::{Digest, Sha256};
use tokio_stream::{Stream, StreamExt};

use crate::engine::Engine;
use quorate_proto::durable;

use crate::error::{AgentError, Result};
use crate::fsutil;
use crate::journal::Staged;
use crate::push_guard;

/// The staged snapshot of `id`, or a refusal saying how to get it there.
pub fn staged(state: &crate::journal::StateDir, id: RestoreId) -> Result<PathBuf> {
    let path = state.snapshot_path(id);
    if fsutil::exists(&path) {
        Ok(path)
    } else {
        Err(AgentError::Precondition(format!(
            "no staged snapshot for restore {id} at {}: stage it again (`quorate resume {id}` \
             pushes it)",
            path.display()
        )))
    }
}

/// Deletes the staged copy (the operator keeps the original).
pub fn remove_staged(state: &crate::journal::StateDir, id: RestoreId) -> Result<()> {
    for path in [state.snapshot_path(id), state.partial_path(id)] {
        remove_if_there(&path)?;
    }
    Ok(())
}

/// Streams `path` through sha256.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| AgentError::io("opening", path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| AgentError::io("reading", path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Refuses a staged file whose content changed since it was checked on arrival.
pub fn check_sha256(path: &Path, want: &str) -> Result<()> {
    let have = sha256_file(path)?;
    if have == want {
        Ok(())
    } else {
        Err(AgentError::Corrupt(format!(
            "staged snapshot {} has sha256 {have}, expected {want}: it was damaged after staging \
             (disk?); roll back and restore again",
            path.display()
        )))
    }
}

/// `12.3 MB`.
pub fn human(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    match bytes {
        0..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// Receives one PushSnapshot stream. The caller holds the push lock (one transfer at a time);
/// `step_lock` serialises journal updates with running steps.
///
/// Refused before anything is written unless this member is claimed by the push's restore (see
/// [`push_guard::claimed`]) and the announced size fits (see [`push_guard::room`]). The stream is
/// cut as soon as more bytes arrive than announced; a stream that ends short, or whose sha256
/// differs, is refused. Every refusal leaves no partial file and no journal change behind.
pub async fn receive<S>(
    engine: Arc<Engine>,
    step_lock: Arc<tokio::sync::Mutex<()>>,
    mut chunks: S,
) -> Result<SnapshotReceipt>
where
    S: Stream<Item = std::result::Result<SnapshotChunk, tonic::Status>> + Unpin,
{
    let first = next(&mut chunks).await?.ok_or_else(|| {
        AgentError::InvalidRequest(
            "empty PushSnapshot stream: the first chunk must carry the header".into(),
        )
    })?;
    let header = first.header.ok_or_else(|| {
        AgentError::InvalidRequest("the first snapshot chunk has no header".into())
    })?;
    let id: RestoreId = header.restore_id.parse()?;
    check_hex(&header.sha256)?;
    tracing::Span::current().record("restore_id", tracing::field::display(id));
    let journal = blocking(Arc::clone(&engine), move |e| push_guard::claimed(e, id)).await?;
    // A member that requires signatures takes only the snapshot its claim's signature is for.
    if engine.trust.required() {
        let member = engine
            .member(None)
            .map_or_else(|_| "this member".into(), |m| m.name);
        engine
            .trust
            .check_staging(&member, &journal, &header.sha256, Some(header.size))?;
    }
    let target = engine.state.snapshot_path(id);
    if fsutil::exists(&target) && journal.staged.is_none() {
        // Renamed into place by an agent that died before journaling it: never checked as
        // staged, so it is not used; this push replaces it.
        remove_if_there(&target)?;
    }
    if fsutil::exists(&target) {
        let Some(staged) = journal.staged.filter(|s| s.sha256 == header.sha256) else {
            return Err(AgentError::Precondition(format!(
                "restore {id} already staged a different snapshot at {}: one restore id is one \
                 snapshot; start a new restore for another snapshot",
                target.display()
            )));
        };
        // Answer at once: the coordinator stops sending to this member.
        return Ok(SnapshotReceipt {
            sha256: staged.sha256,
            size: staged.size,
            already_present: true,
            revision: staged.revision,
            total_keys: staged.total_keys,
        });
    }
    let partial = engine.state.partial_path(id);
    let receiving = std::time::Instant::now();
    // A partial file left by an agent that died mid-transfer is garbage: it goes before the room
    // is measured.
    remove_if_there(&partial)?;
    push_guard::room(&engine, id, header.size)?;
    let received = write_partial(&partial, first.data, &mut chunks, header.size)
        .await
        .and_then(|(size, sha256)| {
            if size < header.size {
                Err(AgentError::Corrupt(format!(
                    "the snapshot stream for restore {id} ended after {size} of the {} bytes its \
                     header announced: nothing was staged; check the snapshot file and push again",
                    header.size
                )))
            } else if sha256 != header.sha256 {
                Err(AgentError::Corrupt(format!(
                    "the snapshot for restore {id} arrived with sha256 {sha256}, expected {}: \
                     nothing was staged; check the snapshot file and push again",
                    header.sha256
                )))
            } else {
                Ok(size)
            }
        });
    let size = received.inspect_err(|_| {
        let _gone = remove_if_there(&partial);
    })?;
    // `snapshot status` on the partial file: a damaged snapshot is never renamed into place.
    let p = partial.clone();
    let status = blocking(Arc::clone(&engine), move |e| e.tool.status(&p))
        .await
        .inspect_err(|_| {
            let _gone = remove_if_there(&partial);
        })?;
    let (revision, total_keys) = (status.revision, status.total_key);
    let staged = Staged {
        sha256: header.sha256.clone(),
        size,
        revision,
        total_keys,
    };
    let _guard = step_lock.lock().await;
    let (p, t) = (partial.clone(), target);
    blocking(Arc::clone(&engine), move |e| {
        // The claim may have been reverted while the bytes arrived.
        let mut journal = push_guard::claimed(e, id)?;
        durable::rename_durable(&p, &t)?;
        journal.staged = Some(staged);
        e.state.save(&journal).inspect_err(|_| {
            let _gone = remove_if_there(&t);
        })
    })
    .await
    .inspect_err(|_| {
        let _gone = remove_if_there(&partial);
    })?;
    let took = receiving.elapsed().as_secs_f64();
    tracing::info!(
        size,
        revision,
        keys = total_keys,
        "snapshot staged in {took:.2}s ({:.0} MB/s): received, hashed, synced and checked",
        size as f64 / 1e6 / took.max(1e-3)
    );
    Ok(SnapshotReceipt {
        sha256: header.sha256,
        size,
        already_present: false,
        revision,
        total_keys,
    })
}

/// Runs `f` on the engine in a blocking task.
async fn blocking<T, F>(engine: Arc<Engine>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| AgentError::Aborted(format!("staging task failed: {e}")))?
}

/// Removes `path` (durably) if it is there.
fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(durable::fsync_dir(fsutil::parent(path)?)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io("deleting", path, e)),
    }
}

async fn next<S>(chunks: &mut S) -> Result<Option<SnapshotChunk>>
where
    S: Stream<Item = std::result::Result<SnapshotChunk, tonic::Status>> + Unpin,
{
    match chunks.next().await {
        None => Ok(None),
        Some(Ok(c)) => Ok(Some(c)),
        Some(Err(s)) => Err(AgentError::Aborted(format!(
            "the snapshot transfer broke off: {}; nothing was staged, push again",
            s.message()
        ))),
    }
}

/// Chunks received but not yet hashed and written.
const WRITE_QUEUE: usize = 16;

/// Writes the chunks to `partial`, hashing as they arrive; returns (size, sha256). Stops early
/// when more than `limit` bytes arrive. Receiving (TLS, HTTP/2) and hashing-and-writing run on
/// different threads, so the two overlap.
async fn write_partial<S>(
    partial: &Path,
    first: prost::bytes::Bytes,
    chunks: &mut S,
    limit: u64,
) -> Result<(u64, String)>
where
    S: Stream<Item = std::result::Result<SnapshotChunk, tonic::Status>> + Unpin,
{
    // Every Secret of the cluster is in here: 0600 from its creation, in a 0700 dir.
    let dir = fsutil::parent(partial)?;
    durable::create_dir_durable(dir, 0o700)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<prost::bytes::Bytes>(WRITE_QUEUE);
    let path = partial.to_owned();
    let writer = tokio::task::spawn_blocking(move || write_chunks(&path, rx));
    let received = async {
        let mut size = 0u64;
        let mut data = first;
        loop {
            if !data.is_empty() {
                size += data.len() as u64;
                if size > limit {
                    // Cut here: not one byte more than announced is written.
                    return Err(AgentError::Corrupt(format!(
                        "the snapshot stream sent more than the {limit} bytes its header \
                         announced: the transfer was cut and nothing was staged; check the \
                         snapshot file and push again"
                    )));
                }
                if tx.send(data).await.is_err() {
                    // The writer stopped on an error: it is reported below.
                    return Ok(());
                }
            }
            match next(chunks).await? {
                Some(chunk) => data = chunk.data,
                None => return Ok(()),
            }
        }
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| AgentError::Aborted(format!("the staging writer failed: {e}")))?;
    received?;
    written
}

/// Hashes and writes what `rx` brings to a new `path`, then syncs it; returns (size, sha256).
fn write_chunks(
    path: &Path,
    mut rx: tokio::sync::mpsc::Receiver<prost::bytes::Bytes>,
) -> Result<(u64, String)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AgentError::io("creating", path, e))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(data) = rx.blocking_recv() {
        hasher.update(&data);
        file.write_all(&data)
            .map_err(|e| AgentError::io("writing", path, e))?;
        size += data.len() as u64;
    }
    let syncing = std::time::Instant::now();
    file.sync_all()
        .map_err(|e| AgentError::io("syncing", path, e))?;
    tracing::info!(
        "{size} bytes synced to disk in {:.2}s",
        syncing.elapsed().as_secs_f64()
    );
    Ok((size, hex::encode(hasher.finalize())))
}

//! Snapshot integrity, checked in Rust before anything is touched.
//!
//! A snapshot saved by `etcdctl snapshot save` (or the Maintenance.Snapshot RPC) ends with a
//! 32-byte sha256 of everything before it, so its size is 32 more than a multiple of the 512-byte
//! page. etcd's own `snapshot status` does not check that hash: a flipped bit passes there.
//!
//! A raw copy of a member's `member/snap/db` has no such trailer. It is accepted only when the
//! operator says so (`--skip-hash-check`), and only when it holds whole bbolt pages.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const TRAILER: u64 = 32;
const PAGE: u64 = 512;
/// bbolt's page size is the OS page size: 4 KiB, or a multiple of it.
const DB_PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path}: no such file{}", near(.path))]
    Missing { path: PathBuf },
    #[error(
        "snapshot {path} is a directory, not a snapshot file: give the file itself{}",
        near(&.path.join("x"))
    )]
    NotAFile { path: PathBuf },
    #[error("snapshot {path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "snapshot {path} ({size} bytes) has no sha256 trailer: it is truncated, or a raw copy of member/snap/db; take a snapshot with `etcdctl snapshot save` (or `quorate snapshot save`), or, if it is a raw member/snap/db copy and there is no other, restore it with --skip-hash-check (its integrity then cannot be checked)"
    )]
    NoTrailer { path: PathBuf, size: u64 },
    #[error(
        "snapshot {path} ({size} bytes) has no sha256 trailer and is not a whole number of 4 KiB bbolt pages: it is truncated, not a raw member/snap/db copy; use another snapshot"
    )]
    NotDb { path: PathBuf, size: u64 },
    #[error(
        "snapshot {path} is corrupt: its appended sha256 is {stored}, but its content hashes to {actual}; use another snapshot"
    )]
    HashMismatch {
        path: PathBuf,
        stored: String,
        actual: String,
    },
}

/// What to pick instead of `path`: the newest snapshot files in its directory.
fn near(path: &Path) -> String {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut found: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().ok()?;
            let modified = meta.modified().ok()?;
            (meta.is_file() && name.ends_with(".db")).then_some((modified, name))
        })
        .collect();
    if found.is_empty() {
        return format!("; {} holds no .db file", dir.display());
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    let names: Vec<String> = found.into_iter().take(5).map(|(_, n)| n).collect();
    format!(
        "; the newest .db files in {}: {}",
        dir.display(),
        names.join(", ")
    )
}

/// A snapshot that passed the integrity checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckedSnapshot {
    pub path: PathBuf,
    pub size: u64,
    /// sha256 of the whole file (what agents verify on arrival).
    pub sha256: String,
    /// Whether it ends with the sha256 trailer `snapshot save` appends (and it matched); false
    /// only for a raw `member/snap/db` copy accepted with `--skip-hash-check`.
    #[serde(default = "trailer_default")]
    pub trailer: bool,
}

fn trailer_default() -> bool {
    true
}

/// Streams the file once, computing both the hash of the whole file and the hash of everything
/// before the trailer.
pub fn check(path: &Path) -> Result<CheckedSnapshot, SnapshotError> {
    check_with(path, false)
}

/// Like [`check`]; with `skip_hash_check`, a file without a trailer (a raw `member/snap/db`
/// copy) is accepted when it holds whole bbolt pages, hashed whole for staging. A file with a
/// trailer is checked against it either way.
pub fn check_with(path: &Path, skip_hash_check: bool) -> Result<CheckedSnapshot, SnapshotError> {
    let err = |source| SnapshotError::Read {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Missing {
                path: path.to_owned(),
            });
        }
        Ok(m) if m.is_dir() => {
            return Err(SnapshotError::NotAFile {
                path: path.to_owned(),
            });
        }
        _ => {}
    }
    let mut file = File::open(path).map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    if size == 0 {
        return Err(SnapshotError::Empty {
            path: path.to_owned(),
        });
    }
    if size < TRAILER + PAGE || size % PAGE != TRAILER {
        if skip_hash_check {
            if !size.is_multiple_of(DB_PAGE) {
                return Err(SnapshotError::NotDb {
                    path: path.to_owned(),
                    size,
                });
            }
            let mut whole = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                whole.update(&buf[..n]);
            }
            return Ok(CheckedSnapshot {
                path: path.to_owned(),
                size,
                sha256: hex::encode(whole.finalize()),
                trailer: false,
            });
        }
        return Err(SnapshotError::NoTrailer {
            path: path.to_owned(),
            size,
        });
    }
    let body_len = size - TRAILER;
    let mut body_hash = Sha256::new();
    let mut file_hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = body_len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).expect("bounded by buffer size");
        file.read_exact(&mut buf[..want]).map_err(err)?;
        body_hash.update(&buf[..want]);
        file_hash.update(&buf[..want]);
        left -= want as u64;
    }
    let mut trailer = [0u8; TRAILER as usize];
    file.seek(SeekFrom::Start(body_len)).map_err(err)?;
    file.read_exact(&mut trailer).map_err(err)?;
    file_hash.update(trailer);
    let actual = body_hash.finalize();
    if actual.as_slice() != trailer {
        return Err(SnapshotError::HashMismatch {
            path: path.to_owned(),
            stored: hex::encode(trailer),
            actual: hex::encode(actual),
        });
    }
    Ok(CheckedSnapshot {
        path: path.to_owned(),
        size,
        sha256: hex::encode(file_hash.finalize()),
        trailer: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_bytes(pages: usize) -> Vec<u8> {
        let mut body: Vec<u8> = (0..pages * 512).map(|i| (i * 7 % 251) as u8).collect();
        let digest = Sha256::digest(&body);
        body.extend_from_slice(&digest);
        body
    }

    #[test]
    fn a_missing_path_or_a_directory_is_named_with_the_snapshots_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("etcd-2026-11-30T01.db"), b"x").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        let e = check(&dir.path().join("etcd-2026-12-01T02.db"))
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("no such file")
                && e.contains("etcd-2026-11-30T01.db")
                && !e.contains("notes"),
            "{e}"
        );
        let e = check(dir.path()).expect_err("a directory").to_string();
        assert!(
            e.contains("is a directory") && e.contains("etcd-2026-11-30T01.db"),
            "{e}"
        );
        assert!(!e.contains("--skip-hash-check"), "{e}");
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), bytes).expect("write");
        f
    }

    #[test]
    fn a_good_snapshot_passes_with_the_whole_file_hash() {
        let bytes = snapshot_bytes(8);
        let f = write(&bytes);
        let checked = check(f.path()).expect("valid");
        assert_eq!(checked.size, bytes.len() as u64);
        assert_eq!(checked.sha256, hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn empty_truncated_and_flipped_snapshots_are_refused_distinctly() {
        let empty = write(&[]);
        assert!(matches!(
            check(empty.path()),
            Err(SnapshotError::Empty { .. })
        ));

        let bytes = snapshot_bytes(8);
        let truncated = write(&bytes[..bytes.len() - 100]);
        assert!(matches!(
            check(truncated.path()),
            Err(SnapshotError::NoTrailer { .. })
        ));

        let mut flipped = bytes.clone();
        flipped[1000] ^= 0x01;
        let flipped = write(&flipped);
        let err = check(flipped.path()).expect_err("bit flip");
        assert!(matches!(err, SnapshotError::HashMismatch { .. }));
        assert!(err.to_string().contains("corrupt"));

        let missing = check(Path::new("/nonexistent/snap.db")).expect_err("missing");
        assert!(missing.to_string().contains("/nonexistent/snap.db"));
    }

    #[test]
    fn a_raw_db_needs_skip_hash_check_and_a_saved_snapshot_is_checked_regardless() {
        let raw: Vec<u8> = (0..4 * 4096).map(|i| (i % 253) as u8).collect();
        let raw_file = write(&raw);
        let err = check(raw_file.path()).expect_err("no trailer");
        assert!(matches!(err, SnapshotError::NoTrailer { .. }));
        assert!(err.to_string().contains("--skip-hash-check"), "{err}");

        let accepted = check_with(raw_file.path(), true).expect("raw db accepted");
        assert!(!accepted.trailer);
        assert_eq!(accepted.size, raw.len() as u64);
        assert_eq!(accepted.sha256, hex::encode(Sha256::digest(&raw)));

        // Not whole pages: truncated, not a db copy, even with the flag.
        let cut = write(&raw[..raw.len() - 100]);
        assert!(matches!(
            check_with(cut.path(), true),
            Err(SnapshotError::NotDb { .. })
        ));

        // A saved snapshot keeps its check: it passes as one with a trailer, and a flipped bit
        // is still refused.
        let bytes = snapshot_bytes(8);
        let good = write(&bytes);
        assert!(check_with(good.path(), true).expect("valid").trailer);
        let mut flipped = bytes.clone();
        flipped[10] ^= 0x01;
        let flipped = write(&flipped);
        assert!(matches!(
            check_with(flipped.path(), true),
            Err(SnapshotError::HashMismatch { .. })
        ));
    }
}

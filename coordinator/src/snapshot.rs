//! Snapshot integrity, checked in Rust before anything is touched.
//!
//! A snapshot saved by `etcdctl snapshot save` (or the Maintenance.Snapshot RPC) ends with a
//! 32-byte sha256 of everything before it, so its size is 32 more than a multiple of the 512-byte
//! page. etcd's own `snapshot status` does not check that hash: a flipped bit passes there.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const TRAILER: u64 = 32;
const PAGE: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "snapshot {path} ({size} bytes) has no sha256 trailer: it is truncated, or a raw copy of member/snap/db; take a snapshot with `etcdctl snapshot save` (or `quorate snapshot save`)"
    )]
    NoTrailer { path: PathBuf, size: u64 },
    #[error(
        "snapshot {path} is corrupt: its appended sha256 is {stored}, but its content hashes to {actual}; use another snapshot"
    )]
    HashMismatch {
        path: PathBuf,
        stored: String,
        actual: String,
    },
}

/// A snapshot that passed the integrity checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckedSnapshot {
    pub path: PathBuf,
    pub size: u64,
    /// sha256 of the whole file (what agents verify on arrival).
    pub sha256: String,
}

/// Streams the file once, computing both the hash of the whole file and the hash of everything
/// before the trailer.
pub fn check(path: &Path) -> Result<CheckedSnapshot, SnapshotError> {
    let err = |source| SnapshotError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    if size == 0 {
        return Err(SnapshotError::Empty {
            path: path.to_owned(),
        });
    }
    if size < TRAILER + PAGE || size % PAGE != TRAILER {
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
}

//! Durable file operations: every change the agent makes survives a crash at any instant.

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content: write a
/// temp file, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent(path)?;
    fs::create_dir_all(dir).map_err(|e| AgentError::io("creating", dir, e))?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(|e| AgentError::io("creating", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| AgentError::io("writing", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| AgentError::io("renaming into place", path, e))?;
    fsync_dir(dir)
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::io("syncing directory", dir, e))
}

/// `rename(from, to)`, then fsync both parents. Atomic on one filesystem.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| AgentError::Io {
        what: format!("renaming {} to", from.display()),
        path: to.to_owned(),
        source: e,
    })?;
    let (a, b) = (parent(from)?, parent(to)?);
    fsync_dir(b)?;
    if a != b {
        fsync_dir(a)?;
    }
    Ok(())
}

/// The parent directory of `path`.
pub fn parent(path: &Path) -> Result<&Path> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            AgentError::Precondition(format!("{} has no parent directory", path.display()))
        })
}

/// True when `path` exists (without following a final symlink).
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// `<base>-<n>` for the smallest n >= 1 that does not exist.
pub fn numbered(base: &Path) -> PathBuf {
    let mut n = 1u32;
    loop {
        let candidate = PathBuf::from(format!("{}-{n}", base.display()));
        if !exists(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

/// `base` itself when free, else `<base>-<n>`.
pub fn free_name(base: &Path) -> PathBuf {
    if exists(base) {
        numbered(base)
    } else {
        base.to_owned()
    }
}

/// Total size in bytes of the regular files under `path` (symlinks are not followed).
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries.flatten().map(|e| tree_size(&e.path())).sum()
}

/// Free bytes available to unprivileged users on the filesystem holding `path` (or its nearest
/// existing ancestor).
pub fn free_bytes(path: &Path) -> Result<u64> {
    let mut probe = path;
    while !exists(probe) {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let stat = nix::sys::statvfs::statvfs(probe)
        .map_err(|e| AgentError::io("statvfs", probe, std::io::Error::from(e)))?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// Owner and permission bits of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (e.g. 0o700).
    pub mode: u32,
}

impl Ownership {
    pub fn of(path: &Path) -> Result<Self> {
        let meta =
            fs::symlink_metadata(path).map_err(|e| AgentError::io("reading owner of", path, e))?;
        Ok(Self {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        })
    }
}

/// Gives every entry under `root` the owner of `own`, the top directory its mode, and fsyncs
/// every file and directory so the tree is durable before it is renamed into place.
pub fn adopt_tree(root: &Path, own: Ownership) -> Result<()> {
    walk(root, &mut |path, meta| {
        if meta.uid() != own.uid || meta.gid() != own.gid {
            std::os::unix::fs::lchown(path, Some(own.uid), Some(own.gid))
                .map_err(|e| AgentError::io("changing owner of", path, e))?;
        }
        if !meta.file_type().is_symlink() {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| AgentError::io("syncing", path, e))?;
        }
        Ok(())
    })?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(root, fs::Permissions::from_mode(own.mode))
        .map_err(|e| AgentError::io("setting mode of", root, e))?;
    fsync_dir(root)
}

fn walk(path: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<()>) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| AgentError::io("reading", path, e))?;
    if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(|e| AgentError::io("listing", path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| AgentError::io("listing", path, e))?;
            walk(&entry.path(), f)?;
        }
    }
    f(path, &meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_names_are_numbered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.json");
        write_atomic(&p, b"1").expect("write");
        write_atomic(&p, b"22").expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"22");
        assert_eq!(tree_size(dir.path()), 2);
        assert_eq!(free_name(&p), dir.path().join("a.json-1"));
        assert_eq!(free_name(&dir.path().join("b")), dir.path().join("b"));
        assert!(free_bytes(&dir.path().join("missing/child")).expect("statvfs") > 0);
    }
}

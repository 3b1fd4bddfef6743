//! Crash-safe file operations, shared by the agent, the coordinator and the lab: whatever instant
//! the machine dies at, a file written here holds either its old or its new content, and a rename
//! or a new directory is either there after the reboot or not, never half.
//!
//! The discipline (after neon's `crashsafe`): write a temp file in the same directory, fsync it,
//! rename it over the target, fsync the directory; after a rename, fsync both parents; after
//! creating directories, fsync the parent of each new one.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// A durable operation that failed: what was being done, to which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct DurableError {
    pub what: String,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl DurableError {
    fn new(what: impl Into<String>, path: &Path, source: std::io::Error) -> Self {
        Self {
            what: what.into(),
            path: path.to_owned(),
            source,
        }
    }
}

pub type Result<T, E = DurableError> = std::result::Result<T, E>;

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DurableError::new("syncing directory", dir, e))
}

/// Writes `bytes` to `path` with permission bits `mode` so that a crash leaves either the old or
/// the new content: a temp file beside it (created with `mode`, never wider), fsynced, renamed
/// over `path`, then the directory fsynced. The directory must exist. On failure the temp file is
/// removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomic_owned(path, bytes, mode, None)
}

/// [`write_atomic`], the new file owned by `owner` (uid, gid) from the start (to replace a file
/// another user owns, e.g. a config file etcd reads, keeping its owner).
pub fn write_atomic_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let dir = parent(path);
    let name = path.file_name().ok_or_else(|| {
        DurableError::new(
            "writing",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // A temp file left by a crash may have another mode: start from nothing.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DurableError::new("removing a stale temp file", &tmp, e)),
    }
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| DurableError::new("creating", &tmp, e))?;
        // The umask may have narrowed the mode at creation; fchmod is not subject to it.
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| DurableError::new("changing the owner of", &tmp, e))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| file.write_all(bytes))
            .and_then(|()| file.sync_all())
            .map_err(|e| DurableError::new("writing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| DurableError::new("renaming into place", path, e))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// `rename(from, to)`, then fsync both parents (once when they are the same). Atomic on one
/// filesystem.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .map_err(|e| DurableError::new(format!("renaming {} to", from.display()), to, e))?;
    let (a, b) = (parent(from), parent(to));
    fsync_dir(b)?;
    if a != b {
        fsync_dir(a)?;
    }
    Ok(())
}

/// `create_dir_all(path)` where every directory it makes gets permission bits `mode`, and each
/// new directory's parent is fsynced, so the new entries survive a crash. Existing directories
/// are left as they are. Returns the directories made, outermost first.
pub fn create_dir_durable(path: &Path, mode: u32) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut probe = path;
    while fs::symlink_metadata(probe).is_err() {
        missing.push(probe.to_owned());
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => break,
        }
    }
    missing.reverse();
    for dir in &missing {
        match fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {}
            // Made meanwhile by someone else: theirs, not ours to chmod.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => continue,
            Err(e) => return Err(DurableError::new("creating directory", dir, e)),
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| DurableError::new("setting the mode of", dir, e))?;
        fsync_dir(parent(dir))?;
    }
    if !path.is_dir() {
        return Err(DurableError::new(
            "creating directory",
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it exists and is not a directory",
            ),
        ));
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_sets_the_mode_overwrites_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("journal.json");
        write_atomic(&p, b"first", 0o600).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"first");
        assert_eq!(mode_of(&p), 0o600);
        // Wider than a usual umask lets through: fchmod, not the umask, decides.
        write_atomic(&p, b"second, longer", 0o666).expect("overwrite");
        assert_eq!(fs::read(&p).expect("read"), b"second, longer");
        assert_eq!(mode_of(&p), 0o666);
        write_atomic(&p, b"3", 0o640).expect("shorter");
        assert_eq!(fs::read(&p).expect("read"), b"3");
        assert_eq!(mode_of(&p), 0o640);
        assert_eq!(entries(dir.path()), vec!["journal.json"]);
    }

    #[test]
    fn a_stale_temp_file_does_not_lend_its_mode_and_a_failed_write_leaves_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("lock");
        let stale = dir.path().join(".lock.tmp");
        fs::write(&stale, "half").expect("stale");
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).expect("chmod");
        write_atomic(&p, b"ok", 0o600).expect("write");
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(entries(dir.path()), vec!["lock"]);
        // The target is a directory: the rename fails, the old target and no temp file remain.
        let d = dir.path().join("sub");
        fs::create_dir(&d).expect("mkdir");
        fs::write(d.join("x"), "x").expect("x");
        let err = write_atomic(&d, b"nope", 0o600).expect_err("over a dir");
        assert!(err.to_string().contains("renaming into place"), "{err}");
        assert_eq!(entries(dir.path()), vec!["lock", "sub"]);
        let err = write_atomic(&dir.path().join("missing/f"), b"x", 0o600).expect_err("no dir");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn rename_durable_moves_across_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).expect("a");
        fs::create_dir(&b).expect("b");
        fs::write(a.join("f"), "x").expect("f");
        rename_durable(&a.join("f"), &b.join("g")).expect("rename");
        assert!(!a.join("f").exists());
        assert_eq!(fs::read(b.join("g")).expect("g"), b"x");
        let err = rename_durable(&a.join("f"), &b.join("h")).expect_err("gone");
        assert!(
            err.to_string().contains(&a.join("f").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn create_dir_durable_makes_only_the_missing_dirs_with_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let top = dir.path().join("state");
        fs::create_dir(&top).expect("mkdir");
        fs::set_permissions(&top, fs::Permissions::from_mode(0o755)).expect("chmod");
        let deep = top.join("restores/abc/manifests");
        let made = create_dir_durable(&deep, 0o700).expect("create");
        assert_eq!(
            made,
            vec![top.join("restores"), top.join("restores/abc"), deep.clone()]
        );
        for d in &made {
            assert_eq!(mode_of(d), 0o700, "{}", d.display());
        }
        assert_eq!(mode_of(&top), 0o755, "an existing dir keeps its mode");
        assert!(create_dir_durable(&deep, 0o700).expect("again").is_empty());
        fs::write(top.join("file"), "x").expect("file");
        assert!(create_dir_durable(&top.join("file"), 0o700).is_err());
    }
}

//! File helpers of the agent: placements, ownership, free space. The crash-safe primitives
//! (atomic write, durable rename, fsync of a directory, new directories) are
//! [`quorate_proto::durable`], shared with the coordinator and the lab.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use quorate_proto::durable;

use crate::error::{AgentError, Result};

/// Creates `dir` (mode 0700, owned like `like`) when missing, durably. For quorate's own dirs
/// inside a dir etcd uses.
pub fn create_private_dir(dir: &Path, like: &Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let own = Ownership::of(like)?;
    durable::create_dir_durable(dir, 0o700)?;
    std::os::unix::fs::lchown(dir, Some(own.uid), Some(own.gid))
        .map_err(|e| AgentError::io("changing owner of", dir, e))?;
    Ok(durable::fsync_dir(dir)?)
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
    Ok(space(path)?.0)
}

/// (free bytes available to unprivileged users, total bytes) of the filesystem holding `path`
/// (or its nearest existing ancestor).
pub fn space(path: &Path) -> Result<(u64, u64)> {
    let mut probe = path;
    while !exists(probe) {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let stat = nix::sys::statvfs::statvfs(probe)
        .map_err(|e| AgentError::io("statvfs", probe, std::io::Error::from(e)))?;
    let size = stat.fragment_size();
    Ok((
        stat.blocks_available().saturating_mul(size),
        stat.blocks().saturating_mul(size),
    ))
}

/// One mounted filesystem, from a line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (field 5).
    pub point: PathBuf,
    /// Its type (`ext4`, `xfs`, `tmpfs`), after the ` - ` separator.
    pub fs_type: String,
}

/// Parses `/proc/self/mountinfo` (see proc(5)); lines it cannot read are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            let fs_type = fields.get(dash + 1)?;
            Some(Mount {
                point: PathBuf::from(unescape_octal(point)),
                fs_type: (*fs_type).to_owned(),
            })
        })
        .collect()
}

/// `\040` → space, as the kernel escapes space, tab, newline and backslash in mountinfo.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        match code.and_then(|c| u8::try_from(c).ok()) {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystems mounted in this agent's mount namespace.
pub fn mounts() -> Result<Vec<Mount>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|e| AgentError::io("reading", path, e))?;
    Ok(parse_mountinfo(&text))
}

/// `major:minor` of a device number, as `ls -l` and mountinfo write it (Linux encoding).
pub fn device_name(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major}:{minor}")
}

/// Where a directory lives: its filesystem, and whether it is that filesystem's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The path with symlinks resolved (of the nearest existing ancestor when it is missing).
    pub resolved: PathBuf,
    /// The directory is a mount point: renaming it fails with EBUSY, and a sibling is on
    /// another filesystem.
    pub mount_point: bool,
    /// The filesystem's type from mountinfo; empty when no entry covers it.
    pub fs_type: String,
    /// `major:minor` of its filesystem: two dirs with the same device share free space.
    pub device: String,
    pub free_bytes: u64,
    /// Filesystems mounted strictly inside the directory.
    pub mounts_inside: Vec<PathBuf>,
}

/// Where `path` (or, when it is missing, its nearest existing ancestor) lives, per `mounts` and
/// by comparing its device with its parent's (which also catches a mount the agent's mount
/// namespace does not list).
pub fn placement(path: &Path, mounts: &[Mount]) -> Result<Placement> {
    let mut probe = path;
    while !exists(probe) {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let resolved = fs::canonicalize(probe).map_err(|e| AgentError::io("resolving", probe, e))?;
    let meta = fs::metadata(&resolved).map_err(|e| AgentError::io("reading", &resolved, e))?;
    let parent_dev = match resolved.parent() {
        Some(p) => Some(
            fs::metadata(p)
                .map_err(|e| AgentError::io("reading", p, e))?
                .dev(),
        ),
        None => None,
    };
    // The deepest mount covering the path; of equal ones the last listed is the one on top.
    let mut covering: Option<&Mount> = None;
    for m in mounts.iter().filter(|m| resolved.starts_with(&m.point)) {
        if covering.is_none_or(|c| m.point.components().count() >= c.point.components().count()) {
            covering = Some(m);
        }
    }
    let is_root = covering.is_some_and(|m| m.point == resolved) || parent_dev != Some(meta.dev());
    let mut mounts_inside: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| m.point != resolved && m.point.starts_with(&resolved))
        .map(|m| m.point.clone())
        .collect();
    mounts_inside.sort();
    mounts_inside.dedup();
    Ok(Placement {
        mount_point: probe == path && is_root,
        fs_type: covering.map(|m| m.fs_type.clone()).unwrap_or_default(),
        device: device_name(meta.dev()),
        free_bytes: free_bytes(&resolved)?,
        mounts_inside: if probe == path {
            mounts_inside
        } else {
            Vec::new()
        },
        resolved,
    })
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
    Ok(durable::fsync_dir(root)?)
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
    fn names_are_numbered_and_sizes_summed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.json");
        durable::write_atomic(&p, b"22", 0o600).expect("write");
        assert_eq!(tree_size(dir.path()), 2);
        assert_eq!(free_name(&p), dir.path().join("a.json-1"));
        assert_eq!(free_name(&dir.path().join("b")), dir.path().join("b"));
        assert!(free_bytes(&dir.path().join("missing/child")).expect("statvfs") > 0);
    }

    #[test]
    fn mountinfo_lines_and_placements() {
        let text = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    36 22 0:32 / /var/lib/etcd rw,relatime shared:9 - tmpfs tmpfs rw,size=65536k\n\
                    37 22 7:0 / /mnt/my\\040disk rw - ext4 /dev/loop0 rw\n\
                    garbage\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3, "{mounts:?}");
        assert_eq!(mounts[1].point, PathBuf::from("/var/lib/etcd"));
        assert_eq!(mounts[1].fs_type, "tmpfs");
        assert_eq!(mounts[2].point, PathBuf::from("/mnt/my disk"));
        assert_eq!(device_name(0x0803), "8:3");
        assert_eq!(device_name((259 << 8) | 1), "259:1");

        // A temp dir: not a mount point; its parent is (per this fake table).
        let dir = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(dir.path()).expect("canonical");
        let fake = vec![
            Mount {
                point: "/".into(),
                fs_type: "rootfs".into(),
            },
            Mount {
                point: root.clone(),
                fs_type: "fakefs".into(),
            },
            Mount {
                point: root.join("data/inner"),
                fs_type: "tmpfs".into(),
            },
        ];
        fs::create_dir_all(root.join("data/inner")).expect("mkdir");
        let data = placement(&root.join("data"), &fake).expect("placement");
        assert!(!data.mount_point);
        assert_eq!(data.fs_type, "fakefs");
        assert_eq!(data.mounts_inside, vec![root.join("data/inner")]);
        let top = placement(&root, &fake).expect("placement");
        assert!(top.mount_point, "listed in mountinfo");
        let missing = placement(&root.join("data/absent"), &fake).expect("placement");
        assert!(!missing.mount_point && missing.mounts_inside.is_empty());
        assert_eq!(missing.resolved, root.join("data"));
        assert!(placement(Path::new("/"), &fake).expect("/").mount_point);
    }
}

//! Where etcd's data dir and `--wal-dir` live, which layouts the steps can move, and how.
//!
//! A dir that is not a mount point is renamed to a sibling (`<dir>.quorate-<id>`): one atomic
//! rename on its own filesystem. A dir that is a mount point cannot be renamed (EBUSY) and its
//! siblings are on another filesystem (EXDEV), so it stays where it is and etcd's entries in it
//! move into a hidden dir inside it (`<dir>/.quorate-<id>/`), still on that filesystem; the
//! restore is prepared there too. etcd 3.4 and 3.5 start with such a hidden dir beside `member/`
//! (one warning, as for `lost+found`), and read only `*.wal` files from a WAL dir.

use std::path::{Component, Path, PathBuf};

use quorate_proto::pb;

use crate::error::Result;
use crate::fsutil::{self, Placement};

/// `--wal-dir` relative to the data dir when it lies inside it (it then moves with the data
/// dir); compared lexically, after removing `.` components and trailing slashes.
pub fn wal_in_data(data_dir: &Path, wal_dir: &Path) -> Option<PathBuf> {
    let clean = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    };
    let rel = clean(wal_dir)
        .strip_prefix(clean(data_dir))
        .ok()?
        .to_owned();
    (!rel.as_os_str().is_empty()).then_some(rel)
}

/// One of etcd's dirs as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub path: PathBuf,
    pub exists: bool,
    /// Where it points when the path itself is a symlink.
    pub symlink_to: Option<PathBuf>,
    pub place: Placement,
    /// Bytes of the regular files under it.
    pub bytes: u64,
}

impl Dir {
    fn detect(path: &Path, mounts: &[fsutil::Mount]) -> Result<Self> {
        let symlink_to = std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.file_type().is_symlink())
            .map(|_| std::fs::read_link(path).unwrap_or_default());
        Ok(Self {
            path: path.to_owned(),
            exists: fsutil::exists(path),
            symlink_to,
            place: fsutil::placement(path, mounts)?,
            bytes: fsutil::tree_size(path),
        })
    }

    /// `/var/lib/etcd (mount point, ext4, 9.8 GB free)`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.exists {
            parts.push("missing".to_owned());
        } else if self.place.mount_point {
            parts.push("mount point".to_owned());
        }
        if !self.place.fs_type.is_empty() {
            parts.push(self.place.fs_type.clone());
        }
        parts.push(format!("{:.1} GB free", self.place.free_bytes as f64 / 1e9));
        format!("{} ({})", self.path.display(), parts.join(", "))
    }

    pub fn to_proto(&self) -> pb::DirLayout {
        pb::DirLayout {
            path: self.path.display().to_string(),
            mount_point: self.place.mount_point,
            fs_type: self.place.fs_type.clone(),
            device: self.place.device.clone(),
            free_bytes: self.place.free_bytes,
            bytes: self.bytes,
            exists: self.exists,
        }
    }
}

/// Where etcd's WAL is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wal {
    /// `--wal-dir` inside the data dir (relative path): it moves with the data dir.
    InData { dir: PathBuf, rel: PathBuf },
    /// `--wal-dir` elsewhere: moved aside and restored on its own filesystem.
    Own(Dir),
}

/// The data dir and the WAL dir of this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub data: Dir,
    /// `None`: no `--wal-dir`, the WAL is in `<data-dir>/member/wal`.
    pub wal: Option<Wal>,
}

impl Layout {
    /// Looks at the disks (read-only).
    pub fn detect(data_dir: &Path, wal_dir: Option<&Path>) -> Result<Self> {
        let mounts = fsutil::mounts()?;
        let data = Dir::detect(data_dir, &mounts)?;
        let wal = match wal_dir {
            None => None,
            Some(w) => Some(match wal_in_data(data_dir, w) {
                Some(rel) => Wal::InData {
                    dir: w.to_owned(),
                    rel,
                },
                None => Wal::Own(Dir::detect(w, &mounts)?),
            }),
        };
        Ok(Self { data, wal })
    }

    /// `--wal-dir` as etcd is configured; empty when it is not set.
    pub fn wal_flag(&self) -> String {
        match &self.wal {
            None => String::new(),
            Some(Wal::InData { dir, .. }) => dir.display().to_string(),
            Some(Wal::Own(d)) => d.path.display().to_string(),
        }
    }

    /// The WAL dir when it has its own place.
    pub fn own_wal(&self) -> Option<&Dir> {
        match &self.wal {
            Some(Wal::Own(d)) => Some(d),
            _ => None,
        }
    }

    /// Layouts the steps refuse, each saying why and what to change. Empty when supported.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let data = &self.data;
        if data.path.parent().is_none_or(|p| p.as_os_str().is_empty()) {
            out.push(format!(
                "data dir {} has no parent directory: give etcd a dir of its own, e.g. \
                 --data-dir=/var/lib/etcd",
                data.path.display()
            ));
        }
        check_dir(
            "data dir",
            "--data-dir (or etcd.data_dir in the agent config)",
            data,
            &mut out,
        );
        match &self.wal {
            Some(Wal::Own(wal)) => {
                check_dir("wal dir", "--wal-dir", wal, &mut out);
                if wal.exists && data.exists && wal.place.resolved == data.place.resolved {
                    out.push(format!(
                        "wal dir {} is the data dir: leave --wal-dir unset, or give the WAL a dir \
                         of its own",
                        wal.path.display()
                    ));
                } else if wal_in_data(&wal.path, &data.path).is_some()
                    || (wal.exists
                        && data.exists
                        && data.place.resolved.starts_with(&wal.place.resolved))
                {
                    out.push(format!(
                        "data dir {} lies inside wal dir {}: moving one would carry the other; \
                         give the WAL a dir outside the data dir, or inside it",
                        data.path.display(),
                        wal.path.display()
                    ));
                }
            }
            Some(Wal::InData { .. }) | None => {}
        }
        out
    }

    /// What `check-config` prints: `(label, line)` pairs saying where each dir is and how
    /// PRESERVE and RESTORE will move it.
    pub fn report(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![(
            "data dir",
            format!("{}, {} bytes", self.data.summary(), self.data.bytes),
        )];
        out.push(("", moves_of(&self.data, "member/")));
        match &self.wal {
            None => out.push((
                "wal dir",
                "<data-dir>/member/wal (moves with the data dir)".into(),
            )),
            Some(Wal::InData { dir, .. }) => out.push((
                "wal dir",
                format!("{} (inside the data dir: moves with it)", dir.display()),
            )),
            Some(Wal::Own(w)) => {
                out.push(("wal dir", w.summary()));
                out.push(("", moves_of(w, "its *.wal files")));
            }
        }
        out
    }
}

fn check_dir(what: &str, flag: &str, dir: &Dir, out: &mut Vec<String>) {
    if let Some(target) = &dir.symlink_to {
        out.push(format!(
            "{what} {} is a symlink to {}: quorate would move the link, not the data, and restore \
             onto the link's filesystem; point {flag} at {} itself",
            dir.path.display(),
            target.display(),
            dir.place.resolved.display()
        ));
    }
    if !dir.place.mounts_inside.is_empty() {
        let inside: Vec<String> = dir
            .place
            .mounts_inside
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        out.push(format!(
            "{} is mounted inside {what} {}: moving the {what} would carry that filesystem along \
             and the restored copy would land on another one; mount the disk at the {what} itself \
             (or outside it) and point {flag} there",
            inside.join(", "),
            dir.path.display()
        ));
    }
}

fn moves_of(dir: &Dir, entries: &str) -> String {
    let path = dir.path.display();
    if dir.place.mount_point {
        format!(
            "a mount point, never renamed: PREPARE restores the copy into \
             {path}/.quorate-<id>.prepared/ while etcd serves, PRESERVE moves {entries} into \
             {path}/.quorate-<id>/ and RESTORE moves the copy's entries into place, on that \
             filesystem"
        )
    } else {
        format!(
            "PREPARE restores the copy into {path}.quorate-<id>.prepared while etcd serves; \
             PRESERVE renames it to {path}.quorate-<id>; RESTORE renames the copy into place"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_inside_the_data_dir_is_found_lexically() {
        let d = Path::new("/var/lib/etcd");
        assert_eq!(
            wal_in_data(d, Path::new("/var/lib/etcd/member/wal")),
            Some(PathBuf::from("member/wal"))
        );
        assert_eq!(
            wal_in_data(
                Path::new("/var/lib/etcd/"),
                Path::new("/var/lib/./etcd/wal")
            ),
            Some(PathBuf::from("wal"))
        );
        assert_eq!(wal_in_data(d, Path::new("/var/lib/etcd-wal")), None);
        assert_eq!(wal_in_data(d, d), None);
    }

    #[test]
    fn refusals_name_the_path_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        std::fs::create_dir_all(root.join("data/wal")).expect("mkdir");
        std::fs::create_dir_all(root.join("real")).expect("mkdir");
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).expect("symlink");

        let ok = Layout::detect(&root.join("data"), Some(&root.join("data/wal"))).expect("layout");
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        assert!(matches!(ok.wal, Some(Wal::InData { .. })));
        let report = ok.report();
        assert!(report[1].1.contains("renames it to"), "{report:?}");
        assert!(report[2].1.contains("moves with it"), "{report:?}");

        let link = Layout::detect(&root.join("link"), None).expect("layout");
        let p = link.problems();
        assert!(
            p.len() == 1 && p[0].contains("is a symlink to") && p[0].contains("real itself"),
            "{p:?}"
        );

        let same =
            Layout::detect(&root.join("data"), Some(&root.join("link/../data"))).expect("layout");
        assert!(
            same.problems()
                .iter()
                .any(|p| p.contains("is the data dir")),
            "{:?}",
            same.problems()
        );
        let outer =
            Layout::detect(&root.join("data/wal"), Some(&root.join("data"))).expect("layout");
        assert!(
            outer
                .problems()
                .iter()
                .any(|p| p.contains("lies inside wal dir")),
            "{:?}",
            outer.problems()
        );
        // (Not detected for real: that would walk the whole filesystem.)
        let mut root_dir = ok.data.clone();
        root_dir.path = PathBuf::from("/");
        let slash = Layout {
            data: root_dir,
            wal: None,
        };
        assert!(
            slash.problems().iter().any(|p| p.contains("no parent")),
            "{:?}",
            slash.problems()
        );
    }
}

//! The agent's state dir holds staged snapshots (every Secret of the cluster), journals and kept
//! copies of settings files: it and every dir in it are 0700, every file in it 0600. The agent
//! creates them so; at start it tightens whatever an older version, an operator or a restored
//! backup left wider, and logs each path it tightened.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use quorate_proto::durable;

use crate::error::{AgentError, Result};

/// One path whose mode was narrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    pub path: PathBuf,
    pub was: u32,
    pub now: u32,
}

/// Creates `root` (0700) when missing and removes every group and other permission bit from it
/// and everything under it (symlinks are neither followed nor changed). Manifests a stop set
/// aside in a restore's `manifests/` dir keep their mode: they go back into the manifests dir as
/// they were. Returns what was narrowed.
pub fn tighten_state_dir(root: &Path) -> Result<Vec<Tightened>> {
    durable::create_dir_durable(root, 0o700)?;
    let mut out = Vec::new();
    tighten(root, false, &mut out)?;
    Ok(out)
}

fn tighten(path: &Path, keep_files: bool, out: &mut Vec<Tightened>) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| AgentError::io("reading", path, e))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let was = meta.permissions().mode() & 0o7777;
    let is_dir = meta.is_dir();
    if (is_dir || !keep_files) && was & 0o077 != 0 {
        let now = was & !0o077;
        fs::set_permissions(path, fs::Permissions::from_mode(now))
            .map_err(|e| AgentError::io("narrowing the mode of", path, e))?;
        out.push(Tightened {
            path: path.to_owned(),
            was,
            now,
        });
    }
    if is_dir {
        let manifests = path.file_name().is_some_and(|n| n == "manifests");
        for entry in fs::read_dir(path).map_err(|e| AgentError::io("listing", path, e))? {
            let entry = entry.map_err(|e| AgentError::io("listing", path, e))?;
            tighten(&entry.path(), keep_files || manifests, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn wider_modes_are_narrowed_and_reported_and_aside_manifests_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("state");
        let restore = root.join("restores/7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11");
        fs::create_dir_all(restore.join("manifests")).expect("mkdir");
        fs::write(restore.join("snapshot.db"), "secrets").expect("snapshot");
        fs::write(restore.join("journal.json"), "{}").expect("journal");
        fs::write(restore.join("manifests/etcd.yaml"), "spec: {}").expect("manifest");
        for (p, m) in [
            (&root, 0o755),
            (&restore, 0o755),
            (&restore.join("manifests"), 0o755),
            (&restore.join("snapshot.db"), 0o644),
            (&restore.join("journal.json"), 0o600),
            (&restore.join("manifests/etcd.yaml"), 0o644),
        ] {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).expect("symlink");
        let done = tighten_state_dir(&root).expect("tighten");
        let mut paths: Vec<_> = done.iter().map(|t| t.path.clone()).collect();
        paths.sort();
        let mut want = vec![
            root.clone(),
            root.join("restores"),
            restore.clone(),
            restore.join("manifests"),
            restore.join("snapshot.db"),
        ];
        want.sort();
        assert_eq!(paths, want);
        assert!(done.iter().any(|t| t.was == 0o644 && t.now == 0o600));
        for d in [
            &root,
            &root.join("restores"),
            &restore,
            &restore.join("manifests"),
        ] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&restore.join("snapshot.db")), 0o600);
        assert_eq!(mode(&restore.join("journal.json")), 0o600);
        assert_eq!(mode(&restore.join("manifests/etcd.yaml")), 0o644);
        assert_eq!(
            mode(Path::new("/etc/passwd")) & 0o044,
            0o044,
            "not followed"
        );
        assert!(tighten_state_dir(&root).expect("again").is_empty());
        // A missing state dir is made private.
        let fresh = dir.path().join("fresh/state");
        assert!(tighten_state_dir(&fresh).expect("fresh").is_empty());
        assert_eq!(mode(&fresh), 0o700);
    }

    /// Every systemd unit shipped in deploy/ runs with `UMask=0077`.
    #[test]
    fn shipped_units_set_a_private_umask() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let units: Vec<PathBuf> = fs::read_dir(&deploy)
            .expect("deploy/")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "service"))
            .collect();
        assert!(!units.is_empty(), "no unit in {}", deploy.display());
        for unit in units {
            let text = fs::read_to_string(&unit).expect("unit");
            assert!(
                text.lines().any(|l| l.trim() == "UMask=0077"),
                "{} sets no UMask=0077",
                unit.display()
            );
        }
    }
}

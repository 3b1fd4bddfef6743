//! A snapshot holds every Secret of the cluster. On real etcd 3.5.16, while a restore holds it
//! the staged snapshot is 0600 and the prepared copy private; after a restore rolled back after
//! PREPARE, one rolled back after RESTORE, and one that completed: no member keeps a staged
//! snapshot (nor its partial file) or a prepared copy, and nothing in any agent's state dir is
//! readable by group or others. `quorate snapshot save` writes its snapshot and `.json` 0600.
//!
//! Needs the failpoints compiled in (the lab crate's default feature `failpoints`).
#![cfg(feature = "failpoints")]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use quorate_lab::faults;
use quorate_lab::lab::Lab;
use quorate_lab::matrix::{self, assert_back_to, assert_restored, fresh_original};
use quorate_lab::realfaults::json_events;
use quorate_lab::scenario;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

/// Every path under `dir` (symlinks not followed).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list").flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().expect("type").is_dir() {
            walk(&path, out);
        }
    }
}

/// On every host: the agent's state dir and everything in it private (dirs 0700, files 0600),
/// no staged snapshot or partial file in it, no prepared copy beside the data dir.
fn assert_nothing_readable_left(lab: &Lab, case: &str) {
    for host in lab.hosts() {
        let state = host.path("var/lib/quorate-agent");
        assert_eq!(mode(&state), 0o700, "{case}: {}", state.display());
        let mut paths = Vec::new();
        walk(&state, &mut paths);
        assert!(
            paths.iter().any(|p| p.ends_with("journal.json")),
            "{case}: {} holds the restore's journal: {paths:?}",
            host.name
        );
        for p in &paths {
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(p), want, "{case}: mode of {}", p.display());
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            assert!(
                !name.is_some_and(|n| n.starts_with("snapshot.db")),
                "{case}: a staged snapshot was left on {}: {}",
                host.name,
                p.display()
            );
        }
        let data = host.data_dir();
        let beside = data.parent().expect("data dir's parent");
        let prepared: Vec<_> = std::fs::read_dir(beside)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".prepared"))
            .collect();
        assert!(
            prepared.is_empty(),
            "{case}: a prepared copy was left on {}: {prepared:?}",
            host.name
        );
    }
}

/// `quorate snapshot save` against the lab into `out`.
fn snapshot_save(lab: &Lab, out: &Path) {
    let result = Command::new(scenario::quorate_bin(lab))
        .args(["snapshot", "save", "--inventory"])
        .arg(lab.dir().join("inventory.toml"))
        .arg("--out")
        .arg(out)
        .output()
        .expect("quorate snapshot save");
    assert!(
        result.status.success(),
        "snapshot save: {}",
        matrix::output_text(&result)
    );
}

#[tokio::test]
async fn no_snapshot_or_readable_file_outlives_a_rollback_or_a_restore() {
    let s = matrix::setup(3).await;
    let lab = &s.lab;

    // The operator's own copy: 0600 in a directory the test made 0755, whatever the umask.
    let saved_dir = lab.dir().join("saved");
    std::fs::create_dir_all(&saved_dir).expect("saved dir");
    std::fs::set_permissions(&saved_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let saved = saved_dir.join("etcd-0001.db");
    snapshot_save(lab, &saved);
    let meta = saved_dir.join("etcd-0001.db.json");
    assert_eq!(mode(&saved), 0o600, "{}", saved.display());
    assert_eq!(mode(&meta), 0o600, "{}", meta.display());
    let mut left: Vec<_> = std::fs::read_dir(&saved_dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["etcd-0001.db", "etcd-0001.db.json"], "no temp file");

    // Mid-restore (the coordinator killed after PREPARE): each member holds the staged snapshot
    // 0600 in its private state dir, and a prepared copy readable by nobody else; `quorate
    // rollback` then removes both.
    let case = "rolled back after a crash after prepare";
    let original = fresh_original(&s).await;
    let id = matrix::crash_after(&s, "prepare", "fence").await;
    for host in lab.hosts() {
        let state = host.path("var/lib/quorate-agent");
        let staged = state.join(format!("restores/{id}/snapshot.db"));
        assert_eq!(mode(&staged), 0o600, "{case}: {}", staged.display());
        let mut paths = Vec::new();
        walk(&state, &mut paths);
        for p in &paths {
            assert_eq!(mode(p) & 0o077, 0, "{case}: mode of {}", p.display());
        }
        let prepared = PathBuf::from(format!(
            "{}.quorate-{id}.prepared",
            host.data_dir().display()
        ));
        assert_eq!(mode(&prepared) & 0o077, 0, "{case}: {}", prepared.display());
    }
    let (ok, text) = faults::quorate_on(lab, "rollback", &id).expect("rollback");
    assert!(ok, "{case}: {text}");
    assert_back_to(&s, &original, case).await;
    assert_nothing_readable_left(lab, case);

    let case = "rolled back after restore";
    let original = fresh_original(&s).await;
    let child = faults::spawn_restore(
        lab,
        &s.snapshot,
        "coordinator::after-restore=return(injected)",
    )
    .expect("quorate");
    let out = child.wait_with_output().expect("quorate output");
    assert!(!out.status.success(), "{case}: the restore reports failure");
    assert!(
        json_events(&out.stdout)
            .iter()
            .any(|e| e["outcome"] == "rolled-back"),
        "{case}: {}",
        matrix::output_text(&out)
    );
    assert_back_to(&s, &original, case).await;
    assert_nothing_readable_left(lab, case);

    let case = "restored";
    let original = fresh_original(&s).await;
    let out = scenario::quorate_restore(lab, &s.snapshot, &["--yes"]).expect("quorate restore");
    assert!(
        out.status.success(),
        "{case}: {}",
        matrix::output_text(&out)
    );
    assert_restored(&s, &original, case).await;
    assert_nothing_readable_left(lab, case);
}

/// Owner and mode of `path`.
fn owner(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).expect("stat");
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// External etcd under systemd: the `/etc/etcd.env` files RESTORE rewrites (one 0600 and
/// root-owned, one 0644 of another user and group, one 0640 root:group) keep their owner and
/// mode through a rollback and through a restore, and the rollback puts their bytes back.
#[tokio::test]
async fn rewritten_env_files_keep_their_owner_and_mode() {
    use quorate_lab::lab::LabRuntime;
    use quorate_lab::tools::EtcdVersion;

    let lab = quorate_lab::testlab::up_with(3, EtcdVersion::V35, LabRuntime::Systemd).await;
    let cp1 = lab.hosts()[0].clone();
    let client = quorate_lab::etcd::member_client(&cp1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    quorate_lab::load::load(&client, 500, 7)
        .await
        .expect("load");
    let snapshot = lab.dir().join("snapshot.db");
    scenario::save_snapshot(&lab, &cp1, &snapshot).expect("etcdctl snapshot save");
    let wanted = [(0, 0, 0o600), (1234, 5678, 0o644), (0, 5678, 0o640)];
    let mut originals = Vec::new();
    for (host, (uid, gid, mode)) in lab.hosts().iter().zip(wanted) {
        let env = host.etcd_env_file();
        std::os::unix::fs::chown(&env, Some(uid), Some(gid)).expect("chown");
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(mode)).expect("chmod");
        originals.push(std::fs::read(&env).expect("etcd.env"));
    }
    let check = |case: &str| {
        for (host, want) in lab.hosts().iter().zip(wanted) {
            assert_eq!(
                owner(&host.etcd_env_file()),
                want,
                "{case}: owner and mode of {}'s etcd.env",
                host.name
            );
        }
    };

    let case = "rolled back after quorum";
    let out = faults::spawn_restore(&lab, &snapshot, "coordinator::after-quorum=return(x)")
        .expect("quorate")
        .wait_with_output()
        .expect("quorate output");
    assert!(
        !out.status.success(),
        "{case}: {}",
        matrix::output_text(&out)
    );
    let id = faults::restore_ids(&lab).pop().expect("a restore id");
    for (host, original) in lab.hosts().iter().zip(&originals) {
        let journal: serde_json::Value = serde_json::from_slice(
            &std::fs::read(host.path(&format!("var/lib/quorate-agent/restores/{id}/journal.json")))
                .expect("agent journal"),
        )
        .expect("journal json");
        assert_eq!(
            journal["edits"].as_array().map(Vec::len),
            Some(1),
            "{case}: RESTORE rewrote etcd.env: {journal}"
        );
        assert_eq!(
            &std::fs::read(host.etcd_env_file()).expect("env file"),
            original,
            "{case}: {}'s etcd.env is back byte for byte",
            host.name
        );
    }
    check(case);
    assert_nothing_readable_left(&lab, case);

    let case = "restored";
    let out = scenario::quorate_restore(&lab, &snapshot, &["--yes"]).expect("quorate restore");
    assert!(
        out.status.success(),
        "{case}: {}",
        matrix::output_text(&out)
    );
    for host in lab.hosts() {
        let text = std::fs::read_to_string(host.etcd_env_file()).expect("env file");
        assert!(
            !text.contains("k8s_etcd") && text.contains("quorate-"),
            "{case}: {}'s etcd.env names the new token: {text}",
            host.name
        );
    }
    check(case);
    assert_nothing_readable_left(&lab, case);
}

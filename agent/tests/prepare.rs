//! PREPARE and RESTORE with the real etcdutl and etcd 3.5.16 (from tools/etcd-3.5.16, or
//! `QUORATE_ETCD_DIR`): the snapshot is restored beside the data dir while a real etcd serves
//! from it, then moved into place by renames and served by etcd; a copy made for another token,
//! or damaged since, is removed and never used; reverting PREPARE and FINISH remove what is left.
//! etcd's process control is a fake (the test stops etcd itself where HALT would); the restore
//! tool is the real one. Without the etcd binaries the tests fail as root or under CI and skip
//! otherwise.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::FakePod;
use quorate_agent::engine::Engine;
use quorate_agent::journal::{Op, Staged, StateDir};
use quorate_agent::tool::CliTool;
use quorate_proto::model::{RestoreId, Step, StepRequest};

/// A real etcd process, stopped (SIGTERM, then reaped) when dropped, also on panic.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
        let _gone = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _reaped = self.0.wait();
    }
}

/// One member `q1` on `ip`: its data dir under a temp dir, a real etcd serving from it, a fake
/// static pod for etcd's process control and the real etcdutl.
struct Member {
    etcd: Option<Etcd>,
    engine: Engine,
    tools: PathBuf,
    ip: &'static str,
    root: tempfile::TempDir,
}

impl Member {
    /// Starts etcd on a fresh data dir, writes `before`, saves a snapshot, writes `after`, and
    /// stages the snapshot for `id`. Returns the member and the snapshot's sha256.
    fn with_snapshot(ip: &'static str, id: RestoreId) -> Option<(Self, String)> {
        let tools = common::etcd_3516()?;
        let root = tempfile::tempdir().expect("tempdir");
        let manifests = root.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        let manifest = manifests.join("etcd.yaml");
        let peer = format!("http://{ip}:12380");
        std::fs::write(
            &manifest,
            format!(
                "spec:\n  containers:\n  - command:\n    - etcd\n    - --name=q1\n    - --data-dir={}\n    - --initial-advertise-peer-urls={peer}\n    - --listen-peer-urls={peer}\n",
                root.path().join("var/lib/etcd").display()
            ),
        )
        .expect("manifest");
        let pod = FakePod::new(manifest);
        let engine = Engine {
            state: StateDir::new(root.path().join("state")),
            data_dir: None,
            etcd: Some(Box::new(pod)),
            apiserver: None,
            controllers: Vec::new(),
            tool: Box::new(CliTool {
                etcdutl: Some(tools.join("etcdutl")),
                etcdctl: None,
                runner: quorate_agent::child::Runner::default(),
            }),
            host_name: String::new(),
            runner: quorate_agent::child::Runner::default(),
            trust: Default::default(),
        };
        let mut m = Self {
            etcd: None,
            engine,
            tools,
            ip,
            root,
        };
        std::fs::create_dir_all(m.data_dir()).expect("mkdir");
        std::fs::set_permissions(m.data_dir(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        m.serve();
        m.etcdctl(&["put", "before", "1"]);
        let snap = m.root.path().join("saved.db");
        m.etcdctl(&["snapshot", "save", &snap.display().to_string()]);
        m.etcdctl(&["put", "after", "2"]);
        let sha = m.stage(id, &snap);
        Some((m, sha))
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("var/lib/etcd")
    }

    fn prepared(&self, id: RestoreId) -> PathBuf {
        PathBuf::from(format!(
            "{}.quorate-{id}.prepared",
            self.data_dir().display()
        ))
    }

    /// Runs etcd on the data dir as it is now (the original, or the restored copy).
    fn serve(&mut self) {
        let (peer, client) = (
            format!("http://{}:12380", self.ip),
            format!("http://{}:12379", self.ip),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("etcd.log"))
            .expect("log");
        let child = Command::new(self.tools.join("etcd"))
            .args([
                "--name=q1".to_owned(),
                format!("--data-dir={}", self.data_dir().display()),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=q1={peer}"),
                format!("--listen-peer-urls={peer}"),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.etcd = Some(Etcd(child));
        for _ in 0..300 {
            let healthy = Command::new(self.tools.join("etcdctl"))
                .args([
                    format!("--endpoints={client}"),
                    "endpoint".into(),
                    "health".into(),
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if healthy {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd does not answer within 30 s: {}", self.log_tail());
    }

    /// Stops etcd, as HALT would with the real runtime.
    fn halt(&mut self) {
        self.etcd = None;
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(self.root.path().join("etcd.log"))
            .map(|t| t.lines().rev().take(3).collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new(self.tools.join("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://{}:12379", self.ip))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {} (etcd log: {})",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        let v = out.trim();
        (!v.is_empty()).then(|| v.to_owned())
    }

    /// Puts the snapshot where a push leaves it, journaled as a push journals it.
    fn stage(&self, id: RestoreId, snap: &Path) -> String {
        let path = self.engine.state.snapshot_path(id);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::copy(snap, &path).expect("stage");
        let bytes = std::fs::read(&path).expect("read");
        let sha = common::sha256(&bytes);
        let status = self.engine.tool.status(&path).expect("snapshot status");
        let mut journal = self.engine.state.load(id).expect("journal");
        journal.staged = Some(Staged {
            sha256: sha.clone(),
            size: bytes.len() as u64,
            revision: status.revision,
            total_keys: status.total_key,
        });
        self.engine.state.save(&journal).expect("journal");
        sha
    }

    fn request(&self, id: RestoreId, step: Step, sha: &str) -> StepRequest {
        let peer = format!("http://{}:12380", self.ip);
        let mut req = common::request(id, step, sha);
        req.facts.member_name = "q1".into();
        req.facts.peer_urls = vec![peer.clone()];
        req.facts.initial_cluster = format!("q1={peer}");
        req
    }

    fn run(&self, req: &StepRequest, op: Op) -> String {
        let o = self
            .engine
            .execute(req, op, &|_| {})
            .unwrap_or_else(|e| panic!("{op:?} {}: {e}", req.step));
        assert!(o.ok, "{op:?} {}: {}", req.step, o.message);
        o.message
    }

    fn step(&self, id: RestoreId, step: Step, sha: &str) -> String {
        self.run(&self.request(id, step, sha), Op::Run)
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").ino()
}

/// The member IDs a restored db records (they derive from the names, peer URLs and token).
fn member_ids(data_dir: &Path) -> Vec<u64> {
    let m =
        quorate_proto::etcd_db::membership(&data_dir.join("member/snap/db")).expect("membership");
    m.members.iter().map(|m| m.id).collect()
}

#[test]
fn a_copy_prepared_while_etcd_serves_goes_into_place_by_rename_and_serves_the_snapshot() {
    let id = RestoreId::new();
    let Some((mut m, sha)) = Member::with_snapshot("127.0.0.236", id) else {
        return;
    };
    m.step(id, Step::Claim, &sha);
    let prepared = m.step(id, Step::Prepare, &sha);
    let copy = m.prepared(id);
    assert!(
        prepared.contains("prepared the") && prepared.contains(&copy.display().to_string()),
        "{prepared}"
    );
    assert!(copy.join("member/snap/db").is_file() && copy.join("member/wal").is_dir());
    let db_inode = inode(&copy.join("member/snap/db"));
    // etcd kept serving from the original meanwhile.
    m.etcdctl(&["put", "during", "3"]);
    assert_eq!(m.get("after").as_deref(), Some("2"));
    // Repeated after a crash before its result was journaled: the copy made is found whole.
    let mut journal = m.engine.state.load(id).expect("journal");
    journal.steps.get_mut(&Step::Prepare).expect("ran").state =
        quorate_agent::journal::StepState::Running;
    m.engine.state.save(&journal).expect("journal");
    let again = m.step(id, Step::Prepare, &sha);
    assert!(again.contains("already prepared"), "{again}");

    m.halt();
    m.step(id, Step::Halt, &sha);
    m.step(id, Step::Preserve, &sha);
    let restored = m.step(id, Step::Restore, &sha);
    eprintln!("restore step: {restored}");
    assert!(
        restored.contains("moved the snapshot prepared before the halt"),
        "{restored}"
    );
    let data = m.data_dir();
    assert_eq!(
        inode(&data.join("member/snap/db")),
        db_inode,
        "the prepared db itself, renamed into place"
    );
    assert!(!copy.exists(), "nothing prepared is left");
    assert_eq!(
        std::fs::metadata(&data).expect("stat").permissions().mode() & 0o777,
        0o700,
        "the original's mode"
    );
    let journal = m.engine.state.load(id).expect("journal");
    assert!(journal.prepared.is_none());

    m.serve();
    assert_eq!(m.get("before").as_deref(), Some("1"));
    assert_eq!(
        m.get("after"),
        None,
        "keys written after the snapshot are gone"
    );
    assert_eq!(m.get("during"), None);
    let members = m.etcdctl(&["member", "list"]);
    assert!(
        members.contains(", q1, http://127.0.0.236:12380,"),
        "restored as member q1 with its peer URL: {members}"
    );
}

#[test]
fn a_copy_made_for_another_token_is_removed_and_never_used() {
    let id = RestoreId::new();
    let Some((mut m, sha)) = Member::with_snapshot("127.0.0.237", id) else {
        return;
    };
    m.step(id, Step::Claim, &sha);
    let mut other = m.request(id, Step::Prepare, &sha);
    other.facts.cluster_token = "quorate-another".into();
    m.run(&other, Op::Run);
    let copy = m.prepared(id);
    let wrong_ids = member_ids(&copy);
    m.halt();
    m.step(id, Step::Halt, &sha);
    m.step(id, Step::Preserve, &sha);
    let restored = m.step(id, Step::Restore, &sha);
    assert!(
        restored.contains("restored the snapshot")
            && restored.contains(&format!(
                "was not used (it was made with cluster token quorate-another (now {}))",
                id.cluster_token()
            ))
            && restored.contains("removed the prepared copy"),
        "{restored}"
    );
    assert!(!copy.exists(), "the copy made for another token is removed");
    let ids = member_ids(&m.data_dir());
    assert_ne!(ids, wrong_ids, "the restore used this restore's token");
    // What etcdutl makes with this restore's token, for comparison.
    let reference = m.root.path().join("reference");
    let out = Command::new(m.tools.join("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(m.engine.state.snapshot_path(id))
        .arg("--data-dir")
        .arg(&reference)
        .args(["--name", "q1", "--initial-cluster"])
        .arg(format!("q1=http://{}:12380", m.ip))
        .arg("--initial-cluster-token")
        .arg(id.cluster_token())
        .arg("--initial-advertise-peer-urls")
        .arg(format!("http://{}:12380", m.ip))
        .output()
        .expect("etcdutl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids, member_ids(&reference));
    m.serve();
    assert_eq!(m.get("before").as_deref(), Some("1"));
    assert_eq!(m.get("after"), None);
}

#[test]
fn a_copy_damaged_since_it_was_made_is_removed_and_never_used() {
    let id = RestoreId::new();
    let Some((mut m, sha)) = Member::with_snapshot("127.0.0.239", id) else {
        return;
    };
    m.step(id, Step::Claim, &sha);
    m.step(id, Step::Prepare, &sha);
    // Truncated after it was made (a disk error, a hand).
    let db = m.prepared(id).join("member/snap/db");
    let len = std::fs::metadata(&db).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    m.halt();
    m.step(id, Step::Halt, &sha);
    m.step(id, Step::Preserve, &sha);
    let restored = m.step(id, Step::Restore, &sha);
    assert!(
        restored.contains("was not used (it changed since it was made:")
            && restored.contains(&format!("member/snap/db has {} bytes, {len}", len / 2)),
        "{restored}"
    );
    assert!(!m.prepared(id).exists());
    m.serve();
    assert_eq!(m.get("before").as_deref(), Some("1"));
    assert_eq!(m.get("after"), None);
}

#[test]
fn reverting_prepare_and_finish_remove_the_copy() {
    let id = RestoreId::new();
    let Some((m, sha)) = Member::with_snapshot("127.0.0.238", id) else {
        return;
    };
    m.step(id, Step::Claim, &sha);
    m.step(id, Step::Prepare, &sha);
    let copy = m.prepared(id);
    assert!(copy.join("member/snap/db").is_file());
    let reverted = m.run(&m.request(id, Step::Prepare, &sha), Op::Revert);
    assert!(
        reverted.contains(&format!("removed the prepared copy {}", copy.display())),
        "{reverted}"
    );
    assert!(!copy.exists());
    assert!(m.engine.state.load(id).expect("journal").prepared.is_none());
    // The data dir etcd serves from is untouched.
    assert_eq!(m.get("after").as_deref(), Some("2"));

    // Another restore prepared, then released by FINISH (as after a restore that never used
    // it; the first one began rolling back, so it goes no further: its claim is released).
    m.run(&m.request(id, Step::Claim, &sha), Op::Revert);
    let saved = m.root.path().join("saved.db");
    let id = RestoreId::new();
    let sha = m.stage(id, &saved);
    m.step(id, Step::Claim, &sha);
    m.step(id, Step::Prepare, &sha);
    let copy = m.prepared(id);
    assert!(copy.exists());
    let finished = m.step(id, Step::Finish, &sha);
    assert!(
        finished.contains("removed the prepared copy") && !copy.exists(),
        "{finished}"
    );
    assert_eq!(m.get("after").as_deref(), Some("2"));
}

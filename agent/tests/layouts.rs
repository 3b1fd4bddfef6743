//! The agent's steps on real filesystems with real etcd 3.5.1 (from tools/) run by a kubelet
//! stand-in: the data dir and the `--wal-dir` as their own mounts (tmpfs, loop-mounted ext4),
//! restored and then rolled back, and a preserve and a restore interrupted half-way (the journal
//! says "running", half of the entries moved) that resume or revert exactly. Mounting needs
//! root: without it, or without the etcd binaries, each test is skipped with the reason printed.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quorate_agent::engine::Engine;
use quorate_agent::journal::{Op, StateDir, StepState};
use quorate_agent::runtime::{Component, StaticPod};
use quorate_agent::tool::CliTool;
use quorate_proto::model::{RestoreId, Step, StepRequest};

fn tools() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/etcd-3.5.1");
    dir.join("etcdutl").exists().then_some(dir)
}

/// Why this machine cannot run these tests, if it cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: mounting a tmpfs or an ext4 image needs root".into());
    }
    assert!(
        tools().is_some(),
        "no etcd in tools/ (run tests/setup.sh): as root, a missing etcd is a failure"
    );
    None
}

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem mounted for one test; unmounted when dropped, also on panic.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let d = dir.to_str().expect("utf-8 path");
        sh(
            "mount",
            &["-t", "tmpfs", "-o", "size=512m,mode=0700", "tmpfs", d],
        );
        Self(dir.to_owned())
    }

    /// A fresh ext4 image (sparse) loop-mounted at `dir`; the loop device goes with the mount.
    fn ext4(dir: &Path, image: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let file = std::fs::File::create(image).expect("image");
        file.set_len(512 << 20).expect("size");
        let (d, i) = (
            dir.to_str().expect("utf-8 path"),
            image.to_str().expect("utf-8 path"),
        );
        sh("mkfs.ext4", &["-q", "-F", i]);
        sh("mount", &["-o", "loop", i, d]);
        Self(dir.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _lazy = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Runs the manifest's command while the manifest exists (as the kubelet runs a static pod);
/// stops it, and itself, when dropped.
struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _panicked = t.join();
        }
    }
}

fn kubelet(manifest: PathBuf, log: PathBuf) -> Kubelet {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut child: Option<Child> = None;
        while !flag.load(Ordering::SeqCst) {
            let present = manifest.exists();
            if let Some(c) = child.as_mut()
                && (!present || c.try_wait().ok().flatten().is_some())
            {
                term(c);
                child = None;
            }
            if present && child.is_none() {
                let cmd = quorate_agent::manifest::PodCommand::load(&manifest).expect("manifest");
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log");
                child = Some(
                    Command::new(&cmd.argv[0])
                        .args(&cmd.argv[1..])
                        .stdout(Stdio::null())
                        .stderr(out)
                        .spawn()
                        .expect("spawn etcd"),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(c) = child.as_mut() {
            term(c);
        }
    });
    Kubelet {
        stop,
        thread: Some(thread),
    }
}

fn term(c: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
    let _gone = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _reaped = c.wait();
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within 30 s");
}

/// One etcd member on `ip` with its dirs where the test put them. Fields drop in order: etcd
/// stops before its filesystems are unmounted, and those before the temp dir goes.
struct Member {
    kubelet: Option<Kubelet>,
    engine: Engine,
    mounts: Vec<Mounted>,
    root: tempfile::TempDir,
    tools: PathBuf,
    ip: &'static str,
    manifest: PathBuf,
    data_dir: PathBuf,
    wal_dir: Option<PathBuf>,
}

impl Member {
    fn new(ip: &'static str) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let manifest = root.path().join("manifests/etcd.yaml");
        std::fs::create_dir_all(root.path().join("manifests")).expect("mkdir");
        let tools = tools().expect("checked by skip_reason");
        let engine = Engine {
            state: StateDir::new(root.path().join("state")),
            data_dir: None,
            etcd: Some(Box::new(StaticPod {
                component: Component::Etcd,
                manifest: manifest.clone(),
                stop_timeout: Duration::from_secs(30),
                start_timeout: Duration::from_secs(30),
            })),
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
        Self {
            kubelet: None,
            engine,
            mounts: Vec::new(),
            data_dir: root.path().join("var/lib/etcd"),
            wal_dir: None,
            root,
            tools,
            ip,
            manifest,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn peer(&self) -> String {
        format!("http://{}:12380", self.ip)
    }

    /// Writes the manifest for the current dirs (the kubelet starts etcd from it).
    fn write_manifest(&self) {
        let client = format!("http://{}:12379", self.ip);
        let mut argv = vec![
            self.tools.join("etcd").display().to_string(),
            "--name=q1".into(),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--initial-advertise-peer-urls={}", self.peer()),
            format!("--initial-cluster=q1={}", self.peer()),
            format!("--listen-peer-urls={}", self.peer()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-metrics-urls=http://{}:12381", self.ip),
        ];
        if let Some(w) = &self.wal_dir {
            argv.push(format!("--wal-dir={}", w.display()));
        }
        let yaml = format!(
            "spec:\n  containers:\n  - command:\n{}",
            argv.iter()
                .map(|a| format!("    - \"{a}\"\n"))
                .collect::<String>()
        );
        std::fs::write(&self.manifest, yaml).expect("manifest");
    }

    /// Starts etcd under the kubelet stand-in and waits until it serves.
    fn start(&mut self) {
        self.write_manifest();
        if self.kubelet.is_none() {
            self.kubelet = Some(kubelet(self.manifest.clone(), self.path("etcd.log")));
        }
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        eventually("etcd answers", || {
            Command::new(self.tools.join("etcdctl"))
                .args([
                    format!("--endpoints=http://{}:12379", self.ip),
                    "endpoint".into(),
                    "health".into(),
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        });
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

    /// The value of `key`, or `None`.
    fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        let v = out.trim();
        (!v.is_empty()).then(|| v.to_owned())
    }

    fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "x", "-w", "json"]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("json");
        json["header"]["revision"].as_i64().expect("revision")
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(self.path("etcd.log"))
            .map(|t| t.lines().rev().take(3).collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }

    /// Writes `before`, saves a snapshot and stages it for `id`, then writes `after`.
    fn snapshot_and_stage(&self, id: RestoreId) -> (String, i64) {
        self.etcdctl(&["put", "before", "1"]);
        let snap = self.path("saved.db");
        if !snap.exists() {
            self.etcdctl(&["snapshot", "save", &snap.display().to_string()]);
        }
        self.etcdctl(&["put", "after", "2"]);
        let staged = self.engine.state.snapshot_path(id);
        std::fs::create_dir_all(staged.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&snap, &staged).expect("stage");
        let status = self.engine.tool.status(&staged).expect("snapshot status");
        let bytes = std::fs::read(&staged).expect("read");
        let sha = common::sha256(&bytes);
        // Journaled as a push journals it.
        let mut journal = self.engine.state.load(id).expect("journal");
        journal.staged = Some(quorate_agent::journal::Staged {
            sha256: sha.clone(),
            size: bytes.len() as u64,
            revision: status.revision,
            total_keys: status.total_key,
        });
        self.engine
            .state
            .save(&journal)
            .expect("journal the staged snapshot");
        (sha, status.revision)
    }

    fn request(&self, id: RestoreId, step: Step, sha: &str) -> StepRequest {
        let mut req = common::request(id, step, sha);
        req.facts.member_name = "q1".into();
        req.facts.peer_urls = vec![self.peer()];
        req.facts.initial_cluster = format!("q1={}", self.peer());
        req
    }

    fn step(&self, id: RestoreId, step: Step, op: Op, sha: &str) -> String {
        let o = self
            .engine
            .execute(&self.request(id, step, sha), op, &|_| {})
            .unwrap_or_else(|e| panic!("{op:?} {step}: {e}"));
        assert!(
            o.ok,
            "{op:?} {step}: {} (etcd log: {})",
            o.message,
            self.log_tail()
        );
        o.message
    }

    /// Marks `step` as interrupted: the journal holds the intent, as after a crash mid-step.
    fn crash_during(&self, id: RestoreId, step: Step) {
        let mut journal = self.engine.state.load(id).expect("journal");
        let rec = journal.steps.get_mut(&step).expect("step ran");
        rec.state = StepState::Running;
        self.engine.state.save(&journal).expect("save");
    }
}

/// Every file and dir under `dir` (top-level `.quorate-*` entries aside) with its type, mode,
/// owner and content hash: equal digests mean byte-for-byte equal trees.
fn digest(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, path: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let meta = std::fs::symlink_metadata(path).expect("stat");
        let rel = path.strip_prefix(root).expect("under root").to_owned();
        let content = if meta.is_file() {
            common::sha256(&std::fs::read(path).expect("read"))
        } else {
            String::new()
        };
        out.insert(
            rel,
            format!(
                "{:o} {}:{} {} {content}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.len() * u64::from(meta.is_file())
            ),
        );
        if meta.is_dir() {
            for e in std::fs::read_dir(path).expect("list").flatten() {
                let top = path == root;
                if top && e.file_name().to_string_lossy().starts_with(".quorate-") {
                    continue;
                }
                walk(root, &e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn is_mount_point(dir: &Path) -> bool {
    let mounts = quorate_agent::fsutil::mounts().expect("mountinfo");
    quorate_agent::fsutil::placement(dir, &mounts)
        .expect("placement")
        .mount_point
}

/// A restore on `m` and a full rollback: the restored keys and revision, then the original
/// data byte-for-byte and etcd serving it.
fn restore_then_roll_back(m: &Member) {
    let id = RestoreId::new();
    let (sha, snap_rev) = m.snapshot_and_stage(id);
    let rev_before = m.revision();
    let mounted: Vec<(PathBuf, bool)> = [Some(m.data_dir.clone()), m.wal_dir.clone()]
        .into_iter()
        .flatten()
        .map(|d| {
            let mp = is_mount_point(&d);
            (d, mp)
        })
        .collect();
    m.step(id, Step::Claim, Op::Run, &sha);
    // While etcd serves: the copy goes beside each dir, or inside one that is a mount point.
    let prepared = m.step(id, Step::Prepare, Op::Run, &sha);
    let copies: Vec<PathBuf> = mounted
        .iter()
        .map(|(dir, mount)| {
            if *mount {
                dir.join(format!(".quorate-{id}.prepared"))
            } else {
                PathBuf::from(format!("{}.quorate-{id}.prepared", dir.display()))
            }
        })
        .collect();
    for copy in &copies {
        assert!(
            copy.is_dir(),
            "{} holds the copy: {prepared}",
            copy.display()
        );
    }
    assert!(
        copies[0].join("member/snap/db").is_file(),
        "the data dir's copy: {prepared}"
    );
    if let (Some(w), Some(copy)) = (&m.wal_dir, copies.get(1)) {
        assert!(
            std::fs::read_dir(copy)
                .expect("wal copy")
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".wal")),
            "the WAL of {} is prepared in {}",
            w.display(),
            copy.display()
        );
    }
    m.etcdctl(&["put", "while-prepared", "1"]);
    m.step(id, Step::Halt, Op::Run, &sha);
    let original_data = digest(&m.data_dir);
    let original_wal = m.wal_dir.as_deref().map(digest);

    let preserved = m.step(id, Step::Preserve, Op::Run, &sha);
    for (dir, was_mount) in &mounted {
        assert_eq!(
            is_mount_point(dir),
            *was_mount,
            "{} was renamed: {preserved}",
            dir.display()
        );
    }
    let restored = m.step(id, Step::Restore, Op::Run, &sha);
    assert!(
        restored.contains("moved the snapshot prepared before the halt"),
        "{restored}"
    );
    for copy in &copies {
        assert!(!copy.exists(), "{} moved into place", copy.display());
    }
    m.step(id, Step::Start, Op::Run, &sha);
    m.wait_healthy();
    assert_eq!(m.get("before").as_deref(), Some("1"));
    assert_eq!(
        m.get("after"),
        None,
        "keys written after the snapshot are gone"
    );
    assert_eq!(m.get("while-prepared"), None);
    assert_eq!(
        m.revision(),
        snap_rev,
        "the restored revision is the snapshot's"
    );
    if let Some(w) = &m.wal_dir {
        let wal_files = std::fs::read_dir(w)
            .expect("wal dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            .count();
        assert!(wal_files > 0, "the restored WAL is in {}", w.display());
    }

    for step in [Step::Start, Step::Restore, Step::Preserve] {
        m.step(id, step, Op::Revert, &sha);
    }
    assert_eq!(
        digest(&m.data_dir),
        original_data,
        "data dir is back exactly"
    );
    if let (Some(w), Some(orig)) = (&m.wal_dir, &original_wal) {
        assert_eq!(&digest(w), orig, "wal dir is back exactly");
    }
    for (dir, was_mount) in &mounted {
        assert_eq!(is_mount_point(dir), *was_mount);
        let inside = dir.join(format!(".quorate-{id}"));
        let beside = PathBuf::from(format!("{}.quorate-{id}", dir.display()));
        assert!(
            !inside.exists() && !beside.exists(),
            "nothing left where the original was kept"
        );
    }
    let failed = [
        m.data_dir.join(format!(".quorate-{id}.failed")),
        PathBuf::from(format!("{}.quorate-{id}.failed", m.data_dir.display())),
    ];
    assert!(
        failed.iter().any(|f| f.join("member/snap/db").is_file()),
        "the restored copy is kept for forensics"
    );
    m.step(id, Step::Halt, Op::Revert, &sha);
    m.wait_healthy();
    assert_eq!(m.get("before").as_deref(), Some("1"));
    assert_eq!(
        m.get("after").as_deref(),
        Some("2"),
        "the original data serves"
    );
    assert_eq!(m.get("while-prepared").as_deref(), Some("1"));
    assert_eq!(m.revision(), rev_before + 1);
    m.step(id, Step::Prepare, Op::Revert, &sha);
    for copy in &copies {
        assert!(!copy.exists(), "{} is not left behind", copy.display());
    }
    m.step(id, Step::Claim, Op::Revert, &sha);
}

#[test]
fn data_dir_on_its_own_tmpfs() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut m = Member::new("127.0.0.232");
    m.mounts.push(Mounted::tmpfs(&m.data_dir));
    m.start();
    let d = quorate_agent::describe::describe(&m.engine).expect("describe");
    let data = d.data_layout.clone().expect("data layout");
    assert!(data.mount_point && data.fs_type == "tmpfs", "{data:?}");
    assert!(
        d.wal_layout.is_none() && d.layout_problems.is_empty(),
        "{d:?}"
    );
    restore_then_roll_back(&m);
}

#[test]
fn data_dir_on_ext4_and_wal_dir_in_a_tmpfs() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut m = Member::new("127.0.0.233");
    m.mounts
        .push(Mounted::ext4(&m.data_dir, &m.path("data.img")));
    m.mounts.push(Mounted::tmpfs(&m.path("walfs")));
    m.wal_dir = Some(m.path("walfs/wal"));
    m.start();
    let d = quorate_agent::describe::describe(&m.engine).expect("describe");
    let (data, wal) = (
        d.data_layout.expect("data layout"),
        d.wal_layout.expect("wal layout"),
    );
    assert!(data.mount_point && data.fs_type == "ext4", "{data:?}");
    assert!(!wal.mount_point && wal.fs_type == "tmpfs", "{wal:?}");
    assert_ne!(data.device, wal.device);
    assert_eq!(d.wal_dir, m.path("walfs/wal").display().to_string());
    assert!(m.data_dir.join("lost+found").is_dir());
    restore_then_roll_back(&m);
}

#[test]
fn wal_dir_on_its_own_ext4() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut m = Member::new("127.0.0.234");
    // etcd cannot create a WAL in a mount point (it empties the dir, then fails to rename onto
    // it): a WAL dir of its own is one whose disk was mounted after etcd made the WAL.
    m.wal_dir = Some(m.path("wal-first"));
    m.start();
    m.etcdctl(&["put", "early", "0"]);
    m.engine
        .etcd()
        .expect("an etcd member")
        .stop(&m.path("aside/etcd.yaml"), &|_| {})
        .expect("etcd stops");
    let wal = m.path("wal");
    m.mounts.push(Mounted::ext4(&wal, &m.path("wal.img")));
    for e in std::fs::read_dir(m.path("wal-first"))
        .expect("wal")
        .flatten()
    {
        std::fs::copy(e.path(), wal.join(e.file_name())).expect("copy wal");
    }
    m.wal_dir = Some(wal.clone());
    m.start();
    assert_eq!(m.get("early").as_deref(), Some("0"));
    let d = quorate_agent::describe::describe(&m.engine).expect("describe");
    let w = d.wal_layout.expect("wal layout");
    assert!(w.mount_point && w.fs_type == "ext4", "{w:?}");
    assert!(!d.data_layout.expect("data layout").mount_point);
    restore_then_roll_back(&m);
}

/// A preserve and a restore interrupted half-way (the intent journaled, half of the entries
/// moved) revert exactly, or resume and finish.
#[test]
fn interrupted_moves_resume_or_revert() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut m = Member::new("127.0.0.235");
    m.mounts.push(Mounted::tmpfs(&m.data_dir));
    // A WAL dir inside the data dir: PRESERVE moves two entries, member/ and wal/.
    m.wal_dir = Some(m.data_dir.join("wal"));
    m.start();
    let hidden = |id: RestoreId, suffix: &str| m.data_dir.join(format!(".quorate-{id}{suffix}"));

    // 1. PRESERVE interrupted after member/ moved and before wal/: reverted exactly.
    let id = RestoreId::new();
    let (sha, _) = m.snapshot_and_stage(id);
    m.step(id, Step::Claim, Op::Run, &sha);
    m.step(id, Step::Halt, Op::Run, &sha);
    let original = digest(&m.data_dir);
    m.step(id, Step::Preserve, Op::Run, &sha);
    std::fs::rename(hidden(id, "/wal"), m.data_dir.join("wal")).expect("undo one move");
    m.crash_during(id, Step::Preserve);
    m.step(id, Step::Preserve, Op::Revert, &sha);
    assert_eq!(digest(&m.data_dir), original, "back exactly");
    assert!(!hidden(id, "").exists());
    m.step(id, Step::Halt, Op::Revert, &sha);
    m.wait_healthy();
    assert_eq!(m.get("after").as_deref(), Some("2"));
    m.step(id, Step::Claim, Op::Revert, &sha);

    // 2. The same interruption resumed; then RESTORE interrupted with half of the restored
    // entries in place, resumed; etcd serves the snapshot; then everything rolled back.
    let id = RestoreId::new();
    let (sha, snap_rev) = m.snapshot_and_stage(id);
    m.etcdctl(&["put", "after", "3"]);
    m.step(id, Step::Claim, Op::Run, &sha);
    m.step(id, Step::Halt, Op::Run, &sha);
    let original = digest(&m.data_dir);
    m.step(id, Step::Preserve, Op::Run, &sha);
    std::fs::rename(hidden(id, "/wal"), m.data_dir.join("wal")).expect("undo one move");
    m.crash_during(id, Step::Preserve);
    m.step(id, Step::Preserve, Op::Run, &sha);
    assert!(hidden(id, "/member").is_dir() && hidden(id, "/wal").is_dir());
    assert!(!m.data_dir.join("member").exists() && !m.data_dir.join("wal").exists());

    m.step(id, Step::Restore, Op::Run, &sha);
    std::fs::create_dir(hidden(id, ".restoring")).expect("mkdir");
    std::fs::rename(m.data_dir.join("wal"), hidden(id, ".restoring/wal")).expect("half back");
    m.crash_during(id, Step::Restore);
    m.step(id, Step::Restore, Op::Run, &sha);
    assert!(
        hidden(id, ".partial-1/wal").is_dir() && hidden(id, ".failed/member").is_dir(),
        "the interrupted attempt is kept, not deleted"
    );
    m.step(id, Step::Start, Op::Run, &sha);
    m.wait_healthy();
    assert_eq!(m.get("before").as_deref(), Some("1"));
    assert_eq!(m.get("after"), None);
    assert_eq!(m.revision(), snap_rev);

    for step in [Step::Start, Step::Restore, Step::Preserve] {
        m.step(id, step, Op::Revert, &sha);
    }
    assert_eq!(digest(&m.data_dir), original, "back exactly");
    m.step(id, Step::Halt, Op::Revert, &sha);
    m.wait_healthy();
    assert_eq!(m.get("after").as_deref(), Some("3"));
    m.step(id, Step::Claim, Op::Revert, &sha);
}

/// Refusals that need neither root nor etcd: a fake runtime and tool on a temp dir.
mod refusals {
    use super::common::{self, Member};
    use quorate_agent::journal::Op;
    use quorate_proto::model::{RestoreId, Step};

    fn add_flag(m: &Member, flag: &str) {
        let manifest = m.root().join("etc/kubernetes/manifests/etcd.yaml");
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        std::fs::write(&manifest, format!("{text}    - {flag}\n")).expect("manifest");
    }

    #[test]
    fn a_symlinked_data_dir_is_refused_before_anything_moves() {
        let m = Member::new();
        let real = m.root().join("srv/etcd");
        std::fs::create_dir_all(real.parent().expect("parent")).expect("mkdir");
        std::fs::rename(m.data_dir(), &real).expect("move");
        std::os::unix::fs::symlink(&real, m.data_dir()).expect("symlink");
        let engine = m.engine();
        let d = quorate_agent::describe::describe(&engine).expect("describe");
        assert!(
            d.layout_problems.len() == 1 && d.layout_problems[0].contains("is a symlink to"),
            "{:?}",
            d.layout_problems
        );
        let id = RestoreId::new();
        let sha = m.stage(id, b"SNAP:");
        for step in [Step::Claim, Step::Fence, Step::Halt] {
            let o = engine
                .execute(&common::request(id, step, &sha), Op::Run, &|_| {})
                .expect("step");
            assert!(o.ok, "{step}: {}", o.message);
        }
        let err = engine
            .execute(&common::request(id, Step::Preserve, &sha), Op::Run, &|_| {})
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.to_string().contains("cp-1:")
                && err.to_string().contains(&format!("{}", real.display())),
            "{err}"
        );
        assert!(m.data_dir().is_symlink() && real.join("member/snap/db").is_file());
        assert!(engine.state.load(id).expect("journal").preserved.is_none());
    }

    #[test]
    fn etcd_is_not_started_on_a_wal_dir_without_a_wal() {
        let m = Member::new();
        let wal = m.root().join("wal");
        std::fs::create_dir_all(&wal).expect("mkdir");
        add_flag(&m, &format!("--wal-dir={}", wal.display()));
        let engine = m.engine();
        let id = RestoreId::new();
        let sha = m.stage(id, b"SNAP:");
        for step in [Step::Claim, Step::Fence, Step::Halt] {
            let o = engine
                .execute(&common::request(id, step, &sha), Op::Run, &|_| {})
                .expect("step");
            assert!(o.ok, "{step}: {}", o.message);
        }
        let err = engine
            .execute(&common::request(id, Step::Halt, &sha), Op::Revert, &|_| {})
            .expect_err("refused");
        assert!(
            err.to_string().contains("holds no *.wal file")
                && err.to_string().contains("emptying that dir"),
            "{err}"
        );
        std::fs::write(wal.join("0000000000000000-0000000000000000.wal"), b"w").expect("wal");
        let o = engine
            .execute(&common::request(id, Step::Halt, &sha), Op::Revert, &|_| {})
            .expect("start");
        assert!(o.ok, "{}", o.message);
    }
}

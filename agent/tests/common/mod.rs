//! A member in a temp dir with a fake static-pod runtime and a fake restore tool.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use quorate_agent::child::Runner;
use quorate_agent::engine::{Controller, Engine};
use quorate_agent::error::{AgentError, Result};
use quorate_agent::journal::{Staged, StateDir};
use quorate_agent::runtime::{Progress, Runtime, move_manifest};
use quorate_agent::steps::CONTROLLERS;
use quorate_agent::tool::{RestoreArgs, RestoreTool, SnapshotStatus, ToolInfo, ToolKind};
use quorate_proto::model::{ClusterFacts, RestoreId, Step, StepRequest};

/// A component that "runs" while its manifest is in place, without any process.
#[derive(Clone)]
pub struct FakePod(pub Arc<PodState>);

impl std::ops::Deref for FakePod {
    type Target = PodState;
    fn deref(&self) -> &PodState {
        &self.0
    }
}

pub struct PodState {
    pub manifest: PathBuf,
    pub running: AtomicBool,
    pub stops: AtomicUsize,
    pub starts: AtomicUsize,
    /// When set, a start puts the manifest back but the component never comes up.
    pub fails_to_start: AtomicBool,
    /// Shared by the pods of one member: "stop <name>" / "start <name>", in order.
    pub events: Events,
    /// Set: whether it runs cannot be read (as when /proc or its manifest is unreadable).
    pub unreadable: Mutex<Option<String>>,
}

pub type Events = Arc<Mutex<Vec<String>>>;

impl FakePod {
    pub fn new(manifest: PathBuf) -> Self {
        Self::logged(manifest, Events::default())
    }

    pub fn logged(manifest: PathBuf, events: Events) -> Self {
        Self(Arc::new(PodState {
            manifest,
            running: AtomicBool::new(true),
            stops: AtomicUsize::new(0),
            starts: AtomicUsize::new(0),
            fails_to_start: AtomicBool::new(false),
            events,
            unreadable: Mutex::new(None),
        }))
    }

    fn name(&self) -> String {
        self.manifest
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
    }

    fn log(&self, what: &str) {
        let event = format!("{what} {}", self.name());
        self.events.lock().expect("events").push(event);
    }

    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

impl Runtime for FakePod {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn definition(&self) -> &Path {
        &self.manifest
    }
    fn is_running(&self, _aside: Option<&Path>) -> Result<bool> {
        if let Some(why) = self.unreadable.lock().expect("lock").clone() {
            return Err(AgentError::Precondition(why));
        }
        Ok(self.running.load(Ordering::SeqCst))
    }
    fn stop(&self, aside: &Path, progress: Progress<'_>) -> Result<String> {
        progress("moving manifest out".into());
        move_manifest(&self.manifest, aside)?;
        self.stops.fetch_add(1, Ordering::SeqCst);
        self.running.store(false, Ordering::SeqCst);
        self.log("stop");
        Ok(format!("{} stopped", self.name()))
    }
    fn start(&self, aside: &Path, _progress: Progress<'_>) -> Result<String> {
        move_manifest(aside, &self.manifest)?;
        if self.fails_to_start.load(Ordering::SeqCst) {
            self.log("failed to start");
            return Err(AgentError::Timeout(format!(
                "{} is not up after its manifest was put back",
                self.name()
            )));
        }
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.running.store(true, Ordering::SeqCst);
        self.log("start");
        Ok(format!("{} started", self.name()))
    }
}

/// "Restores" by writing the snapshot's bytes and the member name into `member/snap/db`.
#[derive(Clone, Default)]
pub struct FakeTool(pub Arc<AtomicUsize>);

impl FakeTool {
    pub fn restores(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl RestoreTool for FakeTool {
    fn info(&self) -> Result<ToolInfo> {
        Ok(ToolInfo {
            kind: ToolKind::Etcdutl,
            program: "etcdutl".into(),
            version: "3.5.1".into(),
            supports_bump_revision: false,
        })
    }
    fn status(&self, _snapshot: &Path) -> Result<SnapshotStatus> {
        Ok(SnapshotStatus {
            hash: 1,
            revision: 42,
            total_key: 7,
            total_size: 1,
        })
    }
    fn restore(&self, args: &RestoreArgs<'_>) -> Result<String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let snap = std::fs::read(args.snapshot).expect("snapshot readable");
        let db = args.data_dir.join("member/snap");
        std::fs::create_dir_all(&db).expect("mkdir");
        std::fs::write(
            db.join("db"),
            [snap.as_slice(), args.name.as_bytes()].concat(),
        )
        .expect("write");
        Ok(String::new())
    }
}

pub const PEER: &str = "https://127.0.0.11:2380";

/// A loopback port nothing listens on (for now): this member's etcd "listens" there.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub struct Member {
    pub dir: tempfile::TempDir,
    /// `--listen-client-urls` and `--listen-peer-urls` ports on 127.0.0.1, free when made.
    pub client_port: u16,
    pub peer_port: u16,
    pub etcd: FakePod,
    pub apiserver: FakePod,
    /// kube-controller-manager and kube-scheduler, beside the apiserver.
    pub controllers: [FakePod; 2],
    /// Stops and starts of the apiserver and the controllers, in order.
    pub events: Events,
    pub tool: FakeTool,
}

/// A static pod manifest for `name`, as kubeadm writes it (enough for the fakes).
pub fn pod_manifest(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("spec:\n  containers:\n  - command: [{name}, --kubeconfig=/etc/kubernetes/{name}.conf]\n"),
    )
    .expect("manifest");
    path
}

/// The controllers of an engine: `pods` under their own names.
pub fn controllers(pods: &[FakePod]) -> Vec<Controller> {
    pods.iter()
        .map(|p| Controller {
            name: p.name(),
            runtime: Box::new(p.clone()),
        })
        .collect()
}

impl Member {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let manifests = root.join("etc/kubernetes/manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_manifest = format!(
            "spec:\n  containers:\n  - command:\n    - /nonexistent/etcd\n    - --name=cp-1\n    - --data-dir={}\n    - --initial-advertise-peer-urls={PEER}\n    - --listen-peer-urls=https://127.0.0.1:{peer_port}\n    - --listen-client-urls=https://127.0.0.1:{client_port}\n",
            root.join("var/lib/etcd").display()
        );
        std::fs::write(manifests.join("etcd.yaml"), etcd_manifest).expect("manifest");
        std::fs::write(
            manifests.join("kube-apiserver.yaml"),
            "spec:\n  containers:\n  - command: [kube-apiserver, --advertise-address=127.0.0.11]\n",
        )
        .expect("manifest");
        let data = root.join("var/lib/etcd/member/snap");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(data.join("db"), "original").expect("db");
        std::fs::set_permissions(
            root.join("var/lib/etcd"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        let events = Events::default();
        let controllers =
            CONTROLLERS.map(|name| FakePod::logged(pod_manifest(&manifests, name), events.clone()));
        Self {
            client_port,
            peer_port,
            etcd: FakePod::new(manifests.join("etcd.yaml")),
            apiserver: FakePod::logged(manifests.join("kube-apiserver.yaml"), events.clone()),
            controllers,
            events,
            tool: FakeTool::default(),
            dir,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The events logged since the last call.
    pub fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock().expect("events"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root().join("var/lib/etcd")
    }

    pub fn engine(&self) -> Engine {
        Engine {
            state: StateDir::new(self.root().join("state")),
            data_dir: None,
            etcd: Some(Box::new(self.etcd.clone())),
            apiserver: Some(Box::new(self.apiserver.clone())),
            controllers: controllers(&self.controllers),
            tool: Box::new(self.tool.clone()),
            host_name: "cp-1-host".into(),
            runner: Runner::default(),
            trust: Default::default(),
        }
    }

    /// Stages `bytes` as the snapshot of `id` the way a push leaves it.
    pub fn stage(&self, id: RestoreId, bytes: &[u8]) -> String {
        let state = StateDir::new(self.root().join("state"));
        let path = state.snapshot_path(id);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("stage");
        // As a push journals it, with what `snapshot status` (the fake tool) says.
        let sha = sha256(bytes);
        let mut journal = state.load(id).expect("journal");
        journal.staged = Some(Staged {
            sha256: sha.clone(),
            size: bytes.len() as u64,
            revision: 42,
            total_keys: 7,
        });
        state.save(&journal).expect("journal the staged snapshot");
        sha
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn request(id: RestoreId, step: Step, sha: &str) -> StepRequest {
    StepRequest {
        restore_id: id,
        step,
        facts: ClusterFacts {
            member_name: "cp-1".into(),
            peer_urls: vec![PEER.into()],
            initial_cluster: format!("cp-1={PEER},cp-2=https://127.0.0.12:2380"),
            cluster_token: id.cluster_token(),
            snapshot_sha256: sha.into(),
            bump_revision: 0,
            mark_compacted: false,
            skip_hash_check: false,
        },
        signature: None,
    }
}

/// The etcd 3.5.16 dir (`QUORATE_ETCD_DIR`, else tools/); `None` (skip, said so) only for a
/// non-root user outside CI: as root or under CI a missing etcd fails the test.
pub fn etcd_3516() -> Option<PathBuf> {
    let dir = std::env::var_os("QUORATE_ETCD_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/etcd-3.5.16"),
            PathBuf::from,
        );
    if dir.join("etcdutl").exists() {
        return Some(dir);
    }
    let why = format!(
        "no etcd 3.5.16 in {} (run tests/setup.sh or set QUORATE_ETCD_DIR)",
        dir.display()
    );
    let must = nix::unistd::Uid::effective().is_root() || std::env::var_os("CI").is_some();
    assert!(!must, "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// Claims this member for restore `id`, as the coordinator's STAGE phase does before a push.
pub fn claim(engine: &Engine, id: RestoreId) {
    let outcome = engine
        .execute(
            &request(id, Step::Claim, &"a".repeat(64)),
            quorate_agent::journal::Op::Run,
            &|_| {},
        )
        .expect("claim");
    assert!(outcome.ok, "claim: {}", outcome.message);
}

/// Every path under `root` with its content (`None` for a dir), to show that nothing changed.
pub fn listing(root: &Path) -> std::collections::BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.insert(path.clone(), None);
            out.extend(listing(&path));
        } else {
            out.insert(path.clone(), Some(std::fs::read(&path).expect("read")));
        }
    }
    out
}

/// Asserts that `root` and every dir under it is 0700 and every file 0600 (nothing readable by
/// group or others); returns the paths checked.
pub fn assert_private(root: &Path) -> Vec<PathBuf> {
    let mode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(root), 0o700, "{}", root.display());
    let mut seen = vec![root.to_owned()];
    for path in listing(root).into_keys() {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "mode of {}", path.display());
        seen.push(path);
    }
    seen
}

/// Serves `engine`'s gRPC service (plain HTTP/2) on a free loopback port; the server stops when
/// the test ends.
pub async fn serve(
    engine: Engine,
) -> quorate_proto::pb::agent_client::AgentClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(quorate_agent::AgentService::new(engine).into_server())
            .serve_with_incoming(incoming),
    );
    quorate_proto::pb::agent_client::AgentClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

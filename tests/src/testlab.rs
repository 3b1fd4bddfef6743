//! Labs for tests: each on its own `127.0.<net>.x` (a slot held by a file lock for the test's
//! life, so parallel test processes never share ports), stopped when dropped.

use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::lab::{Lab, LabLayout, LabRuntime, UpOptions};
use crate::tools::{EtcdTools, EtcdVersion};

/// One patience setting for every wait in the tests.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some`, or panics with `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lab that is torn down when dropped.
pub struct TestLab {
    pub lab: Lab,
    dir: Option<tempfile::TempDir>,
    _slot: Flock<File>,
}

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = self.lab.down() {
            eprintln!("lab down at the end of the test: {e:#}");
            // A lab that leaves something behind fails its test (unless it is failing already).
            assert!(
                std::thread::panicking(),
                "lab down left things behind: {e:#}"
            );
        }
        // A failed test keeps its lab dir (logs, journals) for whoever reads the failure.
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("the lab's files are kept in {}", dir.keep().display());
        }
    }
}

/// The tools for `version`, or `None` with the reason printed (for tests that skip): only etcd
/// 3.4 without root (which `tests/setup.sh` installs as root) is skipped; anything else missing
/// is a failure.
pub fn tools_or_skip(version: EtcdVersion) -> Option<EtcdTools> {
    match EtcdTools::find(version) {
        Ok(t) => Some(t),
        Err(e) if version == EtcdVersion::V34 && !nix::unistd::geteuid().is_root() => {
            eprintln!("SKIPPED: etcd 3.4 is not available here: {e:#}");
            None
        }
        Err(e) => panic!("etcd {version} is required: {e:#}"),
    }
}

/// Takes a free `127.0.<net>` slot (2..=250; 127.0.1.1 is a Debian host's own name) for this
/// process. A slot whose bridge or namespaces are still there (a test killed before its lab
/// went down) is passed over.
pub fn take_net_slot() -> (u8, Flock<File>) {
    let dir = std::env::temp_dir().join("quorate-lab-nets");
    std::fs::create_dir_all(&dir).expect("creating the net slot dir");
    let start = std::process::id() % 249;
    for k in 0..249u32 {
        let net = u8::try_from((start + k) % 249 + 2).expect("slot fits in u8");
        let file =
            File::create(dir.join(format!("{net}.lock"))).expect("creating a slot lock file");
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            if crate::hostns::net_in_use(net) {
                continue;
            }
            return (net, lock);
        }
    }
    panic!("no free lab net slot in {}", dir.display());
}

/// The `lab` binary built with this package.
pub fn lab_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("QUORATE_LAB_BIN") {
        return p.into();
    }
    // Integration tests live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("lab")
}

/// Brings up a lab of `members` on etcd `version` (static pods).
pub async fn up(members: u8, version: EtcdVersion) -> TestLab {
    up_with(members, version, LabRuntime::StaticPod).await
}

/// Brings up a lab of `members` on etcd `version`, run by `runtime`.
pub async fn up_with(members: u8, version: EtcdVersion, runtime: LabRuntime) -> TestLab {
    up_layout(members, version, runtime, LabLayout::default()).await
}

/// Brings up a lab of `members` on etcd `version`, run by `runtime`, with a production `layout`
/// (a data dir on its own disk, a WAL dir apart, ...).
pub async fn up_layout(
    members: u8,
    version: EtcdVersion,
    runtime: LabRuntime,
    layout: LabLayout,
) -> TestLab {
    up_inner(members, version, runtime, layout, true).await
}

/// Brings up bare hosts: etcd as static pods (kubeadm), no quorate agent, no agent certificates
/// on them; `DIR/certs` holds the CA and agent certificates for `quorate agents install`.
pub async fn up_bare(members: u8, version: EtcdVersion) -> TestLab {
    up_inner(
        members,
        version,
        LabRuntime::StaticPod,
        LabLayout::default(),
        false,
    )
    .await
}

async fn up_inner(
    members: u8,
    version: EtcdVersion,
    runtime: LabRuntime,
    layout: LabLayout,
    agents: bool,
) -> TestLab {
    let (net, slot) = take_net_slot();
    let dir = tempfile::Builder::new()
        .prefix("quorate-lab-")
        .tempdir()
        .expect("lab tempdir");
    let opts = UpOptions {
        dir: dir.path().to_owned(),
        members,
        version,
        net,
        agent_bin: agents.then(|| lab_bin().with_file_name("quorate-agent")),
        lab_bin: lab_bin(),
        patience: PATIENCE,
        runtime,
        faithful: crate::hostns::available(),
        layout,
    };
    let started = Instant::now();
    let lab = Lab::up(&opts).await.expect("lab up");
    eprintln!(
        "lab up: {members} members on etcd {version} ({runtime:?}) at 127.0.{net}.x in {:.1?}",
        started.elapsed()
    );
    TestLab {
        lab,
        dir: Some(dir),
        _slot: slot,
    }
}

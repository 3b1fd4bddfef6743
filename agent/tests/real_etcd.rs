//! The real static-pod runtime and the real restore tool against etcd 3.5.16 (from
//! tools/etcd-3.5.16, or `QUORATE_ETCD_DIR`), with a minimal kubelet stand-in in this file
//! (manifest present = process running), restoring with `--bump-revision`/`--mark-compacted`.
//! Without the etcd binaries the test fails as root or under CI, and skips with a message
//! otherwise (`bash tests/setup.sh` fetches them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quorate_agent::engine::Engine;
use quorate_agent::journal::{Op, StateDir};
use quorate_agent::runtime::{Component, StaticPod};
use quorate_agent::tool::CliTool;
use quorate_proto::model::{RestoreId, Step};

const IP: &str = "127.0.0.231";

/// How far the restore bumps the revision.
const BUMP: u64 = 1_000_000;

/// The revision the member is at, from `etcdctl get -w json`.
fn revision(tools: &Path, key: &str) -> i64 {
    let out = etcdctl(tools, &["get", key, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
    v["header"]["revision"].as_i64().expect("header.revision")
}

/// Stops the kubelet stand-in and its pod, also when the test panics.
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

/// Runs the manifest's command while the manifest exists; SIGTERM when it goes away.
fn kubelet(manifest: PathBuf, log: PathBuf) -> Kubelet {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let stop = flag;
        let mut child: Option<Child> = None;
        while !stop.load(Ordering::SeqCst) {
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

fn etcdctl(tools: &Path, args: &[&str]) -> String {
    let out = Command::new(tools.join("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://{IP}:12379"))
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

#[tokio::test(flavor = "multi_thread")]
async fn static_pod_restore_with_real_etcd() {
    let Some(tools) = common::etcd_3516() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let manifests = root.join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    let data_dir = root.join("var/lib/etcd");
    let peer = format!("http://{IP}:12380");
    let manifest = manifests.join("etcd.yaml");
    let argv = [
        tools.join("etcd").display().to_string(),
        "--name=q1".into(),
        format!("--data-dir={}", data_dir.display()),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=q1={peer}"),
        format!("--listen-peer-urls={peer}"),
        format!("--listen-client-urls=http://{IP}:12379"),
        format!("--advertise-client-urls=http://{IP}:12379"),
        format!("--listen-metrics-urls=http://{IP}:12381"),
    ];
    let yaml = format!(
        "spec:\n  containers:\n  - command:\n{}",
        argv.iter()
            .map(|a| format!("    - \"{a}\"\n"))
            .collect::<String>()
    );
    std::fs::write(&manifest, yaml).expect("manifest");
    let kubelet = kubelet(manifest.clone(), root.join("etcd.log"));

    eventually("etcd answers", || {
        Command::new(tools.join("etcdctl"))
            .args([
                format!("--endpoints=http://{IP}:12379"),
                "endpoint".into(),
                "health".into(),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    etcdctl(&tools, &["put", "before", "1"]);
    let snap = root.join("saved.db");
    etcdctl(&tools, &["snapshot", "save", &snap.display().to_string()]);
    etcdctl(&tools, &["put", "after", "2"]);
    let live = revision(&tools, "after");

    let engine = Arc::new(Engine {
        state: StateDir::new(root.join("state")),
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
    });
    let bytes = std::fs::read(&snap).expect("snapshot");
    let sha = common::sha256(&bytes);
    let id = RestoreId::new();
    let chunks = vec![Ok(quorate_proto::pb::SnapshotChunk {
        header: Some(quorate_proto::pb::SnapshotHeader {
            restore_id: id.to_string(),
            sha256: sha.clone(),
            size: bytes.len() as u64,
        }),
        data: bytes.into(),
    })];
    let mut req = common::request(id, Step::Claim, &sha);
    req.facts.member_name = "q1".into();
    req.facts.peer_urls = vec![peer.clone()];
    req.facts.initial_cluster = format!("q1={peer}");
    req.facts.bump_revision = BUMP;
    req.facts.mark_compacted = true;
    // A push is part of a claimed restore: claim first, as the coordinator's STAGE does.
    let claimed = engine.execute(&req, Op::Run, &|_| {}).expect("claim");
    assert!(claimed.ok, "{}", claimed.message);
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    let receipt =
        quorate_agent::snapshot::receive(Arc::clone(&engine), lock, tokio_stream::iter(chunks))
            .await
            .expect("staged");
    assert!(
        receipt.revision > 0 && receipt.total_keys >= 1,
        "{receipt:?}"
    );

    let described = quorate_agent::describe::describe(&engine).expect("describe");
    assert!(
        described.etcd_running
            && described.etcd_version == "3.5.16"
            && described
                .restore_tool
                .as_ref()
                .is_some_and(|t| t.supports_bump_revision),
        "{described:?}"
    );
    assert_eq!(described.metrics_url, format!("http://{IP}:12381"));

    let steps_engine = Arc::clone(&engine);
    tokio::task::spawn_blocking(move || {
        let mut req = req;
        for step in Step::ALL {
            req.step = step;
            let messages = std::sync::Mutex::new(Vec::new());
            let o = steps_engine
                .execute(&req, Op::Run, &|m| messages.lock().expect("lock").push(m))
                .unwrap_or_else(|e| panic!("{step}: {e}"));
            assert!(
                o.ok,
                "{step}: {} (log: {})",
                o.message,
                root_log(&steps_engine)
            );
            if step == Step::Restore {
                // PREPARE restored it while etcd served: RESTORE only renames.
                assert!(
                    o.message
                        .contains("moved the snapshot prepared before the halt"),
                    "{}",
                    o.message
                );
            }
            if step == Step::Halt {
                let aside = steps_engine.etcd_aside(id).expect("aside");
                assert!(
                    !steps_engine
                        .etcd()
                        .expect("etcd")
                        .is_running(Some(&aside))
                        .expect("readable with its manifest set aside")
                );
                assert!(
                    messages
                        .lock()
                        .expect("lock")
                        .iter()
                        .any(|m| m.contains("moving etcd.yaml"))
                );
            }
        }
    })
    .await
    .expect("steps");

    eventually("restored etcd answers", || {
        Command::new(tools.join("etcdctl"))
            .args([
                format!("--endpoints=http://{IP}:12379"),
                "endpoint".into(),
                "health".into(),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(etcdctl(&tools, &["get", "before"]).contains('1'));
    assert_eq!(
        etcdctl(&tools, &["get", "after"]),
        "",
        "keys written after the snapshot are gone"
    );
    let restored = revision(&tools, "before");
    assert!(
        restored > live && restored >= i64::try_from(BUMP).expect("bump fits"),
        "restored revision {restored}: not bumped above the live {live} by {BUMP}"
    );
    let old = Command::new(tools.join("etcdctl"))
        .args([
            format!("--endpoints=http://{IP}:12379"),
            "get".into(),
            "before".into(),
            format!("--rev={live}"),
        ])
        .output()
        .expect("etcdctl get --rev");
    let err = String::from_utf8_lossy(&old.stderr);
    assert!(
        !old.status.success() && err.contains("compacted"),
        "a read at the pre-restore revision {live} is refused as compacted: {err}"
    );
    let members = etcdctl(&tools, &["member", "list"]);
    assert!(
        members.contains(&format!(", q1, http://{IP}:12380,")),
        "restored as member q1 with its peer URL: {members}"
    );
    let preserved = PathBuf::from(format!("{}.quorate-{id}", data_dir.display()));
    assert!(preserved.join("member").is_dir());

    drop(kubelet);
}

fn root_log(engine: &Engine) -> String {
    let log = engine.state.root().parent().map(|p| p.join("etcd.log"));
    log.and_then(|l| std::fs::read_to_string(l).ok())
        .map(|t| t.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

//! Health as the agent probes it, against a real etcd (from tools/): not answering before it
//! starts, answering without a leader while its peer is missing, healthy once it has one; and
//! the version the running etcd reports. Skipped with a message when tools/ has no etcd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quorate_agent::AgentService;
use quorate_agent::engine::Engine;
use quorate_agent::health::{self, EtcdCredentials};
use quorate_agent::journal::StateDir;
use quorate_agent::manifest::{EtcdMember, PodCommand};
use quorate_agent::runtime::{Component, StaticPod};
use quorate_agent::tool::CliTool;
use quorate_proto::model::{EtcdHealthState, HealthEndpointKind, MemberHealth};
use quorate_proto::pb::{self, agent_server::Agent as _};

const IP: &str = "127.0.0.232";

fn tools() -> Option<(PathBuf, &'static str)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools");
    ["3.5.16", "3.5.1"].into_iter().find_map(|v| {
        let dir = root.join(format!("etcd-{v}"));
        dir.join("etcd").exists().then_some((dir, v))
    })
}

/// An etcd process, stopped when dropped (also when the test panics).
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
        let _gone = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _reaped = self.0.wait();
    }
}

fn argv(tools: &Path, data_dir: &Path, initial_cluster: &str) -> Vec<String> {
    vec![
        tools.join("etcd").display().to_string(),
        "--name=q1".into(),
        format!("--data-dir={}", data_dir.display()),
        format!("--initial-advertise-peer-urls=http://{IP}:22380"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--listen-peer-urls=http://{IP}:22380"),
        format!("--listen-client-urls=http://{IP}:22379"),
        format!("--advertise-client-urls=http://{IP}:22379"),
        format!("--listen-metrics-urls=http://{IP}:22381"),
    ]
}

fn start(argv: &[String], log: &Path) -> Etcd {
    let out = std::fs::File::create(log).expect("log");
    Etcd(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn etcd"),
    )
}

async fn health_of(member: &EtcdMember) -> MemberHealth {
    let endpoints = health::etcd_endpoints(member, &EtcdCredentials::default()).expect("endpoints");
    MemberHealth {
        member_name: member.name.clone(),
        etcd: health::probe_etcd(&endpoints).await,
        apiserver: None,
    }
}

async fn until_state(member: &EtcdMember, want: EtcdHealthState) -> MemberHealth {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = health_of(member).await;
        if h.state() == want {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "etcd never became {want:?}: {}",
            h.summary()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn not_answering_then_no_leader_then_healthy() {
    let Some((tools, version)) = tools() else {
        assert!(
            !nix::unistd::geteuid().is_root(),
            "no etcd in tools/: run tests/setup.sh (as root, a missing etcd is a failure)"
        );
        eprintln!("SKIPPED: no etcd in tools/ (run tests/setup.sh)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("etcd");
    // Two members planned, one started: it runs and never elects a leader.
    let lonely = argv(
        &tools,
        &data_dir,
        &format!("q1=http://{IP}:22380,q2=http://{IP}:22390"),
    );
    let yaml = |argv: &[String]| {
        format!(
            "spec:\n  containers:\n  - image: registry.k8s.io/etcd\n    command:\n{}",
            argv.iter()
                .map(|a| format!("    - \"{a}\"\n"))
                .collect::<String>()
        )
    };
    let manifest = dir.path().join("etcd.yaml");
    std::fs::write(&manifest, yaml(&lonely)).expect("manifest");
    let service = AgentService::new(Engine {
        state: StateDir::new(dir.path().join("state")),
        data_dir: None,
        etcd: Some(Box::new(StaticPod {
            component: Component::Etcd,
            manifest: manifest.clone(),
            stop_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(10),
        })),
        apiserver: None,
        controllers: Vec::new(),
        tool: Box::new(CliTool::default()),
        host_name: String::new(),
        runner: quorate_agent::child::Runner::default(),
        trust: Default::default(),
    });
    let member = EtcdMember::from_command(
        PodCommand::parse(&yaml(&lonely), Path::new("etcd.yaml")).expect("pod"),
    )
    .expect("member");

    let down = health_of(&member).await;
    assert_eq!(down.state(), EtcdHealthState::NotAnswering, "{down:?}");
    assert_eq!(down.etcd[0].kind, HealthEndpointKind::Metrics);
    assert!(
        down.summary().starts_with("not answering"),
        "{}",
        down.summary()
    );

    let etcd = start(&lonely, &dir.path().join("lonely.log"));
    let waiting = until_state(&member, EtcdHealthState::NoLeader).await;
    assert_eq!(waiting.etcd[0].status, Some(503));
    assert_eq!(
        waiting.summary(),
        format!(
            "answers but has no leader (http://{IP}:22381/health answered 503: RAFT NO LEADER)"
        )
    );
    let endpoints =
        health::etcd_endpoints(&member, &EtcdCredentials::default()).expect("endpoints");
    let (reported, source) = health::running_version(&endpoints)
        .await
        .expect("the running etcd says its version");
    assert_eq!(reported, version);
    assert_eq!(source, format!("http://{IP}:22381/metrics"));

    // Through the agent's own handlers.
    let answer = service
        .health(tonic::Request::new(pb::HealthRequest {}))
        .await
        .expect("Health")
        .into_inner();
    let seen = MemberHealth::try_from(answer).expect("a valid health report");
    assert_eq!(
        (seen.member_name.as_str(), seen.state()),
        ("q1", EtcdHealthState::NoLeader)
    );
    let described = service
        .describe(tonic::Request::new(pb::DescribeRequest {}))
        .await
        .expect("Describe")
        .into_inner();
    assert_eq!(
        described.health_probe,
        format!("metrics http://{IP}:22381/health")
    );
    assert_eq!(described.health_problem, "");
    // The image has no tag: the running etcd says its version.
    assert_eq!(described.etcd_version, version, "{described:?}");
    assert!(
        described.etcd_version_source.starts_with(&format!(
            "running etcd (http://{IP}:22381/metrics); image registry.k8s.io/etcd has no tag"
        )),
        "{}",
        described.etcd_version_source
    );
    // With a tag, the image says it, as on a kubeadm host where etcd's binary is in the image.
    std::fs::write(
        &manifest,
        yaml(&lonely).replace("registry.k8s.io/etcd\n", "registry.k8s.io/etcd:3.5.16-0\n"),
    )
    .expect("manifest");
    let described = service
        .describe(tonic::Request::new(pb::DescribeRequest {}))
        .await
        .expect("Describe")
        .into_inner();
    assert_eq!(
        (
            described.etcd_version.as_str(),
            described.etcd_version_source.as_str()
        ),
        ("3.5.16", "image registry.k8s.io/etcd:3.5.16-0")
    );
    drop(etcd);

    std::fs::remove_dir_all(&data_dir).expect("fresh data dir");
    let alone = argv(&tools, &data_dir, &format!("q1=http://{IP}:22380"));
    let _etcd = start(&alone, &dir.path().join("alone.log"));
    let healthy = until_state(&member, EtcdHealthState::Healthy).await;
    assert!(healthy.healthy(), "{healthy:?}");
}

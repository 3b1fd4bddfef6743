//! An apiserver-only host (external etcd): no [etcd] in its agent config. It is claimed, fenced,
//! unfenced and finished under its host name, refuses every etcd step, and says what it is in
//! Describe.

mod common;

use std::sync::atomic::Ordering;

use common::{FakePod, FakeTool};
use quorate_agent::engine::Engine;
use quorate_agent::error::AgentError;
use quorate_agent::journal::{Op, StateDir};
use quorate_agent::steps::CONTROLLERS;
use quorate_proto::model::{ClusterFacts, RestoreId, Step, StepRequest};
use quorate_proto::pb;

struct Host {
    dir: tempfile::TempDir,
    apiserver: FakePod,
    /// kube-controller-manager and kube-scheduler, as on a kubeadm control-plane host.
    controllers: [FakePod; 2],
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("etc/kubernetes/manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        let manifest = manifests.join("kube-apiserver.yaml");
        std::fs::write(
            &manifest,
            "spec:\n  containers:\n  - command: [kube-apiserver, --advertise-address=10.0.0.21]\n",
        )
        .expect("manifest");
        Self {
            apiserver: FakePod::new(manifest),
            controllers: CONTROLLERS.map(|c| FakePod::new(common::pod_manifest(&manifests, c))),
            dir,
        }
    }

    fn engine(&self) -> Engine {
        Engine {
            state: StateDir::new(self.dir.path().join("state")),
            data_dir: None,
            etcd: None,
            apiserver: Some(Box::new(self.apiserver.clone())),
            controllers: common::controllers(&self.controllers),
            tool: Box::new(FakeTool::default()),
            host_name: "api-1".into(),
            runner: quorate_agent::child::Runner::default(),
            trust: Default::default(),
        }
    }

    fn running(&self) -> bool {
        self.apiserver.running.load(Ordering::SeqCst)
    }

    fn controllers_running(&self) -> [bool; 2] {
        self.controllers.each_ref().map(FakePod::running)
    }
}

/// What the coordinator sends an apiserver-only host: its name, no peer URLs.
fn request(id: RestoreId, step: Step, name: &str) -> StepRequest {
    StepRequest {
        restore_id: id,
        step,
        facts: ClusterFacts {
            member_name: name.into(),
            peer_urls: vec![],
            initial_cluster: "cp-1=https://10.0.0.11:2380".into(),
            cluster_token: id.cluster_token(),
            snapshot_sha256: "a".repeat(64),
            bump_revision: 0,
            mark_compacted: false,
            skip_hash_check: false,
        },
        signature: None,
    }
}

fn ok(engine: &Engine, id: RestoreId, step: Step, op: Op) -> String {
    let outcome = engine
        .execute(&request(id, step, "api-1"), op, &|_| {})
        .unwrap_or_else(|e| panic!("{op:?} {step}: {e}"));
    assert!(outcome.ok, "{op:?} {step}: {}", outcome.message);
    outcome.message
}

#[test]
fn claim_fence_unfence_finish_run_under_the_host_name() {
    let host = Host::new();
    let engine = host.engine();
    let id = RestoreId::new();
    let claimed = ok(&engine, id, Step::Claim, Op::Run);
    assert!(claimed.contains("api-1 is claimed"), "{claimed}");
    ok(&engine, id, Step::Fence, Op::Run);
    assert!(!host.running(), "fenced: the apiserver is down");
    assert_eq!(
        host.controllers_running(),
        [false; 2],
        "and its controllers"
    );
    ok(&engine, id, Step::Unfence, Op::Run);
    assert!(host.running(), "unfenced: the apiserver is back");
    assert_eq!(host.controllers_running(), [true; 2], "and its controllers");
    let finished = ok(&engine, id, Step::Finish, Op::Run);
    assert!(
        finished.contains("api-1 is no longer claimed"),
        "{finished}"
    );
    assert_eq!(engine.state.active().expect("lock"), None);
}

#[test]
fn a_rollback_restarts_the_apiserver_and_releases_the_host() {
    let host = Host::new();
    let engine = host.engine();
    let id = RestoreId::new();
    ok(&engine, id, Step::Claim, Op::Run);
    ok(&engine, id, Step::Fence, Op::Run);
    assert!(!host.running());
    assert_eq!(host.controllers_running(), [false; 2]);
    ok(&engine, id, Step::Fence, Op::Revert);
    assert!(host.running(), "reverting fence starts the apiserver");
    assert_eq!(host.controllers_running(), [true; 2], "and its controllers");
    ok(&engine, id, Step::Claim, Op::Revert);
    assert_eq!(engine.state.active().expect("lock"), None);
}

#[test]
fn every_etcd_step_and_a_wrong_identity_are_refused_before_anything_changes() {
    let host = Host::new();
    let engine = host.engine();
    let id = RestoreId::new();
    ok(&engine, id, Step::Claim, Op::Run);
    for step in [
        Step::Prepare,
        Step::Halt,
        Step::Preserve,
        Step::Restore,
        Step::Start,
    ] {
        for op in [Op::Run, Op::Revert] {
            let err = engine
                .execute(&request(id, step, "api-1"), op, &|_| {})
                .err()
                .unwrap_or_else(|| panic!("{op:?} {step} must be refused"));
            assert!(matches!(err, AgentError::InvalidRequest(_)), "{err}");
            assert!(
                err.to_string().contains("apiserver-only host")
                    && err.to_string().contains("[[apiserver]]"),
                "{err}"
            );
        }
    }
    let err = engine
        .execute(&request(id, Step::Fence, "cp-1"), Op::Run, &|_| {})
        .expect_err("another name");
    assert!(
        err.to_string()
            .contains("this apiserver-only host is \"api-1\""),
        "{err}"
    );
    let mut with_peers = request(id, Step::Fence, "api-1");
    with_peers.facts.peer_urls = vec!["https://10.0.0.21:2380".into()];
    let err = engine
        .execute(&with_peers, Op::Run, &|_| {})
        .expect_err("peer URLs");
    assert!(err.to_string().contains("not a [[member]]"), "{err}");
    assert!(host.running(), "nothing was stopped");
    assert_eq!(host.apiserver.stops.load(Ordering::SeqCst), 0);
}

#[test]
fn describe_says_it_is_an_apiserver_host_and_names_it() {
    let host = Host::new();
    let engine = host.engine();
    let d = quorate_agent::describe::describe(&engine).expect("describe");
    assert_eq!(d.role, pb::AgentRole::ApiserverHost as i32);
    assert_eq!(d.host_name, "api-1");
    assert!(d.member_name.is_empty() && d.peer_urls.is_empty());
    assert_eq!(d.etcd_runtime, "none");
    assert!(d.apiserver_present && d.apiserver_running);
    let id = RestoreId::new();
    ok(&engine, id, Step::Claim, Op::Run);
    let d = quorate_agent::describe::describe(&engine).expect("describe");
    assert_eq!(d.active_restore_id, id.to_string());
    assert_eq!(d.active_step, pb::Step::Claim as i32);
    assert_eq!(d.active_step_state, pb::StepState::Done as i32);
}

/// Through the gRPC handlers, as the coordinator calls them: a request without peer URLs passes
/// the boundary checks for a fence, and a halt is refused as an invalid argument; Describe and
/// Health answer without etcd.
#[tokio::test]
async fn the_service_runs_a_fence_and_refuses_a_halt_as_invalid_argument() {
    use quorate_proto::pb::agent_server::Agent as _;
    use tokio_stream::StreamExt as _;

    let host = Host::new();
    let svc = quorate_agent::AgentService::new(host.engine());
    let id = RestoreId::new();
    for step in [Step::Claim, Step::Fence] {
        let stream = svc
            .run(tonic::Request::new(request(id, step, "api-1").into()))
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"))
            .into_inner();
        let events: Vec<_> = stream.collect().await;
        let last = events.last().expect("events").as_ref().expect("event");
        assert!(
            matches!(&last.event, Some(pb::step_event::Event::Outcome(o)) if o.ok),
            "{step}: {last:?}"
        );
    }
    assert!(!host.running());
    let status = svc
        .run(tonic::Request::new(request(id, Step::Halt, "api-1").into()))
        .await
        .expect_err("halt");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    let d = svc
        .describe(tonic::Request::new(pb::DescribeRequest {}))
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(d.role, pb::AgentRole::ApiserverHost as i32);
    assert!(d.health_probe.is_empty() && d.health_problem.is_empty());
    assert!(
        d.readiness_problem.contains("no [apiserver] section"),
        "{}",
        d.readiness_problem
    );
    // Health: the host's name and its kube-apiserver's /readyz, no etcd endpoint.
    let h = svc
        .health(tonic::Request::new(pb::HealthRequest {}))
        .await
        .expect("health")
        .into_inner();
    assert_eq!(h.member_name, "api-1");
    assert!(h.etcd.is_empty(), "{:?}", h.etcd);
    let readyz = h.apiserver.expect("the apiserver's readiness");
    assert_eq!(readyz.url, "https://10.0.0.21:6443/readyz");
    let h = quorate_proto::model::MemberHealth::try_from(pb::HealthResponse {
        apiserver: Some(readyz),
        ..h
    })
    .expect("a valid answer for the coordinator");
    assert!(!h.healthy());
}

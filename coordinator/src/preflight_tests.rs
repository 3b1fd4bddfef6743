//! Preflight against fake agents: what it refuses before anything changes, and the plan it makes.

use std::time::Duration;

use quorate_proto::model::{Describe, MemberHealth, RestoreId, StepRequest};
use quorate_proto::pb;
use sha2::{Digest, Sha256};

use super::*;
use crate::agent_client::{CallError, Chunk, Outcome};
use crate::plan::tests::{healthy, inventory};
use crate::snapshot::CheckedSnapshot;

/// An agent that only describes its member; preflight calls nothing else.
struct Describing(Result<pb::DescribeResponse, CallError>);

impl AgentClient for Describing {
    async fn describe(&self, _: Duration) -> Result<Describe, CallError> {
        self.0
            .clone()
            .map(|d| Describe::try_from(d).expect("a description that keeps the contract"))
    }
    async fn health(&self, _: Duration) -> Result<MemberHealth, CallError> {
        unreachable!("preflight never asks for health")
    }
    async fn push_snapshot(
        &self,
        _: RestoreId,
        _: &CheckedSnapshot,
        _: tokio::sync::mpsc::Receiver<Chunk>,
        _: Duration,
    ) -> Result<pb::SnapshotReceipt, CallError> {
        unreachable!("preflight stages nothing")
    }
    async fn run(&self, _: StepRequest, _: Duration) -> Result<Outcome, CallError> {
        unreachable!("preflight runs no step")
    }
    async fn revert(&self, _: StepRequest, _: Duration) -> Result<Outcome, CallError> {
        unreachable!("preflight reverts no step")
    }
}

/// A file with a valid appended sha256 (its content is not an etcd db), and a request for it
/// whose etcd dir has no tools (so `snapshot status` is skipped with a warning).
fn request(dir: &std::path::Path) -> Request {
    let mut body: Vec<u8> = (0..512 * 8).map(|i| (i % 251) as u8).collect();
    let digest = Sha256::digest(&body);
    body.extend_from_slice(&digest);
    let snapshot = dir.join("snap.db");
    std::fs::write(&snapshot, body).expect("snapshot");
    let tools = dir.join("no-tools");
    std::fs::create_dir_all(&tools).expect("tools dir");
    Request {
        inventory: dir.join("inventory.toml"),
        snapshot,
        etcd_dir: Some(tools),
        ..Request::default()
    }
}

#[tokio::test]
async fn every_agent_answering_gives_a_plan_for_every_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = inventory(3);
    let agents: Vec<Describing> = inv
        .members
        .iter()
        .map(|m| Describing(Ok(healthy(m))))
        .collect();
    let plan = check(&request(dir.path()), &inv, &agents)
        .await
        .expect("a plan");
    let names: Vec<&str> = plan.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["cp-1", "cp-2", "cp-3"]);
    assert_eq!(plan.cluster_token, format!("quorate-{}", plan.restore_id));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("no local etcdutl/etcdctl to run `snapshot status` here")),
        "{:?}",
        plan.warnings
    );
}

#[tokio::test]
async fn an_agent_that_does_not_answer_or_names_another_member_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = inventory(3);
    let mut wrong = healthy(&inv.members[2]);
    wrong.member_name = "cp-9".into();
    let agents = vec![
        Describing(Ok(healthy(&inv.members[0]))),
        Describing(Err(CallError::Unreachable("connection refused".into()))),
        Describing(Ok(wrong)),
    ];
    let err = check(&request(dir.path()), &inv, &agents)
        .await
        .expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("cp-2") && text.contains("connection refused"),
        "{text}"
    );
    assert!(text.contains("cp-9"), "{text}");
}

#[tokio::test]
async fn a_snapshot_whose_appended_sha256_does_not_match_is_refused_before_any_agent_is_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = inventory(3);
    let req = request(dir.path());
    let mut bytes = std::fs::read(&req.snapshot).expect("read");
    bytes[100] ^= 1;
    std::fs::write(&req.snapshot, bytes).expect("write");
    // Agents that would fail the test if asked.
    let agents: Vec<Describing> = (0..3)
        .map(|_| Describing(Err(CallError::Failed("asked".into()))))
        .collect();
    let err = check(&req, &inv, &agents).await.expect_err("refused");
    let text = format!("{err:#}");
    assert!(text.contains("sha256") && !text.contains("asked"), "{text}");
}

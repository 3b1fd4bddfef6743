//! A member with `trusted_snapshot_keys`: what a holder of a coordinator certificate can and
//! cannot make it stage or restore (fake runtime and restore tool; the lab's
//! `signed_snapshots` test runs the real thing).

mod common;

use std::sync::Arc;

use common::{Member, request, sha256};
use quorate_agent::engine::Engine;
use quorate_agent::error::AgentError;
use quorate_agent::journal::{Op, StateDir};
use quorate_agent::signing::Trust;
use quorate_proto::model::{ErrorCode, RestoreId, Step, StepRequest};
use quorate_proto::pb;
use quorate_proto::signature::{SignedFacts, SigningKey, SnapshotSignature};

fn sign(key: &SigningKey, bytes: &[u8]) -> SnapshotSignature {
    let facts = SignedFacts {
        sha256: sha256(bytes),
        size: bytes.len() as u64,
        revision: Some(42),
        total_keys: Some(7),
        signed_at: "2026-11-30T21:00:00Z".into(),
    };
    SnapshotSignature::sign(facts, key).expect("sign")
}

fn claim(id: RestoreId, sha: &str, sig: Option<SnapshotSignature>) -> StepRequest {
    StepRequest {
        signature: sig,
        ..request(id, Step::Claim, sha)
    }
}

fn untrusted(r: Result<impl std::fmt::Debug, AgentError>, what: &str) -> String {
    let e = r.expect_err(what);
    assert_eq!(e.error_code(), ErrorCode::UntrustedSnapshot, "{what}: {e}");
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{what}");
    status.message().to_owned()
}

async fn push(
    engine: &Arc<Engine>,
    id: RestoreId,
    bytes: &[u8],
) -> Result<pb::SnapshotReceipt, AgentError> {
    let chunks = vec![Ok(pb::SnapshotChunk {
        header: Some(pb::SnapshotHeader {
            restore_id: id.to_string(),
            sha256: sha256(bytes),
            size: bytes.len() as u64,
        }),
        data: bytes.to_vec().into(),
    })];
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    quorate_agent::snapshot::receive(Arc::clone(engine), lock, tokio_stream::iter(chunks)).await
}

#[tokio::test]
async fn a_member_requiring_signatures_stages_and_restores_only_the_signed_snapshot() {
    let m = Member::new();
    let (key, _) = SigningKey::generate().expect("key");
    let (other, _) = SigningKey::generate().expect("key");
    let engine = Arc::new(Engine {
        trust: Trust::new(vec![key.public().clone()]),
        ..m.engine()
    });
    let state = StateDir::new(m.root().join("state"));
    let (good, evil) = (
        b"the signed snapshot".as_slice(),
        b"another snapshot".as_slice(),
    );
    let id = RestoreId::new();
    let sha = sha256(good);

    // Describe names the keys it trusts.
    let described = quorate_agent::describe::describe(&engine).expect("describe");
    assert_eq!(described.trusted_snapshot_keys, [key.public().id()]);

    // Unsigned, signed by another key, a signature of another snapshot, a tampered signature:
    // each refused before anything changes.
    let mut tampered = sign(&key, good);
    tampered.facts.revision = Some(43);
    let refusals = [
        ("unsigned", claim(id, &sha, None)),
        ("other key", claim(id, &sha, Some(sign(&other, good)))),
        ("other snapshot", claim(id, &sha, Some(sign(&key, evil)))),
        ("tampered", claim(id, &sha, Some(tampered))),
    ];
    for (what, req) in refusals {
        let text = untrusted(engine.execute(&req, Op::Run, &|_| {}), what);
        assert!(
            text.contains("requires snapshots signed") && text.contains(key.public().id()),
            "{what}: {text}"
        );
        assert_eq!(state.active().expect("lock"), None, "{what}: claimed");
    }
    // A push without a (signed) claim is refused before a byte is written.
    let e = push(&engine, id, evil)
        .await
        .expect_err("push without a claim");
    assert_eq!(e.error_code(), ErrorCode::Precondition, "{e}");
    assert!(e.to_string().contains("is not claimed by restore"), "{e}");
    assert!(!state.partial_path(id).exists() && !state.snapshot_path(id).exists());

    // The signed snapshot: claimed, and the signature journaled.
    let o = engine
        .execute(&claim(id, &sha, Some(sign(&key, good))), Op::Run, &|_| {})
        .expect("claim");
    assert!(o.ok, "{}", o.message);
    assert!(state.load(id).expect("journal").signature.is_some());
    // Another snapshot pushed under this claim: refused; the signed one: staged.
    untrusted(push(&engine, id, evil).await, "another snapshot");
    assert!(!state.snapshot_path(id).exists());
    let receipt = push(&engine, id, good).await.expect("the signed snapshot");
    assert_eq!(receipt.sha256, sha);

    // PREPARE for another snapshot's sha256: refused; for the signed one: done.
    let prepare_other = request(id, Step::Prepare, &sha256(evil));
    untrusted(
        engine.prepare(&prepare_other, Op::Run).map(|_| ()),
        "prepare other",
    );
    // Trust rotated to another key mid-restore: PREPARE refuses the recorded one.
    let rotated = Engine {
        trust: Trust::new(vec![other.public().clone()]),
        ..m.engine()
    };
    let text = untrusted(
        rotated
            .prepare(&request(id, Step::Prepare, &sha), Op::Run)
            .map(|_| ()),
        "rotated",
    );
    assert!(text.contains("not trusted here"), "{text}");

    let o = engine
        .execute(&request(id, Step::Prepare, &sha), Op::Run, &|_| {})
        .expect("prepare");
    assert!(o.ok, "{}", o.message);
}

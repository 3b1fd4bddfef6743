//! PushSnapshot through the real gRPC service on 127.0.0.1: a push is part of a claimed restore,
//! its announced size is bounded by the free space less the reserve, and a stream that lies about
//! its size is cut or refused. Every refusal leaves the state dir (no partial file) and the
//! journal exactly as they were.

mod common;

use std::time::Duration;

use common::{Member, serve};
use quorate_agent::journal::{Op, StateDir};
use quorate_proto::model::{ErrorCode, RestoreId, Step};
use quorate_proto::pb::{self, agent_client::AgentClient};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

const DATA: &[u8] = b"0123456789abcdef-snapshot-bytes";

fn header(id: RestoreId, sha: &str, size: u64, data: &[u8]) -> pb::SnapshotChunk {
    pb::SnapshotChunk {
        header: Some(pb::SnapshotHeader {
            restore_id: id.to_string(),
            sha256: sha.into(),
            size,
        }),
        data: data.to_vec().into(),
    }
}

fn chunk(data: &[u8]) -> pb::SnapshotChunk {
    pb::SnapshotChunk {
        header: None,
        data: data.to_vec().into(),
    }
}

/// Pushes `DATA` announced as `size` bytes; the refusal's gRPC code, the contract's code and its
/// message.
async fn push_refused(
    client: &mut AgentClient<Channel>,
    id: RestoreId,
    size: u64,
) -> (tonic::Code, Option<ErrorCode>, String) {
    let chunks = vec![header(id, &common::sha256(DATA), size, &DATA[..5])]
        .into_iter()
        .chain(DATA[5..].chunks(7).map(chunk));
    refusal(client.push_snapshot(tokio_stream::iter(chunks)).await)
}

fn refusal(
    r: Result<tonic::Response<pb::SnapshotReceipt>, tonic::Status>,
) -> (tonic::Code, Option<ErrorCode>, String) {
    let status = r.expect_err("the push must be refused");
    let code = status
        .metadata()
        .get(ErrorCode::METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::from_name);
    (status.code(), code, status.message().to_owned())
}

fn state(m: &Member) -> StateDir {
    StateDir::new(m.root().join("state"))
}

#[tokio::test]
async fn a_push_without_a_claim_is_refused_and_writes_nothing() {
    let m = Member::new();
    let id = RestoreId::new();
    let mut client = serve(m.engine()).await;
    let (code, ours, msg) = push_refused(&mut client, id, DATA.len() as u64).await;
    assert_eq!(
        (code, ours),
        (
            tonic::Code::FailedPrecondition,
            Some(ErrorCode::Precondition)
        )
    );
    assert!(
        msg.contains(&format!("not claimed by restore {id}")),
        "{msg}"
    );
    assert!(
        !m.root().join("state").exists(),
        "not even the state dir is made"
    );

    // Claimed, then the claim reverted (a rolled-back restore): refused again, nothing changes.
    let engine = m.engine();
    common::claim(&engine, id);
    let revert = engine
        .execute(
            &common::request(id, Step::Claim, &"a".repeat(64)),
            Op::Revert,
            &|_| {},
        )
        .expect("revert the claim");
    assert!(revert.ok, "{}", revert.message);
    let before = common::listing(state(&m).root());
    let (code, _, msg) = push_refused(&mut client, id, DATA.len() as u64).await;
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(msg.contains("not claimed"), "{msg}");
    assert_eq!(common::listing(state(&m).root()), before);
}

#[tokio::test]
async fn a_push_for_another_restore_than_the_claim_is_refused() {
    let m = Member::new();
    let (claimed, other) = (RestoreId::new(), RestoreId::new());
    common::claim(&m.engine(), claimed);
    let before = common::listing(state(&m).root());
    let mut client = serve(m.engine()).await;
    let (code, ours, msg) = push_refused(&mut client, other, DATA.len() as u64).await;
    assert_eq!(
        (code, ours),
        (tonic::Code::FailedPrecondition, Some(ErrorCode::Locked))
    );
    assert!(
        msg.contains(&format!("locked by restore {claimed}")),
        "{msg}"
    );
    assert_eq!(common::listing(state(&m).root()), before);
    assert!(!state(&m).restore_dir(other).exists());
}

#[tokio::test]
async fn an_announced_size_beyond_the_free_space_less_the_reserve_is_refused() {
    let m = Member::new();
    let id = RestoreId::new();
    common::claim(&m.engine(), id);
    let before = common::listing(state(&m).root());
    let mut client = serve(m.engine()).await;
    let huge = 1u64 << 50;
    let (code, ours, msg) = push_refused(&mut client, id, huge).await;
    assert_eq!(
        (code, ours),
        (
            tonic::Code::FailedPrecondition,
            Some(ErrorCode::Precondition)
        )
    );
    for says in [
        &format!("{huge} bytes"),
        "free",
        "reserve",
        "stage_reserve_mib",
        "free space there",
    ] {
        assert!(msg.contains(says), "{says:?} in {msg}");
    }
    assert_eq!(common::listing(state(&m).root()), before);

    // A reserve as large as the free space refuses even a tiny snapshot.
    let free = nix::sys::statvfs::statvfs(state(&m).root()).expect("statvfs");
    let free_mib = (free.blocks_available() * free.fragment_size()) >> 20;
    let mut engine = m.engine();
    engine.runner.limits.stage_reserve_mib = Some(free_mib + 1);
    let mut reserved = serve(engine).await;
    let (code, _, msg) = push_refused(&mut reserved, id, DATA.len() as u64).await;
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(msg.contains("31 bytes") && msg.contains("reserve"), "{msg}");
    assert_eq!(common::listing(state(&m).root()), before);

    // The same push with the default reserve is staged.
    let receipt = client
        .push_snapshot(tokio_stream::iter(vec![header(
            id,
            &common::sha256(DATA),
            DATA.len() as u64,
            DATA,
        )]))
        .await
        .expect("staged")
        .into_inner();
    assert_eq!(receipt.size, DATA.len() as u64);
    common::assert_private(state(&m).root());
}

#[tokio::test]
async fn a_stream_longer_than_announced_is_cut_and_a_short_one_refused() {
    let m = Member::new();
    let id = RestoreId::new();
    common::claim(&m.engine(), id);
    let before = common::listing(state(&m).root());
    let mut client = serve(m.engine()).await;
    // A sender that never stops: only a cut ends this call.
    let endless = tokio_stream::iter(vec![header(id, &common::sha256(DATA), 10, &DATA[..5])])
        .chain(tokio_stream::iter(std::iter::repeat_with(|| {
            chunk(&[7u8; 4096])
        })));
    let answer = tokio::time::timeout(Duration::from_secs(20), client.push_snapshot(endless))
        .await
        .expect("the agent cuts a stream that sends more than it announced");
    let (code, ours, msg) = refusal(answer);
    assert_eq!(
        (code, ours),
        (tonic::Code::DataLoss, Some(ErrorCode::Corrupt))
    );
    assert!(msg.contains("more than the 10 bytes"), "{msg}");
    assert!(msg.contains("cut"), "{msg}");
    assert_eq!(common::listing(state(&m).root()), before);

    let announced = DATA.len() as u64 + 100;
    let (code, ours, msg) = push_refused(&mut client, id, announced).await;
    assert_eq!(
        (code, ours),
        (tonic::Code::DataLoss, Some(ErrorCode::Corrupt))
    );
    assert!(
        msg.contains(&format!("ended after {} of the {announced}", DATA.len())),
        "{msg}"
    );
    assert_eq!(common::listing(state(&m).root()), before);
}

#[tokio::test]
async fn a_finished_restore_takes_no_snapshot() {
    let m = Member::new();
    let id = RestoreId::new();
    let engine = m.engine();
    common::claim(&engine, id);
    let finish = engine
        .execute(
            &common::request(id, Step::Finish, &"a".repeat(64)),
            Op::Run,
            &|_| {},
        )
        .expect("finish");
    assert!(finish.ok, "{}", finish.message);
    let before = common::listing(state(&m).root());
    let mut client = serve(m.engine()).await;
    let (code, _, msg) = push_refused(&mut client, id, DATA.len() as u64).await;
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(msg.contains("not claimed"), "{msg}");
    assert_eq!(common::listing(state(&m).root()), before);
}

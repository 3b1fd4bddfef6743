//! The gRPC handlers, called in-process: input checks and the snapshot transfer.

mod common;

use std::sync::Arc;

use common::Member;
use quorate_agent::AgentService;
use quorate_agent::journal::StateDir;
use quorate_proto::model::{RestoreId, Step};
use quorate_proto::pb::{self, agent_server::Agent as _};
use tokio_stream::StreamExt as _;

fn chunks(
    id: RestoreId,
    sha: &str,
    data: &[u8],
    size: u64,
) -> Vec<Result<pb::SnapshotChunk, tonic::Status>> {
    let mut out = vec![Ok(pb::SnapshotChunk {
        header: Some(pb::SnapshotHeader {
            restore_id: id.to_string(),
            sha256: sha.into(),
            size,
        }),
        data: data[..3].to_vec().into(),
    })];
    for c in data[3..].chunks(4) {
        out.push(Ok(pb::SnapshotChunk {
            header: None,
            data: c.to_vec().into(),
        }));
    }
    out
}

async fn push(
    m: &Member,
    id: RestoreId,
    sha: &str,
    data: &[u8],
) -> Result<pb::SnapshotReceipt, quorate_agent::AgentError> {
    let engine = Arc::new(m.engine());
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    let stream = tokio_stream::iter(chunks(id, sha, data, data.len() as u64));
    quorate_agent::snapshot::receive(engine, lock, stream).await
}

#[tokio::test]
async fn push_stages_and_is_idempotent() {
    let m = Member::new();
    let id = RestoreId::new();
    common::claim(&m.engine(), id);
    let data = b"0123456789abcdef-snapshot";
    let sha = common::sha256(data);
    let r = push(&m, id, &sha, data).await.expect("staged");
    assert_eq!(
        (r.size, r.revision, r.total_keys, r.already_present),
        (data.len() as u64, 42, 7, false)
    );
    let state = StateDir::new(m.root().join("state"));
    assert_eq!(
        std::fs::read(state.snapshot_path(id)).expect("staged"),
        data
    );
    let again = push(&m, id, &sha, data).await.expect("again");
    assert!(again.already_present);
    assert_eq!(again.revision, 42);
    // Every Secret of the cluster is in the staged copy: nothing in the state dir is readable by
    // group or others (the dirs 0700, the snapshot, journal and lock 0600).
    let checked = common::assert_private(state.root());
    assert!(checked.contains(&state.snapshot_path(id)), "{checked:?}");
    assert!(checked.contains(&state.journal_path(id)), "{checked:?}");
}

#[tokio::test]
async fn push_with_wrong_sha_leaves_nothing() {
    let m = Member::new();
    let id = RestoreId::new();
    common::claim(&m.engine(), id);
    let before = common::listing(&m.root().join("state"));
    let data = b"0123456789abcdef-snapshot";
    let err = push(&m, id, &"b".repeat(64), data)
        .await
        .expect_err("wrong sha");
    assert_eq!(err.code(), tonic::Code::DataLoss);
    assert!(err.to_string().contains(&"b".repeat(64)), "{err}");
    let state = StateDir::new(m.root().join("state"));
    assert!(!state.snapshot_path(id).exists() && !state.partial_path(id).exists());
    assert_eq!(common::listing(state.root()), before, "nothing left behind");
    let err = push(&m, id, "not-hex", data).await.expect_err("bad header");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn push_is_refused_while_another_restore_holds_the_lock() {
    let m = Member::new();
    let (first, second) = (RestoreId::new(), RestoreId::new());
    common::claim(&m.engine(), first);
    let before = common::listing(&m.root().join("state"));
    let data = b"0123456789";
    let err = push(&m, second, &common::sha256(data), data)
        .await
        .expect_err("locked");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.error_code(), quorate_proto::model::ErrorCode::Locked);
    assert!(
        err.to_string().contains(&format!("quorate resume {first}")),
        "{err}"
    );
    assert_eq!(
        common::listing(&m.root().join("state")),
        before,
        "no partial file, no journal for the other restore, the first one's journal unchanged"
    );
}

#[tokio::test]
async fn bad_step_requests_are_invalid_argument() {
    let m = Member::new();
    let svc = AgentService::new(m.engine());
    let good = pb::StepRequest::from(common::request(
        RestoreId::new(),
        Step::Claim,
        &"a".repeat(64),
    ));
    let cases = [
        pb::StepRequest {
            restore_id: "not-a-uuid".into(),
            ..good.clone()
        },
        pb::StepRequest {
            step: 0,
            ..good.clone()
        },
        pb::StepRequest {
            step: 42,
            ..good.clone()
        },
        pb::StepRequest {
            facts: None,
            ..good.clone()
        },
    ];
    // Hostile values for each field a step writes somewhere (etcdutl's arguments, the env
    // file, the journal, logs): refused at the boundary, naming the field.
    let with = |edit: &dyn Fn(&mut pb::ClusterFacts)| {
        let mut r = good.clone();
        edit(r.facts.as_mut().expect("facts"));
        r
    };
    let hostile = [
        (
            with(&|f| f.member_name = "cp-1;touch /tmp/x".into()),
            "member name",
        ),
        (
            with(&|f| f.peer_urls = vec!["https://127.0.0.11:2380/$(id)".into()]),
            "peer URL",
        ),
        (
            with(&|f| f.initial_cluster.push_str("\nETCD_X=`id`")),
            "initial cluster",
        ),
        (
            with(&|f| f.cluster_token = RestoreId::new().cluster_token()),
            "cluster token",
        ),
        (
            with(&|f| f.cluster_token.push_str("'; touch /tmp/x; '")),
            "cluster token",
        ),
        (
            pb::StepRequest {
                restore_id: good.restore_id.to_uppercase(),
                ..good.clone()
            },
            "restore id",
        ),
    ];
    for (req, field) in &hostile {
        let status = svc
            .run(tonic::Request::new(req.clone()))
            .await
            .expect_err("hostile");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{req:?}");
        assert!(status.message().contains(field), "{field}: {status}");
    }
    assert_eq!(
        quorate_agent::service::active_restore(&svc),
        None,
        "a refused request takes no lock"
    );
    let cases = cases.into_iter().chain(hostile.into_iter().map(|(r, _)| r));
    for req in cases {
        let status = svc
            .run(tonic::Request::new(req.clone()))
            .await
            .expect_err("invalid");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{req:?}: {status}"
        );
        let status = svc
            .revert(tonic::Request::new(req))
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    // A good request streams exactly one outcome last.
    let stream = svc
        .run(tonic::Request::new(good))
        .await
        .expect("claim")
        .into_inner();
    let events: Vec<_> = stream.collect().await;
    let last = events.last().expect("events").as_ref().expect("ok event");
    assert!(matches!(&last.event, Some(pb::step_event::Event::Outcome(o)) if o.ok));
}

/// A snapshot renamed into place by an agent that died before journaling it is not trusted: the
/// next push replaces it.
#[tokio::test]
async fn an_unjournaled_staged_file_is_replaced_by_the_next_push() {
    let m = Member::new();
    let id = RestoreId::new();
    common::claim(&m.engine(), id);
    let state = StateDir::new(m.root().join("state"));
    std::fs::write(state.snapshot_path(id), b"left by a crash").expect("orphan");
    let data = b"0123456789abcdef-snapshot";
    let r = push(&m, id, &common::sha256(data), data)
        .await
        .expect("staged");
    assert!(!r.already_present);
    assert_eq!(
        std::fs::read(state.snapshot_path(id)).expect("staged"),
        data
    );
    common::assert_private(state.root());
}

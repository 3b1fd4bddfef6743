//! ListLeftovers and RemoveLeftovers through the real gRPC service on 127.0.0.1: the leftovers of
//! a finished and of a rolled-back restore are listed and removed; nothing of a restore still
//! holding the member, nothing not listed, and never a dir etcd uses.

mod common;

use std::path::{Path, PathBuf};

use common::{Member, request, serve};
use quorate_agent::engine::Engine;
use quorate_agent::journal::Op;
use quorate_proto::model::{LeftoverKind, RestoreEnd, RestoreId, RestoreLeftovers, Step};
use quorate_proto::pb::{self, agent_client::AgentClient};
use tonic::transport::Channel;

fn step(engine: &Engine, id: RestoreId, step: Step, sha: &str, op: Op) {
    let o = engine
        .execute(&request(id, step, sha), op, &|_| {})
        .unwrap_or_else(|e| panic!("{step} {op:?}: {e}"));
    assert!(o.ok, "{step} {op:?}: {}", o.message);
}

async fn list(client: &mut AgentClient<Channel>) -> Vec<RestoreLeftovers> {
    client
        .list_leftovers(pb::ListLeftoversRequest {})
        .await
        .expect("list")
        .into_inner()
        .restores
        .into_iter()
        .map(|r| RestoreLeftovers::try_from(r).expect("valid"))
        .collect()
}

fn of(restores: &[RestoreLeftovers], id: RestoreId) -> &RestoreLeftovers {
    restores
        .iter()
        .find(|r| r.restore_id == id)
        .unwrap_or_else(|| panic!("{id} not listed: {restores:?}"))
}

/// (path, removed, message) of each removal.
async fn remove(
    client: &mut AgentClient<Channel>,
    id: RestoreId,
    paths: &[&Path],
) -> Result<Vec<(PathBuf, bool, String)>, tonic::Status> {
    let answer = client
        .remove_leftovers(pb::RemoveLeftoversRequest {
            restore_id: id.to_string(),
            paths: paths.iter().map(|p| p.display().to_string()).collect(),
        })
        .await?;
    Ok(answer
        .into_inner()
        .removals
        .into_iter()
        .map(|r| (PathBuf::from(r.path), r.removed, r.message))
        .collect())
}

fn db(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("member/snap/db")).expect("db")
}

#[tokio::test]
async fn leftovers_of_ended_restores_are_listed_and_removed_and_nothing_else() {
    let m = Member::new();
    let engine = m.engine();
    let data = m.data_dir();
    // A: finished. B: rolled back after RESTORE (its restored copy set aside). C: holds the
    // member, etcd halted.
    let (a, b, c) = (RestoreId::new(), RestoreId::new(), RestoreId::new());
    let sha = m.stage(a, b"A:");
    for s in Step::ALL {
        step(&engine, a, s, &sha, Op::Run);
    }
    let sha = m.stage(b, b"B:");
    for s in [
        Step::Claim,
        Step::Fence,
        Step::Halt,
        Step::Preserve,
        Step::Restore,
    ] {
        step(&engine, b, s, &sha, Op::Run);
    }
    for s in [
        Step::Restore,
        Step::Preserve,
        Step::Halt,
        Step::Fence,
        Step::Claim,
    ] {
        step(&engine, b, s, &sha, Op::Revert);
    }
    let sha = m.stage(c, b"C:");
    for s in [Step::Claim, Step::Fence, Step::Halt] {
        step(&engine, c, s, &sha, Op::Run);
    }
    assert_eq!(db(&data), "A:cp-1", "A's data is live");
    let state = |id: RestoreId| engine.state.restore_dir(id);
    let preserved_a = PathBuf::from(format!("{}.quorate-{a}", data.display()));
    let failed_b = PathBuf::from(format!("{}.quorate-{b}.failed", data.display()));

    let mut client = serve(m.engine()).await;
    let restores = list(&mut client).await;
    assert_eq!(restores.len(), 3);
    let kinds = |r: &RestoreLeftovers| {
        r.leftovers
            .iter()
            .map(|l| (l.kind, l.path.clone()))
            .collect::<Vec<_>>()
    };
    let la = of(&restores, a);
    assert_eq!(la.end, RestoreEnd::Finished);
    assert!(la.ended_at > 0);
    assert_eq!(
        kinds(la),
        [
            (LeftoverKind::PreservedData, preserved_a.clone()),
            (LeftoverKind::RestoreState, state(a)),
        ]
    );
    assert!(la.leftovers[0].bytes >= "original".len() as u64);
    let lb = of(&restores, b);
    assert_eq!(lb.end, RestoreEnd::RolledBack);
    assert_eq!(
        kinds(lb),
        [
            (LeftoverKind::FailedCopy, failed_b.clone()),
            (LeftoverKind::RestoreState, state(b)),
        ]
    );
    let lc = of(&restores, c);
    assert_eq!(lc.end, RestoreEnd::Unfinished);
    assert!(lc.leftovers.is_empty());
    assert!(lc.why.contains("holds this member's lock"), "{}", lc.why);

    // Nothing of C, even its state dir named exactly.
    let refused = remove(&mut client, c, &[&state(c)])
        .await
        .expect_err("C is unfinished");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("nothing removed"), "{refused:?}");
    assert!(state(c).join("journal.json").exists());

    // Only what is listed for A: not the live data dir, not another restore's dir, not /etc.
    let other = remove(&mut client, a, &[&data, &failed_b, Path::new("/etc")])
        .await
        .expect("answered");
    for (path, removed, message) in &other {
        assert!(!removed, "{}", path.display());
        assert!(message.contains("not a leftover of restore"), "{message}");
    }
    assert_eq!(db(&data), "A:cp-1");
    assert!(failed_b.exists());

    // A's state dir goes only after its preserved dir: asked first, it is kept.
    let done = remove(&mut client, a, &[&state(a), &preserved_a])
        .await
        .expect("answered");
    assert!(
        !done[0].1 && done[0].2.contains("remove those first"),
        "{done:?}"
    );
    assert!(done[1].1, "{done:?}");
    assert!(!preserved_a.exists());
    let done = remove(&mut client, a, &[&state(a)])
        .await
        .expect("answered");
    assert!(done[0].1, "{done:?}");
    assert!(!state(a).exists());
    let gone = remove(&mut client, a, &[&state(a)])
        .await
        .expect_err("nothing left");
    assert!(gone.message().contains("left nothing"), "{gone:?}");

    let done = remove(&mut client, b, &[&failed_b, &state(b)])
        .await
        .expect("answered");
    assert!(done.iter().all(|d| d.1), "{done:?}");
    assert!(!failed_b.exists());

    let restores = list(&mut client).await;
    assert_eq!(
        restores.iter().map(|r| r.restore_id).collect::<Vec<_>>(),
        [c]
    );
    assert_eq!(db(&data), "A:cp-1", "the live data is untouched");
}

#[tokio::test]
async fn a_preserved_dir_etcd_was_pointed_at_is_never_a_leftover() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S:");
    for s in Step::ALL {
        step(&engine, id, s, &sha, Op::Run);
    }
    let preserved = PathBuf::from(format!("{}.quorate-{id}", m.data_dir().display()));
    // The operator went back to the original data by pointing etcd at it.
    let mut pointed = m.engine();
    pointed.data_dir = Some(preserved.clone());
    let mut client = serve(pointed).await;
    let restores = list(&mut client).await;
    let kinds: Vec<LeftoverKind> = of(&restores, id).leftovers.iter().map(|l| l.kind).collect();
    assert_eq!(kinds, [LeftoverKind::RestoreState]);
    let answer = remove(&mut client, id, &[&preserved])
        .await
        .expect("answered");
    assert!(!answer[0].1, "{answer:?}");
    assert_eq!(db(&preserved), "original");
}

#[tokio::test]
async fn an_unreadable_journal_keeps_its_restore_and_no_other() {
    let m = Member::new();
    let engine = m.engine();
    let (done, broken) = (RestoreId::new(), RestoreId::new());
    let sha = m.stage(done, b"A:");
    for s in Step::ALL {
        step(&engine, done, s, &sha, Op::Run);
    }
    let dir = engine.state.restore_dir(broken);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(engine.state.journal_path(broken), b"{ not a journal").expect("write");

    let mut client = serve(m.engine()).await;
    let restores = list(&mut client).await;
    let kept = of(&restores, broken);
    assert_eq!(kept.end, RestoreEnd::Unfinished, "{kept:?}");
    assert!(kept.why.contains("unreadable"), "{kept:?}");
    assert!(kept.leftovers.is_empty(), "{kept:?}");
    let ended = of(&restores, done);
    assert_eq!(ended.end, RestoreEnd::Finished, "{ended:?}");
    assert!(
        !ended.leftovers.is_empty(),
        "the finished one is still listed: {ended:?}"
    );
    assert!(dir.exists(), "the unreadable restore's dir is kept");
}

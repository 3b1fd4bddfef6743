//! PRESERVE, RESTORE and START refuse unless etcd is provably down: HALT done in the journal, no
//! etcd process (the runtime's view) and every listen port closed. A doubt is a refusal.

mod common;

use std::net::TcpListener;
use std::sync::atomic::Ordering;

use common::{Member, request};
use quorate_agent::engine::Engine;
use quorate_agent::error::AgentError;
use quorate_agent::journal::Op;
use quorate_proto::model::{RestoreId, Step};

fn run(engine: &Engine, id: RestoreId, step: Step, sha: &str) {
    let o = engine
        .execute(&request(id, step, sha), Op::Run, &|_| {})
        .unwrap_or_else(|e| panic!("{step}: {e}"));
    assert!(o.ok, "{step}: {}", o.message);
}

fn refused(engine: &Engine, id: RestoreId, step: Step, op: Op, sha: &str) -> String {
    let err: AgentError = engine
        .execute(&request(id, step, sha), op, &|_| {})
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{step}: {err}");
    err.to_string()
}

/// The data dir still holds the original, in place.
fn untouched(m: &Member) {
    let db = m.data_dir().join("member/snap/db");
    assert_eq!(std::fs::read_to_string(db).expect("db"), "original");
}

#[test]
fn preserve_needs_halt_done_in_this_agents_journal() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    run(&engine, id, Step::Claim, &sha);
    // etcd is even stopped (by hand, say): without HALT in the journal, still no.
    m.etcd.running.store(false, Ordering::SeqCst);
    let msg = refused(&engine, id, Step::Preserve, Op::Run, &sha);
    assert!(
        msg.contains(&format!(
            "restore {id} has not halted etcd on cp-1 (HALT is not run in this agent's journal)"
        )),
        "{msg}"
    );
    untouched(&m);
}

#[test]
fn a_listener_on_a_member_port_refuses_preserve_restore_and_start() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"SNAP:");
    for step in [Step::Claim, Step::Fence, Step::Halt] {
        run(&engine, id, step, &sha);
    }
    let squatter = TcpListener::bind(("127.0.0.1", m.peer_port)).expect("bind the peer port");
    let msg = refused(&engine, id, Step::Preserve, Op::Run, &sha);
    assert!(
        msg.contains(&format!(
            "step preserve refused on cp-1: 127.0.0.1:{} (--listen-peer-urls) accepts connections",
            m.peer_port
        )),
        "{msg}"
    );
    untouched(&m);
    drop(squatter);
    run(&engine, id, Step::Preserve, &sha);

    let squatter = TcpListener::bind(("127.0.0.1", m.client_port)).expect("bind the client port");
    let msg = refused(&engine, id, Step::Restore, Op::Run, &sha);
    assert!(
        msg.contains(&format!(
            "127.0.0.1:{} (--listen-client-urls)",
            m.client_port
        )),
        "{msg}"
    );
    assert_eq!(m.tool.restores(), 0, "nothing restored");
    drop(squatter);
    run(&engine, id, Step::Restore, &sha);

    let squatter = TcpListener::bind(("127.0.0.1", m.peer_port)).expect("bind the peer port");
    let msg = refused(&engine, id, Step::Start, Op::Run, &sha);
    assert!(msg.contains("accepts connections"), "{msg}");
    let msg = refused(&engine, id, Step::Restore, Op::Revert, &sha);
    assert!(msg.contains("accepts connections"), "{msg}");
    assert_eq!(m.etcd.starts.load(Ordering::SeqCst), 0, "etcd not started");
    drop(squatter);
    run(&engine, id, Step::Start, &sha);
}

#[test]
fn an_etcd_still_running_or_a_state_that_cannot_be_read_is_a_refusal() {
    let m = Member::new();
    let engine = m.engine();
    let id = RestoreId::new();
    let sha = m.stage(id, b"S");
    for step in [Step::Claim, Step::Halt] {
        run(&engine, id, step, &sha);
    }
    // An etcd of this member came back (someone put the manifest back by hand).
    m.etcd.running.store(true, Ordering::SeqCst);
    let msg = refused(&engine, id, Step::Preserve, Op::Run, &sha);
    assert!(msg.contains("etcd is still running on cp-1"), "{msg}");
    m.etcd.running.store(false, Ordering::SeqCst);
    // Whether it runs cannot be read: not "not running", a refusal saying what failed.
    *m.etcd.unreadable.lock().expect("lock") =
        Some("listing the processes in /proc: Permission denied".into());
    let msg = refused(&engine, id, Step::Preserve, Op::Run, &sha);
    assert!(
        msg.contains("cannot tell whether etcd is down")
            && msg.contains("listing the processes in /proc"),
        "{msg}"
    );
    untouched(&m);
    *m.etcd.unreadable.lock().expect("lock") = None;
    run(&engine, id, Step::Preserve, &sha);
}

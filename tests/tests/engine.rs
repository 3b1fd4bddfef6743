//! The restore engine's fault matrix beyond the phase boundaries (faults.rs), on real etcd:
//! FINISH failing on one member or its coordinator killed during it, a coordinator killed in the
//! middle of a phase (one member still inside the step, the others done with it) on 3 and 5
//! members, and an apiserver that will not start again after VERIFY. Past VERIFY nothing is
//! rolled back: the data stays restored and `quorate resume` finishes once it can; before it,
//! `quorate resume` and `quorate rollback` both end exactly where an uninterrupted run would.
//!
//! Needs the failpoints compiled in (the lab crate's default feature `failpoints`).
#![cfg(all(feature = "failpoints", debug_assertions))]
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use quorate_lab::faults;
use quorate_lab::matrix::{self, EXIT_PAST_NO_RETURN, Setup};
use quorate_lab::realfaults;

/// One case of a coordinator killed inside a phase: the agent step the phase runs, the member
/// held inside it (by `agent::before-<step>=sleep(hold)`), and how long it is held. HALT holds
/// the leader whatever `held` says: HALT stops the followers first and the leader last, so only
/// the leader can be inside HALT while every other member is done with it.
struct MidPhase {
    phase: &'static str,
    step: &'static str,
    held: usize,
    hold: Duration,
}

/// The phases of the 3-member matrix. In QUORUM the held member is the last one started (cp-3 of
/// 3), so the others have started before it.
const MID_PHASE_3: [MidPhase; 4] = [
    MidPhase {
        phase: "halt",
        step: "halt",
        held: 2,
        hold: Duration::from_secs(20),
    },
    MidPhase {
        phase: "preserve",
        step: "preserve",
        held: 1,
        hold: Duration::from_secs(10),
    },
    MidPhase {
        phase: "restore",
        step: "restore",
        held: 0,
        hold: Duration::from_secs(10),
    },
    MidPhase {
        phase: "quorum",
        step: "start",
        held: 2,
        hold: Duration::from_secs(10),
    },
];

/// On 5 members: HALT (held on the leader) and QUORUM (held on cp-5, started after cp-1..cp-4).
const MID_PHASE_5: [MidPhase; 2] = [
    MidPhase {
        phase: "halt",
        step: "halt",
        held: 1,
        hold: Duration::from_secs(20),
    },
    MidPhase {
        phase: "quorum",
        step: "start",
        held: 4,
        hold: Duration::from_secs(10),
    },
];

/// Waits until the newest restore (after `known` older ones) has a state dir; returns its id.
async fn new_restore_id(s: &Setup, known: usize) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = faults::restore_ids(&s.lab);
        if ids.len() > known {
            return Ok(ids.last().expect("one id").clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "no restore began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until host `i`'s agent journal of restore `id` shows `step` in `state`.
async fn wait_step(s: &Setup, i: usize, id: &str, step: &str, state: &str) -> anyhow::Result<()> {
    let file = s.lab.hosts()[i].path(&format!("var/lib/quorate-agent/restores/{id}/journal.json"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if step_state(&file, step).as_deref() == Some(state) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}'s agent never recorded {step} {state} for restore {id} (it has {:?})",
            s.lab.hosts()[i].name,
            step_state(&file, step)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host whose etcd is the leader now.
async fn leader_index(s: &Setup) -> usize {
    let tls = s.lab.etcd_tls();
    for (i, host) in s.lab.hosts().iter().enumerate() {
        let mut client = quorate_lab::etcd::member_client(&host.client_url(), &tls)
            .await
            .expect("a client");
        let status = client.status().await.expect("status");
        let me = status.header().map(|h| h.member_id());
        if me == Some(status.leader()) {
            return i;
        }
    }
    panic!("no member reports itself leader");
}

fn step_state(journal: &std::path::Path, step: &str) -> Option<String> {
    let text = std::fs::read_to_string(journal).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["steps"][step]["state"].as_str().map(str::to_owned)
}

/// Starts a restore with member `c.held` held inside `c.step`, waits until every other member has
/// done the step, and kills the coordinator (SIGKILL) there, in the middle of the phase. Returns
/// the restore id.
async fn crash_mid_phase(s: &mut Setup, c: &MidPhase) -> String {
    let members = s.lab.hosts().len();
    let held = if c.step == "halt" {
        leader_index(s).await
    } else {
        c.held
    };
    let c = &MidPhase { held, ..*c };
    let held_name = s.lab.hosts()[c.held].name.clone();
    matrix::restart_agent(
        &mut s.lab,
        c.held,
        Some(&format!(
            "agent::before-{}=sleep({})",
            c.step,
            c.hold.as_millis()
        )),
    )
    .await;
    let known = faults::restore_ids(&s.lab).len();
    let child = faults::spawn_restore(&s.lab, &s.snapshot, "").expect("quorate");
    let id = match new_restore_id(s, known).await {
        Ok(id) => id,
        Err(e) => matrix::fail_with(child, "the restore began", &e),
    };
    let held_at = Instant::now();
    for i in (0..members).filter(|i| *i != c.held) {
        if let Err(e) = wait_step(s, i, &id, c.step, "done").await {
            matrix::fail_with(child, "the other members did the step", &e);
        }
    }
    if let Err(e) = wait_step(s, c.held, &id, c.step, "running").await {
        matrix::fail_with(child, &format!("{held_name} is inside the step"), &e);
    }
    matrix::crash(child);
    // The crash came inside the phase: the held member had not finished its step.
    let file =
        s.lab.hosts()[c.held].path(&format!("var/lib/quorate-agent/restores/{id}/journal.json"));
    assert_eq!(
        step_state(&file, c.step).as_deref(),
        Some("running"),
        "{held_name} was still inside {} when the coordinator died ({:.1?} after the restore began; increase the hold)",
        c.step,
        held_at.elapsed()
    );
    let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
    assert!(
        ok && status.contains(&format!("quorate resume {id}")),
        "status names the next step: {status}"
    );
    id
}

/// Runs the mid-phase cases on one lab: each crashed, then resumed (or rolled back).
async fn mid_phase_matrix(s: &mut Setup, cases: &[MidPhase], rollback: bool) {
    let members = s.lab.hosts().len();
    for c in cases {
        let case_started = Instant::now();
        let verb = if rollback { "rollback" } else { "resume" };
        let case = format!(
            "{members} members, coordinator killed in {} while {} is inside {}, then {verb}",
            c.phase,
            s.lab.hosts()[c.held].name,
            c.step
        );
        let original = matrix::fresh_original(s).await;
        let id = crash_mid_phase(s, c).await;
        let (ok, text) = faults::quorate_on(&s.lab, verb, &id).expect(verb);
        assert!(ok, "{case}: {text}");
        if rollback {
            matrix::assert_back_to(s, &original, &case).await;
        } else {
            matrix::assert_restored(s, &original, &case).await;
        }
        let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
        let expected = if rollback { "rolled back" } else { "finished" };
        assert!(ok && status.contains(expected), "{case}: status: {status}");
        eprintln!("{case}: ok in {:.1?}", case_started.elapsed());
    }
}

#[tokio::test]
async fn a_coordinator_killed_mid_phase_on_3_members_is_resumed_to_the_snapshot() {
    let mut s = matrix::setup(3).await;
    mid_phase_matrix(&mut s, &MID_PHASE_3, false).await;
}

#[tokio::test]
async fn a_coordinator_killed_mid_phase_on_3_members_is_rolled_back_to_the_original_cluster() {
    let mut s = matrix::setup(3).await;
    mid_phase_matrix(&mut s, &MID_PHASE_3, true).await;
}

#[tokio::test]
async fn a_coordinator_killed_mid_phase_on_5_members_is_resumed_or_rolled_back() {
    let mut s = matrix::setup(5).await;
    mid_phase_matrix(&mut s, &MID_PHASE_5, false).await;
    mid_phase_matrix(&mut s, &MID_PHASE_5, true).await;
}

/// FINISH rolls forward only: `rollback`, even with `--force`, is refused and points at
/// `resume`, and every member stays on the snapshot's data.
async fn assert_no_rollback_after_finish_began(
    s: &Setup,
    original: &quorate_lab::faults::ClusterState,
    id: &str,
    case: &str,
) {
    for args in [&["rollback", id][..], &["rollback", id, "--force"][..]] {
        let (code, refused) = faults::quorate_with(&s.lab, args).expect("rollback");
        assert!(
            code.is_some_and(|c| c != 0),
            "{case}: {args:?} refused: {refused}"
        );
        assert!(
            refused.contains(&format!("quorate resume {id}")),
            "{case}: {args:?} points at resume: {refused}"
        );
    }
    matrix::assert_on_snapshot(s, original, case).await;
}

/// FINISH is past the point of no return: an agent failing it, or the coordinator dying during
/// it, leaves every member on the verified snapshot data; nothing is rolled back, a rollback is
/// refused (FINISH rolls forward only), and `quorate resume` finishes the restore.
#[tokio::test]
async fn finish_failing_on_one_member_or_interrupted_stops_past_the_point_of_no_return() {
    let mut s = matrix::setup(3).await;

    let case = "cp-2's agent fails FINISH";
    let original = matrix::fresh_original(&s).await;
    matrix::restart_agent(&mut s.lab, 1, Some("agent::before-finish=return(injected)")).await;
    let out = faults::spawn_restore(&s.lab, &s.snapshot, "")
        .expect("quorate")
        .wait_with_output()
        .expect("quorate output");
    let text = matrix::output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_PAST_NO_RETURN),
        "{case}: stops past the point of no return: {text}"
    );
    let events = realfaults::json_events(&out.stdout);
    assert!(
        !events.iter().any(|e| e["outcome"] == "rolled-back"),
        "{case}: nothing rolled back: {text}"
    );
    let stopped = events
        .iter()
        .find(|e| e["event"] == "result" && e["outcome"] == "past-no-return")
        .unwrap_or_else(|| panic!("{case}: a stopped event: {text}"));
    let error = stopped["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("finish") && error.contains("cp-2") && !error.contains("member cp-1"),
        "{case}: the error names the phase and cp-2 only: {error}"
    );
    matrix::assert_restored(&s, &original, case).await;
    let id = faults::restore_ids(&s.lab).pop().expect("restore id");
    assert_no_rollback_after_finish_began(&s, &original, &id, case).await;
    matrix::restart_agent(&mut s.lab, 1, None).await;
    let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
    assert!(ok, "{case}: resume finishes it: {text}");
    let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
    assert!(
        ok && status.contains("finished"),
        "{case}: status: {status}"
    );
    matrix::assert_restored(&s, &original, case).await;
    eprintln!("{case}: stopped with exit code 3, resumed to the end");

    let c = MidPhase {
        phase: "finish",
        step: "finish",
        held: 2,
        hold: Duration::from_secs(10),
    };
    let case = "coordinator killed while cp-3 is inside FINISH";
    let original = matrix::fresh_original(&s).await;
    let id = crash_mid_phase(&mut s, &c).await;
    matrix::assert_on_snapshot(&s, &original, case).await;
    assert_no_rollback_after_finish_began(&s, &original, &id, case).await;
    let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
    assert!(ok, "{case}: resume finishes it: {text}");
    let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
    assert!(
        ok && status.contains("finished"),
        "{case}: status: {status}"
    );
    matrix::assert_restored(&s, &original, case).await;
    eprintln!("{case}: rollback refused, resumed to the end");
}

/// The apiserver image of host `i`, as its kubelet looks it up.
fn apiserver_image(s: &Setup, i: usize) -> std::path::PathBuf {
    let images = s.lab.hosts()[i].path(quorate_lab::kubelet::IMAGES_DIR);
    let image = format!(
        "registry.k8s.io/kube-apiserver:{}",
        quorate_lab::layout::KUBERNETES_VERSION
    );
    quorate_lab::kubelet::image_rootfs(&images, &image)
        .expect("image reference")
        .parent()
        .expect("the image's dir")
        .to_owned()
}

/// A real fault after VERIFY: cp-2's kube-apiserver image is gone from the node, so its kubelet
/// cannot start it again in UNFENCE. The restore stops with exit code 3, nothing is rolled
/// back, every member stays on the restored data; once the image is back, `resume` finishes.
#[tokio::test]
async fn an_apiserver_that_will_not_start_after_verify_leaves_the_data_restored_and_resume_finishes()
 {
    let mut s = matrix::setup(3).await;
    if !s.lab.hosts()[1].faithful() {
        eprintln!("SKIPPED: removing one host's image needs hosts with their own file system");
        return;
    }
    let case = "cp-2's kube-apiserver image gone";
    // The agent gives the apiserver 15 s to be ready, not its default 2 min.
    let config = s.lab.hosts()[1].path("etc/quorate/agent.toml");
    let text = std::fs::read_to_string(&config).expect("agent config");
    assert!(text.contains("\n[apiserver]\n"), "{text}");
    std::fs::write(
        &config,
        text.replace(
            "\n[apiserver]\n",
            "\n[apiserver]\nstart_timeout = \"15s\"\n",
        ),
    )
    .expect("agent config");
    matrix::restart_agent(&mut s.lab, 1, None).await;
    let original = matrix::fresh_original(&s).await;
    // A running container keeps its binary; the image is looked up when it starts again.
    let image = apiserver_image(&s, 1);
    let moved = image.with_extension("removed");
    std::fs::rename(&image, &moved).expect("remove cp-2's apiserver image");

    let started = Instant::now();
    let out = faults::spawn_restore(&s.lab, &s.snapshot, "")
        .expect("quorate")
        .wait_with_output()
        .expect("quorate output");
    let took = started.elapsed();
    let text = matrix::output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_PAST_NO_RETURN),
        "{case}: stops past the point of no return: {text}"
    );
    let events = realfaults::json_events(&out.stdout);
    assert!(
        !events.iter().any(|e| e["outcome"] == "rolled-back"),
        "{case}: nothing rolled back: {text}"
    );
    let stopped = events
        .iter()
        .find(|e| e["event"] == "result" && e["outcome"] == "past-no-return")
        .unwrap_or_else(|| panic!("{case}: a stopped event: {text}"));
    let error = stopped["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("unfence") && error.contains("cp-2"),
        "{case}: the error names UNFENCE and cp-2: {error}"
    );
    // The data stays restored and verified on every member, and it serves.
    matrix::assert_on_snapshot(&s, &original, case).await;
    let cp2 = s.lab.hosts()[1].clone();
    assert_ne!(
        s.lab.apiserver_readyz(&cp2).await,
        Some(200),
        "{case}: cp-2's apiserver is not running"
    );
    let pod_log = std::fs::read_to_string(cp2.path("var/log/pods/kube-apiserver.log"))
        .expect("cp-2's apiserver pod log");
    assert!(
        pod_log.contains("ErrImageNeverPull"),
        "{case}: cp-2's kubelet could not start the apiserver for want of its image: {pod_log}"
    );
    let id = faults::restore_ids(&s.lab).pop().expect("restore id");
    let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
    assert!(
        ok && status.contains(&format!("quorate resume {id}")),
        "{case}: status says resume: {status}"
    );

    // The operator puts the image back; the kubelet starts the apiserver on its next retry.
    std::fs::rename(&moved, &image).expect("put the image back");
    let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
    assert!(ok, "{case}: resume finishes it: {text}");
    let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
    assert!(
        ok && status.contains("finished"),
        "{case}: status: {status}"
    );
    matrix::assert_restored(&s, &original, case).await;
    eprintln!("{case}: stopped after {took:.1?} with exit code 3, data kept, resumed to the end");
}

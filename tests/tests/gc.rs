//! `quorate gc` on real etcd: after a restore and a rolled-back one, it lists the original data
//! dirs and the failed copies on every member, keeps them while younger than --older-than,
//! removes them with --yes, and never touches a restore held mid-way; the cluster keeps serving
//! its data throughout.
//!
//! Needs the failpoints compiled in (the lab crate's default feature `failpoints`).
#![cfg(all(feature = "failpoints", debug_assertions))]

use std::path::PathBuf;

use quorate_lab::lab::Lab;
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{faults, scenario, testlab};

fn gc(lab: &Lab, extra: &[&str]) -> (Option<i32>, String) {
    let inventory = lab.dir().join("inventory.toml");
    let mut args = vec!["gc", "--inventory", inventory.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    faults::quorate_with(lab, &args).expect("quorate gc")
}

/// Every path on the lab's hosts whose name carries `id` (data dirs, copies, agent state).
fn traces(lab: &Lab, id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for host in lab.hosts() {
        for dir in [
            host.path("var/lib"),
            host.path("var/lib/quorate-agent/restores"),
        ] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().contains(id) {
                    out.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn gc_removes_what_ended_restores_left_and_nothing_of_one_held_midway() {
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let cp1 = lab.hosts()[0].clone();
    let snapshot = lab.dir().join("snapshot.db");
    scenario::save_snapshot(&lab, &cp1, &snapshot).expect("snapshot");

    // A restore that finished.
    let out = scenario::quorate_restore(&lab, &snapshot, &["--yes"]).expect("quorate");
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let finished = faults::restore_ids(&lab).pop().expect("an id");
    // A restore that failed after RESTORE and rolled back (its restored copies set aside).
    let child = faults::spawn_restore(
        &lab,
        &snapshot,
        "coordinator::after-restore=return(injected)",
    )
    .expect("quorate");
    let out = child.wait_with_output().expect("quorate");
    assert!(!out.status.success());
    let rolled_back = faults::restore_ids(&lab).pop().expect("an id");
    assert_ne!(rolled_back, finished);
    let before = faults::cluster_state(&lab).await.expect("state");
    // A restore held before FENCE (staged and prepared), its coordinator gone: every member
    // holds its lock.
    let mut child =
        faults::spawn_restore(&lab, &snapshot, "coordinator::before-fence=sleep(600000)")
            .expect("quorate");
    let held = faults::wait_journal(&lab, 2, "prepare", "done")
        .await
        .expect("staged");
    child.kill().expect("kill the coordinator");
    let _ = child.wait();

    let leftovers = [traces(&lab, &finished), traces(&lab, &rolled_back)];
    let held_before = traces(&lab, &held);
    for (id, paths, kind) in [
        (&finished, &leftovers[0], format!(".quorate-{finished}")),
        (
            &rolled_back,
            &leftovers[1],
            format!(".quorate-{rolled_back}.failed"),
        ),
    ] {
        // Per member: a data dir (or failed copy) and the agent's own dir of the restore.
        assert_eq!(paths.len(), 6, "{id}: {paths:?}");
        assert_eq!(
            paths
                .iter()
                .filter(|p| p.to_string_lossy().ends_with(&kind))
                .count(),
            3,
            "{id}: {paths:?}"
        );
    }
    assert_eq!(
        held_before.len(),
        6,
        "the held restore's prepared copies and agent dirs: {held_before:?}"
    );

    // Listed, but kept: they ended less than 7 days ago.
    let (code, text) = gc(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    for (needle, what) in [
        (format!(".quorate-{finished}\n"), "original data dir"),
        (format!(".quorate-{rolled_back}.failed\n"), "failed copy"),
        (format!("restores/{finished}\n"), "agent state"),
        (format!("restores/{rolled_back}\n"), "agent state"),
    ] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.ends_with(needle.trim_end()))
            .collect();
        assert_eq!(lines.len(), 3, "one {needle:?} per member: {text}");
        assert!(lines.iter().all(|l| l.contains(what)), "{what}: {text}");
    }
    assert!(
        text.contains(&format!("restore {finished} finished")),
        "{text}"
    );
    assert!(
        text.contains(&format!("restore {rolled_back} rolled back")),
        "{text}"
    );
    assert!(
        text.contains(&format!("restore {held} unfinished")),
        "{text}"
    );
    assert!(text.contains("less than --older-than 7days"), "{text}");
    assert!(text.contains("holds this member's lock"), "{text}");
    assert!(
        text.contains("Nothing to remove. Nothing was changed."),
        "{text}"
    );
    assert!(leftovers.iter().flatten().all(|p| p.exists()));

    // --older-than 0s lists them as removable; without --yes nothing changes.
    let (code, text) = gc(&lab, &["--older-than", "0s"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("12 path(s)") && text.contains("re-run with --yes"),
        "{text}"
    );
    // The same listing as the event stream: one valid `result` naming every leftover.
    let inventory = lab.dir().join("inventory.toml");
    let events = quorate_lab::event_schema::run_json(
        &lab,
        &[
            "gc",
            "--inventory",
            inventory.to_str().expect("utf-8 path"),
            "--older-than",
            "0s",
        ],
        "gc --output json",
    );
    let result = &events.last().expect("result")["result"];
    let listed = result.to_string();
    for id in [&finished, &rolled_back] {
        assert!(listed.contains(id.as_str()), "{id} listed: {listed}");
    }
    assert_eq!(
        result["removed"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    assert!(leftovers.iter().flatten().all(|p| p.exists()));

    // --yes removes them, and nothing of the held restore.
    let (code, text) = gc(&lab, &["--older-than", "0s", "--yes"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Removed 12 path(s)"), "{text}");
    for p in leftovers.iter().flatten() {
        assert!(!p.exists(), "{} removed", p.display());
    }
    assert_eq!(
        traces(&lab, &held),
        held_before,
        "the held restore is untouched"
    );

    // The held restore rolled back: the cluster is as before it, and serves its data; its own
    // leftovers are now collectable.
    let (ok, text) = faults::quorate_on(&lab, "rollback", &held).expect("rollback");
    assert!(ok, "rollback: {text}");
    let now = faults::cluster_state(&lab).await.expect("state");
    assert_eq!(
        now, before,
        "the cluster serves the same data, members and revision"
    );
    let (code, text) = gc(&lab, &["--older-than", "0s", "--yes"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("restore {held} rolled back")),
        "{text}"
    );
    assert_eq!(traces(&lab, &held), Vec::<PathBuf>::new());
    let (code, text) = gc(&lab, &["--older-than", "0s"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nothing left by any restore"), "{text}");
}

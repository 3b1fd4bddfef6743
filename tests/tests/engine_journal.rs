//! The coordinator's journal and lock on real etcd: a journal whose last line a crash tore is
//! carried on by `quorate resume` and stays readable; a line damaged in the middle refuses
//! `resume` naming the file and line, before anything changes on a member; two coordinators on
//! one restore id: the second is refused at once naming the holder, the first completes, and a
//! killed holder takes its lock with it.
//!
//! Needs the failpoints compiled in (the lab crate's default feature `failpoints`).
#![cfg(all(feature = "failpoints", debug_assertions))]
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::time::{Duration, Instant};

use quorate_lab::faults;
use quorate_lab::matrix::{self, Setup};

/// Every line of restore `id`'s journal parses as a JSON object, and the file ends with a newline.
fn assert_journal_readable(s: &Setup, id: &str, case: &str) -> usize {
    let path = matrix::journal_path(&s.lab, id);
    let text = std::fs::read_to_string(&path).expect("journal");
    assert!(
        text.ends_with('\n'),
        "{case}: {} ends with a newline: {text}",
        path.display()
    );
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "{case}: {} line {} is not JSON ({e}): {line:?}",
                path.display(),
                n + 1
            )
        });
        assert!(
            v.is_object(),
            "{case}: line {} is a JSON object: {line}",
            n + 1
        );
    }
    text.lines().count()
}

/// A crash tears the journal's last line; `resume` carries the restore to its end and the journal
/// is whole again. A line damaged in the middle refuses `resume` (and `rollback`) naming the file
/// and the line, and nothing changes on any member; once the line is repaired, `resume` ends it.
#[tokio::test]
async fn a_torn_journal_line_is_carried_on_and_a_corrupt_one_refuses_resume_changing_nothing() {
    let s = matrix::setup(3).await;

    let case = "crash after preserve, the journal's last line torn";
    let started = Instant::now();
    let original = matrix::fresh_original(&s).await;
    let id = matrix::crash_after(&s, "preserve", "restore").await;
    let path = matrix::journal_path(&s.lab, &id);
    let lines_before = assert_journal_readable(&s, &id, case);
    let text = std::fs::read_to_string(&path).expect("journal");
    let last = text.lines().last().expect("a journal line");
    let fragment = &last[..last.len() / 2];
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(fragment.as_bytes()))
        .expect("tear the journal");
    let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
    assert!(ok, "{case}: resume completes: {text}");
    matrix::assert_restored(&s, &original, case).await;
    let lines_after = assert_journal_readable(&s, &id, case);
    assert!(
        lines_after > lines_before,
        "{case}: resume journaled the rest of the restore ({lines_before} lines, then {lines_after})"
    );
    let (ok, status) = faults::quorate_on(&s.lab, "status", &id).expect("status");
    assert!(
        ok && status.contains("finished"),
        "{case}: status: {status}"
    );
    eprintln!("{case}: resumed to the end in {:.1?}", started.elapsed());

    let case = "crash after halt, a journal line in the middle damaged";
    let started = Instant::now();
    let original = matrix::fresh_original(&s).await;
    let id = matrix::crash_after(&s, "halt", "preserve").await;
    let path = matrix::journal_path(&s.lab, &id);
    let members_before = matrix::member_steps(&s.lab, &id).expect("status before");
    let good = std::fs::read_to_string(&path).expect("journal");
    let lines: Vec<&str> = good.lines().collect();
    assert!(
        lines.len() >= 3,
        "{case}: a journal of several lines: {good}"
    );
    let n = lines.len() / 2; // 1-based: a line with lines after it
    let damaged: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(k, l)| {
            if k + 1 == n {
                format!("{}#damaged", &l[..l.len() / 2])
            } else {
                (*l).to_owned()
            }
        })
        .collect();
    std::fs::write(&path, format!("{}\n", damaged.join("\n"))).expect("damage the journal");
    for verb in ["resume", "rollback"] {
        let t = Instant::now();
        let (code, text) = faults::quorate_with(&s.lab, &[verb, &id]).expect(verb);
        assert!(
            code.is_some_and(|c| c != 0),
            "{case}: {verb} refused: {text}"
        );
        assert!(
            text.contains("journal.jsonl") && text.contains(&format!("line {n}")),
            "{case}: {verb}'s refusal names the file and line {n}: {text}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{case}: {verb} refused at once, not after {:.1?}",
            t.elapsed()
        );
    }
    // The operator repairs the line: every member is exactly where the crash left it.
    std::fs::write(&path, &good).expect("repair the journal");
    let members_after = matrix::member_steps(&s.lab, &id).expect("status after");
    assert_eq!(
        members_before, members_after,
        "{case}: the refused commands changed nothing on any member"
    );
    assert!(
        members_after.iter().all(|m| m["etcd_running"] == false),
        "{case}: etcd is still halted everywhere: {members_after:?}"
    );
    let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
    assert!(ok, "{case}: resume completes once repaired: {text}");
    matrix::assert_restored(&s, &original, case).await;
    assert_journal_readable(&s, &id, case);
    eprintln!(
        "{case}: refused, repaired, resumed in {:.1?}",
        started.elapsed()
    );
}

/// Waits until every member's agent has done `step` for restore `id`.
async fn wait_all_done(s: &Setup, id: &str, step: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for host in s.lab.hosts() {
        let file = host.path(&format!("var/lib/quorate-agent/restores/{id}/journal.json"));
        loop {
            let state = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["steps"][step]["state"].as_str().map(str::to_owned));
            if state.as_deref() == Some("done") {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{}'s agent never did {step} for {id}",
                host.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// A second `resume` and a `rollback` of the restore `id` held by coordinator `pid` are refused
/// at once, naming the holder; `status` is not.
fn assert_refused_while_held(s: &Setup, id: &str, pid: u32, case: &str) {
    let host = matrix::hostname();
    for verb in ["resume", "rollback"] {
        let t = Instant::now();
        let (code, text) = faults::quorate_with(&s.lab, &[verb, id]).expect(verb);
        let took = t.elapsed();
        assert_eq!(code, Some(1), "{case}: a second {verb} is refused: {text}");
        assert!(
            text.contains("is held by")
                && text.contains(&format!("pid {pid}"))
                && text.contains(&format!("host {host}")),
            "{case}: the refusal of {verb} names the holder, pid {pid} on host {host}: {text}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{case}: {verb} refused at once, not after {took:.1?}"
        );
    }
    let (ok, status) = faults::quorate_on(&s.lab, "status", id).expect("status");
    assert!(ok, "{case}: status is never refused: {status}");
}

/// Two coordinators on one restore id: while a `resume` is held in PRESERVE, a second `resume`
/// and a `rollback` are refused at once naming its pid and host, and it completes the restore.
/// A holder killed with SIGKILL takes the lock with it: the next `resume` proceeds.
#[tokio::test]
async fn a_second_coordinator_on_one_restore_is_refused_naming_the_holder_and_a_killed_one_frees_it()
 {
    let s = matrix::setup(3).await;

    let case = "a resume held in preserve, then a second resume and a rollback";
    let started = Instant::now();
    let original = matrix::fresh_original(&s).await;
    let id = matrix::crash_after(&s, "halt", "preserve").await;
    let mut first = matrix::spawn_quorate(
        &s.lab,
        &["resume", &id, "--output", "json"],
        "coordinator::after-preserve=sleep(20000)",
    )
    .expect("quorate resume");
    if let Err(e) = wait_all_done(&s, &id, "preserve").await {
        matrix::fail_with(first, "the first resume preserved every member", &e);
    }
    assert_refused_while_held(&s, &id, first.id(), case);
    assert!(
        first.try_wait().expect("try_wait").is_none(),
        "{case}: the first resume was still held while the others were refused"
    );
    let out = first.wait_with_output().expect("quorate output");
    assert!(
        out.status.success(),
        "{case}: the first resume completes: {}",
        matrix::output_text(&out)
    );
    matrix::assert_restored(&s, &original, case).await;
    eprintln!(
        "{case}: refused at once; the holder completed in {:.1?}",
        started.elapsed()
    );

    let case = "a resume holding the lock killed, then a new resume";
    let started = Instant::now();
    let original = matrix::fresh_original(&s).await;
    let id = matrix::crash_after(&s, "halt", "preserve").await;
    let first = matrix::spawn_quorate(
        &s.lab,
        &["resume", &id, "--output", "json"],
        "coordinator::after-preserve=sleep(600000)",
    )
    .expect("quorate resume");
    if let Err(e) = wait_all_done(&s, &id, "preserve").await {
        matrix::fail_with(first, "the first resume preserved every member", &e);
    }
    assert_refused_while_held(&s, &id, first.id(), case);
    matrix::crash(first);
    let (ok, text) = faults::quorate_on(&s.lab, "resume", &id).expect("resume");
    assert!(
        ok,
        "{case}: the killed holder's lock went with it; resume completes: {text}"
    );
    matrix::assert_restored(&s, &original, case).await;
    eprintln!("{case}: resumed in {:.1?}", started.elapsed());
}

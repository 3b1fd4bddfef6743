//! What an operator sees of a real restore: the live view on a terminal (run in a tmux pane of a
//! fixed size and read back from it), plain timestamped lines when stderr is not a terminal, only
//! the result with `--quiet`; then `quorate report` and `quorate list` of those restores. One lab,
//! three restores of the same snapshot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quorate_lab::lab::Lab;
use quorate_lab::testlab;
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{load, scenario};

const PHASES: [&str; 10] = [
    "stage", "prepare", "fence", "halt", "preserve", "restore", "quorum", "verify", "unfence",
    "finish",
];

fn state_dir(lab: &Lab) -> PathBuf {
    lab.dir().join("coordinator/state")
}

/// `quorate restore --yes` against the lab, as a shell command line.
fn restore_args(lab: &Lab, snapshot: &Path) -> Vec<String> {
    vec![
        scenario::quorate_bin(lab).display().to_string(),
        "restore".into(),
        "--yes".into(),
        "--inventory".into(),
        lab.dir().join("inventory.toml").display().to_string(),
        "--snapshot".into(),
        snapshot.display().to_string(),
        "--state-dir".into(),
        state_dir(lab).display().to_string(),
    ]
}

/// The restore id in `restore <id> done in …`.
fn restored_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("restore ")?.split(" done in ").next())
        .unwrap_or_else(|| panic!("no `restore <id> done in` in:\n{stdout}"))
        .to_owned()
}

/// A tmux server of this test's own (its socket in the lab's dir), killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).args(["-f", "/dev/null"]);
        c
    }

    /// Runs `line` (a shell command) in a detached session of `width` x `height` and waits for it to
    /// end; returns the whole pane, scrollback included.
    fn run(&self, line: &str, done: &Path, width: u16, height: u16) -> String {
        let script = format!(
            "{line}; echo \"quorate exited $?\"; touch {}; sleep 600",
            done.display()
        );
        let status = self
            .cmd()
            .args(["new-session", "-d", "-s", "live", "-x", &width.to_string()])
            .args(["-y", &height.to_string(), "sh", "-c", &script])
            .status()
            .expect("tmux new-session");
        assert!(status.success(), "tmux new-session failed");
        let started = Instant::now();
        while !done.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "quorate did not end within 300 s in tmux; pane:\n{}",
                self.capture()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // The shell's last lines reach the pane before the marker file exists.
        std::thread::sleep(Duration::from_millis(300));
        self.capture()
    }

    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", "live"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

fn has_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A line's first word is an RFC 3339 UTC time.
fn timestamped(line: &str) -> bool {
    line.split(' ')
        .next()
        .is_some_and(|w| w.ends_with('Z') && humantime::parse_rfc3339(w).is_ok())
}

#[tokio::test]
async fn the_live_view_plain_lines_quiet_and_the_reports_of_a_real_restore() {
    if !has_tmux() {
        eprintln!("SKIP: tmux is not installed (tests/setup.sh installs it as root)");
        return;
    }
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let first = lab.hosts()[0].clone();
    let client = quorate_lab::etcd::member_client(&first.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    load::load(&client, 500, 7).await.expect("load");
    drop(client);
    let snapshot = lab.dir().join("snapshot.db");
    scenario::save_snapshot(&lab, &first, &snapshot).expect("etcdctl snapshot save");
    let names: Vec<String> = lab.hosts().iter().map(|h| h.name.clone()).collect();

    // 1. On a terminal: the live view.
    let tmux = Tmux {
        socket: lab.dir().join("tmux.sock"),
    };
    let line = restore_args(&lab, &snapshot)
        .iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let pane = tmux.run(&line, &lab.dir().join("tmux-done"), 160, 40);
    eprintln!("pane:\n{pane}");
    assert!(
        pane.contains("quorate exited 0"),
        "the restore failed:\n{pane}"
    );
    for (k, phase) in PHASES.iter().enumerate() {
        let header = format!("[{}/10] {phase} done in ", k + 1);
        assert!(pane.contains(&header), "no `{header}` line:\n{pane}");
    }
    // The last phase's header and one line per member under it, with its step and state.
    let lines: Vec<&str> = pane.lines().collect();
    let header_at = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("[10/10] finish"))
        .unwrap_or_else(|| panic!("no last phase header:\n{pane}"));
    for (i, name) in names.iter().enumerate() {
        let member = lines.get(header_at + 1 + i).copied().unwrap_or_default();
        let words: Vec<&str> = member.split_whitespace().collect();
        assert_eq!(
            words.get(..4),
            Some(&["✓", name.as_str(), "finish", "done"][..]),
            "line {} under the header is not {name}'s finish step: {member:?}\n{pane}",
            i + 1
        );
    }
    // The summary: a column per member, a row per phase, the total; then the result.
    let table_at = lines
        .iter()
        .position(|l| l.starts_with("phase ") && l.contains("seconds"))
        .unwrap_or_else(|| panic!("no summary table:\n{pane}"));
    let head: Vec<&str> = lines[table_at].split_whitespace().collect();
    assert_eq!(head[..2], ["phase", "seconds"]);
    assert_eq!(
        head[2..],
        names.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    for (k, phase) in PHASES.iter().enumerate() {
        let row: Vec<&str> = lines[table_at + 1 + k].split_whitespace().collect();
        assert_eq!(row.first(), Some(phase), "summary row {k}:\n{pane}");
        assert_eq!(
            row.len(),
            2 + names.len(),
            "a time per member in {phase}: {row:?}"
        );
        assert!(
            row[1..]
                .iter()
                .all(|c| *c == "-" || c.parse::<f64>().is_ok()),
            "{row:?}"
        );
    }
    assert!(lines[table_at + 11].starts_with("total"), "{pane}");
    let live_id = restored_id(&pane);

    // 2. Not a terminal: plain lines with timestamps, no control characters.
    let args = restore_args(&lab, &snapshot);
    let out = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .expect("quorate restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "restore failed:\n{stdout}\n{stderr}");
    assert!(
        !stderr.chars().any(|c| c.is_control() && c != '\n'),
        "control characters in the plain output:\n{stderr:?}"
    );
    let stamped: Vec<&str> = stderr.lines().filter(|l| timestamped(l)).collect();
    for (k, phase) in PHASES.iter().enumerate() {
        for event in [
            format!("[{}/10] {phase} started", k + 1),
            format!("{phase} done in "),
        ] {
            assert!(
                stamped.iter().any(|l| l.contains(&event)),
                "no timestamped `{event}`:\n{stderr}"
            );
        }
    }
    for name in &names {
        for event in [format!(" {name} halt done in "), format!(" {name} staged ")] {
            assert!(
                stamped.iter().any(|l| l.contains(&event)),
                "no timestamped `{event}`:\n{stderr}"
            );
        }
    }
    let plain_id = restored_id(&stdout);

    // 3. --quiet: the result only.
    let out = Command::new(&args[0])
        .args(&args[1..])
        .arg("--quiet")
        .output()
        .expect("quorate restore --quiet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "restore failed:\n{stdout}\n{stderr}");
    let noise: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("quorate: this build has failpoints"))
        .collect();
    assert!(
        noise.is_empty(),
        "--quiet printed more than the result:\n{stderr}"
    );
    assert!(
        stdout.starts_with("restore "),
        "the result first:\n{stdout}"
    );
    let quiet_id = restored_id(&stdout);

    // 4. The report of the first restore names every member, the cluster IDs and revisions.
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state_dir(&lab).join(&live_id).join("report.json")).expect("report.json"),
    )
    .expect("report.json is JSON");
    let quorate = |args: &[&str]| {
        let out = Command::new(scenario::quorate_bin(&lab))
            .args(args)
            .arg("--state-dir")
            .arg(state_dir(&lab))
            .output()
            .expect("quorate");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "quorate {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let md = quorate(&["report", &live_id]);
    eprintln!("report:\n{md}");
    let hex = |v: &serde_json::Value| format!("{:x}", v.as_u64().expect("an id"));
    let before = &report["before"][0];
    for needle in [
        "- **outcome:** restored".to_owned(),
        format!("- **cluster ID before:** {}", hex(&before["cluster_id"])),
        format!(
            "- **cluster ID after:** {}",
            hex(&report["after"]["cluster_id"])
        ),
        format!("- **revision after:** {} ", report["after"]["revision"]),
    ] {
        assert!(md.contains(&needle), "no `{needle}` in the report:\n{md}");
    }
    for name in &names {
        let after = report["after"]["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == name.as_str()))
            .expect("member after");
        assert!(
            md.lines()
                .any(|l| l.starts_with(&format!("| {name} | "))
                    && l.contains(&hex(&after["member_id"]))),
            "no row of {name} with its new member ID:\n{md}"
        );
    }
    let text = quorate(&["report", &live_id, "--format", "text"]);
    assert!(
        text.contains("  outcome: restored") && !text.contains("**"),
        "{text}"
    );

    // The same as the event stream: one valid `result` each.
    let events =
        quorate_lab::event_schema::run_json(&lab, &["report", &live_id], "report --output json");
    assert_eq!(
        events.last().expect("result")["result"]["report"]["after"]["cluster_id"],
        report["after"]["cluster_id"],
        "the JSON report is the restore's"
    );
    let events = quorate_lab::event_schema::run_json(&lab, &["list"], "list --output json");
    assert_eq!(
        events.last().expect("result")["result"]["restores"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "three restores listed"
    );

    // 5. The list: the three restores, newest first, each restored.
    let list = quorate(&["list"]);
    eprintln!("list:\n{list}");
    let ids: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        ids,
        [quiet_id.as_str(), plain_id.as_str(), live_id.as_str()],
        "{list}"
    );
    assert!(
        list.lines()
            .all(|l| l.contains("snapshot.db") && l.contains("  restored  ")),
        "{list}"
    );
}

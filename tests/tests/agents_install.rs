//! `quorate agents install | status | uninstall` over SSH against a real OpenSSH server on bare
//! lab hosts (kubeadm's etcd static pods, no agent): host keys checked, a dry run changes nothing,
//! the install makes agents that answer over mTLS and let `quorate plan` pass, a re-run changes
//! nothing, and uninstall leaves nothing of what install wrote.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use quorate_lab::bench::sshd::{self, Sshd};
use quorate_lab::event_schema;
use quorate_lab::layout::Host;
use quorate_lab::testlab;
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{faults, hostns, scenario};

/// What install writes on a host (as the host sees it, without the leading `/`).
const INSTALLED: [&str; 7] = [
    "usr/local/bin/quorate-agent",
    "etc/quorate/agent.toml",
    "etc/quorate/pki/ca.crt",
    "etc/quorate/pki/agent.crt",
    "etc/quorate/pki/agent.key",
    "etc/systemd/system/quorate-agent.service",
    "etc/quorate/installed.json",
];

struct Run {
    ok: bool,
    text: String,
    stdout: String,
    code: Option<i32>,
}

fn quorate(bin: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("running quorate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("quorate {}:\n{text}", args.join(" "));
    Run {
        ok: out.status.success(),
        text,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        code: out.status.code(),
    }
}

fn mtimes(hosts: &[Host]) -> Vec<SystemTime> {
    hosts
        .iter()
        .flat_map(|h| INSTALLED.map(|f| h.path(f)))
        .map(|p| {
            std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

fn nothing_installed(hosts: &[Host], when: &str) {
    for h in hosts {
        for f in INSTALLED {
            assert!(!h.path(f).exists(), "{when}: {} has /{f}", h.name);
        }
        assert!(
            !h.path("etc/quorate").exists(),
            "{when}: {} has /etc/quorate",
            h.name
        );
        assert!(
            !h.path("etc/systemd/system/multi-user.target.wants/quorate-agent.service")
                .exists(),
            "{when}: {} has the unit enabled",
            h.name
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn install_over_ssh_is_checked_idempotent_and_undone() {
    if !hostns::available() {
        eprintln!("SKIPPED: sshd on lab hosts needs hosts as namespaces (root)");
        return;
    }
    sshd::check_installed().expect("openssh-server and client (tests/setup.sh)");
    let lab = testlab::up_bare(3, EtcdVersion::V35).await;
    let hosts = lab.hosts().to_vec();
    let dir = lab.dir().to_owned();
    let sshd = Sshd::start(&lab, &dir.join("ssh")).expect("sshd on every host");
    let bin = scenario::quorate_bin(&lab);
    let agent_bin = bin.with_file_name("quorate-agent");
    let inventory = dir.join("inventory.toml");
    let p = |p: &Path| p.display().to_string();
    let (inv, key, certs, agent) = (
        p(&inventory),
        p(sshd.key()),
        p(&dir.join("certs")),
        p(&agent_bin),
    );
    let install = |known: &Path, extra: &[&str]| {
        let known = p(known);
        let mut args = vec![
            "agents",
            "install",
            "--inventory",
            &inv,
            "--ssh-user",
            "root",
            "--ssh-key",
            &key,
            "--certs",
            &certs,
            "--agent-binary",
            &agent,
            "--known-hosts",
            &known,
        ];
        args.extend_from_slice(extra);
        quorate(&bin, &args)
    };

    // An unknown host key is refused, showing its fingerprint and what to do.
    let empty: PathBuf = dir.join("known_hosts.empty");
    std::fs::write(&empty, "").expect("empty known_hosts");
    let refused = install(&empty, &[]);
    assert!(!refused.ok, "unknown host keys must refuse");
    assert!(
        refused.text.contains("is not in") && refused.text.contains("SHA256:"),
        "the refusal names the fingerprint: {}",
        refused.text
    );
    assert!(refused.text.contains("ssh-keyscan"));
    nothing_installed(&hosts, "after unknown host keys");

    // A changed key is refused even with --accept-new-host-keys.
    let good = std::fs::read_to_string(sshd.known_hosts()).expect("known_hosts");
    let lines: Vec<&str> = good.lines().collect();
    let key_of = |line: &str| line.split_whitespace().nth(2).expect("key").to_owned();
    let swapped = lines[0].replace(&key_of(lines[0]), &key_of(lines[1]));
    let changed = dir.join("known_hosts.changed");
    std::fs::write(&changed, format!("{swapped}\n{}\n", lines[1..].join("\n"))).expect("write");
    let refused = install(&changed, &["--accept-new-host-keys", "--dry-run"]);
    assert!(!refused.ok, "a changed host key must refuse");
    assert!(
        refused.text.contains("CHANGED") && refused.text.contains("ssh-keygen -R"),
        "{}",
        refused.text
    );
    assert_eq!(
        std::fs::read_to_string(&changed).expect("read"),
        format!("{swapped}\n{}\n", lines[1..].join("\n")),
        "a changed key is never recorded"
    );

    // A dry run accepting new keys records them, shows the plan, and changes nothing.
    let learned = dir.join("known_hosts.learned");
    std::fs::write(&learned, "").expect("write");
    let dry = install(&learned, &["--accept-new-host-keys", "--dry-run"]);
    assert!(dry.ok, "dry run: {}", dry.text);
    for h in &hosts {
        assert!(
            dry.text
                .contains(&format!("{}: dry run: would write binary", h.name)),
            "{}",
            dry.text
        );
        assert!(
            dry.text
                .contains(&format!("{}: found runtime static-pod", h.name))
        );
        let tmp = std::fs::read_dir(h.path("tmp")).expect("tmp").count();
        assert_eq!(
            tmp, 0,
            "the dry run's temporary copy is removed on {}",
            h.name
        );
    }
    assert_eq!(
        std::fs::read_to_string(&learned)
            .expect("read")
            .lines()
            .count(),
        hosts.len()
    );
    nothing_installed(&hosts, "after --dry-run");

    // The install: every agent answers over mTLS, and a plan against the lab passes.
    let done = install(&learned, &[]);
    assert!(done.ok, "install: {}", done.text);
    for h in &hosts {
        assert!(
            done.text.contains(&format!("{}: wrote binary", h.name)),
            "{}",
            done.text
        );
        assert!(done.text.contains("answers over mTLS"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(h.path("etc/quorate/pki/agent.key"))
                .expect("key")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the agent's key on {} is 0600", h.name);
    }
    let status = quorate(&bin, &["agents", "status", "--inventory", &inv]);
    assert!(status.ok, "status: {}", status.text);
    assert_eq!(status.text.matches("healthy").count(), hosts.len());
    let json = quorate(
        &bin,
        &["agents", "status", "--inventory", &inv, "--output", "json"],
    );
    let events = event_schema::valid_stream(&json.stdout, json.code, "agents status --output json");
    let agents = events.last().expect("result")["result"]["agents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        agents.len(),
        hosts.len(),
        "one row per member: {}",
        json.stdout
    );
    assert!(
        agents.iter().all(|a| a["reachable"] == true),
        "every agent answers: {}",
        json.stdout
    );
    let snapshot = dir.join("snapshot.db");
    scenario::save_snapshot(&lab, &hosts[0], &snapshot).expect("snapshot save");
    let plan = quorate(
        &bin,
        &["plan", "--inventory", &inv, "--snapshot", &p(&snapshot)],
    );
    assert!(plan.ok, "plan against the installed agents: {}", plan.text);

    // A re-run changes nothing and says so.
    let before = mtimes(&hosts);
    let again = install(&learned, &[]);
    assert!(again.ok, "re-run: {}", again.text);
    assert_eq!(
        again.text.matches(": unchanged").count(),
        hosts.len(),
        "{}",
        again.text
    );
    assert_eq!(mtimes(&hosts), before, "a re-run rewrites no file");

    // While a restore holds the members (its coordinator gone after PREPARE), install and
    // uninstall leave every agent alone; `quorate rollback` then releases them.
    let mut child =
        faults::spawn_restore(&lab, &snapshot, "coordinator::before-fence=sleep(600000)")
            .expect("quorate restore");
    let held = faults::wait_journal(&lab, 0, "prepare", "done")
        .await
        .expect("a restore held after PREPARE");
    child.kill().expect("kill the coordinator");
    let _ = child.wait();
    let busy = install(&learned, &[]);
    assert!(
        !busy.ok,
        "install while a restore holds the members: {}",
        busy.text
    );
    assert_eq!(
        busy.text
            .matches("not installed: the agent holds unfinished restore")
            .count(),
        hosts.len(),
        "{}",
        busy.text
    );
    assert!(busy.text.contains(&held), "{}", busy.text);
    assert_eq!(
        mtimes(&hosts),
        before,
        "nothing rewritten while a restore holds the members"
    );
    let learned_str = p(&learned);
    let ssh_args = [
        "--inventory",
        inv.as_str(),
        "--ssh-user",
        "root",
        "--ssh-key",
        key.as_str(),
        "--known-hosts",
        learned_str.as_str(),
    ];
    let mut un_args = vec!["agents", "uninstall"];
    un_args.extend_from_slice(&ssh_args);
    let refused = quorate(&bin, &un_args);
    assert!(!refused.ok, "uninstall while a restore holds the members");
    assert_eq!(
        refused
            .text
            .matches("refused: the agent holds unfinished restore")
            .count(),
        hosts.len(),
        "{}",
        refused.text
    );
    assert_eq!(
        mtimes(&hosts),
        before,
        "a refused uninstall removes nothing"
    );
    let (ok, text) = faults::quorate_on(&lab, "rollback", &held).expect("rollback");
    assert!(ok, "rollback of the held restore: {text}");

    // Uninstall leaves nothing of what install wrote, and the agents are gone.
    let un = quorate(
        &bin,
        &[
            "agents",
            "uninstall",
            "--inventory",
            &inv,
            "--ssh-user",
            "root",
            "--ssh-key",
            &key,
            "--known-hosts",
            &p(&learned),
        ],
    );
    assert!(un.ok, "uninstall: {}", un.text);
    nothing_installed(&hosts, "after uninstall");
    let status = quorate(
        &bin,
        &["agents", "status", "--inventory", &inv, "--output", "json"],
    );
    assert!(!status.ok, "no agent answers after uninstall");
    let events = event_schema::valid_stream(&status.stdout, status.code, "status after uninstall");
    assert_eq!(events.last().expect("result")["outcome"], "failed");
    sshd.stop().expect("stopping sshd");
}

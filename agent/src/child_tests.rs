use super::*;

fn runner() -> Runner {
    Runner::new(Limits::default(), "member cp-1")
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
}

/// Live (not zombie) processes whose process group is `pgid`, from /proc.
fn live_in_group(pgid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // state, ppid, pgrp
        let live = !matches!(fields.first(), Some(&("Z" | "X")));
        if live && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// The live processes of group `pgid` once it has settled (SIGKILL takes effect asynchronously
/// for processes that are not ours to reap): empty at once if the group was killed, the sleeps
/// for 30 s if it was not.
fn left_in_group(pgid: u32) -> Vec<u32> {
    let started = Instant::now();
    loop {
        let live = live_in_group(pgid);
        if live.is_empty() || started.elapsed() > Duration::from_secs(2) {
            return live;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_hung_child_is_killed_with_its_own_children_at_the_deadline() {
    let r = runner();
    let mut cmd = sh("sleep 30 & sleep 30");
    let running = r
        .spawn(&mut cmd, Duration::from_millis(300), "probe")
        .expect("spawn");
    let pgid = running.pid();
    // The shell and its background sleep run in the child's own group.
    let started = Instant::now();
    while live_in_group(pgid).len() < 2 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        live_in_group(pgid).len() >= 2,
        "sh and its sleeps: {:?}",
        live_in_group(pgid)
    );
    let err = running.wait().expect_err("past its deadline");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "killed at the deadline, not when sleep ended: {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains("`sh -c 'sleep 30 & sleep 30'`"), "{text}");
    assert!(text.contains("member cp-1"), "{text}");
    assert!(text.contains("300ms"), "{text}");
    assert!(text.contains("step lock is released"), "{text}");
    assert!(text.contains("`probe`"), "{text}");
    assert_eq!(AgentError::from(err).code(), tonic::Code::DeadlineExceeded);
    assert_eq!(
        left_in_group(pgid),
        Vec::<u32>::new(),
        "every process of the group is gone"
    );
}

#[test]
fn a_single_sleep_is_killed_and_reaped() {
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let started = Instant::now();
    let err = runner()
        .run(&mut cmd, Duration::from_millis(300), "restore_tool")
        .expect_err("deadline");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = err.to_string();
    assert!(
        text.starts_with("`sleep 30` on member cp-1 did not finish within 300ms"),
        "{text}"
    );
}

#[test]
fn a_child_dropped_unfinished_is_killed() {
    let mut cmd = sh("sleep 30 & sleep 30");
    let running = runner()
        .spawn(&mut cmd, Duration::from_secs(60), "systemctl")
        .expect("spawn");
    let pgid = running.pid();
    let started = Instant::now();
    while live_in_group(pgid).len() < 2 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(live_in_group(pgid).len() >= 2, "sh and its sleeps");
    drop(running);
    assert_eq!(left_in_group(pgid), Vec::<u32>::new());
}

#[test]
fn output_and_status_of_a_finished_child() {
    let mut cmd = sh("echo out; echo err >&2; exit 3");
    cmd.env("ETCDCTL_API", "3");
    assert_eq!(
        command_line(&cmd),
        "ETCDCTL_API=3 sh -c 'echo out; echo err >&2; exit 3'"
    );
    let out = runner()
        .run(&mut cmd, Duration::from_secs(10), "probe")
        .expect("runs");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let mut missing = Command::new("/nonexistent/etcdutl");
    missing.arg("version");
    let err = runner()
        .run(&mut missing, Duration::from_secs(10), "probe")
        .expect_err("missing");
    assert!(
        err.to_string()
            .starts_with("cannot run `/nonexistent/etcdutl version` on member cp-1"),
        "{err}"
    );
}

#[test]
fn the_restore_tool_deadline_scales_with_the_snapshot() {
    let l = Limits::default();
    assert_eq!(l.restore_tool_for(0), Duration::from_secs(60));
    assert_eq!(l.restore_tool_for(1), Duration::from_secs(61));
    assert_eq!(l.restore_tool_for(200 << 20), Duration::from_secs(70));
    let slow = Limits {
        restore_tool_mib_per_s: 0,
        ..l
    };
    assert_eq!(slow.restore_tool_for(10 << 20), Duration::from_secs(70));
}

const CONFIG: &str = r#"
listen = "127.0.0.11:7443"
state_dir = "/var/lib/quorate-agent"
allowed_clients = ["quorate-coordinator"]
[tls]
cert = "/pki/agent.crt"
key = "/pki/agent.key"
client_ca = "/pki/ca.crt"
[etcd]
runtime = "static-pod"
manifest = "/etc/kubernetes/manifests/etcd.yaml"
"#;

fn parse(text: &str) -> Result<crate::AgentConfig, crate::config::ConfigError> {
    crate::AgentConfig::parse(text, std::path::Path::new("/etc/quorate/agent.toml"))
}

#[test]
fn limits_are_optional_settable_and_checked() {
    assert_eq!(
        parse(CONFIG).expect("no [limits]").limits,
        Limits::default()
    );
    let set = parse(&format!(
        "{CONFIG}[limits]\nrestore_tool = \"2m\"\nrestore_tool_mib_per_s = 5\nsystemctl = \"30s\"\nprobe = \"3s\"\nstage_reserve_mib = 100\n"
    ))
    .expect("[limits]")
    .limits;
    assert_eq!(
        set,
        Limits {
            restore_tool: Duration::from_secs(120),
            restore_tool_mib_per_s: 5,
            systemctl: Duration::from_secs(30),
            probe: Duration::from_secs(3),
            stage_reserve_mib: Some(100),
        }
    );
    assert_eq!(set.stage_reserve(1 << 40), 100 << 20, "set: exactly that");
    let partial = parse(&format!("{CONFIG}[limits]\nprobe = \"1s\"\n")).expect("partial");
    assert_eq!(partial.limits.systemctl, Duration::from_secs(90));
    // Default: 512 MiB on a small filesystem, 5 % of a large one.
    assert_eq!(partial.limits.stage_reserve(10 << 30), 512 << 20);
    assert_eq!(partial.limits.stage_reserve(100 << 30), 5 << 30);
    for (text, says) in [
        ("systemctll = \"1s\"", "systemctll"),
        ("probe = \"0s\"", "limits.probe"),
        ("restore_tool_mib_per_s = 0", "restore_tool_mib_per_s"),
        ("systemctl = \"soon\"", "systemctl"),
    ] {
        let err = parse(&format!("{CONFIG}[limits]\n{text}\n"))
            .expect_err(text)
            .to_string();
        assert!(err.contains(says), "{text}: {err}");
    }
}

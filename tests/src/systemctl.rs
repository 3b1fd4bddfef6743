//! A `systemctl` stand-in for hosts without systemd: `lab systemctl --root HOSTROOT
//! start|stop|is-active|status UNIT`.
//!
//! It reads the real unit file `HOSTROOT/etc/systemd/system/<unit>` (`[Service]` `ExecStart=`,
//! `Environment=`, `EnvironmentFile=` with an optional leading `-`, `TimeoutStopSec=`), and:
//!
//! - `start` runs `ExecStart` as a detached process in its own process group, with a clean
//!   environment plus the unit's, its output appended to `HOSTROOT/var/log/<unit>.log`, its pid in
//!   `HOSTROOT/run/systemd/<unit>.pid`; a running unit is left alone;
//! - `stop` sends SIGTERM to the process group, SIGKILL after `TimeoutStopSec` (default 90 s),
//!   waits until the process is gone and removes the pid file;
//! - `is-active` prints `active` (exit 0) or `inactive` (exit 3); `status` prints a few lines;
//! - `restart` stops (if running), then starts;
//! - `enable` links the unit into `<target>.wants/` for each `[Install]` `WantedBy=` (with
//!   `--now`, starts it), `disable` removes those links (with `--now`, stops it), `is-enabled`
//!   prints `enabled` (exit 0) or `disabled` (exit 1); nothing starts units at a boot here;
//! - `daemon-reload` does nothing (unit files are read at every command).
//!
//! A unit without a file is `Unit X not found.` with exit 5, as systemctl says. `--no-block` is
//! accepted; `start` never blocks and `stop` always waits.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// What systemd gives a service besides the unit's own variables.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    IsActive,
    Status,
    Enable,
    Disable,
    IsEnabled,
    DaemonReload,
}

#[derive(Debug, clap::Args)]
pub struct SystemctlArgs {
    /// The host's root dir (units in etc/systemd/system).
    #[arg(long)]
    pub root: PathBuf,
    /// Accepted for compatibility: start returns at once anyway.
    #[arg(long)]
    pub no_block: bool,
    /// is-active: print nothing.
    #[arg(long, short)]
    pub quiet: bool,
    /// enable/disable: also start/stop the unit.
    #[arg(long)]
    pub now: bool,
    pub verb: Verb,
    /// Every verb but daemon-reload names a unit.
    pub unit: Option<String>,
}

/// One service as its unit file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub stop_timeout: Duration,
}

/// `etcd` → `etcd.service`.
pub fn unit_name(unit: &str) -> String {
    if unit.contains('.') {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    }
}

pub fn unit_path(root: &Path, unit: &str) -> PathBuf {
    root.join("etc/systemd/system").join(unit)
}

pub fn pid_file(root: &Path, unit: &str) -> PathBuf {
    root.join("run/systemd").join(format!("{unit}.pid"))
}

pub fn log_file(root: &Path, unit: &str) -> PathBuf {
    root.join("var/log").join(format!("{unit}.log"))
}

/// Shell-like words: whitespace separates, quotes group, backslash escapes.
fn words(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                cur.extend(chars.next());
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => (quote, any) = (Some(c), true),
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn env_file(path: &Path, env: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let k = k.trim().trim_start_matches("export ").trim();
            env.insert(k.to_owned(), words(v).concat());
        }
    }
    Ok(())
}

/// `30s`, `90`, `2min`, `500ms`, `infinity`.
fn seconds(value: &str) -> Option<Duration> {
    let v = value.trim();
    if v == "infinity" {
        return Some(Duration::from_secs(365 * 24 * 3600));
    }
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v[..split].parse().ok()?;
    match v[split..].trim() {
        "" | "s" | "sec" => Some(Duration::from_secs(n)),
        "ms" | "msec" => Some(Duration::from_millis(n)),
        "m" | "min" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

impl Service {
    /// `None` when there is no unit file.
    pub fn load(root: &Path, unit: &str) -> anyhow::Result<Option<Self>> {
        let path = unit_path(root, unit);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let mut svc = Self {
            name: unit.to_owned(),
            argv: Vec::new(),
            env: BTreeMap::new(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        };
        let mut section = "";
        let mut files = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            let Some((key, value)) = line.split_once('=').filter(|_| section == "[Service]") else {
                continue;
            };
            match key.trim() {
                "ExecStart" => svc.argv = words(value.trim_start_matches(['-', '@', '+', '!'])),
                "Environment" => {
                    for w in words(value) {
                        if let Some((k, v)) = w.split_once('=') {
                            svc.env.insert(k.into(), v.into());
                        }
                    }
                }
                "EnvironmentFile" => files.push(value.trim().to_owned()),
                "TimeoutStopSec" | "TimeoutSec" => {
                    svc.stop_timeout = seconds(value)
                        .with_context(|| format!("{}: bad {key}={value}", path.display()))?;
                }
                _ => {}
            }
        }
        for f in files {
            let (f, optional) = f
                .strip_prefix('-')
                .map_or((f.as_str(), false), |g| (g, true));
            if let Err(e) = env_file(Path::new(f), &mut svc.env)
                && !optional
            {
                bail!("{unit}: EnvironmentFile {f}: {e}");
            }
        }
        if svc.argv.is_empty() {
            bail!("{unit} has no ExecStart= in [Service] ({})", path.display());
        }
        Ok(Some(svc))
    }

    /// The main pid, when the recorded process still runs this unit's program.
    pub fn main_pid(&self, root: &Path) -> Option<u32> {
        let pid = crate::procs::read_pid(&pid_file(root, &self.name))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv0 = cmdline.split(|b| *b == 0).next()?;
        let alive = crate::procs::is_ours(pid, "")
            && argv0 == self.argv.first().map_or(&[][..], |a| a.as_bytes());
        alive.then_some(pid)
    }

    /// Starts the service unless it runs; returns its pid.
    pub fn start(&self, root: &Path) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt as _;
        if let Some(pid) = self.main_pid(root) {
            return Ok(pid);
        }
        let log = log_file(root, &self.name);
        std::fs::create_dir_all(log.parent().context("log dir")?)?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .env("PATH", SERVICE_PATH)
            .envs(&self.env)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}: {}", self.name, self.argv[0]))?;
        let pid = child.id();
        let file = pid_file(root, &self.name);
        std::fs::create_dir_all(file.parent().context("pid dir")?)?;
        quorate_proto::durable::write_atomic(&file, format!("{pid}\n").as_bytes(), 0o644)?;
        Ok(pid)
    }

    /// Stops the service (SIGTERM to its group; SIGKILL after the stop timeout).
    pub fn stop(&self, root: &Path) -> anyhow::Result<()> {
        if let Some(pid) = self.main_pid(root) {
            let group = Pid::from_raw(i32::try_from(pid)?);
            let _gone = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + self.stop_timeout;
            while self.main_pid(root).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.main_pid(root).is_some() {
                let _gone = killpg(group, Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(10);
                while self.main_pid(root).is_some() {
                    if Instant::now() > deadline {
                        bail!("{} (pid {pid}) survived SIGKILL", self.name);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        match std::fs::remove_file(pid_file(root, &self.name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// The `WantedBy=` targets of a unit file's `[Install]` section.
fn wanted_by(text: &str) -> Vec<String> {
    let mut section = "";
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Install]"
            && let Some(v) = line.strip_prefix("WantedBy=")
        {
            out.extend(v.split_whitespace().map(str::to_owned));
        }
    }
    out
}

/// The `<target>.wants/<unit>` links of `unit` under `root`.
fn wants_links(root: &Path, unit: &str) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("etc/systemd/system"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wants"))
        .map(|e| e.path().join(unit))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// enable / disable / is-enabled, as the unit files say.
fn enablement(args: &SystemctlArgs, unit: &str) -> anyhow::Result<i32> {
    let path = unit_path(&args.root, unit);
    let Ok(text) = std::fs::read_to_string(&path) else {
        match args.verb {
            Verb::IsEnabled => {
                eprintln!("Failed to get unit file state for {unit}: No such file or directory")
            }
            _ => eprintln!(
                "Failed to {} unit: Unit file {unit} does not exist.",
                if args.verb == Verb::Enable {
                    "enable"
                } else {
                    "disable"
                }
            ),
        }
        return Ok(1);
    };
    match args.verb {
        Verb::Enable => {
            let targets = wanted_by(&text);
            if targets.is_empty() {
                eprintln!(
                    "The unit files have no installation config (WantedBy=, RequiredBy=, ...)."
                );
            }
            for target in targets {
                let wants = args.root.join(format!("etc/systemd/system/{target}.wants"));
                std::fs::create_dir_all(&wants)?;
                let link = wants.join(unit);
                if link.symlink_metadata().is_err() {
                    let to = Path::new("/etc/systemd/system").join(unit);
                    std::os::unix::fs::symlink(&to, &link)?;
                    eprintln!("Created symlink {} -> {}.", link.display(), to.display());
                }
            }
            if args.now
                && let Some(svc) = Service::load(&args.root, unit)?
            {
                svc.start(&args.root)?;
            }
            Ok(0)
        }
        Verb::Disable => {
            if args.now
                && let Some(svc) = Service::load(&args.root, unit)?
            {
                svc.stop(&args.root)?;
            }
            for link in wants_links(&args.root, unit) {
                std::fs::remove_file(&link)?;
                eprintln!("Removed {}.", link.display());
            }
            Ok(0)
        }
        _ => {
            let enabled = !wants_links(&args.root, unit).is_empty();
            if !args.quiet {
                println!("{}", if enabled { "enabled" } else { "disabled" });
            }
            Ok(if enabled { 0 } else { 1 })
        }
    }
}

/// Runs one command; returns the exit code systemctl would.
pub fn run(args: &SystemctlArgs) -> i32 {
    let Some(unit) = args.unit.as_deref().map(unit_name) else {
        if args.verb == Verb::DaemonReload {
            return 0;
        }
        eprintln!("Too few arguments.");
        return 1;
    };
    if matches!(args.verb, Verb::Enable | Verb::Disable | Verb::IsEnabled) {
        return enablement(args, &unit).unwrap_or_else(|e| {
            eprintln!("Failed to {:?} {unit}: {e:#}", args.verb);
            1
        });
    }
    let svc = match Service::load(&args.root, &unit) {
        Ok(Some(s)) => s,
        Ok(None) if args.verb == Verb::IsActive => {
            if !args.quiet {
                println!("inactive");
            }
            return 3;
        }
        Ok(None) => {
            eprintln!("Unit {unit} not found.");
            return 5;
        }
        Err(e) => {
            eprintln!("Failed to load {unit}: {e:#}");
            return 1;
        }
    };
    let result = match args.verb {
        Verb::Start => svc.start(&args.root).map(|_| 0),
        Verb::Stop => svc.stop(&args.root).map(|()| 0),
        Verb::Restart => svc
            .stop(&args.root)
            .and_then(|()| svc.start(&args.root))
            .map(|_| 0),
        Verb::DaemonReload | Verb::Enable | Verb::Disable | Verb::IsEnabled => Ok(0),
        Verb::IsActive => {
            let active = svc.main_pid(&args.root).is_some();
            if !args.quiet {
                println!("{}", if active { "active" } else { "inactive" });
            }
            Ok(if active { 0 } else { 3 })
        }
        Verb::Status => {
            let pid = svc.main_pid(&args.root);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "* {unit}");
            let _ = writeln!(
                out,
                "     Loaded: loaded ({})",
                unit_path(&args.root, &unit).display()
            );
            let _ = match pid {
                Some(p) => writeln!(out, "     Active: active (running)\n   Main PID: {p}"),
                None => writeln!(out, "     Active: inactive (dead)"),
            };
            Ok(if pid.is_some() { 0 } else { 3 })
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("Failed to {:?} {unit}: {e:#}", args.verb);
        1
    })
}

/// The wrapper `lab up` installs as `HOSTROOT/usr/bin/systemctl`.
pub fn wrapper_script(lab_bin: &Path, root: &Path) -> String {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    format!(
        "#!/bin/sh\n# systemctl stand-in of this lab host\nexec {} systemctl --root {} \"$@\"\n",
        q(lab_bin),
        q(root)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_files_and_timeouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/systemd/system")).expect("mkdir");
        let env = root.join("etc/etcd.env");
        std::fs::write(&env, "# c\nETCD_NAME=cp-1\nQ=\"a b\"\n").expect("env");
        std::fs::write(
            unit_path(root, "x.service"),
            format!(
                "[Unit]\nExecStart=/not/this\n[Service]\nEnvironment=A=1 \"B=2 3\"\nEnvironmentFile=-/nonexistent\nEnvironmentFile={}\nExecStart=/bin/sleep 30\nTimeoutStopSec=2min\n",
                env.display()
            ),
        )
        .expect("unit");
        let svc = Service::load(root, "x.service")
            .expect("load")
            .expect("found");
        assert_eq!(svc.argv, ["/bin/sleep", "30"]);
        assert_eq!(svc.env["B"], "2 3");
        assert_eq!(svc.env["Q"], "a b");
        assert_eq!(svc.env["ETCD_NAME"], "cp-1");
        assert_eq!(svc.stop_timeout, Duration::from_secs(120));
        assert!(Service::load(root, "y.service").expect("load").is_none());
        assert_eq!(unit_name("etcd"), "etcd.service");
    }

    #[test]
    fn enable_now_links_and_starts_disable_now_stops_and_unlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        std::fs::create_dir_all(root.join("etc/systemd/system")).expect("mkdir");
        std::fs::write(
            unit_path(&root, "e.service"),
            "[Service]\nExecStart=/bin/sleep 300\nTimeoutStopSec=5\n[Install]\nWantedBy=multi-user.target\n",
        )
        .expect("unit");
        let args = |verb, now| SystemctlArgs {
            root: root.clone(),
            no_block: false,
            quiet: true,
            now,
            verb,
            unit: Some("e.service".into()),
        };
        assert_eq!(run(&args(Verb::IsEnabled, false)), 1);
        assert_eq!(run(&args(Verb::Enable, true)), 0);
        let link = root.join("etc/systemd/system/multi-user.target.wants/e.service");
        assert_eq!(
            std::fs::read_link(&link).expect("link"),
            Path::new("/etc/systemd/system/e.service")
        );
        assert_eq!(run(&args(Verb::IsEnabled, false)), 0);
        assert_eq!(run(&args(Verb::IsActive, false)), 0);
        assert_eq!(run(&args(Verb::Restart, false)), 0);
        assert_eq!(run(&args(Verb::IsActive, false)), 0);
        assert_eq!(run(&args(Verb::Disable, true)), 0);
        assert_eq!(run(&args(Verb::IsActive, false)), 3);
        assert_eq!(run(&args(Verb::IsEnabled, false)), 1);
        assert!(link.symlink_metadata().is_err());
        let mut reload = args(Verb::DaemonReload, false);
        reload.unit = None;
        assert_eq!(run(&reload), 0);
        let mut missing = args(Verb::Enable, true);
        missing.unit = Some("nope.service".into());
        assert_eq!(run(&missing), 1);
    }

    #[test]
    fn start_is_idempotent_and_stop_ends_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/systemd/system")).expect("mkdir");
        std::fs::write(
            unit_path(root, "s.service"),
            "[Service]\nEnvironment=MARK=quorate-systemctl-test\nExecStart=/bin/sleep 300\nTimeoutStopSec=5\n",
        )
        .expect("unit");
        let svc = Service::load(root, "s.service")
            .expect("load")
            .expect("found");
        let pid = svc.start(root).expect("start");
        assert_eq!(
            svc.start(root).expect("start again"),
            pid,
            "no second process"
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        assert!(String::from_utf8_lossy(&environ).contains("MARK=quorate-systemctl-test"));
        svc.stop(root).expect("stop");
        assert_eq!(svc.main_pid(root), None);
        assert!(!pid_file(root, "s.service").exists());
        svc.stop(root).expect("stop again");
    }
}

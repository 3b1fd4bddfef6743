//! Processes the lab started: found by PID, confirmed by their command line, ended by PID.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// True when `pid` is alive (not a zombie) and its command line contains `marker`, so that a
/// reused PID is never mistaken for one of ours.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        {
            return false;
        }
    }
    String::from_utf8_lossy(&cmdline).contains(marker)
}

pub fn signal(pid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let _gone_already = kill(Pid::from_raw(raw), sig);
}

/// Waits until none of `pids` is ours any more; returns those still running at the deadline.
pub fn wait_gone(pids: &[u32], marker: &str, patience: Duration) -> Vec<u32> {
    let deadline = Instant::now() + patience;
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| is_ours(*p, marker))
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads a pid file; `None` when absent or unreadable.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True when something accepts connections on `ip:port`.
pub fn port_open(ip: Ipv4Addr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(300)).is_ok()
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Runs `cmd` to completion; an error names the command, its status and what it printed.
pub fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

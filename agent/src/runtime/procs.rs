//! Finding processes by their exact command line (and environment) and listening sockets by
//! address, from /proc. What cannot be read is an error, never "none found": a caller asking
//! "is it down?" must not take an unreadable /proc for a yes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::Path;

use crate::error::{AgentError, Result};

/// PIDs of live (non-zombie) processes on this host whose argv equals `argv` exactly. "On this
/// host" means in the agent's network namespace: control-plane static pods run with
/// `hostNetwork`, etcd units in the host's namespace, and a process with the same command line
/// in another network namespace (a pod, a container, another host sharing the kernel) listens
/// on other addresses and is not this member's.
pub fn find_processes(argv: &[String]) -> Result<Vec<u32>> {
    let proc = Path::new("/proc");
    let listing = |e| AgentError::io("listing the processes in", proc, e);
    let entries = std::fs::read_dir(proc).map_err(listing)?;
    let own_net = std::fs::read_link("/proc/self/ns/net").ok();
    let names = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(listing)?;
    let mut pids: Vec<u32> = names
        .iter()
        .filter_map(|n| n.to_str()?.parse::<u32>().ok())
        .filter(|pid| argv_of(*pid).is_some_and(|a| a == argv) && !is_zombie(*pid))
        // A namespace that cannot be read (another user's process, without root) counts as
        // this host's: for "is it still running?" a false yes is the safe answer.
        .filter(
            |pid| match (&own_net, std::fs::read_link(format!("/proc/{pid}/ns/net"))) {
                (Some(own), Ok(theirs)) => &theirs == own,
                _ => true,
            },
        )
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// PIDs of live processes whose argv equals `argv` and whose environment holds every pair of
/// `env`. A process whose environment cannot be read (another user's, without root) counts as a
/// match: for "is it still running?" a false yes is the safe answer.
pub fn find_processes_with_env(argv: &[String], env: &[(String, String)]) -> Result<Vec<u32>> {
    let pids = find_processes(argv)?;
    if env.is_empty() {
        return Ok(pids);
    }
    Ok(pids
        .into_iter()
        .filter(|pid| environ_of(*pid).is_none_or(|have| env.iter().all(|kv| have.contains(kv))))
        .collect())
}

fn environ_of(pid: u32) -> Option<Vec<(String, String)>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect(),
    )
}

fn argv_of(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let raw = raw.strip_suffix(b"\0").unwrap_or(&raw);
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
    })
}

/// True when a socket in LISTEN state is bound to `host:port` (or to the wildcard address); an
/// error when this namespace's sockets cannot be read.
pub fn listening(host: &str, port: u16) -> Result<bool> {
    let wanted = addresses(host, port);
    let listeners = listeners()?;
    Ok(listeners
        .iter()
        .any(|(ip, p)| *p == port && (ip.is_unspecified() || wanted.contains(ip))))
}

fn addresses(host: &str, port: u16) -> BTreeSet<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return BTreeSet::from([ip]);
    }
    (host, port)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

/// Every listening TCP socket of this network namespace (`/proc/net/tcp6` is absent where IPv6
/// is off).
fn listeners() -> Result<Vec<(IpAddr, u16)>> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if file.ends_with('6') && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AgentError::io("reading the sockets in", Path::new(file), e)),
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&"0A") {
                continue;
            }
            if let Some(entry) = fields.get(1).and_then(|f| parse_local(f)) {
                out.push(entry);
            }
        }
    }
    Ok(out)
}

/// `0B00007F:094B` (IPv4) or 32 hex digits (IPv6): each 32-bit word printed in host byte order.
fn parse_local(field: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes);
            let v6 = Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_process_and_listener() {
        let me: Vec<String> = std::env::args().collect();
        let found = |argv: &[String]| find_processes(argv).expect("/proc readable");
        assert!(found(&me).contains(&std::process::id()));
        assert!(found(&["no-such-program-anywhere".to_owned()]).is_empty());
        let with_env =
            |env: (String, String)| find_processes_with_env(&me, &[env]).expect("/proc readable");
        let path = ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default());
        assert!(with_env(path).contains(&std::process::id()));
        assert!(with_env(("QUORATE_NO_SUCH_VAR".to_owned(), "1".to_owned())).is_empty());
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let listens = |host: &str| listening(host, port).expect("/proc/net readable");
        assert!(listens("127.0.0.1"));
        assert!(!listens("127.0.0.2"));
        drop(l);
        assert!(!listens("127.0.0.1"));
    }
}

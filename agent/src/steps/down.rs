//! "etcd is provably down on this member", which PRESERVE, RESTORE and START need before they
//! touch etcd's dirs: no etcd process of this member (the runtime's view) and every port of its
//! `--listen-*-urls` refusing connections on this host. Anything that cannot be found out (a
//! manifest that does not parse, /proc unreadable, a connect that times out instead of being
//! refused while the socket table cannot be read) is a refusal saying what could not be read,
//! never "not running".
//!
//! A connect that times out is settled by this namespace's socket table (`/proc/net/tcp*`):
//! a host firewall that drops the member's port (a partition) must not make a rollback
//! impossible, and the kernel's table is proof, not a guess.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::engine::{Engine, Plan};
use crate::error::{AgentError, Result};
use crate::manifest::{EtcdMember, host_port};
use crate::runtime::listening;

/// How long a connect may take before the port counts as "cannot tell". On this host a closed
/// port refuses at once.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What a connect to a port says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// Refused: nothing listens.
    Closed,
    /// Accepted: something listens.
    Open,
    /// Neither (timed out, unreachable, unresolvable): why.
    Unknown(String),
}

/// Connects to `host:port` (the loopback address for a wildcard host) within `timeout`. A
/// connect that is neither accepted nor refused (a firewall dropping the port, as a partition
/// does) is decided by this namespace's socket table, the kernel's own word on what listens;
/// when that cannot be read either, the port is `Unknown`.
pub fn probe(host: &str, port: u16, timeout: Duration) -> Port {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            let lo = if ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            };
            vec![SocketAddr::new(lo, port)]
        }
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match (host, port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return Port::Unknown(format!("{host} does not resolve ({e})")),
        },
    };
    if addrs.is_empty() {
        return Port::Unknown(format!("{host} resolves to no address"));
    }
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Port::Open,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => match listening(&addr.ip().to_string(), port) {
                Ok(true) => return Port::Open,
                Ok(false) => {}
                Err(table) => {
                    return Port::Unknown(format!(
                        "connecting to {addr}: {e}; and the socket table: {table}"
                    ));
                }
            },
        }
    }
    Port::Closed
}

/// Every `host:port` etcd listens on, with the flag it comes from; etcd's defaults where a flag
/// is absent. A URL that cannot be read is an error: its port could not be checked.
pub fn listen_ports(member: &EtcdMember) -> Result<Vec<(String, String, u16)>> {
    let flags = [
        (
            "--listen-client-urls",
            member.client_listen_urls.clone(),
            "http://localhost:2379",
        ),
        (
            "--listen-peer-urls",
            member.command.flag_list("listen-peer-urls"),
            "http://localhost:2380",
        ),
        ("--listen-metrics-urls", member.metrics_urls.clone(), ""),
    ];
    let mut out = Vec::new();
    for (flag, urls, default) in flags {
        let urls = if urls.is_empty() && !default.is_empty() {
            vec![default.to_owned()]
        } else {
            urls
        };
        for url in urls {
            let (host, port) = host_port(&url)
                .filter(|_| url.starts_with("http://") || url.starts_with("https://"))
                .ok_or_else(|| {
                    AgentError::Precondition(format!(
                        "cannot tell whether etcd of {} is down: {flag} {url} (in {}) is not an \
                         http(s) host:port the agent can check",
                        member.name, member.command.source
                    ))
                })?;
            out.push((flag.to_owned(), host, port));
        }
    }
    Ok(out)
}

/// Refuses unless this member's etcd is provably down (see the module doc).
pub fn etcd_down(engine: &Engine, plan: &Plan) -> Result<()> {
    let (id, step, name) = (plan.req.restore_id, plan.req.step, &plan.name);
    let etcd = engine.etcd()?;
    let member = plan.etcd_member()?;
    let aside = engine.state.manifest_aside(id, etcd.definition());
    match etcd.is_running(Some(&aside)) {
        Ok(false) => {}
        Ok(true) => {
            return Err(AgentError::Precondition(format!(
                "etcd is still running on {name}: halt it first (step {step} of restore {id} \
                 needs it down)"
            )));
        }
        Err(e) => {
            return Err(AgentError::Precondition(format!(
                "step {step} refused on {name}: cannot tell whether etcd is down ({e}); fix \
                 what could not be read, then run the step again"
            )));
        }
    }
    for (flag, host, port) in listen_ports(member)? {
        match probe(&host, port, CONNECT_TIMEOUT) {
            Port::Closed => {}
            Port::Open => {
                return Err(AgentError::Precondition(format!(
                    "step {step} refused on {name}: {host}:{port} ({flag}) accepts connections, \
                     so etcd (or a process that took its port) still listens there; find it \
                     with `ss -ltnp 'sport = :{port}'`, stop it, then run the step again"
                )));
            }
            Port::Unknown(why) => {
                return Err(AgentError::Precondition(format!(
                    "step {step} refused on {name}: cannot tell whether {host}:{port} ({flag}) \
                     is closed ({why}); a closed port refuses at once: check the address and \
                     any firewall on this host, then run the step again"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_open_closed_or_unknown() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(probe("127.0.0.1", port, CONNECT_TIMEOUT), Port::Open);
        assert_eq!(probe("0.0.0.0", port, CONNECT_TIMEOUT), Port::Open);
        assert_eq!(probe("localhost", port, CONNECT_TIMEOUT), Port::Open);
        drop(l);
        assert_eq!(probe("127.0.0.1", port, CONNECT_TIMEOUT), Port::Closed);
        assert!(matches!(
            probe("no-such-host.invalid", port, CONNECT_TIMEOUT),
            Port::Unknown(_)
        ));
    }

    /// A listener whose accept queue is full drops new connections (the connect times out, as
    /// behind a firewall): the socket table still shows it listening, so it is open.
    #[test]
    fn a_connect_that_times_out_is_settled_by_the_socket_table() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut held = Vec::new();
        let timed_out = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(c) => held.push(c),
                Err(e) => break e.kind() == std::io::ErrorKind::TimedOut,
            }
            assert!(held.len() < 10_000, "the accept queue never filled");
        };
        assert!(timed_out, "a full accept queue drops SYNs");
        assert_eq!(
            probe("127.0.0.1", addr.port(), Duration::from_millis(200)),
            Port::Open
        );
    }
}

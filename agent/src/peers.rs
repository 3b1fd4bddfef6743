//! HALT on the leader waits until its followers have left.
//!
//! etcd's SIGTERM on a leader first hands leadership to its longest-connected active peer
//! (`TransferLeadership`). When that peer is itself stopping, the transfer waits for etcd's
//! request timeout (~7 s) before the leader exits (FACTS.md, "Cold start"). A follower that gets
//! SIGTERM closes its raft streams within milliseconds, long before its process exits (its peer
//! listener lingers ~1 s for open connections), and the leader counts it inactive from then on.
//! So every member is halted at once, and the leader's agent holds its stop until its etcd
//! reports no active peer (`etcd_network_active_peers`, read from its own metrics or client
//! listener): its SIGTERM then has no one to hand leadership to and it exits at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::error::{AgentError, Result};
use crate::health::{self, HealthConfig};

/// How long the leader waits for its peers to leave before it is stopped anyway.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

const POLL: Duration = Duration::from_millis(20);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a member's etcd says of itself and its raft peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    pub leader: bool,
    pub active_peers: u32,
}

/// Reads `etcd_server_is_leader` and the sum of `etcd_network_active_peers` from etcd's
/// Prometheus text; `None` when it does not say whether it leads.
pub fn parse(metrics: &str) -> Option<PeerView> {
    let mut leader = None;
    let mut active_peers = 0u32;
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = match value.trim().parse() {
            Ok(v) => v,
            Err(_) => continue,
        };
        let metric = name.split('{').next().unwrap_or(name);
        match metric {
            "etcd_server_is_leader" => leader = Some(value >= 1.0),
            "etcd_network_active_peers" if value >= 1.0 => active_peers += 1,
            _ => {}
        }
    }
    leader.map(|leader| PeerView {
        leader,
        active_peers,
    })
}

/// Holds a HALT while this member's etcd leads and still has active peers, at most `bound`.
/// Returns what it waited for, for the step's progress; `None` when there was nothing to wait
/// for (not the leader, no peer left, or etcd not answering: already stopping or stopped).
pub async fn wait_until_leader_alone(
    engine: Arc<Engine>,
    config: Arc<HealthConfig>,
    bound: Duration,
    progress: impl Fn(String),
) -> Result<Option<String>> {
    let endpoints = tokio::task::spawn_blocking(move || -> Result<_> {
        let member = engine.member(engine.state.active()?)?;
        health::etcd_endpoints(&member, &config.etcd)
    })
    .await
    .map_err(|e| AgentError::CommandFailed(format!("agent task failed: {e}")))??;
    let started = Instant::now();
    let mut announced = false;
    loop {
        let mut view = None;
        for endpoint in &endpoints {
            if let Ok(answer) = endpoint.get("/metrics", SCRAPE_TIMEOUT).await
                && answer.status == 200
            {
                view = parse(&answer.body);
                break;
            }
        }
        let Some(view) = view.filter(|v| v.leader && v.active_peers > 0) else {
            return Ok(announced.then(|| {
                format!(
                    "etcd led with active peers; they left after {:.2}s",
                    started.elapsed().as_secs_f64()
                )
            }));
        };
        if started.elapsed() >= bound {
            let note = format!(
                "etcd still leads {} active peer(s) after {bound:?}; stopping it anyway (it may \
                 spend etcd's request timeout handing leadership to one of them)",
                view.active_peers
            );
            progress(note.clone());
            return Ok(Some(note));
        }
        if !announced {
            progress(format!(
                "etcd leads {} active peer(s): waiting until they stop, so that it does not hand \
                 leadership to a member that is stopping",
                view.active_peers
            ));
            announced = true;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_leadership_and_active_peers_from_etcd_metrics() {
        let text = "# HELP etcd_server_is_leader Whether or not this member is a leader.\n\
# TYPE etcd_server_is_leader gauge\n\
etcd_network_active_peers{Local=\"22ec\",Remote=\"2554\"} 1\n\
etcd_network_active_peers{Local=\"22ec\",Remote=\"3f73\"} 0\n\
etcd_network_active_peers{Local=\"22ec\",Remote=\"5875\"} 1\n\
etcd_server_has_leader 1\n\
etcd_server_is_leader 1\n";
        assert_eq!(
            parse(text),
            Some(PeerView {
                leader: true,
                active_peers: 2
            })
        );
        assert_eq!(
            parse("etcd_server_is_leader 0\n"),
            Some(PeerView {
                leader: false,
                active_peers: 0
            })
        );
        assert_eq!(parse("etcd_server_has_leader 1\n"), None);
    }
}

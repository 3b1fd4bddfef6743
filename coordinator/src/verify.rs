//! Health and verification of the restored cluster, through etcd itself.
//!
//! One client per member (a multi-endpoint client balances requests, and per-member answers need
//! per-member clients), with short timeouts: a member without a leader never blocks.

use std::time::Duration;

use futures::future::join_all;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use quorate_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// `/health` on a plain-HTTP metrics URL of an etcd on this host (snapshot verification's
/// scratch member): answers even while it has no leader. Cluster members are never probed this
/// way: their metrics URLs are often on their own loopback, so their agents probe them.
pub async fn metrics_healthy(metrics_url: &str) -> bool {
    let url = format!("{}/health", metrics_url.trim_end_matches('/'));
    quorate_proto::probe::get(&url, None, Duration::from_secs(2))
        .await
        .is_ok_and(|r| r.status == 200 && r.body.contains("\"health\":\"true\""))
}

pub async fn member_client(url: &str, tls: Option<&TlsFiles>) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_require_leader(true);
    if let Some(tls) = tls {
        let identity = tls.read_identity()?;
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(tls.read_ca()?))
                .identity(Identity::from_pem(identity.cert, identity.key)),
        );
    }
    Ok(Client::connect([url], Some(options)).await?)
}

/// What one member says about itself and the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub leader: u64,
    pub revision: i64,
}

pub async fn view(name: &str, url: &str, tls: Option<&TlsFiles>) -> anyhow::Result<MemberView> {
    let mut client = member_client(url, tls).await?;
    let status = client.status().await?;
    let header = status
        .header()
        .ok_or_else(|| anyhow::anyhow!("status from {url} has no header"))?;
    Ok(MemberView {
        name: name.to_owned(),
        member_id: header.member_id(),
        cluster_id: header.cluster_id(),
        leader: status.leader(),
        revision: header.revision(),
    })
}

/// The verified state of the restored cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub cluster_id: u64,
    pub members: Vec<MemberView>,
    pub revision: i64,
    pub hash: u32,
    pub keys: i64,
}

/// Planned member: name, peer URLs, client URL.
pub struct Expect<'a> {
    pub name: &'a str,
    pub peer_urls: &'a [String],
    pub client_url: &'a str,
}

/// Membership equals the plan; every member healthy with the same leader and cluster ID; the
/// same HashKV and key count on every member at one revision; that revision is the snapshot's.
pub async fn verify(
    expected: &[Expect<'_>],
    tls: Option<&TlsFiles>,
    snapshot_revision: Option<i64>,
) -> Result<Verified, String> {
    // Every member at once: a status and a client each.
    let connected = join_all(expected.iter().map(|e| async move {
        let v = view(e.name, e.client_url, tls)
            .await
            .map_err(|err| format!("member {}: status at {}: {err:#}", e.name, e.client_url))?;
        let c = member_client(e.client_url, tls)
            .await
            .map_err(|err| format!("member {}: {err:#}", e.name))?;
        Ok::<_, String>((v, c))
    }))
    .await;
    let mut views = Vec::new();
    let mut clients = Vec::new();
    for c in connected {
        let (v, client) = c?;
        views.push(v);
        clients.push(client);
    }
    let first = views[0].clone();
    for v in &views {
        if v.cluster_id != first.cluster_id {
            return Err(format!(
                "members disagree on the cluster ID: {} reports {:x}, {} reports {:x}",
                first.name, first.cluster_id, v.name, v.cluster_id
            ));
        }
        if v.leader == 0 || v.leader != first.leader {
            return Err(format!(
                "member {} reports leader {:x}, {} reports {:x}",
                v.name, v.leader, first.name, first.leader
            ));
        }
    }
    let list = clients[0]
        .member_list()
        .await
        .map_err(|e| format!("member list from {}: {e}", first.name))?;
    let mut got: Vec<(String, Vec<String>)> = list
        .members()
        .iter()
        .map(|m| {
            let mut urls = m.peer_urls().to_vec();
            urls.sort();
            (m.name().to_owned(), urls)
        })
        .collect();
    let mut want: Vec<(String, Vec<String>)> = expected
        .iter()
        .map(|e| {
            let mut urls = e.peer_urls.to_vec();
            urls.sort();
            (e.name.to_owned(), urls)
        })
        .collect();
    got.sort();
    want.sort();
    if got != want {
        return Err(format!("member list {got:?} is not the planned {want:?}"));
    }
    let revision = views.iter().map(|v| v.revision).min().unwrap_or(0);
    if let Some(snap) = snapshot_revision
        && let Some(v) = views.iter().find(|v| v.revision != snap)
    {
        return Err(format!(
            "member {} is at revision {}, the snapshot at {snap}: something wrote to the restored cluster",
            v.name, v.revision
        ));
    }
    // HashKV and the key count on every member at once (each reads its whole db).
    let sums = join_all(
        clients
            .iter_mut()
            .zip(&views)
            .map(|(client, v)| async move {
                let h = client
                    .hash_kv(revision)
                    .await
                    .map_err(|e| format!("member {}: HashKV at {revision}: {e}", v.name))?
                    .hash();
                let count = client
                    .get(
                        vec![0u8],
                        Some(
                            GetOptions::new()
                                .with_range(vec![0u8])
                                .with_count_only()
                                .with_revision(revision),
                        ),
                    )
                    .await
                    .map_err(|e| format!("member {}: key count: {e}", v.name))?
                    .count();
                Ok::<_, String>((h, count))
            }),
    )
    .await;
    let mut hash = None;
    let mut keys = None;
    for (sum, v) in sums.into_iter().zip(&views) {
        let (h, count) = sum?;
        match (hash, keys) {
            (Some(h0), Some(k0)) if h0 != h || k0 != count => {
                return Err(format!(
                    "member {} differs at revision {revision}: HashKV {h:x} and {count} keys against {h0:x} and {k0} on {}",
                    v.name, first.name
                ));
            }
            _ => {
                hash = Some(h);
                keys = Some(count);
            }
        }
    }
    Ok(Verified {
        cluster_id: first.cluster_id,
        members: views,
        revision,
        hash: hash.unwrap_or(0),
        keys: keys.unwrap_or(0),
    })
}

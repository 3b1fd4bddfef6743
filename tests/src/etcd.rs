//! etcd access for the lab and its tests: one client per member, dumps, health.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use quorate_proto::tls::TlsFiles;

/// Connect and request timeouts short enough that a member without a leader never blocks a test.
pub fn connect_options(
    tls: &TlsFiles,
    request_timeout: Duration,
) -> anyhow::Result<ConnectOptions> {
    let identity = tls.read_identity()?;
    let options = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(tls.read_ca()?))
        .identity(Identity::from_pem(identity.cert, identity.key));
    Ok(ConnectOptions::new()
        .with_tls(options)
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(request_timeout))
}

/// A client for exactly one member (per-member answers need per-member clients).
pub async fn member_client(url: &str, tls: &TlsFiles) -> anyhow::Result<Client> {
    Client::connect([url], Some(connect_options(tls, Duration::from_secs(10))?))
        .await
        .with_context(|| format!("connecting to etcd at {url}"))
}

/// Every key and value at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    pub revision: i64,
    pub kvs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Dump {
    /// Keys under `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.kvs
            .keys()
            .filter(|k| k.starts_with(prefix.as_bytes()))
            .count()
    }
}

/// Reads every key and value, a page at a time, all at the revision of the first page.
pub async fn dump(client: &mut Client) -> anyhow::Result<Dump> {
    dump_at(client, None).await
}

/// Reads every key and value at `revision` (`None`: the revision of the first page).
pub async fn dump_at(client: &mut Client, revision: Option<i64>) -> anyhow::Result<Dump> {
    const PAGE: i64 = 1000;
    let mut kvs = BTreeMap::new();
    let mut start = vec![0u8];
    let mut revision = revision.unwrap_or(0);
    loop {
        let mut options = GetOptions::new().with_range(vec![0u8]).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = client.get(start.clone(), Some(options)).await?;
        if revision == 0 {
            revision = resp
                .header()
                .context("etcd response without header")?
                .revision();
        }
        for kv in resp.kvs() {
            kvs.insert(kv.key().to_vec(), kv.value().to_vec());
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok(Dump { revision, kvs })
}

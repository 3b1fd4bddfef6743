//! Kubernetes-shaped keys with realistic value sizes, written in transactions.

use etcd_client::{Client, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// The namespaces every cluster has; `snapshot verify --test-restore` looks for the first two.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// What a load wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub keys: usize,
    pub bytes: usize,
    pub revision: i64,
}

/// Kinds, their share of the keys and their value sizes (bytes), roughly as in a real cluster.
const KINDS: [(&str, u32, usize, usize); 5] = [
    ("namespaces", 2, 250, 500),
    ("configmaps", 28, 400, 4000),
    ("secrets", 15, 200, 2500),
    ("pods", 40, 2000, 6000),
    ("leases", 15, 250, 450),
];

/// The `count` keys a load with `seed` writes, in order.
pub fn generate(count: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(count);
    for ns in SYSTEM_NAMESPACES.iter().take(count) {
        out.push((
            format!("/registry/namespaces/{ns}"),
            value(&mut rng, "Namespace", ns, 300),
        ));
    }
    let total_weight: u32 = KINDS.iter().map(|k| k.1).sum();
    let mut i = 0usize;
    while out.len() < count {
        let mut pick = rng.random_range(0..total_weight);
        let &(kind, _, lo, hi) = KINDS
            .iter()
            .find(|k| {
                if pick < k.1 {
                    true
                } else {
                    pick -= k.1;
                    false
                }
            })
            .expect("weights cover the range");
        let ns = format!("team-{}", i % 37);
        let (key, name) = if kind == "namespaces" {
            (format!("/registry/namespaces/ns-{i}"), format!("ns-{i}"))
        } else {
            let name = format!("{}-{i}", kind.trim_end_matches('s'));
            (format!("/registry/{kind}/{ns}/{name}"), name)
        };
        let size = rng.random_range(lo..=hi);
        out.push((key, value(&mut rng, kind, &name, size)));
        i += 1;
    }
    out
}

fn value(rng: &mut StdRng, kind: &str, name: &str, size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
    let head = format!(
        "{{\"kind\":\"{kind}\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"{name}\",\"uid\":\"{:032x}\"}},\"data\":\"",
        rng.random::<u128>()
    );
    let fill = size.saturating_sub(head.len() + 2);
    let mut v = head.into_bytes();
    let mut raw = vec![0u8; fill];
    rng.fill_bytes(&mut raw);
    v.extend(raw.iter().map(|b| ALPHABET[usize::from(b & 63)]));
    v.extend_from_slice(b"\"}");
    v
}

/// Writes `count` keys (seeded, so a load can be repeated exactly), 100 per transaction, four
/// transactions in flight.
pub async fn load(client: &Client, count: usize, seed: u64) -> anyhow::Result<LoadReport> {
    load_from(client, 0, count, seed).await
}

/// Writes keys `from..count` of [`generate`]`(count, seed)`: after a load of `from` keys with the
/// same seed, the cluster holds exactly the `count` keys of one load, each written once.
pub async fn load_from(
    client: &Client,
    from: usize,
    count: usize,
    seed: u64,
) -> anyhow::Result<LoadReport> {
    let all = generate(count, seed);
    let kvs = all.get(from..).unwrap_or_default();
    let bytes = kvs.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut revision = 0;
    for group in kvs.chunks(400) {
        let txns = group.chunks(100).map(|batch| {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
                .collect();
            let mut kv = client.kv_client();
            async move { kv.txn(Txn::new().and_then(ops)).await }
        });
        for resp in futures::future::try_join_all(txns).await? {
            let rev = resp.header().map_or(0, |h| h.revision());
            revision = revision.max(rev);
        }
    }
    Ok(LoadReport {
        keys: kvs.len(),
        bytes,
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_repeatable_unique_and_kubernetes_shaped() {
        let a = generate(5000, 7);
        assert_eq!(a, generate(5000, 7));
        let keys: std::collections::BTreeSet<_> = a.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys.len(), 5000, "keys are unique");
        assert!(keys.contains("/registry/namespaces/default"));
        assert!(keys.contains("/registry/namespaces/kube-system"));
        assert!(a.iter().all(|(k, _)| k.starts_with("/registry/")));
        let pods: Vec<_> = a
            .iter()
            .filter(|(k, _)| k.starts_with("/registry/pods/"))
            .collect();
        assert!(
            pods.len() > 1500 && pods.len() < 2500,
            "about 40% pods: {}",
            pods.len()
        );
        let avg = pods.iter().map(|(_, v)| v.len()).sum::<usize>() / pods.len();
        assert!(
            (2000..=6000).contains(&avg),
            "pod values are a few KB: {avg}"
        );
    }
}

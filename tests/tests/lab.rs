//! The lab itself: real etcd with TLS, kubeadm's layout, the kubelet and apiserver stand-ins.

use std::time::Duration;

use quorate_lab::etcd::member_client;
use quorate_lab::lab::Lab;
use quorate_lab::layout::Host;
use quorate_lab::procs;
use quorate_lab::testlab::{self, eventually};
use quorate_lab::tools::EtcdVersion;

async fn assert_cluster(lab: &Lab) {
    let hosts = lab.hosts();
    for host in hosts {
        let mut client = member_client(&host.client_url(), &lab.etcd_tls())
            .await
            .expect("client");
        let members = client
            .member_list()
            .await
            .expect("member list")
            .members()
            .to_vec();
        assert_eq!(
            members.len(),
            hosts.len(),
            "{} sees every member",
            host.name
        );
        for h in hosts {
            let m = members
                .iter()
                .find(|m| m.name() == h.name)
                .unwrap_or_else(|| panic!("{} is in the member list", h.name));
            assert_eq!(m.peer_urls(), [h.peer_url()], "{}'s peer URL", h.name);
            assert_eq!(m.client_urls(), [h.client_url()], "{}'s client URL", h.name);
        }
        let status = client
            .status()
            .await
            .expect("status through a client certificate");
        assert_ne!(status.leader(), 0, "{} knows a leader", host.name);
        assert!(lab.member_healthy(host).await, "{} /health", host.name);
        assert_eq!(
            lab.apiserver_readyz(host).await,
            Some(200),
            "{} apiserver ready",
            host.name
        );
    }
}

async fn refuses_client_without_certificate(lab: &Lab) {
    let host = &lab.hosts()[0];
    let tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(
        std::fs::read(host.etcd_pki_dir().join("ca.crt")).expect("ca"),
    ));
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    let result = async {
        let mut client = etcd_client::Client::connect([host.client_url()], Some(options)).await?;
        client.get("/registry/namespaces/default", None).await
    }
    .await;
    assert!(
        result.is_err(),
        "a client without a certificate must be refused: {result:?}"
    );
}

/// Runs plain etcdctl with the lab's lab.env, as an operator would.
fn etcdctl_with_lab_env(lab: &Lab, args: &str) -> std::process::Output {
    let env = lab.dir().join("lab.env");
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && etcdctl {args}", env.display()))
        .output()
        .expect("bash")
}

fn ports_closed(host: &Host, ports: &[u16]) -> bool {
    ports.iter().all(|p| !procs::port_open(host.ip, *p))
}

#[tokio::test]
async fn three_members_with_tls_then_down_leaves_nothing() {
    let mut lab = testlab::up(3, EtcdVersion::V35).await;
    assert_cluster(&lab).await;
    refuses_client_without_certificate(&lab).await;

    let out = etcdctl_with_lab_env(&lab, "endpoint health");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "etcdctl with lab.env: {text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");

    let inventory =
        quorate::inventory::Inventory::load(&lab.dir().join("inventory.toml")).expect("inventory");
    assert_eq!(inventory.members.len(), 3);
    assert_eq!(inventory.members[1].peer_urls, [lab.hosts()[1].peer_url()]);

    let pods: Vec<(u32, String)> = lab
        .hosts()
        .iter()
        .flat_map(|h| {
            ["etcd", "kube-apiserver"].map(|p| {
                (
                    procs::read_pid(&h.pod_pid_file(p)).expect("pod pid file"),
                    h.root.display().to_string(),
                )
            })
        })
        .collect();
    let kubelets = lab.state.kubelets.clone();
    lab.down().expect("lab down");
    for host in lab.hosts() {
        assert!(
            ports_closed(host, &host.ports()),
            "{} has a port open after down",
            host.name
        );
    }
    for (pid, marker) in pods.iter().chain(
        kubelets
            .iter()
            .zip(lab.hosts())
            .map(|(p, h)| (*p, h.root.display().to_string()))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(
            !procs::is_ours(*pid, marker),
            "pid {pid} still runs after lab down"
        );
    }
}

#[tokio::test]
async fn five_members_come_up_healthy() {
    let lab = testlab::up(5, EtcdVersion::V35).await;
    assert_cluster(&lab).await;
}

#[tokio::test]
async fn three_members_on_etcd_34() {
    if testlab::tools_or_skip(EtcdVersion::V34).is_none() {
        return;
    }
    let lab = testlab::up(3, EtcdVersion::V34).await;
    assert_cluster(&lab).await;
    refuses_client_without_certificate(&lab).await;
}

#[tokio::test]
async fn removing_a_manifest_stops_exactly_that_member_and_putting_it_back_restores_it() {
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let (h1, h2, h3) = (&lab.hosts()[0], &lab.hosts()[1], &lab.hosts()[2]);
    let mut c1 = member_client(&h1.client_url(), &lab.etcd_tls())
        .await
        .expect("client");

    lab.remove_manifest(h2, "etcd")
        .expect("remove cp-2's etcd manifest");
    eventually("cp-2's etcd ports to close", || async {
        ports_closed(h2, &[2379, 2380, 2381]).then_some(())
    })
    .await;
    assert!(procs::port_open(h3.ip, 2379), "cp-3 keeps running");
    // The other two keep quorum: a write succeeds while cp-2 is down.
    c1.put(
        "/registry/configmaps/default/written-while-down",
        "v1",
        None,
    )
    .await
    .expect("write with cp-2 down");
    assert!(lab.member_healthy(h3).await, "cp-3 stays healthy");

    lab.restore_manifest(h2, "etcd")
        .expect("put cp-2's manifest back");
    eventually("cp-2 healthy again", || async {
        lab.member_healthy(h2).await.then_some(())
    })
    .await;
    let mut c2 = member_client(&h2.client_url(), &lab.etcd_tls())
        .await
        .expect("client");
    let got = eventually("cp-2 to catch up", || {
        let mut c2 = c2.clone();
        async move {
            let r = c2
                .get("/registry/configmaps/default/written-while-down", None)
                .await
                .ok()?;
            r.kvs().first().map(|kv| kv.value().to_vec())
        }
    })
    .await;
    assert_eq!(got, b"v1");
    let members = c2.member_list().await.expect("member list").members().len();
    assert_eq!(members, 3);
}

async fn heartbeat(lab: &Lab, host: &Host, reader: &Host) -> Option<i64> {
    let mut c = member_client(&reader.client_url(), &lab.etcd_tls())
        .await
        .ok()?;
    let key = format!("/registry/leases/kube-system/apiserver-{}", host.name);
    let r = c.get(key, None).await.ok()?;
    r.kvs().first().map(|kv| kv.mod_revision())
}

#[tokio::test]
async fn apiserver_readiness_follows_quorum_and_heartbeat_only_while_running() {
    let lab = testlab::up(3, EtcdVersion::V35).await;
    let (h1, h2, h3) = (&lab.hosts()[0], &lab.hosts()[1], &lab.hosts()[2]);

    // The heartbeat advances while the apiserver runs.
    let first = eventually("cp-1's heartbeat", || heartbeat(&lab, h1, h2)).await;
    eventually("cp-1's heartbeat to advance", || async {
        heartbeat(&lab, h1, h2).await.filter(|r| *r > first)
    })
    .await;

    // Quorum lost: cp-1's apiserver stops being ready; back when quorum returns.
    lab.remove_manifest(h2, "etcd").expect("stop cp-2");
    lab.remove_manifest(h3, "etcd").expect("stop cp-3");
    eventually("cp-1 /readyz to fail without quorum", || async {
        (lab.apiserver_readyz(h1).await != Some(200)).then_some(())
    })
    .await;
    lab.restore_manifest(h2, "etcd").expect("start cp-2");
    lab.restore_manifest(h3, "etcd").expect("start cp-3");
    eventually("cp-1 /readyz back", || async {
        (lab.apiserver_readyz(h1).await == Some(200)).then_some(())
    })
    .await;

    // Apiserver stopped: its heartbeat stays still while another's goes on.
    lab.remove_manifest(h1, "kube-apiserver")
        .expect("stop cp-1's apiserver");
    eventually("cp-1's apiserver port to close", || async {
        ports_closed(h1, &[6443]).then_some(())
    })
    .await;
    let frozen = heartbeat(&lab, h1, h2)
        .await
        .expect("cp-1's last heartbeat");
    let other = heartbeat(&lab, h2, h2).await.expect("cp-2's heartbeat");
    eventually("cp-2's heartbeat to advance", || async {
        heartbeat(&lab, h2, h2).await.filter(|r| *r > other)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        heartbeat(&lab, h1, h2).await,
        Some(frozen),
        "a stopped apiserver wrote a heartbeat"
    );
}

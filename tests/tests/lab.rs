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
    for (pid, _) in pods.iter().chain(
        kubelets
            .iter()
            .zip(lab.hosts())
            .map(|(p, h)| (*p, h.root.display().to_string()))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(!alive(*pid), "pid {pid} still runs after lab down");
    }
}

/// True when `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
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

/// The flag `--name` of a manifest's etcd command, and so on.
fn flag<'a>(command: &'a [String], name: &str) -> Option<&'a str> {
    command
        .iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

/// As root, every host is a kubeadm node: its own network, mount and UTS namespaces, kubeadm's
/// paths and manifests (`etcd` from the image, loopback client and metrics URLs, members joined
/// one by one with `--initial-cluster-state=existing`), nothing of etcd on its PATH; and `lab
/// down` leaves no process, namespace, link or mount behind.
#[tokio::test]
async fn hosts_are_kubeadm_nodes_and_down_leaves_nothing() {
    if !quorate_lab::realfaults::root_or_skip("hosts as namespaces") {
        return;
    }
    let mut lab = testlab::up(3, EtcdVersion::V35).await;
    let tools = lab.state.tools.clone();
    for (i, host) in lab.hosts().iter().enumerate() {
        let ns = host.ns.clone().expect("as root, hosts are namespaces");
        let text =
            std::fs::read_to_string(host.manifests_dir().join("etcd.yaml")).expect("etcd.yaml");
        let pod: serde_json::Value = serde_yaml_ng::from_str(&text).expect("manifest YAML");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(
            c["image"].as_str(),
            Some(format!("registry.k8s.io/etcd:{}-0", tools.full_version).as_str())
        );
        let command: Vec<String> =
            serde_json::from_value(c["command"].clone()).expect("command is a list");
        assert_eq!(command[0], "etcd", "kubeadm runs `etcd` from the image");
        assert_eq!(flag(&command, "data-dir"), Some("/var/lib/etcd"));
        assert_eq!(
            flag(&command, "listen-client-urls"),
            Some(format!("https://127.0.0.1:2379,{}", host.client_url()).as_str())
        );
        assert_eq!(
            flag(&command, "listen-metrics-urls"),
            Some("http://127.0.0.1:2381")
        );
        assert_eq!(
            flag(&command, "cert-file"),
            Some("/etc/kubernetes/pki/etcd/server.crt")
        );
        let members: Vec<&str> = flag(&command, "initial-cluster")
            .expect("--initial-cluster")
            .split(',')
            .collect();
        assert_eq!(
            members.len(),
            i + 1,
            "{}: the members known when it joined",
            host.name
        );
        let state = flag(&command, "initial-cluster-state");
        assert_eq!(state, (i > 0).then_some("existing"), "{}", host.name);
        assert_eq!(
            c["livenessProbe"]["httpGet"]["host"].as_str(),
            Some("127.0.0.1")
        );
        let volumes: Vec<&str> = pod["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v["hostPath"]["path"].as_str())
            .collect();
        assert_eq!(volumes, ["/etc/kubernetes/pki/etcd", "/var/lib/etcd"]);

        let out = ns
            .command("sh")
            .args(["-c", "hostname; command -v etcd || echo no-etcd; test -d /var/lib/etcd/member && echo data; test -f /etc/kubernetes/manifests/etcd.yaml && echo manifest"])
            .output()
            .expect("running a command on the host");
        let seen = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            seen.lines().collect::<Vec<_>>(),
            [host.name.as_str(), "no-etcd", "data", "manifest"],
            "{}: {}",
            host.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // etcd runs in a container: the agents read its version from the image, and probe its
    // health on the host's own loopback; quorate, outside every host, says so in its plan.
    let snapshot = lab.dir().join("snapshot.db");
    quorate_lab::scenario::save_snapshot(&lab, &lab.hosts()[0], &snapshot).expect("snapshot");
    let plan = quorate_lab::scenario::plan_text(&lab, &snapshot);
    let image = format!(
        "etcd version from image registry.k8s.io/etcd:{}-0",
        tools.full_version
    );
    assert_eq!(plan.matches(&image).count(), 3, "{plan}");
    assert_eq!(
        plan.matches("http://127.0.0.1:2381/health").count(),
        3,
        "{plan}"
    );
    assert_eq!(
        plan.matches("layout: data dir /var/lib/etcd").count(),
        3,
        "{plan}"
    );
    // kubeadm's metrics listener is each host's own loopback: nothing of it on the bastion's.
    assert!(
        !procs::port_open(std::net::Ipv4Addr::LOCALHOST, 2381),
        "etcd's metrics listener is on a host's loopback, not on the bastion's"
    );
    let hosts = lab.hosts().to_vec();
    let pids: Vec<u32> = hosts
        .iter()
        .flat_map(|h| h.ns.as_ref().expect("ns").pids())
        .collect();
    assert!(
        pids.len() >= 3 * 6,
        "kubelet, agent and 4 pods per host: {pids:?}"
    );
    let dir = lab.dir().to_owned();
    lab.down().expect("lab down");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still runs after lab down");
    }
    for host in &hosts {
        let ns = host.ns.as_ref().expect("ns");
        assert!(
            !std::path::Path::new("/run/netns").join(&ns.netns).exists(),
            "{} netns left",
            host.name
        );
        assert!(
            !std::path::Path::new("/sys/class/net")
                .join(&ns.veth)
                .exists(),
            "{} veth left",
            host.name
        );
    }
    let bridge = quorate_lab::hostns::bridge_name(lab.state.net);
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "bridge left"
    );
    assert_eq!(
        quorate_lab::hostns::mounts_under(&dir),
        Vec::<std::path::PathBuf>::new()
    );
}

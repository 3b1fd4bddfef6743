//! A hardened control plane: a kube-apiserver with `--anonymous-auth=false`. Without client
//! credentials on its host the restore is refused before anything changes, naming the member and
//! the setting; with a kubeconfig like kubeadm's admin.conf the restore completes and its agent
//! waits for `/readyz` with that client certificate.

use std::path::Path;

use quorate::certs::{Ca, Usage};
use quorate_lab::lab::Lab;
use quorate_lab::layout::Host;
use quorate_lab::testlab::{self, eventually};
use quorate_lab::tools::EtcdVersion;
use quorate_lab::{faults, scenario};

/// Restarts `host`'s apiserver with `--anonymous-auth=false` and `--client-ca-file` (the
/// kubelet stand-in runs the changed manifest), and waits until it refuses anonymous requests.
async fn harden(lab: &Lab, host: &Host) {
    let manifest = host.manifests_dir().join("kube-apiserver.yaml");
    let text = std::fs::read_to_string(&manifest).expect("apiserver manifest");
    let node = format!("    - --node-name={}\n", host.name);
    assert!(text.contains(&node), "{text}");
    let hardened = text.replace(
        &node,
        &format!(
            "{node}    - --anonymous-auth=false\n    - --client-ca-file={}\n",
            host.pki_dir().join("ca.crt").display()
        ),
    );
    quorate_lab::lab::write_atomic(&manifest, &hardened).expect("write manifest");
    eventually(
        "the hardened apiserver to refuse anonymous /readyz",
        || async { (lab.apiserver_readyz(host).await == Some(401)).then_some(()) },
    )
    .await;
}

/// Writes a kubeconfig shaped like kubeadm's admin.conf under the host's /etc/kubernetes, with a
/// client certificate from the cluster CA (by relative path, as kubectl allows).
fn write_admin_conf(host: &Host) -> std::path::PathBuf {
    let pki = host.pki_dir();
    let read = |p: &Path| std::fs::read_to_string(p).expect("read CA");
    let ca = Ca::from_pem(&read(&pki.join("ca.crt")), &read(&pki.join("ca.key"))).expect("CA");
    let admin = ca
        .issue("kubernetes-admin", &[], &[], Usage::Client)
        .expect("admin certificate");
    admin.write(&pki, "admin").expect("write admin cert");
    let conf = host.path("etc/kubernetes/admin.conf");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://{}:6443\n  name: kubernetes\n\
         contexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\n\
         current-context: kubernetes-admin@kubernetes\npreferences: {{}}\n\
         users:\n- name: kubernetes-admin\n  user:\n    client-certificate: pki/admin.crt\n    client-key: pki/admin.key\n",
        host.ip
    );
    std::fs::write(&conf, text).expect("write admin.conf");
    conf
}

#[tokio::test]
async fn a_hardened_apiserver_is_refused_without_credentials_and_restored_with_a_kubeconfig() {
    let mut lab = testlab::up(3, EtcdVersion::V35).await;
    let host = lab.hosts()[0].clone();
    harden(&lab, &host).await;

    let snapshot = lab.dir().join("snapshot.db");
    let snap_rev = scenario::save_snapshot(&lab, &host, &snapshot).expect("snapshot save");
    scenario::mutate(&lab)
        .await
        .expect("change data after the snapshot");

    // No credentials on cp-1: refused before anything is touched.
    let before = faults::cluster_state(&lab).await.expect("state");
    let out = scenario::quorate_restore(&lab, &snapshot, &["--yes"]).expect("quorate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "restored without /readyz credentials: {text}"
    );
    assert!(
        text.contains("member cp-1: cannot check the kube-apiserver's /readyz")
            && text.contains("--anonymous-auth=false")
            && text.contains("apiserver.kubeconfig")
            && text.contains("nothing was changed")
            && !text.contains("member cp-2:"),
        "{text}"
    );
    assert_eq!(
        faults::cluster_state(&lab).await.expect("state"),
        before,
        "the refused restore changed the cluster"
    );

    // kubeadm's admin.conf, configured for cp-1's agent: the restore completes.
    let conf = write_admin_conf(&host);
    let config = host.path("etc/quorate/agent.toml");
    let agent_toml = std::fs::read_to_string(&config).expect("agent config");
    let with_kubeconfig = agent_toml.replace(
        "[apiserver]\n",
        &format!(
            "[apiserver]\nkubeconfig = {:?}\n",
            conf.display().to_string()
        ),
    );
    assert_ne!(agent_toml, with_kubeconfig, "{agent_toml}");
    lab.kill_agent(0).expect("stop cp-1's agent");
    std::fs::write(&config, with_kubeconfig).expect("write agent config");
    lab.start_agent(0, None).await.expect("start cp-1's agent");

    let out = scenario::quorate_restore(&lab, &snapshot, &["--yes"]).expect("quorate");
    assert!(
        out.status.success(),
        "restore with a kubeconfig failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, d) in scenario::dumps_at(&lab, None).await.expect("dumps") {
        assert_eq!(
            d.count_prefix("/registry/configmaps/after/"),
            0,
            "{name} kept keys added after the snapshot (snapshot at revision {snap_rev})"
        );
    }
    // Still hardened, and ready (unfence waited for /readyz 200 with the client certificate).
    assert_eq!(lab.apiserver_readyz(&host).await, Some(401));
    for other in &lab.hosts()[1..] {
        assert_eq!(
            lab.apiserver_readyz(other).await,
            Some(200),
            "{}",
            other.name
        );
    }
}

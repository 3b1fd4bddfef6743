//! Which endpoints are probed, with what, and what their answers mean.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use super::*;
use crate::manifest::PodCommand;

/// An etcd CA and a client certificate, written as `ca.crt`, `<client>.crt`, `<client>.key`.
fn write_pki(dir: &Path, client: &str) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![client.to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("sign");
    std::fs::write(dir.join(format!("{client}.crt")), cert.pem()).expect("write cert");
    std::fs::write(dir.join(format!("{client}.key")), key.serialize_pem()).expect("write key");
}

fn member(flags: &[String]) -> EtcdMember {
    let mut argv = vec![
        "etcd".to_owned(),
        "--name=cp-1".into(),
        "--data-dir=/var/lib/etcd".into(),
        "--initial-advertise-peer-urls=https://10.0.0.11:2380".into(),
    ];
    argv.extend(flags.iter().cloned());
    let yaml = format!(
        "spec:\n  containers:\n  - image: registry.k8s.io/etcd:3.5.16-0\n    command:\n{}",
        argv.iter()
            .map(|a| format!("    - \"{a}\"\n"))
            .collect::<String>()
    );
    EtcdMember::from_command(PodCommand::parse(&yaml, Path::new("/m/etcd.yaml")).expect("pod"))
        .expect("member")
}

#[test]
fn kubeadm_etcd_is_probed_on_its_loopback_metrics_url() {
    let m = member(&[
        "--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.11:2379".into(),
        "--listen-metrics-urls=http://127.0.0.1:2381".into(),
        "--client-cert-auth=true".into(),
        "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt".into(),
    ]);
    let e = etcd_endpoints(&m, &EtcdCredentials::default()).expect("endpoints");
    let described: Vec<String> = e.iter().map(EtcdEndpoint::describe).collect();
    assert_eq!(described, ["metrics http://127.0.0.1:2381/health"]);
    let wildcard = member(&["--listen-metrics-urls=http://0.0.0.0:2381,http://[::]:2382".into()]);
    let e = etcd_endpoints(&wildcard, &EtcdCredentials::default()).expect("endpoints");
    let urls: Vec<String> = e.iter().map(EtcdEndpoint::health_url).collect();
    assert_eq!(
        urls,
        ["http://127.0.0.1:2381/health", "http://[::1]:2382/health"]
    );
}

#[test]
fn without_metrics_the_client_url_is_probed_with_the_healthcheck_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_pki(dir.path(), "healthcheck-client");
    let ca = dir.path().join("ca.crt");
    let flags = |ca: &Path| {
        vec![
            "--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.11:2379".to_owned(),
            "--client-cert-auth=true".into(),
            format!("--trusted-ca-file={}", ca.display()),
        ]
    };
    let e = etcd_endpoints(&member(&flags(&ca)), &EtcdCredentials::default()).expect("endpoints");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].kind, HealthEndpointKind::Client);
    assert_eq!(
        e[0].describe(),
        format!(
            "client https://127.0.0.1:2379/health with client certificate {}",
            dir.path().join("healthcheck-client.crt").display()
        )
    );

    // Configured credentials win over kubeadm's files.
    write_pki(dir.path(), "agent");
    let creds = EtcdCredentials {
        ca: Some(ca.clone()),
        client_cert: Some(dir.path().join("agent.crt")),
        client_key: Some(dir.path().join("agent.key")),
    };
    let e = etcd_endpoints(&member(&flags(&ca)), &creds).expect("configured");
    assert!(
        e[0].describe().ends_with("agent.crt"),
        "{}",
        e[0].describe()
    );

    // No certificate anywhere: refused, saying both fixes.
    let bare = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&ca, bare.path().join("ca.crt")).expect("copy");
    let err = etcd_endpoints(
        &member(&flags(&bare.path().join("ca.crt"))),
        &EtcdCredentials::default(),
    )
    .err()
    .expect("no client certificate")
    .to_string();
    assert!(
        err.contains("etcd.client_cert") && err.contains("--listen-metrics-urls"),
        "{err}"
    );
}

#[test]
fn an_https_listener_without_a_ca_is_refused_naming_the_setting() {
    let m = member(&["--listen-metrics-urls=https://127.0.0.1:2381".into()]);
    let err = etcd_endpoints(&m, &EtcdCredentials::default())
        .err()
        .expect("no CA")
        .to_string();
    assert!(
        err.contains("etcd.ca") && err.contains("--trusted-ca-file"),
        "{err}"
    );
    let none = member(&[]);
    let err = etcd_endpoints(&none, &EtcdCredentials::default())
        .err()
        .expect("no listener")
        .to_string();
    assert!(
        err.contains("--listen-metrics-urls=http://127.0.0.1:2381"),
        "{err}"
    );
}

fn answer(status: u16, body: &str) -> anyhow::Result<probe::Response> {
    Ok(probe::Response {
        status,
        body: body.to_owned(),
    })
}

#[test]
fn health_answers_are_classified() {
    let url = "http://127.0.0.1:2381/health";
    let m = HealthEndpointKind::Metrics;
    let cases = [
        (
            answer(200, "{\"health\":\"true\",\"reason\":\"\"}"),
            EtcdHealthState::Healthy,
            "",
        ),
        (
            answer(503, "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}"),
            EtcdHealthState::NoLeader,
            "RAFT NO LEADER",
        ),
        (
            answer(503, "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}"),
            EtcdHealthState::Unhealthy,
            "ALARM NOSPACE",
        ),
        (
            answer(503, "{\"health\":\"false\"}"),
            EtcdHealthState::Unhealthy,
            "no reason given (etcd 3.4 gives none)",
        ),
        (
            answer(200, "{\"health\":\"false\"}"),
            EtcdHealthState::Unhealthy,
            "no reason given (etcd 3.4 gives none)",
        ),
        (
            answer(404, "404 page not found\n"),
            EtcdHealthState::Unhealthy,
            "404 page not found",
        ),
        (
            Err(anyhow::anyhow!(
                "GET {url}: connect: Connection refused (os error 111)"
            )),
            EtcdHealthState::NotAnswering,
            "connect: Connection refused (os error 111)",
        ),
    ];
    for (result, state, detail) in cases {
        let h = classify(url, m, result);
        assert_eq!((h.state, h.detail.as_str()), (state, detail), "{h:?}");
        assert_eq!(h.status.is_some(), state.answers());
    }
}

fn apiserver(flags: &str) -> Apiserver {
    let text = format!(
        "spec:\n  containers:\n  - command: [kube-apiserver, --advertise-address=10.0.0.11{flags}]\n"
    );
    Apiserver::from_command(
        PodCommand::parse(
            &text,
            Path::new("/etc/kubernetes/manifests/kube-apiserver.yaml"),
        )
        .expect("pod"),
    )
    .expect("apiserver")
}

#[test]
fn readyz_credentials_are_chosen_by_the_apiserver_flags_and_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_pki(dir.path(), "admin");
    let mut config = ReadyzConfig::new(dir.path().join("ca.crt"), ReadyzCredentials::Unset);
    config.default_kubeconfig = dir.path().join("admin.conf");

    let open = readyz_probe(&config, &apiserver("")).expect("anonymous");
    assert_eq!(open.auth, "anonymous");
    assert_eq!(open.url, "https://10.0.0.11:6443/readyz");

    let hardened = apiserver(", --anonymous-auth=false");
    let err = readyz_probe(&config, &hardened)
        .err()
        .expect("no credentials")
        .to_string();
    assert!(
        err.contains("--anonymous-auth=false")
            && err.contains("kube-apiserver.yaml")
            && err.contains("admin.conf does not exist")
            && err.contains("apiserver.client_cert"),
        "{err}"
    );

    let conf = "users:\n- name: admin\n  user:\n    client-certificate: admin.crt\n    client-key: admin.key\n";
    std::fs::write(dir.path().join("admin.conf"), conf).expect("write");
    let by_default = readyz_probe(&config, &hardened).expect("kubeadm's admin.conf");
    assert!(
        by_default.auth.contains("admin.conf")
            && by_default.auth.contains("--anonymous-auth=false"),
        "{}",
        by_default.auth
    );

    config.credentials = ReadyzCredentials::ClientCert {
        cert: dir.path().join("admin.crt"),
        key: dir.path().join("admin.key"),
    };
    let configured = readyz_probe(&config, &apiserver("")).expect("configured");
    assert!(
        configured.auth.ends_with("admin.crt"),
        "{}",
        configured.auth
    );

    let token = dir.path().join("token.conf");
    std::fs::write(&token, "users:\n- name: a\n  user:\n    token: abc\n").expect("write");
    config.credentials = ReadyzCredentials::Kubeconfig(token);
    let err = readyz_probe(&config, &apiserver(""))
        .err()
        .expect("a token is not a certificate")
        .to_string();
    assert!(
        err.contains("token") && err.contains("apiserver.client_cert"),
        "{err}"
    );
    let debug = format!(
        "{:?}",
        ReadyzCredentials::ClientCert {
            cert: "/c.crt".into(),
            key: "/secret.key".into(),
        }
    );
    assert!(!debug.contains("secret"), "{debug}");
}

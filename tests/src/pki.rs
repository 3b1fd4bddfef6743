//! The lab's PKI, in kubeadm's file layout on every host, plus quorate's agent and coordinator
//! certificates.
//!
//! ```text
//! DIR/pki/{etcd-ca,kubernetes-ca,quorate-ca}.{crt,key}     the CAs (to mint more in tests)
//! DIR/coordinator/quorate-ca.crt, coordinator.{crt,key}    coordinator → agents (mTLS client)
//! DIR/coordinator/etcd-ca.crt, etcd-client.{crt,key}       coordinator → etcd (verify)
//! HOST/etc/kubernetes/pki/ca.{crt,key}, apiserver.{crt,key}, apiserver-etcd-client.{crt,key}
//! HOST/etc/kubernetes/pki/etcd/ca.{crt,key}, server, peer, healthcheck-client
//! HOST/etc/kubernetes/admin.conf                            kubeadm's admin kubeconfig
//! DIR/pki/admin.{crt,key}                                  the lab's own admin client certificate
//! HOST/etc/quorate/pki/ca.crt, agent.{crt,key}              agent server certificate (labs
//!                                                          that run agents)
//! DIR/certs/ca.{crt,key}, agents/<host>.{crt,key}          the same CA and agent certificates
//!                                                          as `quorate certs init` lays them
//!                                                          out, for `quorate agents install`
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use quorate::certs::{Ca, Usage};

use crate::layout::Host;

/// The name on the coordinator's client certificate; agents allow it.
pub const COORDINATOR_NAME: &str = "quorate-coordinator";

pub struct LabPki {
    pub etcd_ca: Ca,
    pub kubernetes_ca: Ca,
    pub quorate_ca: Ca,
}

impl LabPki {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            etcd_ca: Ca::new("etcd-ca")?,
            kubernetes_ca: Ca::new("kubernetes")?,
            quorate_ca: Ca::new("quorate-ca")?,
        })
    }

    /// Writes the CAs and the coordinator's certificates under the lab dir.
    pub fn write_lab(&self, dir: &Path) -> anyhow::Result<()> {
        let pki = dir.join("pki");
        self.etcd_ca.pem().write(&pki, "etcd-ca")?;
        self.kubernetes_ca.pem().write(&pki, "kubernetes-ca")?;
        self.quorate_ca.pem().write(&pki, "quorate-ca")?;
        let coord = dir.join("coordinator");
        std::fs::create_dir_all(&coord)?;
        std::fs::write(coord.join("quorate-ca.crt"), self.quorate_ca.cert_pem())?;
        std::fs::write(coord.join("etcd-ca.crt"), self.etcd_ca.cert_pem())?;
        self.quorate_ca
            .issue(COORDINATOR_NAME, &[COORDINATOR_NAME], &[], Usage::Client)?
            .write(&coord, "coordinator")?;
        self.etcd_ca
            .issue("quorate", &["quorate"], &[], Usage::Client)?
            .write(&coord, "etcd-client")?;
        self.admin()?.write(&pki, "admin")?;
        Ok(())
    }

    /// kubeadm's cluster admin client certificate (in `admin.conf`).
    fn admin(&self) -> anyhow::Result<quorate::certs::Pem> {
        Ok(self
            .kubernetes_ca
            .issue("kubernetes-admin", &[], &[], Usage::Client)?)
    }

    /// `/etc/kubernetes/admin.conf` as kubeadm writes it: the cluster's CA and an admin client
    /// certificate, embedded.
    fn admin_conf(&self, host: &Host) -> anyhow::Result<String> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let admin = self.admin()?;
        Ok(format!(
            "apiVersion: v1\n\
             clusters:\n\
             - cluster:\n    certificate-authority-data: {ca}\n    server: https://{ip}:6443\n  name: kubernetes\n\
             contexts:\n\
             - context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\n\
             current-context: kubernetes-admin@kubernetes\n\
             kind: Config\n\
             preferences: {{}}\n\
             users:\n\
             - name: kubernetes-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
            ca = b64(&self.kubernetes_ca.cert_pem()),
            ip = host.ip,
            cert = b64(&admin.cert),
            key = b64(&admin.key),
        ))
    }

    /// An agent's server certificate for `host`.
    fn agent_cert(&self, host: &Host) -> anyhow::Result<quorate::certs::Pem> {
        let ips = [IpAddr::V4(host.ip), IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let names = [host.name.as_str(), "localhost"];
        Ok(self
            .quorate_ca
            .issue(&host.name, &names, &ips, Usage::Server)?)
    }

    /// `DIR/certs` as `quorate certs init` writes it: the quorate CA and an agent certificate
    /// per host, for `quorate agents install --certs DIR/certs`.
    pub fn write_certs_dir(&self, dir: &Path, hosts: &[&Host]) -> anyhow::Result<()> {
        let certs = dir.join("certs");
        self.quorate_ca.pem().write(&certs, "ca")?;
        for host in hosts {
            self.agent_cert(host)?
                .write(&certs.join("agents"), &host.name)?;
        }
        Ok(())
    }

    /// Writes one host's certificates in kubeadm's layout, and the agent's when `agent`.
    pub fn write_host(&self, host: &Host, agent: bool) -> anyhow::Result<()> {
        let ips = [IpAddr::V4(host.ip), IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let names = [host.name.as_str(), "localhost"];
        let pki = host.pki_dir();
        let etcd = host.etcd_pki_dir();
        self.kubernetes_ca.pem().write(&pki, "ca")?;
        self.kubernetes_ca
            .issue(
                "kube-apiserver",
                &[host.name.as_str(), "kubernetes", "kubernetes.default"],
                &ips,
                Usage::Server,
            )?
            .write(&pki, "apiserver")?;
        self.etcd_ca
            .issue("kube-apiserver-etcd-client", &[], &[], Usage::Client)?
            .write(&pki, "apiserver-etcd-client")?;
        self.etcd_ca.pem().write(&etcd, "ca")?;
        self.etcd_ca
            .issue(&host.name, &names, &ips, Usage::ServerAndClient)?
            .write(&etcd, "server")?;
        self.etcd_ca
            .issue(&host.name, &names, &ips, Usage::ServerAndClient)?
            .write(&etcd, "peer")?;
        self.etcd_ca
            .issue("kube-etcd-healthcheck-client", &[], &[], Usage::Client)?
            .write(&etcd, "healthcheck-client")?;
        let conf = host.path("etc/kubernetes/admin.conf");
        std::fs::write(&conf, self.admin_conf(host)?)?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600))?;
        }
        if agent {
            let quorate = host.quorate_pki_dir();
            std::fs::create_dir_all(&quorate)?;
            std::fs::write(quorate.join("ca.crt"), self.quorate_ca.cert_pem())?;
            self.agent_cert(host)?.write(&quorate, "agent")?;
        }
        Ok(())
    }
}

//! Certificate minting for clusters that have none, and for the lab (`quorate certs`).
//!
//! ECDSA P-256 keys, written PEM with private keys at mode 0600. [`Ca::new`] and [`Ca::issue`]
//! serve the lab and tests; `quorate certs` uses [`Ca::new_quorate`] and [`Ca::issue_leaf`],
//! which set a validity period (see `certs_cmd`).

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("minting a certificate for {name}: {source}")]
    Mint { name: String, source: rcgen::Error },
    #[error("the CA in {path} cannot be used: {reason}")]
    BadCa {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks of hosts disagree a little) for `days` days.
    pub fn days_from_now(days: u32) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self {
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(i64::from(days)),
        }
    }

    /// From `from` to `to` days from now (negative: in the past), e.g. `(-10, -1)` for a
    /// certificate that expired yesterday.
    pub fn relative_days(from: i64, to: i64) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self {
            not_before: now + time::Duration::days(from),
            not_after: now + time::Duration::days(to),
        }
    }
}

/// A leaf to issue: its subject, names, purpose and validity.
#[derive(Debug, Clone)]
pub struct Leaf<'a> {
    pub common_name: &'a str,
    pub dns: &'a [&'a str],
    pub ips: &'a [IpAddr],
    pub usage: Usage,
    /// `None`: rcgen's default (valid from 1975 to 4096).
    pub validity: Option<Validity>,
}

/// A certificate and its key, PEM. `Debug` never shows the key.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem")
            .field("cert_len", &self.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Pem {
    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key` (0600).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), CertError> {
        write_file(
            &dir.join(format!("{stem}.crt")),
            self.cert.as_bytes(),
            0o644,
        )?;
        write_file(&dir.join(format!("{stem}.key")), self.key.as_bytes(), 0o600)
    }
}

/// A certificate authority that can issue leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("key", &"<redacted>").finish()
    }
}

impl Ca {
    pub fn new(common_name: &str) -> Result<Self, CertError> {
        let mint = |source| CertError::Mint {
            name: common_name.to_owned(),
            source,
        };
        let key = KeyPair::generate().map_err(mint)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(mint)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert_pem = params.self_signed(&key).map_err(mint)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// quorate's own CA (`quorate certs init`): it signs leaves only (path length 0), its key
    /// may sign certificates and nothing else, and its name says what it is for.
    pub fn new_quorate(common_name: &str, validity: Validity) -> Result<Self, CertError> {
        let mint = |source| CertError::Mint {
            name: common_name.to_owned(),
            source,
        };
        let key = KeyPair::generate().map_err(mint)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(mint)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert_pem = params.self_signed(&key).map_err(mint)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// An existing CA, from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let mint = |source| CertError::Mint {
            name: "an existing CA".to_owned(),
            source,
        };
        let key = KeyPair::from_pem(key_pem).map_err(mint)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key).map_err(mint)?,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA itself as PEM (certificate and key).
    pub fn pem(&self) -> Pem {
        Pem {
            cert: self.cert_pem.clone(),
            key: self.key_pem.clone(),
        }
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Issues a leaf for `common_name`, valid for the DNS names and IPs given.
    pub fn issue(
        &self,
        common_name: &str,
        dns: &[&str],
        ips: &[IpAddr],
        usage: Usage,
    ) -> Result<Pem, CertError> {
        self.issue_leaf(&Leaf {
            common_name,
            dns,
            ips,
            usage,
            validity: None,
        })
    }

    /// Issues `leaf`.
    pub fn issue_leaf(&self, leaf: &Leaf<'_>) -> Result<Pem, CertError> {
        let Leaf {
            common_name,
            dns,
            ips,
            usage,
            validity,
        } = *leaf;
        let mint = |source| CertError::Mint {
            name: common_name.to_owned(),
            source,
        };
        let key = KeyPair::generate().map_err(mint)?;
        let names: Vec<String> = dns.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(mint)?;
        params
            .subject_alt_names
            .extend(ips.iter().copied().map(SanType::IpAddress));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        if let Some(v) = validity {
            params.not_before = v.not_before;
            params.not_after = v.not_after;
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(mint)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_leaf_verifies_against_its_ca_and_names() {
        let ca = Ca::new("test-ca").expect("ca");
        let leaf = ca
            .issue(
                "agent",
                &["cp-1"],
                &["127.0.0.11".parse().expect("ip")],
                Usage::Server,
            )
            .expect("leaf");
        let dir = tempfile::tempdir().expect("tempdir");
        ca.pem().write(dir.path(), "ca").expect("write ca");
        leaf.write(dir.path(), "agent").expect("write leaf");
        let mode = fs::metadata(dir.path().join("agent.key"))
            .expect("key")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert!(format!("{leaf:?}").contains("redacted"));
        assert!(!format!("{leaf:?}").contains("PRIVATE"));
        // The leaf is accepted by a rustls server config built from these files.
        quorate_proto::tls::server_config(
            &dir.path().join("agent.crt"),
            &dir.path().join("agent.key"),
            Some(&dir.path().join("ca.crt")),
            &["coordinator".to_owned()],
        )
        .expect("server config from minted files");
    }
}

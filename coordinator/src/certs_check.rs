//! `quorate certs check`: each certificate's validity period, its chain to the CA, its names
//! against the inventory, its extended key usage, and its key.
//!
//! Every problem is a [`Finding`]: an error makes the command fail (a connection with that
//! certificate is refused, now or by a restore's end), a warning does not (it expires within
//! [`WARN_DAYS`] days, or a key file is readable by others).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// A certificate expiring within this many days is a warning.
pub const WARN_DAYS: i64 = 30;

const DAY: i64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warn,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub text: String,
}

/// One certificate's checks.
#[derive(Debug, Clone, Serialize)]
pub struct CertReport {
    /// "CA", "agent cp-1", "coordinator".
    pub what: String,
    pub path: PathBuf,
    pub subject: Option<String>,
    /// Seconds since the Unix epoch.
    pub not_after: Option<i64>,
    pub findings: Vec<Finding>,
}

impl CertReport {
    pub fn severity(&self) -> Severity {
        self.findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }

    fn push(&mut self, severity: Severity, text: String) {
        self.findings.push(Finding { severity, text });
    }

    /// One line: severity, what, where, and every finding.
    pub fn render(&self) -> String {
        let texts: Vec<&str> = self.findings.iter().map(|f| f.text.as_str()).collect();
        format!(
            "{:<5}  {:<18}  {}\n         {}\n",
            self.severity().name(),
            self.what,
            self.path.display(),
            texts.join("\n         ")
        )
    }
}

/// What a certificate is for, and so what it must satisfy.
#[derive(Debug, Clone)]
pub enum Role {
    /// The CA: a CA certificate whose key may sign certificates.
    Ca,
    /// An agent's server certificate: serverAuth, valid for `name`, the name the coordinator
    /// checks (`agent_server_name`, else the host of the agent URL), described by `why`.
    Server { name: String, why: String },
    /// The coordinator's client certificate: clientAuth, valid for one of the names agents allow.
    Client { allowed: Vec<String> },
}

/// A certificate file to check, with its key when known.
#[derive(Debug, Clone)]
pub struct Subject {
    pub what: String,
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
    pub role: Role,
}

/// The CA the leaves must chain to, read once.
pub struct Anchor {
    path: PathBuf,
    der: Option<CertificateDer<'static>>,
}

impl Anchor {
    /// The CA certificate in `path`; a leaf checked against an unreadable CA gets an error.
    pub fn read(path: &Path) -> Self {
        let der = std::fs::read(path)
            .ok()
            .and_then(|pem| first_der(&pem).ok())
            .map(CertificateDer::from);
        Self {
            path: path.to_owned(),
            der,
        }
    }
}

fn first_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("not a PEM certificate ({e})"))?;
    if pem.label != "CERTIFICATE" {
        return Err(format!("holds a PEM {:?}, not a CERTIFICATE", pem.label));
    }
    Ok(pem.contents)
}

/// A date as `YYYY-MM-DD` (UTC).
pub fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or_else(
        |_| format!("@{unix}"),
        |t| format!("{}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
    )
}

/// Checks one certificate at `now` (seconds since the Unix epoch).
pub fn check(subject: &Subject, anchor: &Anchor, now: i64) -> CertReport {
    let mut report = CertReport {
        what: subject.what.clone(),
        path: subject.cert.clone(),
        subject: None,
        not_after: None,
        findings: Vec::new(),
    };
    let der = match std::fs::read(&subject.cert) {
        Ok(pem) => match first_der(&pem) {
            Ok(der) => der,
            Err(e) => {
                report.push(Severity::Error, e);
                return report;
            }
        },
        Err(e) => {
            report.push(
                Severity::Error,
                format!("cannot be read ({e}): run `quorate certs init` (or rotate) to write it"),
            );
            return report;
        }
    };
    let cert = match X509Certificate::from_der(&der) {
        Ok((_, cert)) => cert,
        Err(e) => {
            report.push(Severity::Error, format!("is not a valid certificate: {e}"));
            return report;
        }
    };
    report.subject = Some(cert.subject().to_string());
    let (not_before, not_after) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    report.not_after = Some(not_after);
    validity(&mut report, not_before, not_after, now);
    match &subject.role {
        Role::Ca => ca_checks(&mut report, &cert),
        Role::Server { name, why } => {
            chain(
                &mut report,
                &der,
                anchor,
                (not_before, not_after, now),
                true,
            );
            names(&mut report, &der, std::slice::from_ref(name), why);
        }
        Role::Client { allowed } => {
            chain(
                &mut report,
                &der,
                anchor,
                (not_before, not_after, now),
                false,
            );
            names(
                &mut report,
                &der,
                allowed,
                "a name the agents allow (their allowed_clients)",
            );
        }
    }
    if let Some(key) = &subject.key {
        key_checks(&mut report, &cert, key);
    }
    report
}

fn validity(report: &mut CertReport, not_before: i64, not_after: i64, now: i64) {
    if now < not_before {
        report.push(
            Severity::Error,
            format!(
                "not valid yet: valid from {} (is this host's clock right?)",
                date(not_before)
            ),
        );
    } else if now > not_after {
        report.push(
            Severity::Error,
            format!(
                "expired on {} ({} days ago): run `quorate certs rotate`",
                date(not_after),
                (now - not_after) / DAY
            ),
        );
    } else if not_after - now < WARN_DAYS * DAY {
        report.push(
            Severity::Warn,
            format!(
                "expires on {}, in {} days: run `quorate certs rotate` and roll the new \
                 certificates out",
                date(not_after),
                (not_after - now) / DAY
            ),
        );
    } else {
        report.push(
            Severity::Ok,
            format!(
                "valid until {} ({} days)",
                date(not_after),
                (not_after - now) / DAY
            ),
        );
    }
}

fn ca_checks(report: &mut CertReport, cert: &X509Certificate<'_>) {
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca);
    if !is_ca {
        report.push(
            Severity::Error,
            "is not a CA certificate (no basicConstraints CA:TRUE)".into(),
        );
    }
    let signs = cert
        .key_usage()
        .ok()
        .flatten()
        .is_none_or(|k| k.value.key_cert_sign());
    if !signs {
        report.push(
            Severity::Error,
            "its key usage does not allow signing certificates (keyCertSign)".into(),
        );
    }
}

/// The chain to the CA and the extended key usage, checked inside the validity period (expiry
/// is its own finding).
fn chain(
    report: &mut CertReport,
    der: &[u8],
    anchor: &Anchor,
    (not_before, not_after, now): (i64, i64, i64),
    server: bool,
) {
    let Some(ca) = &anchor.der else {
        report.push(
            Severity::Error,
            format!(
                "its chain cannot be checked: no readable CA certificate in {}",
                anchor.path.display()
            ),
        );
        return;
    };
    let Ok(trust) = webpki::anchor_from_trusted_cert(ca) else {
        report.push(
            Severity::Error,
            format!("the CA in {} cannot be parsed", anchor.path.display()),
        );
        return;
    };
    let leaf_der = CertificateDer::from(der);
    let Ok(leaf) = webpki::EndEntityCert::try_from(&leaf_der) else {
        report.push(Severity::Error, "cannot be parsed for verification".into());
        return;
    };
    let at = now.clamp(not_before, not_after);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(at).unwrap_or(0),
    ));
    let (usage, eku) = if server {
        (webpki::KeyUsage::server_auth(), "serverAuth")
    } else {
        (webpki::KeyUsage::client_auth(), "clientAuth")
    };
    match leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[trust],
        &[],
        time,
        usage,
        None,
        None,
    ) {
        Ok(_) => report.push(
            Severity::Ok,
            format!("signed by the CA in {} for {eku}", anchor.path.display()),
        ),
        Err(webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey) => report
            .push(
                Severity::Error,
                format!(
                    "not signed by the CA in {} (a certificate of another CA): re-issue it with \
                 `quorate certs rotate`",
                    anchor.path.display()
                ),
            ),
        Err(webpki::Error::RequiredEkuNotFoundContext(_)) => report.push(
            Severity::Error,
            format!("its extended key usage lacks {eku}: TLS refuses it for this use"),
        ),
        Err(e) => report.push(
            Severity::Error,
            format!(
                "does not verify against the CA in {}: {e}",
                anchor.path.display()
            ),
        ),
    }
}

/// Valid for one of `wanted` (DNS name or IP address).
fn names(report: &mut CertReport, der: &[u8], wanted: &[String], why: &str) {
    let leaf_der = CertificateDer::from(der);
    let Ok(leaf) = webpki::EndEntityCert::try_from(&leaf_der) else {
        return;
    };
    let covered = wanted.iter().any(|name| {
        ServerName::try_from(name.as_str())
            .is_ok_and(|n| leaf.verify_is_valid_for_subject_name(&n).is_ok())
    });
    let list = wanted.join(", ");
    if covered {
        report.push(Severity::Ok, format!("valid for {list}"));
    } else {
        let sans = sans(der).join(", ");
        report.push(
            Severity::Error,
            format!(
                "not valid for {list}, {why}: its names are [{sans}]; re-issue it with `quorate \
                 certs rotate`"
            ),
        );
    }
}

/// The DNS names and IP addresses a certificate names.
pub fn sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => <[u8; 4]>::try_from(*ip)
                    .ok()
                    .map(|b| std::net::Ipv4Addr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*ip)
                    .ok()
                    .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn key_checks(report: &mut CertReport, cert: &X509Certificate<'_>, key: &Path) {
    let pem = match std::fs::read_to_string(key) {
        Ok(pem) => pem,
        Err(e) => {
            report.push(
                Severity::Error,
                format!("its key {} cannot be read: {e}", key.display()),
            );
            return;
        }
    };
    match rcgen::KeyPair::from_pem(&pem) {
        Ok(pair)
            if rcgen::PublicKeyData::subject_public_key_info(&pair) == cert.public_key().raw => {}
        Ok(_) => report.push(
            Severity::Error,
            format!(
                "its key {} belongs to another certificate: TLS with this pair fails",
                key.display()
            ),
        ),
        Err(e) => report.push(
            Severity::Error,
            format!("its key {} cannot be read as a PEM key: {e}", key.display()),
        ),
    }
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            report.push(
                Severity::Warn,
                format!(
                    "its key {} has mode {mode:o}: others may read it; chmod 600 it",
                    key.display()
                ),
            );
        }
    }
}

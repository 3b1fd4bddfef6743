//! TLS configuration shared by the agent, the coordinator and the lab.
//!
//! Every agent connection is mutual TLS 1.3 with ALPN `h2` only (both ends are quorate's, so
//! nothing older needs to be spoken): the agent accepts only client certificates signed by its
//! configured CA that are valid for one of its allowed names; the coordinator checks the agent's
//! server name against its CA. [`agent_server_config`] and [`agent_client_config`] build those two
//! ends; [`server_config`] and [`client_config`] are the general builders (the lab's apiserver
//! stand-ins and probes speak to other software). Key material never appears in `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Errors building a TLS configuration; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what} (expected PEM)")]
    Pem { what: &'static str, path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Paths of a certificate, its key and the CA that verifies the peer.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &"<path hidden>")
            .finish()
    }
}

/// PEM bytes of a certificate chain and its key; `Debug` never shows the key.
#[derive(Clone)]
pub struct PemIdentity {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Debug for PemIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemIdentity")
            .field("cert_bytes", &self.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TlsFiles {
    pub fn read_ca(&self) -> Result<Vec<u8>, TlsError> {
        read(&self.ca, "CA certificate")
    }

    pub fn read_identity(&self) -> Result<PemIdentity, TlsError> {
        Ok(PemIdentity {
            cert: read(&self.cert, "certificate")?,
            key: read(&self.key, "private key")?,
        })
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider (tonic and etcd-client rely on it).
pub fn install_default_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

fn certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            what: "certificate",
            path: path.to_owned(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate",
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
    })
}

fn roots(pem: &[u8], path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(pem, path)? {
        store.add(cert)?;
    }
    Ok(store)
}

/// A server configuration. With `client_ca`, clients must present a certificate from that CA
/// valid for one of `allowed_names` (DNS SAN); an empty list allows any name from that CA.
pub fn server_config(
    files_cert: &Path,
    files_key: &Path,
    client_ca: Option<&Path>,
    allowed_names: &[String],
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certs(&read(files_cert, "certificate")?, files_cert)?;
    let key = key(&read(files_key, "private key")?, files_key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let mut config = match client_ca {
        Some(ca) => builder
            .with_client_cert_verifier(allowed_names_verifier(ca, allowed_names)?)
            .with_single_cert(chain, key)?,
        None => builder.with_no_client_auth().with_single_cert(chain, key)?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The protocol an agent connection speaks: gRPC over HTTP/2, negotiated by ALPN.
pub const ALPN_H2: &[u8] = b"h2";

/// The agent's end of an agent connection: TLS 1.3 only, ALPN `h2` only, and a client
/// certificate from `client_ca` valid for one of `allowed_names` (which must not be empty).
pub fn agent_server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: &Path,
    allowed_names: &[String],
) -> Result<rustls::ServerConfig, TlsError> {
    if allowed_names.is_empty() {
        return Err(TlsError::Verifier(
            "no allowed client names: list the DNS names on the coordinator's client certificate \
             (allowed_clients)"
                .into(),
        ));
    }
    let chain = certs(&read(cert, "certificate")?, cert)?;
    let key = key(&read(key_path, "private key")?, key_path)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(allowed_names_verifier(client_ca, allowed_names)?)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The coordinator's end of an agent connection: TLS 1.3 only, ALPN `h2` only, trusting `ca`
/// and presenting the coordinator's certificate.
pub fn agent_client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let roots = roots(&files.read_ca()?, &files.ca)?;
    let chain = certs(&read(&files.cert, "certificate")?, &files.cert)?;
    let key = key(&read(&files.key, "private key")?, &files.key)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A client configuration trusting `ca`, presenting `identity` when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = roots(&read(ca, "CA certificate")?, ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((cert, key_path)) => {
            let chain = certs(&read(cert, "certificate")?, cert)?;
            let key = key(&read(key_path, "private key")?, key_path)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// Client certificates from `ca` valid for one of `names` (any name of that CA when empty).
fn allowed_names_verifier(ca: &Path, names: &[String]) -> Result<Arc<AllowedNames>, TlsError> {
    let roots = Arc::new(roots(&read(ca, "CA certificate")?, ca)?);
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(Arc::new(AllowedNames {
        inner,
        names: names.to_vec(),
    }))
}

/// Checks the client certificate against the CA, then against the allowed names.
#[derive(Debug)]
struct AllowedNames {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl ClientCertVerifier for AllowedNames {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.names.is_empty() {
            return Ok(ClientCertVerified::assertion());
        }
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("client certificate: {e}")))?;
        let allowed = self.names.iter().any(|name| {
            ServerName::try_from(name.as_str())
                .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
        });
        if allowed {
            Ok(ClientCertVerified::assertion())
        } else {
            // The client sees an `access denied` alert: its certificate is from the right CA
            // but not for a name this agent serves.
            tracing::warn!(
                allowed = %self.names.join(", "),
                "refused a client certificate of the CA that is not valid for any allowed name"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

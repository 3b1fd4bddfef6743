//! The client certificate of a kubeconfig (kubeadm's `/etc/kubernetes/admin.conf`), to probe an
//! apiserver's `/readyz` when it refuses anonymous requests. Only client certificates are read:
//! a token or an exec plugin is refused with what to configure instead.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use quorate_proto::tls::PemIdentity;
use serde::Deserialize;

/// Why a kubeconfig gives no client certificate; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a kubeconfig: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("kubeconfig {path}: {message}")]
    Unusable { path: PathBuf, message: String },
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default, rename = "current-context")]
    current_context: String,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Deserialize)]
struct Context {
    #[serde(default)]
    user: String,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

/// The fields of `users[].user` quorate reads; the others only say what is not supported.
#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
}

/// Reads the client certificate and key of `path`'s current user.
pub fn load_identity(path: &Path) -> Result<PemIdentity, KubeconfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_identity(&text, path)
}

/// Parses `text` (the kubeconfig at `path`; relative certificate paths are relative to its dir).
pub fn parse_identity(text: &str, path: &Path) -> Result<PemIdentity, KubeconfigError> {
    let unusable = |message: String| KubeconfigError::Unusable {
        path: path.to_owned(),
        message,
    };
    let config: Kubeconfig = serde_yaml_ng::from_str(text).map_err(|e| KubeconfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let user_name = if config.current_context.is_empty() {
        match config.users.as_slice() {
            [only] => only.name.clone(),
            _ => {
                return Err(unusable(format!(
                    "no current-context and {} users: set current-context",
                    config.users.len()
                )));
            }
        }
    } else {
        config
            .contexts
            .iter()
            .find(|c| c.name == config.current_context)
            .map(|c| c.context.user.clone())
            .ok_or_else(|| {
                unusable(format!(
                    "current-context {:?} is not among its contexts",
                    config.current_context
                ))
            })?
    };
    let user = config
        .users
        .into_iter()
        .find(|u| u.name == user_name)
        .map(|u| u.user)
        .ok_or_else(|| unusable(format!("user {user_name:?} is not among its users")))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let cert = material(
        user.client_certificate_data.as_deref(),
        user.client_certificate.as_deref(),
        base,
        "client-certificate",
    )
    .map_err(&unusable)?;
    let key = material(
        user.client_key_data.as_deref(),
        user.client_key.as_deref(),
        base,
        "client-key",
    )
    .map_err(&unusable)?;
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(PemIdentity { cert, key }),
        (None, None) => {
            let other = if user.token.is_some() || user.token_file.is_some() {
                "a token"
            } else if user.exec.is_some() || user.auth_provider.is_some() {
                "a credential plugin"
            } else {
                "no credentials"
            };
            Err(unusable(format!(
                "user {user_name:?} has {other}, not a client certificate; quorate probes /readyz \
                 with a client certificate only: set apiserver.client_cert and \
                 apiserver.client_key in the agent config"
            )))
        }
        _ => Err(unusable(format!(
            "user {user_name:?} has a client certificate without its key or a key without its \
             certificate"
        ))),
    }
}

/// `<what>-data` (base64 PEM) or `<what>` (a file, relative to the kubeconfig's dir).
fn material(
    data: Option<&str>,
    file: Option<&Path>,
    base: &Path,
    what: &str,
) -> Result<Option<Vec<u8>>, String> {
    if let Some(data) = data.filter(|d| !d.trim().is_empty()) {
        let compact: String = data.split_whitespace().collect();
        // The decoder's error quotes a byte of the data: never for a key.
        return base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map(Some)
            .map_err(|e| match what {
                "client-key" => format!("{what}-data is not base64"),
                _ => format!("{what}-data is not base64: {e}"),
            });
    }
    match file.filter(|f| !f.as_os_str().is_empty()) {
        Some(file) => {
            let full = base.join(file);
            std::fs::read(&full)
                .map(Some)
                .map_err(|e| format!("cannot read its {what} {}: {e}", full.display()))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `kubeadm init` writes to /etc/kubernetes/admin.conf (data shortened: the
    /// parser does not look inside the PEM).
    const ADMIN_CONF: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUMvakNDQWVhZ0F3SUJBZ0lCQURBTkJna3Foa2lHOXcwQkFRc0ZBREFWTVJNd0VRWURWUVFERXdwcmRXSmwKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=
    server: https://10.0.0.11:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSURLVENDQWhHZ0F3SUJBZ0lJYWRtaW4KLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=
    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFb3dJQkFBS0NBUUVBa2V5Ci0tLS0tRU5EIFJTQSBQUklWQVRFIEtFWS0tLS0tCg==
";

    #[test]
    fn kubeadm_admin_conf_gives_the_admin_certificate_and_key() {
        let id = parse_identity(ADMIN_CONF, Path::new("/etc/kubernetes/admin.conf"))
            .expect("admin.conf");
        let cert = String::from_utf8(id.cert.clone()).expect("utf8");
        let key = String::from_utf8(id.key.clone()).expect("utf8");
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\nMIIDKTCCAhGgAwIBAgIIadmin"));
        assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let debug = format!("{id:?}");
        assert!(
            !debug.contains("PRIVATE") && debug.contains("redacted"),
            "{debug}"
        );
    }

    #[test]
    fn file_paths_are_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("pki")).expect("mkdir");
        std::fs::write(dir.path().join("pki/admin.crt"), "CERT").expect("write");
        std::fs::write(dir.path().join("pki/admin.key"), "KEY").expect("write");
        let text = "users:\n- name: admin\n  user:\n    client-certificate: pki/admin.crt\n    client-key: pki/admin.key\n";
        let id = parse_identity(text, &dir.path().join("admin.conf")).expect("paths");
        assert_eq!(
            (id.cert.as_slice(), id.key.as_slice()),
            (&b"CERT"[..], &b"KEY"[..])
        );
        let missing = text.replace("admin.key", "gone.key");
        let err = parse_identity(&missing, &dir.path().join("admin.conf"))
            .expect_err("missing key")
            .to_string();
        assert!(
            err.contains("gone.key") && err.contains("admin.conf"),
            "{err}"
        );
    }

    #[test]
    fn unusable_kubeconfigs_say_why_and_what_to_set() {
        let cases = [
            (
                "users:\n- name: a\n  user:\n    token: abc\n",
                "has a token, not a client certificate",
            ),
            (
                "users:\n- name: a\n  user:\n    exec: {command: aws}\n",
                "a credential plugin",
            ),
            (
                "current-context: x\ncontexts: []\nusers: []\n",
                "current-context \"x\" is not among its contexts",
            ),
            (
                "users:\n- name: a\n  user: {}\n- name: b\n  user: {}\n",
                "no current-context and 2 users",
            ),
            (
                "users:\n- name: a\n  user:\n    client-certificate-data: QQ==\n",
                "without its key",
            ),
            (
                "users:\n- name: a\n  user:\n    client-certificate-data: '%%%'\n    client-key-data: QQ==\n",
                "not base64",
            ),
            ("[", "is not a kubeconfig"),
        ];
        for (text, says) in cases {
            let err = parse_identity(text, Path::new("/etc/kubernetes/admin.conf"))
                .expect_err(says)
                .to_string();
            assert!(
                err.contains(says) && err.contains("/etc/kubernetes/admin.conf"),
                "{says}: {err}"
            );
        }
        let token = parse_identity(cases[0].0, Path::new("/k")).expect_err("token");
        assert!(
            token.to_string().contains("apiserver.client_cert"),
            "{token}"
        );
    }
}

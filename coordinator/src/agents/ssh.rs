//! One SSH session to a host (russh): the host key checked against `known_hosts` before anything
//! is sent, key authentication (a key file, else ssh-agent, else the default key files), and
//! commands run with their stdin, output and exit status.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};

use super::known_hosts::{self, Verdict};

/// How to reach and log in to the hosts.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub user: String,
    pub port: u16,
    /// A private key file; `None`: ssh-agent (`SSH_AUTH_SOCK`), then `~/.ssh/id_*`.
    pub key: Option<PathBuf>,
    pub known_hosts: PathBuf,
    /// Accept (and record) a key for a host not in `known_hosts`; a changed key is still refused.
    pub accept_new: bool,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "{host}: cannot connect to port {port}: {message}; check that sshd runs there and the address is right"
    )]
    Connect {
        host: String,
        port: u16,
        message: String,
    },
    #[error(
        "{host}: its host key is not in {known_hosts} ({fingerprint}); nothing was sent. Check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add it with `ssh-keyscan -p {port} {host} >> {known_hosts}`, or re-run with --accept-new-host-keys to record it"
    )]
    UnknownHostKey {
        host: String,
        port: u16,
        fingerprint: String,
        known_hosts: String,
    },
    #[error(
        "{host}: its host key CHANGED: it is now {fingerprint}, but {known_hosts} line {line} has another one; nothing was sent. Someone may be intercepting the connection, or the host was reinstalled: verify the new key on the host, then remove the old one with `ssh-keygen -R {field} -f {known_hosts}` and run again"
    )]
    ChangedHostKey {
        host: String,
        field: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    #[error(
        "{host}: its host key {fingerprint} is marked @revoked in {known_hosts} line {line}; nothing was sent"
    )]
    RevokedHostKey {
        host: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    #[error("{host}: recording its host key in {path}: {source}")]
    Record {
        host: String,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{host}: no key logged in as {user}: {tried}; give one with --ssh-key, or load it into ssh-agent"
    )]
    Auth {
        host: String,
        user: String,
        tried: String,
    },
    #[error("{host}: {message}")]
    Session { host: String, message: String },
}

/// What the host-key check decided, kept for the error after russh drops the connection.
type Seen = Arc<Mutex<Option<Result<(), SshError>>>>;

struct Checker {
    host: String,
    opts: SshOptions,
    seen: Seen,
}

impl Checker {
    fn verdict(&self, key: &PublicKey) -> Result<(), SshError> {
        let openssh = key.to_openssh().map_err(|e| SshError::Session {
            host: self.host.clone(),
            message: format!("cannot encode its host key: {e}"),
        })?;
        let mut parts = openssh.split_whitespace();
        let (kind, blob) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let path = self.opts.known_hosts.display().to_string();
        let text = std::fs::read_to_string(&self.opts.known_hosts).unwrap_or_default();
        let (host, port) = (self.host.clone(), self.opts.port);
        match known_hosts::check(&text, &host, port, kind, blob) {
            Verdict::Known => Ok(()),
            Verdict::Unknown if self.opts.accept_new => {
                known_hosts::record(&self.opts.known_hosts, &host, port, kind, blob).map_err(
                    |source| SshError::Record {
                        host: host.clone(),
                        path: path.clone(),
                        source,
                    },
                )?;
                eprintln!("{host}: recorded its new host key {fingerprint} in {path}");
                Ok(())
            }
            Verdict::Unknown => Err(SshError::UnknownHostKey {
                host,
                port,
                fingerprint,
                known_hosts: path,
            }),
            Verdict::Changed { line } => Err(SshError::ChangedHostKey {
                field: known_hosts::host_field(&host, port),
                host,
                fingerprint,
                known_hosts: path,
                line,
            }),
            Verdict::Revoked { line } => Err(SshError::RevokedHostKey {
                host,
                fingerprint,
                known_hosts: path,
                line,
            }),
        }
    }
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match server_public_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.verdict(key),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => Err(SshError::Session {
                host: self.host.clone(),
                message: "it offered a host certificate: only plain host keys checked against known_hosts are supported".into(),
            }),
        };
        let ok = verdict.is_ok();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(verdict);
        }
        Ok(ok)
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// A logged-in session.
pub struct Session {
    pub host: String,
    handle: client::Handle<Checker>,
    sudo: bool,
    timeout: Duration,
}

/// Quotes `s` for `sh`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn default_keys() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|k| home.join(".ssh").join(k))
        .collect()
}

impl Session {
    /// Connects, checks the host key, logs in.
    pub async fn connect(host: &str, opts: &SshOptions) -> Result<Self, SshError> {
        let seen: Seen = Arc::default();
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(600)),
            ..Default::default()
        });
        let checker = Checker {
            host: host.to_owned(),
            opts: opts.clone(),
            seen: seen.clone(),
        };
        let connect = client::connect(config, (host, opts.port), checker);
        let result = tokio::time::timeout(opts.timeout, connect).await;
        let refused = || {
            seen.lock()
                .ok()
                .and_then(|mut s| s.take())
                .and_then(Result::err)
        };
        let mut handle = match result {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return Err(refused().unwrap_or(SshError::Connect {
                    host: host.into(),
                    port: opts.port,
                    message: e.to_string(),
                }));
            }
            Err(_) => {
                return Err(refused().unwrap_or(SshError::Connect {
                    host: host.into(),
                    port: opts.port,
                    message: format!("no answer within {:?}", opts.timeout),
                }));
            }
        };
        let session_err = |message: String| SshError::Session {
            host: host.into(),
            message,
        };
        let mut tried = Vec::new();
        let mut ok = false;
        let rsa_hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let files = match &opts.key {
            Some(k) => vec![k.clone()],
            None => Vec::new(),
        };
        for file in &files {
            let key = russh::keys::load_secret_key(file, None).map_err(|e| SshError::Auth {
                host: host.into(),
                user: opts.user.clone(),
                tried: format!(
                    "{}: {e} (an encrypted key must be loaded into ssh-agent)",
                    file.display()
                ),
            })?;
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
            let r = handle
                .authenticate_publickey(&opts.user, key)
                .await
                .map_err(|e| session_err(e.to_string()))?;
            ok = r.success();
            tried.push(format!("{} refused", file.display()));
        }
        if !ok && opts.key.is_none() {
            if let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await {
                let identities = agent.request_identities().await.unwrap_or_default();
                for id in identities {
                    let key = id.public_key().into_owned();
                    match handle
                        .authenticate_publickey_with(&opts.user, key, rsa_hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => {
                            ok = true;
                            break;
                        }
                        _ => tried.push("an ssh-agent key refused".into()),
                    }
                }
            }
            for file in default_keys().into_iter().filter(|f| f.is_file()) {
                if ok {
                    break;
                }
                let Ok(key) = russh::keys::load_secret_key(&file, None) else {
                    tried.push(format!("{} unreadable or encrypted", file.display()));
                    continue;
                };
                let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
                let r = handle
                    .authenticate_publickey(&opts.user, key)
                    .await
                    .map_err(|e| session_err(e.to_string()))?;
                ok = r.success();
                tried.push(format!("{} refused", file.display()));
            }
        }
        if !ok {
            return Err(SshError::Auth {
                host: host.into(),
                user: opts.user.clone(),
                tried: if tried.is_empty() {
                    "no key given, no ssh-agent, no ~/.ssh/id_* file".into()
                } else {
                    tried.join(", ")
                },
            });
        }
        Ok(Self {
            host: host.to_owned(),
            handle,
            sudo: opts.user != "root",
            timeout: opts.timeout,
        })
    }

    /// Runs `script` with `sh -c` (under `sudo -n` unless logged in as root), feeding it
    /// `stdin`.
    pub async fn run(
        &self,
        script: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let err = |message: String| SshError::Session {
            host: self.host.clone(),
            message,
        };
        let command = if self.sudo {
            format!("sudo -n sh -c {}", quote(script))
        } else {
            format!("sh -c {}", quote(script))
        };
        let work = async {
            let mut channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| err(format!("opening a session: {e}")))?;
            channel
                .exec(true, command.as_bytes())
                .await
                .map_err(|e| err(format!("running a command: {e}")))?;
            if !stdin.is_empty() {
                channel
                    .data(stdin)
                    .await
                    .map_err(|e| err(format!("sending data: {e}")))?;
            }
            channel
                .eof()
                .await
                .map_err(|e| err(format!("closing stdin: {e}")))?;
            let mut out = Output {
                status: 255,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(msg) = channel.wait().await {
                match msg {
                    russh::ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    russh::ChannelMsg::ExtendedData { data, .. } => {
                        out.stderr.extend_from_slice(&data)
                    }
                    russh::ChannelMsg::ExitStatus { exit_status } => out.status = exit_status,
                    _ => {}
                }
            }
            Ok(out)
        };
        tokio::time::timeout(timeout.max(self.timeout), work)
            .await
            .unwrap_or_else(|_| Err(err(format!("a command gave no answer within {timeout:?}"))))
    }

    /// Runs `script`; fails unless it exits 0, with what it printed on stderr.
    pub async fn check(&self, what: &str, script: &str, stdin: &[u8]) -> Result<Output, SshError> {
        let out = self.run(script, stdin, Duration::from_secs(120)).await?;
        if out.status != 0 {
            let hint = if self.sudo && out.stderr().contains("sudo") {
                " (the SSH user needs passwordless sudo)"
            } else {
                ""
            };
            return Err(SshError::Session {
                host: self.host.clone(),
                message: format!(
                    "{what} failed (exit {}): {}{hint}",
                    out.status,
                    out.stderr()
                ),
            });
        }
        Ok(out)
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

//! An sshd (Debian's openssh-server) inside each lab host's namespaces, on port 22 of the host's
//! address, with a host key and an authorized key made for the run; and the `ssh`/`scp` clients
//! of the bastion (the bench process), which check each host's key against a known_hosts file
//! made for the run (never accept an unknown key).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::lab::Lab;
use crate::layout::Host;
use crate::procs;

const SSHD: &str = "/usr/sbin/sshd";

/// Files of the run on each host (as the host sees them).
const CONFIG: &str = "etc/ssh/bench_sshd_config";
const HOST_KEY: &str = "etc/ssh/bench_host_ed25519_key";
const AUTHORIZED: &str = "etc/ssh/bench_authorized_keys";
const SHADOW: &str = "etc/shadow";

/// Refuses to start without the OpenSSH server and clients.
pub fn check_installed() -> anyhow::Result<()> {
    if !Path::new(SSHD).is_file() {
        bail!("{SSHD} not found: install Debian's openssh-server (tests/setup.sh does, as root)");
    }
    for tool in ["ssh", "scp", "ssh-keygen"] {
        if Command::new(tool)
            .arg("-V")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("{tool} not found: install Debian's openssh-client");
        }
    }
    Ok(())
}

/// The sshds of one lab, stopped (by PID) on [`Sshd::stop`] or when dropped.
pub struct Sshd {
    dir: PathBuf,
    key: PathBuf,
    known_hosts: PathBuf,
    servers: Vec<(Host, Child)>,
    /// The `/etc/shadow` files written for sshd (removed with the keys).
    shadows: Vec<PathBuf>,
}

fn keygen(path: &Path, comment: &str) -> anyhow::Result<String> {
    for p in [path.to_owned(), path.with_extension("pub")] {
        let _ = std::fs::remove_file(p);
    }
    procs::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    )?;
    let public = PathBuf::from(format!("{}.pub", path.display()));
    Ok(std::fs::read_to_string(&public)
        .with_context(|| format!("reading {}", public.display()))?
        .trim()
        .to_owned())
}

impl Sshd {
    /// Makes the keys (the client's in `dir`, 0700) and starts an sshd on every host; waits
    /// until each listens.
    pub fn start(lab: &Lab, dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let key = dir.join("id_ed25519");
        let client_public = keygen(&key, "quorate-bench")?;
        let mut sshd = Self {
            dir: dir.to_owned(),
            known_hosts: dir.join("known_hosts"),
            key,
            servers: Vec::new(),
            shadows: Vec::new(),
        };
        let mut known = String::new();
        for host in lab.hosts() {
            std::fs::create_dir_all(host.path("etc/ssh"))?;
            let run_dir = host.path("run/sshd");
            std::fs::create_dir_all(&run_dir)?;
            std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755))?;
            let host_public = keygen(&host.path(HOST_KEY), &host.name)?;
            // known_hosts: "<address> <type> <key>" (the comment dropped).
            let mut fields = host_public.split_whitespace();
            let (kind, blob) = (fields.next(), fields.next());
            let (Some(kind), Some(blob)) = (kind, blob) else {
                bail!(
                    "ssh-keygen wrote an unreadable public key for {}",
                    host.name
                );
            };
            known.push_str(&format!("{} {kind} {blob}\n", host.ip));
            quorate_proto::durable::write_atomic(
                &host.path(AUTHORIZED),
                format!("{client_public}\n").as_bytes(),
                0o600,
            )?;
            std::fs::set_permissions(
                host.path(AUTHORIZED),
                std::fs::Permissions::from_mode(0o600),
            )?;
            quorate_proto::durable::write_atomic(
                &host.path(CONFIG),
                config(host).as_bytes(),
                0o644,
            )?;
            // Without PAM, sshd refuses an account it cannot find in /etc/shadow as locked: a
            // node's root entry, with no password that could log in.
            if !host.path(SHADOW).exists() {
                quorate_proto::durable::write_atomic(
                    &host.path(SHADOW),
                    b"root:*:20000:0:99999:7:::\n",
                    0o640,
                )?;
                std::fs::set_permissions(
                    host.path(SHADOW),
                    std::fs::Permissions::from_mode(0o640),
                )?;
                sshd.shadows.push(host.path(SHADOW));
            }
            let log = std::fs::File::create(host.log_of("sshd.service"))?;
            let child = Lab::host_command(host, SSHD)
                .args(["-D", "-e", "-f"])
                .arg(format!("/{CONFIG}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting sshd on {}", host.name))?;
            sshd.servers.push((host.clone(), child));
        }
        quorate_proto::durable::write_atomic(&sshd.known_hosts, known.as_bytes(), 0o644)?;
        for (host, child) in &mut sshd.servers {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !procs::port_open(host.ip, 22) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "sshd on {} exited ({status}): {}",
                        host.name,
                        procs::tail(&host.log_of("sshd.service"), 6)
                    );
                }
                if Instant::now() > deadline {
                    bail!("sshd on {} does not listen on {}:22", host.name, host.ip);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(sshd)
    }

    /// The client's private key (authorized for root on every host).
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The known_hosts file listing every host's key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Leaves the sshds running (for `lab up --sshd`: `lab down` ends every process of a host)
    /// and keeps the keys; returns their PIDs.
    pub fn detach(mut self) -> Vec<u32> {
        let pids = self.servers.iter().map(|(_, c)| c.id()).collect();
        self.servers.clear();
        self.shadows.clear();
        self.dir = PathBuf::new();
        pids
    }

    fn client_options(&self, cmd: &mut Command) {
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(&self.key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
                "-o",
            ])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()));
    }

    /// Runs `script` on `host` as root over SSH; fails with what it printed.
    pub fn run(&self, host: &Host, script: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new("ssh");
        self.client_options(&mut cmd);
        cmd.arg(format!("root@{}", host.ip)).arg(script);
        procs::run(&mut cmd).with_context(|| format!("over SSH on {}", host.name))
    }

    /// Copies `file` to `to` on `host` with scp.
    pub fn copy(&self, file: &Path, host: &Host, to: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new("scp");
        cmd.arg("-q");
        self.client_options(&mut cmd);
        cmd.arg(file).arg(format!("root@{}:{to}", host.ip));
        procs::run(&mut cmd).with_context(|| format!("scp to {}", host.name))
    }

    /// Stops every sshd (SIGTERM by PID, SIGKILL after 10 s) and removes the run's keys.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        for (_, child) in &self.servers {
            procs::signal(child.id(), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (host, child) in &mut self.servers {
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    procs::signal(child.id(), Signal::SIGKILL);
                    child.wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            for f in [HOST_KEY, AUTHORIZED, CONFIG] {
                let _ = std::fs::remove_file(host.path(f));
            }
            let _ = std::fs::remove_file(host.path(&format!("{HOST_KEY}.pub")));
        }
        self.servers.clear();
        for f in self.shadows.drain(..) {
            let _ = std::fs::remove_file(f);
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("bench: stopping the sshds: {e:#}");
        }
    }
}

/// sshd's config on `host`: root by key only, on the host's address.
fn config(host: &Host) -> String {
    format!(
        "# sshd of quorate's lab bench on {name}\n\
         ListenAddress {ip}:22\n\
         HostKey /{HOST_KEY}\n\
         AuthorizedKeysFile /{AUTHORIZED}\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         PidFile none\n\
         Subsystem sftp internal-sftp\n\
         LogLevel ERROR\n",
        name = host.name,
        ip = host.ip,
    )
}

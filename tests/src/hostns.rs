//! Lab hosts that are hosts (root only): each host is its own network namespace (its own
//! loopback, one address on a bridge the lab makes), its own mount namespace whose root is the
//! host's dir (so every process on it sees `/etc/kubernetes`, `/var/lib/etcd`, ... as on a real
//! node) and its own UTS namespace (its hostname is the member's name).
//!
//! ```text
//! root namespace (the bastion: coordinator, tests)    bridge qlab<K> 127.0.K.254/24
//!   └─ veth qlab<K>v<i>  ══  eth0 127.0.K.(10+i)/24 in netns qlab<K>-<host>
//! ```
//!
//! The namespaces are persistent: `DIR/ns/<host>.{mnt,uts}` are bind mounts of the namespace files
//! (in `DIR/ns`, a private bind mount of itself), and the netns is a named `ip netns`. A host's
//! dir is a shared bind mount of itself and the host's `/` its slave: what the lab mounts under
//! the host's dir from outside (a data disk) appears on the host, nothing the host mounts leaks
//! out. Processes
//! are started in a host with `nsenter` (see [`HostNs::command`]). Inside a host, `/usr` (but
//! `/usr/local`) comes from the machine, read-only; `/dev` holds only the harmless devices,
//! `/proc/sys` and `/sys` are read-only; `/etc`,
//! `/var`, `/run`, `/tmp`, `/root`, `/opt` and `/usr/local` are the host's own (its dir);
//! `/usr/bin/etcd*` from a Debian package are masked, so nothing of etcd is on a host's PATH.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The PATH of a process started in a host.
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host's namespaces, as `lab.json` keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNs {
    /// `ip netns` name.
    pub netns: String,
    /// The root-namespace end of the host's veth.
    pub veth: String,
    /// Persistent mount and UTS namespace files.
    pub mnt: PathBuf,
    pub uts: PathBuf,
}

/// The lab bridge of net `K`.
pub fn bridge_name(net: u8) -> String {
    format!("qlab{net}")
}

/// The bastion's address on the lab bridge.
pub fn bridge_ip(net: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, net, 254)
}

/// True when this process can make hosts as namespaces (root), unless `QUORATE_LAB_FLAT=1`.
pub fn available() -> bool {
    nix::unistd::geteuid().is_root()
        && std::env::var_os("QUORATE_LAB_FLAT").is_none_or(|v| v.is_empty() || v == "0")
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    crate::procs::run(Command::new(program).args(args))
}

fn sysctl(netns: Option<&str>, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    match netns {
        None => std::fs::write(&path, value).with_context(|| format!("writing {path}")),
        Some(ns) => run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                &format!("echo {value} > {path}"),
            ],
        ),
    }
}

/// True when net `net`'s bridge or a host namespace of it exists (a lab runs there, or one
/// died without `lab down`).
pub fn net_in_use(net: u8) -> bool {
    let bridge = bridge_name(net);
    let prefix = format!("{bridge}-");
    Path::new("/sys/class/net").join(&bridge).exists()
        || std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
}

/// Makes the lab bridge (removing a stale one of a lab that died).
pub fn create_bridge(net: u8) -> anyhow::Result<()> {
    let br = bridge_name(net);
    if Path::new("/sys/class/net").join(&br).exists() {
        run("ip", &["link", "del", &br])?;
    }
    run("ip", &["link", "add", &br, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{}/24", bridge_ip(net)), "dev", &br],
    )?;
    run("ip", &["link", "set", &br, "up"])?;
    // Loopback-range addresses are martians unless the interface allows them (per device only:
    // nothing machine-wide changes).
    sysctl(None, &format!("net.ipv4.conf.{br}.route_localnet"), "1")
}

/// Removes the lab bridge (and so nothing else: the veths went with their namespaces).
pub fn delete_bridge(net: u8) -> anyhow::Result<()> {
    let br = bridge_name(net);
    if Path::new("/sys/class/net").join(&br).exists() {
        run("ip", &["link", "del", &br])?;
    }
    Ok(())
}

/// Makes `DIR/ns` a private mount, where namespace files can be bound.
pub fn prepare_ns_dir(lab_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = lab_dir.join("ns");
    std::fs::create_dir_all(&dir)?;
    if !is_mount_point(&dir) {
        let d = dir.to_str().context("lab dir is not UTF-8")?;
        run("mount", &["--bind", d, d])?;
        run("mount", &["--make-private", d])?;
    }
    Ok(dir)
}

/// True when `path` is a mount point in this (the root) mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mount(m) == want)
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\134", "\\")
}

/// Mount points at or under `path` in this mount namespace, deepest first.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(path))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything at or under `path` (deepest first, stacked mounts too). A mount that is
/// busy is detached lazily, and reported as an error: something of the lab still uses it.
pub fn unmount_all(path: &Path) -> anyhow::Result<()> {
    let mut busy = Vec::new();
    for _ in 0..1000 {
        let Some(m) = mounts_under(path).into_iter().next() else {
            break;
        };
        let p = m.to_str().context("mount path is not UTF-8")?;
        if let Err(e) = run("umount", &[p]) {
            busy.push(format!("{p}: {e:#}"));
            run("umount", &["--lazy", p])?;
        }
    }
    if !busy.is_empty() {
        bail!("busy mounts, detached lazily: {}", busy.join("; "));
    }
    Ok(())
}

/// Makes the lab dir a private mount of its own, so that nothing mounted beneath it (host
/// roots, namespace files, data disks) propagates to the machine's other mount namespaces.
pub fn make_private(lab_dir: &Path) -> anyhow::Result<()> {
    let d = lab_dir.to_str().context("lab dir is not UTF-8")?;
    if !is_mount_point(lab_dir) {
        run("mount", &["--bind", d, d])?;
    }
    run("mount", &["--make-private", d])
}

/// The script run inside a new mount namespace to make `root` the host's `/`.
const SETUP: &str = r#"set -eu
R="$1"; NAME="$2"
hostname "$NAME"
mount --make-rslave /
mount --rbind "$R" "$R"
for d in /usr/*; do
  b=${d#/usr/}
  [ "$b" = local ] && continue
  [ -d "$d" ] || continue
  mkdir -p "$R/usr/$b"
  mount --rbind "$d" "$R/usr/$b"
  mount -o remount,bind,ro "$R/usr/$b" 2>/dev/null || true
done
for f in etcd etcdctl etcdutl; do
  if [ -e "/usr/bin/$f" ]; then mount --bind /dev/null "$R/usr/bin/$f"; fi
done
mkdir -p "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/.oldroot"
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for d in null zero full random urandom tty; do
  touch "$R/dev/$d"
  mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
cd "$R"
pivot_root . .oldroot
umount --lazy /.oldroot
rmdir /.oldroot
"#;

impl HostNs {
    /// The names host `index` of net `net` gets; nothing is made. The lab records them before
    /// [`HostNs::make`], so that `lab down` removes what a failed `lab up` left half made.
    pub fn planned(ns_dir: &Path, net: u8, index: u8, name: &str) -> Self {
        Self {
            netns: format!("qlab{net}-{name}"),
            veth: format!("qlab{net}v{index}"),
            mnt: ns_dir.join(format!("{name}.mnt")),
            uts: ns_dir.join(format!("{name}.uts")),
        }
    }

    /// Makes the namespaces [`HostNs::planned`] named for a host at `ip` rooted at `root`: its
    /// netns and veth on the lab bridge, then its mount and UTS namespaces (pivoted into
    /// `root`). On failure, undoes what it made.
    pub fn make(&self, net: u8, name: &str, ip: Ipv4Addr, root: &Path) -> anyhow::Result<()> {
        let made = self.make_inner(net, name, ip, root);
        if made.is_err() {
            let _ = self.destroy();
        }
        made
    }

    fn make_inner(&self, net: u8, name: &str, ip: Ipv4Addr, root: &Path) -> anyhow::Result<()> {
        let ns = self;
        if Path::new("/run/netns").join(&ns.netns).exists() {
            run("ip", &["netns", "del", &ns.netns])?;
        }
        run("ip", &["netns", "add", &ns.netns])?;
        run(
            "ip",
            &[
                "link", "add", &ns.veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.netns,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &ns.veth, "master", &bridge_name(net), "up"],
        )?;
        sysctl(
            None,
            &format!("net.ipv4.conf.{}.route_localnet", ns.veth),
            "1",
        )?;
        let n = ns.netns.as_str();
        run("ip", &["-n", n, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &["-n", n, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        run("ip", &["-n", n, "link", "set", "eth0", "up"])?;
        sysctl(Some(n), "net.ipv4.conf.all.route_localnet", "1")?;
        sysctl(Some(n), "net.ipv4.conf.eth0.route_localnet", "1")?;
        for f in [&ns.mnt, &ns.uts] {
            std::fs::write(f, b"").with_context(|| format!("creating {}", f.display()))?;
        }
        let r = root.to_str().context("host dir is not UTF-8")?;
        if !is_mount_point(root) {
            run("mount", &["--bind", r, r])?;
        }
        run("mount", &["--make-shared", r])?;
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{n}"))
            .arg("unshare")
            .arg(format!("--mount={}", ns.mnt.display()))
            .arg(format!("--uts={}", ns.uts.display()))
            .args([
                "--propagation",
                "unchanged",
                "--",
                "sh",
                "-c",
                SETUP,
                "setup",
            ])
            .arg(root)
            .arg(name)
            .stdin(Stdio::null())
            .output()
            .context("running nsenter/unshare to make the host's namespaces")?;
        if !out.status.success() {
            bail!(
                "making host {name}'s mount namespace failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// A command that runs `program` on this host (in its namespaces, its root, its PATH).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        // A host's processes start with a host's environment, not the caller's (an ETCD_*
        // variable in the operator's shell would configure etcd).
        cmd.env_clear();
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(format!("--mount={}", self.mnt.display()))
            .arg(format!("--uts={}", self.uts.display()))
            .arg("--")
            .arg(program)
            .env("PATH", HOST_PATH)
            .env("HOME", "/root");
        cmd
    }

    /// The inode of the host's network namespace: every process on the host has it.
    pub fn netns_inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(Path::new("/run/netns").join(&self.netns))
            .ok()
            .map(|m| m.ino())
    }

    /// PIDs of every process on this host.
    pub fn pids(&self) -> Vec<u32> {
        let Some(ino) = self.netns_inode() else {
            return Vec::new();
        };
        let want = format!("net:[{ino}]");
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|l| l.to_string_lossy() == want)
            })
            .collect()
    }

    /// True when `pid` runs on this host.
    pub fn holds(&self, pid: u32) -> bool {
        let Some(ino) = self.netns_inode() else {
            return false;
        };
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == format!("net:[{ino}]"))
    }

    /// Cuts the host off the lab network (its veth down), or puts it back.
    pub fn set_link(&self, up: bool) -> anyhow::Result<()> {
        run(
            "ip",
            &["link", "set", &self.veth, if up { "up" } else { "down" }],
        )
    }

    /// Removes the namespaces (the veth goes with the netns). Processes must be gone first.
    pub fn destroy(&self) -> anyhow::Result<()> {
        // The veth would go with the netns, but a netns is torn down asynchronously: delete it
        // now so that nothing of the host is left when `lab down` returns.
        if Path::new("/sys/class/net").join(&self.veth).exists() {
            run("ip", &["link", "del", &self.veth])?;
        }
        for f in [&self.mnt, &self.uts] {
            if is_mount_point(f) {
                let p = f.to_str().context("ns path is not UTF-8")?;
                run("umount", &[p])?;
            }
            let _ = std::fs::remove_file(f);
        }
        if Path::new("/run/netns").join(&self.netns).exists() {
            run("ip", &["netns", "del", &self.netns])?;
        }
        Ok(())
    }
}

/// Single-quotes `s` for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

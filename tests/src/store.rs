//! What the lab puts on its hosts besides their own files: container images (etcd and the
//! control-plane stand-ins, resolved by the kubelet stand-in as a container runtime would), the
//! host binaries (`/usr/local/bin`: quorate-agent, the kubelet and systemctl stand-ins, and
//! etcd itself on systemd hosts, where kubespray installs it) and the agent's restore tool.
//!
//! ```text
//! DIR/images/registry.k8s.io/etcd/3.5.16-0/rootfs/usr/local/bin/{etcd,etcdctl,etcdutl}
//! DIR/images/registry.k8s.io/kube-apiserver/v1.32.0/rootfs/usr/local/bin/kube-apiserver   (the lab binary)
//! DIR/bin/{quorate-agent,lab,systemctl -> lab}                 a host's /usr/local/bin
//! DIR/opt/{etcdutl|etcdctl}                                     a host's /opt/quorate/bin
//! ```
//!
//! Files are hard links where the file system allows, copies otherwise. Hosts with namespaces
//! get them where a node has them ([`install_on`]); flat hosts use them where they are.

use std::fs;
use std::path::Path;

use anyhow::Context;

use crate::kubelet;
use crate::lab::{LabRuntime, UpOptions};
use crate::layout::{self, Host};
use crate::tools::EtcdTools;

/// Where the agent's restore tool is on a host with namespaces.
pub const RESTORE_TOOL_DIR: &str = "/opt/quorate/bin";

/// Files of the machine a host's own `/etc` starts with (users, name service, loader cache).
const ETC_FROM_MACHINE: [&str; 5] = [
    "passwd",
    "group",
    "nsswitch.conf",
    "ld.so.cache",
    "host.conf",
];

fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(to.parent().context("no parent dir")?)?;
    let _ = fs::remove_file(to);
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Writes the lab's images, host binaries and restore tool under `dir`.
pub fn write(dir: &Path, tools: &EtcdTools, opts: &UpOptions) -> anyhow::Result<()> {
    let images = dir.join("images");
    let etcd_root = kubelet::image_rootfs(&images, &layout::etcd_image(tools))?;
    let mut etcd_bins = vec![&tools.etcd, &tools.etcdctl];
    etcd_bins.extend(tools.etcdutl.as_ref());
    for bin in &etcd_bins {
        let name = bin.file_name().context("binary without a name")?;
        link_or_copy(bin, &etcd_root.join("usr/local/bin").join(name))?;
    }
    for component in ["kube-apiserver"].into_iter().chain(layout::CONTROLLERS) {
        let image = format!("registry.k8s.io/{component}:{}", layout::KUBERNETES_VERSION);
        let root = kubelet::image_rootfs(&images, &image)?;
        link_or_copy(&opts.lab_bin, &root.join("usr/local/bin").join(component))?;
    }
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    link_or_copy(&opts.lab_bin, &bin.join("lab"))?;
    let _ = fs::remove_file(bin.join("systemctl"));
    std::os::unix::fs::symlink("lab", bin.join("systemctl"))?;
    if let Some(agent) = opts.agent_bin.as_ref().filter(|a| a.is_file()) {
        link_or_copy(agent, &bin.join("quorate-agent"))?;
    }
    if opts.runtime == LabRuntime::Systemd {
        link_or_copy(&tools.etcd, &bin.join("etcd"))?;
        link_or_copy(&tools.etcdctl, &bin.join("etcdctl"))?;
    }
    let opt = dir.join("opt");
    match &tools.etcdutl {
        Some(etcdutl) => link_or_copy(etcdutl, &opt.join("etcdutl"))?,
        None => link_or_copy(&tools.etcdctl, &opt.join("etcdctl"))?,
    }
    Ok(())
}

/// Puts the lab's images, host binaries and restore tool on a host with namespaces, where a
/// node has them (`/var/lib/containerd`, `/usr/local/bin`, `/opt/quorate/bin`): hard links,
/// so they cost nothing, and nothing is mounted under the host's own dirs.
pub fn install_on(dir: &Path, host: &Host) -> anyhow::Result<()> {
    for (from, to) in [
        (dir.join("images"), host.path(kubelet::IMAGES_DIR)),
        (dir.join("bin"), host.path("usr/local/bin")),
        (
            dir.join("opt"),
            host.path(RESTORE_TOOL_DIR.trim_start_matches('/')),
        ),
    ] {
        copy_tree(&from, &to)?;
    }
    Ok(())
}

/// Hard-links (or copies) every file of `from` into `to`, keeping symbolic links as they are.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let _ = fs::remove_file(&dst);
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else {
            link_or_copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// A host's own root file system before it gets namespaces: the top dirs, `/etc` basics, and the
/// machine's `/bin`, `/lib`... links into `/usr`.
pub fn write_host_base(host: &Host) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for d in [
        "etc",
        "var/log",
        "var/lib",
        "run",
        "tmp",
        "root",
        "usr/local",
        "opt",
        "dev",
        "proc",
        "sys",
    ] {
        fs::create_dir_all(host.path(d))?;
    }
    fs::set_permissions(host.path("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(host.path("root"), fs::Permissions::from_mode(0o700))?;
    for f in ETC_FROM_MACHINE {
        let from = Path::new("/etc").join(f);
        if from.is_file() {
            fs::copy(&from, host.path(&format!("etc/{f}")))
                .with_context(|| format!("copying {}", from.display()))?;
        }
    }
    // Debian's alternatives (`which`, `editor`, ...): links into /usr, kept as they are.
    let alternatives = host.path("etc/alternatives");
    fs::create_dir_all(&alternatives)?;
    for entry in fs::read_dir("/etc/alternatives")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(target) = fs::read_link(entry.path()) {
            let _ = std::os::unix::fs::symlink(target, alternatives.join(entry.file_name()));
        }
    }
    fs::write(host.path("etc/hostname"), format!("{}\n", host.name))?;
    fs::write(
        host.path("etc/hosts"),
        format!(
            "127.0.0.1\tlocalhost\n{}\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            host.ip, host.name
        ),
    )?;
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let machine = Path::new("/").join(top);
        if let Ok(target) = fs::read_link(&machine) {
            std::os::unix::fs::symlink(&target, host.path(top))
                .with_context(|| format!("linking {top} on {}", host.name))?;
        } else if machine.is_dir() {
            anyhow::bail!(
                "/{top} is a directory, not a link into /usr: hosts as namespaces need a merged /usr; run the lab flat (QUORATE_LAB_FLAT=1)"
            );
        }
    }
    Ok(())
}

//! Where the lab finds etcd.
//!
//! One setting per version: `QUORATE_ETCD_DIR` for 3.5 (default `tools/etcd-3.5.1`, filled by
//! `tests/setup.sh`), `QUORATE_ETCD34_DIR` for 3.4 (default `/usr/bin`, Debian's etcd-server and
//! etcd-client). The version each binary reports is checked, so a 3.4 on PATH is never used when
//! 3.5 is asked for.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EtcdVersion {
    #[serde(rename = "3.5")]
    V35,
    #[serde(rename = "3.4")]
    V34,
}

impl std::str::FromStr for EtcdVersion {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "3.5" => Ok(Self::V35),
            "3.4" => Ok(Self::V34),
            other => bail!("etcd version {other} is not one the lab knows (3.5 or 3.4)"),
        }
    }
}

impl std::fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V35 => "3.5",
            Self::V34 => "3.4",
        })
    }
}

/// The etcd binaries of one version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdTools {
    pub version: EtcdVersion,
    /// The full version the binary reports, e.g. 3.5.1.
    pub full_version: String,
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
    /// Absent for 3.4, which restores through etcdctl.
    pub etcdutl: Option<PathBuf>,
}

/// The workspace's tools dir.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the lab crate lives inside the workspace")
        .join("tools")
}

impl EtcdTools {
    pub fn find(version: EtcdVersion) -> anyhow::Result<Self> {
        let (var, default) = match version {
            EtcdVersion::V35 => ("QUORATE_ETCD_DIR", tools_dir().join("etcd-3.5.1")),
            EtcdVersion::V34 => ("QUORATE_ETCD34_DIR", PathBuf::from("/usr/bin")),
        };
        let dir = std::env::var_os(var).map_or(default, PathBuf::from);
        let etcd = dir.join("etcd");
        let hint = match version {
            EtcdVersion::V35 => {
                "run tests/setup.sh (fetches etcd 3.5 into tools/) or set QUORATE_ETCD_DIR"
            }
            EtcdVersion::V34 => {
                "as root: apt-get install etcd-server etcd-client, or set QUORATE_ETCD34_DIR"
            }
        };
        if !etcd.is_file() {
            bail!(
                "etcd {version} not found at {} ({var}): {hint}",
                etcd.display()
            );
        }
        let full_version = reported_version(&etcd)?;
        if !full_version.starts_with(&format!("{version}.")) {
            bail!(
                "{} reports etcd {full_version}, not {version}: {hint}",
                etcd.display()
            );
        }
        let etcdutl = dir.join("etcdutl");
        Ok(Self {
            version,
            full_version,
            etcd,
            etcdctl: dir.join("etcdctl"),
            etcdutl: (version == EtcdVersion::V35 && etcdutl.is_file()).then_some(etcdutl),
        })
    }
}

fn reported_version(etcd: &Path) -> anyhow::Result<String> {
    let out = Command::new(etcd)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", etcd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("{} --version printed no version", etcd.display()))
}

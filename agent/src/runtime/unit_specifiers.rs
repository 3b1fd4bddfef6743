//! Unit names (`etcd.service`, the template `etcd@.service`, its instance `etcd@member1.service`)
//! and the `%` specifiers systemd resolves in `ExecStart=`, `Environment=` and
//! `EnvironmentFile=` (systemd.unit(5), "Specifiers"), for the system manager.

use std::path::{Path, PathBuf};

/// Specifiers quorate resolves; any other is refused rather than guessed.
pub const SUPPORTED: &str = "%n %N %p %P %i %I %j %J %f %y %Y %H %l %m %b %v %t %S %C %L %E %T %V \
                             %u %U %g %G %%";

/// A unit's name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitName {
    /// `etcd@member1.service`.
    pub full: String,
    /// `etcd`.
    pub prefix: String,
    /// `member1` for an instance, `""` for a template, `None` for a plain unit.
    pub instance: Option<String>,
    /// `service`.
    pub kind: String,
}

impl UnitName {
    /// Splits `name`; `None` when it is not a unit name (no `.type`, empty prefix, bad chars).
    pub fn parse(name: &str) -> Option<Self> {
        let (stem, kind) = name.rsplit_once('.')?;
        let valid = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || ":-_.\\".contains(c))
        };
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_lowercase()) {
            return None;
        }
        let (prefix, instance) = match stem.split_once('@') {
            Some((p, i)) => (p, Some(i)),
            None => (stem, None),
        };
        if prefix.is_empty() || !valid(prefix) || !instance.is_none_or(valid) {
            return None;
        }
        Some(Self {
            full: name.to_owned(),
            prefix: prefix.to_owned(),
            instance: instance.map(str::to_owned),
            kind: kind.to_owned(),
        })
    }

    /// `etcd@.service` for an instance.
    pub fn template(&self) -> Option<String> {
        self.instance
            .as_ref()
            .filter(|i| !i.is_empty())
            .map(|_| format!("{}@.{}", self.prefix, self.kind))
    }

    pub fn is_template(&self) -> bool {
        self.instance.as_deref() == Some("")
    }

    /// `etcd@member1` (`%N`).
    pub fn without_suffix(&self) -> &str {
        &self.full[..self.full.len() - self.kind.len() - 1]
    }

    /// The drop-in names systemd derives from this one, most specific first: the name, its
    /// template, then the names cut after each dash of the prefix (`foo-bar-baz.service` →
    /// `foo-bar-.service`, `foo-.service`), each with its own template.
    pub fn drop_in_names(&self) -> Vec<String> {
        let mut out = vec![self.full.clone()];
        if let Some(template) = self.template().and_then(|t| Self::parse(&t)) {
            out.extend(template.drop_in_names());
        }
        let mut prefix = self.prefix.clone();
        let mut chopped = false;
        loop {
            let Some(dash) = prefix.rfind('-') else {
                return out;
            };
            if dash == 0 {
                return out;
            }
            if dash + 1 != prefix.len() || chopped {
                prefix.truncate(dash + 1);
                break;
            }
            prefix.truncate(dash);
            chopped = true;
        }
        let built = match &self.instance {
            Some(i) if !i.is_empty() => format!("{prefix}@{i}.{}", self.kind),
            _ => format!("{prefix}.{}", self.kind),
        };
        if let Some(b) = Self::parse(&built) {
            out.extend(b.drop_in_names());
        }
        out
    }
}

/// Undoes unit-name escaping: `\xNN` is a byte, `-` is `/`.
pub fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => out.push(b'/'),
            b'\\' if bytes.get(i + 1) == Some(&b'x') => {
                let hex = s
                    .get(i + 2..i + 4)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => out.push(b'\\'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Facts about this machine some specifiers name. `None`: could not be read (an error if used).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: Option<String>,
    pub machine_id: Option<String>,
    pub boot_id: Option<String>,
    pub kernel_release: Option<String>,
}

impl HostFacts {
    /// Reads them from the running kernel and /etc, as systemd does.
    pub fn read() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id").map(|s| s.replace('-', "")),
            kernel_release: read("/proc/sys/kernel/osrelease"),
        }
    }
}

/// Why a value's specifiers could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecifierError {
    #[error(
        "the specifier %{0} is not one quorate resolves (it resolves {SUPPORTED}); write the \
         value out in a drop-in"
    )]
    Unsupported(char),
    #[error("a lone % at the end (write %% for a literal %)")]
    Trailing,
    #[error("the specifier %{0} needs {1}, which could not be read on this host")]
    Unavailable(char, &'static str),
}

/// What `%` specifiers resolve against: the unit and its fragment, and the host.
#[derive(Debug, Clone, Copy)]
pub struct Specifiers<'a> {
    pub name: &'a UnitName,
    pub fragment: &'a Path,
    pub host: &'a HostFacts,
}

impl Specifiers<'_> {
    /// `s` with every specifier resolved.
    pub fn expand(&self, s: &str) -> Result<String, SpecifierError> {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let spec = chars.next().ok_or(SpecifierError::Trailing)?;
            out.push_str(&self.resolve(spec)?);
        }
        Ok(out)
    }

    fn resolve(&self, spec: char) -> Result<String, SpecifierError> {
        let n = self.name;
        let instance = n.instance.clone().unwrap_or_default();
        let last = n
            .prefix
            .rsplit_once('-')
            .map_or(n.prefix.as_str(), |(_, l)| l)
            .to_owned();
        let host =
            |v: &Option<String>, what| v.clone().ok_or(SpecifierError::Unavailable(spec, what));
        Ok(match spec {
            '%' => "%".into(),
            'n' => n.full.clone(),
            'N' => n.without_suffix().to_owned(),
            'p' => n.prefix.clone(),
            'P' => unescape(&n.prefix),
            'i' => instance,
            'I' => unescape(&instance),
            'j' => last,
            'J' => unescape(&last),
            'f' => {
                let base = if n.instance.is_some() {
                    instance
                } else {
                    n.prefix.clone()
                };
                format!("/{}", unescape(&base).trim_start_matches('/'))
            }
            'y' => self.fragment.display().to_string(),
            'Y' => self
                .fragment
                .parent()
                .map_or_else(PathBuf::new, Path::to_path_buf)
                .display()
                .to_string(),
            'H' => host(&self.host.hostname, "the hostname")?,
            'l' => host(&self.host.hostname, "the hostname")?
                .split('.')
                .next()
                .unwrap_or_default()
                .to_owned(),
            'm' => host(&self.host.machine_id, "/etc/machine-id")?,
            'b' => host(&self.host.boot_id, "the boot id")?,
            'v' => host(&self.host.kernel_release, "the kernel release")?,
            't' => "/run".into(),
            'S' => "/var/lib".into(),
            'C' => "/var/cache".into(),
            'L' => "/var/log".into(),
            'E' => "/etc".into(),
            'T' => "/tmp".into(),
            'V' => "/var/tmp".into(),
            // The system manager's user. (%h and %s depend on the manager's environment: not
            // resolved.)
            'u' | 'g' => "root".into(),
            'U' | 'G' => "0".into(),
            other => return Err(SpecifierError::Unsupported(other)),
        })
    }
}

//! Which files make up a unit, as systemd decides it (systemd.unit(5)): the unit file from the
//! first directory of the search path that has one (`/etc` over `/run` over `/usr/lib`), the
//! instance's own file before its template's, and drop-ins `<name>.d/*.conf` from every directory
//! of the search path, for the unit, its template, its dash-prefixes and `service.d`, merged by
//! file name (a name in a higher directory masks the same name lower down) and applied in
//! lexical order of file name.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::unit_specifiers::UnitName;
use crate::error::{AgentError, Result};

/// The system manager's unit search path, highest precedence first, relative to the root.
pub const SEARCH_PATH: [&str; 13] = [
    "etc/systemd/system.control",
    "run/systemd/system.control",
    "run/systemd/transient",
    "run/systemd/generator.early",
    "etc/systemd/system",
    "etc/systemd/system.attached",
    "run/systemd/system",
    "run/systemd/system.attached",
    "run/systemd/generator",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    // Only where /lib is not a link to /usr/lib (a split-/usr system).
    "lib/systemd/system",
    "run/systemd/generator.late",
];

/// Where unit files are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitSource {
    /// systemd's search path under this root: `/` on a host; a host's root dir in a lab.
    Root(PathBuf),
    /// Only this directory, drop-ins from `<dir>/<unit>.d/` (the `unit_dir` setting).
    Dir(PathBuf),
}

impl UnitSource {
    /// True for the host's own systemd search path (the one a running systemd reads).
    pub fn is_host_root(&self) -> bool {
        matches!(self, UnitSource::Root(r) if r == Path::new("/"))
    }

    /// The nominal place of unit `name`: where an administrator's copy would be.
    pub fn nominal_path(&self, name: &str) -> PathBuf {
        match self {
            UnitSource::Root(root) => root.join("etc/systemd/system").join(name),
            UnitSource::Dir(dir) => dir.join(name),
        }
    }

    /// The search path's directories that exist, highest precedence first; a directory that is
    /// the same as an earlier one (`/lib` → `/usr/lib`) is left out.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let all: Vec<PathBuf> = match self {
            UnitSource::Root(root) => SEARCH_PATH.iter().map(|d| root.join(d)).collect(),
            UnitSource::Dir(dir) => vec![dir.clone()],
        };
        let mut seen = HashSet::new();
        all.into_iter()
            .filter(|d| {
                std::fs::canonicalize(d)
                    .ok()
                    .filter(|c| c.is_dir())
                    .is_some_and(|c| seen.insert(c))
            })
            .collect()
    }

    fn describe(&self) -> String {
        match self {
            UnitSource::Root(root) => format!(
                "systemd's search path under {} ({})",
                root.display(),
                SEARCH_PATH
                    .iter()
                    .map(|d| format!("/{d}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            UnitSource::Dir(dir) => format!("{} (the agent's unit_dir)", dir.display()),
        }
    }

    /// The files of unit `name` and the name systemd knows it by.
    pub fn resolve(&self, name: &UnitName) -> Result<UnitFiles> {
        if name.is_template() {
            return Err(AgentError::Precondition(format!(
                "{} is a template, not a unit that runs: name an instance in the agent config, \
                 e.g. {}member1.{}",
                name.full,
                name.full.trim_end_matches(&format!(".{}", name.kind)),
                name.kind
            )));
        }
        let dirs = self.dirs();
        let candidates = std::iter::once(name.full.clone()).chain(name.template());
        let found = candidates
            .flat_map(|c| dirs.iter().map(move |d| d.join(&c)))
            .find(|p| p.symlink_metadata().is_ok());
        let Some(fragment) = found else {
            return Err(AgentError::Precondition(format!(
                "systemd unit {} not found: no {}{} in {}; set `unit` (and `unit_root`) in the \
                 agent config (`systemctl cat {}` shows where it lives)",
                name.full,
                name.full,
                name.template()
                    .map(|t| format!(" nor {t}"))
                    .unwrap_or_default(),
                self.describe(),
                name.full
            )));
        };
        if masked(&fragment) {
            return Err(AgentError::Precondition(format!(
                "systemd unit {} is masked ({} is empty or links to /dev/null): systemd will not \
                 start it; unmask it (`systemctl unmask {}`) or configure the unit that runs etcd",
                name.full,
                fragment.display(),
                name.full
            )));
        }
        let (id, aliases) = alias_of(name, &fragment);
        let mut names = vec![id.clone()];
        names.extend(aliases);
        let mut drop_in_dirs = Vec::new();
        for n in &names {
            for dir in &dirs {
                for candidate in n.drop_in_names() {
                    drop_in_dirs.push(dir.join(format!("{candidate}.d")));
                }
            }
        }
        if matches!(self, UnitSource::Root(_)) {
            drop_in_dirs.extend(dirs.iter().map(|d| d.join(format!("{}.d", id.kind))));
        }
        let fragment = std::fs::canonicalize(&fragment)
            .map_err(|e| AgentError::io("resolving unit file", &fragment, e))?;
        Ok(UnitFiles {
            name: id,
            fragment,
            drop_ins: conf_files(&drop_in_dirs)?,
        })
    }
}

/// The files of one unit, in the order systemd applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFiles {
    /// The name systemd knows the unit by (an alias's target when the file is an alias link).
    pub name: UnitName,
    /// The unit file ("fragment").
    pub fragment: PathBuf,
    /// Its drop-ins, in the order they apply.
    pub drop_ins: Vec<PathBuf>,
}

/// A file that masks: a link to /dev/null or an empty file.
fn masked(path: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|p| p == Path::new("/dev/null"))
        || std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// When `fragment` is a link to a unit file of another name (an alias), that name is the unit's
/// and the asked-for name is an alias (its drop-ins apply too).
fn alias_of(name: &UnitName, fragment: &Path) -> (UnitName, Vec<UnitName>) {
    let is_link = fragment
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    let target = is_link
        .then(|| std::fs::canonicalize(fragment).ok())
        .flatten()
        .and_then(|t| t.file_name()?.to_str().map(str::to_owned))
        .and_then(|t| UnitName::parse(&t))
        .filter(|t| t.kind == name.kind);
    let asked_file = fragment.file_name().and_then(|f| f.to_str());
    match target {
        Some(t) if Some(t.full.as_str()) != asked_file => {
            // A template aliased to a template keeps the instance.
            let id = match (&name.instance, &t.instance) {
                (Some(i), Some(ti)) if ti.is_empty() && !i.is_empty() => {
                    UnitName::parse(&format!("{}@{i}.{}", t.prefix, t.kind)).unwrap_or(t)
                }
                _ => t,
            };
            let aliases = if id == *name {
                Vec::new()
            } else {
                vec![name.clone()]
            };
            (id, aliases)
        }
        _ => (name.clone(), Vec::new()),
    }
}

/// The `*.conf` files of `dirs` (earlier dirs first), one per file name: the first dir that has
/// a name wins, so an empty one or a link to /dev/null there masks the same name further down
/// (systemd lists the masking file itself, which sets nothing); sorted by file name.
fn conf_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut seen_dirs = HashSet::new();
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(canonical) = std::fs::canonicalize(dir) else {
            continue;
        };
        if !canonical.is_dir() || !seen_dirs.insert(canonical) {
            continue;
        }
        let entries =
            std::fs::read_dir(dir).map_err(|e| AgentError::io("reading drop-in dir", dir, e))?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.ends_with(".conf") && !n.starts_with('.'))
            .collect();
        names.sort();
        for n in names {
            let path = dir.join(&n);
            if path.is_file() || masked(&path) {
                by_name.entry(n).or_insert(path);
            }
        }
    }
    Ok(by_name.into_values().collect())
}

#[cfg(test)]
#[path = "unit_files_tests.rs"]
mod tests;

//! Preflight: what every agent reports, checked against the inventory and the snapshot, before
//! anything is touched. Every problem is reported at once, each naming its member and what to do.

use std::fmt::Write as _;

use quorate_proto::model::{Describe, RestoreId};
use quorate_proto::pb;
use serde::{Deserialize, Serialize};

use crate::apiserver_hosts::{self, HostPlan};
use crate::inventory::{Inventory, Member};
use crate::member_checks::{self, major_minor};
use crate::membership::{self, Membership, Source};
use crate::revision::{self, RevisionPlan};
use crate::snapshot::CheckedSnapshot;

mod layout;

pub use layout::DirPlan;

/// One member as planned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberPlan {
    pub name: String,
    pub agent: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub hostname: String,
    pub data_dir: String,
    pub data_dir_bytes: u64,
    pub free_bytes: u64,
    pub etcd_version: String,
    pub etcd_runtime: String,
    pub apiserver_runtime: String,
    pub restore_tool: String,
    /// The data dir's filesystem; `None` in plans made before agents reported it.
    #[serde(default)]
    pub data_layout: Option<DirPlan>,
    /// etcd's `--wal-dir`; empty when not set.
    #[serde(default)]
    pub wal_dir: String,
    /// The WAL dir's filesystem when it lies outside the data dir.
    #[serde(default)]
    pub wal_layout: Option<DirPlan>,
    /// Where `etcd_version` was read (image tag, binary), or why it is unknown.
    #[serde(default)]
    pub etcd_version_source: String,
    /// What the member's agent probes for etcd's health, from the member's host.
    #[serde(default)]
    pub health_probe: String,
    /// How the agent checks `/readyz` ("anonymous", a client certificate); empty without an
    /// apiserver.
    #[serde(default)]
    pub readiness: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub restore_id: RestoreId,
    pub cluster_token: String,
    pub snapshot: CheckedSnapshot,
    pub initial_cluster: String,
    pub members: Vec<MemberPlan>,
    pub warnings: Vec<String>,
    /// Revision before and the bump applied by the restore.
    #[serde(default)]
    pub revision: RevisionPlan,
    /// The snapshot is a raw `member/snap/db` copy without a sha256 trailer, restored with
    /// `--skip-hash-check`. Never set for a snapshot that carries a trailer.
    #[serde(default)]
    pub skip_hash_check: bool,
    /// The etcd cluster version recorded in the snapshot (`3.5.0`), when it could be read.
    #[serde(default)]
    pub snapshot_etcd_version: Option<String>,
    /// Apiserver-only hosts (external etcd), in inventory order.
    #[serde(default)]
    pub apiserver_hosts: Vec<HostPlan>,
    /// Where the membership compared with the inventory came from; `None`: it is unknown.
    #[serde(default)]
    pub membership_source: Option<Source>,
    /// Differences with that membership, let through by `--allow-membership-change`.
    #[serde(default)]
    pub membership_differences: usize,
    /// The snapshot's signature (sent with the claim) and the agents that require one.
    #[serde(default)]
    pub signing: crate::signing::SigningPlan,
}

/// What preflight learned beyond the agents' own facts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The highest revision the live cluster reported, if it answered.
    pub live_revision: Option<i64>,
    /// `--no-bump-revision`.
    pub no_bump_revision: bool,
    /// `--skip-hash-check`: a snapshot without a sha256 trailer was accepted.
    pub skip_hash_check: bool,
    /// The etcd cluster version the snapshot records (its `cluster` bucket's `clusterVersion`).
    pub snapshot_etcd_version: Option<String>,
    /// Why the snapshot's etcd version is not known, when reading it failed.
    pub snapshot_version_unread: Option<String>,
    /// The live cluster's member list, when it answered; `None`: the cluster is down, and what
    /// the members' data dirs record is used.
    pub live_membership: Option<Membership>,
    /// `--allow-membership-change`: differences with the cluster's membership are warnings.
    pub allow_membership_change: bool,
    /// The snapshot's signature and the file it was read from; `None`: unsigned.
    pub signature: Option<(
        std::path::PathBuf,
        quorate_proto::signature::SnapshotSignature,
    )>,
}

/// Everything preflight found wrong.
#[derive(Debug, thiserror::Error)]
#[error("preflight refused the restore; nothing was changed:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct PreflightError {
    pub problems: Vec<String>,
}

fn tool_name(tool: Option<&pb::RestoreTool>) -> Option<String> {
    let tool = tool?;
    match pb::RestoreToolKind::try_from(tool.kind) {
        Ok(pb::RestoreToolKind::Etcdutl) => Some(format!("etcdutl {}", tool.version)),
        Ok(pb::RestoreToolKind::Etcdctl) => {
            Some(format!("etcdctl {} (ETCDCTL_API=3)", tool.version))
        }
        _ => None,
    }
}

/// Checks the etcd version a snapshot was taken at against the version the members run: a
/// problem when their major.minor differ (etcd restores its own minor's data format only), a
/// warning when either is unknown, nothing when they match.
pub fn snapshot_version_check(
    snapshot: Option<&str>,
    members: Option<&str>,
    unread: Option<&str>,
) -> Result<Option<String>, String> {
    match (snapshot, members) {
        (Some(snap), Some(members)) if major_minor(snap) != major_minor(members) => Err(format!(
            "the snapshot was taken on etcd {} (its clusterVersion {snap}), the members run etcd {members}: restore it with the same etcd version it was taken on ({}), or take a snapshot on etcd {}",
            major_minor(snap),
            major_minor(snap),
            major_minor(members)
        )),
        (Some(_), Some(_)) => Ok(None),
        (None, _) => Ok(Some(format!(
            "the snapshot's etcd version is unknown ({}): check that it was taken on the etcd version the members run",
            unread.unwrap_or("it records no clusterVersion")
        ))),
        (Some(snap), None) => Ok(Some(format!(
            "the members' etcd version is unknown (see each member's etcd version source): check that they run etcd {} as the snapshot was taken on (clusterVersion {snap})",
            major_minor(snap)
        ))),
    }
}

/// Checks what the agents reported and builds the plan. `described` follows
/// [`Inventory::agents`]: the members', then the apiserver hosts'.
pub fn build(
    inventory: &Inventory,
    described: &[Result<Describe, String>],
    snapshot: CheckedSnapshot,
    options: &Options,
) -> Result<Plan, PreflightError> {
    // Names and URLs go into every agent's request: checked here too, whoever built the
    // inventory (agents refuse what these checks refuse).
    if let Err(e) = inventory.validate() {
        return Err(PreflightError {
            problems: vec![e.to_string()],
        });
    }
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let n = inventory.members.len();
    if n.is_multiple_of(2) {
        warnings.push(format!(
            "{n} members: an even count tolerates no more failures than {} members; consider an odd count",
            n - 1
        ));
    }
    let mut members = Vec::new();
    let mut versions = Vec::new();
    let mut lacking_bump: Option<(String, String)> = None;
    for (m, d) in inventory.members.iter().zip(described) {
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!(
                    "member {}: agent at {} did not answer Describe: {e}; check that quorate-agent runs there and trusts this coordinator's certificate",
                    m.name, m.agent
                ));
                continue;
            }
        };
        if let Some(problem) = apiserver_hosts::not_a_member(m, d) {
            problems.push(problem);
            continue;
        }
        check_member(m, d, &mut problems);
        problems.extend(layout::problems(&m.name, d, snapshot.size));
        member_checks::check(&m.name, d, &mut problems, &mut warnings);
        if lacking_bump.is_none()
            && !d
                .restore_tool
                .as_ref()
                .is_some_and(|t| t.supports_bump_revision)
        {
            let tool = tool_name(d.restore_tool.as_ref()).unwrap_or_else(|| "none".into());
            lacking_bump = Some((m.name.clone(), tool));
        }
        if !d.etcd_version.trim().is_empty() {
            versions.push((m.name.clone(), d.etcd_version.clone()));
        }
        members.push(MemberPlan {
            name: m.name.clone(),
            agent: m.agent.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: m.client_urls.clone(),
            hostname: d.hostname.clone(),
            data_dir: d.data_dir.clone(),
            data_dir_bytes: d.data_dir_bytes,
            free_bytes: d.free_bytes,
            etcd_version: d.etcd_version.clone(),
            etcd_runtime: d.etcd_runtime.clone(),
            apiserver_runtime: d.apiserver_runtime.clone(),
            restore_tool: tool_name(d.restore_tool.as_ref()).unwrap_or_else(|| "none".into()),
            data_layout: d.data_layout.as_ref().map(DirPlan::from),
            wal_dir: d.wal_dir.clone(),
            wal_layout: d.wal_layout.as_ref().map(DirPlan::from),
            etcd_version_source: d.etcd_version_source.clone(),
            health_probe: d.health_probe.clone(),
            readiness: d.readiness_auth.clone(),
        });
    }
    if let Some((first_name, first)) = versions.first() {
        for (name, v) in &versions[1..] {
            if major_minor(v) != major_minor(first) {
                problems.push(format!(
                    "members run different etcd versions ({first_name}: {first}, {name}: {v}); restore needs one version on every member"
                ));
            }
        }
    }
    let members_version = versions
        .iter()
        .map(|(_, v)| v.as_str())
        .find(|v| !v.trim().is_empty());
    if !members.is_empty() {
        match snapshot_version_check(
            options.snapshot_etcd_version.as_deref(),
            members_version,
            options.snapshot_version_unread.as_deref(),
        ) {
            Ok(None) => {}
            Ok(Some(warning)) => warnings.push(warning),
            Err(problem) => problems.push(problem),
        }
    }
    let members_described: Vec<Option<&pb::DescribeResponse>> = described
        .iter()
        .take(n)
        .map(|d| d.as_ref().ok().map(Describe::facts))
        .collect();
    let (membership_source, membership_differences) = membership::check(
        &inventory.members,
        &members_described,
        options.live_membership.as_ref(),
        options.allow_membership_change,
        &mut problems,
        &mut warnings,
    );
    let apiserver_hosts = apiserver_hosts::check(
        &inventory.apiservers,
        described.get(n..).unwrap_or_default(),
        &mut problems,
    );
    warnings.extend(apiserver_hosts::unfenced_warning(
        inventory,
        &members_described,
    ));
    let agents: Vec<(&str, Option<&Describe>)> = inventory
        .agents()
        .iter()
        .zip(described)
        .map(|(a, d)| (a.name, d.as_ref().ok()))
        .collect();
    let signing = crate::signing::check(options.signature.clone(), &agents, &mut problems);
    if !problems.is_empty() {
        return Err(PreflightError { problems });
    }
    // Only a file without a trailer is restored with --skip-hash-check: for a saved snapshot the
    // tool's own hash check is what catches corruption.
    let skip_hash_check = options.skip_hash_check && !snapshot.trailer;
    if skip_hash_check {
        warnings.push(format!(
            "{} has no sha256 trailer and is restored with --skip-hash-check: its integrity cannot be checked, and a raw member/snap/db copy may hold uncommitted or inconsistent data (it was copied from a running member); prefer a snapshot taken with `etcdctl snapshot save` or `quorate snapshot save`",
            snapshot.path.display()
        ));
    } else if options.skip_hash_check {
        warnings.push(format!(
            "--skip-hash-check ignored: {} carries a sha256 trailer, which was checked and matches; it is restored with etcd's own hash check",
            snapshot.path.display()
        ));
    }
    let revision = revision::decide(
        lacking_bump.as_ref().map(|(m, t)| (m.as_str(), t.as_str())),
        options.live_revision,
        options.no_bump_revision,
    );
    if revision.bump == 0
        && let Some(note) = &revision.note
    {
        warnings.push(note.clone());
    }
    let restore_id = RestoreId::new();
    let initial_cluster = inventory
        .members
        .iter()
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
        .collect::<Vec<_>>()
        .join(",");
    Ok(Plan {
        cluster_token: restore_id.cluster_token(),
        restore_id,
        snapshot,
        initial_cluster,
        members,
        warnings,
        revision,
        skip_hash_check,
        snapshot_etcd_version: options.snapshot_etcd_version.clone(),
        apiserver_hosts,
        membership_source,
        membership_differences,
        signing,
    })
}

fn check_member(m: &Member, d: &Describe, problems: &mut Vec<String>) {
    if d.member_name != m.name {
        problems.push(format!(
            "member {}: its agent reports etcd member name {:?} (from its etcd manifest); fix the inventory or the agent's config",
            m.name, d.member_name
        ));
    }
    let mut reported = d.peer_urls.clone();
    let mut planned = m.peer_urls.clone();
    reported.sort();
    planned.sort();
    if reported != planned {
        problems.push(format!(
            "member {}: inventory peer URLs {planned:?} differ from the {reported:?} its agent reports",
            m.name
        ));
    }
    if tool_name(d.restore_tool.as_ref()).is_none() {
        problems.push(format!(
            "member {}: no restore tool found (etcdutl for etcd 3.5+, etcdctl for 3.4); install it or set etcd.etcdutl / etcd.etcdctl in the agent's config",
            m.name
        ));
    }
    if let Some(active) = d.active {
        let id = active.restore_id;
        problems.push(format!(
            "member {}: holds unfinished {active}; finish it with `quorate resume {id}` or undo it with `quorate rollback {id}`",
            m.name
        ));
    }
}

impl Plan {
    /// What the inventory's members were checked against.
    fn membership_line(&self) -> String {
        match (&self.membership_source, self.membership_differences) {
            (None, _) => {
                "members: not checked against the cluster's membership (unknown; see the warnings)"
                    .to_owned()
            }
            (Some(source), 0) => {
                format!("members: the inventory's match the {}", source.describe())
            }
            (Some(source), n) => format!(
                "members: the inventory's differ from the {} ({n} difference{}, let through by --allow-membership-change; see the warnings)",
                source.describe(),
                if n == 1 { "" } else { "s" }
            ),
        }
    }

    /// The plan as an operator reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "restore {}", self.restore_id);
        let _ = writeln!(
            out,
            "snapshot {} ({:.1} MB, sha256 {})",
            self.snapshot.path.display(),
            self.snapshot.size as f64 / 1e6,
            self.snapshot.sha256
        );
        if self.skip_hash_check {
            let _ = writeln!(
                out,
                "  no sha256 trailer (raw member/snap/db copy): restored with --skip-hash-check"
            );
        }
        if let Some(v) = &self.snapshot_etcd_version {
            let _ = writeln!(out, "  taken on etcd cluster version {v}");
        }
        let _ = writeln!(out, "  {}", self.signing.render());
        let _ = writeln!(out, "new cluster token {}", self.cluster_token);
        let live = self
            .revision
            .live_revision
            .map_or("unknown".to_owned(), |r| r.to_string());
        if self.revision.bump > 0 {
            let _ = writeln!(
                out,
                "revision: live {live}; restored = the snapshot's + {} (--bump-revision, --mark-compacted)",
                self.revision.bump
            );
        } else {
            let _ = writeln!(
                out,
                "revision: live {live}; restored = the snapshot's (no bump)"
            );
        }
        let _ = writeln!(out, "members:");
        for m in &self.members {
            let _ = writeln!(
                out,
                "  {:<8} agent {}  peer {}  data dir {} ({:.1} MB, {:.1} GB free)  etcd {} via {}  restore with {}  apiserver: {}",
                m.name,
                m.agent,
                m.peer_urls.join(","),
                m.data_dir,
                m.data_dir_bytes as f64 / 1e6,
                m.free_bytes as f64 / 1e9,
                m.etcd_version,
                m.etcd_runtime,
                m.restore_tool,
                m.apiserver_runtime
            );
            let _ = writeln!(out, "           layout: {}", m.layout_line());
            let _ = writeln!(
                out,
                "  {:<8} etcd version from {}; health probed by its agent: {}{}",
                "",
                if m.etcd_version_source.is_empty() {
                    "?"
                } else {
                    &m.etcd_version_source
                },
                if m.health_probe.is_empty() {
                    "?"
                } else {
                    &m.health_probe
                },
                if m.readiness.is_empty() {
                    String::new()
                } else {
                    format!("; /readyz: {}", m.readiness)
                }
            );
        }
        if !self.apiserver_hosts.is_empty() {
            let _ = writeln!(
                out,
                "apiserver hosts (no etcd; fenced before etcd halts, unfenced after verify):"
            );
            for h in &self.apiserver_hosts {
                let _ = writeln!(
                    out,
                    "  {:<8} agent {}  host {}  apiserver: {}",
                    h.name, h.agent, h.hostname, h.apiserver_runtime
                );
            }
        }
        let _ = writeln!(out, "{}", layout::room_text(self.snapshot.size));
        let _ = writeln!(out, "{}", self.membership_line());
        let hosts = if self.apiserver_hosts.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = self
                .apiserver_hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect();
            format!(" (on the members and on {})", names.join(", "))
        };
        let _ = writeln!(
            out,
            "phases (each ends on every member before the next starts):"
        );
        let _ = writeln!(
            out,
            "  0. {:<10} done: inventory, membership, agents, disk, restore tool, snapshot sha256",
            "preflight"
        );
        let order = self
            .members
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        for (i, def) in crate::phases::TABLE.iter().enumerate() {
            let text = def
                .plan_text
                .replace("{hosts}", &hosts)
                .replace("{order}", &order);
            let _ = writeln!(out, "  {}. {:<10} {text}", i + 1, def.name);
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use quorate_proto::tls::TlsFiles;

    use quorate_proto::model::{Step, StepState, active_step_fields};

    use super::*;
    use crate::inventory::ClusterSection;

    pub(crate) fn inventory(n: usize) -> Inventory {
        Inventory {
            cluster: ClusterSection { name: "t".into() },
            agent_tls: TlsFiles {
                ca: PathBuf::from("/x/ca.crt"),
                cert: PathBuf::from("/x/c.crt"),
                key: PathBuf::from("/x/c.key"),
            },
            etcd_tls: None,
            members: (1..=n)
                .map(|i| Member {
                    name: format!("cp-{i}"),
                    agent: format!("https://127.0.0.{}:7443", 10 + i),
                    agent_server_name: None,
                    peer_urls: vec![format!("https://127.0.0.{}:2380", 10 + i)],
                    client_urls: vec![format!("https://127.0.0.{}:2379", 10 + i)],
                })
                .collect(),
            apiservers: vec![],
        }
    }

    /// [`super::build`] with the agents' answers checked as the agent client checks them.
    pub(crate) fn build(
        inventory: &Inventory,
        described: &[Result<pb::DescribeResponse, String>],
        snapshot: CheckedSnapshot,
        options: &Options,
    ) -> Result<Plan, PreflightError> {
        let checked: Vec<Result<Describe, String>> = described
            .iter()
            .map(|d| {
                d.clone()
                    .map(|d| Describe::try_from(d).expect("a description that keeps the contract"))
            })
            .collect();
        super::build(inventory, &checked, snapshot, options)
    }

    /// A stacked member (etcd and a kube-apiserver) ready for a restore.
    pub(crate) fn healthy(m: &Member) -> pb::DescribeResponse {
        pb::DescribeResponse {
            role: pb::AgentRole::EtcdMember as i32,
            apiserver_present: true,
            member_name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            free_bytes: 10 << 30,
            data_dir: "/var/lib/etcd".into(),
            etcd_version: "3.5.1".into(),
            restore_tool: Some(pb::RestoreTool {
                kind: pb::RestoreToolKind::Etcdutl as i32,
                version: "3.5.1".into(),
                supports_bump_revision: false,
            }),
            ..Default::default()
        }
    }

    pub(crate) fn snapshot() -> CheckedSnapshot {
        CheckedSnapshot {
            path: PathBuf::from("/x/snap.db"),
            size: 100 << 20,
            sha256: "a".repeat(64),
            trailer: true,
        }
    }

    /// What preflight learns of a 3.5 snapshot with a trailer, from a live cluster whose members
    /// are the inventory's.
    pub(crate) fn options(inv: &Inventory) -> Options {
        let members = inv
            .members
            .iter()
            .zip(1..)
            .map(|(m, id)| membership::Known {
                id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
            })
            .collect();
        Options {
            snapshot_etcd_version: Some("3.5.0".into()),
            live_membership: Some(Membership {
                source: Source::Live { via: "cp-1".into() },
                members,
            }),
            ..Options::default()
        }
    }

    fn problems(inv: &Inventory, edit: impl Fn(usize, &mut pb::DescribeResponse)) -> Vec<String> {
        let described: Vec<_> = inv
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut d = healthy(m);
                edit(i, &mut d);
                Ok(d)
            })
            .collect();
        build(inv, &described, snapshot(), &options(inv))
            .map_or_else(|e| e.problems, |_| Vec::new())
    }

    #[test]
    fn a_healthy_cluster_plans_a_fresh_token_and_a_rolling_start() {
        let inv = inventory(5);
        let described: Vec<_> = inv.members.iter().map(|m| Ok(healthy(m))).collect();
        let plan = build(&inv, &described, snapshot(), &options(&inv)).expect("plan");
        let order: Vec<&str> = plan.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            order,
            ["cp-1", "cp-2", "cp-3", "cp-4", "cp-5"],
            "the start order"
        );
        assert_eq!(plan.cluster_token, format!("quorate-{}", plan.restore_id));
        assert!(
            plan.initial_cluster
                .starts_with("cp-1=https://127.0.0.11:2380,cp-2=")
        );
        // etcdutl 3.5.1 cannot bump the revision: the plan says so, and nothing else.
        assert_eq!(plan.revision.bump, 0);
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(plan.warnings[0].contains("cannot bump the revision"));
        let text = plan.render();
        assert!(
            text.contains("restored = the snapshot's (no bump)"),
            "{text}"
        );
        assert!(
            text.contains(
                "quorum     start etcd member by member in the order cp-1, cp-2, cp-3, cp-4, cp-5"
            ),
            "{text}"
        );
    }

    #[test]
    fn each_bad_fact_is_refused_naming_the_member_and_what_to_do() {
        let inv = inventory(3);
        type Edit = Box<dyn Fn(usize, &mut pb::DescribeResponse)>;
        let cases: [(&str, Edit, &str); 6] = [
            (
                "name",
                Box::new(|i, d| {
                    if i == 1 {
                        d.member_name = "other".into()
                    }
                }),
                "member cp-2: its agent reports etcd member name \"other\"",
            ),
            (
                "peer",
                Box::new(|i, d| {
                    if i == 2 {
                        d.peer_urls = vec!["https://10.9.9.9:2380".into()]
                    }
                }),
                "member cp-3: inventory peer URLs",
            ),
            (
                "tool",
                Box::new(|i, d| {
                    if i == 0 {
                        d.restore_tool = None
                    }
                }),
                "member cp-1: no restore tool found",
            ),
            (
                "disk",
                Box::new(|i, d| {
                    if i == 0 {
                        d.free_bytes = 50 << 20
                    }
                }),
                "member cp-1: 50 MB free",
            ),
            (
                "lock",
                Box::new(|i, d| {
                    if i == 1 {
                        d.active_restore_id = "7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11".into();
                        (d.active_step, d.active_step_state) =
                            active_step_fields(Some((Step::Fence, StepState::Done)));
                    }
                }),
                "member cp-2: holds unfinished restore 7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11 \
                 (last step fence done); finish it with `quorate resume \
                 7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11` or undo it with `quorate rollback \
                 7f1c3a52-9d7e-4c1b-8f7a-0b6a6f0e2a11`",
            ),
            (
                "version",
                Box::new(|i, d| {
                    if i == 2 {
                        d.etcd_version = "3.4.23".into();
                        d.restore_tool = Some(pb::RestoreTool {
                            kind: pb::RestoreToolKind::Etcdctl as i32,
                            version: "3.4.23".into(),
                            supports_bump_revision: false,
                        });
                    }
                }),
                "different etcd versions",
            ),
        ];
        for (what, edit, expected) in cases {
            let found = problems(&inv, edit);
            assert_eq!(found.len(), 1, "{what}: {found:?}");
            assert!(found[0].contains(expected), "{what}: {found:?}");
        }
    }

    #[test]
    fn every_tool_able_to_bump_means_a_bump_above_the_live_revision() {
        let inv = inventory(3);
        let described: Vec<_> = inv
            .members
            .iter()
            .map(|m| {
                let mut d = healthy(m);
                if let Some(t) = d.restore_tool.as_mut() {
                    t.supports_bump_revision = true;
                    t.version = "3.5.17".into();
                }
                Ok(d)
            })
            .collect();
        let options = Options {
            live_revision: Some(5_000),
            no_bump_revision: false,
            ..options(&inv)
        };
        let plan = build(&inv, &described, snapshot(), &options).expect("plan");
        assert_eq!(plan.revision.bump, 6_000);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert!(plan.render().contains("restored = the snapshot's + 6000"));
    }

    #[test]
    fn an_unreachable_agent_and_an_even_count_are_reported() {
        let inv = inventory(4);
        let mut described: Vec<_> = inv.members.iter().map(|m| Ok(healthy(m))).collect();
        described[3] = Err("connection refused".into());
        let err = build(&inv, &described, snapshot(), &options(&inv)).expect_err("unreachable");
        assert!(
            err.to_string()
                .contains("member cp-4: agent at https://127.0.0.14:7443 did not answer"),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was changed"));
        described[3] = Ok(healthy(&inv.members[3]));
        let plan = build(&inv, &described, snapshot(), &options(&inv)).expect("plan");
        assert!(
            plan.warnings[0].contains("even count"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn the_snapshot_etcd_version_must_match_the_members_major_minor() {
        assert_eq!(
            snapshot_version_check(Some("3.5.0"), Some("3.5.1"), None),
            Ok(None)
        );
        assert_eq!(
            snapshot_version_check(Some("3.4.0"), Some("v3.4.23"), None),
            Ok(None)
        );
        let refused =
            snapshot_version_check(Some("3.4.0"), Some("3.5.1"), None).expect_err("3.4 on 3.5");
        assert!(
            refused.contains("taken on etcd 3.4")
                && refused.contains("run etcd 3.5.1")
                && refused.contains("same etcd version"),
            "{refused}"
        );
        // 3.10 is not 3.1.
        assert!(snapshot_version_check(Some("3.10.0"), Some("3.1.2"), None).is_err());
        let unknown = snapshot_version_check(None, Some("3.5.1"), Some("no bbolt"))
            .expect("a warning, not a refusal")
            .expect("warning");
        assert!(unknown.contains("no bbolt"), "{unknown}");
        let members_unknown = snapshot_version_check(Some("3.5.0"), None, None)
            .expect("a warning")
            .expect("warning");
        assert!(members_unknown.contains("members' etcd version is unknown"));

        // In the plan: a refusal among the problems; unknown versions as warnings.
        let inv = inventory(3);
        let described: Vec<_> = inv.members.iter().map(|m| Ok(healthy(m))).collect();
        let old = Options {
            snapshot_etcd_version: Some("3.4.0".into()),
            ..Options::default()
        };
        let err = build(&inv, &described, snapshot(), &old).expect_err("3.4 snapshot");
        assert!(err.to_string().contains("etcd 3.4"), "{err}");
        let plan = build(&inv, &described, snapshot(), &Options::default()).expect("plan");
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("etcd version is unknown")),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn skip_hash_check_applies_to_a_raw_db_only_and_warns() {
        let inv = inventory(3);
        let described: Vec<_> = inv.members.iter().map(|m| Ok(healthy(m))).collect();
        let flag = Options {
            skip_hash_check: true,
            ..options(&inv)
        };
        let raw = CheckedSnapshot {
            trailer: false,
            ..snapshot()
        };
        let plan = build(&inv, &described, raw, &flag).expect("plan");
        assert!(plan.skip_hash_check);
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("integrity cannot be checked")
                    && w.contains("uncommitted or inconsistent")),
            "{:?}",
            plan.warnings
        );
        assert!(plan.render().contains("restored with --skip-hash-check"));

        // A saved snapshot with the flag: checked, and never restored with --skip-hash-check.
        let saved = build(&inv, &described, snapshot(), &flag).expect("plan");
        assert!(!saved.skip_hash_check);
        assert!(
            saved
                .warnings
                .iter()
                .any(|w| w.contains("--skip-hash-check ignored")),
            "{:?}",
            saved.warnings
        );
        let plain = build(&inv, &described, snapshot(), &options(&inv)).expect("plan");
        assert!(!plain.skip_hash_check);
    }
}

#[cfg(test)]
#[path = "plan_external_tests.rs"]
mod external_tests;

//! Revision safety: Kubernetes watch caches and informers break when etcd's revision goes
//! backwards, which a plain restore does (the restored revision is the snapshot's). etcdutl
//! ≥ 3.5.10 can `--bump-revision` (with `--mark-compacted`); quorate uses it by default when every
//! member's restore tool can.

use serde::{Deserialize, Serialize};

/// The bump when the live cluster's revision is unknown (it did not answer in preflight): large
/// enough to pass any revision a cluster reaches in practice, as OpenShift's restore does.
pub const DEFAULT_BUMP: u64 = 1_000_000_000;

/// The smallest margin above the live revision.
pub const MIN_MARGIN: u64 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RevisionPlan {
    /// The highest revision the live cluster reported in preflight.
    pub live_revision: Option<i64>,
    /// Added to the snapshot's revision by the restore; 0 = no bump.
    pub bump: u64,
    /// Why there is no bump, or how it was chosen, when the operator should know.
    pub note: Option<String>,
}

/// Decides the bump. `lacking` names the first member whose restore tool cannot bump, with its
/// tool (`None` when every member can).
pub fn decide(lacking: Option<(&str, &str)>, live: Option<i64>, disabled: bool) -> RevisionPlan {
    let live_text = live.map_or("the live revision".to_owned(), |r| format!("revision {r}"));
    if disabled {
        return RevisionPlan {
            live_revision: live,
            bump: 0,
            note: Some(format!(
                "revision bump disabled (--no-bump-revision): the revision goes back from {live_text} to the snapshot's; Kubernetes watch caches and informers may miss changes until they relist"
            )),
        };
    }
    if let Some((member, tool)) = lacking {
        return RevisionPlan {
            live_revision: live,
            bump: 0,
            note: Some(format!(
                "member {member}'s restore tool ({tool}) cannot bump the revision (needs etcdutl 3.5.10 or newer): the revision goes back from {live_text} to the snapshot's, which breaks Kubernetes watch caches until they relist; point the agent at a newer etcdutl (etcd.etcdutl in its config), or pass --no-bump-revision to accept this"
            )),
        };
    }
    match live.and_then(|r| u64::try_from(r).ok()) {
        Some(r) => RevisionPlan {
            live_revision: live,
            bump: r + (r / 5).max(MIN_MARGIN),
            note: None,
        },
        None => RevisionPlan {
            live_revision: live,
            bump: DEFAULT_BUMP,
            note: Some(format!(
                "the live cluster did not report its revision: bumping by the default {DEFAULT_BUMP}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_above_the_live_revision_with_a_margin_when_every_tool_can() {
        let p = decide(None, Some(50_000), false);
        assert_eq!(p.bump, 60_000, "20% margin");
        assert!(p.note.is_none());
        let small = decide(None, Some(10), false);
        assert_eq!(small.bump, 1_010, "at least the minimum margin");
        // Whatever the snapshot's revision (≥ 1), the restored one passes the live one.
        assert!(1 + small.bump as i64 > 10);
    }

    #[test]
    fn unknown_live_revision_uses_the_documented_default() {
        let p = decide(None, None, false);
        assert_eq!(p.bump, DEFAULT_BUMP);
        assert!(p.note.as_deref().is_some_and(|n| n.contains("default")));
    }

    #[test]
    fn a_member_without_support_means_no_bump_and_a_warning_saying_what_to_do() {
        let p = decide(Some(("cp-2", "etcdutl 3.5.1")), Some(900), false);
        assert_eq!(p.bump, 0);
        let note = p.note.expect("warning");
        assert!(
            note.contains("cp-2")
                && note.contains("etcdutl 3.5.1")
                && note.contains("from revision 900")
        );
        assert!(note.contains("--no-bump-revision"));
    }

    #[test]
    fn disabled_means_no_bump_even_when_supported() {
        let p = decide(None, Some(900), true);
        assert_eq!(p.bump, 0);
        assert!(p.note.expect("note").contains("disabled"));
    }
}

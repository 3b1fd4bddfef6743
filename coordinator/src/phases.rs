//! The phases of a restore, each declared once: its agent step, where it runs, its deadline, what
//! it does forward, how it is undone (or that it only rolls forward), and what `quorate plan` says
//! of it. The engine (`engine.rs`) drives restore, resume and rollback from this table alone: a new
//! phase is one new row.

use std::time::Duration;

use quorate_proto::model::Step;
use serde::{Deserialize, Serialize};

/// The phases after preflight, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Stage,
    Prepare,
    Fence,
    Halt,
    Preserve,
    Restore,
    Quorum,
    Verify,
    Unfence,
    Finish,
}

/// Which agents a phase's step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// The etcd members only.
    Members,
    /// The etcd members and the apiserver hosts.
    AllAgents,
}

/// Which of the deadlines bounds a phase (see [`Deadlines`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A quick call on every member.
    Call,
    /// Stopping a component everywhere.
    Stop,
    /// Starting a component everywhere.
    Start,
    /// Streaming the snapshot to every member: scales with its size times the member count (the
    /// coordinator sends one copy to each).
    CallScaled,
    /// Work each member does on its own host with the snapshot (restoring it): scales with its
    /// size.
    StartScaled,
}

/// What a phase does, forward or backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do (backward: nothing to undo).
    Nothing,
    /// The phase's step on every target at once.
    Run,
    /// The phase's step on every follower at once, and on the leader (as the cluster reports it)
    /// as soon as every follower's etcd has stopped answering, without waiting for their steps
    /// to end; on every member at once when no leader is known.
    RunLeaderLast,
    /// The phase's step on every target at once; each host reports the components it started.
    RunReportingStarted,
    /// The phase's step reverted on every target at once.
    Revert,
    /// Claim every agent, then stream the snapshot to every member.
    Stage,
    /// Start etcd member by member in quorum order, each as soon as the previous one answers on
    /// its health endpoint, then wait for every member to be healthy. Forward: the phase's step
    /// run; backward: reverted.
    QuorumOrderRun,
    QuorumOrderRevert,
    /// Check the restored cluster: membership, one HashKV on every member, the revision.
    Verify,
    /// The phase cannot be undone: once begun, the restore can only be completed.
    RollForwardOnly,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct PhaseDef {
    pub phase: Phase,
    pub name: &'static str,
    /// The agent step the phase runs or reverts (verify runs none).
    pub step: Option<Step>,
    pub targets: Targets,
    pub bound: Bound,
    pub forward: Action,
    pub backward: Action,
    /// Once this phase is done, nothing is rolled back automatically (the point of no return).
    pub commits: bool,
    /// What the phase does, for `quorate plan`; `{hosts}` and `{first}` are filled in.
    pub plan_text: &'static str,
}

/// The restore, phase by phase. Rollback walks it backwards from the last phase begun.
pub const TABLE: [PhaseDef; 10] = [
    PhaseDef {
        phase: Phase::Stage,
        name: "stage",
        step: Some(Step::Claim),
        targets: Targets::AllAgents,
        bound: Bound::CallScaled,
        forward: Action::Stage,
        backward: Action::Revert,
        commits: false,
        plan_text: "claim each member for this restore; stream the snapshot to every agent; sha256 checked on arrival",
    },
    PhaseDef {
        phase: Phase::Prepare,
        name: "prepare",
        step: Some(Step::Prepare),
        targets: Targets::Members,
        bound: Bound::StartScaled,
        forward: Action::Run,
        backward: Action::Revert,
        commits: false,
        plan_text: "while etcd still serves, restore the snapshot on each member with its name and peer URL under the new token into <dir>.quorate-<id>.prepared beside its data dir (and wal dir), or inside one that is a mount point; what it was made from is recorded",
    },
    PhaseDef {
        phase: Phase::Fence,
        name: "fence",
        step: Some(Step::Fence),
        targets: Targets::AllAgents,
        bound: Bound::Stop,
        forward: Action::Run,
        backward: Action::Revert,
        commits: false,
        plan_text: "stop every kube-apiserver{hosts}, kube-controller-manager and kube-scheduler, all at once, and wait until they are down",
    },
    PhaseDef {
        phase: Phase::Halt,
        name: "halt",
        step: Some(Step::Halt),
        targets: Targets::Members,
        bound: Bound::Stop,
        forward: Action::RunLeaderLast,
        backward: Action::QuorumOrderRevert,
        commits: false,
        plan_text: "stop etcd on the followers, then on the leader as soon as no follower answers (no leader transfer to a member that is stopping); wait until the processes are gone and ports closed",
    },
    PhaseDef {
        phase: Phase::Preserve,
        name: "preserve",
        step: Some(Step::Preserve),
        targets: Targets::Members,
        bound: Bound::Call,
        forward: Action::Run,
        backward: Action::Revert,
        commits: false,
        plan_text: "move each data dir (and wal dir) aside: renamed to <dir>.quorate-<id>, or, for a mount point, its etcd entries moved into <dir>/.quorate-<id>/",
    },
    PhaseDef {
        phase: Phase::Restore,
        name: "restore",
        step: Some(Step::Restore),
        targets: Targets::Members,
        bound: Bound::StartScaled,
        forward: Action::Run,
        backward: Action::Revert,
        commits: false,
        plan_text: "move each member's prepared copy into place by renames (owner and mode of the original); a copy whose snapshot, facts, tool or files differ from what it was made with is removed and the snapshot restored here instead",
    },
    PhaseDef {
        phase: Phase::Quorum,
        name: "quorum",
        step: Some(Step::Start),
        targets: Targets::Members,
        bound: Bound::Start,
        forward: Action::QuorumOrderRun,
        backward: Action::Revert,
        commits: false,
        plan_text: "start etcd member by member in the order {order}, each as soon as the previous one answers on its health endpoint; then wait until every member is healthy",
    },
    PhaseDef {
        phase: Phase::Verify,
        name: "verify",
        step: None,
        targets: Targets::Members,
        bound: Bound::Call,
        forward: Action::Verify,
        backward: Action::Nothing,
        commits: true,
        plan_text: "member list, health, identical HashKV at one revision, revision of the snapshot; from here on nothing is rolled back automatically",
    },
    PhaseDef {
        phase: Phase::Unfence,
        name: "unfence",
        step: Some(Step::Unfence),
        targets: Targets::AllAgents,
        bound: Bound::Start,
        forward: Action::RunReportingStarted,
        backward: Action::Revert,
        commits: false,
        plan_text: "start every kube-apiserver{hosts} and wait for /readyz, then kube-controller-manager and kube-scheduler",
    },
    PhaseDef {
        phase: Phase::Finish,
        name: "finish",
        step: Some(Step::Finish),
        targets: Targets::AllAgents,
        bound: Bound::Call,
        forward: Action::Run,
        backward: Action::RollForwardOnly,
        commits: false,
        plan_text: "release every member, delete the staged snapshot copies and any prepared copy left; preserved dirs are kept",
    },
];

impl Phase {
    pub const ALL: [Phase; 10] = {
        let mut all = [Phase::Stage; 10];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].phase;
            i += 1;
        }
        all
    };

    pub fn def(self) -> &'static PhaseDef {
        &TABLE[self.index()]
    }

    /// Its place in the table, from 0.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The phase whose `done` marks the point of no return.
    pub fn point_of_no_return() -> Phase {
        TABLE
            .iter()
            .find(|d| d.commits)
            .map_or(Phase::Verify, |d| d.phase)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-phase deadlines.
#[derive(Debug, Clone)]
pub struct Deadlines {
    pub call: Duration,
    pub stop: Duration,
    pub start: Duration,
    /// How long every member may take to become healthy after the last one started.
    pub quorum: Duration,
    /// How long a rolling start waits for one member's etcd to answer before starting the next.
    pub member_answer: Duration,
    /// Bytes per second assumed when scaling the stage and restore deadlines by snapshot size.
    pub min_throughput: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            call: Duration::from_secs(30),
            stop: Duration::from_secs(90),
            start: Duration::from_secs(120),
            quorum: Duration::from_secs(120),
            member_answer: Duration::from_secs(15),
            min_throughput: 20 << 20,
        }
    }
}

impl Deadlines {
    fn for_size(&self, base: Duration, bytes: u64) -> Duration {
        base + Duration::from_secs(bytes / self.min_throughput.max(1))
    }

    /// The deadline of one phase's step on every target, for a snapshot of `bytes` sent to
    /// `members` members.
    pub fn of(&self, bound: Bound, bytes: u64, members: usize) -> Duration {
        let copies = u64::try_from(members.max(1)).unwrap_or(u64::MAX);
        match bound {
            Bound::Call => self.call,
            Bound::Stop => self.stop,
            Bound::Start => self.start,
            Bound::CallScaled => self.for_size(self.call, bytes.saturating_mul(copies)),
            Bound::StartScaled => self.for_size(self.start, bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_phase_order_and_names_are_unique() {
        for (i, d) in TABLE.iter().enumerate() {
            assert_eq!(d.phase.index(), i, "{} is row {i}", d.name);
            assert_eq!(Phase::ALL[i], d.phase);
        }
        let mut names: Vec<&str> = TABLE.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len());
        for d in TABLE {
            let json = serde_json::to_string(&d.phase).expect("json");
            assert_eq!(json, format!("\"{}\"", d.name), "serde name of {}", d.name);
        }
    }

    #[test]
    fn snapshot_deadlines_scale_with_size_and_the_copies_sent() {
        let d = Deadlines::default();
        let gib = 1u64 << 30;
        // 1 GiB at 20 MiB/s is 51 s more; sent to 7 members, 358 s more.
        assert_eq!(
            d.of(Bound::StartScaled, gib, 7),
            d.start + Duration::from_secs(51)
        );
        assert_eq!(
            d.of(Bound::CallScaled, gib, 7),
            d.call + Duration::from_secs(358)
        );
        assert_eq!(d.of(Bound::Stop, gib, 7), d.stop);
    }

    #[test]
    fn one_point_of_no_return_and_every_step_phase_names_its_step() {
        assert_eq!(TABLE.iter().filter(|d| d.commits).count(), 1);
        assert_eq!(Phase::point_of_no_return(), Phase::Verify);
        for d in TABLE {
            let needs_step = matches!(
                d.forward,
                Action::Run | Action::RunReportingStarted | Action::Stage | Action::QuorumOrderRun
            ) || matches!(d.backward, Action::Revert | Action::QuorumOrderRevert);
            assert_eq!(d.step.is_some(), needs_step, "{}", d.name);
        }
        // Every agent step is run by exactly one phase.
        let mut steps: Vec<Step> = TABLE.iter().filter_map(|d| d.step).collect();
        steps.sort();
        steps.dedup();
        assert_eq!(steps.len(), Step::ALL.len());
    }
}

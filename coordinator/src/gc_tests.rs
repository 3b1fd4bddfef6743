use std::sync::Mutex;

use quorate_proto::model::Leftover;

use super::*;

const DAY: u64 = 86_400;
const NOW: u64 = 100 * DAY;

fn restore(
    id: RestoreId,
    end: RestoreEnd,
    ended_at: u64,
    paths: &[(&str, LeftoverKind)],
) -> RestoreLeftovers {
    RestoreLeftovers {
        restore_id: id,
        end,
        ended_at,
        why: if end == RestoreEnd::Unfinished {
            "holds this member's lock".into()
        } else {
            String::new()
        },
        leftovers: paths
            .iter()
            .map(|(p, kind)| Leftover {
                path: PathBuf::from(p),
                kind: *kind,
                bytes: 1000,
            })
            .collect(),
    }
}

fn member(name: &str, restores: Vec<RestoreLeftovers>) -> MemberLeftovers {
    MemberLeftovers {
        member: name.into(),
        restores,
        error: None,
    }
}

fn keep(v: &Verdict) -> &str {
    match v {
        Verdict::Keep(why) => why,
        Verdict::Remove => panic!("expected kept"),
    }
}

#[test]
fn only_restores_ended_everywhere_long_enough_ago_go() {
    let (old, young, held, open) = (
        RestoreId::new(),
        RestoreId::new(),
        RestoreId::new(),
        RestoreId::new(),
    );
    let members = vec![
        member(
            "cp-1",
            vec![
                restore(old, RestoreEnd::Finished, NOW - 9 * DAY, &[]),
                restore(young, RestoreEnd::RolledBack, NOW - DAY, &[]),
                restore(held, RestoreEnd::Finished, NOW - 9 * DAY, &[]),
                restore(open, RestoreEnd::Finished, NOW - 9 * DAY, &[]),
            ],
        ),
        member(
            "cp-2",
            vec![
                restore(old, RestoreEnd::Finished, NOW - 8 * DAY, &[]),
                restore(held, RestoreEnd::Unfinished, 0, &[]),
            ],
        ),
    ];
    let journal = |id: RestoreId| {
        if id == open {
            CoordinatorView::NotEnded("its journal says it has not ended".into())
        } else if id == old {
            CoordinatorView::Ended
        } else {
            CoordinatorView::Absent
        }
    };
    let week = Duration::from_secs(7 * DAY);
    let v = decide(&members, &journal, NOW, week);
    assert_eq!(v[&old], Verdict::Remove);
    assert!(
        keep(&v[&young]).contains("less than --older-than 7days"),
        "{:?}",
        v[&young]
    );
    assert!(
        keep(&v[&held]).contains("unfinished on cp-2: holds"),
        "{:?}",
        v[&held]
    );
    assert!(keep(&v[&open]).contains("has not ended"), "{:?}", v[&open]);
    // --older-than 0s: the young one goes too.
    let v = decide(&members, &journal, NOW, Duration::ZERO);
    assert_eq!(v[&young], Verdict::Remove);
    // One agent silent: nothing goes, it may hold any of them.
    let mut silent = members.clone();
    silent.push(MemberLeftovers {
        member: "cp-3".into(),
        restores: Vec::new(),
        error: Some("no answer within 30s".into()),
    });
    let v = decide(&silent, &journal, NOW, Duration::ZERO);
    assert!(
        v.values().all(|v| keep(v).contains("no list from cp-3")),
        "{v:?}"
    );
}

/// An agent that records the removals asked of it.
struct Scripted {
    name: String,
    asked: Mutex<Vec<RemoveLeftovers>>,
}

impl LeftoverAgent for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    async fn list(&self, _: Duration) -> Result<Vec<RestoreLeftovers>, String> {
        Ok(Vec::new())
    }
    async fn remove(&self, req: RemoveLeftovers, _: Duration) -> Result<Vec<pb::Removal>, String> {
        let answer = req
            .paths
            .iter()
            .map(|p| pb::Removal {
                path: p.display().to_string(),
                removed: true,
                message: "removed".into(),
                bytes: 1000,
            })
            .collect();
        self.asked.lock().expect("lock").push(req);
        Ok(answer)
    }
}

#[tokio::test]
async fn removal_asks_for_the_listed_paths_with_the_agent_state_last() {
    let (gone, kept) = (RestoreId::new(), RestoreId::new());
    let state = format!("/var/lib/quorate-agent/restores/{gone}");
    let data = format!("/var/lib/etcd.quorate-{gone}");
    let failed = format!("/var/lib/etcd.quorate-{gone}.failed");
    let members = vec![member(
        "cp-1",
        vec![
            restore(
                gone,
                RestoreEnd::RolledBack,
                1,
                &[
                    (&state, LeftoverKind::RestoreState),
                    (&data, LeftoverKind::PreservedData),
                    (&failed, LeftoverKind::FailedCopy),
                ],
            ),
            restore(
                kept,
                RestoreEnd::Finished,
                NOW,
                &[("/var/lib/etcd.quorate-k", LeftoverKind::PreservedData)],
            ),
        ],
    )];
    let verdicts = decide(
        &members,
        &|_| CoordinatorView::Absent,
        NOW,
        Duration::from_secs(DAY),
    );
    let agents = [Scripted {
        name: "cp-1".into(),
        asked: Mutex::new(Vec::new()),
    }];
    let removed = remove_all(&agents, &members, &verdicts, Duration::from_secs(5)).await;
    let asked = agents[0].asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 1, "only the restore to remove: {asked:?}");
    assert_eq!(asked[0].restore_id, gone);
    assert_eq!(
        asked[0].paths,
        [
            PathBuf::from(&data),
            PathBuf::from(&failed),
            PathBuf::from(&state)
        ]
    );
    assert_eq!(removed.len(), 3);
    let text = render(&members, &verdicts, &removed, true);
    assert!(text.contains("Removed 3 path(s), 3.0 KB freed."), "{text}");
    assert!(text.contains(&format!("restore {kept} finished")), "{text}");
    assert!(text.contains("kept: ended"), "{text}");
    let text = render(&members, &verdicts, &[], false);
    assert!(
        text.contains("3 path(s), 3.0 KB, can be removed: re-run with --yes"),
        "{text}"
    );
}

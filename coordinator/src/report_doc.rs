//! A restore's report as Markdown or plain text (`quorate report`): its plan, how long each
//! phase took on each member, the snapshot, the cluster and member IDs and the revision before and
//! after, what was restarted, where the original data is kept, and what failed and how it ended.

use std::fmt::Write as _;

use crate::progress::MemberTiming;
use crate::report_cmd::{DocFormat, Outcome, Record};
use crate::view::{self, Row};

/// The whole report of `r`.
pub fn render(r: &Record, format: DocFormat) -> String {
    let mut d = Doc {
        format,
        out: String::new(),
    };
    let id = r.id;
    d.title(&format!("Restore {id}"));
    d.fact("outcome", &r.outcome.to_string());
    if let Some(ms) = r.started_ms {
        d.fact("started", &crate::report_cmd::stamp(ms));
    }
    if let Some(s) = r.seconds() {
        d.fact("took", &format!("{s:.1}s"));
    }
    if let Some(h) = &r.held_by {
        d.fact("driven now by", &h.to_string());
    }
    d.fact("state dir", &r.dir.display().to_string());
    plan(&mut d, r);
    cluster(&mut d, r);
    times(&mut d, r);
    aftermath(&mut d, r);
    failures(&mut d, r);
    d.section("How it ended");
    d.para(&ending(r));
    d.out
}

fn plan(d: &mut Doc, r: &Record) {
    let p = &r.plan;
    d.section("Plan");
    let s = &p.snapshot;
    d.fact("snapshot", &s.path.display().to_string());
    d.fact(
        "snapshot size",
        &format!("{} ({} bytes)", view::mib(s.size as f64), s.size),
    );
    d.fact("snapshot sha256", &s.sha256);
    let revision = r
        .report
        .as_ref()
        .and_then(|rep| rep.snapshot_revision)
        .or(r.progress.snapshot_revision);
    d.fact("snapshot revision", &opt(revision));
    if let Some(v) = &p.snapshot_etcd_version {
        d.fact("snapshot etcd version", v);
    }
    if p.skip_hash_check {
        d.fact(
            "integrity",
            "no sha256 trailer (--skip-hash-check): not checked",
        );
    }
    d.fact("cluster token", &p.cluster_token);
    d.fact("initial cluster", &p.initial_cluster);
    d.fact("revision bump", &p.revision.bump.to_string());
    d.table(
        &[
            "member",
            "host",
            "peer URLs",
            "client URLs",
            "data dir",
            "etcd",
            "runtime",
        ],
        p.members
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.hostname.clone(),
                    m.peer_urls.join(" "),
                    m.client_urls.join(" "),
                    m.data_dir.clone(),
                    m.etcd_version.clone(),
                    m.etcd_runtime.clone(),
                ]
            })
            .collect(),
    );
    if !p.apiserver_hosts.is_empty() {
        d.table(
            &["apiserver host", "host", "runtime"],
            p.apiserver_hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.hostname.clone(),
                        h.apiserver_runtime.clone(),
                    ]
                })
                .collect(),
        );
    }
}

fn cluster(d: &mut Doc, r: &Record) {
    let before = &r.progress.before;
    let after = r
        .report
        .as_ref()
        .map(|rep| &rep.after)
        .or(r.progress.verified.as_ref());
    d.section("Cluster");
    d.fact(
        "cluster ID before",
        &before
            .first()
            .map_or("unknown (the cluster did not answer)".into(), |b| {
                format!("{:x}", b.cluster_id)
            }),
    );
    if let Some(a) = after {
        d.fact("cluster ID after", &format!("{:x}", a.cluster_id));
    }
    if let Some(rb) = &r.rollback {
        d.fact("cluster ID after rollback", &format!("{:x}", rb.cluster_id));
    }
    let revision_before = r
        .report
        .as_ref()
        .and_then(|rep| rep.revision_before)
        .or(r.plan.revision.live_revision);
    d.fact("revision before", &opt(revision_before));
    if let Some(a) = after {
        d.fact(
            "revision after",
            &format!(
                "{} ({} keys, HashKV {:x} on every member)",
                a.revision, a.keys, a.hash
            ),
        );
    }
    if let Some(rb) = &r.rollback {
        d.fact(
            "revision after rollback",
            &format!(
                "{} (HashKV {:x} on every member)",
                rb.original.revision, rb.original.hash
            ),
        );
    }
    let id_of = |views: &[crate::verify::MemberView], name: &str| {
        views
            .iter()
            .find(|v| v.name == name)
            .map_or("-".to_owned(), |v| format!("{:x}", v.member_id))
    };
    d.table(
        &["member", "ID before", "ID after"],
        r.plan
            .members
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    id_of(before, &m.name),
                    after.map_or("-".to_owned(), |a| id_of(&a.members, &m.name)),
                ]
            })
            .collect(),
    );
}

/// The rows of the phase times: the report's (per member) when the restore finished; else the
/// journal's (per phase), with the rollback's per-member times for the phases it undid.
pub fn rows(r: &Record) -> Vec<Row> {
    if let Some(rep) = &r.report {
        return rep
            .phases
            .iter()
            .map(|t| Row::from_timing(t, t.phase.name().to_owned()))
            .collect();
    }
    r.journal_phases
        .iter()
        .map(|j| {
            let members: Vec<MemberTiming> = r
                .rollback
                .iter()
                .flat_map(|rb| &rb.reverted)
                .find(|t| view::undo_label(t.phase) == j.label)
                .map(|t| t.members.clone())
                .unwrap_or_default();
            Row {
                label: j.label.clone(),
                seconds: j.seconds,
                failed: j.failed,
                members,
                began: None,
            }
        })
        .collect()
}

fn times(d: &mut Doc, r: &Record) {
    let rows = rows(r);
    if rows.is_empty() {
        return;
    }
    d.section("Phase times (seconds)");
    let names: Vec<String> = r
        .plan
        .members
        .iter()
        .map(|m| m.name.clone())
        .chain(r.plan.apiserver_hosts.iter().map(|h| h.name.clone()))
        .filter(|n| {
            rows.iter()
                .any(|row| row.members.iter().any(|t| t.member == *n))
        })
        .collect();
    let mut headers = vec!["phase", "total"];
    headers.extend(names.iter().map(String::as_str));
    let body = rows
        .iter()
        .map(|row| {
            let mut cells = vec![
                row.label.clone(),
                match (row.seconds, row.failed) {
                    (Some(s), false) => format!("{s:.2}"),
                    (Some(s), true) => format!("{s:.2} FAILED"),
                    (None, _) => "did not end".into(),
                },
            ];
            cells.extend(names.iter().map(|n| {
                row.members
                    .iter()
                    .find(|t| t.member == *n)
                    .map_or("-".to_owned(), |t| format!("{:.2}", t.seconds))
            }));
            cells
        })
        .collect();
    d.table(&headers, body);
}

/// What was restarted, and where the original data is.
fn aftermath(d: &mut Doc, r: &Record) {
    let restarted = r
        .report
        .as_ref()
        .map_or(&r.progress.restarted, |rep| &rep.restarted);
    if !restarted.is_empty() {
        d.section("Restarted");
        for (host, what) in restarted {
            d.fact(host, what);
        }
    }
    let preserved = r.progress.done.contains(&crate::phases::Phase::Preserve)
        || r.progress.begun >= Some(crate::phases::Phase::Preserve);
    if !preserved {
        return;
    }
    d.section("Original data dirs");
    if r.outcome == Outcome::RolledBack {
        d.para("moved back into place by the rollback: every member runs on them again");
        return;
    }
    match &r.report {
        Some(rep) => {
            for (m, dir) in &rep.preserved_dirs {
                d.fact(m, dir);
            }
        }
        None => {
            for m in &r.plan.members {
                d.fact(&m.name, &m.preserved_text(r.id));
            }
        }
    }
    d.para("kept until `quorate gc` removes them; never deleted silently");
}

fn failures(d: &mut Doc, r: &Record) {
    if r.failures.is_empty() {
        return;
    }
    d.section("Failures");
    d.table(
        &["phase", "who", "kind", "what"],
        r.failures
            .iter()
            .flat_map(|(phase, fs)| {
                fs.iter().map(move |f| {
                    vec![
                        phase.clone(),
                        f.member.clone(),
                        serde_json::to_value(f.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        f.message.clone(),
                    ]
                })
            })
            .collect(),
    );
}

fn ending(r: &Record) -> String {
    let id = r.id;
    match &r.outcome {
        Outcome::Restored => {
            "Every phase done: the cluster runs on the snapshot's data, verified.".into()
        }
        Outcome::RolledBack => match &r.rollback {
            Some(rb) => format!(
                "Rolled back in {:.1}s: every member is on its original data (cluster ID {:x}, revision {}, HashKV {:x} on every member).",
                rb.total_seconds, rb.cluster_id, rb.original.revision, rb.original.hash
            ),
            None => "Rolled back: every member is on its original data, verified.".into(),
        },
        Outcome::UnderWay { phase } => format!(
            "Under way in {phase}: a coordinator holds it now; `quorate status {id}` shows every member."
        ),
        Outcome::PastNoReturn { phase } => format!(
            "Stopped in {phase}, after VERIFY: every member holds the verified snapshot data. `quorate resume {id}` completes the restore."
        ),
        Outcome::RollbackStopped { phase } => format!(
            "The rollback stopped in {phase}: run `quorate rollback {id}` again (`quorate status {id}` shows every member)."
        ),
        Outcome::Stopped { phase } => format!(
            "Stopped in {phase}; nothing is deleted. `quorate status {id}` shows every member; then `quorate resume {id}` carries it forward or `quorate rollback {id}` puts every member back."
        ),
    }
}

fn opt(v: Option<i64>) -> String {
    v.map_or("unknown".to_owned(), |v| v.to_string())
}

/// Markdown or text, written the same way.
struct Doc {
    format: DocFormat,
    out: String,
}

impl Doc {
    fn title(&mut self, t: &str) {
        let _ = match self.format {
            DocFormat::Markdown => writeln!(self.out, "# {t}\n"),
            DocFormat::Text => writeln!(self.out, "{t}\n{}\n", "=".repeat(t.chars().count())),
        };
    }

    fn section(&mut self, t: &str) {
        let _ = match self.format {
            DocFormat::Markdown => writeln!(self.out, "\n## {t}\n"),
            DocFormat::Text => writeln!(self.out, "\n{t}\n{}", "-".repeat(t.chars().count())),
        };
    }

    fn fact(&mut self, key: &str, value: &str) {
        let _ = match self.format {
            DocFormat::Markdown => writeln!(self.out, "- **{}:** {}", md(key), md(value)),
            DocFormat::Text => writeln!(self.out, "  {key}: {value}"),
        };
    }

    fn para(&mut self, t: &str) {
        let _ = match self.format {
            DocFormat::Markdown => {
                self.blank();
                writeln!(self.out, "{t}")
            }
            DocFormat::Text => writeln!(self.out, "  {t}"),
        };
    }

    /// One empty line before a block, unless there is one.
    fn blank(&mut self) {
        if !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    fn table(&mut self, headers: &[&str], rows: Vec<Vec<String>>) {
        match self.format {
            DocFormat::Markdown => {
                let line = |cells: Vec<String>| format!("| {} |", cells.join(" | "));
                self.blank();
                let _ = writeln!(
                    self.out,
                    "{}",
                    line(headers.iter().map(|h| md(h)).collect())
                );
                let _ = writeln!(
                    self.out,
                    "{}",
                    line(headers.iter().map(|_| "---".to_owned()).collect())
                );
                for row in rows {
                    let _ = writeln!(self.out, "{}", line(row.iter().map(|c| md(c)).collect()));
                }
            }
            DocFormat::Text => {
                let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
                for row in &rows {
                    for (w, c) in widths.iter_mut().zip(row) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                let line = |cells: &[String]| {
                    let padded: Vec<String> = cells
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect();
                    format!("  {}", padded.join("  ").trim_end())
                };
                let _ = writeln!(self.out);
                let head: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
                let _ = writeln!(self.out, "{}", line(&head));
                for row in &rows {
                    let _ = writeln!(self.out, "{}", line(row));
                }
            }
        }
    }
}

/// A Markdown table cell or list item: no line breaks, `|` escaped.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

//! The bench's human output: one row per (members, size, run), then each row's phases.

use super::Figures;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One line per run, printed as it ends.
pub fn one_line(f: &Figures) -> String {
    format!(
        "bench: {} members, {:.1} MB, run {}: API down {:.2}s (floor {:.2}s, {:.2}x), quorate {:.2}s, runbook {:.2}s ({:.2}x quorate)",
        f.members,
        mb(f.snapshot_bytes),
        f.run,
        f.quorate.api_down_seconds,
        f.floor.with_check_seconds,
        f.ratios.api_down_over_floor,
        f.quorate.total_seconds,
        f.runbook.total_seconds,
        f.ratios.runbook_over_quorate,
    )
}

/// The table of every run, with the ratios and each run's phases.
pub fn render(all: &[Figures]) -> String {
    let mut out = String::new();
    let etcd = all.first().map_or("?", |f| f.etcd.as_str());
    out.push_str(&format!(
        "lab bench (etcd {etcd}); seconds, RSS in MiB; floor = parallel restore + rolling cold start\n\n"
    ));
    out.push_str(
        "| members | snapshot MB | keys | run | API down | quorate total | floor (check) | floor (no check) | runbook | runbook API down | API down / floor | runbook / quorate | RSS coordinator | RSS agent |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for f in all {
        out.push_str(&format!(
            "| {} | {:.1} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.1} | {:.1} |\n",
            f.members,
            mb(f.snapshot_bytes),
            f.keys,
            f.run,
            f.quorate.api_down_seconds,
            f.quorate.total_seconds,
            f.floor.with_check_seconds,
            f.floor.without_check_seconds,
            f.runbook.total_seconds,
            f.runbook.api_down_seconds,
            f.ratios.api_down_over_floor,
            f.ratios.runbook_over_quorate,
            mib(f.quorate.coordinator_peak_rss_kib),
            mib(f.quorate.agent_peak_rss_kib),
        ));
    }
    out.push_str("\nquorate's phases (s), the floor's parts and the runbook's steps:\n\n");
    for f in all {
        let phases: Vec<String> = f
            .quorate
            .phases
            .iter()
            .map(|p| format!("{} {:.2}", p.phase, p.seconds))
            .collect();
        out.push_str(&format!(
            "- {} members, {:.1} MB, run {}: {}; API down by the phases {:.2}\n  \
             floor: restore {:.2}, cold start with the check {:.2}, without {:.2}\n  \
             runbook: scp {:.2}, stop and restore {:.2}, etcd start {:.2}, apiservers {:.2}\n",
            f.members,
            mb(f.snapshot_bytes),
            f.run,
            phases.join(", "),
            f.quorate.api_down_from_phases_seconds,
            f.floor.restore_seconds,
            f.floor.cold_start_check_seconds,
            f.floor.cold_start_no_check_seconds,
            f.runbook.copy_seconds,
            f.runbook.stop_and_restore_seconds,
            f.runbook.etcd_start_seconds,
            f.runbook.apiserver_start_seconds,
        ));
    }
    out
}

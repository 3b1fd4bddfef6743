//! The live view on a terminal (indicatif): the phase under way as a header, one line per member
//! under it (its step and state, for how long; the snapshot's bytes, rate and ETA while it is
//! copied; a spinner while it works or the coordinator waits on it; a failure in place), a line
//! per phase as it ends, and the summary table at the end.
//!
//! The observer's calls come from concurrent tasks, staging every 200 ms per member: each one
//! changes the state under one lock and redraws that member's line; indicatif limits the
//! terminal's redraws. A ticker thread redraws every line a few times a second so that elapsed
//! times and spinners move between calls.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use quorate_proto::model::Step;

use crate::engine::Direction;
use crate::failure::Failures;
use crate::phases::Phase;
use crate::restore::{MemberState, Observer, Way};
use crate::view::{self, Doing, MemberLine, Timings};

/// How often the ticker redraws every line.
const TICK: Duration = Duration::from_millis(120);

pub struct LiveView {
    multi: MultiProgress,
    header: ProgressBar,
    bars: Vec<ProgressBar>,
    state: Arc<Mutex<State>>,
    timings: Timings,
    members: Vec<String>,
    ticker: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

/// What the view shows now.
struct State {
    header: Header,
    lines: Vec<MemberLine>,
    /// The style each bar has, to change it only when it must.
    looks: Vec<Look>,
    name_width: usize,
}

struct Header {
    text: String,
    since: Instant,
    /// A phase is under way (the header's spinner turns).
    busy: bool,
}

/// A line's mark: a spinner while under way, a tick when done, a cross when failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    Idle,
    Busy,
    Done,
    Failed,
}

impl Look {
    fn of(line: &MemberLine) -> Self {
        match line.doing {
            Doing::Idle => Look::Idle,
            Doing::Done(_) => Look::Done,
            Doing::Failed(..) => Look::Failed,
            _ if line.busy() => Look::Busy,
            _ => Look::Idle,
        }
    }

    fn style(self) -> ProgressStyle {
        let template = match self {
            Look::Idle => "  {wide_msg}",
            Look::Busy => "{spinner:.cyan} {wide_msg}",
            Look::Done => "{prefix:.green} {wide_msg}",
            Look::Failed => "{prefix:.red.bold} {wide_msg:.red}",
        };
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
    }

    fn prefix(self) -> &'static str {
        match self {
            Look::Failed => "✗",
            _ => "✓",
        }
    }
}

impl LiveView {
    pub fn new(members: Vec<String>) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(15));
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(Look::Busy.style());
        let bars: Vec<ProgressBar> = members
            .iter()
            .map(|_| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(Look::Idle.style());
                bar
            })
            .collect();
        let name_width = members.iter().map(String::len).max().unwrap_or(4).max(4);
        let state = Arc::new(Mutex::new(State {
            header: Header {
                text: "starting".into(),
                since: Instant::now(),
                busy: true,
            },
            lines: members.iter().cloned().map(MemberLine::new).collect(),
            looks: vec![Look::Idle; members.len()],
            name_width,
        }));
        crate::log_writer::set_live(Some(multi.clone()));
        let view = Self {
            multi,
            header,
            bars,
            state,
            timings: Timings::default(),
            members,
            ticker: Mutex::new(None),
        };
        view.start_ticker();
        view
    }

    fn start_ticker(&self) {
        let (stop, stopped) = mpsc::channel::<()>();
        let state = Arc::clone(&self.state);
        let header = self.header.clone();
        let bars = self.bars.clone();
        let spawned = std::thread::Builder::new()
            .name("quorate-live-view".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    redraw(&state, &header, &bars, None);
                }
            });
        match spawned {
            Ok(handle) => {
                if let Ok(mut t) = self.ticker.lock() {
                    *t = Some((stop, handle));
                }
            }
            // Without the ticker the lines still change on every call; only the clocks stand.
            Err(e) => tracing::debug!("no ticker for the live view: {e}"),
        }
    }

    fn stop_ticker(&self) {
        let ticker = self.ticker.lock().ok().and_then(|mut t| t.take());
        if let Some((stop, handle)) = ticker {
            drop(stop);
            let _ = handle.join();
        }
    }

    /// Changes the state, then redraws the line of `member` (every line when `None`).
    fn change(&self, member: Option<&str>, f: impl FnOnce(&mut State, Instant)) -> Option<usize> {
        let now = Instant::now();
        let which = {
            let Ok(mut s) = self.state.lock() else {
                return None;
            };
            let which = member.and_then(|m| s.lines.iter().position(|l| l.name == m));
            f(&mut s, now);
            which
        };
        match member {
            Some(_) if which.is_none() => {}
            _ => redraw(&self.state, &self.header, &self.bars, which),
        }
        which
    }

    fn begin(&self, text: String) {
        self.change(None, |s, now| {
            s.header = Header {
                text,
                since: now,
                busy: true,
            };
            for line in &mut s.lines {
                line.reset();
            }
        });
    }

    /// The phase under way ended: its line goes above the live lines, which stay as they are.
    fn end(&self, text: String) {
        self.change(None, |s, _| s.header.busy = false);
        self.say(&text);
    }

    /// Prints `text` above the live lines, a line at a time (indicatif pads each printed line to
    /// the terminal's width: a text of several lines would run together).
    fn say(&self, text: &str) {
        for line in text.lines() {
            let _ = self.multi.println(line);
        }
    }

    /// The summary's rows so far.
    pub fn rows(&self) -> Vec<view::Row> {
        self.timings.rows()
    }

    fn header_text(&self) -> String {
        self.state
            .lock()
            .map(|s| s.header.text.clone())
            .unwrap_or_default()
    }
}

/// Renders the lines (every one, or one) and hands them to their bars. Holds the state's lock
/// only while rendering: indicatif draws outside it.
fn redraw(state: &Mutex<State>, header: &ProgressBar, bars: &[ProgressBar], only: Option<usize>) {
    let now = Instant::now();
    let (head, lines) = {
        let Ok(mut s) = state.lock() else { return };
        let head = (
            header_line(&s.header, now),
            if s.header.busy {
                Look::Busy
            } else {
                Look::Done
            },
        );
        let width = s.name_width;
        let mut lines = Vec::new();
        for i in 0..s.lines.len() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let look = Look::of(&s.lines[i]);
            let changed = s.looks[i] != look;
            s.looks[i] = look;
            lines.push((i, s.lines[i].render(width, now), look, changed));
        }
        (head, lines)
    };
    if only.is_none() {
        header.set_message(head.0);
        header.tick();
    }
    for (i, text, look, changed) in lines {
        let Some(bar) = bars.get(i) else { continue };
        if changed {
            bar.set_style(look.style());
            bar.set_prefix(look.prefix());
        }
        bar.set_message(text);
        if look == Look::Busy {
            bar.tick();
        }
    }
}

/// `[3/10] fence  2.1s`.
fn header_line(h: &Header, now: Instant) -> String {
    if h.busy {
        format!(
            "{}  {:.1}s",
            h.text,
            now.saturating_duration_since(h.since).as_secs_f64()
        )
    } else {
        h.text.clone()
    }
}

impl Observer for LiveView {
    fn phase_started(&self, phase: Phase, index: usize) {
        self.timings.phase_started(phase.name().to_owned());
        self.begin(format!("[{index}/{}] {phase}", Phase::ALL.len()));
    }

    fn phase_done(&self, _phase: Phase, elapsed: Duration) {
        self.timings.phase_ended(elapsed, false);
        self.end(format!(
            "✓ {} done in {}",
            self.header_text(),
            view::secs(elapsed)
        ));
    }

    fn note(&self, text: &str) {
        self.say(text);
    }

    fn revert_started(&self, phase: Phase) {
        self.timings.phase_started(view::undo_label(phase));
        self.begin(format!("rollback: undoing {phase}"));
    }

    fn revert_done(&self, phase: Phase, elapsed: Duration) {
        self.timings.phase_ended(elapsed, false);
        self.end(format!(
            "↩ rollback: {phase} undone in {}",
            view::secs(elapsed)
        ));
    }

    fn phase_failed(
        &self,
        phase: Phase,
        direction: Direction,
        elapsed: Duration,
        failures: &Failures,
    ) {
        self.timings.phase_ended(elapsed, true);
        let mut text = format!("✗ {}", view::failed_text(phase, direction, elapsed));
        for f in failures {
            text.push_str(&format!("\n    {f}"));
        }
        self.end(text);
    }

    fn member_step(&self, member: &str, step: Step, way: Way, state: MemberState<'_>) {
        self.timings.member_step(member, &state);
        self.change(Some(member), |s, now| {
            if let Some(line) = s.lines.iter_mut().find(|l| l.name == member) {
                line.step(step, way, &state, now);
            }
        });
    }

    fn staging(&self, member: &str, sent: u64, total: u64) {
        if sent >= total {
            self.timings.member_staged(member);
        }
        self.change(Some(member), |s, now| {
            if let Some(line) = s.lines.iter_mut().find(|l| l.name == member) {
                line.staging(sent, total, now);
            }
        });
    }

    fn waiting(&self, member: &str, why: &str) {
        self.change(Some(member), |s, _| {
            if let Some(line) = s.lines.iter_mut().find(|l| l.name == member) {
                line.waiting(why);
            }
        });
    }

    fn finish(&self) {
        self.stop_ticker();
        crate::log_writer::set_live(None);
        // The last state stays on screen as plain lines; the bars go.
        let last = self.state.lock().ok().map(|s| {
            let now = Instant::now();
            let mut text = header_line(&s.header, now);
            for line in &s.lines {
                let mark = match Look::of(line) {
                    Look::Done => "✓",
                    Look::Failed => "✗",
                    Look::Busy => "…",
                    Look::Idle => " ",
                };
                text.push_str(&format!("\n{mark} {}", line.render(s.name_width, now)));
            }
            text
        });
        if let Some(text) = last {
            self.say(&text);
        }
        self.header.finish_and_clear();
        for bar in &self.bars {
            bar.finish_and_clear();
        }
        let rows = self.timings.rows();
        if !rows.is_empty() {
            self.multi.suspend(|| {
                eprintln!("\n{}", view::summary_table(&rows, &self.members).trim_end());
            });
        }
    }
}

impl Drop for LiveView {
    /// A run that ended before `finish` (refused, an error before the phases) leaves no bars.
    fn drop(&mut self) {
        self.stop_ticker();
        self.header.finish_and_clear();
        for bar in &self.bars {
            bar.finish_and_clear();
        }
    }
}

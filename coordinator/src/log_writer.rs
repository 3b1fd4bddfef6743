//! Where quorate's log lines (`tracing`, on stderr) go: straight to stderr, or, while the live
//! view draws on the terminal, above it (the view steps aside for the line and redraws), so a
//! warning never lands in the middle of a member's line.

use std::io::Write;
use std::sync::Mutex;

use indicatif::MultiProgress;

/// The live view on screen, if any.
static LIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// The live view now on screen (`None` once it is gone).
pub fn set_live(view: Option<MultiProgress>) {
    if let Ok(mut live) = LIVE.lock() {
        *live = view;
    }
}

/// For `tracing_subscriber::fmt().with_writer(LogWriter)`: one buffer per event, written whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line(Vec::new())
    }
}

/// One log line, written to stderr when dropped.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let write = |bytes: &[u8]| {
            // Nothing better to do with a log line stderr refuses.
            let _ = std::io::stderr().lock().write_all(bytes);
        };
        let live = LIVE.lock().ok().and_then(|l| l.clone());
        match live {
            Some(view) => view.suspend(|| write(&self.0)),
            None => write(&self.0),
        }
    }
}

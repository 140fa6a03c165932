//! Progress of a capture or restore: bytes, files, rate and ETA, for a person (a line
//! redrawn on a terminal) and for programs (a callback the agent turns into its status).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustic_core::{Progress, ProgressBars, ProgressType, RusticProgress};
use serde::Serialize;

/// The error of work stopped because it was asked to stop ([`Meter::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped: cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// One reading of a long operation's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// What is being done, e.g. `capture /var`.
    pub phase: String,
    /// Bytes done.
    pub bytes: u64,
    /// Bytes in all, when known.
    pub bytes_total: Option<u64>,
    /// Files done.
    pub files: u64,
    /// Bytes per second since the phase began.
    pub rate: u64,
    /// Seconds left at that rate, when the total is known.
    pub eta_secs: Option<u64>,
}

impl Report {
    /// One line for a terminal.
    pub fn line(&self) -> String {
        let mut s = format!("{}: {}", self.phase, size(self.bytes));
        if let Some(t) = self.bytes_total.filter(|t| *t > 0) {
            let pct = (self.bytes.min(t) * 100) / t;
            s += &format!(" of {} ({pct}%)", size(t));
        }
        s += &format!(", {} files, {}/s", self.files, size(self.rate));
        if let Some(eta) = self.eta_secs {
            s += &format!(", {eta} s left");
        }
        s
    }
}

/// `12.3 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

type Callback = Box<dyn Fn(&Report) + Send + Sync>;

struct State {
    phase: String,
    started: Instant,
    last_sent: Option<Instant>,
    total: Option<u64>,
}

/// Counts bytes and files of one operation and hands out throttled reports.
pub struct Meter {
    /// Asked to stop ([`Meter::cancel`]).
    cancelled: AtomicBool,
    bytes: AtomicU64,
    files: AtomicU64,
    state: Mutex<State>,
    every: Duration,
    callback: Option<Callback>,
    terminal: bool,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").field("bytes", &self.bytes).finish()
    }
}

impl Meter {
    /// A meter that draws on stderr when it is a terminal and calls `callback` (if
    /// any) at most every `every`.
    pub fn new(every: Duration, callback: Option<Callback>) -> Arc<Meter> {
        Arc::new(Meter::build(
            every,
            callback,
            std::io::stderr().is_terminal(),
        ))
    }

    /// A meter that reports to nobody.
    pub fn silent() -> Arc<Meter> {
        Arc::new(Meter::build(Duration::from_secs(3600), None, false))
    }

    fn build(every: Duration, callback: Option<Callback>, terminal: bool) -> Meter {
        Meter {
            cancelled: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            state: Mutex::new(State {
                phase: String::new(),
                started: Instant::now(),
                last_sent: None,
                total: None,
            }),
            every,
            callback,
            terminal,
        }
    }

    /// Asks the work this meter measures to stop: captures and restores end with
    /// [`Cancelled`] at their next chunk, deploys at their next step.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// [`Cancelled`] once [`Meter::cancel`] was called.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.cancelled.load(Ordering::Relaxed) {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Starts a phase: counters back to zero.
    pub fn phase(&self, phase: &str, total: Option<u64>) {
        self.bytes.store(0, Ordering::Relaxed);
        self.files.store(0, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            s.phase = phase.to_string();
            s.started = Instant::now();
            s.last_sent = None;
            s.total = total;
        }
    }

    /// Sets the phase's total bytes.
    pub fn set_total(&self, total: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.total = Some(total);
        }
    }

    /// Adds done bytes.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.tick(false);
    }

    /// Adds one done file.
    pub fn add_file(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.tick(false);
    }

    /// The current reading.
    pub fn report(&self) -> Report {
        let (phase, started, total) = match self.state.lock() {
            Ok(s) => (s.phase.clone(), s.started, s.total),
            Err(_) => (String::new(), Instant::now(), None),
        };
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = (bytes as f64 / secs) as u64;
        Report {
            phase,
            bytes,
            bytes_total: total,
            files: self.files.load(Ordering::Relaxed),
            rate,
            eta_secs: total
                .filter(|_| rate > 0)
                .map(|t| t.saturating_sub(bytes) / rate.max(1)),
        }
    }

    /// Sends a final reading and ends the terminal line.
    pub fn finish(&self) {
        self.tick(true);
        if self.terminal {
            eprintln!();
        }
    }

    fn tick(&self, force: bool) {
        let due = match self.state.lock() {
            Ok(mut s) => {
                let due = force || s.last_sent.is_none_or(|t| t.elapsed() >= self.every);
                if due {
                    s.last_sent = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if !due {
            return;
        }
        let r = self.report();
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{}", r.line());
            let _ = err.flush();
        }
        if let Some(cb) = &self.callback {
            cb(&r);
        }
    }
}

/// rustic's progress bars, feeding a [`Meter`]: its byte bar counts bytes, its
/// other bars are ignored (files are counted where entries are read).
#[derive(Debug, Clone)]
pub struct Bars(pub Arc<Meter>);

#[derive(Debug)]
struct ByteBar(Arc<Meter>);

impl RusticProgress for ByteBar {
    fn is_hidden(&self) -> bool {
        false
    }
    fn set_length(&self, len: u64) {
        self.0.set_total(len);
    }
    fn set_title(&self, _title: &str) {}
    fn inc(&self, inc: u64) {
        self.0.add_bytes(inc);
    }
    fn finish(&self) {}
}

impl ProgressBars for Bars {
    fn progress(&self, progress_type: ProgressType, _prefix: &str) -> Progress {
        match progress_type {
            ProgressType::Bytes => Progress::new(ByteBar(self.0.clone())),
            _ => Progress::hidden(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_rate_eta_and_throttle() {
        let seen = Arc::new(Mutex::new(Vec::<Report>::new()));
        let s = seen.clone();
        let m = Meter::new(
            Duration::from_secs(60),
            Some(Box::new(move |r| s.lock().unwrap().push(r.clone()))),
        );
        m.phase("capture /", Some(1000));
        for _ in 0..10 {
            m.add_bytes(50);
            m.add_file();
        }
        // Throttled: only the first tick went out.
        assert_eq!(seen.lock().unwrap().len(), 1);
        m.finish();
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            (last.bytes, last.files, last.bytes_total),
            (500, 10, Some(1000))
        );
        assert!(last.rate > 0 && last.eta_secs.is_some());
        assert!(
            last.line()
                .starts_with("capture /: 500 B of 1000 B (50%), 10 files")
        );
        assert_eq!(size(3 << 20), "3.0 MiB");
    }
}

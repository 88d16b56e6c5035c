//! Progress of long operations on stderr, with indicatif.
//!
//! On a terminal a bar redraws in place; anywhere else (a CI log, a cron
//! mail) indicatif draws nothing, so a line is printed at most every
//! [`LOG_EVERY`] instead: a job that runs for minutes still shows it is
//! alive, and a short one prints nothing.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often progress is written as a line when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of one operation.
pub struct Progress {
    bar: ProgressBar,
    what: String,
    unit: Unit,
    /// When a line was last written, for stderr that is not a terminal.
    logged: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Items,
}

impl Progress {
    /// Bytes moved out of `total`, e.g. ("downloading", size).
    pub fn bytes(what: &str, total: u64) -> Self {
        Self::new(
            what,
            Some(total),
            Unit::Bytes,
            "{msg}: {bar:20} {bytes} of {total_bytes} ({bytes_per_sec}, {eta} left)",
        )
    }

    /// Items done, out of `total` when it is known, e.g. ("entries", size).
    pub fn items(what: &str, total: Option<u64>) -> Self {
        let template = if total.is_some() {
            "{msg}: {bar:20} {human_pos} of {human_len} ({per_sec}, {eta} left)"
        } else {
            "{msg}: {human_pos} ({per_sec})"
        };
        Self::new(what, total, Unit::Items, template)
    }

    fn new(what: &str, total: Option<u64>, unit: Unit, template: &str) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(total, target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        Self {
            bar,
            what: what.to_owned(),
            unit,
            logged: (!terminal).then(Instant::now),
        }
    }

    /// `done` of `total` items of `what`: a new `what` starts a new phase
    /// on the same bar (an audit reads entries, then checks blobs).
    pub fn tick(&mut self, what: &str, done: u64, total: Option<u64>) {
        if what != self.what {
            self.phase(what, total);
        } else if total.is_some() && self.bar.length() != total {
            self.bar.set_length(total.unwrap_or_default());
        }
        self.set(done);
    }

    /// Says what is being counted now (one bar for several phases).
    pub fn phase(&mut self, what: &str, total: Option<u64>) {
        what.clone_into(&mut self.what);
        self.bar.set_message(what.to_owned());
        match total {
            Some(t) => self.bar.set_length(t),
            None => self.bar.unset_length(),
        }
        self.bar.set_position(0);
    }

    /// `done` of the total so far.
    pub fn set(&mut self, done: u64) {
        self.bar.set_position(done);
        if let Some(logged) = self.logged
            && logged.elapsed() >= LOG_EVERY
        {
            self.logged = Some(Instant::now());
            let total = self.bar.length();
            let line = match (self.unit, total) {
                (Unit::Bytes, Some(t)) => format!("{done} of {t} bytes"),
                (Unit::Bytes, None) => format!("{done} bytes"),
                (Unit::Items, Some(t)) => format!("{done} of {t}"),
                (Unit::Items, None) => format!("{done}"),
            };
            eprintln!("{}: {line}", self.what);
        }
    }

    /// Removes the bar; the command's own output follows.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

//! A progress bar on the terminal: table, rows, bytes and rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backup_core::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct TerminalProgress {
    bar: ProgressBar,
    rows: AtomicU64,
}

impl TerminalProgress {
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            rows: AtomicU64::new(0),
        }
    }
}

impl Progress for TerminalProgress {
    fn begin_table(&self, name: &str, expected_bytes: Option<u64>) {
        self.bar.reset();
        self.bar.set_length(expected_bytes.unwrap_or(0));
        let template = if expected_bytes.is_some() {
            "{spinner} {prefix:<24} {wide_bar} {bytes}/{total_bytes} {msg} {binary_bytes_per_sec}"
        } else {
            "{spinner} {prefix:<24} {bytes} {msg} {binary_bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style);
        }
        self.bar.set_prefix(name.to_owned());
        self.rows.store(0, Ordering::Relaxed);
        self.bar.set_message("0 rows");
        self.bar.force_draw();
    }

    fn advance(&self, rows: u64, bytes: u64) {
        self.bar.inc(bytes);
        let total = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        self.bar.set_message(format!("{total} rows"));
    }

    fn finish_table(&self) {
        self.bar.finish_and_clear();
    }

    /// Between tables (indexes, constraints, foreign-key checks) a spinner
    /// names the step, so a long pause is never a blank terminal.
    fn phase(&self, what: &str) {
        self.bar.reset();
        self.bar.set_length(0);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            self.bar.set_style(style);
        }
        self.bar.set_message(what.to_owned());
        // A step may be short; it is still shown once, not rate-limited away.
        self.bar.force_draw();
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

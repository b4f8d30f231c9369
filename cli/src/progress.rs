//! A progress bar on the terminal: table, rows, bytes and rate.
//!
//! Nothing is drawn until there is something to show (a command that
//! streams no table and names no step draws no bar), and the bar is
//! cleared when it is dropped, so every exit path leaves a clean terminal.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use backup_core::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bytes, rows, rate and how far the whole export is: `table n/N`, an
/// estimated total from the tables' size on disk, percentage and ETA.
const EXPORT_TEMPLATE: &str = "{spinner} {prefix:<32} {wide_bar} {bytes}/~{total_bytes} {percent}% {msg} {binary_bytes_per_sec} ETA {eta}";

/// The bar on screen, if any, so a log line is written above it instead
/// of after it (which would leave a frozen copy of the bar on screen).
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn shown() -> MutexGuard<'static, Option<ProgressBar>> {
    SHOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where log lines go: stderr, with the bar lifted out of the way while
/// each is written.
pub fn log_writer() -> LogWriter {
    LogWriter
}

pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = shown().clone();
        match bar {
            Some(bar) => bar
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[derive(Default)]
pub struct TerminalProgress {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bar: Option<ProgressBar>,
    /// Set while an export runs: the bar counts the whole export.
    exporting: bool,
    visible: bool,
    rows: u64,
    /// Rows of each table so far: a split table's pieces add up, in
    /// whatever order they arrive.
    table_rows: std::collections::HashMap<String, u64>,
    table: String,
    /// The larger step this belongs to, e.g. `safety backup of shop: `.
    within: String,
}

impl State {
    /// The bar, created hidden: [`State::show`] draws it once it is styled.
    fn bar(&mut self) -> &ProgressBar {
        self.bar
            .get_or_insert_with(|| ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()))
    }

    /// Draws the bar from the first thing it has to show, never before.
    fn show(&mut self) {
        if self.visible {
            return;
        }
        let bar = self.bar().clone();
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(200));
        *shown() = Some(bar);
        self.visible = true;
    }
}

impl TerminalProgress {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while drawing leaves nothing worth protecting.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn styled(bar: &ProgressBar, template: &str) {
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
}

impl Progress for TerminalProgress {
    fn begin_export(&self, tables: usize, estimated_bytes: u64) {
        let mut state = self.state();
        if tables == 0 {
            return;
        }
        state.exporting = true;
        state.table_rows.clear();
        let bar = state.bar();
        bar.reset();
        bar.set_length(estimated_bytes.max(1));
        styled(bar, EXPORT_TEMPLATE);
    }

    fn begin_table_of(&self, name: &str, number: usize, of: usize) {
        let mut state = self.state();
        if !state.exporting {
            drop(state);
            self.begin_table(name, None);
            return;
        }
        state.rows = state.table_rows.get(name).copied().unwrap_or(0);
        state.table = name.to_owned();
        let message = format!("{} rows", state.rows);
        let prefix = format!("{}table {number}/{of} {name}", state.within);
        let bar = state.bar();
        bar.set_prefix(prefix);
        bar.set_message(message);
        state.show();
        if let Some(bar) = &state.bar {
            bar.tick();
        }
    }

    fn begin_table(&self, name: &str, expected_bytes: Option<u64>) {
        let mut state = self.state();
        state.exporting = false;
        state.rows = 0;
        let prefix = format!("{}{name}", state.within);
        let bar = state.bar();
        bar.reset();
        bar.set_length(expected_bytes.unwrap_or(0));
        let template = if expected_bytes.is_some() {
            "{spinner} {prefix:<24} {wide_bar} {bytes}/{total_bytes} {msg} {binary_bytes_per_sec}"
        } else {
            "{spinner} {prefix:<24} {bytes} {msg} {binary_bytes_per_sec}"
        };
        styled(bar, template);
        bar.set_message("0 rows");
        bar.set_prefix(prefix);
        state.show();
        if let Some(bar) = &state.bar {
            bar.force_draw();
        }
    }

    fn advance(&self, rows: u64, bytes: u64) {
        let mut state = self.state();
        state.rows += rows;
        let total = state.rows;
        if state.exporting {
            let table = state.table.clone();
            state.table_rows.insert(table, total);
        }
        let exporting = state.exporting;
        let bar = state.bar();
        bar.inc(bytes);
        // The total is an estimate: a run bigger than it stretches it.
        if exporting && bar.position() > bar.length().unwrap_or(0) {
            bar.set_length(bar.position());
        }
        bar.set_message(format!("{total} rows"));
    }

    fn finish_table(&self) {
        let state = self.state();
        // During an export the bar goes on counting the whole run.
        if let (false, Some(bar)) = (state.exporting, &state.bar) {
            bar.finish_and_clear();
        }
    }

    /// Between tables (indexes, constraints, foreign-key checks) a spinner
    /// names the step, so a long pause is never a blank terminal.
    fn phase(&self, what: &str) {
        let mut state = self.state();
        state.exporting = false;
        let message = format!("{}{what}", state.within);
        let bar = state.bar();
        bar.reset();
        bar.set_length(0);
        styled(bar, "{spinner} {msg} ({elapsed})");
        bar.set_message(message);
        state.show();
        // A step may be short; it is still shown once, not rate-limited away.
        if let Some(bar) = &state.bar {
            bar.force_draw();
        }
    }

    fn finish(&self) {
        let mut state = self.state();
        if let Some(bar) = state.bar.take() {
            bar.finish_and_clear();
            *shown() = None;
        }
        state.visible = false;
        state.exporting = false;
    }

    fn within(&self, step: Option<&str>) {
        self.state().within = step.map(|step| format!("{step}: ")).unwrap_or_default();
    }
}

/// Every exit path (an error, an early return, Ctrl-C unwinding the
/// command) clears the bar.
impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

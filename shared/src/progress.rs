//! Progress of long operations, for a progress bar on a terminal.

/// Told about each table as it streams; every method has a silent default.
pub trait Progress: Send + Sync {
    /// A table starts; `expected_bytes` is its plaintext size when known.
    fn begin_table(&self, _name: &str, _expected_bytes: Option<u64>) {}
    /// More rows and/or bytes of the current table went through.
    fn advance(&self, _rows: u64, _bytes: u64) {}
    fn finish_table(&self) {}
    /// A step between the tables starts (e.g. `adding constraints and indexes`).
    fn phase(&self, _what: &str) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}

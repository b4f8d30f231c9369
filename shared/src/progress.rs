//! Progress of long operations, for a progress bar on a terminal.

/// Told about each table as it streams; every method has a silent default.
pub trait Progress: Send + Sync {
    /// An export of `tables` tables starts; `estimated_bytes` is their
    /// size on disk, an estimate of the whole run's plaintext.
    fn begin_export(&self, _tables: usize, _estimated_bytes: u64) {}
    /// A table starts; `expected_bytes` is its plaintext size when known.
    fn begin_table(&self, _name: &str, _expected_bytes: Option<u64>) {}
    /// Table `number` of `of` of an export starts (after [`Progress::begin_export`]).
    fn begin_table_of(&self, name: &str, _number: usize, _of: usize) {
        self.begin_table(name, None);
    }
    /// More rows and/or bytes of the current table went through.
    fn advance(&self, _rows: u64, _bytes: u64) {}
    fn finish_table(&self) {}
    /// A step between the tables starts (e.g. `adding constraints and indexes`).
    fn phase(&self, _what: &str) {}
    /// What follows belongs to a larger step (e.g. `safety backup of shop`),
    /// named with every table and phase until it is set to `None`.
    fn within(&self, _step: Option<&str>) {}
    /// The operation ended (well or not): nothing more to show.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}

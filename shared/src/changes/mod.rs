//! Logical change capture, the first slice of point-in-time recovery
//! (issue #29; the design and what is still to come: `docs/PITR.md`).
//!
//! * [`pgoutput`] decodes the messages PostgreSQL's built-in `pgoutput`
//!   plugin writes (protocol version 1).
//! * [`publication`] sets capture up (`backupctl pitr enable`): a
//!   publication of the backed-up tables that have a replica identity, and
//!   a logical replication slot; and takes it down again.
//! * [`capture`] reads what the slot holds since the last run and writes it
//!   as one encrypted, authenticated segment under `changes/`, then
//!   advances the slot.
//! * [`segment`] is the segment's payload format, its metadata document and
//!   the reader that gives the changes back.

pub mod capture;
pub mod chain;
pub mod pgoutput;
pub mod publication;
pub mod replay;
pub mod segment;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use capture::{
    CaptureOutcome, CaptureReport, CaptureRequest, ChainBase, ChainCut, PartitionReading, SlotHealth,
    capture, capture_changes, partition_readings, rewritten_partitions,
};
pub use chain::{ChainListing, Hole, StoredSegment, list_chain, read_documents};
pub use publication::{
    DisableReport, EnableReport, LeftOut, PitrNames, RestartedChain, disable_pitr, enable_pitr,
    enable_pitr_with, restart_broken_chain,
};
pub use replay::{ReplayError, ReplayPlan, ReplayReport, plan_replay, replay};
pub use segment::{SegmentChanges, SegmentId, SegmentMetadata, list_segments, read_segment};

use crate::container::ContainerError;
use crate::keyring::KeyringError;
use crate::postgres::PostgresError;
use crate::storage::StorageError;

/// A position in the write-ahead log (`pg_lsn`), written as PostgreSQL
/// writes it: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || format!("{text:?} is not an LSN (like 16/B374D848)");
        let (high, low) = text.split_once('/').ok_or_else(malformed)?;
        let part = |digits: &str| {
            if digits.is_empty() || digits.len() > 8 {
                return Err(malformed());
            }
            u32::from_str_radix(digits, 16).map_err(|_| malformed())
        };
        Ok(Self((u64::from(part(high)?) << 32) | u64::from(part(low)?)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a base backup's snapshot stands in the change stream: replay of
/// the slot's segments from `start_lsn` on brings the backup forward
/// (recorded in the backup's metadata as `changeStream`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPosition {
    pub slot: String,
    /// The slot's confirmed position just before the snapshot: every
    /// transaction the backup does not hold commits at or after it.
    pub start_lsn: Lsn,
    /// Read in the snapshot once it was taken: no transaction the backup
    /// holds committed after it, so the backup can serve as the base for
    /// any instant from here on.
    pub snapshot_at: chrono::DateTime<chrono::Utc>,
    /// The snapshot itself (`pg_current_snapshot()`, `xmin:xmax:xip,…`):
    /// replay skips exactly the transactions the backup already holds
    /// (needed for tables replayed by all their columns, `REPLICA
    /// IDENTITY FULL`, where replaying a change twice is not harmless).
    /// Absent in backups taken before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The catalog fingerprint of the published tables as the snapshot saw
    /// them (the same as each segment's `catalogFingerprint`): a schema
    /// change between the backup and the first segment is a cut. Absent
    /// when the publication was not there (or in older backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_fingerprint: Option<String>,
    /// The storage of the published partitioned tables' partitions as the
    /// snapshot saw it: the first segment after the backup compares its
    /// own reading with it to notice a TRUNCATE of one partition, which
    /// PostgreSQL does not publish (docs/PITR.md, "What happens on a
    /// schema change"). Absent when the publication was not there (or in
    /// older backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_files: Option<Vec<PartitionFile>>,
}

/// A leaf partition of a published partitioned table and the file that
/// holds its rows. A TRUNCATE gives the table a new file (so do VACUUM
/// FULL, CLUSTER and a rewrite by ALTER TABLE): a partition whose file
/// changed without a captured TRUNCATE of its root was truncated alone,
/// which pgoutput does not publish when it publishes through the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionFile {
    /// The published partitioned table, `schema.name`.
    pub root: String,
    /// The leaf partition, `schema.name`.
    pub partition: String,
    /// `pg_class.relfilenode`.
    pub filenode: u32,
}

/// A snapshot as `pg_current_snapshot()` prints it: which transactions it
/// sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidSnapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub in_progress: Vec<u64>,
}

impl FromStr for XidSnapshot {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || format!("{text:?} is not a snapshot (like 745:750:746,748)");
        let mut parts = text.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let number = |digits: &str| digits.parse::<u64>().map_err(|_| malformed());
        let in_progress = if xip.is_empty() {
            Vec::new()
        } else {
            xip.split(',').map(number).collect::<Result<_, _>>()?
        };
        Ok(Self {
            xmin: number(xmin)?,
            xmax: number(xmax)?,
            in_progress,
        })
    }
}

impl XidSnapshot {
    /// Whether the transaction `xid` (32 bits, as logical decoding gives
    /// it) had committed when the snapshot was taken: the epoch is the
    /// one that puts it nearest the snapshot's `xmax`.
    pub fn sees(&self, xid: u32) -> bool {
        const EPOCH: u64 = 1 << 32;
        let mut full = (self.xmax & !(EPOCH - 1)) | u64::from(xid);
        if full > self.xmax.saturating_add(EPOCH / 2) && full >= EPOCH {
            full -= EPOCH;
        } else if full.saturating_add(EPOCH / 2) < self.xmax {
            full += EPOCH;
        }
        full < self.xmin || (full < self.xmax && !self.in_progress.contains(&full))
    }
}

/// A base backup that starts a new chain after the old one broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewBase {
    pub backup_id: String,
    /// Its position in the change stream: the new chain starts here.
    pub start_lsn: Lsn,
}

/// What can go wrong setting capture up, capturing, or reading a segment.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("{what} failed")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A prerequisite of logical decoding is missing; the text says how to
    /// provide it.
    #[error("point-in-time recovery cannot be enabled: {0}")]
    Prerequisite(String),
    #[error(
        "no table can be captured: {0}. A table needs a primary key or a replica identity (ALTER TABLE … REPLICA IDENTITY USING INDEX …) to be published without breaking the application's UPDATE and DELETE"
    )]
    NothingToPublish(String),
    #[error("change capture is not set up in this database: {0}. Run `backupctl pitr enable` first")]
    NotEnabled(String),
    /// The slot is gone or the server invalidated it: the changes after
    /// `from` were never captured and cannot be.
    #[error(
        "the change chain is broken from LSN {from}: {reason}. Changes committed after it cannot be restored to a point in time. {advice}"
    )]
    ChainBroken {
        slot: String,
        from: Lsn,
        reason: String,
        /// What to do, or what capture already did (the base backup it took).
        advice: String,
        /// The base backup capture took at once to start a new chain.
        new_base: Option<NewBase>,
    },
    #[error("the slot sent a message that cannot be decoded (at LSN {lsn}), so nothing was captured")]
    Decode {
        lsn: Lsn,
        #[source]
        source: pgoutput::DecodeError,
    },
    #[error("the slot's changes are out of order: {0}; nothing was captured")]
    Sequence(String),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(
        "the segment {id} is damaged: {reason}; do not trust its changes (its authenticated container passed, so it was written so by a faulty capture)"
    )]
    MalformedSegment { id: String, reason: String },
    #[error(
        "the metadata of change segment {id} fails its MAC: it was altered after it was written (or by someone without the key); it is not trusted"
    )]
    TamperedMetadata { id: String },
    #[error(
        "the stored object of change segment {id} is not that segment (it holds {found}); it was replaced"
    )]
    WrongSegmentObject { id: String, found: String },
    #[error("no encryption key: set BACKUP_ENCRYPTION_KEY (change segments are encrypted like backups)")]
    MissingKey,
    #[error("the stored segment is {actual} bytes but {expected} were written; the upload was discarded")]
    SizeMismatch { expected: u64, actual: u64 },
}

impl ChangesError {
    pub(crate) fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { what, source }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_snapshot_sees_what_committed_before_it_and_nothing_in_progress() {
        let snapshot: XidSnapshot = "745:750:746,748".parse().unwrap();
        for xid in [3, 744, 745, 747, 749] {
            assert!(snapshot.sees(xid), "{xid}");
        }
        for xid in [746, 748, 750, 751, 100_000] {
            assert!(!snapshot.sees(xid), "{xid}");
        }
        assert_eq!(
            "5:5:".parse::<XidSnapshot>().unwrap().in_progress,
            Vec::<u64>::new()
        );
        // Past a wraparound: epoch 1, xids near 2^32 belong to epoch 0
        let wrapped: XidSnapshot = format!("{}:{}:", (1u64 << 32) + 10, (1u64 << 32) + 20)
            .parse()
            .unwrap();
        assert!(wrapped.sees(u32::MAX - 5));
        assert!(wrapped.sees(15));
        assert!(!wrapped.sees(25));
        for bad in ["", "1:2", "1:2:3:4", "a:2:", "1:2:x"] {
            assert!(bad.parse::<XidSnapshot>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lsns_read_and_print_as_postgresql_writes_them() {
        for text in ["0/0", "0/1948DF8", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(text.parse::<Lsn>().unwrap().to_string(), text);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert!("1/0".parse::<Lsn>().unwrap() > "0/FFFFFFFF".parse::<Lsn>().unwrap());
        for bad in ["", "1", "/1", "1/", "G/0", "123456789/0", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }
}

//! One capture run (`backupctl pitr capture`): what the slot holds since
//! its confirmed position → one segment under `changes/` → the slot
//! advanced past it.
//!
//! At-least-once: the slot is advanced only after the segment's object and
//! its document are both stored. A run that fails (or is killed) before
//! that leaves the slot where it was, so the next run captures the same
//! transactions again, in a segment of its own; replay is idempotent.
//!
//! Memory stays bounded: the changes are read from a portal in batches of
//! `batch_rows` rows and written through the container's streaming writer
//! as they come; at most `max_changes` rows are taken per run (PostgreSQL
//! stops after the transaction that crosses it), the rest is left for the
//! next run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient, Portal, Row, Transaction};

use super::pgoutput::{self, Begin, Commit, Message};
use super::publication::{PitrNames, parse_lsn};
use super::segment::{
    SECTION_NAME, SegmentId, SegmentMetadata, SequenceValue, TableChanges, encode_record, payload_header,
};
use super::{ChangesError, Lsn, PartitionFile, StreamPosition};
use crate::container::{ContainerOptions, ContainerSummary, ContainerWriter, SectionKind};
use crate::keyring::{Keyring, MasterKey};
use crate::postgres;
use crate::storage::{BackupStore, ObjectUpload};

/// Rows fetched from the server at a time.
pub const DEFAULT_BATCH_ROWS: i32 = 1000;
/// Rows (messages) one run takes at most before leaving the rest for the next.
pub const DEFAULT_MAX_CHANGES: i32 = 1_000_000;

#[derive(Clone)]
pub struct CaptureRequest {
    pub database_url: String,
    pub names: PitrNames,
    pub batch_rows: i32,
    pub max_changes: i32,
    pub container: ContainerOptions,
    /// The newest base backup that records this slot's position, when the
    /// caller looked (the operations layer reads the backups' metadata):
    /// a segment whose catalog fingerprint differs from it cannot be
    /// replayed onto it, which is a cut even when the segment before
    /// agrees (the base backup after an earlier cut failed).
    pub base: Option<ChainBase>,
}

/// A base backup as the start of this slot's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBase {
    pub backup_id: String,
    pub position: StreamPosition,
}

/// Shows the database URL without its password.
impl std::fmt::Debug for CaptureRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureRequest")
            .field("database_url", &crate::config::redact_url(&self.database_url))
            .field("names", &self.names)
            .field("batch_rows", &self.batch_rows)
            .field("max_changes", &self.max_changes)
            .field("base", &self.base.as_ref().map(|base| &base.backup_id))
            .finish()
    }
}

impl CaptureRequest {
    pub fn new(database_url: impl Into<String>, names: PitrNames) -> Self {
        Self {
            database_url: database_url.into(),
            names,
            batch_rows: DEFAULT_BATCH_ROWS,
            max_changes: DEFAULT_MAX_CHANGES,
            container: ContainerOptions::default(),
            base: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum CaptureOutcome {
    /// Nothing was committed to the published tables since the last run:
    /// no segment was written.
    #[serde(rename = "no-changes")]
    NoChanges { slot: String, position: Lsn },
    #[serde(rename = "captured")]
    Captured {
        segment: Box<SegmentMetadata>,
        /// The run stopped at `max_changes`: more is waiting.
        more_pending: bool,
        duration_ms: u64,
    },
}

/// The state of the slot when a capture run started: how much WAL it makes
/// the server keep, and whether it is in danger (docs/PITR.md, "Slot
/// safety").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotHealth {
    pub slot: String,
    /// The slot's confirmed position: where this run starts.
    pub confirmed_lsn: Lsn,
    /// The server's current WAL write position (`pg_current_wal_lsn()`).
    pub current_lsn: Lsn,
    /// `current_lsn - confirmed_lsn`: the WAL the slot keeps on the server
    /// (of every table, not only the published ones).
    pub lag_bytes: u64,
    /// `pg_replication_slots.wal_status`: `reserved`, `extended`,
    /// `unreserved` (about to be invalidated) or `lost`.
    pub wal_status: Option<String>,
    /// `max_slot_wal_keep_size` as the server shows it (`-1`: unlimited).
    pub max_slot_wal_keep_size: String,
    /// Settings and states that can hurt the database or the chain.
    pub warnings: Vec<String>,
}

/// One capture run: what it stored, the slot's health when it started, and
/// the achieved recovery point.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureReport {
    #[serde(flatten)]
    pub outcome: CaptureOutcome,
    #[serde(rename = "slotHealth")]
    pub health: SlotHealth,
    /// The age of the oldest commit that was not yet stored when the run
    /// started, measured when its segment was stored: the achieved RPO of
    /// this run. 0 when the slot held no changes.
    pub oldest_uncaptured_commit_age_seconds: f64,
    /// The new segment's catalog fingerprint differs from the chain's
    /// before it: its changes cannot be replayed onto the chain's base
    /// backup, so instants from here on need a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_cut: Option<ChainCut>,
}

/// Where a schema change of the published tables (DDL, which logical
/// decoding does not carry), or a TRUNCATE of a single partition (which
/// pgoutput does not publish through the root), cut the chain: somewhere
/// after `previous_end` and before the new segment's last commit. Replay
/// refuses to cross it; a base backup taken after it starts a new chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainCut {
    /// The first segment captured under the new schema.
    pub segment: SegmentId,
    /// Its first commit: the earliest that may follow the change.
    pub first_commit_lsn: Lsn,
    pub first_commit_time: DateTime<Utc>,
    /// Where the chain stood before (the previous segment's end, or the
    /// base backup's position): the change came after it.
    pub previous_end: Lsn,
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    /// What the new segment was compared with: `segment <id>` or `base
    /// backup <id>`.
    pub compared_with: String,
    /// Why the chain is cut, in words: a schema change, or a partition
    /// truncated alone (named).
    pub reason: String,
    /// The partitions whose file changed without a captured TRUNCATE (a
    /// cut of that kind; the fingerprints are then equal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
}

impl CaptureReport {
    pub fn changes(&self) -> u64 {
        match &self.outcome {
            CaptureOutcome::NoChanges { .. } => 0,
            CaptureOutcome::Captured { segment, .. } => segment.changes,
        }
    }
}

/// Captures what the slot holds into one segment in `store`, sealed with
/// the keyring's current key, and advances the slot past it.
pub async fn capture_changes(
    store: &dyn BackupStore,
    keyring: &Keyring,
    request: &CaptureRequest,
) -> Result<CaptureOutcome, ChangesError> {
    Ok(capture(store, keyring, request).await?.outcome)
}

/// [`capture_changes`], reporting the slot's health and the achieved RPO.
/// A slot that is missing while segments of it are stored, or that the
/// server invalidated, is [`ChangesError::ChainBroken`]: changes after the
/// last stored one are lost to point-in-time recovery.
pub async fn capture(
    store: &dyn BackupStore,
    keyring: &Keyring,
    request: &CaptureRequest,
) -> Result<CaptureReport, ChangesError> {
    let names = &request.names;
    let client = postgres::connect(&request.database_url).await?;
    let health = match slot_health(&client, &names.slot).await? {
        Some(health) => health,
        None => return Err(missing_slot(store, keyring, &names.slot).await),
    };
    for warning in &health.warnings {
        tracing::warn!(slot = %names.slot, "{warning}");
    }
    let (outcome, previous) = capture_with(client, store, keyring, request, health.confirmed_lsn).await?;
    let chain_cut = match &outcome {
        CaptureOutcome::NoChanges { .. } => None,
        CaptureOutcome::Captured { segment, .. } => {
            let cut = judge_cut(segment, previous.as_ref(), request.base.as_ref());
            if let Some(cut) = &cut {
                tracing::warn!(
                    slot = %names.slot, segment = %cut.segment, previous_end = %cut.previous_end,
                    first_commit = %cut.first_commit_lsn, compared_with = %cut.compared_with,
                    old_fingerprint = %cut.old_fingerprint, new_fingerprint = %cut.new_fingerprint,
                    partitions = ?cut.partitions,
                    "{}: the change chain is cut, and instants from segment {} on cannot be restored until a base backup is taken after it",
                    cut.reason, cut.segment
                );
            }
            cut
        }
    };
    let oldest_uncaptured_commit_age_seconds = match &outcome {
        CaptureOutcome::NoChanges { .. } => 0.0,
        CaptureOutcome::Captured { segment, .. } => {
            let age = Utc::now() - segment.first_commit_time;
            (age.num_milliseconds().max(0) as f64) / 1000.0
        }
    };
    Ok(CaptureReport {
        outcome,
        health,
        oldest_uncaptured_commit_age_seconds,
        chain_cut,
    })
}

/// The newest stored segment of `slot` before the new segment `new` (by
/// id, which is commit order), its document authenticated. Documents that
/// fail their MAC are passed over with a warning: verify reports them.
async fn previous_segment(
    store: &dyn BackupStore,
    keyring: &Keyring,
    slot: &str,
    new: &SegmentId,
) -> Result<Option<SegmentMetadata>, ChangesError> {
    let Some(identity) = crate::identity::read(store).await? else {
        return Ok(None);
    };
    let mut keys: Vec<String> = store
        .list(super::segment::CHANGES_PREFIX)
        .await?
        .into_iter()
        .map(|info| info.key)
        .filter(|key| key.ends_with(".json") && *key < new.metadata_key())
        .collect();
    keys.sort();
    // Usually the last one: a capture runs at a time (one reader per slot).
    for key in keys.iter().rev() {
        let bytes = crate::storage::get_bytes(store, key, 16 << 20).await?;
        match SegmentMetadata::open(&bytes, keyring, &identity.repository_id, key) {
            Ok(segment) if segment.slot == slot => return Ok(Some(segment)),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, key, "passing over a segment document that cannot be trusted")
            }
        }
    }
    Ok(None)
}

/// Whether `new` cuts the chain: its catalog fingerprint differs from
/// the segment before it or from the chain's base backup, or capture found
/// a partition truncated alone ([`judge_partition_cut`]). The base is
/// compared too when it is older than the previous segment, since replay
/// needs every segment after the base to carry the base's fingerprint: a
/// base backup after an earlier cut that failed leaves the cut open, and
/// the next run finds it again. A base without a fingerprint (taken
/// before it was recorded) decides nothing.
pub fn judge_cut(
    new: &SegmentMetadata,
    previous: Option<&SegmentMetadata>,
    base: Option<&ChainBase>,
) -> Option<ChainCut> {
    let (previous_any, base_any) = (previous, base);
    let base = base
        .filter(|base| base.position.slot == new.slot)
        .and_then(|base| {
            base.position
                .catalog_fingerprint
                .as_deref()
                .map(|fingerprint| (base, fingerprint))
        });
    let previous = previous.filter(|previous| previous.slot == new.slot);
    // The previous segment only counts when the base does not start after it.
    let previous =
        previous.filter(|previous| base.is_none_or(|(base, _)| previous.end_lsn > base.position.start_lsn));
    let schema_changed = "the published tables' schema changed".to_owned();
    let cut = |old: &str, previous_end: Lsn, compared_with: String| ChainCut {
        segment: new.id.clone(),
        first_commit_lsn: new.first_commit_lsn,
        first_commit_time: new.first_commit_time,
        previous_end,
        old_fingerprint: old.to_owned(),
        new_fingerprint: new.catalog_fingerprint.clone(),
        compared_with,
        reason: schema_changed.clone(),
        partitions: Vec::new(),
    };
    if let Some(previous) = previous
        && previous.catalog_fingerprint != new.catalog_fingerprint
    {
        return Some(cut(
            &previous.catalog_fingerprint,
            previous.end_lsn,
            format!("segment {}", previous.id),
        ));
    }
    if let Some((base, fingerprint)) = base
        && fingerprint != new.catalog_fingerprint
    {
        return Some(cut(
            fingerprint,
            previous.map_or(base.position.start_lsn, |previous| previous.end_lsn),
            format!("base backup {}", base.backup_id),
        ));
    }
    judge_partition_cut(new, previous_any, base_any)
}

/// The partitions' half of [`judge_cut`]: the new segment found partitions
/// truncated alone (at capture, [`rewritten_partitions`]), or the segment
/// before it did and no base backup was taken since (the one after that
/// cut failed: the cut is still open, and the next run tries again).
fn judge_partition_cut(
    new: &SegmentMetadata,
    previous: Option<&SegmentMetadata>,
    base: Option<&ChainBase>,
) -> Option<ChainCut> {
    let reference = StorageReference::choose(&new.slot, previous, base);
    let cut = |previous_end: Lsn, compared_with: String, reason: String, partitions: &[String]| ChainCut {
        segment: new.id.clone(),
        first_commit_lsn: new.first_commit_lsn,
        first_commit_time: new.first_commit_time,
        previous_end,
        old_fingerprint: new.catalog_fingerprint.clone(),
        new_fingerprint: new.catalog_fingerprint.clone(),
        compared_with,
        reason,
        partitions: partitions.to_vec(),
    };
    if !new.partitions_rewritten.is_empty() {
        return Some(cut(
            reference.as_ref().map_or(new.start_lsn, StorageReference::end),
            reference
                .as_ref()
                .map_or_else(|| "nothing".to_owned(), StorageReference::name),
            format!(
                "partition {} was truncated on its own, or rewritten (VACUUM FULL, CLUSTER, ALTER TABLE), without a TRUNCATE of its partitioned table; PostgreSQL does not publish a TRUNCATE of one partition, so replay cannot cross it",
                new.partitions_rewritten.join(", ")
            ),
            &new.partitions_rewritten,
        ));
    }
    match (reference, base.filter(|base| base.position.slot == new.slot)) {
        (Some(StorageReference::Segment(previous)), Some(base))
            if !previous.partitions_rewritten.is_empty() =>
        {
            Some(cut(
                previous.start_lsn,
                format!("segment {} and base backup {}", previous.id, base.backup_id),
                format!(
                    "partition {} was truncated on its own (or rewritten) in segment {}, and no base backup was taken since",
                    previous.partitions_rewritten.join(", "),
                    previous.id
                ),
                &previous.partitions_rewritten,
            ))
        }
        _ => None,
    }
}

/// What a new segment's partition files are compared with: the segment
/// before it, unless the base backup starts at or after that one's end.
/// (Unlike the fingerprint, the base is not compared when a segment came
/// after it: a captured TRUNCATE of a root changes its partitions' files
/// legitimately.)
enum StorageReference<'a> {
    Segment(&'a SegmentMetadata),
    Base(&'a ChainBase),
}

impl<'a> StorageReference<'a> {
    fn choose(
        slot: &str,
        previous: Option<&'a SegmentMetadata>,
        base: Option<&'a ChainBase>,
    ) -> Option<Self> {
        let base = base.filter(|base| base.position.slot == slot);
        match previous.filter(|previous| previous.slot == slot) {
            Some(previous) if base.is_none_or(|base| previous.end_lsn > base.position.start_lsn) => {
                Some(Self::Segment(previous))
            }
            _ => base.map(Self::Base),
        }
    }

    fn files(&self) -> Option<&'a [PartitionFile]> {
        match self {
            Self::Segment(segment) => segment.partition_files.as_deref(),
            Self::Base(base) => base.position.partition_files.as_deref(),
        }
    }

    fn end(&self) -> Lsn {
        match self {
            Self::Segment(segment) => segment.end_lsn,
            Self::Base(base) => base.position.start_lsn,
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Segment(segment) => format!("segment {}", segment.id),
            Self::Base(base) => format!("base backup {}", base.backup_id),
        }
    }
}

/// A leaf partition's file as read now, with the transaction that last
/// wrote its catalog row (`pg_class.xmin`: the TRUNCATE that gave it the
/// file, when that was the last change to the row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReading {
    pub file: PartitionFile,
    pub xmin: u32,
}

/// The partitions (`schema.name`) whose file differs from `recorded`
/// (the chain's previous record) without a TRUNCATE of their root, in
/// this segment, by the very transaction that wrote their catalog row
/// (`truncated_by`: the captured TRUNCATEs, table → transaction ids).
/// A TRUNCATE of the root gives every partition a new file in that
/// transaction and is captured; a TRUNCATE of the partition alone gives
/// it a new file in a transaction that is not a captured root TRUNCATE.
/// Tying the two by transaction id catches a partition truncated alone
/// after its root was in the same segment. A partition new since the
/// record is the fingerprint's business (it lists the partitions).
pub fn rewritten_partitions(
    recorded: &[PartitionFile],
    now: &[PartitionReading],
    truncated_by: &BTreeMap<String, BTreeSet<u32>>,
) -> Vec<String> {
    let recorded: BTreeMap<(&str, &str), u32> = recorded
        .iter()
        .map(|file| ((file.root.as_str(), file.partition.as_str()), file.filenode))
        .collect();
    let mut rewritten: Vec<String> = now
        .iter()
        .filter(|reading| {
            let file = &reading.file;
            let Some(&before) = recorded.get(&(file.root.as_str(), file.partition.as_str())) else {
                return false;
            };
            let explained = truncated_by
                .get(&file.root)
                .is_some_and(|xids| xids.contains(&reading.xmin));
            before != file.filenode && !explained
        })
        .map(|reading| reading.file.partition.clone())
        .collect();
    rewritten.sort();
    rewritten.dedup();
    rewritten
}

/// The slot's state, `None` when this database has no such slot. A slot
/// of that name that is not a pgoutput slot of this database is refused;
/// one the server invalidated (`wal_status = lost`) is a broken chain.
pub async fn slot_health(client: &Client, slot: &str) -> Result<Option<SlotHealth>, ChangesError> {
    let row = client
        .query_opt(
            "SELECT s.plugin, s.database = current_database() AS here, \
                    s.confirmed_flush_lsn::text AS position, s.wal_status::text AS wal_status, \
                    pg_catalog.pg_current_wal_lsn()::text AS current, \
                    current_setting('max_slot_wal_keep_size') AS keep \
             FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(ChangesError::query("reading the replication slot's state"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let plugin: Option<String> = row.get("plugin");
    let here: Option<bool> = row.get("here");
    if plugin.as_deref() != Some("pgoutput") || here != Some(true) {
        return Err(ChangesError::Prerequisite(format!(
            "a replication slot named {slot} exists but is not a pgoutput slot of this database; choose another name with BACKUP_PITR_SLOT"
        )));
    }
    let current = parse_lsn(&row.get::<_, String>("current"))?;
    let position: Option<String> = row.get("position");
    let confirmed = position.as_deref().map(parse_lsn).transpose()?.unwrap_or(current);
    let wal_status: Option<String> = row.get("wal_status");
    let keep: String = row.get("keep");
    judge_slot(slot, confirmed, current, wal_status, keep).map(Some)
}

/// What a broken chain's message says to do when nothing was done yet: a
/// base backup recreates the slot (`restart_broken_chain`) and starts a
/// new chain.
pub const NEXT_BASE_ADVICE: &str = "Take a base backup (`backupctl create`, or invoke the create function): it recreates the slot and starts a new chain";

/// What the slot's state means: a broken chain, warnings, or nothing.
pub fn judge_slot(
    slot: &str,
    confirmed: Lsn,
    current: Lsn,
    wal_status: Option<String>,
    keep: String,
) -> Result<SlotHealth, ChangesError> {
    if wal_status.as_deref() == Some("lost") {
        return Err(ChangesError::ChainBroken {
            slot: slot.to_owned(),
            from: confirmed,
            reason: format!(
                "the server invalidated replication slot {slot} (wal_status = lost): it removed WAL the slot still needed (max_slot_wal_keep_size = {keep} was exceeded, captures fell too far behind)"
            ),
            advice: NEXT_BASE_ADVICE.to_owned(),
            new_base: None,
        });
    }
    let mut warnings = Vec::new();
    if keep == "-1" {
        warnings.push(format!(
            "max_slot_wal_keep_size is unlimited (-1): if captures stop, slot {slot} keeps every WAL segment until the server's disk is full. Set max_slot_wal_keep_size (RDS: in the parameter group) so the server gives up the slot first, watch the SlotLagBytes alarm, or `backupctl pitr disable`"
        ));
    }
    if wal_status.as_deref() == Some("unreserved") {
        warnings.push(format!(
            "slot {slot} keeps more WAL than max_slot_wal_keep_size ({keep}): the server may invalidate it at its next checkpoint, which breaks the chain; capture is far behind"
        ));
    }
    Ok(SlotHealth {
        slot: slot.to_owned(),
        confirmed_lsn: confirmed,
        current_lsn: current,
        lag_bytes: current.0.saturating_sub(confirmed.0),
        wal_status,
        max_slot_wal_keep_size: keep,
        warnings,
    })
}

/// The slot is not there: capture was never set up (nothing of it is
/// stored), or the slot was lost (dropped, or a failover to a standby that
/// does not have it) and the chain breaks after the last stored segment.
async fn missing_slot(store: &dyn BackupStore, keyring: &Keyring, slot: &str) -> ChangesError {
    let stored = match super::segment::list_segments(store, keyring).await {
        Ok(segments) => segments,
        Err(error) => return error,
    };
    match stored.iter().rev().find(|segment| segment.slot == slot) {
        None => ChangesError::NotEnabled(format!("there is no replication slot {slot}")),
        Some(last) => ChangesError::ChainBroken {
            slot: slot.to_owned(),
            from: last.end_lsn,
            reason: format!(
                "replication slot {slot} is gone (dropped, or lost in a failover to a standby without failover slots) while segment {} of it is stored",
                last.id
            ),
            advice: NEXT_BASE_ADVICE.to_owned(),
            new_base: None,
        },
    }
}

async fn capture_with(
    mut client: Client,
    store: &dyn BackupStore,
    keyring: &Keyring,
    request: &CaptureRequest,
    start_lsn: Lsn,
) -> Result<(CaptureOutcome, Option<SegmentMetadata>), ChangesError> {
    let started = Instant::now();
    let captured_at = Utc::now();
    let names = &request.names;
    let (published, catalog_fingerprint) = published_tables(&client, &names.publication).await?;

    let transaction = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(ChangesError::query("starting the capture transaction"))?;
    let statement = transaction
        .prepare(
            "SELECT lsn::text, data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, NULL, $2, \
             'proto_version', '1', 'publication_names', $3)",
        )
        .await
        .map_err(ChangesError::query("preparing to read the slot"))?;
    // The partitions' files, read right before the slot is: whatever a
    // reading shows committed before the slot's read began, so it lies in
    // this segment or an earlier one. (Read after it, a TRUNCATE of a root
    // committed meanwhile would show here while its message comes in the
    // next segment: a needless cut whenever a root is truncated during a
    // run.) Compared with the previous record once the segment is read.
    let readings = partition_readings(&transaction, &names.publication)
        .await
        .map_err(ChangesError::query("reading the partitions' files"))?;
    let max_changes = (request.max_changes > 0).then_some(request.max_changes);
    let portal = transaction
        .bind(&statement, &[&names.slot, &max_changes, &names.publication])
        .await
        .map_err(ChangesError::query("reading the slot"))?;
    let first = transaction
        .query_portal(&portal, request.batch_rows)
        .await
        .map_err(ChangesError::query("reading the slot"))?;
    let Some(first_begin) = first.first().map(first_commit_lsn).transpose()? else {
        let outcome = CaptureOutcome::NoChanges {
            slot: names.slot.clone(),
            position: start_lsn,
        };
        return Ok((outcome, None));
    };

    let master = keyring.current().clone();
    let id = SegmentId::new(first_begin, captured_at);
    let mut upload = store.begin_upload(&id.object_key()).await?;
    let mut tally = Tally::default();
    let reading = Reading {
        transaction: &transaction,
        portal: &portal,
        batch_rows: request.batch_rows,
    };
    let written = write_segment(
        &reading,
        first,
        &mut upload,
        &master,
        &id,
        request.container,
        &mut tally,
    )
    .await;
    let summary = match written {
        Ok(summary) => summary,
        Err(error) => {
            if let Err(cause) = upload.abort().await {
                tracing::warn!(%cause, "discarding the unfinished segment failed");
            }
            return Err(error);
        }
    };
    let committed = transaction
        .commit()
        .await
        .map_err(ChangesError::query("ending the capture transaction"));
    let described = async {
        committed?;
        // Read after the changes: sequences are not transactional, so these
        // are at least the values any captured row was given.
        let sequences = sequence_values(&client, &names.publication).await?;
        let previous = previous_segment(store, keyring, &names.slot, &id).await?;
        let partitions_rewritten =
            StorageReference::choose(&names.slot, previous.as_ref(), request.base.as_ref())
                .and_then(|reference| reference.files())
                .map(|recorded| rewritten_partitions(recorded, &readings, &tally.truncated_by))
                .unwrap_or_default();
        let metadata = tally.describe(TallyContext {
            id: id.clone(),
            captured_at,
            names,
            start_lsn,
            published,
            catalog_fingerprint,
            partition_files: readings.into_iter().map(|reading| reading.file).collect(),
            partitions_rewritten,
            sequences,
            summary: &summary,
        })?;
        Ok::<_, ChangesError>((metadata, previous))
    }
    .await;
    let (mut metadata, previous) = match described {
        Ok(described) => described,
        Err(error) => {
            if let Err(cause) = upload.abort().await {
                tracing::warn!(%cause, "discarding the unfinished segment failed");
            }
            return Err(error);
        }
    };
    let stored = upload.complete().await?;
    if stored.size != summary.size_bytes {
        discard(store, id.object_key()).await;
        return Err(ChangesError::SizeMismatch {
            expected: summary.size_bytes,
            actual: stored.size,
        });
    }
    let published = async {
        let identity = crate::identity::ensure(store).await?;
        metadata.seal(keyring, &identity.repository_id)?;
        let document = serde_json::to_vec_pretty(&metadata).map_err(|e| ChangesError::MalformedSegment {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        store.put(&id.metadata_key(), document.into()).await?;
        Ok::<_, ChangesError>(())
    }
    .await;
    if let Err(error) = published {
        // Unpublished: the slot stays, so the next run takes these again.
        discard(store, id.object_key()).await;
        return Err(error);
    }
    advance_slot(&client, &names.slot, metadata.end_lsn).await?;
    let more_pending = max_changes.is_some_and(|max| metadata.messages >= max as u64);
    tracing::info!(
        segment = %id, transactions = metadata.transactions, changes = metadata.changes,
        first_commit = %metadata.first_commit_lsn, last_commit = %metadata.last_commit_lsn,
        bytes = metadata.size_bytes, "changes captured"
    );
    let outcome = CaptureOutcome::Captured {
        segment: Box::new(metadata),
        more_pending,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    Ok((outcome, previous))
}

/// Removes a segment object that will not be published (best effort: an
/// object without its document is never listed).
async fn discard(store: &dyn BackupStore, key: String) {
    if let Err(error) = store.delete(&key).await {
        tracing::warn!(%error, key, "could not remove the unpublished segment");
    }
}

/// Moves the slot's confirmed position to `to`: the server may now recycle
/// the WAL before it.
async fn advance_slot(client: &Client, slot: &str, to: Lsn) -> Result<(), ChangesError> {
    let row = client
        .query_one(
            "SELECT end_lsn::text FROM pg_catalog.pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&slot, &to.to_string()],
        )
        .await
        .map_err(ChangesError::query("advancing the replication slot"))?;
    let reached = parse_lsn(&row.get::<_, String>(0))?;
    if reached < to {
        return Err(ChangesError::Sequence(format!(
            "the slot was advanced to {reached}, short of the segment's end {to}"
        )));
    }
    Ok(())
}

struct Reading<'a> {
    transaction: &'a Transaction<'a>,
    portal: &'a Portal,
    batch_rows: i32,
}

async fn write_segment(
    reading: &Reading<'_>,
    first: Vec<Row>,
    upload: &mut Box<dyn ObjectUpload>,
    master: &MasterKey,
    id: &SegmentId,
    options: ContainerOptions,
    tally: &mut Tally,
) -> Result<ContainerSummary, ChangesError> {
    let mut writer = ContainerWriter::create(upload, master, id.as_str(), options).await?;
    let mut section = writer.begin_section(SectionKind::Changes, None, SECTION_NAME)?;
    section.write(&payload_header()).await?;
    let mut rows = first;
    let mut record = Vec::new();
    loop {
        let last_batch = rows.len() < usize::try_from(reading.batch_rows).unwrap_or(usize::MAX);
        for row in &rows {
            let lsn = parse_lsn(row.get::<_, &str>(0))?;
            let data: &[u8] = row.get(1);
            let message = pgoutput::decode(data).map_err(|source| ChangesError::Decode { lsn, source })?;
            tally.observe(lsn, &message)?;
            record.clear();
            encode_record(lsn, data, &mut record);
            section.write(&record).await?;
        }
        if last_batch {
            break;
        }
        rows = reading
            .transaction
            .query_portal(reading.portal, reading.batch_rows)
            .await
            .map_err(ChangesError::query("reading the slot"))?;
        if rows.is_empty() {
            break;
        }
    }
    tally.finish()?;
    section.finish(tally.changes).await?;
    Ok(writer.finish().await?)
}

/// The first commit's LSN, from the first message (a `Begin`).
fn first_commit_lsn(row: &Row) -> Result<Lsn, ChangesError> {
    let lsn = parse_lsn(row.get::<_, &str>(0))?;
    match pgoutput::decode(row.get(1)).map_err(|source| ChangesError::Decode { lsn, source })? {
        Message::Begin(begin) => Ok(begin.final_lsn),
        other => Err(ChangesError::Sequence(format!(
            "the first message is '{}', not a transaction's begin",
            char::from(other.tag())
        ))),
    }
}

/// What the segment holds, counted as it is written, and the checks that
/// the stream is whole transactions in commit order.
#[derive(Default)]
struct Tally {
    relations: BTreeMap<u32, String>,
    tables: BTreeMap<String, TableChanges>,
    open: Option<Begin>,
    first_commit: Option<Commit>,
    last_commit: Option<Commit>,
    transactions: u64,
    changes: u64,
    messages: u64,
    /// The captured TRUNCATEs: table (`schema.name`) → the transactions
    /// that truncated it.
    truncated_by: BTreeMap<String, BTreeSet<u32>>,
}

struct TallyContext<'a> {
    id: SegmentId,
    captured_at: DateTime<Utc>,
    names: &'a PitrNames,
    start_lsn: Lsn,
    published: Vec<String>,
    catalog_fingerprint: String,
    partition_files: Vec<PartitionFile>,
    partitions_rewritten: Vec<String>,
    sequences: Vec<SequenceValue>,
    summary: &'a ContainerSummary,
}

impl Tally {
    fn observe(&mut self, lsn: Lsn, message: &Message) -> Result<(), ChangesError> {
        self.messages += 1;
        let out_of_order = |what: String| Err(ChangesError::Sequence(format!("{what} (at LSN {lsn})")));
        match message {
            Message::Begin(begin) => {
                if self.open.is_some() {
                    return out_of_order("a transaction begins inside another".into());
                }
                if let Some(last) = &self.last_commit
                    && begin.final_lsn <= last.commit_lsn
                {
                    return out_of_order(format!(
                        "a transaction committing at {} follows one committed at {}",
                        begin.final_lsn, last.commit_lsn
                    ));
                }
                self.open = Some(begin.clone());
            }
            Message::Commit(commit) => {
                let Some(begin) = self.open.take() else {
                    return out_of_order("a commit outside a transaction".into());
                };
                if begin.final_lsn != commit.commit_lsn {
                    return out_of_order(format!(
                        "a transaction announced to commit at {} commits at {}",
                        begin.final_lsn, commit.commit_lsn
                    ));
                }
                self.transactions += 1;
                self.first_commit.get_or_insert_with(|| commit.clone());
                self.last_commit = Some(commit.clone());
            }
            Message::Relation(relation) => {
                self.relations
                    .insert(relation.oid, format!("{}.{}", relation.schema, relation.name));
            }
            Message::Origin(_) | Message::Type(_) => {}
            Message::Insert(insert) => self.count(insert.relation, lsn, |t| t.inserts += 1)?,
            Message::Update(update) => self.count(update.relation, lsn, |t| t.updates += 1)?,
            Message::Delete(delete) => self.count(delete.relation, lsn, |t| t.deletes += 1)?,
            Message::Truncate(truncate) => {
                for &relation in &truncate.relations {
                    self.table(relation, lsn)?.truncates += 1;
                    if let (Some(begin), Some(name)) = (&self.open, self.relations.get(&relation)) {
                        self.truncated_by
                            .entry(name.clone())
                            .or_default()
                            .insert(begin.xid);
                    }
                }
            }
        }
        if self.open.is_none() && !matches!(message, Message::Commit(_)) {
            return out_of_order(format!(
                "a '{}' message outside a transaction",
                char::from(message.tag())
            ));
        }
        Ok(())
    }

    fn count(
        &mut self,
        relation: u32,
        lsn: Lsn,
        add: impl FnOnce(&mut TableChanges),
    ) -> Result<(), ChangesError> {
        add(self.table(relation, lsn)?);
        self.changes += 1;
        Ok(())
    }

    fn table(&mut self, relation: u32, lsn: Lsn) -> Result<&mut TableChanges, ChangesError> {
        let Some(name) = self.relations.get(&relation) else {
            return Err(ChangesError::Sequence(format!(
                "a change to relation {relation} before its description (at LSN {lsn})"
            )));
        };
        Ok(self.tables.entry(name.clone()).or_insert_with(|| TableChanges {
            table: name.clone(),
            ..TableChanges::default()
        }))
    }

    fn finish(&self) -> Result<(), ChangesError> {
        if let Some(begin) = &self.open {
            return Err(ChangesError::Sequence(format!(
                "the changes end inside transaction {} (committing at {})",
                begin.xid, begin.final_lsn
            )));
        }
        Ok(())
    }

    fn describe(self, context: TallyContext<'_>) -> Result<SegmentMetadata, ChangesError> {
        let (Some(first), Some(last)) = (self.first_commit, self.last_commit) else {
            return Err(ChangesError::Sequence(
                "the changes hold no committed transaction".into(),
            ));
        };
        // Milliseconds, as the document stores them: what capture returns
        // is what a reader of the document gets.
        let time = |commit: &Commit| {
            commit
                .commit_time
                .to_utc()
                .map(|at| at.trunc_subsecs(3))
                .ok_or_else(|| {
                    ChangesError::Sequence(format!("commit {} has an impossible time", commit.commit_lsn))
                })
        };
        let summary = context.summary;
        Ok(SegmentMetadata {
            id: context.id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            captured_at: context.captured_at.trunc_subsecs(3),
            slot: context.names.slot.clone(),
            publication: context.names.publication.clone(),
            start_lsn: context.start_lsn,
            first_commit_lsn: first.commit_lsn,
            last_commit_lsn: last.commit_lsn,
            end_lsn: last.end_lsn,
            first_commit_time: time(&first)?,
            last_commit_time: time(&last)?,
            transactions: self.transactions,
            changes: self.changes,
            messages: self.messages,
            tables: self.tables.into_values().collect(),
            published_tables: context.published,
            catalog_fingerprint: context.catalog_fingerprint,
            partition_files: Some(context.partition_files),
            partitions_rewritten: context.partitions_rewritten,
            sequences: context.sequences,
            key_id: summary.key_id.clone(),
            compression: summary.compression,
            chunk_size: summary.chunk_size,
            size_bytes: summary.size_bytes,
            checksum: summary.sha256.clone(),
            payload_bytes: summary.sections.iter().map(|s| s.plain_bytes).sum(),
            repository_id: None,
            metadata_mac: None,
        })
    }
}

/// The publication's tables (`schema.name`) and the SHA-256 of their shape:
/// each table's columns (number, name, type as schema, name and modifier,
/// NOT NULL; nothing that depends on the session's `search_path`, since a
/// base backup reads it with an empty one) and replica identity. A change of any of them changes the fingerprint, which is how
/// capture and replay notice DDL, which logical decoding does not carry.
pub async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<(Vec<String>, String), ChangesError> {
    catalog_fingerprint(client, publication)
        .await
        .map_err(ChangesError::query("reading the published tables"))?
        .ok_or_else(|| ChangesError::NotEnabled(format!("there is no publication {publication}")))
}

/// [`published_tables`] through any client (a base backup reads it in its
/// snapshot); `None` when there is no such publication.
pub async fn catalog_fingerprint<C: GenericClient + Sync>(
    client: &C,
    publication: &str,
) -> Result<Option<(Vec<String>, String)>, tokio_postgres::Error> {
    let exists = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await?
        .get::<_, bool>(0);
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT pt.schemaname::text AS schema, pt.tablename::text AS name, c.relreplident::text AS identity, \
                    coalesce((SELECT string_agg(format('%s %I %I.%I(%s) %s', a.attnum, a.attname, \
                                                       tn.nspname, t.typname, a.atttypmod, a.attnotnull), \
                                                ', ' ORDER BY a.attnum) \
                              FROM pg_catalog.pg_attribute a \
                              JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                              JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') AS columns, \
                    coalesce((SELECT string_agg(format('%I', a.attname), ', ' ORDER BY k.ord) \
                              FROM pg_catalog.pg_index i \
                              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                              WHERE i.indrelid = c.oid AND (i.indisreplident OR (c.relreplident = 'd' AND i.indisprimary))), '') AS key, \
                    CASE WHEN c.relkind = 'p' THEN \
                      coalesce((SELECT string_agg(format('%I.%I %s', pn.nspname, pc.relname, pc.relpartbound::text), \
                                                  ', ' ORDER BY pn.nspname, pc.relname) \
                                FROM pg_catalog.pg_partition_tree(c.oid) tree \
                                JOIN pg_catalog.pg_class pc ON pc.oid = tree.relid \
                                JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace \
                                WHERE tree.level > 0), '') END AS partitions \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        ?;
    let mut hash = Sha256::new();
    let mut tables = Vec::with_capacity(rows.len());
    for row in &rows {
        let (schema, name): (String, String) = (row.get("schema"), row.get("name"));
        for field in [
            schema.as_str(),
            name.as_str(),
            row.get("identity"),
            row.get("columns"),
            row.get("key"),
        ] {
            // Length-prefixed: no two different shapes hash alike.
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field.as_bytes());
        }
        // A partitioned table's partitions (names and bounds, every level):
        // one attached or detached changes where replay's rows go. Hashed
        // for partitioned tables only, so other tables' fingerprints stay
        // what older versions recorded. The bounds as the catalog stores
        // them (node text), not pg_get_expr's, which prints constants in
        // the session's TimeZone and DateStyle (capture's session and a
        // base backup's differ).
        if let Some(partitions) = row.get::<_, Option<&str>>("partitions") {
            let field = format!("partitions: {partitions}");
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field.as_bytes());
        }
        tables.push(format!("{schema}.{name}"));
    }
    Ok(Some((tables, hex::encode(hash.finalize()))))
}

/// The leaf partitions of the published partitioned tables, with their
/// files and the transaction that last wrote their catalog row (see
/// [`rewritten_partitions`]); through any client (a base backup reads
/// them in its snapshot). Empty when nothing published is partitioned.
pub async fn partition_readings<C: GenericClient + Sync>(
    client: &C,
    publication: &str,
) -> Result<Vec<PartitionReading>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pt.schemaname || '.' || pt.tablename AS root, n.nspname || '.' || c.relname AS partition, \
                    c.relfilenode AS filenode, c.xmin::text::int8 AS xmin \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace rn ON rn.nspname = pt.schemaname \
             JOIN pg_catalog.pg_class r ON r.relnamespace = rn.oid AND r.relname = pt.tablename AND r.relkind = 'p' \
             CROSS JOIN LATERAL pg_catalog.pg_partition_tree(r.oid) tree \
             JOIN pg_catalog.pg_class c ON c.oid = tree.relid AND c.relkind = 'r' \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE pt.pubname = $1 AND tree.isleaf ORDER BY 1, 2",
            &[&publication],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| PartitionReading {
            file: PartitionFile {
                root: row.get("root"),
                partition: row.get("partition"),
                filenode: row.get("filenode"),
            },
            // An xid is 32 bits; the text cast keeps it unsigned.
            xmin: u32::try_from(row.get::<_, i64>("xmin")).unwrap_or(u32::MAX),
        })
        .collect())
}

/// The sequences the published tables own (serial and identity columns,
/// `OWNED BY`), with their current values.
async fn sequence_values(client: &Client, publication: &str) -> Result<Vec<SequenceValue>, ChangesError> {
    let rows = client
        .query(
            "SELECT DISTINCT n.nspname || '.' || s.relname AS sequence, pg_catalog.pg_sequence_last_value(s.oid) AS last_value \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::regclass \
                  AND d.refobjid = format('%I.%I', pt.schemaname, pt.tablename)::regclass \
                  AND d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace \
             WHERE pt.pubname = $1 ORDER BY 1",
            &[&publication],
        )
        .await
        .map_err(ChangesError::query("reading the sequences"))?;
    Ok(rows
        .iter()
        .map(|row| SequenceValue {
            sequence: row.get("sequence"),
            last_value: row.get("last_value"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    /// A segment of slot `s` from slot position `start` with commits from
    /// `first` to `last`, captured under `fingerprint`.
    fn segment(start: u64, first: u64, last: u64, fingerprint: &str) -> SegmentMetadata {
        let time =
            |lsn: u64| DateTime::from_timestamp(1_765_000_000 + i64::try_from(lsn).unwrap(), 0).unwrap();
        SegmentMetadata {
            id: SegmentId::new(Lsn(first), time(last + 1)),
            version: "0".into(),
            captured_at: time(last + 1),
            slot: "s".into(),
            publication: "p".into(),
            start_lsn: Lsn(start),
            first_commit_lsn: Lsn(first),
            last_commit_lsn: Lsn(last),
            end_lsn: Lsn(last + 1),
            first_commit_time: time(first),
            last_commit_time: time(last),
            transactions: 1,
            changes: 1,
            messages: 3,
            tables: Vec::new(),
            published_tables: Vec::new(),
            catalog_fingerprint: fingerprint.into(),
            partition_files: None,
            partitions_rewritten: Vec::new(),
            sequences: Vec::new(),
            key_id: "k".into(),
            compression: crate::container::Compression::Zstd { level: 1 },
            chunk_size: 1,
            size_bytes: 1,
            checksum: String::new(),
            payload_bytes: 1,
            repository_id: None,
            metadata_mac: None,
        }
    }

    fn base(start: u64, fingerprint: Option<&str>) -> ChainBase {
        ChainBase {
            backup_id: "backup-b".into(),
            position: StreamPosition {
                slot: "s".into(),
                start_lsn: Lsn(start),
                snapshot_at: DateTime::from_timestamp(1_765_000_000, 0).unwrap(),
                snapshot: None,
                catalog_fingerprint: fingerprint.map(Into::into),
                partition_files: None,
            },
        }
    }

    #[test]
    fn a_schema_change_is_a_cut_against_the_previous_segment_or_the_base() {
        // Given a chain under fingerprint "f": a base at 10 and a segment after it
        let old_base = base(10, Some("f"));
        let previous = segment(10, 12, 20, "f");

        // When the next segment carries the same fingerprint, Then there is no cut
        let same = segment(21, 22, 30, "f");
        assert_eq!(judge_cut(&same, Some(&previous), Some(&old_base)), None);
        assert_eq!(judge_cut(&same, None, None), None);

        // When it carries another one, Then the cut names the segment, its
        // first commit, where the chain stood and both fingerprints
        let changed = segment(21, 22, 30, "g");
        let cut = judge_cut(&changed, Some(&previous), Some(&old_base)).unwrap();
        assert_eq!(cut.segment, changed.id);
        assert_eq!(cut.first_commit_lsn, Lsn(22));
        assert_eq!(cut.first_commit_time, changed.first_commit_time);
        assert_eq!(cut.previous_end, Lsn(21));
        assert_eq!(
            (cut.old_fingerprint.as_str(), cut.new_fingerprint.as_str()),
            ("f", "g")
        );
        assert_eq!(cut.compared_with, format!("segment {}", previous.id));
        // and without a base (or a segment) the other one decides alone
        assert!(judge_cut(&changed, Some(&previous), None).is_some());
        let cut = judge_cut(&changed, None, Some(&old_base)).unwrap();
        assert_eq!(
            (cut.previous_end, cut.compared_with.as_str()),
            (Lsn(10), "base backup backup-b")
        );

        // Given the base backup taken after that cut (at the cut segment's end)
        let new_base = base(31, Some("g"));
        // Then the next segment under "g" is no cut, though the segment
        // before the base was compared with "f"
        let next = segment(31, 32, 40, "g");
        assert_eq!(judge_cut(&next, Some(&changed), Some(&new_base)), None);

        // Given the base backup after the cut failed (the newest base is still
        // the old one): the next segment agrees with the one before it, but
        // the cut is still open
        let still = judge_cut(&next, Some(&changed), Some(&old_base)).unwrap();
        assert_eq!(
            (still.old_fingerprint.as_str(), still.previous_end),
            ("f", Lsn(31))
        );
        assert_eq!(still.compared_with, "base backup backup-b");

        // A base without a fingerprint (older backups), or of another slot, decides nothing
        assert_eq!(judge_cut(&next, None, Some(&base(10, None))), None);
        let mut other = base(10, Some("f"));
        other.position.slot = "t".into();
        assert_eq!(judge_cut(&next, None, Some(&other)), None);
    }

    fn file(root: &str, partition: &str, filenode: u32) -> PartitionFile {
        PartitionFile {
            root: root.into(),
            partition: partition.into(),
            filenode,
        }
    }

    fn reading(root: &str, partition: &str, filenode: u32, xmin: u32) -> PartitionReading {
        PartitionReading {
            file: file(root, partition, filenode),
            xmin,
        }
    }

    #[test]
    fn a_partition_whose_file_changed_without_a_captured_root_truncate_is_rewritten() {
        // Given partitions m_a and m_b of m recorded with files 100 and 200
        let recorded = vec![
            file("public.m", "public.m_a", 100),
            file("public.m", "public.m_b", 200),
        ];
        let none = BTreeMap::new();
        // When nothing changed, Then nothing was rewritten
        let same = [
            reading("public.m", "public.m_a", 100, 7),
            reading("public.m", "public.m_b", 200, 8),
        ];
        assert!(rewritten_partitions(&recorded, &same, &none).is_empty());

        // When m_a has a new file and no TRUNCATE was captured, Then m_a was truncated alone
        let alone = [
            reading("public.m", "public.m_a", 101, 9),
            reading("public.m", "public.m_b", 200, 8),
        ];
        assert_eq!(rewritten_partitions(&recorded, &alone, &none), vec!["public.m_a"]);

        // When both have new files from a captured TRUNCATE of m (transaction 9),
        // Then that explains them
        let by_root: BTreeMap<String, BTreeSet<u32>> = [("public.m".to_owned(), BTreeSet::from([9]))].into();
        let root = [
            reading("public.m", "public.m_a", 101, 9),
            reading("public.m", "public.m_b", 201, 9),
        ];
        assert!(rewritten_partitions(&recorded, &root, &by_root).is_empty());

        // When m_a was truncated alone (transaction 12) after that TRUNCATE of m,
        // Then the root's TRUNCATE does not explain it
        let after = [
            reading("public.m", "public.m_a", 102, 12),
            reading("public.m", "public.m_b", 201, 9),
        ];
        assert_eq!(
            rewritten_partitions(&recorded, &after, &by_root),
            vec!["public.m_a"]
        );

        // A TRUNCATE of another table in the same transaction explains nothing
        let other: BTreeMap<String, BTreeSet<u32>> =
            [("public.plain".to_owned(), BTreeSet::from([9]))].into();
        assert_eq!(
            rewritten_partitions(&recorded, &root, &other),
            vec!["public.m_a", "public.m_b"]
        );

        // A partition new since the record (the fingerprint's business) is no rewrite
        let added = [reading("public.m", "public.m_c", 300, 13)];
        assert!(rewritten_partitions(&recorded, &added, &none).is_empty());
    }

    #[test]
    fn a_partition_truncated_alone_cuts_the_chain_until_a_base_backup_follows() {
        // Given a base at 10 and a segment after it, both under fingerprint "f"
        let old_base = base(10, Some("f"));
        let previous = segment(10, 12, 20, "f");
        // When the next segment found m_a rewritten
        let mut truncated = segment(21, 22, 30, "f");
        truncated.partitions_rewritten = vec!["public.m_a".into()];
        let cut = judge_cut(&truncated, Some(&previous), Some(&old_base)).unwrap();
        // Then it is a cut naming the partition, after the previous segment
        assert_eq!(cut.partitions, vec!["public.m_a"]);
        assert!(
            cut.reason
                .contains("partition public.m_a was truncated on its own"),
            "{}",
            cut.reason
        );
        assert_eq!(cut.previous_end, Lsn(21));
        assert_eq!(cut.compared_with, format!("segment {}", previous.id));
        assert_eq!(cut.old_fingerprint, cut.new_fingerprint);

        // Given the base backup after it failed, When the next segment is clean,
        // Then the cut is still open
        let next = segment(31, 32, 40, "f");
        let open = judge_cut(&next, Some(&truncated), Some(&old_base)).unwrap();
        assert_eq!(open.partitions, vec!["public.m_a"]);
        assert_eq!(open.previous_end, Lsn(21));
        assert!(
            open.reason.contains("no base backup was taken since"),
            "{}",
            open.reason
        );
        // Given a base taken after it, Then there is none
        assert_eq!(
            judge_cut(&next, Some(&truncated), Some(&base(31, Some("f")))),
            None
        );
    }

    #[test]
    fn the_partition_files_are_compared_with_the_segment_before_or_else_the_base() {
        let mut previous = segment(10, 12, 20, "f");
        previous.partition_files = Some(vec![file("public.m", "public.m_a", 100)]);
        let mut newer_base = base(21, Some("f"));
        newer_base.position.partition_files = Some(vec![file("public.m", "public.m_a", 101)]);
        let files =
            |reference: Option<StorageReference<'_>>| reference.and_then(|r| r.files()).map(<[_]>::to_vec);
        // The segment before, when no base starts after it
        assert_eq!(
            files(StorageReference::choose(
                "s",
                Some(&previous),
                Some(&base(10, Some("f")))
            )),
            previous.partition_files
        );
        assert_eq!(
            files(StorageReference::choose("s", Some(&previous), None)),
            previous.partition_files
        );
        // The base, when it starts at or after the segment's end (or there is none)
        assert_eq!(
            files(StorageReference::choose("s", Some(&previous), Some(&newer_base))),
            newer_base.position.partition_files
        );
        assert_eq!(
            files(StorageReference::choose("s", None, Some(&newer_base))),
            newer_base.position.partition_files
        );
        // Nothing of another slot; an older record without files decides nothing
        assert!(StorageReference::choose("t", Some(&previous), Some(&newer_base)).is_none());
        assert_eq!(
            files(StorageReference::choose("s", None, Some(&base(10, Some("f"))))),
            None
        );
    }

    #[test]
    fn a_lost_slot_breaks_the_chain_from_its_confirmed_position() {
        // Given a slot the server invalidated
        let error = judge_slot(
            "pgbackup_pitr",
            lsn("0/1A2B3C8"),
            lsn("0/9000000"),
            Some("lost".into()),
            "64MB".into(),
        )
        .unwrap_err();
        // Then the error names where the chain breaks and what to do
        let text = error.to_string();
        assert!(matches!(&error, ChangesError::ChainBroken { from, .. } if *from == lsn("0/1A2B3C8")));
        assert!(
            text.contains("the change chain is broken from LSN 0/1A2B3C8"),
            "{text}"
        );
        assert!(
            text.contains("Take a base backup (`backupctl create`") && text.contains("recreates the slot"),
            "{text}"
        );
    }

    #[test]
    fn an_unlimited_keep_size_and_an_unreserved_slot_are_warned_about() {
        let health = judge_slot(
            "s",
            lsn("0/1000"),
            lsn("1/0"),
            Some("reserved".into()),
            "-1".into(),
        )
        .unwrap();
        assert_eq!(health.lag_bytes, (1 << 32) - 0x1000);
        assert_eq!(health.warnings.len(), 1);
        assert!(health.warnings[0].contains("max_slot_wal_keep_size is unlimited"));
        let behind = judge_slot(
            "s",
            lsn("0/1000"),
            lsn("0/1000"),
            Some("unreserved".into()),
            "1GB".into(),
        )
        .unwrap();
        assert_eq!(behind.lag_bytes, 0);
        assert!(
            behind.warnings[0].contains("may invalidate it"),
            "{:?}",
            behind.warnings
        );
        let fine = judge_slot(
            "s",
            lsn("0/1000"),
            lsn("0/2000"),
            Some("reserved".into()),
            "1GB".into(),
        )
        .unwrap();
        assert!(fine.warnings.is_empty());
    }
}

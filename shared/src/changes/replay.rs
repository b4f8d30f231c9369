//! Replay: a base backup's tables brought forward to an instant by the
//! captured changes (`restore --at`, `docs/PITR.md`).
//!
//! [`plan_replay`] picks, from the segments' documents alone, the chain
//! that starts at the base's stream position and reaches past the instant:
//! continuous (each segment starts where the chain so far ends or before),
//! under one catalog fingerprint. [`replay`] then streams those segments
//! (each chunk authenticated before it is decrypted, one record in memory
//! at a time) and applies, in commit order, every transaction committed at
//! or after the base's position, up to the last one committed at or before
//! the instant.
//!
//! Idempotent, because the snapshot may already hold some of the first
//! transactions and segments may repeat each other (at-least-once
//! capture): an insert is an upsert by replica identity, an update finds
//! its row by the old key (or the new one when the key did not change) and
//! keeps the stored value of a column sent as unchanged TOAST, a delete of
//! a missing row does nothing, and a transaction whose commit LSN is not
//! past the last one applied is skipped. Values go to the server as text
//! parameters cast to the column's type (`$1::text::integer`), never into
//! the SQL text.
//!
//! Pipelined: a change's statement is sent without waiting for the
//! results of those before it (up to [`PIPELINE_DEPTH`] on their way), on
//! the same connection and transaction, so the server still executes
//! them one after the other in the order of the changes; only what needs
//! a result before the next statement can be chosen waits for everything
//! sent (see [`Applier::update`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Statement};

use super::pgoutput::{Message, OldTuple, Relation, Tuple, Value};
use super::segment::{SegmentMetadata, SequenceValue, read_segment};
use super::{ChangesError, Lsn, XidSnapshot};
use crate::keyring::Keyring;
use crate::postgres::schema::{QualifiedName, quote_ident};
use crate::storage::BackupStore;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Changes(#[from] ChangesError),
    #[error(
        "the change chain has a gap: no stored segment holds the changes from LSN {from} to {to} (a segment is missing or a capture was lost), so the database cannot be brought past {from}; choose an instant before the gap or a base backup taken after it"
    )]
    Gap { from: Lsn, to: Lsn },
    #[error(
        "the captured changes do not reach {instant}: {reached}. Run `backupctl pitr capture` (or wait for the next capture) and try again, or choose an earlier instant"
    )]
    NotReached { instant: String, reached: String },
    #[error(
        "the published tables' schema changed at segment {segment} (first commit {at}): changes past that point cannot be replayed onto the base backup (DDL is not captured); choose an instant before {at} or a base backup taken after it"
    )]
    SchemaChanged { segment: String, at: String },
    #[error(
        "the published tables' schema changed between the base backup {base} and change segment {segment} (first commit {at}): the segment's changes cannot be replayed onto that base (DDL is not captured); choose a base backup taken after {at}"
    )]
    SchemaChangedSinceBase {
        base: String,
        segment: String,
        at: String,
    },
    #[error(
        "partition {partitions} was truncated on its own (or rewritten: VACUUM FULL, CLUSTER) during change segment {segment} (first commit {at}): PostgreSQL does not publish a TRUNCATE of one partition, so changes past that point cannot be replayed onto the base backup; choose an instant before {at} or a base backup taken after it"
    )]
    PartitionTruncated {
        segment: String,
        at: String,
        partitions: String,
    },
    #[error("table {table} cannot be replayed: {reason}")]
    Unsupported { table: String, reason: String },
    #[error("PostgreSQL failed while {what} in table {table} (change at LSN {lsn})")]
    Apply {
        what: &'static str,
        table: String,
        lsn: Lsn,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL failed while {what}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The segments to read, in order, and the bounds of what is applied.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The base backup's stream position: earlier commits are in the base.
    pub start: Lsn,
    /// Apply commits up to this instant (inclusive).
    pub until: DateTime<Utc>,
    pub segments: Vec<SegmentMetadata>,
    /// The base's snapshot: its transactions are skipped exactly. `None`
    /// (an older base): every transaction from `start` on is replayed,
    /// which converges for keyed tables only.
    pub base_snapshot: Option<XidSnapshot>,
}

/// What a replay applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Segments read.
    pub segments: usize,
    /// Transactions applied (those of the chosen tables that changed them).
    pub transactions: u64,
    /// Row changes applied (inserts, updates, deletes; a truncate counts once).
    pub changes: u64,
    /// Transactions read again (repeated by a segment, or already in the base).
    pub skipped_transactions: u64,
    /// Updates whose row was not there and could not be made whole (an
    /// unchanged TOAST column): only expected in the overlap with the base.
    pub missing_rows: u64,
    /// The last transaction applied: its commit time and LSN. `None`: no
    /// transaction committed between the base and the instant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached_lsn: Option<Lsn>,
    /// Sequences set from the last segment read.
    pub sequences: usize,
    /// The values the last segment read recorded for the sequences the
    /// published tables own; [`set_sequences`] applies them once the
    /// restore has compared its tables with the base backup.
    #[serde(skip)]
    pub sequence_values: Vec<SequenceValue>,
    pub duration_ms: u64,
}

fn shown(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Chooses the chain of segments that carries a base backup taken at
/// stream position `start` to `until`, from the documents alone (nothing is
/// read from the segments themselves): refuses a gap, a change of the
/// published tables' schema, and a chain that does not yet reach past the
/// instant.
///
/// `base` names the base backup and the catalog fingerprint it recorded:
/// the chain's segments must all carry that fingerprint (a schema change
/// between the backup and the first segment is a cut too). Without one
/// (an older base), the chain's first segment sets it.
pub fn plan_replay(
    segments: &[SegmentMetadata],
    start: Lsn,
    until: DateTime<Utc>,
    base: Option<(&str, &str)>,
) -> Result<ReplayPlan, ReplayError> {
    let mut ordered: Vec<&SegmentMetadata> = segments.iter().collect();
    ordered.sort_by(|a, b| a.id.cmp(&b.id));
    let mut covered = start;
    let mut chain: Vec<SegmentMetadata> = Vec::new();
    let mut reached = false;
    for segment in ordered {
        // Wholly before the base, or repeating what the chain already has.
        if segment.end_lsn <= covered {
            continue;
        }
        if segment.start_lsn > covered {
            return Err(ReplayError::Gap {
                from: covered,
                to: segment.start_lsn,
            });
        }
        // Everything committed up to the instant is in the chain so far:
        // this segment continues it with a commit past the instant (replay
        // would stop at its first transaction). Its schema does not matter.
        if segment.first_commit_time > until {
            reached = true;
            break;
        }
        if let Some((name, fingerprint)) = base
            && fingerprint != segment.catalog_fingerprint
        {
            return Err(if chain.is_empty() {
                ReplayError::SchemaChangedSinceBase {
                    base: name.to_owned(),
                    segment: segment.id.to_string(),
                    at: shown(segment.first_commit_time),
                }
            } else {
                ReplayError::SchemaChanged {
                    segment: segment.id.to_string(),
                    at: shown(segment.first_commit_time),
                }
            });
        }
        if let Some(first) = chain.first()
            && first.catalog_fingerprint != segment.catalog_fingerprint
        {
            return Err(ReplayError::SchemaChanged {
                segment: segment.id.to_string(),
                at: shown(segment.first_commit_time),
            });
        }
        // Capture found a partition's file changed without a captured
        // TRUNCATE of its root: its rows vanished somewhere in (or just
        // before) this segment, unseen by replay.
        if !segment.partitions_rewritten.is_empty() {
            return Err(ReplayError::PartitionTruncated {
                segment: segment.id.to_string(),
                at: shown(segment.first_commit_time),
                partitions: segment.partitions_rewritten.join(", "),
            });
        }
        covered = segment.end_lsn;
        // Proof that every commit up to the instant is in the chain: one
        // committed after it.
        reached = segment.last_commit_time > until;
        chain.push(segment.clone());
        if reached {
            break;
        }
    }
    if !reached {
        return Err(ReplayError::NotReached {
            instant: shown(until),
            reached: chain.last().map_or_else(
                || format!("no change was captured after the base backup (stream position {start})"),
                |last| format!("the last captured commit is at {}", shown(last.last_commit_time)),
            ),
        });
    }
    Ok(ReplayPlan {
        start,
        until,
        segments: chain,
        base_snapshot: None,
    })
}

/// Applies `plan` through `client` (the restore's transaction), to the
/// tables in `tables` only (`schema`, `name`).
pub async fn replay<C: GenericClient + Sync>(
    client: &C,
    store: &dyn BackupStore,
    keyring: &Keyring,
    plan: &ReplayPlan,
    tables: &BTreeSet<QualifiedName>,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let mut applier = Applier {
        client,
        tables,
        shapes: HashMap::new(),
        statements: HashMap::new(),
        missing_rows: 0,
        exact: plan.base_snapshot.is_some(),
        in_flight: VecDeque::new(),
    };
    let mut report = ReplayReport::default();
    let outcome = replay_segments(&mut applier, store, keyring, plan, &mut report).await;
    // Whatever stopped the replay, the statements sent before it are
    // earlier changes: the first of them that failed is the error to name
    // (a statement's own failure already left nothing in flight).
    applier.flush().await?;
    outcome?;
    report.missing_rows = applier.missing_rows;
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        transactions = report.transactions, changes = report.changes, skipped = report.skipped_transactions,
        reached = ?report.reached_time, ms = report.duration_ms, "changes replayed"
    );
    Ok(report)
}

/// Reads the plan's segments and hands each change to be applied to
/// `applier` (which may still have some on their way when this returns).
async fn replay_segments<C: GenericClient + Sync>(
    applier: &mut Applier<'_, C>,
    store: &dyn BackupStore,
    keyring: &Keyring,
    plan: &ReplayPlan,
    report: &mut ReplayReport,
) -> Result<(), ReplayError> {
    let mut last_applied: Option<Lsn> = None;
    let mut sequences_from: Option<&SegmentMetadata> = None;
    // Every segment describes its tables before their first change.
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    'segments: for metadata in &plan.segments {
        report.segments += 1;
        sequences_from = Some(metadata);
        let mut changes = read_segment(store, keyring, metadata).await?;
        // Whether the open transaction's changes are applied.
        let mut applying = false;
        let mut changed = false;
        while let Some(record) = changes.next().await? {
            match &record.message {
                Message::Begin(begin) => {
                    let at = begin.commit_time.to_utc().unwrap_or(DateTime::<Utc>::MAX_UTC);
                    if at > plan.until {
                        break 'segments;
                    }
                    applying = begin.final_lsn >= plan.start
                        && last_applied.is_none_or(|last| begin.final_lsn > last)
                        && !plan
                            .base_snapshot
                            .as_ref()
                            .is_some_and(|snapshot| snapshot.sees(begin.xid));
                    changed = false;
                    if !applying {
                        report.skipped_transactions += 1;
                    }
                }
                Message::Commit(commit) => {
                    if applying {
                        last_applied = Some(commit.commit_lsn);
                        report.reached_lsn = Some(commit.commit_lsn);
                        report.reached_time = commit.commit_time.to_utc();
                        if changed {
                            report.transactions += 1;
                        }
                    }
                    applying = false;
                }
                Message::Relation(relation) => {
                    relations.insert(relation.oid, relation.clone());
                }
                Message::Type(_) | Message::Origin(_) => {}
                message => {
                    if applying && applier.apply(record.lsn, message, &relations).await? {
                        report.changes += 1;
                        changed = true;
                    }
                }
            }
        }
    }
    if let Some(metadata) = sequences_from.filter(|_| report.reached_lsn.is_some()) {
        report.sequence_values = metadata.sequences.clone();
    }
    Ok(())
}

/// A table as the changes describe it, with the target's column types.
struct Shape {
    relation: Relation,
    name: QualifiedName,
    /// `format_type` of each relation column in the target, in the
    /// relation's column order.
    types: Vec<String>,
    /// Positions of the replica identity's columns (all of them with
    /// `REPLICA IDENTITY FULL`).
    key: Vec<usize>,
    /// `REPLICA IDENTITY FULL`: no unique key; a row is found by all its
    /// columns, one row per change (duplicates are alike), and an insert
    /// is a plain insert.
    full: bool,
    /// Per column: whether its type has an `=` of its own (else, with
    /// `REPLICA IDENTITY FULL`, it is compared in its text form).
    comparable: Vec<bool>,
    /// The target is a partitioned table (changes published through the
    /// root): statements reach its partitions (no `ONLY`).
    partitioned: bool,
}

impl Shape {
    fn only(&self) -> &'static str {
        if self.partitioned { "" } else { "ONLY " }
    }
}

#[derive(Hash, PartialEq, Eq)]
enum StatementKind {
    Upsert,
    /// An update that sets the columns whose flag is true.
    Update(Vec<bool>),
    /// An update of every column that changes the key: the row at the old
    /// key moves, or, when there is none, the new row is inserted (what
    /// an update and then, had it found no row, an upsert did).
    Move,
    Delete,
}

/// How many changes' statements may be sent ahead of their results. One
/// round trip per change was the replay's whole cost (the server's work
/// for a keyed row is a few tens of microseconds, a round trip from a
/// Lambda to its database a few hundred): a hundred or so in flight
/// hide the round trip, while bounding what is held for them here (each
/// keeps its row's values until its result is read) and what the server
/// has buffered for a connection whose results are not being read.
const PIPELINE_DEPTH: usize = 128;

/// A statement sent to the server, not yet answered: resolves to whether
/// it was an update that found no row (counted as a missing row).
type InFlight<'c> = Pin<Box<dyn Future<Output = Result<bool, ReplayError>> + Send + 'c>>;

struct Applier<'c, C> {
    client: &'c C,
    tables: &'c BTreeSet<QualifiedName>,
    /// By relation oid; `None`: not a chosen table.
    shapes: HashMap<u32, Option<Arc<Shape>>>,
    statements: HashMap<(u32, StatementKind), Statement>,
    missing_rows: u64,
    /// The base's own transactions are skipped exactly (its snapshot is
    /// known), which tables without a unique key need.
    exact: bool,
    /// Statements sent, in the order of their changes, results not read.
    in_flight: VecDeque<InFlight<'c>>,
}

impl<'c, C: GenericClient + Sync> Applier<'c, C> {
    /// Applies one change; `false` when it concerns no chosen table.
    async fn apply(
        &mut self,
        lsn: Lsn,
        message: &Message,
        relations: &HashMap<u32, Relation>,
    ) -> Result<bool, ReplayError> {
        match message {
            Message::Insert(insert) => {
                let Some(shape) = self.shape(insert.relation, relations, lsn).await? else {
                    return Ok(false);
                };
                self.upsert(&shape, &insert.new, lsn, "inserting a row").await?;
            }
            Message::Update(update) => {
                let Some(shape) = self.shape(update.relation, relations, lsn).await? else {
                    return Ok(false);
                };
                self.update(&shape, update.old.as_ref(), &update.new, lsn).await?;
            }
            Message::Delete(delete) => {
                let Some(shape) = self.shape(delete.relation, relations, lsn).await? else {
                    return Ok(false);
                };
                let key = key_params(&shape, delete.old.tuple(), lsn)?;
                let statement = self.statement(&shape, StatementKind::Delete, lsn).await?;
                self.send(statement, key, &shape, "deleting a row", lsn, false)
                    .await?;
            }
            Message::Truncate(truncate) => {
                let mut names = Vec::new();
                for &oid in &truncate.relations {
                    if let Some(shape) = self.shape(oid, relations, lsn).await? {
                        names.push(format!("{}{}", shape.only(), shape.name.quoted()));
                    }
                }
                if names.is_empty() {
                    return Ok(false);
                }
                // Never CASCADE: only the tables the source truncated (the
                // message lists those a cascade reached too).
                let sql = format!(
                    "TRUNCATE {}{}",
                    names.join(", "),
                    if truncate.restart_identity {
                        " RESTART IDENTITY"
                    } else {
                        ""
                    }
                );
                // Sent ahead like any change: nothing after it depends on
                // its result, and the server runs it after every statement
                // sent before it (and before any sent after).
                let client = self.client;
                let table = names.join(", ");
                self.send_future(Box::pin(async move {
                    client
                        .batch_execute(&sql)
                        .await
                        .map_err(|source| ReplayError::Apply {
                            what: "truncating",
                            table,
                            lsn,
                            source,
                        })?;
                    Ok(false)
                }))
                .await?;
            }
            Message::Begin(_)
            | Message::Commit(_)
            | Message::Relation(_)
            | Message::Type(_)
            | Message::Origin(_) => {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn upsert(
        &mut self,
        shape: &Arc<Shape>,
        new: &Tuple,
        lsn: Lsn,
        what: &'static str,
    ) -> Result<(), ReplayError> {
        let params = full_params(shape, new, lsn)?;
        let statement = self.statement(shape, StatementKind::Upsert, lsn).await?;
        self.send(statement, params, shape, what, lsn, false).await
    }

    /// An update, as statements that need no earlier result, so none of
    /// them waits for those sent before it:
    ///
    /// * all columns sent, key unchanged: the row at the key takes the
    ///   new values whether it is there or not (not there: deleted later
    ///   in the base's history, or never restored; the row as it was then
    ///   is what later changes in the chain carry on from), so one
    ///   `INSERT … ON CONFLICT (key) DO UPDATE`, the insert's statement;
    /// * all columns sent, key changed: the same choice, made by the
    ///   server in one statement ([`StatementKind::Move`]): the row at
    ///   the old key moves, or, when there is none, the new row is
    ///   inserted;
    /// * some column sent as unchanged TOAST, or a table without a key
    ///   (`REPLICA IDENTITY FULL`: no `ON CONFLICT` possible): an
    ///   `UPDATE`; a row it does not find cannot be made whole and is
    ///   only counted, when its result comes back.
    async fn update(
        &mut self,
        shape: &Arc<Shape>,
        old: Option<&OldTuple>,
        new: &Tuple,
        lsn: Lsn,
    ) -> Result<(), ReplayError> {
        let old_key = match old {
            Some(old) => key_params(shape, old.tuple(), lsn)?,
            None if shape.full => {
                return Err(ChangesError::Sequence(format!(
                    "an update of {} at LSN {lsn} without the old row, which REPLICA IDENTITY FULL sends",
                    shape.name.display()
                ))
                .into());
            }
            None => key_params(shape, new, lsn)?,
        };
        let set: Vec<bool> = new.iter().map(|value| *value != Value::UnchangedToast).collect();
        let whole = set.iter().all(|set| *set);
        // (A table without a key holds no row "at the new key" to make room for.)
        let new_key = if shape.full {
            None
        } else {
            Some(key_params(shape, new, lsn)?)
        };
        let moved = new_key.filter(|new_key| *new_key != old_key);
        if whole && !shape.full && moved.is_none() {
            return self.upsert(shape, new, lsn, "updating a row").await;
        }
        if let Some(new_key) = moved.as_ref() {
            // The row the key moves to exists only where the base already
            // holds later history (the overlap): that history is replayed
            // again after this, so the row goes now, and the move cannot
            // fail on the key.
            let statement = self.statement(shape, StatementKind::Delete, lsn).await?;
            self.send(
                statement,
                new_key.clone(),
                shape,
                "making room for a changed key",
                lsn,
                false,
            )
            .await?;
        }
        let mut params: Vec<Option<String>> = Vec::new();
        for (value, _) in new.iter().zip(&set).filter(|(_, set)| **set) {
            params.push(text_value(value, shape, lsn)?);
        }
        params.extend(old_key);
        if whole && !shape.full {
            let statement = self.statement(shape, StatementKind::Move, lsn).await?;
            return self
                .send(
                    statement,
                    params,
                    shape,
                    "moving a row to its new key",
                    lsn,
                    false,
                )
                .await;
        }
        let statement = self.statement(shape, StatementKind::Update(set), lsn).await?;
        self.send(statement, params, shape, "updating a row", lsn, true)
            .await
    }

    /// Sends `statement` with `params` for the change at `lsn` without
    /// waiting for its result (see [`PIPELINE_DEPTH`]). `counts_missing`:
    /// an update whose row, when it is not found, is a missing row.
    async fn send(
        &mut self,
        statement: Statement,
        params: Vec<Option<String>>,
        shape: &Arc<Shape>,
        what: &'static str,
        lsn: Lsn,
        counts_missing: bool,
    ) -> Result<(), ReplayError> {
        let client = self.client;
        let shape = shape.clone();
        self.send_future(Box::pin(async move {
            let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            let rows = client
                .execute(&statement, &params)
                .await
                .map_err(|source| ReplayError::Apply {
                    what,
                    table: shape.name.display(),
                    lsn,
                    source,
                })?;
            let missing = counts_missing && rows == 0;
            if missing {
                tracing::debug!(table = %shape.name, %lsn, "an update found no row to change");
            }
            Ok(missing)
        }))
        .await
    }

    /// Puts a statement's future in flight: polled once here, which sends
    /// its request (tokio-postgres sends requests in the order their
    /// futures are first polled), so requests leave in the order of the
    /// changes; its result is read in that order too.
    async fn send_future(&mut self, mut future: InFlight<'c>) -> Result<(), ReplayError> {
        if self.in_flight.len() >= PIPELINE_DEPTH {
            self.settle_first().await?;
        }
        let polled = future.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        match polled {
            Poll::Pending => self.in_flight.push_back(future),
            // Done at once (a value it could not encode, a closed
            // connection): its error comes after those sent before it.
            Poll::Ready(result) => self.in_flight.push_back(Box::pin(std::future::ready(result))),
        }
        Ok(())
    }

    /// Reads the result of the oldest statement in flight. On an error,
    /// those sent after it are dropped unread: the failed statement has
    /// aborted the restore's transaction, so none of them applies, and
    /// the error names the change that failed.
    async fn settle_first(&mut self) -> Result<(), ReplayError> {
        let Some(first) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match first.await {
            Ok(missing) => {
                self.missing_rows += u64::from(missing);
                Ok(())
            }
            Err(error) => {
                self.in_flight.clear();
                Err(error)
            }
        }
    }

    /// Waits for every statement in flight: before a statement of this
    /// applier's own (a prepare, a catalog query) is awaited, whose
    /// response comes after theirs, and at the end of the replay.
    async fn flush(&mut self) -> Result<(), ReplayError> {
        while !self.in_flight.is_empty() {
            self.settle_first().await?;
        }
        Ok(())
    }

    async fn statement(
        &mut self,
        shape: &Shape,
        kind: StatementKind,
        lsn: Lsn,
    ) -> Result<Statement, ReplayError> {
        let cache_key = (shape.relation.oid, kind);
        if let Some(statement) = self.statements.get(&cache_key) {
            return Ok(statement.clone());
        }
        let sql = statement_sql(shape, &cache_key.1);
        // Awaited alone, so after everything in flight: its response comes
        // after theirs, which must be read first (the connection holds
        // back a response its future does not read), and a failure among
        // them must be the error named, not this prepare's in the aborted
        // transaction. Once per table and kind of statement.
        self.flush().await?;
        let statement = self
            .client
            .prepare(&sql)
            .await
            .map_err(|source| ReplayError::Apply {
                what: "preparing a change's statement",
                table: shape.name.display(),
                lsn,
                source,
            })?;
        self.statements.insert(cache_key, statement.clone());
        Ok(statement)
    }

    /// The chosen table `oid` names, as this segment describes it; `None`
    /// for a table not replayed here.
    async fn shape(
        &mut self,
        oid: u32,
        relations: &HashMap<u32, Relation>,
        lsn: Lsn,
    ) -> Result<Option<Arc<Shape>>, ReplayError> {
        let Some(described) = relations.get(&oid).cloned() else {
            return Err(ChangesError::Sequence(format!(
                "a change to relation {oid} before its description (at LSN {lsn})"
            ))
            .into());
        };
        if let Some(known) = self.shapes.get(&oid) {
            match known {
                None => return Ok(None),
                // Each segment describes its tables again; the same shape
                // keeps its prepared statements.
                Some(shape) if shape.relation == described => return Ok(Some(shape.clone())),
                Some(_) => {
                    self.statements
                        .retain(|(statement_oid, _), _| *statement_oid != oid);
                }
            }
        }
        let name = QualifiedName::new(described.schema.clone(), described.name.clone());
        if !self.tables.contains(&name) {
            self.shapes.insert(oid, None);
            return Ok(None);
        }
        let table = name.display();
        let unsupported = |reason: String| ReplayError::Unsupported {
            table: table.clone(),
            reason,
        };
        let key: Vec<usize> = described
            .columns
            .iter()
            .enumerate()
            .filter(|(_, column)| column.key)
            .map(|(at, _)| at)
            .collect();
        let full = described.replica_identity == b'f';
        if key.is_empty() || !matches!(described.replica_identity, b'd' | b'i' | b'f') {
            return Err(unsupported(format!(
                "its replica identity is '{}' without key columns; only tables with a primary key, a replica identity index or REPLICA IDENTITY FULL are replayed",
                char::from(described.replica_identity)
            )));
        }
        if full && !self.exact {
            return Err(unsupported(
                "it has REPLICA IDENTITY FULL (no unique key), and the base backup does not record its snapshot, so the changes it already holds cannot be told apart; use a base backup taken by this version".to_owned(),
            ));
        }
        // Awaited alone, as a prepare is (see `statement`); once per table
        // and segment.
        self.flush().await?;
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_operator o WHERE o.oprname = '=' \
                                AND o.oprleft = a.atttypid AND o.oprright = a.atttypid) AS comparable, \
                        (SELECT c.relkind = 'p' FROM pg_catalog.pg_class c WHERE c.oid = a.attrelid) AS partitioned \
                 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&name.quoted()],
            )
            .await
            .map_err(|source| ReplayError::Query {
                what: "reading a replayed table's columns",
                source,
            })?;
        let partitioned = rows
            .first()
            .is_some_and(|row| row.get::<_, Option<bool>>(3) == Some(true));
        let target: HashMap<String, (String, bool)> = rows
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect();
        let mut types = Vec::with_capacity(described.columns.len());
        let mut comparable = Vec::with_capacity(described.columns.len());
        for column in &described.columns {
            let Some((kind, equal)) = target.get(&column.name) else {
                return Err(unsupported(format!(
                    "the restored table has no column {:?}, which the captured changes have (its schema changed since the base backup)",
                    column.name
                )));
            };
            types.push(kind.clone());
            comparable.push(*equal);
        }
        let shape = Arc::new(Shape {
            relation: described,
            name,
            types,
            key,
            full,
            comparable,
            partitioned,
        });
        self.shapes.insert(oid, Some(shape.clone()));
        Ok(Some(shape))
    }
}

fn statement_sql(shape: &Shape, kind: &StatementKind) -> String {
    let columns = &shape.relation.columns;
    let param = |n: usize, at: usize| format!("${n}::text::{}", shape.types[at]);
    let column = |at: usize| quote_ident(&columns[at].name);
    let table = format!("{}{}", shape.only(), shape.name.quoted());
    let key_condition = |first: usize| {
        let condition = shape
            .key
            .iter()
            .enumerate()
            .map(|(i, &at)| {
                if !shape.full {
                    format!("{} = {}", column(at), param(first + i, at))
                } else if shape.comparable[at] {
                    format!("{} IS NOT DISTINCT FROM {}", column(at), param(first + i, at))
                } else {
                    format!("{}::text IS NOT DISTINCT FROM ${}::text", column(at), first + i)
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        if shape.full {
            // One row of those alike: duplicates are indistinguishable, and
            // each change in the source touched exactly one.
            let row = if shape.partitioned {
                "(tableoid, ctid)"
            } else {
                "ctid"
            };
            format!("{row} = (SELECT {row} FROM {table} WHERE {condition} LIMIT 1)")
        } else {
            condition
        }
    };
    match kind {
        StatementKind::Upsert => {
            let names: Vec<String> = (0..columns.len()).map(column).collect();
            let values: Vec<String> = (0..columns.len()).map(|at| param(at + 1, at)).collect();
            let key: Vec<String> = shape.key.iter().map(|&at| column(at)).collect();
            if shape.full {
                return format!(
                    "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
                    shape.name.quoted(),
                    names.join(", "),
                    values.join(", ")
                );
            }
            let action = conflict_action(shape);
            format!(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT ({}) DO {action}",
                shape.name.quoted(),
                names.join(", "),
                values.join(", "),
                key.join(", ")
            )
        }
        StatementKind::Update(set) => {
            let mut n = 0;
            let assignments: Vec<String> = set
                .iter()
                .enumerate()
                .filter(|(_, set)| **set)
                .map(|(at, _)| {
                    n += 1;
                    format!("{} = {}", column(at), param(n, at))
                })
                .collect();
            format!(
                "UPDATE {table} SET {} WHERE {}",
                assignments.join(", "),
                key_condition(n + 1)
            )
        }
        StatementKind::Move => {
            // One statement, so that nothing waits for the update's row
            // count: a data-modifying WITH runs its update whether or not
            // the insert reads it, and the insert sees the rows it
            // returned, not the table it changed (the same snapshot).
            // Parameters: the new row, then the old key.
            let names: Vec<String> = (0..columns.len()).map(column).collect();
            let values: Vec<String> = (0..columns.len()).map(|at| param(at + 1, at)).collect();
            let assignments: Vec<String> = (0..columns.len())
                .map(|at| format!("{} = {}", column(at), param(at + 1, at)))
                .collect();
            format!(
                "WITH moved AS (UPDATE {table} SET {} WHERE {} RETURNING 1) \
                 INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} WHERE NOT EXISTS (SELECT FROM moved) \
                 ON CONFLICT ({}) DO {}",
                assignments.join(", "),
                key_condition(columns.len() + 1),
                shape.name.quoted(),
                names.join(", "),
                values.join(", "),
                shape
                    .key
                    .iter()
                    .map(|&at| column(at))
                    .collect::<Vec<_>>()
                    .join(", "),
                conflict_action(shape),
            )
        }
        StatementKind::Delete => format!("DELETE FROM {table} WHERE {}", key_condition(1)),
    }
}

/// What an upsert does with the row already at its key: takes the new
/// row's other columns (nothing, when the key is every column).
fn conflict_action(shape: &Shape) -> String {
    let columns = &shape.relation.columns;
    let others: Vec<String> = (0..columns.len())
        .filter(|at| !shape.key.contains(at))
        .map(|at| format!("{0} = EXCLUDED.{0}", quote_ident(&columns[at].name)))
        .collect();
    if others.is_empty() {
        "NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", others.join(", "))
    }
}

fn text_value(value: &Value, shape: &Shape, lsn: Lsn) -> Result<Option<String>, ReplayError> {
    let damaged = |reason: &str| {
        ReplayError::Changes(ChangesError::Sequence(format!(
            "a change to {} at LSN {lsn} {reason}",
            shape.name.display()
        )))
    };
    match value {
        Value::Null => Ok(None),
        Value::Text(bytes) => String::from_utf8(bytes.clone())
            .map(Some)
            .map_err(|_| damaged("holds a value that is not UTF-8 text")),
        Value::Binary(_) => Err(damaged("holds a binary value, which capture never asks for")),
        Value::UnchangedToast => Err(damaged("lacks a value it needs (unchanged TOAST)")),
    }
}

fn full_params(shape: &Shape, tuple: &Tuple, lsn: Lsn) -> Result<Vec<Option<String>>, ReplayError> {
    if tuple.len() != shape.relation.columns.len() {
        return Err(column_count(shape, tuple, lsn));
    }
    tuple.iter().map(|value| text_value(value, shape, lsn)).collect()
}

fn key_params(shape: &Shape, tuple: &Tuple, lsn: Lsn) -> Result<Vec<Option<String>>, ReplayError> {
    if tuple.len() != shape.relation.columns.len() {
        return Err(column_count(shape, tuple, lsn));
    }
    shape
        .key
        .iter()
        .map(|&at| text_value(&tuple[at], shape, lsn))
        .collect()
}

fn column_count(shape: &Shape, tuple: &Tuple, lsn: Lsn) -> ReplayError {
    ReplayError::Changes(ChangesError::Sequence(format!(
        "a change to {} at LSN {lsn} has {} columns, its table {}",
        shape.name.display(),
        tuple.len(),
        shape.relation.columns.len()
    )))
}

/// Sets the sequences the chosen tables own to the values a segment
/// recorded (read after its changes, so at least what any replayed row was
/// given); how many were set.
pub async fn set_sequences<C: GenericClient + Sync>(
    client: &C,
    values: &[SequenceValue],
    tables: &BTreeSet<QualifiedName>,
) -> Result<usize, ReplayError> {
    let owners: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let mut set = 0;
    for sequence in values {
        let (Some(value), Some((schema, name))) = (sequence.last_value, sequence.sequence.split_once('.'))
        else {
            continue;
        };
        let rows = client
            .query(
                "SELECT pg_catalog.setval(s.oid, $3) FROM pg_catalog.pg_class s \
                 JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace \
                 WHERE n.nspname = $1 AND s.relname = $2 AND s.relkind = 'S' \
                   AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = s.oid \
                                 AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') \
                                 AND d.refobjid = ANY (SELECT pg_catalog.to_regclass(o) FROM unnest($4::text[]) AS o))",
                &[&schema, &name, &value, &owners],
            )
            .await
            .map_err(|source| ReplayError::Query {
                what: "setting a sequence from the captured values",
                source,
            })?;
        set += rows.len();
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::changes::SegmentId;
    use crate::container::Compression;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_765_000_000 + second, 0).unwrap()
    }

    /// A segment captured at `captured` from slot position `start` whose
    /// commits run from `first` to `last` (LSNs and seconds alike).
    fn segment(start: u64, first: u64, last: u64, captured: i64, fingerprint: &str) -> SegmentMetadata {
        let time = |lsn: u64| at(i64::try_from(lsn).unwrap());
        SegmentMetadata {
            id: SegmentId::new(Lsn(first), at(captured)),
            version: "0".into(),
            captured_at: at(captured),
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
            compression: Compression::Zstd { level: 1 },
            chunk_size: 1,
            size_bytes: 1,
            checksum: String::new(),
            payload_bytes: 1,
            repository_id: None,
            metadata_mac: None,
        }
    }

    fn ids(plan: &ReplayPlan) -> Vec<u64> {
        plan.segments.iter().map(|s| s.first_commit_lsn.0).collect()
    }

    #[test]
    fn the_chain_starts_at_the_base_skips_repeats_and_stops_past_the_instant() {
        // Given segments before the base, from it on, a repeat of one (a
        // capture killed before the slot advanced) and one past the instant
        let segments = vec![
            segment(0, 5, 9, 10, "f"),
            segment(10, 12, 20, 21, "f"),
            segment(21, 22, 30, 31, "f"),
            segment(21, 22, 35, 36, "f"),
            segment(36, 40, 50, 51, "f"),
            segment(51, 55, 60, 61, "f"),
        ];
        // When the chain from position 15 to the instant 45 is planned
        let plan = plan_replay(&segments, Lsn(15), at(45), None).unwrap();
        // Then it holds the segment the base falls in, both copies of the
        // repeated run, and the first segment that reaches past 45
        assert_eq!(ids(&plan), vec![12, 22, 22, 40]);
    }

    #[test]
    fn a_gap_a_schema_change_or_a_chain_short_of_the_instant_is_refused() {
        let whole = vec![segment(10, 12, 20, 21, "f"), segment(21, 22, 30, 31, "f")];
        // A missing run between 21 and 40
        let gap = vec![segment(10, 12, 20, 21, "f"), segment(40, 42, 50, 51, "f")];
        let error = plan_replay(&gap, Lsn(10), at(45), None).unwrap_err();
        assert!(
            matches!(
                error,
                ReplayError::Gap {
                    from: Lsn(21),
                    to: Lsn(40)
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("0/15 to 0/28"), "{error}");
        // A gap after the instant does not matter
        assert_eq!(ids(&plan_replay(&gap, Lsn(10), at(15), None).unwrap()), vec![12]);
        // A schema change is a cut
        let changed = vec![segment(10, 12, 20, 21, "f"), segment(21, 22, 30, 31, "g")];
        let error = plan_replay(&changed, Lsn(10), at(25), None).unwrap_err();
        assert!(matches!(error, ReplayError::SchemaChanged { .. }), "{error}");
        assert_eq!(
            ids(&plan_replay(&changed, Lsn(10), at(15), None).unwrap()),
            vec![12]
        );
        // An instant between the last segment before the cut and the first
        // commit after it is reached without crossing the cut
        assert_eq!(
            ids(&plan_replay(&changed, Lsn(10), at(21), None).unwrap()),
            vec![12]
        );
        // A schema change between the base backup and its first segment,
        // named with the base
        let error = plan_replay(&whole, Lsn(10), at(25), Some(("base-1", "g"))).unwrap_err();
        assert!(
            matches!(error, ReplayError::SchemaChangedSinceBase { .. })
                && error.to_string().contains("base-1"),
            "{error}"
        );
        let plan = plan_replay(&whole, Lsn(10), at(25), Some(("base-1", "f"))).unwrap();
        assert_eq!(ids(&plan), vec![12, 22]);
        // Nothing captured yet past the instant
        let error = plan_replay(&whole, Lsn(10), at(30), None).unwrap_err();
        assert!(matches!(error, ReplayError::NotReached { .. }), "{error}");
        let error = plan_replay(&whole, Lsn(31), at(40), None).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("no change was captured after the base"),
            "{error}"
        );
    }

    #[test]
    fn a_segment_in_which_a_partition_was_truncated_alone_is_a_cut() {
        // Given a chain whose second segment found partition m_a's file
        // changed without a captured TRUNCATE of m
        let mut cut = segment(21, 22, 30, 31, "f");
        cut.partitions_rewritten = vec!["public.m_a".into()];
        let chain = vec![segment(10, 12, 20, 21, "f"), cut, segment(31, 32, 40, 41, "f")];
        // When an instant past its first commit is planned from a base before it
        let error = plan_replay(&chain, Lsn(10), at(25), Some(("base-1", "f"))).unwrap_err();
        // Then replay refuses, naming the partition and the segment
        assert!(
            matches!(&error, ReplayError::PartitionTruncated { partitions, .. } if partitions == "public.m_a"),
            "{error}"
        );
        assert!(error.to_string().contains("choose an instant before"), "{error}");
        // while an instant before it is reached without crossing it
        assert_eq!(
            ids(&plan_replay(&chain, Lsn(10), at(21), Some(("base-1", "f"))).unwrap()),
            vec![12]
        );
        // and a base backup taken after it (at its end) replays the rest
        assert_eq!(
            ids(&plan_replay(&chain, Lsn(31), at(35), Some(("base-2", "f"))).unwrap()),
            vec![32]
        );
    }
}

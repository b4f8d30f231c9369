//! verify: quick (checksum), full (decrypt, authenticate, count rows),
//! deep (restore into a scratch database and compare digests, timing the
//! restore). The result is stored as the backup's verification record.

use std::time::Instant;

use chrono::Utc;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Finished, Notification, Operation, OperationError, Services, elapsed_ms};
use crate::checksum::sha256_of_stream;
use crate::container::{BackupReader, SectionKind};
use crate::drill::{self, Check, DrillReport};
use crate::metadata::{
    BackupMetadata, MetadataIntegrity, VerificationDepth, VerificationRecord, VerificationStatus,
};
use crate::metrics::{MetricSet, Unit};
use crate::postgres::{self, RestoreOptions, restore::read_schema};
use crate::repository::BackupSelector;
use crate::storage::StoredObject;

#[derive(Clone)]
pub struct VerifyRequest {
    pub selector: BackupSelector,
    pub depth: VerificationDepth,
    /// Server for deep verification (a database on it to connect to; a
    /// scratch database is created beside it and dropped afterwards).
    pub scratch_url: Option<String>,
    /// Deep only: the application's checks, run on the restored copy (a
    /// disaster-recovery drill). Empty: none.
    pub checks: Vec<Check>,
}

/// Shows the scratch server's URL without its password.
impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("selector", &self.selector)
            .field("depth", &self.depth)
            .field(
                "scratch_url",
                &self.scratch_url.as_deref().map(crate::config::redact_url),
            )
            .field("checks", &self.checks)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableCheck {
    pub table: String,
    pub expected_rows: u64,
    pub rows: u64,
    /// Deep only: the restored table re-exported to the same bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_matches: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub backup_id: String,
    pub depth: VerificationDepth,
    pub status: VerificationStatus,
    pub checks: Vec<String>,
    pub tables: Vec<TableCheck>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Deep with checks: the drill's measured RTO and each check's outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillReport>,
    /// How `before:` or `random` chose this backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    /// What this backup does not hold, accepted when it was taken.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accepted_schema_loss: Vec<crate::postgres::fidelity::Uncaptured>,
}

/// A check that failed: the backup is bad (as opposed to an operational
/// error such as unreachable storage, which is returned as `Err`).
struct Failed(String);

/// Verifies a backup and records the outcome. Returns `Ok` with a failed
/// status when the backup itself is bad.
pub async fn verify_backup(
    services: &Services,
    request: &VerifyRequest,
) -> Result<VerifyReport, OperationError> {
    let started = Instant::now();
    let selection = services.repository.select(&request.selector).await?;
    let metadata = selection.metadata;
    if request.depth == VerificationDepth::Deep && request.scratch_url.is_none() {
        return Err(OperationError::MissingScratchDatabase);
    }
    if request.depth != VerificationDepth::Deep && !request.checks.is_empty() {
        return Err(OperationError::ChecksNeedDeepVerification);
    }
    let mut report = VerifyReport {
        backup_id: metadata.id.to_string(),
        depth: request.depth,
        status: VerificationStatus::Passed,
        checks: Vec::new(),
        tables: Vec::new(),
        duration_ms: 0,
        restore_duration_ms: None,
        error: None,
        drill: None,
        selection: selection.explanation,
        accepted_schema_loss: metadata.accepted_schema_loss.clone(),
    };
    let outcome = run_checks(services, request, &metadata, &mut report).await;
    report.duration_ms = elapsed_ms(started);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(Failed(reason))) => {
            report.status = VerificationStatus::Failed;
            report.error = Some(reason);
        }
        Err(error) => {
            let message = error.chain();
            tracing::error!(target: super::OUTCOME_LOG, error = %message, "verification could not run");
            let mut finished = Finished::new(Operation::Verify);
            finished.backup_id = Some(metadata.id.to_string());
            finished.error = Some(message.clone());
            finished.details = json!({"depth": request.depth, "ran": false});
            finished.notification = Notification::Failure {
                message,
                context: json!({"operation": Operation::Verify, "backupId": metadata.id}),
            };
            services.report(finished).await;
            return Err(error);
        }
    }

    let record = VerificationRecord {
        status: report.status,
        depth: report.depth,
        verified_at: Utc::now(),
        duration_ms: report.duration_ms,
        restore_duration_ms: report.restore_duration_ms,
        error: report.error.clone(),
        drill: report.drill.clone(),
    };
    services
        .repository
        .save_verification(&metadata.id, &record)
        .await?;
    let passed = report.status == VerificationStatus::Passed;
    let mut metrics = MetricSet::new("verify")
        .with(
            if passed {
                "VerificationSuccess"
            } else {
                "VerificationFailure"
            },
            1.0,
            Unit::Count,
        )
        .with(
            "VerificationDurationMs",
            report.duration_ms as f64,
            Unit::Milliseconds,
        );
    if let Some(restore_ms) = report.restore_duration_ms {
        metrics = metrics.with("RestoreDurationMs", restore_ms as f64, Unit::Milliseconds);
    }
    let mut finished = Finished::new(Operation::Verify);
    finished.metrics = metrics;
    finished.backup_id = Some(metadata.id.to_string());
    finished.error = report.error.clone();
    finished.details = json!({"depth": report.depth, "restoreDurationMs": report.restore_duration_ms,
                              "selector": request.selector.to_string(), "selection": report.selection,
                              "drill": report.drill});
    finished.notification = if passed {
        Notification::Event {
            event: "backup_verified",
            payload: json!({"backupId": metadata.id, "depth": report.depth, "durationMs": report.duration_ms,
                            "restoreDurationMs": report.restore_duration_ms}),
        }
    } else {
        tracing::error!(target: super::OUTCOME_LOG, backup_id = %metadata.id, error = report.error.as_deref().unwrap_or(""), "backup failed verification");
        Notification::Failure {
            message: report
                .error
                .clone()
                .unwrap_or_else(|| "verification failed".into()),
            context: json!({"operation": Operation::Verify, "event": "backup_verification_failed", "backupId": metadata.id, "depth": report.depth}),
        }
    };
    services.report(finished).await;
    Ok(report)
}

async fn run_checks(
    services: &Services,
    request: &VerifyRequest,
    metadata: &BackupMetadata,
    report: &mut VerifyReport,
) -> Result<Result<(), Failed>, OperationError> {
    let store = services.repository.store().as_ref();
    let key = metadata.id.object_key();

    match metadata.metadata_integrity {
        MetadataIntegrity::Failed => {
            return Ok(Err(Failed(
                "the metadata document fails its MAC: it was altered after it was written".into(),
            )));
        }
        MetadataIntegrity::Authentic => report.checks.push("metadata MAC matches".into()),
        MetadataIntegrity::Unsigned => report
            .checks
            .push("metadata carries no MAC (written before metadata MACs)".into()),
        MetadataIntegrity::Unchecked => report
            .checks
            .push("metadata MAC not checked: no keyring is configured".into()),
        MetadataIntegrity::Misdated => {
            return Ok(Err(Failed(format!(
                "the metadata document was altered: {}",
                super::restore::misdated_reason(metadata)
            ))));
        }
        // The object's header tells a missing key from a foreign one (full depth).
        MetadataIntegrity::UnknownKey => report.checks.push(format!(
            "metadata MAC not checked: it names key id {}, which is not in the keyring",
            crate::keyring::ShownId::of(&metadata.key_id)
        )),
    }

    // quick: the stored bytes are the ones the metadata describes
    let object = match store.get(&key).await {
        Ok(object) => object,
        Err(e) if e.is_not_found() => return Ok(Err(Failed(format!("the backup object {key} is missing")))),
        Err(e) => return Err(e.into()),
    };
    let (checksum, size) =
        sha256_of_stream(object)
            .await
            .map_err(|source| crate::storage::StorageError::Io {
                operation: "read",
                key: key.clone(),
                source,
            })?;
    if size != metadata.size_bytes {
        return Ok(Err(Failed(format!(
            "object is {size} bytes, metadata says {}",
            metadata.size_bytes
        ))));
    }
    if checksum != metadata.checksum {
        return Ok(Err(Failed(
            "object SHA-256 differs from the metadata checksum".into(),
        )));
    }
    report
        .checks
        .push(format!("object SHA-256 matches the metadata ({size} bytes)"));
    if request.depth == VerificationDepth::Quick {
        return Ok(Ok(()));
    }

    // full: every chunk authenticated, every section decoded and counted
    let keyring = services.keyring()?;
    let source = StoredObject::open(store, &key).await?;
    let reader = match BackupReader::open(&source, keyring).await {
        Ok(reader) => reader,
        // A key missing from the keyring is this configuration's fault, not
        // the backup's: nothing is recorded, so `latest-verified` keeps
        // trusting what it trusted.
        Err(crate::ContainerError::Keyring(crate::keyring::KeyringError::UnknownKeyId { key_id }))
            if key_id != metadata.key_id =>
        {
            return Ok(Err(Failed(
                super::restore::key_mismatch(metadata, &key_id).to_string(),
            )));
        }
        Err(crate::ContainerError::Keyring(crate::keyring::KeyringError::UnknownKeyId { key_id })) => {
            return Err(OperationError::key_not_in_keyring(metadata, &key_id, keyring));
        }
        Err(error) => return Ok(Err(Failed(crate::Error::from(error).to_string()))),
    };
    if reader.header().backup_id != metadata.id.to_string() {
        return Ok(Err(Failed("the object's header names another backup".into())));
    }
    if reader.header().key_id != metadata.key_id {
        return Ok(Err(Failed(
            super::restore::key_mismatch(metadata, &reader.header().key_id).to_string(),
        )));
    }
    if reader.sections() != metadata.sections.as_slice() {
        return Ok(Err(Failed(
            "the object's section index differs from the metadata".into(),
        )));
    }
    for entry in reader.sections() {
        let mut section = reader.open_section(entry).await?;
        let mut rows = 0u64;
        let mut counter = postgres::RowCounter::new(entry.copy_format);
        loop {
            match section.next_block().await {
                Ok(Some(block)) => rows += counter.count(&block),
                Ok(None) => break,
                Err(error) => {
                    return Ok(Err(Failed(format!("section {}: {error}", entry.display_name()))));
                }
            }
        }
        if entry.kind == SectionKind::Table {
            // A table exported in parts is one check, its parts summed.
            let table = entry.display_name();
            match report.tables.iter_mut().find(|c| c.table == table) {
                Some(check) => {
                    check.expected_rows += entry.rows;
                    check.rows += rows;
                }
                None => report.tables.push(TableCheck {
                    table,
                    expected_rows: entry.rows,
                    rows,
                    digest_matches: None,
                }),
            }
            if rows != entry.rows {
                return Ok(Err(Failed(format!(
                    "table {} has {rows} rows, the metadata records {}",
                    entry.display_name(),
                    entry.rows
                ))));
            }
            if !counter.complete() {
                return Ok(Err(Failed(format!(
                    "table {}: its binary COPY data ends without the end marker",
                    entry.display_name()
                ))));
            }
        }
    }
    report.checks.push(format!(
        "{} sections authenticated and decoded; row counts match",
        reader.sections().len()
    ));
    if request.depth == VerificationDepth::Full {
        return Ok(Ok(()));
    }

    // deep: restore into a scratch database, re-export, compare
    let scratch_url = request
        .scratch_url
        .as_deref()
        .ok_or(OperationError::MissingScratchDatabase)?;
    let scratch = ScratchDatabase::create(scratch_url, &metadata.id.to_string()).await?;
    let outcome = deep_check(
        services,
        &reader,
        &scratch,
        &request.checks,
        metadata.taken_at(),
        report,
    )
    .await;
    scratch.drop_database().await;
    outcome
}

async fn deep_check<S: crate::container::ObjectSource>(
    services: &Services,
    reader: &BackupReader<'_, S>,
    scratch: &ScratchDatabase,
    checks: &[Check],
    taken_at: chrono::DateTime<chrono::Utc>,
    report: &mut VerifyReport,
) -> Result<Result<(), Failed>, OperationError> {
    let mut client = scratch.target.connect().await?;
    // Over as many connections as a recovery into an empty database uses,
    // so the check takes the path (and the time) a real recovery would.
    let helpers = scratch
        .target
        .helper_connections(services.restore_connections)
        .await;
    let restore_started = Instant::now();
    // The scratch database cannot hold the parents the backup left out:
    // the restore stands in for them, so their children are verified.
    let options = RestoreOptions {
        stand_in_parents: true,
        ..RestoreOptions::default()
    };
    let restored =
        postgres::restore_backup_over(reader, &mut client, helpers, &options, services.progress.as_ref())
            .await;
    services.progress.finish();
    let restored = match restored {
        Ok(restored) => restored,
        Err(error) => {
            return Ok(Err(Failed(format!(
                "restore into the scratch database failed: {}",
                crate::Error::from(error)
            ))));
        }
    };
    report.restore_duration_ms = Some(elapsed_ms(restore_started));
    let connections = match restored.mode {
        postgres::restore::LoadMode::NewTables { connections } => connections,
        _ => 1,
    };
    report.checks.push(format!(
        "restored {} rows into a scratch database over {connections} connection(s) in {} ms",
        restored.record_count(),
        elapsed_ms(restore_started)
    ));

    let schema = read_schema(reader).await?;
    // The restore stood in for the same parents (every table restored).
    let every_table = postgres::plan::select_tables(&schema, &[], |_| true)?.members;
    let stood_in = postgres::plan::stand_in_parents(&mut schema.clone(), &every_table);
    if !stood_in.is_empty() {
        let names: Vec<String> = stood_in.iter().map(|name| name.display()).collect();
        report.checks.push(format!(
            "the backup leaves out the parents {} of tables it holds: restored under empty stand-ins with their recorded columns",
            names.join(", ")
        ));
    }
    // Read-only; dropping it (on return or cancellation) rolls it back.
    let comparison = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|source| postgres::PostgresError::Query {
            what: "starting the comparison",
            source,
        })?;
    comparison
        .batch_execute(&format!(
            "SET LOCAL synchronize_seqscans = off; SET LOCAL row_security = off; {}",
            postgres::DETERMINISTIC_OUTPUT
        ))
        .await
        .map_err(|source| postgres::PostgresError::Query {
            what: "starting the comparison",
            source,
        })?;
    for table in schema.data_tables() {
        let Some(entry) = reader.table(&table.name.schema, &table.name.name) else {
            continue;
        };
        let format = entry.copy_format();
        let statement = format!(
            "{}{}",
            postgres::copy_out_statement(&table.name, table.kind, &table.copy_columns),
            format.copy_options(false)
        );
        let stream = comparison.copy_out(statement.as_str()).await.map_err(|source| {
            postgres::PostgresError::TableQuery {
                what: "re-exporting for comparison",
                table: table.name.display(),
                source,
            }
        })?;
        let mut stream = std::pin::pin!(stream);
        // Each part's digest covers its stretch of the table's COPY data, in
        // part order, which is the order a restore loads them. A binary
        // part is a whole stream of its own (header, rows, end marker): the
        // one re-exported stream's rows are framed the same way per part.
        let mut comparing = PartComparison::new(entry.parts(), format);
        let mut counter = postgres::RowCounter::new(format);
        let mut rows = 0u64;
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(|source| postgres::PostgresError::TableQuery {
                what: "re-exporting for comparison",
                table: table.name.display(),
                source,
            })?;
            rows += counter.count(&bytes);
            comparing.feed(&bytes);
        }
        let matches = comparing.finish();
        if let Some(check) = report.tables.iter_mut().find(|c| c.table == entry.display_name()) {
            check.digest_matches = Some(matches);
        }
        if !matches || rows != entry.rows() {
            return Ok(Err(Failed(format!(
                "table {} restored to {rows} rows that differ from the backup",
                table.name.display()
            ))));
        }
    }
    if let Some(entry) = postgres::large_objects::section(reader) {
        // The restore checked their count; read back, they must also be
        // the backed-up bytes under the same OIDs, in the same order.
        let (carried, digest) = postgres::large_objects::digest(&comparison, &schema.large_objects).await?;
        if carried.objects != entry.rows || digest != entry.plain_sha256 {
            return Ok(Err(Failed(format!(
                "the {} restored large objects differ from the backup's {}",
                carried.objects, entry.rows
            ))));
        }
        report.checks.push(format!(
            "{} restored large objects ({} bytes) re-read to the backed-up bytes",
            carried.objects, carried.bytes
        ));
    }
    drop(comparison);
    report
        .checks
        .push("every restored table re-exports to the backed-up bytes".into());
    // Then the copy as a restore would leave it: the erasure ledger applied.
    let erasures = services.ledger().load(services.keyring()?).await?;
    let (erasures, _recorded_before) = crate::erasure::split_by_backup_time(erasures, taken_at);
    if !erasures.is_empty() {
        let erased = match postgres::restore::erase_rows(&mut client, &erasures).await {
            Ok(erased) => erased,
            Err(error) => {
                return Ok(Err(Failed(format!(
                    "the erasure ledger cannot be applied to this backup: {}",
                    crate::Error::from(error)
                ))));
            }
        };
        report.checks.push(format!(
            "the erasure ledger ({} erasures) applies to the restored copy",
            erased.len()
        ));
    }
    if checks.is_empty() {
        return Ok(Ok(()));
    }
    let outcomes = drill::run_checks(&client, checks).await;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| format!("{}: {}", o.name, o.detail))
        .collect();
    let drill = DrillReport {
        rto_ms: report.restore_duration_ms.unwrap_or_default(),
        checks_passed: outcomes.len() - failed.len(),
        checks_failed: failed.len(),
        checks: outcomes,
    };
    report.drill = Some(drill);
    if !failed.is_empty() {
        return Ok(Err(Failed(format!(
            "{} of {} application checks failed on the restored copy: {}",
            failed.len(),
            checks.len(),
            failed.join("; ")
        ))));
    }
    report.checks.push(format!(
        "{} application checks passed on the restored copy",
        checks.len()
    ));
    Ok(Ok(()))
}

/// A binary COPY stream's header as every PostgreSQL version writes it
/// (no flags, no header extension), and its end marker.
const BINARY_COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
const BINARY_COPY_END: &[u8] = b"\xff\xff";

/// Compares one re-exported COPY stream of a table with the digests of
/// the table's parts, in order. In binary format each part was a stream
/// of its own: the re-exported stream's header and end marker are set
/// aside, and each part's rows are hashed inside a header and end marker
/// of their own.
struct PartComparison<'e> {
    parts: std::slice::Iter<'e, &'e crate::container::SectionEntry>,
    current: Option<&'e crate::container::SectionEntry>,
    hash: Sha256,
    /// Bytes of the current part hashed so far, its header included.
    hashed: u64,
    header: &'static [u8],
    end: &'static [u8],
    /// The re-exported stream's own header, as read.
    stream_header: Vec<u8>,
    /// The stream's last bytes, held back until they are known not to be
    /// its end marker.
    held: Vec<u8>,
    matches: bool,
}

impl<'e> PartComparison<'e> {
    fn new(parts: &'e [&'e crate::container::SectionEntry], format: crate::container::CopyFormat) -> Self {
        let (header, end): (&[u8], &[u8]) = match format {
            crate::container::CopyFormat::Text => (b"", b""),
            crate::container::CopyFormat::Binary => (BINARY_COPY_HEADER, BINARY_COPY_END),
        };
        let mut parts = parts.iter();
        let mut comparison = Self {
            current: parts.next().copied(),
            parts,
            hash: Sha256::new(),
            hashed: 0,
            header,
            end,
            stream_header: Vec::new(),
            held: Vec::new(),
            matches: true,
        };
        comparison.open_part();
        comparison
    }

    /// Where the current part's rows end: before its end marker.
    fn rows_end(&self, part: &crate::container::SectionEntry) -> u64 {
        part.plain_bytes
            .saturating_sub(self.end.len() as u64)
            .max(self.header.len() as u64)
    }

    /// Starts the current part's digest with its header; closes the parts
    /// that have no rows to wait for.
    fn open_part(&mut self) {
        while let Some(part) = self.current {
            if self.hashed == 0 && !self.header.is_empty() {
                self.hash.update(self.header);
                self.hashed = self.header.len() as u64;
                self.matches &= part.plain_bytes >= (self.header.len() + self.end.len()) as u64;
            }
            if self.hashed < self.rows_end(part) {
                return;
            }
            self.close_part(part);
        }
    }

    fn close_part(&mut self, part: &crate::container::SectionEntry) {
        self.hash.update(self.end);
        self.matches &= hex::encode(std::mem::take(&mut self.hash).finalize()) == part.plain_sha256;
        self.hashed = 0;
        self.current = self.parts.next().copied();
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        if self.stream_header.len() < self.header.len() {
            let take = (self.header.len() - self.stream_header.len()).min(bytes.len());
            self.stream_header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if self.end.is_empty() {
            self.rows(bytes);
            return;
        }
        // Whatever was held is rows once more bytes follow it; the last
        // bytes are held in turn (one buffer, reused: this runs per row).
        let keep = self.end.len();
        let mut held = std::mem::take(&mut self.held);
        if bytes.len() >= keep {
            self.rows(&held);
            let (ready, last) = bytes.split_at(bytes.len() - keep);
            self.rows(ready);
            held.clear();
            held.extend_from_slice(last);
        } else {
            held.extend_from_slice(bytes);
            let ready = held.len().saturating_sub(keep);
            self.rows(&held[..ready]);
            held.drain(..ready);
        }
        self.held = held;
    }

    fn rows(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let Some(part) = self.current else {
                // More rows than the parts hold.
                self.matches = false;
                return;
            };
            let take = usize::try_from(self.rows_end(part) - self.hashed)
                .unwrap_or(usize::MAX)
                .min(data.len());
            self.hash.update(&data[..take]);
            self.hashed += take as u64;
            data = &data[take..];
            if self.hashed >= self.rows_end(part) {
                self.close_part(part);
                self.open_part();
            }
        }
    }

    /// Whether the stream held exactly the parts' bytes.
    fn finish(self) -> bool {
        self.matches && self.current.is_none() && self.stream_header == self.header && self.held == self.end
    }
}

/// A database created for one deep verification and always dropped after.
/// If the verification is cancelled (e.g. stopped before the Lambda
/// deadline) the database is dropped from `Drop`, on a spawned task.
struct ScratchDatabase {
    admin: Option<tokio_postgres::Client>,
    name: String,
    target: postgres::ConnectionTarget,
}

impl ScratchDatabase {
    async fn create(server_url: &str, backup_id: &str) -> Result<Self, OperationError> {
        let server = postgres::ConnectionTarget::parse(server_url)?;
        let admin = server.connect().await?;
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).map_err(crate::metadata::MetadataError::Randomness)?;
        let name = format!(
            "pgbackup_verify_{}_{}",
            backup_id.replace('-', "_"),
            hex::encode(suffix)
        );
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {}",
                postgres::schema::quote_ident(&name)
            ))
            .await
            .map_err(|source| postgres::PostgresError::Query {
                what: "creating the scratch database (the role needs CREATEDB)",
                source,
            })?;
        let target = server.with_database(&name);
        Ok(Self {
            admin: Some(admin),
            name,
            target,
        })
    }

    async fn drop_database(mut self) {
        if let Some(admin) = self.admin.take() {
            drop_scratch(admin, self.name.clone()).await;
        }
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Some(admin) = self.admin.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            tracing::warn!(
                database = self.name,
                "verification cancelled; dropping its scratch database"
            );
            runtime.spawn(drop_scratch(admin, self.name.clone()));
        }
    }
}

async fn drop_scratch(admin: tokio_postgres::Client, name: String) {
    let quoted = postgres::schema::quote_ident(&name);
    let dropped = match admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .await
    {
        Ok(()) => Ok(()),
        // Before PostgreSQL 13 there is no FORCE; our own connection is closed by now.
        Err(_) => {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted}"))
                .await
        }
    };
    if let Err(error) = dropped {
        tracing::error!(%error, database = name, "could not drop the scratch database; drop it by hand");
    }
}

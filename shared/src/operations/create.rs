//! create: export → container → storage, metadata last.

use std::time::Instant;

use chrono::Utc;
use serde_json::json;

use super::{Finished, Notification, Operation, OperationError, Services, elapsed_ms};
use crate::anomaly::{self, Anomaly};
use crate::container::{ContainerOptions, ContainerWriter};
use crate::metadata::{BackupId, BackupMetadata, BackupRequest};
use crate::metrics::Unit;
use crate::postgres::fidelity::AcceptedLoss;
use crate::postgres::{self, TableFilter};
use crate::request::TableList;
use crate::storage::{ObjectUpload, StoreRegion};

#[derive(Clone)]
pub struct CreateRequest {
    pub database_url: String,
    /// Only these tables; all when empty.
    pub tables: TableList,
    pub request: BackupRequest,
    pub container: ContainerOptions,
    /// Kinds of objects this backup may leave out (recorded in its metadata).
    pub accepted_loss: AcceptedLoss,
}

/// Shows the database URL without its password.
impl std::fmt::Debug for CreateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateRequest")
            .field("database_url", &crate::config::redact_url(&self.database_url))
            .field("tables", &self.tables)
            .field("request", &self.request)
            .field("container", &self.container)
            .field("accepted_loss", &self.accepted_loss)
            .finish()
    }
}

/// Takes a backup. The backup exists only once this returns `Ok`: on any
/// failure the upload is aborted, no metadata is written, and the failure
/// is audited, measured and notified.
pub async fn create_backup(
    services: &Services,
    request: &CreateRequest,
) -> Result<BackupMetadata, OperationError> {
    let started_at = Utc::now();
    let started = Instant::now();
    let result = create_inner(services, request, started_at, started).await;
    // Whatever follows (the result, an error) is printed on a clean line.
    services.progress.finish();
    let (result, anomalies) = match result {
        Ok((metadata, anomalies)) => (Ok(metadata), anomalies),
        Err(error) => (Err(error), Vec::new()),
    };
    let mut finished = Finished::new(Operation::Create);
    finished.actor = request.request.requested_by.clone();
    finished.trigger = Some(request.request.trigger);
    finished.reason = request.request.reason.clone();
    match &result {
        Ok(metadata) => {
            let ratio = metadata.sections.iter().map(|s| s.plain_bytes).sum::<u64>() as f64
                / metadata.size_bytes.max(1) as f64;
            finished.backup_id = Some(metadata.id.to_string());
            finished.metrics = finished
                .metrics
                .with("BackupSuccess", 1.0, Unit::Count)
                .with(
                    "BackupDurationMs",
                    metadata.duration_ms as f64,
                    Unit::Milliseconds,
                )
                .with("BackupSizeBytes", metadata.size_bytes as f64, Unit::Bytes)
                .with("CompressionRatio", ratio, Unit::None)
                .with("RecordCount", metadata.record_count as f64, Unit::Count);
            if !anomalies.is_empty() {
                finished.metrics =
                    finished
                        .metrics
                        .with("BackupAnomaly", anomalies.len() as f64, Unit::Count);
            }
            finished.details = json!({"tables": metadata.tables, "recordCount": metadata.record_count,
                                      "sizeBytes": metadata.size_bytes, "anomalies": anomalies});
            finished.notification = Notification::Event {
                event: "backup_created",
                payload: json!({
                    "backupId": metadata.id, "tables": metadata.tables, "recordCount": metadata.record_count,
                    "sizeBytes": metadata.size_bytes, "durationMs": metadata.duration_ms, "trigger": metadata.trigger,
                }),
            };
        }
        Err(error) => {
            let message = error.chain();
            if error.is_interrupted() {
                tracing::info!(error = %message, "backup interrupted; nothing was published");
            } else {
                tracing::error!(target: super::OUTCOME_LOG, error = %message, "backup failed; nothing was published");
            }
            finished.metrics = finished.metrics.with("BackupFailure", 1.0, Unit::Count).with(
                "BackupDurationMs",
                elapsed_ms(started) as f64,
                Unit::Milliseconds,
            );
            finished.error = Some(message.clone());
            finished.notification = Notification::Failure {
                message,
                context: json!({"operation": Operation::Create, "trigger": request.request.trigger}),
            };
        }
    }
    services.report(finished).await;
    if let (Ok(metadata), false) = (&result, anomalies.is_empty()) {
        let described: Vec<String> = anomalies.iter().map(ToString::to_string).collect();
        tracing::warn!(backup_id = %metadata.id, anomalies = ?described, "the new backup differs sharply from the ones before it");
        services
            .notifier
            .event(
                "backup_anomaly",
                json!({"backupId": metadata.id, "anomalies": anomalies,
                       "message": format!("backup {} differs sharply from the last backups: {}", metadata.id, described.join("; "))}),
            )
            .await;
    }
    result
}

async fn create_inner(
    services: &Services,
    request: &CreateRequest,
    started_at: chrono::DateTime<Utc>,
    started: Instant,
) -> Result<(BackupMetadata, Vec<Anomaly>), OperationError> {
    let master = services.keyring()?.current().clone();
    check_region(services).await?;
    let history = match services.repository.newest(anomaly::HISTORY + 1).await {
        Ok(history) => history,
        Err(error) => {
            tracing::warn!(%error, "could not read the last backups; no anomaly or free-space check this time");
            Vec::new()
        }
    };
    check_free_space(services, &history).await?;
    warn_on_key_change(&master, &history);
    let mut client = postgres::connect(&request.database_url).await?;
    let new_chain = restart_broken_chain(services, &client).await;
    let id = BackupId::new(started_at)?;
    let store = services.repository.store();
    let mut upload = store.begin_upload(&id.object_key()).await?;
    // An interruption drops the export (its snapshot transactions end with
    // their connections) and aborts the upload like any failure.
    let written = services
        .interrupt
        .guard(write_backup(
            services,
            request,
            &mut client,
            &master,
            &id,
            &mut upload,
        ))
        .await
        .unwrap_or_else(|reason| {
            Err(OperationError::Interrupted {
                reason,
                outcome: "nothing was published",
            })
        });
    let (report, summary) = match written {
        Ok(done) => done,
        Err(error) => {
            // A storage failure breaks the upload stream; the abort reports its real cause.
            if let Err(cause) = upload.abort().await {
                tracing::warn!(%cause, "the upload failed");
                let stream_broke = matches!(
                    &error,
                    OperationError::Container(crate::ContainerError::Io(_))
                        | OperationError::Postgres(crate::postgres::PostgresError::Container(
                            crate::ContainerError::Io(_)
                        ))
                );
                if stream_broke {
                    return Err(cause.into());
                }
            }
            return Err(error);
        }
    };
    let stored = upload.complete().await?;
    if stored.size != summary.size_bytes {
        let _ = store.delete(&id.object_key()).await;
        return Err(OperationError::SizeMismatch {
            expected: summary.size_bytes,
            actual: stored.size,
        });
    }
    let mut source = report.source.clone();
    source.host = host_of(&request.database_url);
    let mut metadata = BackupMetadata::describe(
        id.clone(),
        started_at,
        &summary,
        source,
        elapsed_ms(started),
        request.request.clone(),
    );
    metadata.accepted_schema_loss = report.schema.accepted_losses.clone();
    metadata.change_stream = report.stream_position.clone();
    // In the schema's order, not the order the export's connections
    // finished their pieces: backups are compared by this list.
    metadata.tables = report
        .tables
        .iter()
        .map(|t| crate::metadata::listed_table_name(Some(&t.name.schema), &t.name.name))
        .collect();
    if let Err(error) = services.repository.save_metadata(&metadata).await {
        // Unpublished: remove the object rather than leave an orphan.
        let _ = store.delete(&id.object_key()).await;
        return Err(error.into());
    }
    tracing::info!(backup_id = %id, records = metadata.record_count, bytes = metadata.size_bytes, "backup created");
    if let (Some(restarted), Some(position)) = (new_chain, &metadata.change_stream) {
        tracing::warn!(backup_id = %id, slot = %restarted.slot, start_lsn = %position.start_lsn,
            "this backup starts a new change chain: {}; instants between the old chain's last captured change and this backup cannot be restored", restarted.reason);
        services
            .notifier
            .event(
                "pitr_new_chain",
                json!({"backupId": id, "slot": restarted.slot, "reason": restarted.reason, "startLsn": position.start_lsn}),
            )
            .await;
    }
    let anomalies = anomaly::detect(&metadata, &history, f64::from(services.anomaly_threshold_percent));
    Ok((metadata, anomalies))
}

/// A chain whose slot was invalidated or is gone restarts with this
/// backup (see [`crate::changes::restart_broken_chain`]). A failure here
/// (the role may not create slots, say) never fails the backup: it is
/// logged, and the backup records no position, as before.
async fn restart_broken_chain(
    services: &Services,
    client: &tokio_postgres::Client,
) -> Option<crate::changes::RestartedChain> {
    let (Some(slot), Some(publication)) = (&services.pitr_slot, &services.pitr_publication) else {
        return None;
    };
    let names = crate::changes::PitrNames {
        slot: slot.clone(),
        publication: publication.clone(),
    };
    match crate::changes::restart_broken_chain(client, &names).await {
        Ok(restarted) => restarted,
        Err(error) => {
            tracing::warn!(%error, slot, "could not recreate the change-capture slot: this backup starts no new chain; run `backupctl pitr disable`, then `backupctl pitr enable`, then take a base backup");
            None
        }
    }
}

/// A backup under another key than the newest one before it is what a
/// rotation does, and also what a mistyped or swapped key does: either way
/// the older backups now need the other key, so say so once.
fn warn_on_key_change(master: &crate::keyring::MasterKey, history: &[BackupMetadata]) {
    if let Some(newest) = history.first()
        && newest.key_id != master.id().as_str()
    {
        tracing::warn!(
            key_id = master.id().as_str(),
            newest_backup = %newest.id,
            newest_key_id = newest.key_id.as_str(),
            "this backup uses key id {}, the newest backup before it ({}) uses {}: keep {} where the backups can be restored (after a rotation this is expected)",
            master.id().as_str(),
            newest.id,
            newest.key_id,
            newest.key_id
        );
    }
}

/// Local disk only: refuses to start when the last backup would not fit
/// in what is free, rather than fail at the end of a long export.
async fn check_free_space(services: &Services, history: &[BackupMetadata]) -> Result<(), OperationError> {
    let store = services.repository.store();
    let (Some(free), Some(last)) = (store.free_space().await?, history.first()) else {
        return Ok(());
    };
    // A tenth more than last time: databases grow.
    let needed = last.size_bytes.saturating_add(last.size_bytes / 10);
    if free < needed {
        return Err(OperationError::InsufficientSpace {
            store: store.describe(),
            free,
            needed,
        });
    }
    Ok(())
}

async fn write_backup(
    services: &Services,
    request: &CreateRequest,
    client: &mut tokio_postgres::Client,
    master: &crate::keyring::MasterKey,
    id: &BackupId,
    upload: &mut Box<dyn ObjectUpload>,
) -> Result<(postgres::ExportReport, crate::container::ContainerSummary), OperationError> {
    let mut writer = ContainerWriter::create(upload, master, &id.to_string(), request.container).await?;
    let filter = TableFilter {
        include: request.tables.names().to_vec(),
        accepted_loss: request.accepted_loss.clone(),
        stream_slot: services.pitr_slot.clone(),
        stream_publication: services.pitr_publication.clone(),
        ..TableFilter::default()
    };
    let helpers = postgres::helper_connections(&request.database_url, services.export_connections).await;
    let report =
        postgres::export_database(client, helpers, &mut writer, &filter, services.progress.as_ref()).await?;
    // The bar would otherwise sit full, unlabelled, while the upload completes.
    services.progress.phase("finishing the upload");
    let summary = writer.finish().await?;
    Ok((report, summary))
}

/// Refuses a store outside `BACKUP_ALLOWED_REGIONS` before anything is read or written.
async fn check_region(services: &Services) -> Result<(), OperationError> {
    if services.allowed_regions.is_empty() {
        return Ok(());
    }
    let store = services.repository.store();
    match store.region().await? {
        StoreRegion::ThisMachine => Ok(()),
        StoreRegion::Cloud(region) if services.allowed_regions.contains(&region) => {
            tracing::info!(region, "the backup store is in an allowed region");
            Ok(())
        }
        StoreRegion::Cloud(region) => Err(OperationError::RegionNotAllowed {
            store: store.describe(),
            region,
            allowed: services.allowed_regions.join(", "),
        }),
        StoreRegion::Unknown => Err(OperationError::RegionUnknown {
            store: store.describe(),
        }),
    }
}

/// The database host from a connection URL, for the metadata (never the password).
fn host_of(url: &str) -> Option<String> {
    let config: tokio_postgres::Config = url.parse().ok()?;
    config.get_hosts().first().map(|host| match host {
        tokio_postgres::config::Host::Tcp(name) => name.clone(),
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    })
}

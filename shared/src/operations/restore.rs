//! restore: by id or `latest`, all or some tables, in place (after a safety
//! backup of the current state) or into another database.

use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::create::{CreateRequest, create_backup};
use super::{Finished, Notification, Operation, OperationError, Services, elapsed_ms};
use crate::changes::{ReplayPlan, ReplayReport, plan_replay};
use crate::container::{BackupReader, ContainerOptions};
use crate::keyring::Keyring;
use crate::metadata::{BackupId, BackupRequest, MetadataIntegrity, Trigger};
use crate::metrics::Unit;
use crate::postgres::kinds::cluster::RoleCreation;
use crate::postgres::restore::AfterLoad;
use crate::postgres::restore::AppliedErasure;
use crate::postgres::{self, RestoreOptions, RestoredTable};
use crate::repository::BackupSelector;
use crate::repository::Selection;
use crate::request::TableList;
use crate::storage::{BackupStore, StoredObject};
use chrono::{DateTime, Utc};

/// How the operator confirmed that data may be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// Not confirmed: the restore is refused.
    None,
    /// `--yes` on the command line: the target database is the one confirmed.
    Operator,
    /// The target database's name, as a console payload's `confirm` gives it.
    DatabaseName(String),
}

#[derive(Clone)]
pub struct RestoreRequest {
    pub selector: BackupSelector,
    /// Only these tables; all when empty.
    pub tables: TableList,
    /// The application database (`DATABASE_URL`): the in-place target.
    pub database_url: Option<String>,
    /// Another database to restore into instead.
    pub target_url: Option<String>,
    /// Before an in-place restore, back up the current state first.
    pub safety_backup: bool,
    pub confirmation: Confirmation,
    /// Chosen tables that exist with another definition than the backup's
    /// are dropped and created again (in the restore's one transaction)
    /// instead of refusing the restore.
    pub replace_existing: bool,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub container: ContainerOptions,
    /// Create the roles the backup records that the target lacks
    /// (`--create-roles`, payload `createRoles`); `None`: a missing role is
    /// a warning, as before.
    pub create_roles: Option<RoleCreation>,
    /// Create the target database (`target_url`'s) when the server has
    /// none by that name, with the source's encoding and locale, and give
    /// it the source database's settings, comment, grants and owner
    /// (`--create-db`). An existing database is never altered.
    pub create_database: bool,
    /// Create everything in the target database's default tablespace
    /// (`--no-tablespaces`, payload `noTablespaces`), as pg_restore's option.
    pub no_tablespaces: bool,
    /// Leave the backup's security labels out, with one warning naming
    /// them (`--no-security-labels`, payload `noSecurityLabels`), as
    /// pg_restore's option; without it a label whose provider the target
    /// does not load refuses the restore.
    pub no_security_labels: bool,
    /// Restore the large objects in a restore of chosen tables too
    /// (`--large-objects`, payload `largeObjects`); a full restore always
    /// restores them.
    pub large_objects: bool,
    /// Point-in-time recovery (`--at`): instead of `selector`, the newest
    /// base backup taken before this instant whose change chain reaches
    /// past it, brought forward by the captured changes to the last
    /// commit at or before it.
    pub at: Option<DateTime<Utc>>,
}

/// Shows the database URLs without their passwords.
impl std::fmt::Debug for RestoreRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |url: &Option<String>| url.as_deref().map(crate::config::redact_url);
        f.debug_struct("RestoreRequest")
            .field("selector", &self.selector)
            .field("tables", &self.tables)
            .field("database_url", &redacted(&self.database_url))
            .field("target_url", &redacted(&self.target_url))
            .field("safety_backup", &self.safety_backup)
            .field("confirmation", &self.confirmation)
            .field("reason", &self.reason)
            .field("requested_by", &self.requested_by)
            .field("container", &self.container)
            .field("create_roles", &self.create_roles)
            .field("create_database", &self.create_database)
            .field("no_tablespaces", &self.no_tablespaces)
            .field("no_security_labels", &self.no_security_labels)
            .field("large_objects", &self.large_objects)
            .field("at", &self.at)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreOutcome {
    pub backup_id: String,
    pub target_database: String,
    pub in_place: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_backup_id: Option<BackupId>,
    /// How `before:` or `random` chose the backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    /// The erasure ledger, applied before the commit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<AppliedErasure>,
    pub tables: Vec<RestoredTableReport>,
    pub record_count: u64,
    pub duration_ms: u64,
    pub warnings: Vec<String>,
    /// Roles the restore created (`--create-roles`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles_created: Vec<String>,
    /// Whether the target database was created for this restore (`--create-db`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub database_created: bool,
    /// `--at`: the captured changes applied on top of the base backup,
    /// and the instant actually reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<ReplayReport>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoredTableReport {
    pub table: String,
    pub rows: u64,
    pub created: bool,
}

impl From<&RestoredTable> for RestoredTableReport {
    fn from(table: &RestoredTable) -> Self {
        Self {
            table: table.name.display(),
            rows: table.rows,
            created: table.created,
        }
    }
}

pub async fn restore_backup(
    services: &Services,
    request: &RestoreRequest,
) -> Result<RestoreOutcome, OperationError> {
    let started = Instant::now();
    let result = restore_inner(services, request, started).await;
    // Whatever follows (the result, an error) is printed on a clean line.
    services.progress.finish();
    let mut finished = Finished::new(Operation::Restore);
    finished.actor = request.requested_by.clone();
    finished.reason = request.reason.clone();
    match &result {
        Ok(outcome) => {
            finished.backup_id = Some(outcome.backup_id.clone());
            finished.metrics = finished
                .metrics
                .with("RestoreSuccess", 1.0, Unit::Count)
                .with(
                    "RestoreDurationMs",
                    outcome.duration_ms as f64,
                    Unit::Milliseconds,
                )
                .with("RecordCount", outcome.record_count as f64, Unit::Count);
            finished.details = json!({"targetDatabase": outcome.target_database, "tables": outcome.tables,
                                      "safetyBackupId": outcome.safety_backup_id,
                                      "rolesCreated": outcome.roles_created, "databaseCreated": outcome.database_created,
                                      "erasuresApplied": outcome.erased.iter().filter(|e| e.skipped.is_none()).count(),
                                      "erasuresSkipped": outcome.erased.iter().filter(|e| e.skipped.is_some()).count(),
                                      "erasuresWithoutRows": outcome.erased.iter().filter(|e| e.skipped.is_none() && e.rows == 0).count(),
                                      "selector": request.selector.to_string(), "selection": outcome.selection});
            finished.notification = Notification::Event {
                event: "backup_restored",
                payload: json!({"backupId": outcome.backup_id, "targetDatabase": outcome.target_database,
                                "tables": outcome.tables.iter().map(|t| &t.table).collect::<Vec<_>>(),
                                "recordCount": outcome.record_count, "durationMs": outcome.duration_ms}),
            };
        }
        Err(error) => {
            let message = error.chain();
            if error.is_interrupted() && !error.left_objects_in_target() {
                // The CLI says so in one line; the audit trail records the failure.
                tracing::info!(error = %message, "restore interrupted and undone");
            } else if error.left_objects_in_target() {
                tracing::error!(target: super::OUTCOME_LOG, error = %message, "restore failed, and objects it created are still in the target");
            } else {
                tracing::error!(target: super::OUTCOME_LOG, error = %message, "restore failed; the target database was left as it was");
            }
            finished.metrics = finished.metrics.with("RestoreFailure", 1.0, Unit::Count);
            finished.error = Some(message.clone());
            finished.details = json!({"tables": request.tables});
            finished.notification = Notification::Failure {
                message,
                context: json!({"operation": Operation::Restore}),
            };
        }
    }
    services.report(finished).await;
    result
}

async fn restore_inner(
    services: &Services,
    request: &RestoreRequest,
    started: Instant,
) -> Result<RestoreOutcome, OperationError> {
    if request.confirmation == Confirmation::None {
        return Err(OperationError::NotConfirmed);
    }
    let keyring = services.keyring()?;
    let (selection, replay_plan) = match request.at {
        Some(at) => {
            let (selection, plan) = choose_base(services, keyring, at).await?;
            (selection, Some(plan))
        }
        None => (services.repository.select(&request.selector).await?, None),
    };
    let metadata = selection.metadata;
    let unsigned_warning = match metadata.metadata_integrity {
        MetadataIntegrity::Failed => {
            return Err(OperationError::TamperedMetadata {
                id: metadata.id.to_string(),
            });
        }
        MetadataIntegrity::Unsigned => Some(format!(
            "the metadata of {} carries no MAC (written before metadata MACs); the backup object itself is authenticated",
            metadata.id
        )),
        MetadataIntegrity::Misdated => {
            return Err(OperationError::AlteredMetadata {
                id: metadata.id.to_string(),
                reason: misdated_reason(&metadata),
            });
        }
        // Whether an unknown key is a missing key (configuration) or a
        // foreign one (tampering), the object's header says, below.
        MetadataIntegrity::Authentic | MetadataIntegrity::Unchecked | MetadataIntegrity::UnknownKey => None,
    };
    let target_url = request
        .target_url
        .as_deref()
        .or(request.database_url.as_deref())
        .ok_or(OperationError::MissingDatabaseUrl("restore into"))?;
    let in_place = request.target_url.is_none() || request.target_url == request.database_url;

    let store = services.repository.store().as_ref();
    let source = StoredObject::open(store, &metadata.id.object_key()).await?;
    let reader = match BackupReader::open(&source, keyring).await {
        Ok(reader) => reader,
        Err(crate::ContainerError::Keyring(crate::keyring::KeyringError::UnknownKeyId { key_id })) => {
            return Err(if key_id == metadata.key_id {
                OperationError::key_not_in_keyring(&metadata, &key_id, keyring)
            } else {
                key_mismatch(&metadata, &key_id)
            });
        }
        Err(error) => return Err(error.into()),
    };
    // The metadata names the key the object is sealed with: a document
    // naming another (one not in the keyring, to escape its MAC) was
    // rewritten by someone without the key.
    if reader.header().key_id != metadata.key_id {
        return Err(key_mismatch(&metadata, &reader.header().key_id));
    }
    // The object must be the backup that was asked for, as its metadata
    // describes it: one copied over another's key (an older backup, another
    // database's) is refused before anything is changed.
    if reader.header().backup_id != metadata.id.to_string() {
        return Err(OperationError::WrongBackupObject {
            requested: metadata.id.to_string(),
            found: reader.header().backup_id.clone(),
        });
    }
    if reader.sections() != metadata.sections.as_slice() {
        return Err(OperationError::WrongBackupObject {
            requested: metadata.id.to_string(),
            found: "a container whose sections differ from the metadata".into(),
        });
    }
    // The whole ledger, read (and authenticated) before anything changes.
    // (restore may write the head: it adopts a record an erase left past
    // it, and re-seals it under the current key after a rotation)
    let erasures = services.ledger().load_and_anchor(keyring).await?;
    let (erasures, recorded_before) = crate::erasure::split_by_backup_time(erasures, metadata.taken_at());
    let schema = postgres::restore::read_schema(&reader).await?;
    let mut database_warnings = Vec::new();
    let mut database_created = false;
    let mut created_database = None;
    if request.create_database {
        if request.target_url.is_none() || in_place {
            return Err(OperationError::Refused(
                "--create-db needs --target-url: it makes a new database to restore into, never the application's own".into(),
            ));
        }
        let properties = schema.cluster.as_ref().and_then(|c| c.database.as_ref());
        match postgres::kinds::cluster::create_database(target_url, properties, request.no_tablespaces).await? {
            Some(created) => {
                tracing::info!(database = %created.name, as_source = created.as_source, "created the database to restore into");
                database_warnings.extend(created.warnings);
                database_created = true;
                // The database's own label goes back through its provider
                // only: refused now, before any object is made, and the
                // database made for the restore is dropped again.
                if let Some(properties) = properties.filter(|p| !p.security_labels.is_empty()) {
                    let checked = if request.no_security_labels {
                        database_warnings.extend(properties.security_labels.iter().map(|label| {
                            format!("{} not restored (--no-security-labels)", label.describe())
                        }));
                        Ok(())
                    } else {
                        database_label_providers(target_url, &created.name, properties).await
                    };
                    if let Err(error) = checked {
                        return Err(drop_created_database(target_url, &created.name, error).await);
                    }
                }
                created_database = Some(created.name);
            }
            None => database_warnings.push(
                "the target database exists already: its settings, comment, grants and owner were left as they are (--create-db gives the source's only to a database it creates)"
                    .to_owned(),
            ),
        }
    }
    let mut client = postgres::connect(target_url)
        .await
        .map_err(|error| target_unreachable(error, target_url, request.target_url.is_some()))?;
    let target_database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|source| postgres::PostgresError::Query {
            what: "reading the target database's name",
            source,
        })?
        .get(0);
    let confirm_database = match &request.confirmation {
        Confirmation::Operator => Some(target_database.clone()),
        Confirmation::DatabaseName(name) => Some(name.clone()),
        Confirmation::None => None,
    };

    // Refuse a bad table list before the safety backup: a restore that
    // cannot run must not leave a backup behind either.
    postgres::plan::select_tables(&schema, request.tables.names(), |name| {
        reader.table(&name.schema, &name.name).is_some()
    })?;

    let safety_backup_id = if in_place && request.safety_backup {
        let safety = CreateRequest {
            database_url: target_url.to_owned(),
            tables: TableList::all(),
            request: BackupRequest {
                trigger: Trigger::Safety,
                reason: Some(format!("safety backup before restoring {}", metadata.id)),
                requested_by: request.requested_by.clone(),
            },
            container: request.container,
            accepted_loss: crate::postgres::fidelity::AcceptedLoss::everything(),
        };
        // Its tables are named as part of the safety backup, not as the restore's.
        let step = format!("safety backup of {target_database}");
        services.progress.within(Some(&step));
        services.progress.phase("reading the schema");
        let taken = Box::pin(create_backup(services, &safety)).await;
        services.progress.within(None);
        let backup = taken.map_err(|error| match error {
            OperationError::Interrupted { reason, .. } => OperationError::Interrupted {
                reason,
                outcome: "nothing was restored, and the safety backup was not published",
            },
            error => OperationError::SafetyBackupFailed(Box::new(error)),
        })?;
        tracing::info!(backup_id = %backup.id, "safety backup taken before the restore");
        Some(backup.id)
    } else {
        None
    };

    let options = RestoreOptions {
        tables: request.tables.names().to_vec(),
        confirm_database,
        erasures,
        replace_existing: request.replace_existing,
        interrupt: services.interrupt.clone(),
        create_roles: request.create_roles,
        database_properties: database_created,
        no_tablespaces: request.no_tablespaces,
        no_security_labels: request.no_security_labels,
        large_objects: request.large_objects,
        // A real database: a parent the backup left out must be there.
        stand_in_parents: false,
    };
    let replayer = replay_plan.map(|plan| Replayer {
        store,
        keyring,
        plan,
        outcome: std::sync::Mutex::new(None),
    });
    // A replay runs in the restore's one transaction: no helper connections.
    let helpers = match replayer {
        Some(_) => Vec::new(),
        None => postgres::helper_connections(target_url, services.restore_connections).await,
    };
    let restored = postgres::restore::restore_backup_then(
        &reader,
        &mut client,
        helpers,
        &options,
        services.progress.as_ref(),
        replayer.as_ref().map(|r| r as &dyn AfterLoad),
    )
    .await;
    // The database's own labels, in a new session: the restore gave the
    // database its settings last, and only a session started after that
    // loads the providers they preload.
    let restored = match (restored, &created_database, schema_database_labels(&schema)) {
        (Ok(report), Some(_), Some(properties)) if !request.no_security_labels => {
            postgres::security_labels::apply_database_labels(target_url, properties)
                .await
                .map(|()| report)
        }
        (restored, _, _) => restored,
    };
    let report = match (restored, created_database) {
        (Ok(report), _) => report,
        (Err(error), None) => return Err(error.into()),
        // The database this restore made is part of what it created: a
        // failed or interrupted restore removes it too, so the server is
        // left as it was (and a rerun with --create-db makes it afresh).
        (Err(error), Some(name)) => {
            drop(client);
            return Err(drop_created_database(target_url, &name, error).await);
        }
    };
    let (replayed, replay_warnings) = match replayer.and_then(|r| r.outcome.into_inner().ok().flatten()) {
        Some((report, warnings)) => (Some(report), warnings),
        None => (None, Vec::new()),
    };
    Ok(RestoreOutcome {
        replayed,
        backup_id: metadata.id.to_string(),
        target_database: report.database.clone(),
        in_place,
        safety_backup_id,
        selection: selection.explanation,
        erased: report
            .erased
            .iter()
            .cloned()
            .chain(recorded_before.iter().map(|erasure| AppliedErasure {
                id: erasure.id.clone(),
                table: erasure.table.display(),
                rows: 0,
                skipped: Some(
                    "recorded before this backup was taken, when its rows were already gone".into(),
                ),
            }))
            .collect(),
        tables: report.tables.iter().map(RestoredTableReport::from).collect(),
        record_count: report.record_count(),
        duration_ms: elapsed_ms(started),
        roles_created: report.roles_created.clone(),
        database_created,
        warnings: unsigned_warning
            .into_iter()
            .chain(database_warnings)
            .chain(report.warnings)
            .chain(replay_warnings)
            .chain(report.erased.iter().filter_map(erasure_warning))
            .chain(
                metadata
                    .accepted_schema_loss
                    .iter()
                    .map(|loss| format!("not in this backup (loss accepted when it was taken): {loss}")),
            )
            .collect(),
    })
}

/// The recorded database properties when they hold a label of the
/// database itself.
fn schema_database_labels(
    schema: &postgres::schema::DatabaseSchema,
) -> Option<&postgres::kinds::cluster::DatabaseProperties> {
    schema
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.database.as_ref())
        .filter(|properties| !properties.security_labels.is_empty())
}

/// Refuses a restore whose database labels name a provider that a session
/// of the new database `name` would not load.
async fn database_label_providers(
    target_url: &str,
    name: &str,
    properties: &postgres::kinds::cluster::DatabaseProperties,
) -> Result<(), postgres::PostgresError> {
    let missing = postgres::security_labels::database_label_providers_missing(target_url, properties).await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(postgres::PostgresError::SecurityLabelProviderMissing {
        database: name.to_owned(),
        providers: missing.join(", "),
        objects: properties
            .security_labels
            .iter()
            .filter(|label| missing.contains(&label.provider))
            .map(|label| label.describe())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// After `error`, drops database `name`, which this restore created; the
/// error says so when it was an interruption (else the log does).
async fn drop_created_database(
    target_url: &str,
    name: &str,
    error: postgres::PostgresError,
) -> OperationError {
    match postgres::kinds::cluster::drop_database(target_url, name).await {
        Ok(()) => match error {
            // Said in the interruption's one line.
            postgres::PostgresError::Interrupted { reason, .. } => OperationError::Interrupted {
                reason,
                outcome: "the restore was undone, and the database it had created was dropped",
            },
            error => {
                tracing::warn!(database = %name, "the restore failed, so the database it had created was dropped");
                error.into()
            }
        },
        Err(drop_error) => {
            tracing::error!(database = %name, error = %drop_error, "the restore failed, and the database it had created could not be dropped: drop it by hand");
            error.into()
        }
    }
}

/// A target that cannot be reached is named by the setting that chose it
/// (`--target-url` or DATABASE_URL), and a database that does not exist
/// yet is said to be so, with the way to make it.
fn target_unreachable(
    error: postgres::PostgresError,
    target_url: &str,
    explicit_target: bool,
) -> OperationError {
    let setting = if explicit_target {
        "--target-url (the Lambda payload's \"target\")"
    } else {
        "DATABASE_URL (or --database-url)"
    };
    match error {
        postgres::PostgresError::Connect(source) => {
            let missing = source.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME);
            OperationError::TargetUnreachable {
                setting,
                advice: if missing {
                    let name = postgres::database_name(target_url).unwrap_or_default();
                    format!(
                        "database \"{name}\" does not exist on the server: create it (createdb, backupctl restore --create-db, or \"createDb\": true in the Lambda payload)"
                    )
                } else {
                    "check that the server is up and reachable, and the credentials".to_owned()
                },
                source,
            }
        }
        other => other.into(),
    }
}

/// The metadata names another key than the object's header: tampering.
pub(crate) fn key_mismatch(metadata: &crate::metadata::BackupMetadata, sealed_with: &str) -> OperationError {
    OperationError::AlteredMetadata {
        id: metadata.id.to_string(),
        reason: format!(
            "it names key id {} but the backup object is sealed with key id {}",
            crate::keyring::ShownId::of(&metadata.key_id),
            crate::keyring::ShownId::of(sealed_with)
        ),
    }
}

/// Why a misdated document is refused, in words.
pub(crate) fn misdated_reason(metadata: &crate::metadata::BackupMetadata) -> String {
    format!(
        "its timestamp {} is not the time in its id ({})",
        metadata
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        metadata.id.started_at().map_or_else(
            || "out of range".to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    )
}

/// An erasure that should have acted here and erased nothing is said out
/// loud (a key that matches no row may be a typo in the request); one
/// whose table this restore does not bring back did what it should.
fn erasure_warning(erased: &AppliedErasure) -> Option<String> {
    match (&erased.skipped, erased.rows) {
        (Some(reason), _) if reason.starts_with("its table is not restored") => None,
        (Some(reason), _) => Some(format!(
            "erasure {} (table {}) was not applied: {reason}",
            erased.id, erased.table
        )),
        (None, 0) => Some(format!(
            "erasure {} (table {}) matched no row in this backup",
            erased.id, erased.table
        )),
        (None, _) => None,
    }
}

/// The base backup for `--at`: the newest backup whose snapshot was taken
/// at or before the instant, that records its stream position, and whose
/// chain of segments reaches past the instant unbroken; with the plan of
/// what to replay on it.
async fn choose_base(
    services: &Services,
    keyring: &Keyring,
    at: DateTime<Utc>,
) -> Result<(Selection, ReplayPlan), OperationError> {
    let shown = |instant: DateTime<Utc>| instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let backups = services.repository.list().await?;
    let segments = crate::changes::list_segments(services.repository.store().as_ref(), keyring).await?;
    let mut refusals = Vec::new();
    let mut candidates = 0;
    for metadata in backups {
        let Some(position) = &metadata.change_stream else {
            continue;
        };
        let usable = metadata.trigger != Trigger::Safety
            && matches!(
                metadata.metadata_integrity,
                MetadataIntegrity::Authentic | MetadataIntegrity::Unchecked
            );
        if !usable || position.snapshot_at > at {
            continue;
        }
        candidates += 1;
        let chain: Vec<_> = segments
            .iter()
            .filter(|segment| segment.slot == position.slot)
            .cloned()
            .collect();
        let base_name = metadata.id.to_string();
        let base = position
            .catalog_fingerprint
            .as_deref()
            .map(|fingerprint| (base_name.as_str(), fingerprint));
        let base_snapshot = match position.snapshot.as_deref().map(str::parse).transpose() {
            Ok(snapshot) => snapshot,
            Err(reason) => {
                refusals.push(format!(
                    "{}: its recorded snapshot is unreadable: {reason}",
                    metadata.id
                ));
                continue;
            }
        };
        match plan_replay(&chain, position.start_lsn, at, base) {
            Ok(mut plan) => {
                plan.base_snapshot = base_snapshot;
                let explanation = format!(
                    "base backup {} (snapshot at {}), then {} change segment(s) from LSN {} up to {}",
                    metadata.id,
                    shown(position.snapshot_at),
                    plan.segments.len(),
                    position.start_lsn,
                    shown(at)
                );
                return Ok((
                    Selection {
                        metadata,
                        explanation: Some(explanation),
                    },
                    plan,
                ));
            }
            Err(error) => refusals.push(format!("{}: {error}", metadata.id)),
        }
    }
    Err(OperationError::Refused(if candidates == 0 {
        format!(
            "no base backup covers {}: none taken before it records a change-stream position (backups record one once `backupctl pitr enable` has created the slot). Nothing was restored",
            shown(at)
        )
    } else {
        format!(
            "no base backup has an unbroken chain of captured changes up to {}, so nothing was restored: {}",
            shown(at),
            refusals.join("; ")
        )
    }))
}

/// Replays the plan in the restore's transaction, on the restored tables.
struct Replayer<'a> {
    store: &'a dyn BackupStore,
    keyring: &'a Keyring,
    plan: ReplayPlan,
    outcome: std::sync::Mutex<Option<(ReplayReport, Vec<String>)>>,
}

impl AfterLoad for Replayer<'_> {
    fn run<'a>(
        &'a self,
        transaction: &'a tokio_postgres::Transaction<'_>,
        tables: &'a [RestoredTable],
    ) -> futures_util::future::BoxFuture<'a, Result<(), postgres::PostgresError>> {
        Box::pin(async move {
            let published: std::collections::BTreeSet<&str> = self
                .plan
                .segments
                .iter()
                .flat_map(|segment| segment.published_tables.iter().map(String::as_str))
                .collect();
            let mut warnings = Vec::new();
            for table in tables {
                let name = format!("{}.{}", table.name.schema, table.name.name);
                if !self.plan.segments.is_empty() && !published.contains(name.as_str()) {
                    warnings.push(format!(
                        "table {} is not captured (not in the publication): it is as of the base backup, not of the instant",
                        table.name.display()
                    ));
                }
            }
            let chosen = tables.iter().map(|table| table.name.clone()).collect();
            let report = crate::changes::replay(transaction, self.store, self.keyring, &self.plan, &chosen)
                .await
                .map_err(|error| postgres::PostgresError::Replay(Box::new(error)))?;
            if let Ok(mut outcome) = self.outcome.lock() {
                *outcome = Some((report, warnings));
            }
            Ok(())
        })
    }

    fn before_commit<'a>(
        &'a self,
        transaction: &'a tokio_postgres::Transaction<'_>,
        tables: &'a [RestoredTable],
    ) -> futures_util::future::BoxFuture<'a, Result<(), postgres::PostgresError>> {
        Box::pin(async move {
            let values = match self.outcome.lock() {
                Ok(outcome) => outcome
                    .as_ref()
                    .map(|(report, _)| report.sequence_values.clone())
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let chosen = tables.iter().map(|table| table.name.clone()).collect();
            let set = crate::changes::replay::set_sequences(transaction, &values, &chosen)
                .await
                .map_err(|error| postgres::PostgresError::Replay(Box::new(error)))?;
            if let Ok(mut outcome) = self.outcome.lock()
                && let Some((report, _)) = outcome.as_mut()
            {
                report.sequences = set;
            }
            Ok(())
        })
    }
}

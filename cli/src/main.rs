//! `backupctl`: create, list, verify, restore and prune backups from a
//! terminal or a script. Same core as the Lambda functions.

mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use backup_core::config::{ConfigError, Settings, StorageKind, StorageSettings};
use backup_core::metadata::{BackupMetadata, MetadataIntegrity, VerificationDepth, VerificationStatus};
use backup_core::metrics::MetricsSink;
use backup_core::operations::{
    self, AuditReportRequest, Confirmation, CreateRequest, OperationError, PruneRequest, RestoreRequest,
    Services, VerifyRequest,
};
use backup_core::postgres::fidelity::AcceptedLoss;
use backup_core::postgres::kinds::cluster::RoleCreation;
use backup_core::repository::BackupSelector;
use backup_core::request::{BackupOrder, ManualTrigger, PruneOrder, ReportDate, RetentionDays, TableList};
use backup_core::{KeyId, Keyring, MasterKey};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "backupctl", version, about = "Encrypted, verified PostgreSQL backups", long_about = None)]
struct Cli {
    /// Where backups are stored: local, s3 or azure [env: BACKUP_STORAGE_TYPE; default: local]
    #[arg(long, global = true)]
    storage: Option<StorageKind>,
    /// Local backup folder [env: BACKUP_DIR; default: ./backups]
    #[arg(long, global = true)]
    backup_dir: Option<PathBuf>,
    /// Database to back up / restore in place [env: DATABASE_URL]
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Say nothing on stderr but the failure itself (no warnings)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log what happens on stderr: -v progress (info), -vv debug [RUST_LOG wins]
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Back up the database now
    #[command(
        after_help = "Reads DATABASE_URL, BACKUP_ENCRYPTION_KEY and the storage variables (BACKUP_DIR, or BACKUP_STORAGE_TYPE=s3 with S3_BACKUP_BUCKET).\n\nExamples:\n  backupctl create --reason \"before the 2.3 release\" --trigger pre-deployment\n  backupctl create --tables Booking,User\n  BACKUP_DIR=/var/backups/carwash backupctl -q create   (cron: silent unless it fails)"
    )]
    Create(CreateArgs),
    /// List backups, newest first
    #[command(
        after_help = "Reads the storage variables (BACKUP_DIR, or BACKUP_STORAGE_TYPE=s3 with S3_BACKUP_BUCKET); BACKUP_ENCRYPTION_KEY to check each metadata MAC.\n\nExamples:\n  backupctl list\n  backupctl list --json | jq '.[0].id'\n  backupctl list --changes            (the change segments in LSN order, gaps marked)"
    )]
    List(ListArgs),
    /// Check a backup: quick (checksum), full (decrypt everything), deep (restore into scratch)
    #[command(
        after_help = "Reads BACKUP_ENCRYPTION_KEY, the storage variables and, for --depth deep, BACKUP_SCRATCH_DATABASE_URL. Exit 3: the backup's key is not in the keyring (nothing recorded).\n\nExamples:\n  backupctl verify --backup-id latest\n  backupctl verify --changes                     (every change segment and the chain)\n  backupctl verify --backup-id latest --changes  (both)\n  backupctl verify --backup-id random --depth deep\n  backupctl verify --backup-id c420b102 --depth quick"
    )]
    Verify(VerifyArgs),
    /// Restore a backup (all tables or some), in place or into another database
    #[command(
        after_help = "Reads BACKUP_ENCRYPTION_KEY, the storage variables and DATABASE_URL (the in-place target). Exit 2: refused before anything ran; 130: interrupted and undone.\n\nExamples:\n  backupctl restore --backup-id latest --target-url postgres://app@db/carwash_copy --create-db --yes\n  backupctl restore --backup-id before:2026-11-20T10:00:00Z --tables Booking --yes --reason \"bad migration\"\n  backupctl restore --backup-id latest          (at a terminal: asks for the database's name)"
    )]
    Restore(RestoreArgs),
    /// Delete backups past the retention period
    #[command(
        after_help = "Reads the storage variables and BACKUP_RETENTION_DAYS.\n\nExamples:\n  backupctl prune --dry-run\n  backupctl prune --retention-days 30"
    )]
    Prune(PruneArgs),
    /// Right to deletion: record an erasure every restore applies (--report:
    /// which backups still hold each erased subject, and until when)
    #[command(
        after_help = "Reads BACKUP_ENCRYPTION_KEY and the storage variables.\n\nExamples:\n  backupctl erase --table User --key id=42 --reason \"GDPR request 2026-118\"\n  backupctl erase --report"
    )]
    Erase(EraseArgs),
    /// Reports: `report audit` for the quarterly review
    #[command(
        after_help = "Reads the storage variables; BACKUP_ENCRYPTION_KEY to check each metadata MAC.\n\nExamples:\n  backupctl report audit                         (the previous calendar quarter, Markdown)\n  backupctl report audit --from 2026-07-01 --to 2026-09-30 --format csv"
    )]
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// The erasure ledger itself: `ledger set-aside` (break-glass) marks
    /// an object under erasures/ that is not a record as set aside, audited
    #[command(
        after_help = "Reads BACKUP_ENCRYPTION_KEY, BACKUP_LEDGER_HEAD_FILE and the storage variables.\n\nA junk object under erasures/ (not written by an erase) refuses every restore, and no role may\ndelete it. Setting it aside records its key and digest, who and why in the ledger head and the\naudit trail; an authentic record is never set aside, and changed bytes are looked at again.\n\nExample:\n  backupctl ledger set-aside erasures/junk.json --reason \"INC-7: stray upload\""
    )]
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Key management
    #[command(
        after_help = "Store every key where the backups are not: a backup cannot be restored without its key.\n\nExamples:\n  backupctl keys generate > backup.key\n  backupctl keys rotate --new-id k-20270101 < keyring.json > keyring.new.json"
    )]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Point-in-time recovery, first part: logical change capture
    /// (enable, capture, disable; see docs/PITR.md)
    #[command(
        after_help = "Reads DATABASE_URL, BACKUP_PITR_SLOT (default pgbackup_pitr), BACKUP_PITR_PUBLICATION (default pgbackup_pitr);\ncapture also BACKUP_ENCRYPTION_KEY and the storage variables.\n\nExamples:\n  backupctl pitr enable\n  backupctl pitr enable --tables Booking,User\n  backupctl pitr capture          (every minute: one segment under changes/, then the slot advances)\n  backupctl pitr disable          (drops the slot and the publication)"
    )]
    Pitr {
        #[command(subcommand)]
        command: PitrCommand,
    },
}

#[derive(Subcommand)]
enum PitrCommand {
    /// Create the publication (the backed-up tables with a primary key or
    /// replica identity; the others are named and left out) and the
    /// logical replication slot, after checking the server allows it
    #[command(
        after_help = "Reads DATABASE_URL, BACKUP_PITR_SLOT and BACKUP_PITR_PUBLICATION (both default pgbackup_pitr). Needs wal_level=logical on the server.\n\nExamples:\n  backupctl pitr enable\n  backupctl pitr enable --tables Booking,User\n  backupctl pitr enable --replica-identity-full   (tables without a primary key too, by all their columns)"
    )]
    Enable {
        /// Only these tables, comma-separated (Booking,User or public.Booking)
        #[arg(long)]
        tables: Option<TableList>,
        /// Set the tables without a primary key to REPLICA IDENTITY FULL and
        /// capture them (matched by all their columns), instead of leaving them out
        #[arg(long)]
        replica_identity_full: bool,
    },
    /// Write what was committed since the last capture as one encrypted
    /// segment under changes/, then advance the slot past it
    #[command(
        after_help = "Reads DATABASE_URL, BACKUP_PITR_SLOT, BACKUP_PITR_PUBLICATION, BACKUP_ENCRYPTION_KEY and the storage variables.\n\nExamples:\n  backupctl pitr capture                       (every minute from cron or a schedule)\n  backupctl pitr capture --max-changes 100000"
    )]
    Capture {
        /// Take at most this many messages this run (the rest waits for the next)
        #[arg(long, default_value_t = backup_core::changes::capture::DEFAULT_MAX_CHANGES)]
        max_changes: i32,
    },
    /// Drop the slot (releasing the WAL it holds) and the publication
    #[command(
        after_help = "Reads DATABASE_URL, BACKUP_PITR_SLOT and BACKUP_PITR_PUBLICATION. Changes committed after this are no longer captured.\n\nExample:\n  backupctl pitr disable"
    )]
    Disable,
}

#[derive(Args)]
struct CreateArgs {
    /// Why this backup is taken (recorded in the metadata and the audit trail)
    #[arg(long)]
    reason: Option<String>,
    /// manual, pre-deployment or emergency
    #[arg(long, default_value = "manual")]
    trigger: ManualTrigger,
    /// Who asked for it, recorded in the metadata and the audit trail [default: $USER]
    #[arg(long)]
    requested_by: Option<String>,
    /// Only these tables, comma-separated (Booking,User or public.Booking)
    #[arg(long)]
    tables: Option<TableList>,
    /// Kinds of objects the backup may leave out, e.g. inheritance,rule; any
    /// other object it cannot bring back refuses it [env: BACKUP_ALLOW_SCHEMA_LOSS]
    #[arg(long)]
    allow_schema_loss: Option<AcceptedLoss>,
}

#[derive(Args)]
struct ListArgs {
    /// List the change segments (point-in-time recovery) instead: LSN
    /// range, commit times, transactions, changes, size, tables; gaps in
    /// the chain marked
    #[arg(long)]
    changes: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// A backup id (or its first 8+ hex digits after the last dash), `latest`,
    /// `latest-verified`, `random` (restore tests of older backups and keys)
    /// or `before:2026-11-20T10:00:00Z`
    #[arg(long, required_unless_present = "changes")]
    backup_id: Option<BackupSelector>,
    /// Verify the change segments (point-in-time recovery): each one's
    /// document MAC, SHA-256 and every chunk, the chain's LSN continuity,
    /// and that each base backup's chain has no gap. With --backup-id, the
    /// backup too
    #[arg(long)]
    changes: bool,
    /// Let `latest`, `before:` and `random` choose a safety backup (the state
    /// an in-place restore replaced); `list` marks them with trigger `safety`
    #[arg(long)]
    include_safety: bool,
    /// quick (checksum), full (decrypt and count every row) or deep (restore into scratch and compare)
    #[arg(long, default_value = "full")]
    depth: VerificationDepth,
    /// Server for deep verification; a scratch database is created and dropped on it
    /// [env: BACKUP_SCRATCH_DATABASE_URL]
    #[arg(long)]
    scratch_url: Option<String>,
    /// Deep only: application checks (`-- name:` blocks with `-- expect:` lines)
    /// run on the restored copy, a disaster-recovery drill [env: BACKUP_DRILL_CHECKS]
    #[arg(long)]
    checks: Option<String>,
}

#[derive(Args)]
struct RestoreArgs {
    /// A backup id (or its first 8+ hex digits after the last dash), `latest`,
    /// `latest-verified`, `before:2026-11-20T10:00:00Z` (the newest backup
    /// taken before that instant, a verified one preferred) or `random`
    #[arg(long, required_unless_present = "at", conflicts_with = "at")]
    backup_id: Option<BackupSelector>,
    /// Point-in-time recovery: the state at this instant (RFC 3339, e.g.
    /// 2026-12-05T10:42:00Z): the newest base backup taken before it whose
    /// chain of captured changes (`pitr capture`) reaches past it, then the
    /// changes committed up to it, in the restore's one transaction
    #[arg(long, value_parser = parse_instant)]
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Let `latest`, `before:` and `random` choose a safety backup (the state
    /// an in-place restore replaced); `list` marks them with trigger `safety`
    #[arg(long)]
    include_safety: bool,
    /// Only these tables, comma-separated; others are not touched
    #[arg(long)]
    tables: Option<TableList>,
    /// Restore into this database instead of DATABASE_URL
    #[arg(long)]
    target_url: Option<String>,
    /// Create the --target-url database first when the server has none by
    /// that name (recovery into a new instance), with the source's encoding
    /// and locale, then give it the source database's settings (ALTER
    /// DATABASE … SET, per role too), comment, grants and owner; an
    /// existing database is left as it is
    #[arg(long, requires = "target_url")]
    create_db: bool,
    /// Create the roles the backup records (owners, grantees, policy and
    /// default-privilege roles, and their memberships) that the target
    /// server lacks, without passwords: NOLOGIN (the default, `nologin`) or
    /// with every attribute as recorded (`as-recorded`, LOGIN too); never
    /// SUPERUSER, and an existing role is never altered. Without it a
    /// missing role is a warning and its objects belong to the restoring role
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "nologin")]
    create_roles: Option<RoleCreation>,
    /// Create every table, index and materialized view in the target
    /// database's default tablespace, whatever tablespaces the backup names
    /// (as pg_restore --no-tablespaces); each is reported as a warning. A
    /// tablespace the target lacks is treated so without this flag too
    #[arg(long)]
    no_tablespaces: bool,
    /// Leave the backup's security labels out (as pg_restore
    /// --no-security-labels), with one warning naming them. Without it, a
    /// label whose provider (e.g. sepgsql) the target does not load refuses
    /// the restore before any change
    #[arg(long)]
    no_security_labels: bool,
    /// With --tables, also restore the backup's large objects (with their
    /// OIDs, owners, grants and comments), as pg_dump --large-objects. They
    /// belong to no table: a full restore always brings them back, a
    /// restore of chosen tables only with this flag
    #[arg(long)]
    large_objects: bool,
    /// Skip the safety backup normally taken before an in-place restore
    #[arg(long)]
    no_safety_backup: bool,
    /// Confirm that data in the target database will be replaced
    #[arg(long)]
    yes: bool,
    /// Drop and create again, from the backup, chosen tables that exist in
    /// the target with another definition (e.g. left half-made by an older
    /// interrupted restore), in the restore's one transaction; without it
    /// such a restore is refused and the differences are named
    #[arg(long)]
    replace_existing: bool,
    /// Why this restore is done (recorded in the audit trail)
    #[arg(long)]
    reason: Option<String>,
    /// Who asked for it, recorded in the audit trail and on the safety backup [default: $USER]
    #[arg(long)]
    requested_by: Option<String>,
}

#[derive(Args)]
struct PruneArgs {
    /// Show what would be deleted, delete nothing
    #[arg(long)]
    dry_run: bool,
    /// Override BACKUP_RETENTION_DAYS (at least 1)
    #[arg(long)]
    retention_days: Option<RetentionDays>,
}

#[derive(Args)]
struct EraseArgs {
    /// The table the person's rows are in: User or schema.Table
    #[arg(long, required_unless_present = "report")]
    table: Option<String>,
    /// COLUMN=VALUE identifying the rows (repeat for a composite key)
    #[arg(long = "key", value_name = "COLUMN=VALUE", required_unless_present = "report")]
    keys: Vec<String>,
    /// Why (e.g. the request's ticket), recorded in the ledger and the audit trail
    #[arg(long)]
    reason: Option<String>,
    /// Who asked for it [default: $USER]
    #[arg(long)]
    requested_by: Option<String>,
    /// List, per erasure, the backups that still hold the subject and when
    /// retention removes the last of them (reads those tables in every backup)
    #[arg(long, conflicts_with_all = ["table", "keys"])]
    report: bool,
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Every operation in a period with its actor, trigger, reason and
    /// outcome; counts; manual operations without a reason; restores;
    /// verifications and drills; gaps longer than the RPO; retention
    /// compliance; key ids in use
    #[command(
        after_help = "Reads the storage variables; BACKUP_ENCRYPTION_KEY to check each metadata MAC.\n\nExamples:\n  backupctl report audit\n  backupctl report audit --from 2026-07-01 --to 2026-09-30 --format json --save"
    )]
    Audit(AuditArgs),
}

#[derive(Args)]
struct AuditArgs {
    /// First day (2026-07-01, UTC) or instant [default: the previous calendar quarter]
    #[arg(long)]
    from: Option<ReportDate>,
    /// Last day included (2026-09-30), or an instant (excluded)
    #[arg(long)]
    to: Option<ReportDate>,
    /// md, json or csv (one row per operation)
    #[arg(long, default_value = "md")]
    format: ReportFormat,
    /// Also store it under reports/ in the backup store (Markdown and JSON)
    #[arg(long)]
    save: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Md,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Set objects under erasures/ that are not records aside (audited)
    #[command(
        after_help = "Reads BACKUP_ENCRYPTION_KEY, BACKUP_LEDGER_HEAD_FILE and the storage variables.\n\nExample:\n  backupctl ledger set-aside erasures/junk.json --reason \"INC-7: stray upload\""
    )]
    SetAside {
        /// The object's key, e.g. erasures/junk.json (repeat for several)
        #[arg(required = true)]
        keys: Vec<String>,
        /// Why (e.g. the incident), recorded in the ledger head and the audit trail
        #[arg(long)]
        reason: Option<String>,
        /// Who decided it [default: $USER]
        #[arg(long)]
        requested_by: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random 256-bit key as 64 hex characters
    #[command(
        after_help = "Store the key where the backups are not (a password manager, Secrets Manager): without it no backup made with it can be restored.\n\nExamples:\n  backupctl keys generate > backup.key && chmod 600 backup.key\n  export BACKUP_ENCRYPTION_KEY=$(cat backup.key)"
    )]
    Generate,
    /// Rotate: read the keyring (or a bare key) from stdin, or from
    /// BACKUP_ENCRYPTION_KEY when stdin is a terminal, and print a keyring
    /// with every old key kept and a new current key. Store the output where
    /// the key lives (Secrets Manager rotates on its own: see the README)
    #[command(
        after_help = "Examples:\n  backupctl keys rotate < keyring.json > keyring.new.json\n  backupctl keys rotate --new-id k-20270101 < backup.key > keyring.json   (a bare key becomes a keyring)"
    )]
    Rotate {
        /// Id of the new key [default: k-YYYYMMDD]
        #[arg(long)]
        new_id: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    // One async thread: the heavy work (compression, hashing) runs on
    // blocking threads, and the COPY streams' wake-ups stay on one thread
    // instead of crossing between workers (16 % less CPU and 7 % less wall
    // time for a create on 2 cores than two workers; see README Performance).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("could not start the async runtime: {error}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) if error.is_interrupted() => {
            eprintln!("backupctl: {}", error.chain());
            ExitCode::from(INTERRUPTED)
        }
        Err(error) => {
            let code = exit_code_of(&error);
            let _ = fail(&error.chain());
            code
        }
    }
}

async fn pitr(
    services: &Services,
    settings: &Settings,
    command: PitrCommand,
    database_url: &str,
    names: backup_core::changes::PitrNames,
    json: bool,
) -> Result<ExitCode, OperationError> {
    use backup_core::changes::{self, CaptureOutcome, CaptureRequest};
    let print_json =
        |value: serde_json::Value| println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    match command {
        PitrCommand::Enable {
            tables,
            replica_identity_full,
        } => {
            let tables = tables.unwrap_or_default();
            let report =
                changes::enable_pitr_with(database_url, &names, tables.names(), replica_identity_full)
                    .await?;
            if json {
                print_json(serde_json::to_value(&report).unwrap_or_default());
            } else {
                println!(
                    "change capture enabled: publication {} ({}) lists {} tables, slot {} ({}) starts at {}",
                    report.publication,
                    if report.publication_created {
                        "created"
                    } else {
                        "updated"
                    },
                    report.tables.len(),
                    report.slot,
                    if report.slot_created { "created" } else { "kept" },
                    report.slot_position
                );
                for table in &report.identity_full {
                    println!("set to REPLICA IDENTITY FULL and captured: {table}");
                }
                for left in &report.left_out {
                    println!("left out: {} ({})", left.table, left.reason);
                }
                for warning in &report.warnings {
                    eprintln!("warning: {warning}");
                }
            }
        }
        PitrCommand::Disable => {
            let report = changes::disable_pitr(database_url, &names).await?;
            if json {
                print_json(serde_json::to_value(&report).unwrap_or_default());
            } else {
                let said = |dropped: bool| if dropped { "dropped" } else { "was not there" };
                println!(
                    "change capture disabled: slot {} {}, publication {} {}",
                    report.slot,
                    said(report.slot_dropped),
                    report.publication,
                    said(report.publication_dropped)
                );
            }
        }
        PitrCommand::Capture { max_changes } => {
            let mut request = CaptureRequest::new(database_url, names);
            request.max_changes = max_changes;
            request.container = settings.container;
            let run = operations::CaptureRun {
                capture: request,
                enable_on_first_run: false,
                accepted_loss: settings.allow_schema_loss.clone(),
            };
            let report = operations::capture_and_report(services, &run).await?;
            if json {
                print_json(serde_json::to_value(&report).unwrap_or_default());
            } else {
                let health = &report.report.health;
                for warning in &health.warnings {
                    eprintln!("backupctl: warning: {warning}");
                }
                match &report.report.outcome {
                    CaptureOutcome::NoChanges { slot, position } => {
                        println!(
                            "no changes since the last capture (slot {slot} at {position}); no segment written"
                        )
                    }
                    CaptureOutcome::Captured {
                        segment,
                        more_pending,
                        duration_ms,
                    } => {
                        println!(
                            "captured {}: {} transactions, {} row changes, commits {} … {} ({} … {}), {} stored in {duration_ms} ms; slot advanced to {}",
                            segment.id,
                            segment.transactions,
                            segment.changes,
                            segment.first_commit_lsn,
                            segment.last_commit_lsn,
                            segment
                                .first_commit_time
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            segment
                                .last_commit_time
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            human_bytes(segment.size_bytes),
                            segment.end_lsn
                        );
                        if *more_pending {
                            println!("more changes are waiting: run capture again");
                        }
                    }
                }
                println!(
                    "slot {}: {} of WAL kept when the run started ({} … {}), oldest uncaptured commit {:.1} s old",
                    health.slot,
                    human_bytes(health.lag_bytes),
                    health.confirmed_lsn,
                    health.current_lsn,
                    report.report.oldest_uncaptured_commit_age_seconds
                );
                if let Some(cut) = &report.report.chain_cut
                    && !cut.partitions.is_empty()
                {
                    eprintln!(
                        "backupctl: warning: {} (after {}, compared with {}): the change chain is cut at segment {}",
                        cut.reason, cut.previous_end, cut.compared_with, cut.segment
                    );
                } else if let Some(cut) = &report.report.chain_cut {
                    eprintln!(
                        "backupctl: warning: the published tables' schema changed after {} (fingerprint {} in {}, now {}): the change chain is cut at segment {}",
                        cut.previous_end,
                        short(&cut.old_fingerprint),
                        cut.compared_with,
                        short(&cut.new_fingerprint),
                        cut.segment
                    );
                }
                if let Some(base) = &report.base_backup {
                    println!(
                        "base backup {} taken after the cut: the new chain starts at {}",
                        base.id, base.start_lsn
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A fingerprint's first 12 hex digits: enough to tell two apart.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// Without --yes, a person at a terminal confirms by typing the target
/// database's name (the restore checks it against the server's own
/// answer); anywhere else the restore is refused.
fn ask_for_the_target_name(target_url: Option<&str>) -> Result<Confirmation, OperationError> {
    use std::io::{BufRead, Write};
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        // Unconfirmed: the core refuses it, and audits the attempt.
        return Ok(Confirmation::None);
    }
    // postgres://host/name?options: the name, for the prompt only (the
    // restore checks what is typed against the server's own answer).
    let named = target_url
        .filter(|url| url.contains("://"))
        .and_then(|url| {
            url.split('?')
                .next()?
                .rsplit_once('/')
                .map(|(_, name)| name.to_owned())
        })
        .filter(|name| !name.is_empty() && !name.contains('@'));
    let mut stderr = std::io::stderr();
    let _ = write!(
        stderr,
        "This restore replaces data in {}. Type the database's name to go on: ",
        named
            .as_deref()
            .map_or("the target database".to_owned(), |name| format!(
                "database {name:?}"
            ))
    );
    let _ = stderr.flush();
    let mut typed = String::new();
    if std::io::stdin().lock().read_line(&mut typed).is_err() || typed.trim().is_empty() {
        return Ok(Confirmation::None);
    }
    Ok(Confirmation::DatabaseName(typed.trim().to_owned()))
}

/// 3: the backup could not be checked with this configuration (its key is
/// not in the keyring), which says nothing about the backup itself; 1 for
/// every other failure.
fn exit_code_of(error: &OperationError) -> ExitCode {
    match error {
        OperationError::KeyNotInKeyring { .. } => ExitCode::from(3),
        OperationError::Refused(_) | OperationError::NotConfirmed => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// The exit code of a command stopped by SIGINT or SIGTERM, as a shell
/// reports a process its Ctrl-C ended (128 + SIGINT).
const INTERRUPTED: u8 = 130;

/// SIGINT (Ctrl-C) and SIGTERM. `create` and `restore` stop as after a
/// failure: the interrupt reaches them, they undo what they did and say so
/// (exit 130). Other commands change nothing worth undoing and exit at
/// once. A second signal exits at once too, without the clean-up.
async fn stop_on_signals(interrupt: backup_core::Interrupt, undoable: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut sigint), Ok(mut sigterm)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        tracing::warn!("could not listen for SIGINT and SIGTERM; they end backupctl without its clean-up");
        return;
    };
    let mut first = true;
    loop {
        let reason = tokio::select! {
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        };
        if !undoable {
            eprintln!("backupctl: interrupted ({reason})");
            std::process::exit(INTERRUPTED.into());
        }
        if !first {
            eprintln!(
                "backupctl: interrupted again ({reason}); stopped before the clean-up finished, so what it had not undone yet is left (see the log)"
            );
            std::process::exit(INTERRUPTED.into());
        }
        first = false;
        interrupt.trigger(reason);
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("backupctl: {message}");
    ExitCode::FAILURE
}

/// Quiet by default, on a terminal and under cron alike: warnings only, and
/// never an operation's closing failure log (the `backupctl:` line says it
/// once). RUST_LOG, when set, decides, except that statement parameters (erasure keys, row values) are never logged.
fn init_logging(quiet: bool, verbose: u8) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let outcome = operations::OUTCOME_LOG;
        let default = match (quiet, verbose) {
            (true, _) => format!("error,{outcome}=off"),
            (false, 0) => format!("warn,{outcome}=off"),
            (false, 1) => "info".to_owned(),
            (false, _) => "debug".to_owned(),
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    let filter = match backup_core::postgres::NO_PARAMETER_LOGS.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::log_writer);
    if std::io::stderr().is_terminal() {
        builder.compact().without_time().init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

async fn run(cli: Cli) -> Result<ExitCode, OperationError> {
    if let Command::Keys { command } = &cli.command {
        match command {
            KeysCommand::Generate => {
                let key = MasterKey::generate(KeyId::new("generated")?)
                    .map_err(|e| OperationError::Metadata(backup_core::MetadataError::Randomness(e)))?;
                let hex = key.to_hex();
                println!("{}", hex.as_str());
                // The id a bare key's backups record (list shows it), so the
                // person can tell later which key a backup needs.
                let id = MasterKey::from_hex_with_fingerprint_id(hex.as_str(), "the generated key")?;
                eprintln!(
                    "backupctl: as BACKUP_ENCRYPTION_KEY this key has id {}: backups made with it record that id (`backupctl list` shows it). Store the key where the backups are not: without it no backup can be restored",
                    id.id().as_str()
                );
            }
            KeysCommand::Rotate { new_id } => rotate_keys(new_id.as_deref())?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Flags win over the environment; both go through the one parser.
    let storage = cli.storage.map(|kind| format!("{kind:?}"));
    let backup_dir = cli.backup_dir.as_ref().map(|dir| dir.display().to_string());
    let settings = Settings::from_lookup(|name| {
        let flag = match name {
            "BACKUP_STORAGE_TYPE" => storage.clone(),
            "BACKUP_DIR" => backup_dir.clone(),
            "DATABASE_URL" => cli.database_url.clone(),
            _ => None,
        };
        flag.or_else(|| std::env::var(name).ok())
    })?;
    // Only create may start a backup folder; for every other command a
    // missing one is a wrong --backup-dir (or working directory), not
    // "no backups yet".
    if let (StorageSettings::Local { dir }, false) = (
        &settings.storage,
        matches!(
            cli.command,
            Command::Create(_)
                | Command::Pitr {
                    command: PitrCommand::Capture { .. } | PitrCommand::Enable { .. } | PitrCommand::Disable
                }
        ),
    ) && !dir.is_dir()
    {
        return Err(OperationError::Config(ConfigError::MissingBackupFolder {
            path: std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        }));
    }
    let store = settings.open_store().await?;
    let interactive = std::io::stderr().is_terminal();
    let metrics = match std::env::var("BACKUP_METRICS")
        .ok()
        .as_deref()
        .map(MetricsSink::from_setting)
    {
        Some(Some(sink)) => sink,
        // Metrics are for a collector: asked for with BACKUP_METRICS.
        _ => MetricsSink::Disabled,
    };
    let actor = std::env::var("USER").unwrap_or_else(|_| "backupctl".into());
    let mut services = Services::new(store, &settings, actor, metrics);
    if interactive && !cli.json {
        services = services.with_progress(Box::new(progress::TerminalProgress::new()));
    }
    let json = cli.json;
    let undoable = matches!(cli.command, Command::Create(_) | Command::Restore(_));
    tokio::spawn(stop_on_signals(services.interrupt.clone(), undoable));

    match cli.command {
        Command::Keys { .. } => Ok(ExitCode::SUCCESS),
        Command::Pitr { command } => {
            let database_url = settings
                .database_url
                .clone()
                .ok_or(OperationError::MissingDatabaseUrl("capture changes from"))?;
            let names = backup_core::changes::PitrNames::from_env().map_err(OperationError::Refused)?;
            pitr(&services, &settings, command, &database_url, names, json).await
        }
        Command::Erase(args) if args.report => {
            let reports = operations::erasure_report(&services).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default());
            } else if reports.is_empty() {
                println!("the erasure ledger is empty");
            } else {
                for report in &reports {
                    match &report.last_removed_by {
                        Some(until) => println!(
                            "{} ({}, recorded {}): still in {} backups until {until}: {}",
                            report.erasure_id,
                            report.table,
                            report.recorded_at,
                            report.backups_containing.len(),
                            report.backups_containing.join(", ")
                        ),
                        None => println!(
                            "{} ({}, recorded {}): in no backup any more",
                            report.erasure_id, report.table, report.recorded_at
                        ),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase(args) => {
            let mut key = std::collections::BTreeMap::new();
            for pair in &args.keys {
                let (column, value) = backup_core::erasure::parse_key(pair).map_err(OperationError::from)?;
                key.insert(column, value);
            }
            let order = backup_core::erasure::ErasureOrder {
                table: args.table.unwrap_or_default(),
                key,
                reason: args.reason,
                requested_by: args.requested_by.or_else(|| std::env::var("USER").ok()),
            };
            let record = operations::erase_subject(&services, &order).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&record).unwrap_or_default());
            } else {
                println!(
                    "recorded {} for {}: every restore and deep verification now deletes these rows before it commits",
                    record.id, record.table
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ledger {
            command:
                LedgerCommand::SetAside {
                    keys,
                    reason,
                    requested_by,
                },
        } => {
            let requested_by = requested_by.or_else(|| std::env::var("USER").ok());
            let entries = operations::set_aside_ledger_objects(
                &services,
                &keys,
                reason.as_deref(),
                requested_by.as_deref(),
            )
            .await?;
            if json {
                let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
                println!("{}", serde_json::json!({"setAside": keys}));
            } else {
                for entry in &entries {
                    println!(
                        "set aside {} (sha256 {}): restores no longer read it; the ledger head and the audit trail record it",
                        entry.key, entry.sha256
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            command: ReportCommand::Audit(args),
        } => {
            let request = AuditReportRequest::for_period(
                args.from,
                args.to,
                chrono::Duration::minutes(i64::from(settings.rpo_minutes)),
                settings.retention,
                chrono::Utc::now(),
            )?;
            let report = if args.save {
                let (report, keys) = operations::publish_audit_report(&services, &request).await?;
                eprintln!("backupctl: stored {}", keys.join(" and "));
                report
            } else {
                operations::build_audit_report(&services, &request).await?
            };
            match args.format {
                ReportFormat::Md => print!("{}", report.to_markdown()),
                ReportFormat::Csv => print!("{}", report.to_csv()),
                ReportFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default())
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Create(args) => {
            let order = BackupOrder {
                reason: args.reason,
                trigger: args.trigger,
                requested_by: args.requested_by.or_else(|| std::env::var("USER").ok()),
                tables: args.tables.unwrap_or_default(),
            };
            let request = CreateRequest {
                database_url: settings
                    .database_url
                    .clone()
                    .ok_or(OperationError::MissingDatabaseUrl("back up"))?,
                request: order.request(),
                tables: order.tables,
                container: settings.container,
                accepted_loss: args
                    .allow_schema_loss
                    .unwrap_or_else(|| settings.allow_schema_loss.clone()),
            };
            let metadata = operations::create_backup(&services, &request).await?;
            if json {
                println!("{}", metadata.to_json_pretty());
            } else {
                println!(
                    "created {}: {} tables, {} rows, {} stored in {} ms",
                    metadata.id,
                    metadata.tables.len(),
                    metadata.record_count,
                    human_bytes(metadata.size_bytes),
                    metadata.duration_ms
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List(ListArgs { changes: true }) => {
            let listing = backup_core::changes::list_chain(
                services.repository.store().as_ref(),
                services.keyring.as_ref(),
            )
            .await
            .map_err(OperationError::from)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing).unwrap_or_default());
            } else {
                print_changes(&listing);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List(ListArgs { changes: false }) => {
            let backups = services.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&backups).unwrap_or_default());
            } else {
                print_list(&backups);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(VerifyArgs {
            backup_id: None,
            changes,
            ..
        }) => {
            let passed = verify_the_changes(&services, json, changes).await?;
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Verify(args) => {
            let Some(backup_id) = args.backup_id else {
                return Err(OperationError::Refused("give --backup-id or --changes".into()));
            };
            let checks = match args.checks.or_else(|| {
                (args.depth == VerificationDepth::Deep)
                    .then(|| settings.drill_checks.clone())
                    .flatten()
            }) {
                Some(spec) => {
                    backup_core::drill::load_checks(&spec, services.repository.store().as_ref()).await?
                }
                None => Vec::new(),
            };
            let request = VerifyRequest {
                selector: if args.include_safety {
                    backup_id.including_safety()
                } else {
                    backup_id
                },
                depth: args.depth,
                scratch_url: args.scratch_url.or(settings.scratch_database_url.clone()),
                checks,
            };
            let report = operations::verify_backup(&services, &request).await?;
            let passed = report.status == VerificationStatus::Passed;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                if let Some(selection) = &report.selection {
                    println!("{selection}");
                }
                for check in &report.checks {
                    println!("  ok  {check}");
                }
                if let Some(drill) = &report.drill {
                    for check in &drill.checks {
                        let mark = if check.passed { "ok  " } else { "FAIL" };
                        println!("  {mark} check {}: {}", check.name, check.detail);
                    }
                    println!(
                        "  drill: RTO {} ms, {} checks passed, {} failed",
                        drill.rto_ms, drill.checks_passed, drill.checks_failed
                    );
                }
                match (&report.error, report.restore_duration_ms) {
                    (Some(error), _) => println!("FAILED {} ({:?}): {error}", report.backup_id, report.depth),
                    (None, Some(restore_ms)) => println!(
                        "passed {} ({:?}) in {} ms; restore took {restore_ms} ms",
                        report.backup_id, report.depth, report.duration_ms
                    ),
                    (None, None) => {
                        println!(
                            "passed {} ({:?}) in {} ms",
                            report.backup_id, report.depth, report.duration_ms
                        )
                    }
                }
            }
            if !passed {
                eprintln!(
                    "backupctl: backup {} failed verification: {}",
                    report.backup_id,
                    report.error.as_deref().unwrap_or("")
                );
            }
            let passed = if args.changes {
                verify_the_changes(&services, json, true).await? && passed
            } else {
                passed
            };
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Restore(args) => {
            let confirmation = if args.yes {
                Confirmation::Operator
            } else {
                ask_for_the_target_name(args.target_url.as_deref().or(settings.database_url.as_deref()))?
            };
            let selector = match (args.backup_id, args.at) {
                (Some(selector), _) => selector,
                (None, Some(at)) => BackupSelector::Before(at),
                (None, None) => BackupSelector::Latest,
            };
            let request = RestoreRequest {
                selector: if args.include_safety {
                    selector.including_safety()
                } else {
                    selector
                },
                at: args.at,
                tables: args.tables.unwrap_or_default(),
                database_url: settings.database_url.clone(),
                target_url: args.target_url,
                safety_backup: !args.no_safety_backup,
                confirmation,
                replace_existing: args.replace_existing,
                reason: args.reason,
                requested_by: args.requested_by.or_else(|| std::env::var("USER").ok()),
                container: settings.container,
                create_roles: args.create_roles,
                create_database: args.create_db,
                no_tablespaces: args.no_tablespaces,
                no_security_labels: args.no_security_labels,
                large_objects: args.large_objects,
            };
            let outcome = operations::restore_backup(&services, &request)
                .await
                .map_err(|error| match error {
                    // The core's words name the Lambda payload's field too.
                    OperationError::NotConfirmed => OperationError::Refused(
                        "restore refused: it replaces data, so it needs --yes (or run it at a terminal and type the target database's name)".into(),
                    ),
                    other => other,
                })?;
            if outcome.database_created {
                eprintln!(
                    "backupctl: created database {:?} to restore into",
                    outcome.target_database
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
            } else {
                if let Some(selection) = &outcome.selection {
                    println!("{selection}");
                }
                if let Some(safety) = &outcome.safety_backup_id {
                    println!("safety backup of the current state: {safety}");
                }
                for role in &outcome.roles_created {
                    println!("  role {role} created");
                }
                for table in &outcome.tables {
                    println!(
                        "  {:<24} {:>12} rows{}",
                        table.table,
                        table.rows,
                        if table.created { "  (created)" } else { "" }
                    );
                }
                for erased in &outcome.erased {
                    match &erased.skipped {
                        Some(why) => {
                            println!("  erasure {} ({}): not applied, {why}", erased.id, erased.table)
                        }
                        None => println!(
                            "  erasure {} ({}): {} rows deleted",
                            erased.id, erased.table, erased.rows
                        ),
                    }
                }
                for warning in &outcome.warnings {
                    println!("  warning: {warning}");
                }
                if let Some(replayed) = &outcome.replayed {
                    match (replayed.reached_time, replayed.reached_lsn) {
                        (Some(time), Some(lsn)) => println!(
                            "replayed {} changes in {} transactions from {} segment(s): reached the commit of {} (LSN {lsn})",
                            replayed.changes,
                            replayed.transactions,
                            replayed.segments,
                            time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                        ),
                        _ => println!(
                            "no change was committed between the base backup and the instant: the base backup is the state at it"
                        ),
                    }
                }
                println!(
                    "restored {} into {}: {} rows in {} ms",
                    outcome.backup_id, outcome.target_database, outcome.record_count, outcome.duration_ms
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune(args) => {
            let order = PruneOrder {
                dry_run: args.dry_run,
                retention_days: args.retention_days,
            };
            let request = PruneRequest::new(order, settings.retention);
            let outcome = operations::prune_backups(&services, &request).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
            } else {
                let verb = if outcome.dry_run {
                    "would delete"
                } else {
                    "deleted"
                };
                for decision in &outcome.deleted {
                    println!("  {verb} {} ({})", decision.backup_id, decision.reason);
                }
                // A dry run is read to decide: say why each backup stays too.
                if outcome.dry_run {
                    for decision in &outcome.kept {
                        println!("  would keep {} ({})", decision.backup_id, decision.reason);
                    }
                }
                for decision in &outcome.segments_deleted {
                    println!(
                        "  {verb} change segment {} ({})",
                        decision.segment_id, decision.reason
                    );
                }
                if outcome.dry_run {
                    for decision in &outcome.segments_kept {
                        println!(
                            "  would keep change segment {} ({})",
                            decision.segment_id, decision.reason
                        );
                    }
                }
                for key in &outcome.orphans_deleted {
                    println!("  {verb} orphan {key}");
                }
                for failure in &outcome.failures {
                    println!("  could not delete {}: {}", failure.key, failure.error);
                }
                println!(
                    "{} {} backups, kept {}{}",
                    verb,
                    outcome.deleted.len(),
                    outcome.kept.len(),
                    if outcome.dry_run {
                        " (dry run: nothing deleted)"
                    } else {
                        ""
                    }
                );
            }
            Ok(if outcome.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `keys rotate`: the old keyring in, the rotated one out (stdout only;
/// what is said about it names ids, never keys).
fn rotate_keys(new_id: Option<&str>) -> Result<(), OperationError> {
    use std::io::Read;
    let (secret, source) = if std::io::stdin().is_terminal() {
        (
            zeroize::Zeroizing::new(std::env::var("BACKUP_ENCRYPTION_KEY").unwrap_or_default()),
            "BACKUP_ENCRYPTION_KEY",
        )
    } else {
        let mut text = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|_| OperationError::MissingKey)?;
        (text, "the keyring on stdin")
    };
    if secret.trim().is_empty() {
        return Err(OperationError::MissingKey);
    }
    let keyring = Keyring::from_secret_string(&secret, source)?;
    let new_id = match new_id {
        Some(id) => KeyId::new(id)?,
        None => keyring.next_key_id(chrono::Utc::now().date_naive()),
    };
    let rotated = keyring.rotated(new_id)?;
    println!("{}", rotated.to_secret_string().as_str());
    let kept: Vec<&str> = keyring.key_ids().map(KeyId::as_str).collect();
    eprintln!(
        "backupctl: new current key {}; kept {} (backups under them stay readable). Store the printed keyring where the key lives.",
        rotated.current_id(),
        kept.join(", ")
    );
    Ok(())
}

fn print_list(backups: &[BackupMetadata]) {
    if backups.is_empty() {
        println!("no backups yet");
        return;
    }
    println!(
        "{:<32} {:<24} {:<14} {:>6} {:>12} {:>10}  {:<12} verification",
        "id", "taken", "trigger", "tables", "rows", "size", "key"
    );
    for backup in backups {
        let verification = match &backup.verification {
            Some(v) => format!(
                "{:?} {:?} {}",
                v.status,
                v.depth,
                v.verified_at.format("%Y-%m-%d %H:%M")
            )
            .to_lowercase(),
            None => "not verified".into(),
        };
        let mut lost: Vec<&str> = backup
            .accepted_schema_loss
            .iter()
            .map(|l| l.kind.as_str())
            .collect();
        lost.dedup();
        let verification = if lost.is_empty() {
            verification
        } else {
            format!("{verification}; lacks (accepted): {}", lost.join(","))
        };
        let verification = match backup.metadata_integrity {
            MetadataIntegrity::Failed => {
                format!("METADATA ALTERED (fails its MAC; not restorable); {verification}")
            }
            MetadataIntegrity::Unsigned => format!("{verification}; metadata unsigned"),
            MetadataIntegrity::UnknownKey => format!(
                "METADATA KEY NOT IN KEYRING (not checked; passed over by latest/before:/random); {verification}"
            ),
            MetadataIntegrity::Misdated => {
                format!("METADATA ALTERED (timestamp moved; not restorable); {verification}")
            }
            MetadataIntegrity::Authentic | MetadataIntegrity::Unchecked => verification,
        };
        println!(
            "{:<32} {:<24} {:<14} {:>6} {:>12} {:>10}  {:<12} {verification}",
            backup.id.to_string(),
            backup.timestamp.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            backup.trigger.to_string(),
            backup.tables.len(),
            backup.record_count,
            human_bytes(backup.size_bytes),
            backup.key_id
        );
    }
}

/// `verify --changes`: the segments and the chain; whether they passed.
async fn verify_the_changes(services: &Services, json: bool, asked: bool) -> Result<bool, OperationError> {
    if !asked {
        return Err(OperationError::Refused("give --backup-id or --changes".into()));
    }
    let report = operations::verify_changes(services, &operations::VerifyChangesRequest::default()).await?;
    let passed = report.status == VerificationStatus::Passed;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        for check in &report.checks {
            println!("  ok  {check}");
        }
        for failure in &report.failures {
            println!("  FAIL segment {}: {}", failure.segment, failure.error);
        }
        for base in report.bases.iter().filter(|b| !b.covered) {
            println!(
                "  FAIL base backup {} (from LSN {}): {}",
                base.backup_id,
                base.start_lsn,
                base.error.as_deref().unwrap_or("")
            );
        }
        match &report.error {
            Some(_) => println!("FAILED change segments ({} segments)", report.segments),
            None => println!(
                "passed change segments: {} segments, {} read through, in {} ms",
                report.segments, report.segments_read, report.duration_ms
            ),
        }
    }
    if !passed {
        eprintln!(
            "backupctl: the change segments failed verification: {}",
            report.error.as_deref().unwrap_or("")
        );
    }
    Ok(passed)
}

fn print_changes(listing: &backup_core::changes::ChainListing) {
    if listing.segments.is_empty() {
        println!("no change segments yet");
        return;
    }
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(
            || "?".to_owned(),
            |at| at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        )
    };
    let lsn =
        |lsn: Option<backup_core::changes::Lsn>| lsn.map_or_else(|| "?".to_owned(), |lsn| lsn.to_string());
    println!(
        "{:<32} {:>12} {:>12} {:<23} {:<23} {:>6} {:>8} {:>10}  tables",
        "segment",
        "start LSN",
        "end LSN",
        "first commit (UTC)",
        "last commit (UTC)",
        "txns",
        "changes",
        "size"
    );
    for segment in &listing.segments {
        // A hole before this segment.
        for gap in listing.gaps.iter().filter(|g| g.before.as_str() == segment.id) {
            println!("  GAP: {gap}");
        }
        let mut note = match segment.document {
            backup_core::changes::chain::DocumentIntegrity::Failed => format!(
                "  DOCUMENT NOT TRUSTED: {}",
                segment.error.as_deref().unwrap_or("fails its MAC")
            ),
            _ => String::new(),
        };
        if segment.repeat {
            note.push_str("  (repeats earlier segments: a capture run again)");
        }
        println!(
            "{:<32} {:>12} {:>12} {:<23} {:<23} {:>6} {:>8} {:>10}  {}{note}",
            segment.id,
            lsn(segment.start_lsn),
            lsn(segment.end_lsn),
            time(segment.first_commit_time),
            time(segment.last_commit_time),
            segment.transactions,
            segment.changes,
            human_bytes(segment.size_bytes),
            segment.tables.join(",")
        );
    }
    let stored: u64 = listing.segments.iter().map(|s| s.size_bytes).sum();
    println!(
        "{} segments, {} stored, {} gaps",
        listing.segments.len(),
        human_bytes(stored),
        listing.gaps.len()
    );
}

fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// `--at`: an RFC 3339 instant, with `Z` or an offset.
fn parse_instant(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|at| at.with_timezone(&chrono::Utc))
        .map_err(|_| {
            format!("{text:?} is not an instant: write 2026-12-05T10:42:00Z (RFC 3339, with Z or an offset)")
        })
}

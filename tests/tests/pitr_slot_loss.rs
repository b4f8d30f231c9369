//! A slot the server invalidates (issue #29, "Safety of the slot";
//! docs/PITR.md) against a real PostgreSQL 15: a private logical cluster
//! of `infra/pg-logical.sh` on port 54402 (`PGBACKUP_SLOT_LOSS_URL`
//! overrides), because the test sets `max_slot_wal_keep_size` to 1MB, which
//! would invalidate the slots of every other capture test on the shared
//! 54400 cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_core::changes::{self, CaptureOutcome, CaptureRequest, ChangesError, Lsn};
use backup_core::config::Settings;
use backup_core::metadata::Trigger;
use backup_core::metrics::MetricsSink;
use backup_core::operations::{self, CaptureRun, CreateRequest, OperationError, Services};
use backup_core::storage::LocalStore;
use backup_core::{BackupRequest, ContainerOptions, postgres};
use chrono::{DateTime, Utc};
use integration_tests::pitr::{PitrDatabase, at_request, logical_admin_on};
use integration_tests::{TestDatabase, WebhookReceiver, test_keyring};
use tokio_postgres::Client;

const PRIVATE_PORT: u16 = 54402;

/// The private cluster's admin URL (started if it is not up).
fn slot_loss_admin() -> String {
    std::env::var("PGBACKUP_SLOT_LOSS_URL").unwrap_or_else(|_| logical_admin_on(PRIVATE_PORT))
}

/// Sets the keep size (a `sighup` setting) and waits until new sessions see it.
async fn keep_at_most(admin: &Client, size: &str) {
    // (one statement each: ALTER SYSTEM refuses to run in a transaction block)
    for statement in [
        format!("ALTER SYSTEM SET max_slot_wal_keep_size = '{size}'"),
        "ALTER SYSTEM SET wal_keep_size = 0".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    let started = Instant::now();
    loop {
        let client = postgres::connect(&slot_loss_admin()).await.unwrap();
        let keep: String = client
            .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
            .await
            .unwrap()
            .get(0);
        if keep == size {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the reload never applied: {keep}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wal_status(client: &Client, slot: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT wal_status::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .expect("the slot row is still there")
        .get(0)
}

async fn server_now(client: &Client) -> DateTime<Utc> {
    let micros: i64 = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    DateTime::from_timestamp_micros(micros).unwrap()
}

async fn digest(client: &Client) -> (i64, String) {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM \"Booking\" t",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn table_count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[])
        .await
        .unwrap()
        .get(0)
}

fn create_request(source: &TestDatabase) -> CreateRequest {
    CreateRequest {
        database_url: source.url.clone(),
        tables: backup_core::request::TableList::all(),
        request: BackupRequest {
            trigger: Trigger::Manual,
            reason: None,
            requested_by: None,
        },
        accepted_loss: Default::default(),
        container: ContainerOptions::default(),
    }
}

/// The EMF lines written to `path` for the capture operation.
fn capture_metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["Operation"] == "capture")
        .collect()
}

/// The text between the first two backquotes after `after` in `message`:
/// the command the message tells the operator to run.
fn command_after(message: &str, after: &str) -> String {
    let at = message
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} in {message}"));
    let rest = &message[at + after.len()..];
    let start = rest
        .find('`')
        .unwrap_or_else(|| panic!("a command after {after:?} in {message}"))
        + 1;
    let end = start + rest[start..].find('`').unwrap();
    rest[start..end].to_owned()
}

#[tokio::test]
async fn a_slot_the_server_invalidates_breaks_the_chain_loudly_and_the_advice_given_mends_it() {
    // Given a cluster that lets a slot keep at most 1MB of WAL
    let admin = postgres::connect(&slot_loss_admin()).await.unwrap();
    keep_at_most(&admin, "1MB").await;
    // And a database under capture, with a base backup and a captured segment
    let pitr = PitrDatabase::create_on(&slot_loss_admin(), "slot_loss").await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let client = source.client().await;
    client
        .batch_execute(
            "CREATE TABLE \"Booking\" (id serial PRIMARY KEY, note text NOT NULL);
             CREATE TABLE \"Filler\" (line text);
             INSERT INTO \"Booking\" (note) SELECT 'seed ' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    changes::enable_pitr(&source.url, &names, &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = tempfile::tempdir().unwrap();
    let metrics_file = metrics.path().join("emf.log");
    let webhook = WebhookReceiver::start(vec![]).await;
    let mut settings = Settings::from_lookup(|_| None).unwrap();
    settings.keyring = Some(test_keyring());
    settings.webhook_url = Some(webhook.url.clone());
    let mut services = Services::new(
        Arc::new(LocalStore::new(dir.path())),
        &settings,
        "test",
        MetricsSink::File(metrics_file.clone()),
    );
    services.pitr_slot = Some(names.slot.clone());
    services.pitr_publication = Some(names.publication.clone());
    let run = CaptureRun {
        capture: CaptureRequest::new(source.url.clone(), names.clone()),
        enable_on_first_run: false,
        accepted_loss: Default::default(),
    };
    let base = operations::create_backup(&services, &create_request(source))
        .await
        .unwrap();
    assert!(base.change_stream.is_some(), "the first base records the slot");
    client
        .batch_execute("INSERT INTO \"Booking\" (note) VALUES ('captured 1'), ('captured 2')")
        .await
        .unwrap();
    let captured = operations::capture_and_report(&services, &run).await.unwrap();
    let CaptureOutcome::Captured { segment, .. } = &captured.report.outcome else {
        panic!("the two rows were captured")
    };
    let broken_from: Lsn = segment.end_lsn;
    assert_eq!(captured.report.health.max_slot_wal_keep_size, "1MB");

    // When the application writes more WAL than the limit and no capture runs
    client
        .batch_execute("INSERT INTO \"Booking\" (note) VALUES ('lost 1'), ('lost 2')")
        .await
        .unwrap();
    let in_the_gap = server_now(&client).await;
    let writing = Instant::now();
    let mut seen = Vec::new();
    let mut rounds = 0;
    let mut warned_unreserved = false;
    let invalidated_after = loop {
        let status = wal_status(&client, &names.slot).await;
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status.as_deref() == Some("lost") {
            break writing.elapsed();
        }
        // Just before the checkpoint that removes its WAL, a slot past the
        // limit is `unreserved`, and every run's report warns about it.
        // (unless the checkpointer got there in between)
        if status.as_deref() == Some("unreserved") {
            match changes::capture::slot_health(&client, &names.slot).await {
                Ok(health) => {
                    let health = health.expect("the slot is there");
                    assert!(
                        health.warnings.iter().any(|w| w.contains("may invalidate it")),
                        "{health:?}"
                    );
                    warned_unreserved = true;
                }
                Err(ChangesError::ChainBroken { .. }) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert!(
            writing.elapsed() < Duration::from_secs(120),
            "the slot was never invalidated: wal_status went {seen:?} in {rounds} rounds"
        );
        rounds += 1;
        client
            .batch_execute(
                "INSERT INTO \"Filler\" SELECT repeat(md5(g::text), 4) FROM generate_series(1, 5000) g;
                 SELECT pg_switch_wal();",
            )
            .await
            .unwrap();
        if rounds % 3 == 0 {
            client.batch_execute("CHECKPOINT").await.unwrap();
        }
    };
    eprintln!(
        "slot invalidated {} ms after the writes began ({rounds} rounds of 5,000 rows, a WAL switch each, a CHECKPOINT every third); wal_status went {seen:?}",
        invalidated_after.as_millis()
    );
    assert!(
        warned_unreserved,
        "the slot was seen unreserved, and warned about, before it was lost: {seen:?}"
    );
    let error = operations::capture_and_report(&services, &run).await.unwrap_err();

    // Then the run fails naming the LSN from which changes are lost, and what to do
    let message = error.chain();
    assert!(
        matches!(&error, OperationError::Changes(ChangesError::ChainBroken { from, .. }) if *from == broken_from),
        "{message}"
    );
    assert!(
        message.contains(&format!("the change chain is broken from LSN {broken_from}")),
        "{message}"
    );
    assert!(message.contains("wal_status = lost"), "{message}");
    // and counts as a capture failure, and the webhook hears it
    let lines = capture_metrics(&metrics_file);
    assert_eq!(lines.last().unwrap()["CaptureFailures"], 1.0, "{lines:?}");
    // (the base backup's own delivery came before it)
    let hooks: Vec<_> = webhook
        .received()
        .into_iter()
        .filter(|hook| hook.body["type"] == "backup_failure")
        .collect();
    assert_eq!(hooks.len(), 1, "{:?}", webhook.events());
    assert_eq!(hooks[0].body["failure"], "pitr_chain_broken");
    assert_eq!(hooks[0].body["slot"], names.slot.as_str());
    assert_eq!(hooks[0].body["brokenFromLsn"], broken_from.to_string());
    // And a base backup taken now records no stream position: the slot cannot start a chain
    let unanchored = operations::create_backup(&services, &create_request(source))
        .await
        .unwrap();
    assert_eq!(unanchored.change_stream, None);
    // And `pitr enable` alone does not pretend to mend the slot
    let kept = changes::enable_pitr(&source.url, &names, &[]).await.unwrap_err();
    assert!(
        kept.to_string().contains("`backupctl pitr disable` first"),
        "{kept}"
    );

    // When the operator does what the message says: the two commands, then a base backup
    let first = command_after(&message, "Drop and recreate the slot");
    let second = command_after(&message, &format!("`{first}`, then"));
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("backupctl pitr disable", "backupctl pitr enable")
    );
    let dropped = changes::disable_pitr(&source.url, &names).await.unwrap();
    assert!(dropped.slot_dropped, "{dropped:?}");
    let enabled = changes::enable_pitr(&source.url, &names, &[]).await.unwrap();
    assert!(enabled.slot_created, "{enabled:?}");
    assert!(
        message.contains("then take a base backup (`backupctl create`"),
        "{message}"
    );
    let new_base = operations::create_backup(&services, &create_request(source))
        .await
        .unwrap();
    let new_start = new_base
        .change_stream
        .clone()
        .expect("the new base records the new slot")
        .start_lsn;
    assert_eq!(new_start, enabled.slot_position);
    client
        .batch_execute(
            "INSERT INTO \"Booking\" (note) VALUES ('after 1'), ('after 2');
             UPDATE \"Booking\" SET note = note || '+' WHERE id % 3 = 0;
             DELETE FROM \"Booking\" WHERE id = 5;",
        )
        .await
        .unwrap();
    let after_new_base = server_now(&client).await;
    let expected = digest(&client).await;
    // Segment documents keep commit times to the millisecond: the commit
    // that proves the chain reaches the instant must be a millisecond past it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("INSERT INTO \"Booking\" (note) VALUES ('past the instant')")
        .await
        .unwrap();
    let again = operations::capture_and_report(&services, &run).await.unwrap();

    // Then capture works again, from the new slot's position
    let CaptureOutcome::Captured { segment: resumed, .. } = &again.report.outcome else {
        panic!("the changes after the new base were captured")
    };
    assert_eq!(resumed.start_lsn, new_start);
    assert_eq!(again.report.health.wal_status.as_deref(), Some("reserved"));
    // And an instant after the new base restores to the source's state at that instant
    let target = TestDatabase::create_on(&slot_loss_admin(), "slot_loss_after").await;
    let outcome = operations::restore_backup(&services, &at_request(source, &target, after_new_base))
        .await
        .unwrap_or_else(|error| panic!("restore --at {after_new_base}: {}", error.chain()));
    assert_eq!(outcome.backup_id, new_base.id.to_string());
    assert_eq!(digest(&target.client().await).await, expected);
    // And an instant inside the gap is refused, naming the gap, and restores nothing
    let target = TestDatabase::create_on(&slot_loss_admin(), "slot_loss_gap").await;
    let error = operations::restore_backup(&services, &at_request(source, &target, in_the_gap))
        .await
        .unwrap_err();
    let refused = error.chain();
    assert!(matches!(error, OperationError::Refused(_)), "{refused}");
    assert!(
        refused.contains(&format!(
            "no stored segment holds the changes from LSN {broken_from} to {new_start}"
        )),
        "{refused}"
    );
    assert_eq!(
        table_count(&target.client().await).await,
        0,
        "nothing was restored"
    );
}

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
use integration_tests::pitr::{PitrDatabase, at_request, logical_admin, logical_admin_on, pitr_services};
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

#[tokio::test]
async fn a_slot_the_server_invalidates_breaks_the_chain_loudly_and_capture_starts_a_new_one_at_once() {
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
    // (and `pitr enable` alone does not pretend to mend the lost slot)
    let kept = changes::enable_pitr(&source.url, &names, &[]).await.unwrap_err();
    assert!(
        kept.to_string().contains("`backupctl pitr disable` first"),
        "{kept}"
    );
    let error = operations::capture_and_report(&services, &run).await.unwrap_err();

    // Then the run fails naming the LSN from which changes are lost
    let message = error.chain();
    let OperationError::Changes(ChangesError::ChainBroken { from, new_base, .. }) = &error else {
        panic!("a broken chain: {message}")
    };
    assert_eq!(*from, broken_from, "{message}");
    assert!(
        message.contains(&format!("the change chain is broken from LSN {broken_from}")),
        "{message}"
    );
    assert!(message.contains("wal_status = lost"), "{message}");
    // And it took a base backup at once, which recreated the slot and starts a new chain
    let new_base = new_base.clone().expect("a base backup was taken at once");
    assert!(
        message.contains(&format!(
            "A base backup was taken at once: backup {} starts a new chain at LSN {}",
            new_base.backup_id, new_base.start_lsn
        )),
        "{message}"
    );
    assert_eq!(
        wal_status(&client, &names.slot).await.as_deref(),
        Some("reserved")
    );
    let new_start = new_base.start_lsn;
    assert!(new_start > broken_from, "{new_start} after {broken_from}");
    // and the run counts as a capture failure, and the webhook hears both
    let lines = capture_metrics(&metrics_file);
    assert_eq!(lines.last().unwrap()["CaptureFailures"], 1.0, "{lines:?}");
    // (the base backups' own deliveries come with them)
    let hooks: Vec<_> = webhook
        .received()
        .into_iter()
        .filter(|hook| hook.body["type"] == "backup_failure")
        .collect();
    assert_eq!(hooks.len(), 1, "{:?}", webhook.events());
    assert_eq!(hooks[0].body["failure"], "pitr_chain_broken");
    assert_eq!(hooks[0].body["slot"], names.slot.as_str());
    assert_eq!(hooks[0].body["brokenFromLsn"], broken_from.to_string());
    assert_eq!(hooks[0].body["newBase"]["backupId"], new_base.backup_id.as_str());
    let new_chain: Vec<_> = webhook
        .received()
        .into_iter()
        .filter(|hook| hook.body["event"] == "pitr_new_chain")
        .collect();
    assert_eq!(new_chain.len(), 1, "{:?}", webhook.events());
    assert_eq!(new_chain[0].body["backupId"], new_base.backup_id.as_str());
    assert_eq!(new_chain[0].body["startLsn"], new_start.to_string());
    let again = the_new_chain_restores(
        &services,
        &run,
        source,
        &slot_loss_admin(),
        (&new_base.backup_id, new_start),
        (broken_from, in_the_gap),
    )
    .await;
    assert_eq!(again.report.health.wal_status.as_deref(), Some("reserved"));
}

/// What both stories end with, once a new base starts a new chain after
/// the break at `broken_from`: rows written after it, then captured, come
/// from the new slot's position; an instant after the base restores to
/// the source's state then, from that base; an instant in the gap is
/// refused, naming it, and restores nothing. The capture run's report.
async fn the_new_chain_restores(
    services: &Services,
    run: &CaptureRun,
    source: &TestDatabase,
    admin: &str,
    (new_base, new_start): (&str, Lsn),
    (broken_from, in_the_gap): (Lsn, DateTime<Utc>),
) -> operations::CaptureRunReport {
    let client = source.client().await;
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
    let again = operations::capture_and_report(services, run).await.unwrap();

    // Then capture works again, from the new slot's position
    let CaptureOutcome::Captured { segment: resumed, .. } = &again.report.outcome else {
        panic!("the changes after the new base were captured")
    };
    assert_eq!(resumed.start_lsn, new_start);
    // And an instant after the new base restores to the source's state at that instant
    let target = TestDatabase::create_on(admin, "new_chain_after").await;
    let outcome = operations::restore_backup(services, &at_request(source, &target, after_new_base))
        .await
        .unwrap_or_else(|error| panic!("restore --at {after_new_base}: {}", error.chain()));
    assert_eq!(outcome.backup_id, new_base);
    assert_eq!(digest(&target.client().await).await, expected);
    // And an instant inside the gap is refused, naming the gap, and restores nothing
    let target = TestDatabase::create_on(admin, "new_chain_gap").await;
    let error = operations::restore_backup(services, &at_request(source, &target, in_the_gap))
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
    again
}

#[tokio::test]
async fn a_slot_gone_in_a_failover_is_recreated_by_the_next_backup_which_starts_a_new_chain() {
    // Given a database under capture (the shared logical cluster), with a base backup and a captured segment
    let pitr = PitrDatabase::create("slot_gone").await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let client = source.client().await;
    client
        .batch_execute(
            "CREATE TABLE \"Booking\" (id serial PRIMARY KEY, note text NOT NULL);
             INSERT INTO \"Booking\" (note) SELECT 'seed ' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    changes::enable_pitr(&source.url, &names, &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut services = pitr_services(
        Arc::new(LocalStore::new(dir.path())),
        &names,
        true,
        MetricsSink::Disabled,
    );
    let webhook = WebhookReceiver::start(vec![]).await;
    services.notifier = backup_core::notify::Notifier::new(Some(webhook.url.clone()), None);
    let run = CaptureRun {
        capture: CaptureRequest::new(source.url.clone(), names.clone()),
        enable_on_first_run: false,
        accepted_loss: Default::default(),
    };
    let old_base = operations::create_backup(&services, &create_request(source))
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO \"Booking\" (note) VALUES ('captured')")
        .await
        .unwrap();
    let captured = operations::capture_and_report(&services, &run).await.unwrap();
    let CaptureOutcome::Captured { segment, .. } = &captured.report.outcome else {
        panic!("the row was captured")
    };
    let broken_from = segment.end_lsn;

    // When the slot disappears (a failover to a standby without failover slots) and writes go on
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&names.slot])
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO \"Booking\" (note) VALUES ('in the gap'); UPDATE \"Booking\" SET note = 'gap' WHERE id = 2")
        .await
        .unwrap();
    let in_the_gap = server_now(&client).await;
    // and the next scheduled backup runs (no capture in between)
    let new_base = operations::create_backup(&services, &create_request(source))
        .await
        .unwrap();

    // Then that backup recreated the slot and records where the new chain starts
    let position = new_base
        .change_stream
        .clone()
        .expect("the new base records the new slot");
    assert_eq!(position.slot, names.slot);
    assert!(
        position.start_lsn > broken_from,
        "{} after {broken_from}",
        position.start_lsn
    );
    assert_ne!(new_base.id, old_base.id);
    // and said so to the webhook
    let events: Vec<_> = webhook
        .received()
        .into_iter()
        .filter(|hook| hook.body["event"] == "pitr_new_chain")
        .collect();
    assert_eq!(events.len(), 1, "{:?}", webhook.events());
    assert_eq!(events[0].body["backupId"], new_base.id.to_string());
    assert!(
        events[0].body["reason"].as_str().unwrap().contains("is gone"),
        "{:?}",
        events[0].body
    );
    // And capture goes on from the new slot, and restores on both sides of the gap
    let new_base_id = new_base.id.to_string();
    the_new_chain_restores(
        &services,
        &run,
        source,
        &logical_admin(),
        (&new_base_id, position.start_lsn),
        (broken_from, in_the_gap),
    )
    .await;
}

//! Point-in-time recovery's judge (issue #29; docs/PITR.md), on every
//! supported server version: PostgreSQL 13 … 18 from `infra/pg-versions.sh`
//! (ports 54313 … 54318, started with `wal_level = logical`) and the private
//! PostgreSQL 15 cluster of `infra/pg-logical.sh` (port 54400). A write load
//! from two sessions over keyed, partitioned and keyless (`REPLICA IDENTITY
//! FULL`) tables, a base backup in the middle of it, capture every second,
//! ten instants with a per-table digest of the source, and `restore --at`
//! each instant (and one table at several of them) into a fresh database,
//! whose digests must be equal. Then the faults: a schema change mid-chain,
//! and a sustained load of 200 transactions/s with its numbers.
//!
//! `PGBACKUP_PITR_JUDGE_SPACING_MS` (default 700) spaces the instants (a
//! longer load), `PGBACKUP_PITR_SUSTAINED_SECONDS` (default 12),
//! `PGBACKUP_PITR_CAPTURE_EVERY_MS` (default 2000) and `PGBACKUP_PITR_RATE`
//! (default 200) shape the sustained run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backup_core::changes::{self, CaptureOutcome, CaptureRequest, PitrNames};
use backup_core::metadata::{BackupMetadata, Trigger};
use backup_core::metrics::MetricsSink;
use backup_core::operations::{self, CreateRequest, OperationError, RestoreRequest, Services};
use backup_core::repository::BackupSelector;
use backup_core::storage::LocalStore;
use backup_core::{BackupRequest, ContainerOptions, postgres};
use chrono::{DateTime, Utc};
use integration_tests::pitr::{
    InterruptedCaptureStore, PitrDatabase, at_request, delayed_proxy, logical_admin, pitr_services,
};
use integration_tests::{TestDatabase, test_keyring};
use tokio::sync::RwLock;
use tokio_postgres::Client;

const TABLES: [&str; 5] = ["Booking", "Item", "Counter", "Visit", "Log"];

/// The judges (each on a cluster of its own, asserting no timing) run side
/// by side, as many as the test harness runs at once; the sustained-load
/// test, which asserts the rate it holds, runs alone.
static LOAD_ON_THE_MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// PostgreSQL `major` of `infra/pg-versions.sh`, which must run with
/// `wal_level = logical`.
async fn version_admin(major: &str) -> String {
    let url = std::env::var("PGBACKUP_PG_VERSIONS")
        .ok()
        .and_then(|versions| {
            versions.split_whitespace().find_map(|entry| {
                let (version, url) = entry.split_once('=')?;
                (version == major).then(|| url.to_owned())
            })
        })
        .unwrap_or_else(|| format!("postgres://postgres@127.0.0.1:543{major}/postgres"));
    let client = postgres::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL {major} at {url} (infra/pg-versions.sh start): {e}"));
    let level: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        level, "logical",
        "PostgreSQL {major} at {url} runs with wal_level = {level}: it was started before infra/pg-versions.sh set wal_level = logical; restart it (PGBACKUP_PG_MAJORS={major} infra/pg-versions.sh stop, then start)"
    );
    url
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn services(dir: &Path, names: &PitrNames) -> Services {
    pitr_services(Arc::new(LocalStore::new(dir)), names, true, MetricsSink::Disabled)
}

/// Per table: row count and an order-independent digest of the rows.
async fn digest(client: &Client) -> Vec<(String, i64, String)> {
    let mut digests = Vec::new();
    for table in TABLES {
        digests.push(table_digest(client, table).await);
    }
    digests
}

async fn table_digest(client: &Client, table: &str) -> (String, i64, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM \"{table}\" t"
            ),
            &[],
        )
        .await
        .unwrap();
    (table.to_owned(), row.get(0), row.get(1))
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

/// The judge's tables: a `bigserial` key and a TOASTed column, a composite
/// key, a counter, a table partitioned by range (rows move between its
/// partitions) and a table without any key whose rows repeat (`REPLICA
/// IDENTITY FULL` once capture is enabled with it).
const SCHEMA: &str = "CREATE TABLE \"Booking\" (id bigserial PRIMARY KEY, note text NOT NULL, big text);
     CREATE TABLE \"Item\" (a int, b text, qty int, PRIMARY KEY (a, b));
     CREATE TABLE \"Counter\" (k text PRIMARY KEY, n int NOT NULL);
     CREATE TABLE \"Visit\" (id int, day int, note text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
     CREATE TABLE \"Visit_early\" PARTITION OF \"Visit\" FOR VALUES FROM (0) TO (50);
     CREATE TABLE \"Visit_late\" PARTITION OF \"Visit\" FOR VALUES FROM (50) TO (100);
     CREATE TABLE \"Log\" (k text, v int, at timestamptz);
     INSERT INTO \"Booking\" (note, big) SELECT 'seed ' || g, repeat(md5(g::text), 100) FROM generate_series(1, 60) g;
     INSERT INTO \"Item\" SELECT g, 'seed', g FROM generate_series(1, 30) g;
     INSERT INTO \"Visit\" SELECT g, g % 100, 'seed' FROM generate_series(1, 40) g;
     INSERT INTO \"Log\" SELECT 'seed', g % 3, '2026-01-01' FROM generate_series(1, 12) g;";

/// One session's writes: a small deterministic generator of mixed
/// transactions; with `rate`, paced to commit that many per second (a
/// session behind catches up, one ahead waits). Errors (a deadlock
/// between the sessions, a key taken by the other) end that transaction as
/// a rollback would.
async fn load(
    url: String,
    session: u64,
    pause: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    rate: Option<f64>,
) {
    let mut client = postgres::connect(&url).await.unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ session;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let started = tokio::time::Instant::now();
    let mut committed = 0u64;
    let mut step = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(committed as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        step += 1;
        let _running = pause.read().await;
        let statements = 1 + next() % 3;
        let transaction = client.transaction().await.unwrap();
        let mut failed = false;
        for _ in 0..statements {
            let choice = next() % 100;
            let n = i64::try_from(next() % 400).unwrap();
            let sql = match choice {
                0..=19 => format!(
                    "INSERT INTO \"Booking\" (note, big) VALUES ('s{session} n{n}', \
                     (SELECT string_agg(md5(g::text || '{n}'), '') FROM generate_series(1, 300) g))"
                ),
                20..=29 => format!(
                    "UPDATE \"Booking\" SET note = note || '+' WHERE id = (SELECT id FROM \"Booking\" ORDER BY id OFFSET {} LIMIT 1)",
                    n % 50
                ),
                30..=35 => format!(
                    "UPDATE \"Booking\" SET big = md5(note) || big WHERE id = (SELECT id FROM \"Booking\" ORDER BY id DESC OFFSET {} LIMIT 1)",
                    n % 20
                ),
                36..=41 => format!(
                    "DELETE FROM \"Booking\" WHERE id = (SELECT id FROM \"Booking\" ORDER BY id OFFSET {} LIMIT 1)",
                    n % 30
                ),
                42..=53 => format!(
                    "INSERT INTO \"Item\" (a, b, qty) VALUES ({n}, 's{session}', {n}) ON CONFLICT (a, b) DO UPDATE SET qty = \"Item\".qty + 1"
                ),
                // The key itself changes.
                54..=59 => format!(
                    "UPDATE \"Item\" SET a = a + 1000 WHERE (a, b) = (SELECT a, b FROM \"Item\" WHERE a < 1000 ORDER BY a, b OFFSET {} LIMIT 1)",
                    n % 10
                ),
                60..=62 => format!("DELETE FROM \"Item\" WHERE a % 7 = {}", n % 7),
                63..=72 => format!(
                    "INSERT INTO \"Counter\" (k, n) VALUES ('k{}', 1) ON CONFLICT (k) DO UPDATE SET n = \"Counter\".n + 1",
                    n % 5
                ),
                73..=79 => format!(
                    "INSERT INTO \"Visit\" VALUES ({}, {}, 's{session}') ON CONFLICT (id, day) DO UPDATE SET note = \"Visit\".note || '+'",
                    n % 120,
                    n % 100
                ),
                // The row moves to the other partition.
                80..=84 => format!(
                    "UPDATE \"Visit\" SET day = (day + 50) % 100, note = note || '>' WHERE (id, day) = \
                     (SELECT id, day FROM \"Visit\" ORDER BY id, day OFFSET {} LIMIT 1)",
                    n % 40
                ),
                85..=87 => format!(
                    "DELETE FROM \"Visit\" WHERE (id, day) = (SELECT id, day FROM \"Visit\" ORDER BY day, id OFFSET {} LIMIT 1)",
                    n % 40
                ),
                // Rows alike, without a key: one of several equal rows goes or changes.
                88..=93 => format!(
                    "INSERT INTO \"Log\" VALUES ('s{session}', {}, '2026-01-01'::timestamptz + interval '1 hour' * {})",
                    n % 3,
                    n % 2
                ),
                94..=96 => format!(
                    "DELETE FROM \"Log\" WHERE ctid = (SELECT ctid FROM \"Log\" WHERE v = {} ORDER BY k LIMIT 1)",
                    n % 3
                ),
                97..=98 => format!(
                    "UPDATE \"Log\" SET v = v + 1 WHERE ctid = (SELECT ctid FROM \"Log\" WHERE v = {} ORDER BY k LIMIT 1)",
                    n % 4
                ),
                _ => format!("DELETE FROM \"Log\" WHERE v = {}", n % 5 + 2),
            };
            if transaction.batch_execute(&sql).await.is_err() {
                failed = true;
                break;
            }
        }
        if session == 0 && step == 40 {
            failed = failed || transaction.batch_execute("TRUNCATE \"Item\"").await.is_err();
        }
        // The partitioned table as a whole (a partition's own TRUNCATE is
        // not published through the root: docs/PITR.md).
        if session == 1 && step == 70 {
            failed = failed || transaction.batch_execute("TRUNCATE \"Visit\"").await.is_err();
        }
        // Every tenth transaction is rolled back: it must never appear.
        if failed || next() % 10 == 0 {
            let _ = transaction.rollback().await;
        } else if transaction.commit().await.is_ok() {
            commits.fetch_add(1, Ordering::SeqCst);
            committed += 1;
        }
    }
}

fn manual() -> CreateRequest {
    CreateRequest {
        database_url: String::new(),
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

#[tokio::test]
async fn a_base_backup_records_where_replay_starts_only_when_the_slot_exists() {
    // Given a database with a table and no change-capture slot
    let pitr = PitrDatabase::create_on(&logical_admin(), "replay_position").await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let client = source.client().await;
    client
        .batch_execute("CREATE TABLE \"Booking\" (id int PRIMARY KEY, note text); INSERT INTO \"Booking\" VALUES (1, 'a')")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let services = services(dir.path(), &names);
    let request = CreateRequest {
        database_url: source.url.clone(),
        ..manual()
    };

    // When it is backed up, the backup records no stream position
    let plain = operations::create_backup(&services, &request).await.unwrap();
    assert_eq!(plain.change_stream, None);
    let stored = std::fs::read_to_string(dir.path().join(plain.id.metadata_key())).unwrap();
    assert!(!stored.contains("changeStream"), "{stored}");

    // When capture is enabled, a change committed and captured, and it is backed up again
    changes::enable_pitr(&source.url, &names, &[]).await.unwrap();
    client
        .batch_execute("INSERT INTO \"Booking\" VALUES (2, 'b')")
        .await
        .unwrap();
    let keyring = test_keyring();
    let store = LocalStore::new(dir.path());
    let request_capture = CaptureRequest::new(source.url.clone(), names.clone());
    let CaptureOutcome::Captured { segment, .. } =
        changes::capture_changes(&store, &keyring, &request_capture)
            .await
            .unwrap()
    else {
        panic!("the insert was captured");
    };
    let before = server_now(&client).await;
    let based = operations::create_backup(&services, &request).await.unwrap();
    let after = server_now(&client).await;

    // Then it records the slot and its confirmed position (where the
    // captured segment ended), and a snapshot time within the backup
    let position = based.change_stream.clone().expect("a stream position");
    assert_eq!(position.slot, names.slot);
    assert_eq!(position.start_lsn, segment.end_lsn);
    assert!(
        before <= position.snapshot_at && position.snapshot_at <= after,
        "{position:?}"
    );
    // And the field is sealed with the rest of the document: the
    // repository lists it as authentic, and changing it breaks the MAC
    let listed = services.repository.list().await.unwrap();
    let found = listed.iter().find(|m| m.id == based.id).unwrap();
    assert_eq!(found.change_stream, Some(position.clone()));
    assert_eq!(
        found.metadata_integrity,
        backup_core::metadata::MetadataIntegrity::Authentic
    );
    let key = dir.path().join(based.id.metadata_key());
    let document = std::fs::read_to_string(&key).unwrap();
    let moved = document.replace(&position.start_lsn.to_string(), "0/1");
    assert_ne!(moved, document);
    std::fs::write(&key, moved).unwrap();
    let listed = services.repository.list().await.unwrap();
    let found = listed.iter().find(|m| m.id == based.id).unwrap();
    assert_eq!(
        found.metadata_integrity,
        backup_core::metadata::MetadataIntegrity::Failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_judge_on_postgresql_13() {
    judge(&version_admin("13").await, "PostgreSQL 13").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_judge_on_postgresql_14() {
    judge(&version_admin("14").await, "PostgreSQL 14").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_judge_on_postgresql_15() {
    judge(&version_admin("15").await, "PostgreSQL 15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_judge_on_postgresql_16() {
    judge(&version_admin("16").await, "PostgreSQL 16").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_judge_on_postgresql_17() {
    judge(&version_admin("17").await, "PostgreSQL 17").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_judge_on_postgresql_18() {
    judge(&version_admin("18").await, "PostgreSQL 18").await;
}

/// The machine's own PostgreSQL 15 build (Debian's), on port 54400.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_judge_on_the_logical_cluster() {
    judge(&logical_admin(), "PostgreSQL 15 (54400)").await;
}

/// Capture running every second on the source, one run of which is killed
/// after storing its segment and before advancing the slot; returns, per
/// run that wrote a segment, the commit-to-stored lag in ms.
fn capture_every(
    store: Arc<InterruptedCaptureStore>,
    keyring: backup_core::keyring::Keyring,
    request: CaptureRequest,
    every: Duration,
    kill_run: u32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<CaptureRun>> {
    tokio::spawn(async move {
        let mut runs = 0u32;
        let mut captured = Vec::new();
        let mut next = tokio::time::Instant::now();
        while !stop.load(Ordering::SeqCst) {
            runs += 1;
            if runs == kill_run {
                store.kill_next_capture();
            } else {
                store.heal();
            }
            match changes::capture_changes(store.as_ref(), &keyring, &request).await {
                Ok(CaptureOutcome::Captured {
                    segment, duration_ms, ..
                }) => {
                    let stored = Utc::now();
                    captured.push(CaptureRun {
                        lag_ms: (stored - segment.first_commit_time).num_milliseconds(),
                        changes: segment.changes,
                        transactions: segment.transactions,
                        bytes: segment.size_bytes,
                        payload_bytes: segment.payload_bytes,
                        duration_ms,
                    });
                }
                Ok(CaptureOutcome::NoChanges { .. }) => {}
                Err(error) => assert_eq!(runs, kill_run, "capture run {runs} failed: {error}"),
            }
            next += every;
            tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
        }
        captured
    })
}

#[derive(Debug, Clone, Copy)]
struct CaptureRun {
    /// From the segment's first commit to the segment stored: the achieved
    /// RPO of that run.
    lag_ms: i64,
    changes: u64,
    transactions: u64,
    bytes: u64,
    payload_bytes: u64,
    duration_ms: u64,
}

async fn judge(admin: &str, label: &str) {
    let _side_by_side = LOAD_ON_THE_MACHINE.read().await;
    let spacing = Duration::from_millis(env_number("PGBACKUP_PITR_JUDGE_SPACING_MS", 700));
    // Given a database under capture (a serial key and a TOASTed column, a
    // composite key, a counter, a partitioned table, a table without key
    // captured with REPLICA IDENTITY FULL), with some rows already there
    let pitr = PitrDatabase::create_on(admin, "judge_source").await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let client = source.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    let enabled = changes::enable_pitr_with(&source.url, &names, &[], true)
        .await
        .unwrap();
    assert_eq!(enabled.identity_full, vec!["public.Log".to_owned()], "{label}");
    assert_eq!(
        enabled.tables,
        [
            "public.Booking",
            "public.Counter",
            "public.Item",
            "public.Log",
            "public.Visit"
        ],
        "{label}: the partitioned table is published as its root, no partition on its own"
    );
    assert!(enabled.left_out.is_empty(), "{label}: {:?}", enabled.left_out);
    assert!(
        enabled.warnings.iter().any(|warning| warning
            .contains("TRUNCATE of a single partition of public.\"Visit\" is not published")
            && warning.contains("cuts the change chain")),
        "{label}: the partitioned table's blind spot is named at enable: {:?}",
        enabled.warnings
    );
    let dir = tempfile::tempdir().unwrap();
    let services = services(dir.path(), &names);
    let keyring = test_keyring();

    // And capture running every second, one run of which is killed after
    // storing its segment and before advancing the slot
    let capture_store = Arc::new(InterruptedCaptureStore::new(Arc::new(LocalStore::new(
        dir.path(),
    ))));
    let stop_capture = Arc::new(AtomicBool::new(false));
    let capture_task = capture_every(
        capture_store.clone(),
        keyring.clone(),
        CaptureRequest::new(source.url.clone(), names.clone()),
        Duration::from_secs(1),
        4,
        stop_capture.clone(),
    );

    // And two sessions writing
    let pause = Arc::new(RwLock::new(()));
    let stop_load = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let sessions: Vec<_> = (0..2)
        .map(|session| {
            tokio::spawn(load(
                source.url.clone(),
                session,
                pause.clone(),
                stop_load.clone(),
                commits.clone(),
                None,
            ))
        })
        .collect();
    let load_started = Instant::now();

    // An instant before any base backup, with the load running
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before_base = {
        let _paused = pause.write().await;
        server_now(&client).await
    };
    // A base backup taken in the middle of the load
    tokio::time::sleep(Duration::from_millis(800)).await;
    let base = operations::create_backup(
        &services,
        &CreateRequest {
            database_url: source.url.clone(),
            ..manual()
        },
    )
    .await
    .unwrap();
    let position = base
        .change_stream
        .clone()
        .expect("the base records its stream position");
    assert_eq!(position.slot, names.slot);
    assert!(
        position.snapshot.is_some() && position.catalog_fingerprint.is_some(),
        "{position:?}"
    );

    // When ten instants are recorded while the load goes on, each with the
    // source's digest (the sessions held between two transactions)
    let mut instants = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(spacing).await;
        let _paused = pause.write().await;
        let digests = digest(&client).await;
        let at = server_now(&client).await;
        instants.push((at, digests));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_load.store(true, Ordering::SeqCst);
    for session in sessions {
        session.await.unwrap();
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    // A last capture after the load, so the chain reaches past every instant.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop_capture.store(true, Ordering::SeqCst);
    let runs = capture_task.await.unwrap();
    let committed = commits.load(Ordering::SeqCst);
    let segments = changes::list_segments(capture_store.as_ref(), &keyring)
        .await
        .unwrap();
    assert!(
        segments
            .windows(2)
            .any(|w| w[0].first_commit_lsn == w[1].first_commit_lsn),
        "{label}: the killed capture left a segment the next run repeated"
    );
    // The load reached every shape: rows moved between partitions and
    // rows alike in the table without key.
    let moved = segments
        .iter()
        .flat_map(|s| &s.tables)
        .filter(|t| t.table == "public.Visit")
        .map(|t| t.deletes)
        .sum::<u64>();
    assert!(moved > 0, "{label}: Visit rows were deleted or moved");
    eprintln!(
        "{label}: load {committed} commits in {load_seconds:.1} s from 2 sessions; {} segments; commit-to-stored lag (ms) at a 1 s capture interval: {:?}",
        segments.len(),
        runs.iter().map(|r| r.lag_ms).collect::<Vec<_>>()
    );

    // Then restoring to each instant into a fresh database gives the source's digests
    let mut total_changes = 0;
    let mut total_ms = 0;
    for (at, expected) in &instants {
        let target = TestDatabase::create_on(admin, "judge_target").await;
        let outcome = operations::restore_backup(&services, &at_request(source, &target, *at))
            .await
            .unwrap_or_else(|error| panic!("{label}: restore --at {at}: {}", error.chain()));
        assert_eq!(outcome.backup_id, base.id.to_string());
        let replayed = outcome.replayed.clone().expect("a replay report");
        let reached = replayed.reached_time.expect("changes were applied");
        assert!(reached <= *at && replayed.changes > 0, "{replayed:?}");
        assert_eq!(
            replayed.missing_rows, 0,
            "{label}: every update found its row: {replayed:?}"
        );
        total_changes += replayed.changes;
        total_ms += replayed.duration_ms;
        let restored = target.client().await;
        assert_eq!(&digest(&restored).await, expected, "{label}: digests at {at}");
        // The serial's sequence is at least past every restored key.
        let (last, max): (i64, Option<i64>) = {
            let row = restored
                .query_one(
                    "SELECT (SELECT last_value FROM \"Booking_id_seq\"), (SELECT max(id) FROM \"Booking\")",
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert!(last >= max.unwrap_or(0), "sequence {last} behind {max:?}");
        eprintln!(
            "{label}: restore --at {at}: {} changes in {} transactions ({} skipped) from {} segments in {} ms",
            replayed.changes,
            replayed.transactions,
            replayed.skipped_transactions,
            replayed.segments,
            replayed.duration_ms
        );
    }
    eprintln!(
        "{label}: replay rate (debug build): {:.0} changes/s",
        total_changes as f64 / (total_ms.max(1) as f64 / 1000.0)
    );

    // And restoring one table at an instant gives that table's digest and
    // leaves the other tables out
    for (table, (at, expected)) in TABLES.iter().zip(instants.iter().skip(1).step_by(2)) {
        let target = TestDatabase::create_on(admin, "judge_table").await;
        let request = RestoreRequest {
            tables: backup_core::request::TableList::new([*table]).unwrap(),
            ..at_request(source, &target, *at)
        };
        let outcome = operations::restore_backup(&services, &request)
            .await
            .unwrap_or_else(|error| panic!("{label}: restore --at {at} --tables {table}: {}", error.chain()));
        assert!(outcome.replayed.is_some(), "{label}: {table} replayed");
        let restored = target.client().await;
        let wanted = expected.iter().find(|(name, ..)| name == table).unwrap();
        assert_eq!(
            &table_digest(&restored, table).await,
            wanted,
            "{label}: {table} at {at}"
        );
        for other in TABLES.iter().filter(|other| *other != table) {
            let present: bool = restored
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("\"{other}\"")])
                .await
                .unwrap()
                .get(0);
            assert!(!present, "{label}: restoring {table} alone left {other} out");
        }
    }

    // And an instant before any base backup is refused
    let target = TestDatabase::create_on(admin, "judge_early").await;
    let error = operations::restore_backup(&services, &at_request(source, &target, before_base))
        .await
        .unwrap_err();
    assert!(matches!(error, OperationError::Refused(_)), "{error}");
    assert!(error.to_string().contains("no base backup covers"), "{error}");
    assert_eq!(
        table_count(&target.client().await).await,
        0,
        "nothing was restored"
    );

    // And with a segment of the chain gone, restoring past it is refused, naming the gap
    let last_instant = instants.last().unwrap().0;
    let chain: Vec<_> = segments
        .iter()
        .filter(|s| s.start_lsn > position.start_lsn && s.first_commit_time <= last_instant)
        .collect();
    // (one with a later segment after it: the chain then has a hole; the
    // last segment removed would only make it end early, which is refused
    // as "do not reach", as the instant-past-the-chain test proves)
    let removed = chain
        .iter()
        .rev()
        .find(|s| segments.iter().any(|later| later.start_lsn > s.start_lsn))
        .expect("a segment inside the chain, with another after it");
    // Every copy of those changes (the killed run's repeat too).
    for segment in segments.iter().filter(|s| s.start_lsn == removed.start_lsn) {
        std::fs::remove_file(dir.path().join(segment.id.metadata_key())).unwrap();
    }
    let target = TestDatabase::create_on(admin, "judge_gap").await;
    let error = operations::restore_backup(&services, &at_request(source, &target, last_instant))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("gap"), "{message}");
    assert!(message.contains(&removed.start_lsn.to_string()), "{message}");
    assert_eq!(
        table_count(&target.client().await).await,
        0,
        "nothing was restored"
    );
}

/// A capture run now, which must write a segment.
async fn capture_now(store: &LocalStore, url: &str, names: &PitrNames) -> changes::SegmentMetadata {
    let request = CaptureRequest::new(url.to_owned(), names.clone());
    match changes::capture_changes(store, &test_keyring(), &request)
        .await
        .unwrap()
    {
        CaptureOutcome::Captured { segment, .. } => *segment,
        CaptureOutcome::NoChanges { .. } => panic!("changes were committed"),
    }
}

/// What most replay tests start from: a database under capture (its
/// tables made by `schema` first), a store in a temporary directory,
/// services that know the slot, the create request of a manual backup of
/// it, and a base backup taken by it.
struct CapturedDatabase {
    admin: String,
    pitr: PitrDatabase,
    client: Client,
    dir: tempfile::TempDir,
    services: Services,
    create: CreateRequest,
    base: BackupMetadata,
}

impl CapturedDatabase {
    async fn start(label: &str, schema: &str) -> Self {
        Self::start_with(label, schema, false).await
    }

    /// With `identity_full`, tables without a key are published as
    /// `REPLICA IDENTITY FULL` (`pitr enable --identity-full`).
    async fn start_with(label: &str, schema: &str, identity_full: bool) -> Self {
        let admin = logical_admin();
        let pitr = PitrDatabase::create_on(&admin, label).await;
        let client = pitr.client().await;
        client.batch_execute(schema).await.unwrap();
        changes::enable_pitr_with(pitr.url(), &pitr.names, &[], identity_full)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let services = services(dir.path(), &pitr.names);
        let create = CreateRequest {
            database_url: pitr.url().to_owned(),
            ..manual()
        };
        let base = operations::create_backup(&services, &create).await.unwrap();
        Self {
            admin,
            pitr,
            client,
            dir,
            services,
            create,
            base,
        }
    }
}

#[tokio::test]
async fn a_schema_change_cuts_the_chain_and_restore_names_where() {
    // Given a database under capture, and a base backup
    let CapturedDatabase {
        admin,
        pitr,
        client,
        dir,
        services,
        create,
        base: first_base,
    } = CapturedDatabase::start(
        "cut_source",
        "CREATE TABLE \"Booking\" (id int PRIMARY KEY, note text); INSERT INTO \"Booking\" VALUES (1, 'a')",
    )
    .await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let store = LocalStore::new(dir.path());

    // When a column is added before the first segment after it is captured
    client
        .batch_execute(
            "ALTER TABLE \"Booking\" ADD COLUMN extra int; INSERT INTO \"Booking\" VALUES (2, 'b', 2)",
        )
        .await
        .unwrap();
    let after_first_ddl = server_now(&client).await;
    client
        .batch_execute("UPDATE \"Booking\" SET note = 'b2' WHERE id = 2")
        .await
        .unwrap();
    let first_cut = capture_now(&store, &source.url, &names).await;

    // Then restoring onto that base is refused, naming the base backup
    // and the segment (not a replay failing on a missing column)
    let target = TestDatabase::create_on(&admin, "cut_target").await;
    let error = operations::restore_backup(&services, &at_request(source, &target, after_first_ddl))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, OperationError::Refused(_)), "{message}");
    assert!(message.contains("changed between the base backup"), "{message}");
    assert!(message.contains(&first_base.id.to_string()), "{message}");
    assert!(message.contains(&first_cut.id.to_string()), "{message}");
    assert_eq!(
        table_count(&target.client().await).await,
        0,
        "nothing was restored"
    );

    // Given a base backup taken after that change, and changes captured on it
    let second_base = operations::create_backup(&services, &create).await.unwrap();
    assert_ne!(
        second_base.change_stream.as_ref().unwrap().catalog_fingerprint,
        first_base.change_stream.as_ref().unwrap().catalog_fingerprint
    );
    client
        .batch_execute("INSERT INTO \"Booking\" VALUES (3, 'c', 3)")
        .await
        .unwrap();
    let before_second_ddl = server_now(&client).await;
    let expected = table_digest(&client, "Booking").await;
    capture_now(&store, &source.url, &names).await;

    // When the schema changes again mid-chain
    client
        .batch_execute("ALTER TABLE \"Booking\" ALTER COLUMN extra TYPE bigint; INSERT INTO \"Booking\" VALUES (4, 'd', 4)")
        .await
        .unwrap();
    let after_second_ddl = server_now(&client).await;
    client
        .batch_execute("DELETE FROM \"Booking\" WHERE id = 1")
        .await
        .unwrap();
    let second_cut = capture_now(&store, &source.url, &names).await;

    // Then an instant before the cut restores exactly
    let target = TestDatabase::create_on(&admin, "cut_before").await;
    let outcome = operations::restore_backup(&services, &at_request(source, &target, before_second_ddl))
        .await
        .unwrap_or_else(|error| panic!("{}", error.chain()));
    assert_eq!(outcome.backup_id, second_base.id.to_string());
    assert_eq!(table_digest(&target.client().await, "Booking").await, expected);

    // And an instant past it is refused, naming the segment where the cut is
    let target = TestDatabase::create_on(&admin, "cut_after").await;
    let error = operations::restore_backup(&services, &at_request(source, &target, after_second_ddl))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, OperationError::Refused(_)), "{message}");
    assert!(message.contains("schema changed at segment"), "{message}");
    assert!(message.contains(&second_cut.id.to_string()), "{message}");
    assert_eq!(
        table_count(&target.client().await).await,
        0,
        "nothing was restored"
    );
}

/// A capture run as the function and `backupctl pitr capture` run it.
fn capture_run(url: &str, names: &PitrNames) -> operations::CaptureRun {
    operations::CaptureRun {
        capture: CaptureRequest::new(url.to_owned(), names.clone()),
        enable_on_first_run: false,
        accepted_loss: Default::default(),
    }
}

/// A capture run that must store a segment (and succeed).
async fn capture_run_now(
    services: &Services,
    url: &str,
    names: &PitrNames,
) -> (operations::CaptureRunReport, changes::SegmentMetadata) {
    let report = operations::capture_and_report(services, &capture_run(url, names))
        .await
        .unwrap_or_else(|error| panic!("{}", error.chain()));
    let CaptureOutcome::Captured { segment, .. } = &report.report.outcome else {
        panic!("changes were committed")
    };
    let segment = (**segment).clone();
    (report, segment)
}

/// A fresh database restored to `at` (whole): which base it used, and the
/// digest of `table`.
async fn restore_at(
    services: &Services,
    admin: &str,
    source: &TestDatabase,
    label: &str,
    at: DateTime<Utc>,
    table: &str,
) -> (String, (String, i64, String)) {
    let target = TestDatabase::create_on(admin, label).await;
    let outcome = operations::restore_backup(services, &at_request(source, &target, at))
        .await
        .unwrap_or_else(|error| panic!("restore to {at}: {}", error.chain()));
    (
        outcome.backup_id,
        table_digest(&target.client().await, table).await,
    )
}

#[tokio::test]
async fn a_schema_change_makes_capture_take_the_base_backup_that_starts_a_new_chain() {
    // Given a database under capture, a base backup, and a captured chain
    let CapturedDatabase {
        admin,
        pitr,
        client,
        dir: _dir,
        services,
        base: old_base,
        ..
    } = CapturedDatabase::start(
        "cutbase_source",
        "CREATE TABLE \"Booking\" (id int PRIMARY KEY, note text); INSERT INTO \"Booking\" VALUES (1, 'a'), (2, 'b')",
    )
    .await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let old_fingerprint = old_base
        .change_stream
        .as_ref()
        .and_then(|position| position.catalog_fingerprint.clone())
        .expect("the base records the publication's fingerprint");
    client
        .batch_execute("INSERT INTO \"Booking\" VALUES (3, 'c')")
        .await
        .unwrap();
    let (report, _) = capture_run_now(&services, &source.url, &names).await;
    assert_eq!(report.report.chain_cut, None, "no schema change yet");
    assert_eq!(report.base_backup, None);
    client
        .batch_execute("UPDATE \"Booking\" SET note = 'b2' WHERE id = 2")
        .await
        .unwrap();
    let before_ddl = server_now(&client).await;
    let expected_before = table_digest(&client, "Booking").await;
    // (segment documents keep commit times to the millisecond: the next
    // commit must fall in a later one to prove the instant reached)
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("INSERT INTO \"Booking\" VALUES (4, 'd')")
        .await
        .unwrap();
    let (report, last_before) = capture_run_now(&services, &source.url, &names).await;
    assert_eq!(report.report.chain_cut, None);

    // When a column is added, more rows are written, and capture runs
    client
        .batch_execute(
            "ALTER TABLE \"Booking\" ADD COLUMN extra int; INSERT INTO \"Booking\" VALUES (5, 'e', 5); \
             UPDATE \"Booking\" SET extra = 1 WHERE id = 1",
        )
        .await
        .unwrap();
    let (report, cut_segment) = capture_run_now(&services, &source.url, &names).await;

    // Then the report names the cut: the segment, its first commit, where
    // the chain stood and both fingerprints
    let cut = report
        .report
        .chain_cut
        .clone()
        .expect("the schema change is a cut");
    assert_eq!(cut.segment, cut_segment.id);
    assert_eq!(cut.first_commit_lsn, cut_segment.first_commit_lsn);
    assert_eq!(cut.first_commit_time, cut_segment.first_commit_time);
    assert_eq!(cut.previous_end, last_before.end_lsn);
    assert_eq!(cut.old_fingerprint, old_fingerprint);
    assert_eq!(cut.new_fingerprint, cut_segment.catalog_fingerprint);
    assert_ne!(cut.new_fingerprint, old_fingerprint);
    assert_eq!(cut.compared_with, format!("segment {}", last_before.id));
    // and a base backup was taken right away, recording the slot's
    // position at the end of the cut segment, under the new schema
    let taken = report.base_backup.clone().expect("a base backup after the cut");
    let new_base = services
        .repository
        .resolve(&BackupSelector::Id(taken.id.parse().unwrap()))
        .await
        .unwrap();
    let position = new_base.change_stream.clone().expect("a stream position");
    assert_eq!(position.slot, names.slot);
    assert!(
        position.start_lsn >= cut_segment.end_lsn,
        "{position:?} {cut_segment:?}"
    );
    assert_eq!(position.start_lsn, taken.start_lsn);
    assert_eq!(
        position.catalog_fingerprint.as_deref(),
        Some(cut.new_fingerprint.as_str())
    );
    assert_eq!(new_base.requested_by.as_deref(), Some("capture"));
    // and the JSON report (the function's answer, `pitr capture --json`) says so
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["chainCut"]["segment"], cut_segment.id.to_string());
    assert_eq!(json["chainCut"]["oldFingerprint"], old_fingerprint);
    assert_eq!(json["baseBackup"]["id"], taken.id);

    // When more is written under the new schema and captured
    client
        .batch_execute("INSERT INTO \"Booking\" VALUES (6, 'f', 6); DELETE FROM \"Booking\" WHERE id = 3")
        .await
        .unwrap();
    let after_ddl = server_now(&client).await;
    let expected_after = table_digest(&client, "Booking").await;
    // (segment documents keep commit times to the millisecond: the next
    // commit must fall in a later one to prove the instant reached)
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("UPDATE \"Booking\" SET extra = 7 WHERE id = 6")
        .await
        .unwrap();
    let (report, _) = capture_run_now(&services, &source.url, &names).await;
    // Then the new chain goes on without a cut
    assert_eq!(report.report.chain_cut, None);
    assert_eq!(report.base_backup, None);

    // And an instant after the schema change restores exactly, from the new base
    let (base, digest) = restore_at(&services, &admin, source, "cutbase_after", after_ddl, "Booking").await;
    assert_eq!(base, taken.id);
    assert_eq!(digest, expected_after);
    // while an instant before it still restores from the old base
    let (base, digest) = restore_at(&services, &admin, source, "cutbase_before", before_ddl, "Booking").await;
    assert_eq!(base, old_base.id.to_string());
    assert_eq!(digest, expected_before);
}

#[tokio::test]
async fn a_failed_base_backup_after_a_cut_fails_the_run_loudly_and_the_next_run_takes_it() {
    use backup_core::config::Settings;

    // Given a database under capture, a base backup and a captured change,
    // and capture services whose backups would record another slot (a
    // BACKUP_PITR_SLOT that is not the capture's), a webhook listening
    let CapturedDatabase {
        admin,
        pitr,
        client,
        dir,
        services,
        base: old_base,
        ..
    } = CapturedDatabase::start(
        "cutfail_source",
        "CREATE TABLE \"Booking\" (id int PRIMARY KEY, note text); INSERT INTO \"Booking\" VALUES (1, 'a')",
    )
    .await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    client
        .batch_execute("INSERT INTO \"Booking\" VALUES (2, 'b')")
        .await
        .unwrap();
    capture_run_now(&services, &source.url, &names).await;
    let webhook = integration_tests::WebhookReceiver::start(vec![]).await;
    let mut settings = Settings::from_lookup(|_| None).unwrap();
    settings.keyring = Some(test_keyring());
    settings.webhook_url = Some(webhook.url.clone());
    let mut misconfigured = Services::new(
        Arc::new(LocalStore::new(dir.path())),
        &settings,
        "test",
        MetricsSink::Disabled,
    );
    misconfigured.pitr_slot = Some("another_slot".to_owned());
    misconfigured.pitr_publication = Some("pitr_pub".to_owned());

    // When the schema changes, a row is written, and that capture runs
    client
        .batch_execute(
            "ALTER TABLE \"Booking\" ADD COLUMN extra int; INSERT INTO \"Booking\" VALUES (3, 'c', 3)",
        )
        .await
        .unwrap();
    let error = operations::capture_and_report(&misconfigured, &capture_run(&source.url, &names))
        .await
        .unwrap_err();

    // Then the run fails, saying what was cut, what failed and what to do
    let message = error.chain();
    assert!(
        matches!(error, OperationError::BaseBackupAfterCut { .. }),
        "{message}"
    );
    assert!(message.contains("schema changed (change segment"), "{message}");
    assert!(
        message.contains("base backup that starts a new change chain failed"),
        "{message}"
    );
    assert!(message.contains("backupctl create"), "{message}");
    assert!(message.contains("BACKUP_PITR_SLOT"), "{message}");
    // and the webhook hears it as a backup failure of its own kind
    let hooks = webhook.received();
    assert_eq!(hooks.len(), 1, "{:?}", webhook.events());
    assert_eq!(hooks[0].body["type"], "backup_failure");
    assert_eq!(hooks[0].body["failure"], "pitr_base_backup_after_cut");
    assert_eq!(hooks[0].body["slot"], names.slot);
    let cut_segment = hooks[0].body["chainCut"]["segment"].as_str().unwrap().to_owned();
    // and no backup was taken: an instant after the change cannot be restored
    client
        .batch_execute("INSERT INTO \"Booking\" VALUES (4, 'd', 4)")
        .await
        .unwrap();
    let after_ddl = server_now(&client).await;
    let expected_after = table_digest(&client, "Booking").await;
    // (segment documents keep commit times to the millisecond: the next
    // commit must fall in a later one to prove the instant reached)
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("UPDATE \"Booking\" SET extra = 5 WHERE id = 4")
        .await
        .unwrap();
    capture_now(&LocalStore::new(dir.path()), &source.url, &names).await;
    let target = TestDatabase::create_on(&admin, "cutfail_refused").await;
    let refused = operations::restore_backup(&services, &at_request(source, &target, after_ddl))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains(&old_base.id.to_string()), "{refused}");
    assert!(refused.contains(&cut_segment), "{refused}");

    // When the next run (configured right) captures the next change
    client
        .batch_execute("UPDATE \"Booking\" SET note = 'a2' WHERE id = 1")
        .await
        .unwrap();
    let (report, _) = capture_run_now(&services, &source.url, &names).await;

    // Then it finds the cut still open (against the base backup: the
    // segment before it already has the new schema) and takes the base backup
    let cut = report.report.chain_cut.expect("the cut is still open");
    assert_eq!(cut.compared_with, format!("base backup {}", old_base.id));
    let taken = report.base_backup.expect("the base backup, this time");
    // and an instant after it restores exactly from it
    client
        .batch_execute("INSERT INTO \"Booking\" VALUES (6, 'f', 6)")
        .await
        .unwrap();
    let later = server_now(&client).await;
    let expected_later = table_digest(&client, "Booking").await;
    assert_ne!(expected_later, expected_after);
    // (segment documents keep commit times to the millisecond: the next
    // commit must fall in a later one to prove the instant reached)
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("DELETE FROM \"Booking\" WHERE id = 6")
        .await
        .unwrap();
    let (report, _) = capture_run_now(&services, &source.url, &names).await;
    assert_eq!(report.report.chain_cut, None);
    let (base, digest) = restore_at(&services, &admin, source, "cutfail_later", later, "Booking").await;
    assert_eq!(base, taken.id);
    assert_eq!(digest, expected_later);
}

#[tokio::test]
async fn a_partition_truncated_alone_makes_capture_cut_the_chain_and_a_root_truncate_does_not() {
    // Given a partitioned published table with rows in both partitions, a
    // base backup, and a captured change
    let CapturedDatabase {
        admin,
        pitr,
        client,
        dir: _dir,
        services,
        base: old_base,
        ..
    } = CapturedDatabase::start(
        "parttrunc_source",
        "CREATE TABLE \"Visit\" (id int, day int, note text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
         CREATE TABLE \"Visit_early\" PARTITION OF \"Visit\" FOR VALUES FROM (0) TO (50);
         CREATE TABLE \"Visit_late\" PARTITION OF \"Visit\" FOR VALUES FROM (50) TO (100);
         CREATE TABLE \"Plain\" (id int PRIMARY KEY);
         INSERT INTO \"Visit\" SELECT g, g * 10 % 100, 'seed' FROM generate_series(1, 10) g;
         INSERT INTO \"Plain\" VALUES (1)",
    )
    .await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let recorded = old_base
        .change_stream
        .as_ref()
        .and_then(|position| position.partition_files.clone())
        .expect("the base records the partitions' files");
    assert_eq!(
        recorded
            .iter()
            .map(|file| (file.root.as_str(), file.partition.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("public.Visit", "public.Visit_early"),
            ("public.Visit", "public.Visit_late")
        ],
        "only the leaf partitions of the partitioned table"
    );
    client
        .batch_execute("INSERT INTO \"Visit\" VALUES (11, 55, 'late')")
        .await
        .unwrap();
    let (report, _) = capture_run_now(&services, &source.url, &names).await;
    assert_eq!(report.report.chain_cut, None);

    // When the partitioned table itself is truncated (captured), refilled,
    // a plain table truncated too, and capture runs
    client.batch_execute("TRUNCATE \"Visit\"").await.unwrap();
    client
        .batch_execute(
            "INSERT INTO \"Visit\" SELECT g, g * 10 % 100, 'refill' FROM generate_series(1, 10) g; TRUNCATE \"Plain\"",
        )
        .await
        .unwrap();
    let (report, root_segment) = capture_run_now(&services, &source.url, &names).await;
    // Then that is no cut: every partition's new file is the root TRUNCATE's
    assert_eq!(
        report.report.chain_cut, None,
        "a captured root TRUNCATE does not cut"
    );
    assert_eq!(report.base_backup, None);
    assert!(root_segment.partitions_rewritten.is_empty());
    let files = root_segment.partition_files.clone().unwrap();
    assert_eq!(files.len(), 2);
    assert!(
        files.iter().all(|file| !recorded.contains(file)),
        "both partitions have new files: {files:?} {recorded:?}"
    );

    // Given an instant before the partition is truncated
    client
        .batch_execute("UPDATE \"Visit\" SET note = 'before' WHERE id = 6")
        .await
        .unwrap();
    let before = server_now(&client).await;
    let expected_before = table_digest(&client, "Visit").await;
    // (segment documents keep commit times to the millisecond: the next
    // commit must fall in a later one to prove the instant reached)
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("INSERT INTO \"Visit\" VALUES (12, 12, 'early')")
        .await
        .unwrap();
    let (report, last_before) = capture_run_now(&services, &source.url, &names).await;
    assert_eq!(report.report.chain_cut, None);

    // When one partition is truncated on its own (which PostgreSQL does not
    // publish), more writes follow, and capture runs
    client.batch_execute("TRUNCATE \"Visit_late\"").await.unwrap();
    client
        .batch_execute("INSERT INTO \"Visit\" VALUES (20, 60, 'after'), (21, 5, 'after')")
        .await
        .unwrap();
    let within = server_now(&client).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("UPDATE \"Visit\" SET note = 'after' WHERE id = 1")
        .await
        .unwrap();
    let (report, cut_segment) = capture_run_now(&services, &source.url, &names).await;

    // Then the report names the cut and the partition, and a base backup was taken
    let cut = report
        .report
        .chain_cut
        .clone()
        .expect("a partition truncated alone is a cut");
    assert_eq!(cut.segment, cut_segment.id);
    assert_eq!(cut.partitions, vec!["public.Visit_late"]);
    assert!(
        cut.reason.contains("partition public.Visit_late"),
        "{}",
        cut.reason
    );
    assert_eq!(cut.previous_end, last_before.end_lsn);
    assert_eq!(cut.compared_with, format!("segment {}", last_before.id));
    assert_eq!(cut_segment.partitions_rewritten, vec!["public.Visit_late"]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["chainCut"]["partitions"][0], "public.Visit_late");
    let taken = report.base_backup.clone().expect("a base backup after the cut");
    assert!(taken.start_lsn >= cut_segment.end_lsn, "{taken:?}");
    // and an instant between the truncate and that base backup is refused
    // (not restored with the partition's rows back), naming the partition
    let target = TestDatabase::create_on(&admin, "parttrunc_within").await;
    let refused = operations::restore_backup(&services, &at_request(source, &target, within))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("partition public.Visit_late was truncated on its own"),
        "{refused}"
    );
    assert!(refused.contains(&cut_segment.id.to_string()), "{refused}");

    // When more is written and captured
    client
        .batch_execute("INSERT INTO \"Visit\" VALUES (22, 70, 'later'); DELETE FROM \"Visit\" WHERE id = 2")
        .await
        .unwrap();
    let after = server_now(&client).await;
    let expected_after = table_digest(&client, "Visit").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("UPDATE \"Visit\" SET note = 'later' WHERE id = 3")
        .await
        .unwrap();
    let (report, _) = capture_run_now(&services, &source.url, &names).await;
    // Then the new chain goes on without a cut
    assert_eq!(report.report.chain_cut, None);
    assert_eq!(report.base_backup, None);

    // And an instant after the truncate restores exactly from the new base
    // (the partition empty but for the later rows)
    let late: i64 = client
        .query_one("SELECT count(*) FROM \"Visit_late\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(late, 2, "rows 20 and 22 only");
    let (base, digest) = restore_at(&services, &admin, source, "parttrunc_after", after, "Visit").await;
    assert_eq!(base, taken.id);
    assert_eq!(digest, expected_after);
    // while an instant before it still restores from the old base
    let (base, digest) = restore_at(&services, &admin, source, "parttrunc_before", before, "Visit").await;
    assert_eq!(base, old_base.id.to_string());
    assert_eq!(digest, expected_before);

    // When a partition is attached, Then that is a schema change (the
    // fingerprint lists the partitions), a cut of the other kind
    client
        .batch_execute(
            "CREATE TABLE \"Visit_next\" PARTITION OF \"Visit\" FOR VALUES FROM (100) TO (200); \
             INSERT INTO \"Visit\" VALUES (30, 150, 'next')",
        )
        .await
        .unwrap();
    let (report, attached) = capture_run_now(&services, &source.url, &names).await;
    let cut = report.report.chain_cut.expect("a partition attached is a cut");
    assert!(cut.partitions.is_empty());
    assert_ne!(cut.old_fingerprint, cut.new_fingerprint);
    assert_eq!(cut.new_fingerprint, attached.catalog_fingerprint);
    assert!(report.base_backup.is_some());
    // and so is one detached
    client
        .batch_execute("ALTER TABLE \"Visit\" DETACH PARTITION \"Visit_next\"; INSERT INTO \"Visit\" VALUES (31, 15, 'x')")
        .await
        .unwrap();
    let (report, _) = capture_run_now(&services, &source.url, &names).await;
    let cut = report.report.chain_cut.expect("a partition detached is a cut");
    assert_ne!(cut.old_fingerprint, cut.new_fingerprint);
}

/// A sustained load at a fixed rate (200 transactions/s by default) for
/// `PGBACKUP_PITR_SUSTAINED_SECONDS` (12 s by default; the measurement in
/// docs/PITR.md ran 130 s), capture every `PGBACKUP_PITR_CAPTURE_EVERY_MS`:
/// the rate is held, every capture run keeps up, and the end state
/// restores exactly. Prints the numbers the issue asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sustained_load_of_200_transactions_per_second_is_captured_and_replayed() {
    let _alone = LOAD_ON_THE_MACHINE.write().await;
    let seconds = env_number("PGBACKUP_PITR_SUSTAINED_SECONDS", 12);
    let every = Duration::from_millis(env_number("PGBACKUP_PITR_CAPTURE_EVERY_MS", 2000));
    let rate = env_number("PGBACKUP_PITR_RATE", 200) as f64;
    let admin = logical_admin();
    // Given a database under capture and a base backup
    let pitr = PitrDatabase::create_on(&admin, "sustained").await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let client = source.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    changes::enable_pitr_with(&source.url, &names, &[], true)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let services = services(dir.path(), &names);
    let keyring = test_keyring();
    let base = operations::create_backup(
        &services,
        &CreateRequest {
            database_url: source.url.clone(),
            ..manual()
        },
    )
    .await
    .unwrap();

    // When two sessions commit at least `rate` transactions a second
    // between them for `seconds` (each paced 10 % above its half, so that
    // connecting and the final pause do not pull the whole run under
    // `rate`), with capture running every `every`
    let store = Arc::new(InterruptedCaptureStore::new(Arc::new(LocalStore::new(
        dir.path(),
    ))));
    let stop_capture = Arc::new(AtomicBool::new(false));
    let capture_task = capture_every(
        store.clone(),
        keyring.clone(),
        CaptureRequest::new(source.url.clone(), names.clone()),
        every,
        0,
        stop_capture.clone(),
    );
    let pause = Arc::new(RwLock::new(()));
    let stop_load = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let sessions: Vec<_> = (0..2)
        .map(|session| {
            tokio::spawn(load(
                source.url.clone(),
                session,
                pause.clone(),
                stop_load.clone(),
                commits.clone(),
                Some(rate * 1.1 / 2.0),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (at, expected) = {
        let _paused = pause.write().await;
        (server_now(&client).await, digest(&client).await)
    };
    let committed = commits.load(Ordering::SeqCst);
    let held = started.elapsed().as_secs_f64();
    stop_load.store(true, Ordering::SeqCst);
    for session in sessions {
        session.await.unwrap();
    }
    tokio::time::sleep(every + Duration::from_millis(500)).await;
    stop_capture.store(true, Ordering::SeqCst);
    let runs = capture_task.await.unwrap();

    // Then the rate was held
    let achieved = committed as f64 / held;
    assert!(
        achieved >= rate,
        "{achieved:.0} commits/s, below the {rate} asked for"
    );
    // And restoring to the end gives the source's digests (with
    // `PGBACKUP_PITR_REPLAY_DELAY_MS`, through a proxy that adds that much
    // each way to the restore's connection: a database a network away)
    let target = TestDatabase::create_on(&admin, "sustained_target").await;
    let mut request = at_request(source, &target, at);
    let delay = env_number("PGBACKUP_PITR_REPLAY_DELAY_MS", 0);
    if delay > 0 {
        let upstream = admin
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(host, _)| host.to_owned())
            .unwrap();
        let port = delayed_proxy(upstream.clone(), Duration::from_millis(delay)).await;
        request.target_url = Some(target.url.replace(&upstream, &format!("127.0.0.1:{port}")));
    }
    let outcome = operations::restore_backup(&services, &request)
        .await
        .unwrap_or_else(|error| panic!("restore --at {at}: {}", error.chain()));
    assert_eq!(outcome.backup_id, base.id.to_string());
    let replayed = outcome.replayed.clone().unwrap();
    assert_eq!(digest(&target.client().await).await, expected);

    // The numbers
    let changes_total: u64 = runs.iter().map(|r| r.changes).sum();
    let bytes_total: u64 = runs.iter().map(|r| r.bytes).sum();
    let lags: Vec<i64> = runs.iter().map(|r| r.lag_ms).collect();
    let throughput: Vec<u64> = runs
        .iter()
        .map(|r| r.changes * 1000 / r.duration_ms.max(1))
        .collect();
    eprintln!(
        "sustained: {committed} commits in {held:.1} s = {achieved:.0} transactions/s; capture every {} ms: {} runs, {changes_total} changes in {} transactions",
        every.as_millis(),
        runs.len(),
        runs.iter().map(|r| r.transactions).sum::<u64>()
    );
    eprintln!(
        "sustained: achieved RPO per run (first commit to segment stored, ms): {lags:?}; max {} ms",
        lags.iter().max().unwrap_or(&0)
    );
    eprintln!("sustained: capture throughput per run (changes/s): {throughput:?}");
    eprintln!(
        "sustained: run durations (ms): {:?}",
        runs.iter().map(|r| r.duration_ms).collect::<Vec<_>>()
    );
    let payload_total: u64 = runs.iter().map(|r| r.payload_bytes).sum();
    eprintln!(
        "sustained: {:.1} segment bytes per change stored ({bytes_total} bytes; payload {:.1} bytes per change before compression)",
        bytes_total as f64 / changes_total.max(1) as f64,
        payload_total as f64 / changes_total.max(1) as f64
    );
    eprintln!(
        "sustained: replay of {} changes in {} transactions in {} ms = {:.0} changes/s",
        replayed.changes,
        replayed.transactions,
        replayed.duration_ms,
        replayed.changes as f64 * 1000.0 / replayed.duration_ms.max(1) as f64
    );
}

async fn table_count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[])
        .await
        .unwrap()
        .get(0)
}

/// What a pipelined replay (statements sent ahead of their results) could
/// get wrong if it let a statement overtake one it depends on: all in one
/// segment, in the order the source committed them.
const PIPELINE_SCHEMA: &str = "CREATE TABLE \"Keyed\" (id int PRIMARY KEY, note text, big text);
     ALTER TABLE \"Keyed\" ALTER COLUMN big SET STORAGE EXTERNAL;
     CREATE TABLE \"Alike\" (k text, v int);
     INSERT INTO \"Keyed\" VALUES (3, 'base', NULL), (6, 'base', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g));
     INSERT INTO \"Alike\" VALUES ('base', 1), ('base', 1);";

const PIPELINE_CHANGES: [&str; 9] = [
    // A TRUNCATE between inserts (the rows before it go, those after stay).
    "INSERT INTO \"Keyed\" SELECT g, 'before truncate', NULL FROM generate_series(100, 120) g;
     INSERT INTO \"Alike\" VALUES ('before truncate', 1), ('before truncate', 1);
     TRUNCATE \"Keyed\", \"Alike\";
     INSERT INTO \"Keyed\" SELECT g, 'after truncate', NULL FROM generate_series(110, 130) g;
     INSERT INTO \"Alike\" VALUES ('after', 1), ('after', 1), ('after', 2)",
    // A key change, then an insert that reuses the old key.
    "INSERT INTO \"Keyed\" VALUES (1, 'first', NULL);
     UPDATE \"Keyed\" SET id = 10, note = 'moved' WHERE id = 1;
     INSERT INTO \"Keyed\" VALUES (1, 'reused', NULL)",
    // The same in one transaction and a key moved twice.
    "UPDATE \"Keyed\" SET id = 11 WHERE id = 110;
     UPDATE \"Keyed\" SET id = 12 WHERE id = 11;
     INSERT INTO \"Keyed\" VALUES (110, 'reused', NULL), (11, 'reused', NULL)",
    // An update, then a delete of the same row.
    "INSERT INTO \"Keyed\" VALUES (2, 'short-lived', NULL)",
    "UPDATE \"Keyed\" SET note = 'updated' WHERE id = 2;
     DELETE FROM \"Keyed\" WHERE id = 2;
     UPDATE \"Keyed\" SET note = 'updated' WHERE id = 3;
     DELETE FROM \"Keyed\" WHERE id = 3",
    // An update of a TOASTed row that leaves the TOASTed value alone
    // (sent as unchanged TOAST: a partial update), right after its insert.
    "INSERT INTO \"Keyed\" VALUES (4, 'toasted', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g));
     UPDATE \"Keyed\" SET note = 'partly updated' WHERE id = 4;
     UPDATE \"Keyed\" SET note = 'partly updated' WHERE id = 6",
    // A partial update, then a key change of that row, then its old key reused.
    "UPDATE \"Keyed\" SET note = 'again' WHERE id = 4;
     UPDATE \"Keyed\" SET id = 40 WHERE id = 4;
     INSERT INTO \"Keyed\" VALUES (4, 'third', NULL);
     UPDATE \"Keyed\" SET note = 'moved then updated' WHERE id = 40",
    // Rows alike without a key: an update, then a delete of one of them.
    "UPDATE \"Alike\" SET v = 3 WHERE ctid = (SELECT ctid FROM \"Alike\" WHERE v = 1 LIMIT 1);
     DELETE FROM \"Alike\" WHERE ctid = (SELECT ctid FROM \"Alike\" WHERE v = 3 LIMIT 1);
     INSERT INTO \"Alike\" VALUES ('after', 1)",
    // Whole-row updates of rows the base has, one of them twice.
    "UPDATE \"Keyed\" SET note = note || '+' WHERE id BETWEEN 112 AND 130;
     UPDATE \"Keyed\" SET note = note || '+' WHERE id = 120",
];

#[tokio::test]
async fn a_pipelined_replay_keeps_every_change_in_its_order() {
    let _side_by_side = LOAD_ON_THE_MACHINE.read().await;
    // Given a database under capture (a keyed table with a TOASTed column,
    // a table without key) and a base backup
    let CapturedDatabase {
        admin,
        pitr,
        client,
        dir,
        services,
        base,
        ..
    } = CapturedDatabase::start_with("pipeline_source", PIPELINE_SCHEMA, true).await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let store = LocalStore::new(dir.path());

    // When the changes that depend on each other are committed and
    // captured in one segment (with a commit after the instant)
    for transaction in PIPELINE_CHANGES {
        client
            .batch_execute(&format!("BEGIN; {transaction}; COMMIT"))
            .await
            .unwrap();
    }
    let at = server_now(&client).await;
    let expected = (
        table_digest(&client, "Keyed").await,
        table_digest(&client, "Alike").await,
    );
    // Commit times are kept to the millisecond: the next one falls later.
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("INSERT INTO \"Keyed\" VALUES (999, 'after the instant', NULL)")
        .await
        .unwrap();
    let segment = capture_now(&store, &source.url, &names).await;
    assert!(segment.first_commit_time <= at && segment.last_commit_time > at);

    // Then restoring to the instant gives the source's rows exactly
    let target = TestDatabase::create_on(&admin, "pipeline_target").await;
    let outcome = operations::restore_backup(&services, &at_request(source, &target, at))
        .await
        .unwrap_or_else(|error| panic!("restore --at {at}: {}", error.chain()));
    assert_eq!(outcome.backup_id, base.id.to_string());
    let replayed = outcome.replayed.clone().expect("a replay report");
    assert_eq!(replayed.segments, 1, "{replayed:?}");
    assert_eq!(replayed.missing_rows, 0, "{replayed:?}");
    let restored = target.client().await;
    assert_eq!(
        (
            table_digest(&restored, "Keyed").await,
            table_digest(&restored, "Alike").await
        ),
        expected
    );
    // And the partial update kept the TOASTed value it did not send
    let big: Option<String> = restored
        .query_one("SELECT big FROM \"Keyed\" WHERE id = 40", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.map(|big| big.len()), Some(9600));
}

/// The replay rate on a keyed table alone (inserts, whole-row updates,
/// partial updates that leave a TOASTed value alone, deletes), printed:
/// the sustained test's rate mixes in the table without key, whose rows
/// are found by a scan. `PGBACKUP_PITR_KEYED_ROWS` (default 4000) rows.
#[tokio::test]
async fn the_replay_rate_on_a_keyed_table() {
    let _alone = LOAD_ON_THE_MACHINE.write().await;
    let rows = env_number("PGBACKUP_PITR_KEYED_ROWS", 4000);
    // Given a database under capture and a base backup
    let CapturedDatabase {
        admin,
        pitr,
        client,
        dir,
        services,
        ..
    } = CapturedDatabase::start(
        "keyed_rate",
        "CREATE TABLE \"Keyed\" (id int PRIMARY KEY, qty int NOT NULL, note text, big text);
         ALTER TABLE \"Keyed\" ALTER COLUMN big SET STORAGE EXTERNAL",
    )
    .await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let store = LocalStore::new(dir.path());

    // When rows are inserted, updated whole, updated in part, and half of
    // them deleted, 20 rows a transaction
    let big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 100) g)";
    for first in (0..rows).step_by(20) {
        let last = first + 19;
        client
            .batch_execute(&format!(
                "INSERT INTO \"Keyed\" SELECT g, g, 'new', CASE WHEN g % 4 = 0 THEN {big} END FROM generate_series({first}, {last}) g"
            ))
            .await
            .unwrap();
    }
    for first in (0..rows).step_by(20) {
        let last = first + 19;
        client
            .batch_execute(&format!(
                "BEGIN; UPDATE \"Keyed\" SET qty = qty + 1, note = 'updated' WHERE id BETWEEN {first} AND {last};
                 DELETE FROM \"Keyed\" WHERE id BETWEEN {first} AND {last} AND id % 2 = 1; COMMIT"
            ))
            .await
            .unwrap();
    }
    let at = server_now(&client).await;
    let expected = table_digest(&client, "Keyed").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("INSERT INTO \"Keyed\" VALUES (-1, 0, 'after the instant', NULL)")
        .await
        .unwrap();
    capture_now(&store, &source.url, &names).await;

    // Then the restore to the instant is exact, on the same machine and
    // through a proxy that adds a millisecond each way (a database a
    // network away), and the rates are printed
    let upstream = admin
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host, _)| host.to_owned())
        .unwrap();
    let port = delayed_proxy(upstream.clone(), Duration::from_millis(1)).await;
    for (label, delayed) in [("local", false), ("1 ms each way", true)] {
        let target = TestDatabase::create_on(&admin, "keyed_rate_target").await;
        let mut request = at_request(source, &target, at);
        if delayed {
            request.target_url = Some(target.url.replace(&upstream, &format!("127.0.0.1:{port}")));
        }
        let outcome = operations::restore_backup(&services, &request)
            .await
            .unwrap_or_else(|error| panic!("restore --at {at}: {}", error.chain()));
        let replayed = outcome.replayed.clone().expect("a replay report");
        assert_eq!(replayed.changes, rows * 5 / 2, "{replayed:?}");
        assert_eq!(replayed.missing_rows, 0, "{replayed:?}");
        assert_eq!(table_digest(&target.client().await, "Keyed").await, expected);
        eprintln!(
            "keyed ({label}): replay of {} changes in {} transactions in {} ms = {:.0} changes/s",
            replayed.changes,
            replayed.transactions,
            replayed.duration_ms,
            replayed.changes as f64 * 1000.0 / replayed.duration_ms.max(1) as f64
        );
    }
}

#[tokio::test]
async fn a_change_that_fails_among_those_sent_ahead_is_the_one_named() {
    let _side_by_side = LOAD_ON_THE_MACHINE.read().await;
    // Given a table whose check passes in the source database and fails
    // in any other (the restore's target), and a base backup
    let admin = logical_admin();
    let pitr = PitrDatabase::create_on(&admin, "failing_source").await;
    let (source, names) = (&pitr.database, pitr.names.clone());
    let client = source.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE \"Checked\" (id int PRIMARY KEY, note text,
                CHECK (note <> 'only in the source' OR current_database() = '{}'))",
            source.name
        ))
        .await
        .unwrap();
    changes::enable_pitr(&source.url, &names, &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let services = services(dir.path(), &names);
    let store = LocalStore::new(dir.path());
    operations::create_backup(
        &services,
        &CreateRequest {
            database_url: source.url.clone(),
            ..manual()
        },
    )
    .await
    .unwrap();

    // When the change the target refuses comes between many that it takes
    client
        .batch_execute("INSERT INTO \"Checked\" SELECT g, 'fine' FROM generate_series(1, 300) g")
        .await
        .unwrap();
    let before = wal_position(&client).await;
    client
        .batch_execute("INSERT INTO \"Checked\" VALUES (301, 'only in the source')")
        .await
        .unwrap();
    let after = wal_position(&client).await;
    client
        .batch_execute("INSERT INTO \"Checked\" SELECT g, 'fine' FROM generate_series(302, 600) g")
        .await
        .unwrap();
    let at = server_now(&client).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("INSERT INTO \"Checked\" VALUES (999, 'after the instant')")
        .await
        .unwrap();
    capture_now(&store, &source.url, &names).await;

    // Then the restore fails naming that change, not one sent after it
    let target = TestDatabase::create_on(&admin, "failing_target").await;
    let error = operations::restore_backup(&services, &at_request(source, &target, at))
        .await
        .unwrap_err();
    let message = error.chain();
    assert!(message.contains("inserting a row in table"), "{message}");
    assert!(message.contains("violates check constraint"), "{message}");
    let named: changes::Lsn = message
        .split_once("change at LSN ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(lsn, _)| lsn.parse().unwrap())
        .unwrap_or_else(|| panic!("no LSN named: {message}"));
    assert!(
        before <= named && named < after,
        "{named} is not the refused change's (between {before} and {after}): {message}"
    );
    // And nothing was restored
    assert_eq!(table_count(&target.client().await).await, 0, "{message}");
}

/// The server's WAL insert position now.
async fn wal_position(client: &Client) -> changes::Lsn {
    let text: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

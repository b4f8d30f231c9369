//! Change capture (issue #29, first slice; docs/PITR.md) against a real
//! PostgreSQL 15 with `wal_level = logical`: the private cluster of
//! `infra/pg-logical.sh` (started here if it is not up), and the shared
//! server on 5432 (`wal_level = replica`) for the refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use backup_core::ContainerError;
use backup_core::changes::pgoutput::{Message, Value};
use backup_core::changes::{
    self, CaptureOutcome, CaptureRequest, ChangesError, Lsn, PitrNames, SegmentChanges, SegmentMetadata,
};
use backup_core::storage::{BackupStore, LocalStore};
use integration_tests::pitr::{InterruptedCaptureStore, PitrDatabase};
use integration_tests::{TestDatabase, admin_url, test_keyring};
use tokio_postgres::Client;

/// A capture in small batches, so a run crosses several portal fetches.
fn request(captured: &PitrDatabase) -> CaptureRequest {
    let mut request = captured.capture_request();
    request.batch_rows = 3;
    request
}

#[tokio::test]
async fn enable_is_refused_on_a_server_without_logical_decoding_and_says_what_to_set() {
    // Given the shared server, which runs with wal_level = replica
    let database = TestDatabase::create_on(&admin_url(), "capture_refused").await;
    let client = database.client().await;
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(
        wal_level, "replica",
        "this test needs the shared server at wal_level = replica"
    );
    client
        .batch_execute("CREATE TABLE \"Booking\" (id int PRIMARY KEY, note text)")
        .await
        .unwrap();

    // When capture is enabled there
    let names = PitrNames {
        slot: "capture_refused".into(),
        publication: "capture_refused".into(),
    };
    let error = changes::enable_pitr(&database.url, &names, &[])
        .await
        .unwrap_err();

    // Then it is refused, naming the setting and how to change it on RDS and elsewhere
    let message = error.to_string();
    assert!(matches!(error, ChangesError::Prerequisite(_)), "{message}");
    assert!(message.contains("wal_level = replica"), "{message}");
    assert!(message.contains("rds.logical_replication = 1"), "{message}");
    assert!(message.contains("wal_level = logical"), "{message}");
    // And nothing was created
    let publications: i64 = client
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'capture_refused'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((publications, slots), (0, 0));
}

#[tokio::test]
async fn enable_publishes_only_tables_with_a_replica_identity_and_names_the_others() {
    // Given keyed tables, one with REPLICA IDENTITY FULL, and a log table
    // without any key, and an unlogged table
    let captured = PitrDatabase::create("capture_enable").await;
    let client = captured.client().await;
    client
        .batch_execute(
            "CREATE TABLE \"Booking\" (id int PRIMARY KEY, note text);
             CREATE TABLE \"Service\" (code text NOT NULL, name text);
             ALTER TABLE \"Service\" REPLICA IDENTITY FULL;
             CREATE TABLE \"Log\" (at timestamptz, line text);
             CREATE UNLOGGED TABLE \"Scratch\" (id int PRIMARY KEY);
             INSERT INTO \"Log\" VALUES (now(), 'first');",
        )
        .await
        .unwrap();

    // When capture is enabled
    let report = changes::enable_pitr(&captured.database.url, &captured.names, &[])
        .await
        .unwrap();

    // Then the publication lists the two tables with a replica identity
    assert_eq!(report.tables, vec!["public.Booking", "public.Service"]);
    let published: Vec<String> = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&captured.names.publication],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(published, report.tables);
    let all_tables: bool = client
        .query_one(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&captured.names.publication],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!all_tables);
    // And the keyless and the unlogged tables are named with why
    let left: Vec<(String, String)> = report
        .left_out
        .iter()
        .map(|l| (l.table.clone(), l.reason.clone()))
        .collect();
    assert_eq!(
        left,
        vec![
            (
                "public.Log".to_owned(),
                "no primary key or replica identity (`pitr enable --replica-identity-full` captures it by all its columns)"
                    .to_owned()
            ),
            (
                "public.Scratch".to_owned(),
                "unlogged (its changes are not in the write-ahead log)".to_owned()
            ),
        ]
    );
    // And the application can still update and delete in the table left out
    client
        .batch_execute("UPDATE \"Log\" SET line = 'second'; DELETE FROM \"Log\";")
        .await
        .unwrap();
    // And a pgoutput slot exists in this database
    let plugin: String = client
        .query_one(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
            &[&captured.names.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plugin, "pgoutput");
    assert!(report.slot_created && report.publication_created);

    // When it is enabled again after the log table got a key
    client
        .batch_execute("ALTER TABLE \"Log\" ADD COLUMN id serial PRIMARY KEY")
        .await
        .unwrap();
    let again = changes::enable_pitr(&captured.database.url, &captured.names, &[])
        .await
        .unwrap();
    // Then the slot is kept and the publication brought up to date
    assert!(!again.slot_created && !again.publication_created);
    assert_eq!(
        again.tables,
        vec!["public.Booking", "public.Log", "public.Service"]
    );

    // When it is disabled, slot and publication are gone
    let dropped = changes::disable_pitr(&captured.database.url, &captured.names)
        .await
        .unwrap();
    assert!(dropped.slot_dropped && dropped.publication_dropped);
    let left_behind: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) + (SELECT count(*) FROM pg_publication)",
            &[&captured.names.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left_behind, 0);
}

/// One committed transaction of the load: its xid and the WAL positions
/// just before its COMMIT and just after.
struct Committed {
    xid: u32,
    before: Lsn,
    after: Lsn,
    changes: Vec<&'static str>,
}

/// Runs `statements` as one transaction and brackets its commit record.
async fn commit(client: &Client, statements: &str, changes: Vec<&'static str>) -> Committed {
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(statements).await.unwrap();
    let row = client
        .query_one(
            "SELECT (txid_current() % 4294967296)::bigint, pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .unwrap();
    let xid = u32::try_from(row.get::<_, i64>(0)).unwrap();
    let before: Lsn = row.get::<_, String>(1).parse().unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    let after: Lsn = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    Committed {
        xid,
        before,
        after,
        changes,
    }
}

/// A decoded transaction: its xid, commit LSN, end LSN and changes as text.
#[derive(Debug)]
struct Decoded {
    xid: u32,
    commit_lsn: Lsn,
    end_lsn: Lsn,
    changes: Vec<String>,
}

fn show(values: &[Value]) -> String {
    let shown: Vec<String> = values
        .iter()
        .map(|value| match value {
            Value::Null => "NULL".to_owned(),
            Value::UnchangedToast => "UNCHANGED".to_owned(),
            Value::Text(bytes) if bytes.len() > 20 => format!("{}x{}", char::from(bytes[0]), bytes.len()),
            Value::Text(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::Binary(_) => "BINARY".to_owned(),
        })
        .collect();
    shown.join(",")
}

/// Reads a segment back completely, grouped into transactions.
async fn decode_all(mut segment: SegmentChanges) -> Result<Vec<Decoded>, ChangesError> {
    let mut transactions = Vec::new();
    let mut open: Option<Decoded> = None;
    while let Some(record) = segment.next().await? {
        let table = |oid: u32| {
            let relation = segment
                .relation(oid)
                .expect("a change's relation is described before it");
            format!("{}.{}", relation.schema, relation.name)
        };
        let change = match &record.message {
            Message::Begin(begin) => {
                open = Some(Decoded {
                    xid: begin.xid,
                    commit_lsn: begin.final_lsn,
                    end_lsn: Lsn(0),
                    changes: Vec::new(),
                });
                None
            }
            Message::Commit(commit) => {
                let mut done = open.take().expect("a commit closes a begin");
                assert_eq!(done.commit_lsn, commit.commit_lsn);
                assert_eq!(
                    record.lsn, commit.end_lsn,
                    "the slot gives a commit the LSN just past its record"
                );
                done.end_lsn = commit.end_lsn;
                transactions.push(done);
                None
            }
            Message::Insert(insert) => {
                Some(format!("INSERT {} {}", table(insert.relation), show(&insert.new)))
            }
            Message::Update(update) => {
                Some(format!("UPDATE {} {}", table(update.relation), show(&update.new)))
            }
            Message::Delete(delete) => Some(format!(
                "DELETE {} {}",
                table(delete.relation),
                show(delete.old.tuple())
            )),
            Message::Truncate(truncate) => Some(format!(
                "TRUNCATE {}",
                truncate
                    .relations
                    .iter()
                    .map(|&oid| table(oid))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Message::Relation(_) | Message::Type(_) | Message::Origin(_) => None,
        };
        if let Some(change) = change {
            open.as_mut()
                .expect("changes are inside a transaction")
                .changes
                .push(change);
        }
    }
    assert!(open.is_none(), "the segment ends inside a transaction");
    Ok(transactions)
}

async fn only_segment(store: &dyn BackupStore) -> SegmentMetadata {
    let mut segments = changes::list_segments(store, &test_keyring()).await.unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.remove(0)
}

async fn set_up_booking(captured: &PitrDatabase) -> Client {
    let client = captured.client().await;
    client
        .batch_execute(
            "CREATE TABLE \"Booking\" (id serial PRIMARY KEY, note text, blob text, amount int);
             ALTER TABLE \"Booking\" ALTER COLUMN blob SET STORAGE EXTERNAL;
             CREATE TABLE \"Service\" (id int PRIMARY KEY, name text);
             CREATE TABLE \"Log\" (line text);",
        )
        .await
        .unwrap();
    changes::enable_pitr(&captured.database.url, &captured.names, &[])
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn a_mixed_load_is_captured_as_exactly_the_committed_changes_in_commit_order() {
    // Given capture enabled on Booking and Service (Log has no key)
    let captured = PitrDatabase::create("capture_load").await;
    let client = set_up_booking(&captured).await;
    let start = captured.confirmed_position().await;

    // And a load: a multi-statement transaction, a rollback, updates of a
    // plain and of a TOASTed column, a delete, a truncate, and another
    // multi-statement transaction, each committed one after the other
    let mut load = Vec::new();
    load.push(
        commit(
            &client,
            "INSERT INTO \"Booking\" (note, blob, amount) VALUES ('wash', repeat('x', 5000), 10), ('dry', 'small', NULL);
             INSERT INTO \"Service\" VALUES (1, 'Basic'), (2, 'Deluxe');
             INSERT INTO \"Log\" VALUES ('not captured');",
            vec![
                "INSERT public.Booking 1,wash,xx5000,10",
                "INSERT public.Booking 2,dry,small,NULL",
                "INSERT public.Service 1,Basic",
                "INSERT public.Service 2,Deluxe",
            ],
        )
        .await,
    );
    client
        .batch_execute(
            "BEGIN; INSERT INTO \"Booking\" (note) VALUES ('rolled back'); UPDATE \"Service\" SET name = 'gone'; ROLLBACK;",
        )
        .await
        .unwrap();
    load.push(
        commit(
            &client,
            "UPDATE \"Booking\" SET amount = amount + 1 WHERE id = 1",
            vec!["UPDATE public.Booking 1,wash,UNCHANGED,11"],
        )
        .await,
    );
    load.push(
        commit(
            &client,
            "UPDATE \"Booking\" SET blob = repeat('y', 6000) WHERE id = 1",
            vec!["UPDATE public.Booking 1,wash,yx6000,11"],
        )
        .await,
    );
    load.push(
        commit(
            &client,
            "DELETE FROM \"Service\" WHERE id = 2",
            vec!["DELETE public.Service 2,NULL"],
        )
        .await,
    );
    load.push(commit(&client, "TRUNCATE \"Service\"", vec!["TRUNCATE public.Service"]).await);
    load.push(
        commit(
            &client,
            "INSERT INTO \"Service\" VALUES (3, 'Wax');
             UPDATE \"Service\" SET name = 'Hot wax' WHERE id = 3;
             DELETE FROM \"Booking\" WHERE id = 2;",
            vec![
                "INSERT public.Service 3,Wax",
                "UPDATE public.Service 3,Hot wax",
                "DELETE public.Booking 2,NULL,NULL,NULL",
            ],
        )
        .await,
    );

    // When the changes are captured into a store
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let outcome = changes::capture_changes(&store, &test_keyring(), &request(&captured))
        .await
        .unwrap();
    let CaptureOutcome::Captured {
        segment,
        more_pending,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(!more_pending);

    // Then the segment read back holds exactly the committed transactions,
    // in commit order, with their xids, and nothing rolled back or unpublished
    let listed = only_segment(&store).await;
    assert_eq!(&listed, segment.as_ref());
    let decoded = decode_all(
        changes::read_segment(&store, &test_keyring(), &listed)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let got: Vec<(u32, Vec<String>)> = decoded.iter().map(|t| (t.xid, t.changes.clone())).collect();
    let expected: Vec<(u32, Vec<String>)> = load
        .iter()
        .map(|c| (c.xid, c.changes.iter().map(|s| (*s).to_owned()).collect()))
        .collect();
    assert_eq!(got, expected);
    // And each commit LSN lies between the WAL positions read just before
    // and just after that COMMIT, rising from one transaction to the next
    for (transaction, committed) in decoded.iter().zip(&load) {
        assert!(
            committed.before <= transaction.commit_lsn && transaction.end_lsn <= committed.after,
            "commit {} … {} outside {} … {}",
            transaction.commit_lsn,
            transaction.end_lsn,
            committed.before,
            committed.after
        );
    }
    assert!(decoded.windows(2).all(|w| w[0].end_lsn <= w[1].commit_lsn));
    // And the metadata says the same, and the slot moved to the segment's end
    assert_eq!(segment.start_lsn, start);
    assert_eq!(segment.first_commit_lsn, decoded[0].commit_lsn);
    assert_eq!(segment.last_commit_lsn, decoded[decoded.len() - 1].commit_lsn);
    assert_eq!(segment.end_lsn, decoded[decoded.len() - 1].end_lsn);
    assert_eq!(segment.transactions, 6);
    assert_eq!(segment.changes, 10);
    assert!(segment.first_commit_time <= segment.last_commit_time);
    let counts: Vec<(String, u64, u64, u64, u64)> = segment
        .tables
        .iter()
        .map(|t| (t.table.clone(), t.inserts, t.updates, t.deletes, t.truncates))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("public.Booking".to_owned(), 2, 2, 1, 0),
            ("public.Service".to_owned(), 3, 1, 1, 1)
        ]
    );
    assert_eq!(segment.published_tables, vec!["public.Booking", "public.Service"]);
    assert_eq!(segment.sequences.len(), 1);
    assert_eq!(segment.sequences[0].sequence, "public.Booking_id_seq");
    // (the rolled-back insert used the sequence's third value)
    assert_eq!(segment.sequences[0].last_value, Some(3));
    assert_eq!(segment.catalog_fingerprint.len(), 64);
    assert_eq!(captured.confirmed_position().await, segment.end_lsn);

    // When nothing was committed since, the next capture writes nothing
    let again = changes::capture_changes(&store, &test_keyring(), &request(&captured))
        .await
        .unwrap();
    assert!(matches!(again, CaptureOutcome::NoChanges { position, .. } if position == segment.end_lsn));
    assert_eq!(
        changes::list_segments(&store, &test_keyring())
            .await
            .unwrap()
            .len(),
        1
    );

    // When a column is added to a published table, the fingerprint changes
    client
        .batch_execute("ALTER TABLE \"Service\" ADD COLUMN price int")
        .await
        .unwrap();
    commit(
        &client,
        "INSERT INTO \"Service\" VALUES (4, 'Polish', 20)",
        vec![],
    )
    .await;
    let CaptureOutcome::Captured {
        segment: after_ddl, ..
    } = changes::capture_changes(&store, &test_keyring(), &request(&captured))
        .await
        .unwrap()
    else {
        panic!("the insert after the DDL was not captured")
    };
    assert_ne!(after_ddl.catalog_fingerprint, segment.catalog_fingerprint);
}

#[tokio::test]
async fn a_capture_that_fails_before_the_slot_advances_is_repeated_by_the_next() {
    // Given capture enabled and two committed transactions
    let captured = PitrDatabase::create("capture_retry").await;
    let client = set_up_booking(&captured).await;
    let start = captured.confirmed_position().await;
    let first = commit(&client, "INSERT INTO \"Service\" VALUES (1, 'Basic')", vec![]).await;
    let second = commit(
        &client,
        "UPDATE \"Service\" SET name = 'Basic+' WHERE id = 1",
        vec![],
    )
    .await;

    // When a capture fails once the segment is uploaded, before its document is stored
    let dir = tempfile::tempdir().unwrap();
    let store = InterruptedCaptureStore::new(Arc::new(LocalStore::new(dir.path())));
    store.fail_documents();
    let error = changes::capture_changes(&store, &test_keyring(), &request(&captured))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("storage write"), "{error}");

    // Then the slot did not move, and no segment was left behind
    assert_eq!(captured.confirmed_position().await, start);
    let objects = store.list("changes/").await.unwrap();
    assert!(objects.is_empty(), "{objects:?}");

    // When a third transaction commits and the next capture succeeds
    let third = commit(&client, "DELETE FROM \"Service\" WHERE id = 1", vec![]).await;
    store.heal();
    let outcome = changes::capture_changes(&store, &test_keyring(), &request(&captured))
        .await
        .unwrap();
    assert!(matches!(outcome, CaptureOutcome::Captured { .. }));

    // Then its segment repeats the two transactions the failed run had read, then the third
    let segment = only_segment(&store).await;
    let decoded = decode_all(
        changes::read_segment(&store, &test_keyring(), &segment)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let xids: Vec<u32> = decoded.iter().map(|t| t.xid).collect();
    assert_eq!(xids, vec![first.xid, second.xid, third.xid]);
    assert_eq!(
        decoded.iter().map(|t| t.changes.join("; ")).collect::<Vec<_>>(),
        vec![
            "INSERT public.Service 1,Basic",
            "UPDATE public.Service 1,Basic+",
            "DELETE public.Service 1,NULL"
        ]
    );
    assert_eq!(captured.confirmed_position().await, segment.end_lsn);
}

#[tokio::test]
async fn a_segment_with_one_byte_changed_fails_authentication() {
    // Given a captured segment in a local store
    let captured = PitrDatabase::create("capture_tamper").await;
    let client = set_up_booking(&captured).await;
    commit(
        &client,
        "INSERT INTO \"Booking\" (note, blob) SELECT 'row ' || g, repeat(md5(g::text), 20) FROM generate_series(1, 200) g",
        vec![],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    changes::capture_changes(&store, &test_keyring(), &request(&captured))
        .await
        .unwrap();
    let segment = only_segment(&store).await;
    let object = dir.path().join(segment.id.object_key());
    let original = std::fs::read(&object).unwrap();
    // (it reads back whole before any byte is changed)
    let whole = decode_all(
        changes::read_segment(&store, &test_keyring(), &segment)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(whole[0].changes.len(), 200);

    // When any one byte of the object is changed: in the header, the
    // changes, the trailer, the footer
    let len = original.len();
    for at in [20, len / 3, len / 2, len - 40, len - 1] {
        let mut tampered = original.clone();
        tampered[at] ^= 0x01;
        std::fs::write(&object, &tampered).unwrap();
        // Then reading it fails the integrity check, before or while its changes are read
        let result = match changes::read_segment(&store, &test_keyring(), &segment).await {
            Ok(reader) => decode_all(reader).await.map(|_| ()),
            Err(error) => Err(error),
        };
        assert!(
            matches!(result, Err(ChangesError::Container(ContainerError::Integrity))),
            "byte {at} of {len}: {result:?}"
        );
    }
    std::fs::write(&object, &original).unwrap();

    // When the document is altered (a count), it fails its MAC
    let document_path = dir.path().join(segment.id.metadata_key());
    let document = std::fs::read_to_string(&document_path).unwrap();
    let altered = document.replacen("\"transactions\": 1,", "\"transactions\": 2,", 1);
    assert_ne!(altered, document);
    std::fs::write(&document_path, altered).unwrap();
    let error = changes::list_segments(&store, &test_keyring()).await.unwrap_err();
    assert!(matches!(error, ChangesError::TamperedMetadata { .. }), "{error}");
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
async fn each_capture_reports_the_slots_lag_and_rpo_and_a_lost_slot_breaks_the_chain_loudly() {
    use backup_core::config::Settings;
    use backup_core::metrics::MetricsSink;
    use backup_core::operations::{self, CaptureRun, Services};

    // Given capture enabled, metrics written to a file and a webhook listening
    let captured = PitrDatabase::create("capture_safety").await;
    let client = set_up_booking(&captured).await;
    let start = captured.confirmed_position().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = tempfile::tempdir().unwrap();
    let metrics_file = metrics.path().join("emf.log");
    let webhook = integration_tests::WebhookReceiver::start(vec![]).await;
    let mut settings = Settings::from_lookup(|_| None).unwrap();
    settings.keyring = Some(test_keyring());
    settings.webhook_url = Some(webhook.url.clone());
    let services = Services::new(
        Arc::new(LocalStore::new(dir.path())),
        &settings,
        "test",
        MetricsSink::File(metrics_file.clone()),
    );
    let run = CaptureRun {
        capture: request(&captured),
        enable_on_first_run: false,
        accepted_loss: Default::default(),
    };

    // When three rows commit, two seconds pass, and capture runs
    let committed = commit(
        &client,
        "INSERT INTO \"Service\" VALUES (1, 'Basic'), (2, 'Premium'), (3, 'Deluxe')",
        vec![],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let report = operations::capture_and_report(&services, &run).await.unwrap();

    // Then the report says how much WAL the slot kept when the run started
    let health = &report.report.health;
    assert_eq!(health.confirmed_lsn, start);
    assert!(health.current_lsn >= committed.after, "{health:?}");
    assert_eq!(health.lag_bytes, health.current_lsn.0 - start.0);
    assert!(health.lag_bytes > 0);
    assert_eq!(health.wal_status.as_deref(), Some("reserved"));
    // and, loudly, that the cluster lets a slot keep WAL without limit
    assert_eq!(health.max_slot_wal_keep_size, "-1");
    assert!(
        health
            .warnings
            .iter()
            .any(|w| w.contains("max_slot_wal_keep_size is unlimited")),
        "{:?}",
        health.warnings
    );
    // and the achieved RPO: from the oldest uncaptured commit to its segment stored
    let rpo = report.report.oldest_uncaptured_commit_age_seconds;
    assert!((2.0..30.0).contains(&rpo), "RPO {rpo} s");
    assert_eq!(report.report.changes(), 3);
    // and the same facts reach the metrics
    let lines = capture_metrics(&metrics_file);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["ChangesCaptured"], 3.0);
    assert_eq!(lines[0]["CaptureFailures"], 0.0);
    assert_eq!(lines[0]["SlotLagBytes"], health.lag_bytes as f64);
    assert_eq!(lines[0]["OldestUncapturedCommitAgeSeconds"], rpo);
    // and the JSON report (backupctl pitr capture --json, the function's answer) carries them
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["outcome"], "captured");
    assert_eq!(json["slotHealth"]["lagBytes"], health.lag_bytes);
    assert_eq!(json["oldestUncapturedCommitAgeSeconds"], rpo);
    let CaptureOutcome::Captured { segment, .. } = &report.report.outcome else {
        panic!("nothing captured")
    };

    // When the slot is lost (dropped; a failover to a standby without it)
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&captured.names.slot])
        .await
        .unwrap();
    let error = operations::capture_and_report(&services, &run).await.unwrap_err();

    // Then the run fails naming where the chain broke and what to do
    let message = error.chain();
    assert!(
        message.contains(&format!(
            "the change chain is broken from LSN {}",
            segment.end_lsn
        )),
        "{message}"
    );
    // (these services know no slot, so the run takes no base backup itself)
    assert!(
        message.contains("Take a base backup (`backupctl create`") && message.contains("recreates the slot"),
        "{message}"
    );
    // and counts as a capture failure
    let lines = capture_metrics(&metrics_file);
    assert_eq!(lines.last().unwrap()["CaptureFailures"], 1.0, "{lines:?}");
    // and the webhook hears it
    let hooks = webhook.received();
    assert_eq!(hooks.len(), 1, "{:?}", webhook.events());
    assert_eq!(hooks[0].body["type"], "backup_failure");
    assert_eq!(hooks[0].body["failure"], "pitr_chain_broken");
    assert_eq!(hooks[0].body["brokenFromLsn"], segment.end_lsn.to_string());

    // And a run allowed to set capture up on its first run does not
    // silently recreate a lost slot: the chain stays broken
    let first_run = CaptureRun {
        capture: request(&captured),
        enable_on_first_run: true,
        accepted_loss: Default::default(),
    };
    let again = operations::capture_and_report(&services, &first_run)
        .await
        .unwrap_err();
    assert!(again.chain().contains("broken from LSN"), "{}", again.chain());
    assert!(
        changes::capture::slot_health(&client, &captured.names.slot)
            .await
            .unwrap()
            .is_none()
    );

    // While for a store that never held a segment of it, that first run
    // sets capture up and names the table it left out
    let fresh = tempfile::tempdir().unwrap();
    let fresh_services = Services::new(
        Arc::new(LocalStore::new(fresh.path())),
        &settings,
        "test",
        MetricsSink::Disabled,
    );
    let report = operations::capture_and_report(&fresh_services, &first_run)
        .await
        .unwrap();
    let enabled = report.enabled.expect("capture was set up");
    assert!(enabled.slot_created);
    assert_eq!(enabled.left_out.len(), 1, "{:?}", enabled.left_out);
    assert_eq!(enabled.left_out[0].table, "public.Log");
    assert!(matches!(report.report.outcome, CaptureOutcome::NoChanges { .. }));
}

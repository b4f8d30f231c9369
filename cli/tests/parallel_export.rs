//! A backup read over two connections sharing one snapshot, with a large
//! table exported in page ranges (format version 2: several parts per
//! table), comes back whole: restore, full and deep verification agree
//! with the source, and so does a backup read over one connection.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use serde_json::Value;
use support::*;

/// Parts (sections) holding `table` in a backup's metadata.
fn parts_of(metadata: &Value, table: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = metadata["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "table" && s["name"] == table)
        .map(|s| s["part"].as_u64().unwrap_or(0))
        .collect();
    parts.sort_unstable();
    parts
}

#[tokio::test]
async fn a_table_exported_in_parts_over_two_connections_restores_whole() {
    // Given the car-wash database and a ledger of about 50 MB (over 6,000 pages)
    let database = TestDatabase::create("parallel_export").await;
    let client = database.client().await;
    load_carwash(&client, 200).await;
    client
        .batch_execute(
            "CREATE TABLE \"Ledger\" (id bigint PRIMARY KEY, entry text NOT NULL, memo text); \
             INSERT INTO \"Ledger\" SELECT g, md5(g::text), repeat(chr(65 + g % 26), 100) || E'\\t\\n\\\\' \
               FROM generate_series(1, 300000) g",
        )
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE \"Ledger\"").await.unwrap();
    let splits: bool = client
        .query_one("SELECT current_setting('server_version_num')::int >= 140000", &[])
        .await
        .unwrap()
        .get(0);
    let source = table_digests(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());

    // When a backup is taken with the default two connections
    let parallel = cli.json(&["create"]).await;
    // Then the ledger is stored in numbered parts (page ranges, PostgreSQL 14 and later)
    let parts = parts_of(&parallel, "Ledger");
    if splits {
        assert!(parts.len() >= 3, "{parts:?}");
    } else {
        assert_eq!(parts.len(), 1, "{parts:?}");
    }
    assert_eq!(parts, (0..parts.len() as u64).collect::<Vec<_>>());
    assert_eq!(parts_of(&parallel, "Booking"), [0]);
    assert_eq!(parallel["recordCount"].as_u64().unwrap(), {
        let rows: i64 = source.values().map(|(rows, _)| rows).sum();
        rows as u64
    });
    let id = parallel["id"].as_str().unwrap();

    // And it verifies fully and deeply (the restored copy re-exports to each part's digest)
    let full = cli.json(&["verify", "--backup-id", id, "--depth", "full"]).await;
    assert_eq!(full["status"], "passed", "{full}");
    let ledger_check = full["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.Ledger")
        .cloned()
        .unwrap();
    assert_eq!(ledger_check["rows"], 300_000, "{full}");
    let deep = cli.json(&["verify", "--backup-id", id, "--depth", "deep"]).await;
    assert_eq!(deep["status"], "passed", "{deep}");
    // over two connections, as a recovery into an empty database runs
    assert!(
        deep["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|check| check.as_str().unwrap().contains("over 2 connection(s)")),
        "{deep}"
    );

    // And restoring it into an empty database gives back every row of every table
    let copy = TestDatabase::create("parallel_export_copy").await;
    cli.json(&["restore", "--backup-id", id, "--target-url", &copy.url, "--yes"])
        .await;
    assert_eq!(table_digests(&copy.client().await).await, source);

    // When the same database is read over one connection, the ledger is one part
    let mut serial_cli = Backupctl::new(&database, dir.path());
    serial_cli.extra_env = vec![("BACKUP_EXPORT_CONNECTIONS".into(), "1".into())];
    let serial = serial_cli.json(&["create"]).await;
    assert_eq!(parts_of(&serial, "Ledger"), [0]);
    // Then it restores to the same rows
    let serial_copy = TestDatabase::create("parallel_export_serial").await;
    serial_cli
        .json(&[
            "restore",
            "--backup-id",
            serial["id"].as_str().unwrap(),
            "--target-url",
            &serial_copy.url,
            "--yes",
        ])
        .await;
    assert_eq!(table_digests(&serial_copy.client().await).await, source);
}

#[tokio::test]
async fn a_bad_connection_count_is_refused_with_the_setting_named() {
    // Given BACKUP_EXPORT_CONNECTIONS set to 0
    let database = TestDatabase::create("parallel_export_setting").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.extra_env = vec![("BACKUP_EXPORT_CONNECTIONS".into(), "0".into())];
    // When a backup is asked for
    let refused = cli.run(&["create"]).await;
    // Then it is refused before anything is read, naming the setting and its range
    assert!(!refused.status.success());
    let cause = cause_of(&refused);
    assert!(
        cause.contains("BACKUP_EXPORT_CONNECTIONS") && cause.contains("from 1 to 8"),
        "{cause}"
    );
}

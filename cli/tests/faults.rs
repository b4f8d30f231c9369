//! Faults injected into a running `backupctl`: the database backend killed
//! mid-export, storage failing mid-upload and mid-restore (a fault proxy in
//! front of the S3 stand-in), a full disk, the process itself killed, two
//! creates at once, and a prune racing a create. In every case nothing is
//! lost: `list` shows only complete backups, a failed restore leaves the
//! database as it was, and the next run succeeds.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use integration_tests::faults::{Fault, FaultProxy, FaultRule};
use integration_tests::*;
use serde_json::Value;
use support::*;
use tokio_postgres::Client;

/// Holds `ACCESS EXCLUSIVE` on a table from a session of its own, so an
/// export that reaches the table waits there: mid-backup, for as long as
/// the test needs, whatever the machine's speed.
struct TableLock {
    session: Client,
}

impl TableLock {
    async fn take(database: &TestDatabase, table: &str) -> Self {
        let session = database.client().await;
        session
            .batch_execute(&format!("BEGIN; LOCK TABLE \"{table}\" IN ACCESS EXCLUSIVE MODE"))
            .await
            .unwrap();
        Self { session }
    }

    async fn release(self) {
        self.session.batch_execute("ROLLBACK").await.unwrap();
    }
}

async fn admin() -> Client {
    backup_core::postgres::connect(&admin_url()).await.unwrap()
}

/// The backends of `database` that wait for a lock (a backup stuck behind
/// a [`TableLock`]), once there are `count` of them.
async fn waiting_backends(database: &TestDatabase, count: usize) -> Vec<i32> {
    let admin = admin().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' ORDER BY backend_start",
                &[&database.name],
            )
            .await
            .unwrap();
        if rows.len() >= count {
            return rows.iter().map(|row| row.get(0)).collect();
        }
        assert!(
            Instant::now() < deadline,
            "no backup reached the locked table in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn temporary_files(dir: &Path) -> Vec<PathBuf> {
    paths_under(dir)
        .into_iter()
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
        .collect()
}

async fn wait_for_temporary_files(dir: &Path, count: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = temporary_files(dir);
        if found.len() >= count {
            return found;
        }
        assert!(Instant::now() < deadline, "no upload started in 30 s: {found:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A table of `mib` MiB of hex text (compresses about 2:1, or not at all
/// with compression off), so an upload spans several parts.
async fn add_bulk_table(client: &Client, mib: u32) {
    client
        .batch_execute(&format!(
            "CREATE TABLE \"Attachment\" (id int PRIMARY KEY, body text NOT NULL); \
             INSERT INTO \"Attachment\" SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, {}) AS i",
            mib * 1024
        ))
        .await
        .unwrap();
}

/// Keys under `backups/` and `metadata/`, and multipart uploads left open.
async fn published_in(s3: &integration_tests::aws_sdk_s3::Client, bucket: &str) -> (Vec<String>, usize) {
    let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    let keys = listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| k.starts_with("backups/") || k.starts_with("metadata/"))
        .map(str::to_owned)
        .collect();
    let uploads = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .len();
    (keys, uploads)
}

fn s3_cli(database: &TestDatabase, dir: &Path, bucket: &str, endpoint: &str) -> Backupctl {
    let mut cli = Backupctl::new(database, dir);
    cli.extra_env = cloud_env(&[
        ("BACKUP_STORAGE_TYPE", "s3"),
        ("S3_BACKUP_BUCKET", bucket),
        ("BACKUP_COMPRESSION_LEVEL", "0"),
        ("BACKUP_UPLOAD_PART_MIB", "5"),
    ]);
    cli.extra_env.push(("AWS_ENDPOINT_URL".into(), endpoint.into()));
    cli
}

fn list_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn storage_failing_mid_upload_aborts_it_publishes_nothing_and_the_next_run_succeeds() {
    // Given a backup of about 16 MiB, uploaded in 5 MiB parts through a
    // proxy that can fail any request
    let database = TestDatabase::create("fault_upload").await;
    let client = database.client().await;
    load_carwash(&client, 200).await;
    add_bulk_table(&client, 16).await;
    let proxy = FaultProxy::in_front_of_s3().await;
    let (s3, bucket) = s3_test_bucket("faults", false).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = s3_cli(&database, dir.path(), &bucket, &proxy.url);

    for (what, rule) in [
        (
            "part 2 answered 500 on every attempt",
            FaultRule::upload_part(2, Fault::Status(500), usize::MAX),
        ),
        (
            "part 2 reset on every attempt",
            FaultRule::upload_part(2, Fault::Reset, usize::MAX),
        ),
        (
            "part 3 stored but its answer lost, every attempt",
            FaultRule::upload_part(3, Fault::DropResponse, usize::MAX),
        ),
        (
            "completion answered 500 on every attempt",
            FaultRule::complete_upload(Fault::Status(500), usize::MAX),
        ),
    ] {
        // When storage fails that way
        proxy.clear();
        let fired_before = proxy.faults_fired();
        proxy.inject(rule);
        let output = cli.run(&["create", "--reason", what]).await;
        // Then the backup fails, says storage failed, and publishes nothing
        assert!(!output.status.success(), "{what}: the backup succeeded");
        assert!(
            proxy.faults_fired() > fired_before,
            "{what}: the fault never fired"
        );
        let cause = cause_of(&output);
        assert!(cause.contains("storage"), "{what}: {}", stderr_of(&output));
        let (keys, open_uploads) = published_in(&s3, &bucket).await;
        assert!(keys.is_empty(), "{what}: published {keys:?}");
        assert_eq!(open_uploads, 0, "{what}: a multipart upload was left open");
        assert_eq!(cli.json(&["list"]).await, serde_json::json!([]), "{what}");
    }

    // When the faults are passing (one 503, one reset, one slow answer),
    // then the SDK's retries carry the backup through
    proxy.clear();
    let fired_before = proxy.faults_fired();
    proxy.inject(FaultRule::upload_part(2, Fault::Status(503), 1));
    proxy.inject(FaultRule::upload_part(3, Fault::Reset, 1));
    proxy.inject(FaultRule::upload_part(1, Fault::Delay(Duration::from_secs(2)), 1));
    let created = cli.json(&["create", "--reason", "after the faults"]).await;
    assert_eq!(proxy.faults_fired() - fired_before, 3);
    let id = created["id"].as_str().unwrap();
    assert_eq!(list_ids(&cli.json(&["list"]).await), vec![id.to_owned()]);
    let verified = cli.json(&["verify", "--backup-id", id, "--depth", "full"]).await;
    assert_eq!(verified["status"], "passed", "{verified}");
    let (keys, open_uploads) = published_in(&s3, &bucket).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(open_uploads, 0);
    let parts = proxy
        .seen()
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
        .count();
    assert!(
        parts >= 4,
        "the backup went up in several parts ({parts} part requests)"
    );
}

#[tokio::test]
async fn storage_failing_mid_restore_leaves_the_database_as_it_was() {
    // Given a backup on S3, and the database changed since
    let database = TestDatabase::create("fault_restore").await;
    let client = database.client().await;
    load_carwash(&client, 500).await;
    let original = table_digests(&client).await;
    let proxy = FaultProxy::in_front_of_s3().await;
    let (_, bucket) = s3_test_bucket("faults", false).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = s3_cli(&database, dir.path(), &bucket, &proxy.url);
    let id = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();

    // How many reads of the object a whole restore takes
    let reads = |proxy: &FaultProxy| {
        proxy
            .seen()
            .iter()
            .filter(|r| r.method == "GET" && r.target.contains(".backup"))
            .count()
    };
    let before = reads(&proxy);
    cli.json(&["restore", "--backup-id", &id, "--yes", "--no-safety-backup"])
        .await;
    let per_restore = reads(&proxy) - before;
    assert!(
        per_restore >= 5,
        "header, footer, trailer, schema and tables: {per_restore}"
    );
    assert_eq!(table_digests(&client).await, original);
    client
        .batch_execute("UPDATE \"Booking\" SET \"notes\" = 'changed'; DELETE FROM \"Holiday\";")
        .await
        .unwrap();
    let changed = table_digests(&client).await;
    assert_ne!(changed, original);

    // When the read of the last section (after the others were loaded)
    // fails on every attempt, by reset and then by error status
    for fault in [Fault::Reset, Fault::Status(500)] {
        proxy.clear();
        proxy.inject(FaultRule::read_of(".backup", per_restore - 1, fault, usize::MAX));
        let output = cli
            .run(&["restore", "--backup-id", &id, "--yes", "--no-safety-backup"])
            .await;
        // Then the restore fails and the database is exactly as it was
        assert!(!output.status.success(), "{fault:?}: the restore succeeded");
        assert_eq!(table_digests(&client).await, changed, "{fault:?}");
    }

    // And once storage answers again, the restore goes through
    proxy.clear();
    cli.json(&["restore", "--backup-id", &id, "--yes", "--no-safety-backup"])
        .await;
    assert_eq!(table_digests(&client).await, original);
}

#[tokio::test]
async fn a_database_backend_killed_mid_export_publishes_nothing_and_the_next_backup_succeeds() {
    let database = TestDatabase::create("fault_kill").await;
    let client = database.client().await;
    load_carwash(&client, 300).await;
    let (s3, bucket) = s3_test_bucket("faults", false).await;
    let local_dir = tempfile::tempdir().unwrap();
    let s3_dir = tempfile::tempdir().unwrap();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    let local = Backupctl::new(&database, local_dir.path());
    let on_s3 = s3_cli(&database, s3_dir.path(), &bucket, &endpoint);

    for (storage, cli) in [("local", &local), ("s3", &on_s3)] {
        // Given a backup under way, its upload begun, held at a locked table
        let lock = TableLock::take(&database, "Booking").await;
        let child = cli
            .command(&["create"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let backend = waiting_backends(&database, 1).await[0];
        // When its database backend is terminated
        let terminated: bool = admin()
            .await
            .query_one("SELECT pg_terminate_backend($1)", &[&backend])
            .await
            .unwrap()
            .get(0);
        assert!(terminated);
        lock.release().await;
        let output = child.wait_with_output().await.unwrap();
        // Then the backup fails, naming the database as the cause
        assert!(!output.status.success(), "{storage}: the backup succeeded");
        assert!(
            stderr_of(&output).contains("PostgreSQL") || stderr_of(&output).contains("database"),
            "{storage}: {}",
            stderr_of(&output)
        );
        // and nothing is published or left behind
        assert_eq!(cli.json(&["list"]).await, serde_json::json!([]), "{storage}");
        assert!(temporary_files(local_dir.path()).is_empty(), "{storage}");
        if storage == "local" {
            let files = files_in(local_dir.path());
            assert!(
                files
                    .iter()
                    .all(|f| f.ends_with(".json") && !f.contains("metadata")),
                "{files:?}"
            );
        } else {
            assert_eq!(published_in(&s3, &bucket).await, (Vec::new(), 0));
        }
        // And the next backup succeeds
        let created = cli.json(&["create"]).await;
        assert_eq!(
            list_ids(&cli.json(&["list"]).await),
            vec![created["id"].as_str().unwrap().to_owned()]
        );
    }
}

#[tokio::test]
async fn a_killed_backupctl_publishes_nothing_and_prune_sweeps_only_what_it_left() {
    let database = TestDatabase::create("fault_sigkill").await;
    let client = database.client().await;
    load_carwash(&client, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());

    // Given a create held mid-export at a locked table, its partial output
    // in a temporary file
    let lock = TableLock::take(&database, "Booking").await;
    let mut killed = cli
        .command(&["create"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    waiting_backends(&database, 1).await;
    let left_behind = wait_for_temporary_files(dir.path(), 1).await;
    // When the process is killed outright (SIGKILL: no cleanup runs)
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    // Then nothing is listed, but its temporary file is still there
    assert_eq!(cli.json(&["list"]).await, serde_json::json!([]));
    assert_eq!(temporary_files(dir.path()), left_behind);

    // Given a second create, alive and held at the same lock
    let live = cli
        .command(&["create", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    waiting_backends(&database, 2).await;
    let both = wait_for_temporary_files(dir.path(), 2).await;
    let live_file: Vec<PathBuf> = both
        .iter()
        .filter(|f| !left_behind.contains(f))
        .cloned()
        .collect();
    assert_eq!(live_file.len(), 1);
    // and both temporary files looking long idle
    let long_ago = SystemTime::now() - Duration::from_secs(600);
    for file in &both {
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    // When prune runs
    let pruned = cli.json(&["prune"]).await;
    // Then it sweeps the killed run's file and leaves the live one's alone
    let swept: Vec<&str> = pruned["orphansDeleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let killed_name = left_behind[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(swept.len(), 1, "{pruned}");
    assert!(swept[0].ends_with(&killed_name), "{pruned}");
    assert_eq!(temporary_files(dir.path()), live_file);

    // And the live create, let go, finishes into a complete backup
    lock.release().await;
    let output = live.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(list_ids(&cli.json(&["list"]).await), vec![id.to_owned()]);
    assert_eq!(
        cli.json(&["verify", "--backup-id", id, "--depth", "full"]).await["status"],
        "passed"
    );
    assert!(temporary_files(dir.path()).is_empty());
}

#[tokio::test]
async fn two_creates_at_once_make_two_distinct_complete_backups() {
    let database = TestDatabase::create("fault_twice").await;
    load_carwash(&database.client().await, 500).await;
    let (_, bucket) = s3_test_bucket("faults", false).await;
    let local_dir = tempfile::tempdir().unwrap();
    let s3_dir = tempfile::tempdir().unwrap();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    let local = Backupctl::new(&database, local_dir.path());
    let on_s3 = s3_cli(&database, s3_dir.path(), &bucket, &endpoint);
    for (storage, cli) in [("local", &local), ("s3", &on_s3)] {
        let (first, second) = tokio::join!(cli.json(&["create"]), cli.json(&["create"]));
        let (first, second) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());
        assert_ne!(first, second, "{storage}");
        let mut listed = list_ids(&cli.json(&["list"]).await);
        listed.sort();
        let mut expected = vec![first.to_owned(), second.to_owned()];
        expected.sort();
        assert_eq!(listed, expected, "{storage}");
        for id in [first, second] {
            assert_eq!(
                cli.json(&["verify", "--backup-id", id, "--depth", "full"]).await["status"],
                "passed",
                "{storage} {id}"
            );
        }
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_backup_clearly_and_publishes_no_partial_file() {
    // Given a 2 MiB disk and a backup that needs about 4 MiB
    let database = TestDatabase::create("fault_disk").await;
    let client = database.client().await;
    load_carwash(&client, 100).await;
    add_bulk_table(&client, 4).await;
    let disk = SmallDisk::mount("2m");
    let mut cli = Backupctl::new(&database, disk.path());
    cli.extra_env
        .push(("BACKUP_COMPRESSION_LEVEL".into(), "0".into()));

    // When it runs, then it fails saying the disk is full
    let output = cli.run(&["create"]).await;
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("No space left on device"),
        "{}",
        stderr_of(&output)
    );
    // and leaves no partial file, published or temporary
    assert!(temporary_files(disk.path()).is_empty());
    let files = files_in(disk.path());
    assert!(
        files
            .iter()
            .all(|f| f.ends_with(".json") && !f.contains("metadata")),
        "{files:?}"
    );
    assert_eq!(cli.json(&["list"]).await, serde_json::json!([]));

    // And once the backup fits, the next run succeeds
    client.batch_execute("DROP TABLE \"Attachment\"").await.unwrap();
    let created = cli.json(&["create"]).await;
    assert_eq!(
        list_ids(&cli.json(&["list"]).await),
        vec![created["id"].as_str().unwrap().to_owned()]
    );
}

//! Interruption is a failure like any other, and a restore proves what it
//! built (issue #25). Ctrl-C (SIGINT) or SIGTERM in the middle of a restore
//! into an empty database leaves it as it was, says so in one line and
//! exits 130; the same restore run again gives the source's schema as
//! pg_dump sees it. Ctrl-C during `create` leaves no temporary file. A
//! restore into tables that exist with another definition (the half-made
//! tables an older interrupted restore left) is refused, naming what
//! differs, unless `--replace-existing` rebuilds them.
//!
//! The moments are made deterministic by the test builds' hook
//! `BACKUPCTL_TEST_PAUSE_AT` (load, index, foreign-key), which holds each
//! such step of the restore on a server-side `pg_sleep` inside the step's
//! transaction: a statement the interruption must cancel, with the step's
//! locks held, whatever the machine's speed.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::*;
use support::*;
use tokio_postgres::Client;

/// Two tables with a primary key, a CHECK, two indexes, a foreign key and
/// a view (what the user restored), and a function and a procedure
/// (a procedure is removed with DROP PROCEDURE or ROUTINE, not FUNCTION).
const SHOP: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    total numeric(10,2) NOT NULL CHECK (total >= 0),
    placed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_placed_idx ON orders (placed_at);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
CREATE FUNCTION order_count() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM orders $$;
CREATE PROCEDURE touch_orders() LANGUAGE plpgsql AS $$ BEGIN UPDATE orders SET total = total; END $$;
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 1000) g;
INSERT INTO orders SELECT g, 1 + g % 1000, g % 500, '2026-01-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 20000) g;
";

const EXIT_INTERRUPTED: i32 = 130;

/// The user objects of `public` (relations, functions, types) in the database.
async fn public_objects(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' \
             UNION ALL SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' \
             UNION ALL SELECT t.typname::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                       WHERE n.nspname = 'public' AND t.typrelid = 0 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The connections to `database` other than `own` (the test's), once
/// none is left or after 10 s (a backend ends a moment after its client).
async fn sessions_in(database: &TestDatabase, own: &Client) -> i64 {
    let own: i32 = own
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let admin = backup_core::postgres::connect(&admin_url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> $2",
                &[&database.name, &own],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a restore step in `database` sits in the test hook's sleep.
async fn wait_for_pause(database: &TestDatabase) {
    wait_for_pause_in(&database.name).await;
}

/// [`wait_for_pause`] in the database named `name`.
async fn wait_for_pause_in(name: &str) {
    let admin = backup_core::postgres::connect(&admin_url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let paused: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
                 AND query LIKE '%pg_sleep(3600)%' AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if paused > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the restore did not reach the pause in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn send(signal: &str, child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

async fn finished(child: tokio::process::Child, what: &str) -> Output {
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within 120 s of the signal"))
        .unwrap()
}

/// A source database with [`SHOP`] and one backup of it.
async fn backed_up_shop(label: &str, dir: &Path) -> (TestDatabase, Backupctl) {
    let source = TestDatabase::create(label).await;
    source.client().await.batch_execute(SHOP).await.unwrap();
    let cli = Backupctl::new(&source, dir);
    let created = cli.run(&["create"]).await;
    assert!(created.status.success(), "create: {}", stderr_of(&created));
    (source, cli)
}

/// Given a backup of the shop, When its restore into an empty database is
/// stopped by `signal` while the hook holds the `moment` step, Then it
/// exits 130 saying the target holds what it held before, and the target
/// holds nothing of the backup and no session of the restore; And the
/// same restore run again gives the source's schema.
async fn interrupted_restore_leaves_the_target_as_it_was(moment: &str, signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let label = format!("int_{}_{}", moment.replace('-', "_"), signal.to_lowercase());
    let (source, cli) = backed_up_shop(&label, dir.path()).await;
    let target = TestDatabase::create(&format!("{label}_target")).await;
    let restore = [
        "restore",
        "--backup-id",
        "latest",
        "--target-url",
        &target.url,
        "--yes",
    ];

    let mut paused = Backupctl::new(&source, dir.path());
    paused
        .extra_env
        .push(("BACKUPCTL_TEST_PAUSE_AT".into(), moment.into()));
    let child = paused
        .command(&restore)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_pause(&target).await;
    send(signal, &child);
    let output = finished(child, "the interrupted restore").await;

    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(EXIT_INTERRUPTED), "{stderr}");
    let said = cause_of(&output);
    assert!(
        said.contains(&format!("interrupted (SIG{signal})")) && said.contains("holds what it held before"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|line| line.starts_with("backupctl: "))
            .count(),
        1,
        "one line says what happened: {stderr}"
    );
    let target_client = target.client().await;
    assert_eq!(public_objects(&target_client).await, Vec::<String>::new());
    assert_eq!(
        sessions_in(&target, &target_client).await,
        0,
        "the restore's sessions are gone"
    );
    drop(target_client);

    let rerun = cli.run(&restore).await;
    assert!(rerun.status.success(), "the rerun: {}", stderr_of(&rerun));
    assert_eq!(schema_dump(&target.url), schema_dump(&source.url));
}

#[tokio::test]
async fn ctrl_c_during_the_load_of_a_restore_into_an_empty_database_leaves_it_empty_and_a_rerun_restores_it()
{
    interrupted_restore_leaves_the_target_as_it_was("load", "INT").await;
}

#[tokio::test]
async fn ctrl_c_during_the_index_builds_of_a_restore_leaves_the_target_empty_and_a_rerun_restores_it() {
    interrupted_restore_leaves_the_target_as_it_was("index", "INT").await;
}

#[tokio::test]
async fn ctrl_c_while_a_restore_adds_foreign_keys_leaves_the_target_empty_and_a_rerun_restores_it() {
    interrupted_restore_leaves_the_target_as_it_was("foreign-key", "INT").await;
}

#[tokio::test]
async fn sigterm_during_a_restore_is_an_interruption_like_ctrl_c() {
    interrupted_restore_leaves_the_target_as_it_was("index", "TERM").await;
}

#[tokio::test]
async fn sigterm_during_the_load_of_a_restore_leaves_the_target_empty_and_a_rerun_restores_it() {
    interrupted_restore_leaves_the_target_as_it_was("load", "TERM").await;
}

#[tokio::test]
async fn sigterm_while_a_restore_adds_foreign_keys_leaves_the_target_empty_and_a_rerun_restores_it() {
    interrupted_restore_leaves_the_target_as_it_was("foreign-key", "TERM").await;
}

/// Given a create held mid-export at a locked table (its upload's
/// temporary file open), When Ctrl-C arrives, Then it exits 130 saying
/// nothing was published, and leaves no temporary file and no backup.
#[tokio::test]
async fn ctrl_c_during_create_publishes_nothing_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = TestDatabase::create("int_create").await;
    let client = source.client().await;
    client.batch_execute(SHOP).await.unwrap();
    let cli = Backupctl::new(&source, dir.path());

    let lock = source.client().await;
    lock.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let child = cli
        .command(&["create"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                &[&source.name],
            )
            .await
            .unwrap()
            .get(0);
        let temporary = paths_under(dir.path())
            .iter()
            .any(|path| path.file_name().unwrap().to_string_lossy().starts_with(".tmp-"));
        if waiting > 0 && temporary {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the create did not reach the locked table in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send("INT", &child);
    let output = finished(child, "the interrupted create").await;

    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(EXIT_INTERRUPTED), "{stderr}");
    assert!(
        cause_of(&output).contains("interrupted (SIGINT); nothing was published"),
        "{stderr}"
    );
    assert_eq!(
        paths_under(dir.path())
            .iter()
            .filter(|p| p.to_string_lossy().contains(".tmp-"))
            .count(),
        0
    );
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(cli.json(&["list"]).await, serde_json::json!([]));
}

/// Given a backup of the shop and a target where `customers` is complete
/// but `orders` is half-made (its columns and some rows, none of its
/// keys, CHECK, indexes or foreign key), When the backup is restored with
/// --yes, Then it is refused naming what orders lacks, and nothing changed;
/// When restored with --replace-existing, Then the schema is the source's.
#[tokio::test]
async fn a_rerun_into_half_made_tables_is_refused_by_name_unless_they_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (source, cli) = backed_up_shop("int_half_made", dir.path()).await;
    let target = TestDatabase::create("int_half_made_target").await;
    let target_client = target.client().await;
    target_client
        .batch_execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
             CREATE TABLE orders (id bigint NOT NULL, customer_id bigint NOT NULL, total numeric(10,2) NOT NULL,
                                  placed_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO customers VALUES (1, 'one');
             INSERT INTO orders VALUES (1, 1, 5, now()), (1, 1, 6, now());",
        )
        .await
        .unwrap();
    let before = schema_dump(&target.url);
    let restore = [
        "restore",
        "--backup-id",
        "latest",
        "--target-url",
        &target.url,
        "--yes",
    ];

    let refused = cli.run(&restore).await;
    let said = cause_of(&refused);
    assert!(!refused.status.success(), "{}", stderr_of(&refused));
    for missing in [
        "missing primary key orders_pkey",
        "missing check constraint orders_total_check",
        "missing index orders_customer_idx",
        "missing index orders_placed_idx",
        "missing foreign key orders_customer_id_fkey",
    ] {
        assert!(said.contains(missing), "{missing}: {said}");
    }
    assert!(
        !said.contains("customers:"),
        "customers matches the backup: {said}"
    );
    assert!(said.contains("--replace-existing"), "{said}");
    assert_eq!(schema_dump(&target.url), before);
    let orders: i64 = target_client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 2, "nothing changed");

    let mut replace = restore.to_vec();
    replace.push("--replace-existing");
    let replaced = cli.run(&replace).await;
    assert!(replaced.status.success(), "{}", stderr_of(&replaced));
    assert_eq!(schema_dump(&target.url), schema_dump(&source.url));
    let orders: i64 = target_client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 20_000);
}

/// Given a create to S3 whose first two 5 MiB parts the storage answers
/// only after 15 s (so the multipart upload is open and the export waits
/// on it), When Ctrl-C arrives, Then it exits 130 saying nothing was
/// published, and the bucket holds no object and no open multipart upload.
#[tokio::test]
async fn ctrl_c_during_a_create_to_s3_aborts_its_multipart_upload() {
    use integration_tests::faults::{Fault, FaultProxy, FaultRule};
    let source = TestDatabase::create("int_create_s3").await;
    let client = source.client().await;
    client.batch_execute(SHOP).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE attachment (id int PRIMARY KEY, body text NOT NULL);
             INSERT INTO attachment SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 24 * 1024) AS i",
        )
        .await
        .unwrap();
    let proxy = FaultProxy::in_front_of_s3().await;
    for part in [1, 2] {
        proxy.inject(FaultRule::upload_part(
            part,
            Fault::Delay(Duration::from_secs(15)),
            1,
        ));
    }
    let (s3, bucket) = s3_test_bucket("interrupted", false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&source, dir.path());
    cli.extra_env = cloud_env(&[
        ("BACKUP_STORAGE_TYPE", "s3"),
        ("S3_BACKUP_BUCKET", &bucket),
        ("BACKUP_COMPRESSION_LEVEL", "0"),
        ("BACKUP_UPLOAD_PART_MIB", "5"),
    ]);
    cli.extra_env.push(("AWS_ENDPOINT_URL".into(), proxy.url.clone()));

    let child = cli
        .command(&["create"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy
        .seen()
        .iter()
        .any(|request| request.method == "PUT" && request.target.contains("partNumber=2"))
    {
        assert!(
            Instant::now() < deadline,
            "the upload did not reach part 2 in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = s3.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
    assert_eq!(open.uploads().len(), 1, "the multipart upload is open");
    send("INT", &child);
    let output = finished(child, "the interrupted create").await;

    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(EXIT_INTERRUPTED), "{stderr}");
    assert!(
        cause_of(&output).contains("interrupted (SIGINT); nothing was published"),
        "{stderr}"
    );
    let open = s3.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
    assert_eq!(open.uploads().len(), 0, "no multipart upload is left open");
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let published: Vec<&str> = listed
        .contents()
        .iter()
        .filter_map(|object| object.key())
        .filter(|key| key.starts_with("backups/") || key.starts_with("metadata/"))
        .collect();
    assert!(published.is_empty(), "{published:?}");
}

/// Given a target that holds the shop's tables (a few rows fewer) and a
/// session reading `orders`, so a restore with --yes waits to empty it,
/// When Ctrl-C arrives while it waits, Then the one-transaction restore is
/// rolled back (its waiting statement cancelled): exit 130, one line, and
/// the target holds exactly what it held.
#[tokio::test]
async fn ctrl_c_during_a_restore_over_existing_tables_rolls_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_source, cli) = backed_up_shop("int_existing", dir.path()).await;
    let target = TestDatabase::create("int_existing_target").await;
    let restore = [
        "restore",
        "--backup-id",
        "latest",
        "--target-url",
        &target.url,
        "--yes",
    ];
    let first = cli.run(&restore).await;
    assert!(first.status.success(), "{}", stderr_of(&first));
    let target_client = target.client().await;
    target_client
        .batch_execute("DELETE FROM orders WHERE id > 19000")
        .await
        .unwrap();
    let before = schema_dump(&target.url);
    let reader = target.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM orders")
        .await
        .unwrap();

    let child = cli
        .command(&restore)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = target_client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restore did not wait for the lock in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send("INT", &child);
    let output = finished(child, "the interrupted restore").await;
    reader.batch_execute("ROLLBACK").await.unwrap();

    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(EXIT_INTERRUPTED), "{stderr}");
    assert!(
        cause_of(&output).contains("holds what it held before"),
        "{stderr}"
    );
    let orders: i64 = target_client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 19_000, "the rows deleted before are still deleted");
    assert_eq!(schema_dump(&target.url), before);
}

async fn database_exists(admin: &Client, name: &str) -> bool {
    admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// Given a backup of the shop, When a restore with --create-db is stopped
/// by Ctrl-C during its load, Then the database it created is dropped and
/// the one line says so; And the same restore run again makes it afresh
/// with the source's schema.
#[tokio::test]
async fn ctrl_c_during_a_restore_that_created_its_database_drops_that_database() {
    let dir = tempfile::tempdir().unwrap();
    let (source, cli) = backed_up_shop("int_create_db", dir.path()).await;
    let new_name = format!("{}_made", source.name);
    let target = format!("{}/{new_name}", source.url.rsplit_once('/').unwrap().0);
    let admin = backup_core::postgres::connect(&admin_url()).await.unwrap();
    assert!(!database_exists(&admin, &new_name).await);
    let restore = [
        "restore",
        "--backup-id",
        "latest",
        "--target-url",
        &target,
        "--create-db",
        "--yes",
    ];
    let mut paused = Backupctl::new(&source, dir.path());
    paused
        .extra_env
        .push(("BACKUPCTL_TEST_PAUSE_AT".into(), "load".into()));
    let child = paused
        .command(&restore)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_pause_in(&new_name).await;
    send("INT", &child);
    let output = finished(child, "the interrupted restore").await;

    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(EXIT_INTERRUPTED), "{stderr}");
    assert!(
        cause_of(&output).contains("the database it had created was dropped"),
        "{stderr}"
    );
    // said once: the one line, and no warning beside it (info logs, when
    // the harness shows them, may repeat the error)
    assert_eq!(
        stderr
            .lines()
            .filter(|line| line.starts_with("backupctl: ") && line.contains("dropped"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|line| line.contains("dropped") && line.contains("WARN")),
        "{stderr}"
    );
    assert!(
        !database_exists(&admin, &new_name).await,
        "the created database is gone"
    );

    let rerun = cli.run(&restore).await;
    assert!(rerun.status.success(), "the rerun: {}", stderr_of(&rerun));
    assert_eq!(schema_dump(&target), schema_dump(&source.url));
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{new_name}\" WITH (FORCE)"))
        .await
        .unwrap();
}

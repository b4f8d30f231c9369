//! Restore fidelity, judged by pg_dump: for each fixture schema, a backup
//! restored into an empty database must give the same
//! `pg_dump --schema-only` as the source (normalised only for comments and
//! session settings), and the same rows in every table. What the capture
//! cannot reproduce must refuse the backup instead.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use backup_core::postgres::fidelity::AcceptedLoss;
use backup_core::postgres::{PostgresError, RestoreOptions, TableFilter};
use integration_tests::*;

/// `pg_dump --schema-only` of the database at `url`, without what differs
/// between two identical databases: comments, blank lines and the
/// session settings pg_dump prints first.
fn schema_dump(url: &str) -> Vec<String> {
    let output =
        std::process::Command::new(std::env::var("PGBACKUP_PG_DUMP").unwrap_or_else(|_| "pg_dump".into()))
            .args(["--schema-only", "--no-password", "--dbname", url])
            .output()
            .expect("pg_dump on PATH (postgresql-client)");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| {
            !(line.is_empty()
                || line.starts_with("--")
                || line.starts_with("SET ")
                || line.starts_with("SELECT pg_catalog.set_config")
                || line.starts_with("\\restrict")
                || line.starts_with("\\unrestrict"))
        })
        .map(str::to_owned)
        .collect()
}

/// The lines only one side has, for a readable failure.
fn difference(source: &[String], restored: &[String]) -> String {
    let only_source: Vec<&String> = source.iter().filter(|l| !restored.contains(l)).collect();
    let only_restored: Vec<&String> = restored.iter().filter(|l| !source.contains(l)).collect();
    format!("only in the source: {only_source:#?}\nonly in the restored copy: {only_restored:#?}")
}

/// Given a database built by `sql`, When it is backed up and restored into
/// an empty database, Then pg_dump sees the same schema and every table
/// holds the same rows.
async fn round_trips(label: &str, sql: &str) {
    let source = TestDatabase::create(label).await;
    let mut source_client = source.client().await;
    source_client.batch_execute(sql).await.unwrap();
    let (backup, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;

    let restored = TestDatabase::create(&format!("{label}_restored")).await;
    let mut restored_client = restored.client().await;
    restore_from_memory(&backup, &mut restored_client, &RestoreOptions::default())
        .await
        .unwrap();

    let (before, after) = (schema_dump(&source.url), schema_dump(&restored.url));
    assert!(
        before == after,
        "{label}: pg_dump differs\n{}",
        difference(&before, &after)
    );
    assert_eq!(
        table_digests(&source_client).await,
        table_digests(&restored_client).await,
        "{label}: rows differ"
    );
}

#[tokio::test]
async fn the_car_wash_schema_comes_back_as_pg_dump_sees_it() {
    let sql = format!(
        "{}\n{}",
        fixture("carwash-schema.sql"),
        fixture("carwash-data.sql").replace(":bookings", "300")
    );
    round_trips("fid_carwash", &sql).await;
}

#[tokio::test]
async fn awkward_values_and_shapes_come_back_as_pg_dump_sees_them() {
    round_trips("fid_awkward", &fixture("awkward.sql")).await;
}

#[tokio::test]
async fn row_level_security_comes_back_with_its_flags_and_policies() {
    round_trips("fid_rls", &fixture("fidelity/row_security.sql")).await;
}

#[tokio::test]
async fn triggers_come_back_in_the_state_they_were_in() {
    round_trips("fid_triggers", &fixture("fidelity/trigger_states.sql")).await;
}

#[tokio::test]
async fn overloaded_functions_procedures_and_function_only_schemas_come_back() {
    round_trips("fid_functions", &fixture("fidelity/functions.sql")).await;
}

#[tokio::test]
async fn view_options_and_check_options_come_back() {
    round_trips("fid_views", &fixture("fidelity/views.sql")).await;
}

#[tokio::test]
async fn not_valid_constraints_and_partitioned_indexes_come_back() {
    round_trips("fid_constraints", &fixture("fidelity/constraints.sql")).await;
}

/// Backs up a database built by `sql`, accepting `accepted` losses.
async fn backup_of(label: &str, sql: &str, accepted: &str) -> Result<Vec<String>, PostgresError> {
    let source = TestDatabase::create(label).await;
    let mut client = source.client().await;
    client.batch_execute(sql).await.unwrap();
    let filter = TableFilter {
        accepted_loss: accepted.parse::<AcceptedLoss>().unwrap(),
        ..TableFilter::default()
    };
    try_backup_to_memory(&mut client, &filter)
        .await
        .map(|(_, report, _)| {
            report
                .schema
                .accepted_losses
                .iter()
                .map(|loss| format!("{}: {}", loss.kind, loss.object))
                .collect()
        })
}

#[tokio::test]
async fn what_the_capture_cannot_reproduce_refuses_the_backup_by_name_unless_accepted() {
    // Given objects of kinds the capture does not reproduce
    let sql = "CREATE TABLE base (id int PRIMARY KEY, note text); \
               CREATE TABLE derived (extra int) INHERITS (base); \
               COMMENT ON TABLE base IS 'the base of it all'; \
               CREATE TYPE pair AS (a int, b int); \
               CREATE AGGREGATE concat_all(text) (SFUNC = textcat, STYPE = text)";
    // When a backup is taken without accepting them
    let refused = backup_of("fid_refused", sql, "").await.unwrap_err().to_string();
    // Then it is refused, naming each object and the setting that accepts the loss
    for named in [
        "table public.derived inherits from table public.base",
        "comment on table public.base",
        "type public.pair",
        "function public.concat_all(text)",
        "BACKUP_ALLOW_SCHEMA_LOSS=aggregate,comment,composite-type,inheritance",
    ] {
        assert!(refused.contains(named), "{named:?} missing from: {refused}");
    }
    // And when the losses are accepted, the backup goes ahead and records them
    let accepted = backup_of(
        "fid_accepted",
        sql,
        "inheritance,comment,composite-type,aggregate",
    )
    .await
    .unwrap();
    assert_eq!(accepted.len(), 4, "{accepted:?}");
    assert!(
        accepted.contains(&"comment: comment on table public.base".to_owned()),
        "{accepted:?}"
    );
}

fn confirmed(database: &TestDatabase, tables: &[&str]) -> RestoreOptions {
    RestoreOptions {
        tables: tables.iter().map(|t| t.to_string()).collect(),
        confirm_database: Some(database.name.clone()),
    }
}

#[tokio::test]
async fn a_table_whose_policies_hide_rows_from_the_backup_role_fails_the_backup_instead_of_losing_them() {
    // Given a table owned by an ordinary role, under FORCE ROW LEVEL
    // SECURITY with a policy that shows that role none of its 10 rows
    let database = TestDatabase::create_owned_by("fid_rls_owner", "pgbackup_test_owner").await;
    let mut client = database.client().await;
    client
        .batch_execute(
            "CREATE TABLE \"Secret\" (id int PRIMARY KEY, owner text); \
             INSERT INTO \"Secret\" SELECT i, 'someone else' FROM generate_series(1, 10) i; \
             ALTER TABLE \"Secret\" ENABLE ROW LEVEL SECURITY; ALTER TABLE \"Secret\" FORCE ROW LEVEL SECURITY; \
             CREATE POLICY mine ON \"Secret\" USING (owner = current_user)",
        )
        .await
        .unwrap();
    // When that role takes a backup
    let error = try_backup_to_memory(&mut client, &TableFilter::default())
        .await
        .map(|(_, report, _)| report.record_count())
        .unwrap_err();
    // Then it fails, saying row-level security is in the way (before the
    // fix it "succeeded" with 0 rows)
    let message = format!("{error}: {:?}", error.database_error().map(|e| e.message()));
    assert!(message.contains("row-level security"), "{message}");
}

#[tokio::test]
async fn a_partial_restore_of_a_parent_leaves_its_inheritance_children_alone() {
    // Given a parent with an inheritance child (loss accepted: the
    // capture does not recreate INHERITS), backed up
    let database = TestDatabase::create("fid_only").await;
    let mut client = database.client().await;
    client
        .batch_execute(
            "CREATE TABLE base (id int, note text); CREATE TABLE derived (extra int) INHERITS (base); \
             INSERT INTO base VALUES (1, 'parent row'); INSERT INTO derived VALUES (2, 'child row', 20);",
        )
        .await
        .unwrap();
    let filter = TableFilter {
        accepted_loss: "inheritance".parse().unwrap(),
        ..TableFilter::default()
    };
    let (backup, _, _) = try_backup_to_memory(&mut client, &filter).await.unwrap();
    client
        .batch_execute("INSERT INTO base VALUES (3, 'new parent row'); INSERT INTO derived VALUES (4, 'new child row', 40)")
        .await
        .unwrap();
    // When only base is restored in place
    restore_from_memory(&backup, &mut client, &confirmed(&database, &["base"]))
        .await
        .unwrap();
    // Then base holds its backed-up row, and derived keeps both its rows
    let rows = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, i32>(0))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(rows("SELECT id FROM ONLY base ORDER BY id").await, [1]);
    assert_eq!(rows("SELECT id FROM derived ORDER BY id").await, [2, 4]);
}

#[tokio::test]
async fn a_restore_with_live_constraints_leaves_a_disabled_trigger_disabled() {
    // Given a database of an ordinary role (no session_replication_role)
    // whose table has one enabled and one disabled trigger
    let database = TestDatabase::create_owned_by("fid_live_trig", "pgbackup_test_owner").await;
    let mut client = database.client().await;
    client
        .batch_execute(&fixture("fidelity/trigger_states.sql"))
        .await
        .unwrap();
    let before = trigger_states(&client).await;
    let (backup, _, _) = backup_to_memory(&mut client, &TableFilter::default()).await;
    // When it restores the table in place
    restore_from_memory(&backup, &mut client, &confirmed(&database, &["Service"]))
        .await
        .unwrap();
    // Then every trigger is back in its state: "off" stays disabled
    assert_eq!(trigger_states(&client).await, before);
    assert!(before.contains(&("off".to_owned(), "D".to_owned())), "{before:?}");
}

async fn trigger_states(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT tgname::text, tgenabled::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

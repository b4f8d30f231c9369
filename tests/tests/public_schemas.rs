//! The judge on schemas we did not write: public projects' own schemas
//! (tests/src/corpus.rs: fetched from package registries at test time,
//! pinned by version and checksum), loaded with rows from the filler,
//! backed up with the real core, restored into an empty database and
//! compared by `pg_dump --schema-only` and `pg_dump --data-only` on the
//! local server and PostgreSQL 13-18. A schema whose backup is refused
//! must be refused for exactly the objects listed here, so the test fails
//! as soon as a kind is carried (update the expectation) or something new
//! is refused.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Instant;

use backup_core::postgres::{PostgresError, TableFilter};
use integration_tests::corpus::public_schema;
use integration_tests::filler;
use integration_tests::*;

/// Rows the filler puts in each table of a schema that ships none.
const ROWS_PER_TABLE: usize = 200;

/// What the judge must find for a schema.
#[derive(Debug, Clone, Copy)]
enum Expected {
    /// Restored so that pg_dump sees the same schema and data.
    Identical,
    /// Refused at backup, naming exactly these objects (sorted). No corpus
    /// schema needs it since event triggers and default privileges are
    /// carried (#24); kept for the next schema using a kind that is not.
    #[allow(dead_code)]
    Refused(&'static [&'static str]),
}

/// One server's line of the report.
struct Outcome {
    server: String,
    tables: usize,
    /// Tables the filler could put no row in (every row refused).
    empty: usize,
    rows: i64,
    result: String,
    seconds: f64,
}

/// Given the public schema `label` loaded with rows, When it is backed up
/// and restored into an empty database on every server, Then the result is
/// `expected` everywhere.
async fn judge(label: &str, expected: Expected) {
    let schema = public_schema(label);
    let sql = schema.sql();
    let lines = sql.lines().filter(|l| !l.trim().is_empty()).count();
    let mut outcomes = Vec::new();
    for (server, admin) in servers() {
        let started = Instant::now();
        let mut outcome = judge_on(&admin, &format!("pub_{label}_{server}"), &sql, expected).await;
        outcome.server = server;
        outcome.seconds = started.elapsed().as_secs_f64();
        outcomes.push(outcome);
    }
    println!(
        "\n{label}: {} ({}), {lines} lines of schema",
        schema.source(),
        schema.licence
    );
    println!("| server | tables | empty tables | rows | result | seconds |");
    println!("| --- | ---: | ---: | ---: | --- | ---: |");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} |",
            o.server, o.tables, o.empty, o.rows, o.result, o.seconds
        );
    }
}

async fn judge_on(admin: &str, label: &str, sql: &str, expected: Expected) -> Outcome {
    let source = TestDatabase::create_on(admin, label).await;
    let mut source_client = source.client().await;
    source_client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{label}: loading the public schema: {e:?}"));
    filler::fill(&source_client, ROWS_PER_TABLE).await;
    let digests = table_digests(&source_client).await;
    let rows: i64 = digests.values().map(|(count, _)| count).sum();
    assert!(
        digests.is_empty() || rows > 0,
        "{label}: the filler put no row in any table"
    );
    let mut outcome = Outcome {
        server: String::new(),
        tables: digests.len(),
        empty: digests.values().filter(|(count, _)| *count == 0).count(),
        rows,
        result: String::new(),
        seconds: 0.0,
    };

    let helper = source.client().await;
    let backup = try_backup_with_helpers(&mut source_client, vec![helper], &TableFilter::default()).await;
    let backup = match (backup, expected) {
        (Ok((backup, _, _)), Expected::Identical) => backup,
        (Ok(_), Expected::Refused(objects)) => panic!(
            "{label}: the backup was expected to be refused for {objects:?} but succeeded: \
             those kinds are carried now, so judge this schema as Identical"
        ),
        (Err(PostgresError::SchemaLoss { objects, kinds }), Expected::Refused(names)) => {
            let mut refused = objects.clone();
            refused.sort();
            assert_eq!(
                refused, names,
                "{label}: refused for other objects than expected (kinds {kinds})"
            );
            outcome.result = format!("refused as expected: {} object(s) ({kinds})", refused.len());
            return outcome;
        }
        (Err(e), _) => panic!("{label}: backup: {e}"),
    };

    let (restored, _restored_client) =
        restore_into_new_database_over_two_connections(admin, label, &backup).await;
    let (before, after) = (schema_dump(&source.url), schema_dump(&restored.url));
    assert!(
        before == after,
        "{label}: pg_dump --schema-only differs\n{}",
        difference(&before, &after)
    );
    let (before, after) = (data_dump(&source.url), data_dump(&restored.url));
    assert!(
        before == after,
        "{label}: pg_dump --data-only differs\n{}",
        difference(&before, &after)
    );
    outcome.result = "identical".to_owned();
    outcome
}

#[tokio::test]
async fn matrix_synapse_homeserver_schema_comes_back_as_pg_dump_sees_it() {
    judge("synapse", Expected::Identical).await;
}

#[tokio::test]
async fn temboard_monitoring_schema_with_composite_types_and_grants_comes_back() {
    judge("temboard", Expected::Identical).await;
}

#[tokio::test]
async fn procrastinate_task_queue_with_enums_and_trigger_functions_comes_back() {
    judge("procrastinate", Expected::Identical).await;
}

#[tokio::test]
async fn dramatiq_pg_queue_with_an_enum_comes_back() {
    judge("dramatiq_pg", Expected::Identical).await;
}

#[tokio::test]
async fn graphile_worker_migrations_come_back() {
    judge("graphile_worker", Expected::Identical).await;
}

/// Its two event triggers (`ddl_command_end` and `sql_drop`, calling the
/// schema's own functions) come back last, with their owner.
#[tokio::test]
async fn postgraphile_watch_event_triggers_come_back() {
    judge("postgraphile_watch", Expected::Identical).await;
}

#[tokio::test]
async fn pgpm_domains_over_an_extension_type_come_back() {
    judge("pgpm_types", Expected::Identical).await;
}

/// Its `ALTER DEFAULT PRIVILEGES … GRANT EXECUTE ON FUNCTIONS TO
/// administrator` comes back, applied after the functions it would
/// otherwise have granted on.
#[tokio::test]
async fn pgpm_job_queue_with_default_privileges_comes_back() {
    judge("pgpm_database_jobs", Expected::Identical).await;
}

#[tokio::test]
async fn powerdns_backend_schema_comes_back() {
    judge("powerdns", Expected::Identical).await;
}

/// Given tables with a foreign key on the partitioned table, another only
/// on one partition, a CHECK that rejects every other row and a
/// self-reference, When the filler fills two databases built alike, Then
/// every key points at a parent row it filled first, the CHECK's rejects
/// are skipped rather than failing the table, and both get the same rows.
#[tokio::test]
async fn the_filler_fills_parents_first_and_skips_what_constraints_reject() {
    let sql = "CREATE TABLE owner (id serial PRIMARY KEY, name text NOT NULL UNIQUE, \
                                   manager_id int REFERENCES owner); \
               CREATE TABLE tag (code varchar(3) PRIMARY KEY); \
               CREATE TABLE event (id int NOT NULL, at date NOT NULL, owner_id int NOT NULL REFERENCES owner, \
                                   amount int CHECK (amount % 2 = 0), tag_code varchar(3), \
                                   PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
               CREATE TABLE event_early PARTITION OF event FOR VALUES FROM ('2024-01-01') TO ('2024-04-01'); \
               CREATE TABLE event_late PARTITION OF event FOR VALUES FROM ('2024-04-01') TO ('2025-01-01'); \
               ALTER TABLE event_early ADD FOREIGN KEY (tag_code) REFERENCES tag;";
    let mut digests = Vec::new();
    for run in 0..2 {
        let database = TestDatabase::create(&format!("pub_filler_{run}")).await;
        let client = database.client().await;
        client.batch_execute(sql).await.unwrap();

        let filled = filler::fill(&client, ROWS_PER_TABLE).await;

        assert_eq!(filled["public.owner"], 200);
        assert_eq!(filled["public.tag"], 200);
        assert_eq!(filled["public.event"], 100, "the odd amounts are skipped");
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE manager_id IS NULL), \
                        (SELECT count(*) FROM event_early WHERE tag_code IS NULL), \
                        (SELECT count(*) FROM event_early), \
                        (SELECT count(DISTINCT owner_id) FROM event) FROM owner",
                &[],
            )
            .await
            .unwrap();
        let (self_references, untagged, early, owners): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(self_references, 200, "a self-reference has no filled parent yet");
        assert!(early > 0, "rows reach the partition with its own key");
        assert_eq!(untagged, 0, "the partition's own key points at filled tags");
        assert!(owners > 1, "children are spread over the parents");
        digests.push(table_digests(&client).await);
    }
    assert_eq!(digests[0], digests[1], "the filler is deterministic");
}

// --- corpus ---

/// Logto's identity schema, made as `logto db seed` makes it: 79 tables
/// each with row-level security and a restrictive tenant policy beside a
/// permissive one, a `tenants` policy, column grants to the tenants' role,
/// enum types and trigger functions.
#[tokio::test]
async fn logto_multi_tenant_schema_with_row_level_security_comes_back() {
    judge("logto", Expected::Identical).await;
}

/// pg-boss's queue schema: a job table partitioned by list of queue name
/// (a partition per queue that asks for one, the rest in a default
/// partition, indexes on each), and daily range partitions of its
/// statistics under partitioned indexes.
#[tokio::test]
async fn pg_boss_partitioned_job_queue_comes_back() {
    judge("pg_boss", Expected::Identical).await;
}

//! Disaster recovery into a new instance (issue #24 items 3 and 4): the
//! roles a backup's objects name, with their attributes and memberships,
//! come back on a server that lacks them when asked (`--create-roles`),
//! never with a password; and the database's own properties (settings,
//! comment, grants) come back into a database created for the restore
//! (`--create-db`), never onto an existing one.
//!
//! Roles are cluster-wide: each test names its roles with a prefix of its
//! own and drops them on every server it used when it ends. The source is
//! one server of `PGBACKUP_PG_VERSIONS`, "the server that lacks them" is
//! another (PostgreSQL 17), on which the roles are never created by hand.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;

use backup_core::config::Settings;
use backup_core::metadata::Trigger;
use backup_core::metrics::MetricsSink;
use backup_core::operations::{self, Confirmation, CreateRequest, RestoreRequest, Services};
use backup_core::postgres::kinds::cluster::RoleCreation;
use backup_core::postgres::restore::LoadMode;
use backup_core::postgres::{RestoreOptions, TableFilter};
use backup_core::repository::BackupSelector;
use backup_core::storage::LocalStore;
use backup_core::{BackupRequest, ContainerOptions};
use integration_tests::*;
use tokio_postgres::Client;

/// The admin URL of PostgreSQL `major` from `infra/pg-versions.sh`
/// (`local` is the machine's own server).
fn server(major: &str) -> String {
    if major == "local" {
        return admin_url();
    }
    let versions = std::env::var("PGBACKUP_PG_VERSIONS").expect(
        "PGBACKUP_PG_VERSIONS is not set: run the tests through infra/test.sh, which starts PostgreSQL 13-18 (infra/pg-versions.sh)",
    );
    versions
        .split_whitespace()
        .find_map(|entry| {
            let (version, url) = entry.split_once('=')?;
            (version == major).then(|| url.to_owned())
        })
        .unwrap_or_else(|| panic!("PostgreSQL {major} is not in PGBACKUP_PG_VERSIONS: {versions}"))
}

/// Roles whose names start with `prefix`, dropped on every server listed
/// when the value is dropped (declare it before the databases, so they
/// are dropped first).
struct Roles {
    prefix: String,
    servers: Vec<String>,
}

impl Roles {
    fn new(label: &str, servers: &[&str]) -> Self {
        Self {
            prefix: format!("r{}{label}", std::process::id()),
            servers: servers.iter().map(|s| server(s)).collect(),
        }
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let (prefix, servers) = (self.prefix.clone(), self.servers.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                for admin in servers {
                    if let Ok(client) = backup_core::postgres::connect(&admin).await {
                        for role in roles_named(&client, &prefix).await {
                            let _ = client
                                .batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""))
                                .await;
                        }
                    }
                }
            });
        })
        .join();
    }
}

async fn roles_named(client: &Client, prefix: &str) -> Vec<String> {
    client
        .query(
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1",
            &[&prefix],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Roles with attributes and memberships (one of them only a group the
/// others are members of, one named by nothing), owning and granted a
/// schema, a table and its columns, a sequence, a function, a type and a
/// policy. `p` prefixes every role name.
fn roles_fixture(p: &str) -> String {
    format!(
        "CREATE ROLE {p}_owner NOLOGIN CREATEDB CONNECTION LIMIT 3 VALID UNTIL '2031-01-01 00:00:00+00';
         CREATE ROLE {p}_group NOLOGIN NOINHERIT;
         CREATE ROLE {p}_app LOGIN PASSWORD 'never-copied-5ecret' CREATEROLE CONNECTION LIMIT 10;
         ALTER ROLE {p}_app SET work_mem = '64MB';
         ALTER ROLE {p}_app SET search_path = app, public;
         COMMENT ON ROLE {p}_app IS 'the application';
         CREATE ROLE {p}_reader NOLOGIN;
         CREATE ROLE {p}_parent NOLOGIN;
         CREATE ROLE {p}_unrelated NOLOGIN;
         GRANT {p}_parent TO {p}_reader;
         GRANT {p}_group TO {p}_app WITH ADMIN OPTION;
         GRANT pg_read_all_stats TO {p}_reader;

         CREATE SCHEMA app AUTHORIZATION {p}_owner;
         GRANT USAGE ON SCHEMA app TO {p}_reader, {p}_app;
         CREATE TYPE app.mood AS ENUM ('ok', 'sad');
         ALTER TYPE app.mood OWNER TO {p}_owner;
         GRANT USAGE ON TYPE app.mood TO {p}_reader;
         CREATE TABLE app.visit (id int PRIMARY KEY, mood app.mood NOT NULL, note text);
         ALTER TABLE app.visit OWNER TO {p}_owner;
         GRANT SELECT ON app.visit TO {p}_reader;
         GRANT UPDATE (note) ON app.visit TO {p}_app;
         ALTER TABLE app.visit ENABLE ROW LEVEL SECURITY;
         CREATE POLICY visit_read ON app.visit FOR SELECT TO {p}_reader USING (mood = 'ok');
         INSERT INTO app.visit VALUES (1, 'ok', 'first'), (2, 'sad', NULL);
         CREATE SEQUENCE app.counter;
         ALTER SEQUENCE app.counter OWNER TO {p}_app;
         GRANT USAGE ON SEQUENCE app.counter TO {p}_reader;
         CREATE FUNCTION app.greet() RETURNS text LANGUAGE sql AS $$ SELECT 'hi' $$;
         ALTER FUNCTION app.greet() OWNER TO {p}_app;
         REVOKE ALL ON FUNCTION app.greet() FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION app.greet() TO {p}_group;"
    )
}

/// The roles the fixture's objects name, directly or as the groups of
/// those (`_parent`): every role but `_unrelated`.
fn recorded(p: &str) -> Vec<String> {
    let mut names: Vec<String> = ["app", "group", "owner", "parent", "reader"]
        .iter()
        .map(|r| format!("{p}_{r}"))
        .collect();
    names.sort();
    names
}

/// `pg_dumpall --roles-only --no-role-passwords` of the server at `admin`:
/// the lines naming the test's roles.
fn dumped_roles(admin: &str, prefix: &str) -> Vec<String> {
    let pg_dumpall = std::path::Path::new(&pg_dump()).with_file_name("pg_dumpall");
    let output = std::process::Command::new(&pg_dumpall)
        .args([
            "--roles-only",
            "--no-role-passwords",
            "--no-password",
            "--dbname",
            admin,
        ])
        .output()
        .expect("pg_dumpall beside pg_dump (infra/pg-versions.sh)");
    assert!(
        output.status.success(),
        "pg_dumpall failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| line.contains(prefix) && !line.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

async fn attribute(client: &Client, role: &str, column: &str) -> bool {
    client
        .query_one(
            &format!("SELECT {column} FROM pg_roles WHERE rolname = $1"),
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

async fn owner_of_visit(client: &Client) -> String {
    client
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'app.visit'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A backup (in memory) of a database on `source` built by [`roles_fixture`].
async fn backed_up(source: &str, label: &str, prefix: &str) -> (TestDatabase, bytes::Bytes) {
    let database = TestDatabase::create_on(&server(source), label).await;
    let mut client = database.client().await;
    client.batch_execute(&roles_fixture(prefix)).await.unwrap();
    let (backup, _, _) = backup_to_memory(&mut client, &TableFilter::default()).await;
    (database, backup)
}

#[tokio::test]
async fn roles_come_back_as_recorded_on_a_server_that_lacks_them() {
    // Given roles with attributes and memberships on PostgreSQL 16 (where
    // memberships carry INHERIT and SET options), owning and granted objects
    let roles = Roles::new("a", &["16", "17"]);
    let p = roles.prefix.clone();
    let (source, backup) = backed_up("16", "roles_asrec", &p).await;

    // When it is restored on PostgreSQL 17, which has none of them, over
    // two connections, creating the roles as recorded
    let target = TestDatabase::create_on(&server("17"), "roles_asrec_dst").await;
    let mut target_client = target.client().await;
    let options = RestoreOptions {
        create_roles: Some(RoleCreation::AsRecorded),
        ..RestoreOptions::default()
    };
    let report = restore_from_memory_over(&backup, &mut target_client, vec![target.client().await], &options)
        .await
        .unwrap_or_else(|e| panic!("restore: {e}: {:?}", e.database_error()));
    assert_eq!(report.mode, LoadMode::NewTables { connections: 2 });

    // Then the report lists the roles it created: every role the objects
    // name and the groups of those, not the one nothing names
    let mut created = report.roles_created.clone();
    created.sort();
    assert_eq!(created, recorded(&p));
    // and pg_dump sees the same database, owners and grants included
    let (before, after) = (schema_dump(&source.url), schema_dump(&target.url));
    assert!(
        before == after,
        "pg_dump differs\nonly in the source: {:#?}\nonly restored: {:#?}",
        before.iter().filter(|l| !after.contains(l)).collect::<Vec<_>>(),
        after.iter().filter(|l| !before.contains(l)).collect::<Vec<_>>()
    );
    // and pg_dumpall sees the same roles (attributes, settings, comments,
    // memberships with their options) but for the one nothing names, and
    // none has a password
    let source_roles: Vec<String> = dumped_roles(&server("16"), &p)
        .into_iter()
        .filter(|line| !line.contains(&format!("{p}_unrelated")))
        .collect();
    assert!(
        source_roles
            .iter()
            .any(|l| l.starts_with(&format!("GRANT {p}_group TO {p}_app WITH ADMIN OPTION"))),
        "{source_roles:#?}"
    );
    assert_eq!(dumped_roles(&server("17"), &p), source_roles);
    let with_password: i64 = target_client
        .query_one(
            "SELECT count(*) FROM pg_authid WHERE starts_with(rolname, $1) AND rolpassword IS NOT NULL",
            &[&p],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(with_password, 0);
    assert!(
        !report.warnings.iter().any(|w| w.contains("does not exist here")),
        "{:#?}",
        report.warnings
    );
}

#[tokio::test]
async fn created_roles_cannot_log_in_unless_asked_and_existing_roles_are_never_altered() {
    // Given the roles and objects on the machine's PostgreSQL 15
    let roles = Roles::new("b", &["local", "17"]);
    let p = roles.prefix.clone();
    let (source, backup) = backed_up("local", "roles_nologin", &p).await;
    // and a PostgreSQL 17 that has one of the roles already, differently
    let admin = backup_core::postgres::connect(&server("17")).await.unwrap();
    admin
        .batch_execute(&format!("CREATE ROLE {p}_reader LOGIN CONNECTION LIMIT 1"))
        .await
        .unwrap();

    // When it is restored there in one transaction with --create-roles
    let target = TestDatabase::create_on(&server("17"), "roles_nologin_dst").await;
    let mut target_client = target.client().await;
    let options = RestoreOptions {
        create_roles: Some(RoleCreation::Nologin),
        ..RestoreOptions::default()
    };
    let report = restore_from_memory(&backup, &mut target_client, &options)
        .await
        .unwrap_or_else(|e| panic!("restore: {e}: {:?}", e.database_error()));

    // Then the missing roles were created, none of them able to log in,
    // with their other attributes as recorded
    let mut created = report.roles_created.clone();
    created.sort();
    let expected: Vec<String> = recorded(&p)
        .into_iter()
        .filter(|r| *r != format!("{p}_reader"))
        .collect();
    assert_eq!(created, expected);
    for role in &created {
        assert!(
            !attribute(&target_client, role, "rolcanlogin").await,
            "{role} may log in"
        );
    }
    assert!(attribute(&target_client, &format!("{p}_app"), "rolcreaterole").await);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains(&format!("{p}_app")) && w.contains("NOLOGIN")),
        "{:#?}",
        report.warnings
    );
    // and the existing role is as it was: still LOGIN, its limit, no new membership
    let reader = format!("{p}_reader");
    assert!(attribute(&target_client, &reader, "rolcanlogin").await);
    let (limit, groups): (i32, i64) = {
        let row = target_client
            .query_one(
                "SELECT rolconnlimit, (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) \
                 FROM pg_roles r WHERE rolname = $1",
                &[&reader],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((limit, groups), (1, 0));
    // and the objects have their owners and grants: pg_dump sees the source
    let (before, after) = (schema_dump(&source.url), schema_dump(&target.url));
    assert!(
        before == after,
        "pg_dump differs\nonly in the source: {:#?}\nonly restored: {:#?}",
        before.iter().filter(|l| !after.contains(l)).collect::<Vec<_>>(),
        after.iter().filter(|l| !before.contains(l)).collect::<Vec<_>>()
    );
    assert_eq!(owner_of_visit(&target_client).await, format!("{p}_owner"));
}

#[tokio::test]
async fn without_create_roles_a_missing_role_is_a_warning_as_before() {
    // Given the roles and objects on PostgreSQL 16
    let roles = Roles::new("c", &["16", "17"]);
    let p = roles.prefix.clone();
    // (without the policy: a policy naming a missing role fails the
    // restore, today as before)
    let source = TestDatabase::create_on(&server("16"), "roles_none").await;
    let mut client = source.client().await;
    client.batch_execute(&roles_fixture(&p)).await.unwrap();
    client
        .batch_execute("DROP POLICY visit_read ON app.visit")
        .await
        .unwrap();
    let (backup, _, _) = backup_to_memory(&mut client, &TableFilter::default()).await;

    // When it is restored on PostgreSQL 17 without --create-roles
    let target = TestDatabase::create_on(&server("17"), "roles_none_dst").await;
    let mut target_client = target.client().await;
    let report = restore_from_memory_over(
        &backup,
        &mut target_client,
        vec![target.client().await],
        &RestoreOptions::default(),
    )
    .await
    .unwrap();

    // Then no role is created, each missing one is a warning, and the
    // objects belong to the restoring role
    assert!(report.roles_created.is_empty());
    assert!(roles_named(&target_client, &p).await.is_empty());
    for role in ["owner", "app", "reader", "group"] {
        let role = format!("{p}_{role}");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains(&format!("role {role:?} does not exist here"))),
            "{role}: {:#?}",
            report.warnings
        );
    }
    assert_eq!(owner_of_visit(&target_client).await, "postgres");
}

#[tokio::test]
async fn a_failed_restore_drops_the_roles_it_created() {
    // Given the roles and objects on PostgreSQL 16
    let roles = Roles::new("d", &["16", "17"]);
    let p = roles.prefix.clone();
    let (_source, backup) = backed_up("16", "roles_fail", &p).await;
    for connections in [1, 2] {
        // and a target on 17 whose own app.mood lacks the data's 'sad'
        let target = TestDatabase::create_on(&server("17"), "roles_fail_dst").await;
        let mut target_client = target.client().await;
        target_client
            .batch_execute("CREATE SCHEMA app; CREATE TYPE app.mood AS ENUM ('ok')")
            .await
            .unwrap();

        // When a restore creating the roles fails loading the data
        let helpers = if connections == 2 {
            vec![target.client().await]
        } else {
            Vec::new()
        };
        let options = RestoreOptions {
            create_roles: Some(RoleCreation::AsRecorded),
            ..RestoreOptions::default()
        };
        let error = restore_from_memory_over(&backup, &mut target_client, helpers, &options)
            .await
            .unwrap_err();
        assert_eq!(
            error.database_error().map(|e| e.code().clone()),
            Some(backup_core::postgres::SqlState::INVALID_TEXT_REPRESENTATION),
            "{connections} connections: {error}"
        );

        // Then none of the roles it created is left on the server
        assert_eq!(
            roles_named(&target_client, &p).await,
            Vec::<String>::new(),
            "{connections} connections"
        );
    }
}

/// Services over a local store in `dir`, as `backupctl` builds them.
fn services(dir: &std::path::Path) -> Services {
    let mut settings = Settings::from_lookup(|_| None).unwrap();
    settings.keyring = Some(test_keyring());
    Services::new(
        Arc::new(LocalStore::new(dir)),
        &settings,
        "test",
        MetricsSink::Disabled,
    )
}

async fn database_properties(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT 'setting ' || COALESCE(pg_get_userbyid(s.setrole), '-') || ' ' || array_to_string(s.setconfig, ',') \
               FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database() \
             UNION ALL SELECT 'comment ' || COALESCE(shobj_description(d.oid, 'pg_database'), '-') \
               FROM pg_database d WHERE d.datname = current_database() \
             UNION ALL SELECT 'owner ' || pg_get_userbyid(d.datdba) FROM pg_database d WHERE d.datname = current_database() \
             UNION ALL SELECT 'encoding ' || pg_encoding_to_char(d.encoding) || ' ' || d.datcollate || ' ' || d.datctype \
               FROM pg_database d WHERE d.datname = current_database() \
             UNION ALL SELECT 'grant ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END \
                              || ' ' || a.privilege_type || ' ' || a.is_grantable \
               FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database() \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn create_db_gives_a_new_database_the_sources_settings_comment_and_grants() {
    // Given a database with settings (its own and a role's in it), a
    // comment and grants (CONNECT taken from PUBLIC), in SQL_ASCII/C
    let roles = Roles::new("e", &["local"]);
    let p = roles.prefix.clone();
    let admin = backup_core::postgres::connect(&admin_url()).await.unwrap();
    let source = TestDatabase::create("roles_db_src").await;
    admin
        .batch_execute(&format!("DROP DATABASE \"{}\"", source.name))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE DATABASE \"{db}\" TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'",
            db = source.name
        ))
        .await
        .unwrap();
    let client = source.client().await;
    client.batch_execute(&roles_fixture(&p)).await.unwrap();
    client
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" SET work_mem = '12MB'; \
             ALTER DATABASE \"{db}\" SET search_path = app, public; \
             ALTER ROLE {p}_app IN DATABASE \"{db}\" SET statement_timeout = '5s'; \
             COMMENT ON DATABASE \"{db}\" IS 'bookings'; \
             ALTER DATABASE \"{db}\" OWNER TO {p}_owner; \
             REVOKE ALL ON DATABASE \"{db}\" FROM PUBLIC; \
             GRANT CONNECT ON DATABASE \"{db}\" TO {p}_app; \
             GRANT CONNECT, TEMPORARY ON DATABASE \"{db}\" TO {p}_reader WITH GRANT OPTION",
            db = source.name
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let services = services(dir.path());
    let metadata = operations::create_backup(
        &services,
        &CreateRequest {
            database_url: source.url.clone(),
            tables: backup_core::request::TableList::all(),
            request: BackupRequest {
                trigger: Trigger::Manual,
                reason: None,
                requested_by: None,
            },
            accepted_loss: Default::default(),
            container: ContainerOptions::default(),
        },
    )
    .await
    .unwrap();
    let restore = |target: &TestDatabase, create_database: bool| RestoreRequest {
        selector: BackupSelector::Id(metadata.id.clone()),
        tables: Default::default(),
        database_url: Some(source.url.clone()),
        target_url: Some(target.url.clone()),
        safety_backup: false,
        confirmation: Confirmation::Operator,
        replace_existing: false,
        reason: None,
        requested_by: None,
        container: ContainerOptions::default(),
        create_roles: None,
        create_database,
        no_tablespaces: false,
        no_security_labels: false,
        large_objects: false,
        at: None,
    };

    // When it is restored with --create-db into a database the server lacks
    let target = TestDatabase::create("roles_db_new").await;
    admin
        .batch_execute(&format!("DROP DATABASE \"{}\"", target.name))
        .await
        .unwrap();
    let outcome = operations::restore_backup(&services, &restore(&target, true))
        .await
        .unwrap();

    // Then it was created with the source's encoding and locale and holds
    // its settings, comment, grants and owner
    assert!(outcome.database_created, "{outcome:?}");
    let expected = database_properties(&client).await;
    assert!(expected.iter().any(|l| l == "comment bookings"), "{expected:#?}");
    assert!(
        expected.iter().any(|l| l.starts_with("encoding SQL_ASCII")),
        "{expected:#?}"
    );
    assert_eq!(database_properties(&target.client().await).await, expected);

    // When it is restored with --create-db into a database that exists
    let existing = TestDatabase::create("roles_db_old").await;
    let untouched = database_properties(&existing.client().await).await;
    let outcome = operations::restore_backup(&services, &restore(&existing, true))
        .await
        .unwrap();

    // Then the database keeps its own properties, and the report says so
    assert!(!outcome.database_created);
    assert_eq!(database_properties(&existing.client().await).await, untouched);
    assert!(
        outcome.warnings.iter().any(|w| w.contains("exists already")),
        "{:#?}",
        outcome.warnings
    );
}

//! Transactional restore: all chosen tables or none.
//!
//! Order of work (one transaction; see `docs/POSTGRES.md`):
//! 1. checks that change nothing: table names, schema version, server
//!    version, confirmation for replacing existing data, and that existing
//!    chosen tables are defined as in the backup (`proof`; or, with
//!    `replace_existing`, they are dropped here and created in 3);
//! 2. `session_replication_role = replica` when the role may set it, so
//!    foreign-key and user triggers do not fire during the load (otherwise
//!    user triggers are disabled per table and foreign keys stay live);
//! 3. creates what the target lacks: extensions, schemas, types, functions,
//!    sequences, tables (without constraints or indexes);
//! 4. empties the existing chosen tables (TRUNCATE, or DELETE when other
//!    tables reference them);
//! 5. loads every chosen table with COPY, parents before children;
//! 6. adds constraints, indexes, foreign keys and triggers to the tables it
//!    created, sets sequences, creates views, refreshes materialized views;
//! 7. checks every foreign key touching the restored tables (except those
//!    it added in 6, which PostgreSQL validated as they were added),
//!    compares the restored tables with the backup's schema section
//!    (`proof`), then commits. Until the commit, an interruption
//!    ([`RestoreOptions::interrupt`]) rolls it all back.

mod cancel;
mod created_roles;
mod named;
mod new_tables;
mod proof;
mod reparse;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, GenericClient, Transaction};

use super::kinds::cluster::{self, RoleCreation};
use super::kinds::{CatalogObject, Stage};
use super::plan::{Creation, TableSelection, creation_order, select_tables};
use super::schema::{
    DatabaseSchema, NamedDdl, QualifiedName, RoleStatement, SCHEMA_FORMAT_VERSION, Table, TableKind, View,
    quote_column_list, quote_ident, quote_literal,
};
use super::{PostgresError, major_version, security_labels};
use crate::container::{BackupReader, CopyFormat, ObjectSource, SectionKind};
use crate::erasure::Erasure;
use crate::progress::Progress;

/// The schema section is small; anything larger is not one we wrote.
const MAX_SCHEMA_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Only these tables (`Booking`, `public.Booking`); every table when empty.
    pub tables: Vec<String>,
    /// The target database's name, given to confirm that existing data in
    /// the chosen tables may be replaced. Not needed when none exists yet.
    pub confirm_database: Option<String>,
    /// The erasure ledger, applied after the load and before the commit.
    pub erasures: Vec<Erasure>,
    /// Chosen tables that exist in the target with another definition than
    /// the backup's are dropped and created again from the backup, inside
    /// the restore's one transaction; without it such a restore is refused.
    pub replace_existing: bool,
    /// Stops the restore from outside (a signal, a deadline): it is undone
    /// as after a failure and ends with [`PostgresError::Interrupted`].
    pub interrupt: crate::interrupt::Interrupt,
    /// Create the recorded roles the target lacks (`--create-roles`), in
    /// the transaction that creates the tables; without it a missing role
    /// is a warning and its objects belong to the restoring role.
    pub create_roles: Option<RoleCreation>,
    /// The target database was created for this restore (`--create-db`):
    /// give it the source database's settings, comment, grants and owner.
    /// Never set for an existing database.
    pub database_properties: bool,
    /// Create everything in the target database's default tablespace,
    /// whatever tablespaces the backup names (`--no-tablespaces`, as
    /// pg_restore's option); each one named is reported as a warning.
    pub no_tablespaces: bool,
    /// Leave every security label out (`--no-security-labels`, as
    /// pg_restore's option), with one warning naming them; without it a
    /// label whose provider the target does not load refuses the restore.
    pub no_security_labels: bool,
    /// Bring the backup's large objects back in a restore of chosen tables
    /// too (`--large-objects`, as pg_dump's option of that name): they
    /// belong to no table, so without it only a full restore has them.
    pub large_objects: bool,
    /// The target was made for this restore and is dropped after it (deep
    /// verification's scratch database): a parent the backup left out,
    /// which a restore into a real database requires the target to have,
    /// is created as an empty stand-in with the recorded columns
    /// ([`super::plan::stand_in_parents`]), so its children are restored
    /// and compared rather than refused. Never for a real database.
    pub stand_in_parents: bool,
}

/// What one ledger erasure did in a restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedErasure {
    pub id: String,
    pub table: String,
    /// Rows deleted in the table itself (cascades come on top).
    pub rows: u64,
    /// Why it did not apply here (no such table or column in this database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredTable {
    pub name: QualifiedName,
    pub rows: u64,
    /// Whether the table did not exist and was created from the backup.
    pub created: bool,
}

/// How triggers and foreign keys were kept from interfering with the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// `session_replication_role = replica`; every foreign key touching the
    /// restored tables was checked before commit.
    ReplicationRole,
    /// The role may not set `session_replication_role`: user triggers were
    /// disabled per table, foreign keys stayed enforced during the load.
    LiveConstraints,
    /// None of the chosen tables existed: they were loaded before they had
    /// constraints, indexes or triggers, over this many connections at once,
    /// committing as the restore went (a failure removed what it created).
    NewTables { connections: usize },
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub database: String,
    pub tables: Vec<RestoredTable>,
    pub mode: LoadMode,
    /// Things restored only partly, e.g. a view whose tables were not restored.
    pub warnings: Vec<String>,
    pub duration_ms: u64,
    /// The erasure ledger as applied before the commit.
    pub erased: Vec<AppliedErasure>,
    /// Roles this restore created (`--create-roles`).
    pub roles_created: Vec<String>,
}

impl RestoreReport {
    pub fn record_count(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Reads and checks the schema section of a backup.
pub async fn read_schema<S: ObjectSource>(
    backup: &BackupReader<'_, S>,
) -> Result<DatabaseSchema, PostgresError> {
    let entry = backup
        .sections()
        .iter()
        .find(|s| s.kind == SectionKind::Schema)
        .ok_or(PostgresError::MissingSchemaSection)?
        .clone();
    let mut reader = backup.open_section(&entry).await?;
    let mut text = Vec::new();
    while let Some(block) = reader.next_block().await? {
        if text.len() + block.len() > MAX_SCHEMA_BYTES {
            return Err(PostgresError::MissingSchemaSection);
        }
        text.extend_from_slice(&block);
    }
    let schema: DatabaseSchema =
        serde_json::from_slice(&text).map_err(PostgresError::MalformedSchemaSection)?;
    if schema.format_version > SCHEMA_FORMAT_VERSION {
        return Err(PostgresError::UnsupportedSchemaVersion {
            found: schema.format_version,
            supported: SCHEMA_FORMAT_VERSION,
        });
    }
    Ok(schema)
}

/// `ONLY` each leaf partition of partitioned `root` that is not a foreign
/// table, when some are; `None` when none is (the root can be emptied
/// whole).
async fn local_partitions<C: GenericClient>(
    client: &C,
    root: &QualifiedName,
) -> Result<Option<Vec<String>>, PostgresError> {
    let leaves = super::leaf_partitions(client, root).await?;
    if !leaves.iter().any(|leaf| leaf.foreign) {
        return Ok(None);
    }
    Ok(Some(
        leaves
            .into_iter()
            .filter(|leaf| !leaf.foreign)
            .map(|leaf| format!("ONLY {}", leaf.name))
            .collect(),
    ))
}

async fn exec<C: GenericClient>(client: &C, what: &'static str, sql: &str) -> Result<(), PostgresError> {
    client
        .batch_execute(sql)
        .await
        .map_err(|source| PostgresError::Query { what, source })
}

async fn exists<C: GenericClient>(
    client: &C,
    what: &'static str,
    sql: &str,
    arg: &str,
) -> Result<bool, PostgresError> {
    let row = client
        .query_one(sql, &[&arg])
        .await
        .map_err(|source| PostgresError::Query { what, source })?;
    Ok(row.get(0))
}

async fn relation_exists<C: GenericClient>(client: &C, name: &QualifiedName) -> Result<bool, PostgresError> {
    exists(
        client,
        "looking up a table",
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &name.quoted(),
    )
    .await
}

/// Restores the chosen tables from `backup` into the database `client` is
/// connected to, in one transaction: on any error, or if the future is
/// dropped, the transaction rolls back and nothing changes.
pub async fn restore_backup<S: ObjectSource>(
    backup: &BackupReader<'_, S>,
    client: &mut Client,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport, PostgresError> {
    restore_backup_over(backup, client, Vec::new(), options, progress).await
}

/// Like [`restore_backup`], with `helpers` (more connections to the same
/// database) for a restore into new tables: when none of the chosen tables
/// exists in the target and no erasure of the ledger applies, tables load
/// and get their indexes over all the connections at once, committing as
/// they go; a failure then removes what the restore created (see
/// `docs/POSTGRES.md`). Otherwise the helpers are not used and the restore
/// is the one transaction of [`restore_backup`].
pub async fn restore_backup_over<S: ObjectSource>(
    backup: &BackupReader<'_, S>,
    client: &mut Client,
    helpers: Vec<Client>,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport, PostgresError> {
    restore_backup_then(backup, client, helpers, options, progress, None).await
}

/// Work done inside a restore's one transaction after the tables are
/// loaded and before the erasure ledger is applied (point-in-time replay).
pub trait AfterLoad: Send + Sync {
    fn run<'a>(
        &'a self,
        transaction: &'a Transaction<'_>,
        tables: &'a [RestoredTable],
    ) -> futures_util::future::BoxFuture<'a, Result<(), PostgresError>>;

    /// Runs after the restore compared its tables with the backup's schema
    /// section, just before the commit (what the comparison would count as
    /// a difference from the backup, such as sequence values).
    fn before_commit<'a>(
        &'a self,
        transaction: &'a Transaction<'_>,
        tables: &'a [RestoredTable],
    ) -> futures_util::future::BoxFuture<'a, Result<(), PostgresError>>;
}

/// Like [`restore_backup_over`], running `after_load` in the restore's
/// transaction once the tables are loaded, before the erasures and the
/// proof. With `after_load`, the restore is always the one transaction
/// (the helpers are not used), so what it does commits with the load or
/// not at all.
pub async fn restore_backup_then<S: ObjectSource>(
    backup: &BackupReader<'_, S>,
    client: &mut Client,
    helpers: Vec<Client>,
    options: &RestoreOptions,
    progress: &dyn Progress,
    after_load: Option<&dyn AfterLoad>,
) -> Result<RestoreReport, PostgresError> {
    let started = Instant::now();
    let mut schema = read_schema(backup).await?;
    if options.stand_in_parents {
        let members = select_tables(&schema, &options.tables, |name| {
            backup.table(&name.schema, &name.name).is_some()
        })?
        .members;
        super::plan::stand_in_parents(&mut schema, &members);
    }
    // Before any change: what goes to the default tablespace instead.
    let placement_warnings =
        super::tablespaces::place_in_target(&*client, &mut schema, options.no_tablespaces).await?;
    let token = client.cancel_token();
    let mut transaction = client
        .transaction()
        .await
        .map_err(|source| PostgresError::Query {
            what: "starting the restore transaction",
            source,
        })?;
    let plan = RestorePlan::new(&schema, backup, &transaction, options).await?;
    if !helpers.is_empty()
        && after_load.is_none()
        && plan.existing.is_empty()
        && plan.replaced.is_empty()
        && !erasures_apply(&plan, options)
    {
        // The checks changed nothing; the new-tables restore runs its own transactions.
        drop(transaction);
        return new_tables::restore_new_tables(&plan, &schema, backup, client, helpers, options, progress)
            .await
            .map(|mut report| {
                report.warnings.splice(0..0, placement_warnings);
                report
            });
    }
    // Everything up to the commit can be interrupted: the transaction is
    // then dropped (rolled back) and its running statement cancelled. The
    // commit itself is not, so an interrupted restore never half-reports.
    let work = async {
        let (tables, mode, mut warnings, roles_created) =
            plan.run(&schema, backup, &mut transaction, progress).await?;
        warnings.splice(0..0, placement_warnings);
        if let Some(after_load) = after_load {
            after_load.run(&transaction, &tables).await?;
        }
        if !options.erasures.is_empty() {
            progress.phase("applying the erasure ledger");
            if mode == LoadMode::ReplicationRole {
                // Cascading foreign keys must fire for the erasures.
                exec(
                    &transaction,
                    "restoring the session's replication role",
                    "SET LOCAL session_replication_role = origin",
                )
                .await?;
            }
        }
        let erased = apply_erasures(&mut transaction, &options.erasures, Some(&plan.members)).await?;
        progress.phase("comparing the restored tables with the backup");
        // Owners and grants are applied when the restore created tables.
        let created_tables = tables.iter().any(|t| t.created);
        proof::prove_restored(
            &transaction,
            &schema,
            &plan,
            &warnings,
            created_tables,
            &roles_created,
        )
        .await?;
        if let Some(after_load) = after_load {
            after_load.before_commit(&transaction, &tables).await?;
        }
        Ok::<_, PostgresError>((tables, mode, warnings, erased, roles_created))
    };
    let (tables, mode, warnings, erased, roles_created) = match options.interrupt.guard(work).await {
        Ok(done) => done?,
        Err(reason) => {
            drop(transaction);
            cancel::settle(client, &token).await;
            return Err(PostgresError::Interrupted {
                reason,
                database: plan.database,
            });
        }
    };
    progress.phase("committing");
    commit(transaction, "committing the restore").await?;
    Ok(RestoreReport {
        database: plan.database,
        tables,
        mode,
        warnings,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        erased,
        roles_created,
    })
}

/// Refuses, before any change, a restore that would create a child (a table
/// or a foreign table) under a parent it does not create and the target
/// lacks, or has with other columns than the backup recorded
/// ([`super::plan::parents_to_check`]).
async fn check_parents(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
    members: &BTreeSet<QualifiedName>,
    existing: &BTreeSet<QualifiedName>,
    database: &str,
) -> Result<(), PostgresError> {
    let edges = super::plan::parents_to_check(schema, members, existing);
    if edges.is_empty() {
        return Ok(());
    }
    let query_error = |source: tokio_postgres::Error| PostgresError::Query {
        what: "checking the parents of the tables to restore",
        source,
    };
    // Types print schema-qualified, as the backup recorded them.
    let search_path: String = client
        .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .await
        .map_err(query_error)?
        .get(0);
    client
        .execute("SELECT pg_catalog.set_config('search_path', '', true)", &[])
        .await
        .map_err(query_error)?;
    let mut problems = Vec::new();
    for edge in edges {
        if edge.child_foreign && relation_exists(client, &edge.child).await? {
            continue;
        }
        let child = if edge.child_foreign {
            format!("foreign table {}", edge.child)
        } else {
            format!("table {}", edge.child)
        };
        let relation = if edge.partition {
            "is a partition of"
        } else {
            "inherits from"
        };
        let leave_out = if edge.child_foreign {
            "create it first (foreign tables come back with every restore)".to_owned()
        } else {
            format!(
                "create it first, or leave {} out of the restore (--tables naming the others)",
                edge.child
            )
        };
        let recorded: Vec<String> = edge.columns.iter().map(ToString::to_string).collect();
        if !relation_exists(client, &edge.parent).await? {
            problems.push(format!(
                "{child} {relation} {}, which database {database:?} lacks (with columns {}): {leave_out}",
                edge.parent,
                recorded.join(", ")
            ));
            continue;
        }
        let here: Vec<String> = client
            .query(
                "SELECT a.attname::text || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod) \
                   FROM pg_catalog.pg_attribute a \
                  WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                  ORDER BY a.attnum",
                &[&edge.parent.quoted()],
            )
            .await
            .map_err(query_error)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if here != recorded {
            let missing: Vec<&str> = recorded
                .iter()
                .filter(|c| !here.contains(c))
                .map(String::as_str)
                .collect();
            let extra: Vec<&str> = here
                .iter()
                .filter(|c| !recorded.contains(c))
                .map(String::as_str)
                .collect();
            let mut what = Vec::new();
            if !missing.is_empty() {
                what.push(format!("it lacks {}", missing.join(", ")));
            }
            if !extra.is_empty() {
                what.push(format!("it has {} the backup's does not", extra.join(", ")));
            }
            if what.is_empty() {
                what.push("its columns are in another order".to_owned());
            }
            problems.push(format!(
                "{child} {relation} {}, whose columns in database {database:?} are not those the backup recorded \
                 ({}): {}; {leave_out}",
                edge.parent,
                recorded.join(", "),
                what.join("; ")
            ));
        }
    }
    client
        .execute(
            "SELECT pg_catalog.set_config('search_path', $1, true)",
            &[&search_path],
        )
        .await
        .map_err(query_error)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PostgresError::ParentMissing {
            database: database.to_owned(),
            problems: problems.join("; "),
        })
    }
}

/// Whether an erasure of the ledger would delete rows in this restore: its
/// table is restored (an erasure acts only on restored tables and what
/// cascades from them, never on rows of the target the restore does not
/// bring back). Such a restore stays one transaction, so erased rows are
/// never visible in the target, not even while it runs.
fn erasures_apply(plan: &RestorePlan, options: &RestoreOptions) -> bool {
    options
        .erasures
        .iter()
        .any(|erasure| plan.members.contains(&erasure.table))
}

/// Refuses a partial restore that would bring back erased rows: a restored
/// table whose rows go with an erased table's rows (its foreign key
/// cascades or sets NULL on delete, maybe through other tables), when that
/// table is not restored with it — the erasure reaches such rows only
/// through the parent's, and deleting them by the parent's key is all the
/// ledger knows how to do.
fn refuse_erasures_out_of_reach(
    schema: &DatabaseSchema,
    members: &BTreeSet<QualifiedName>,
    erasures: &[Erasure],
) -> Result<(), PostgresError> {
    if erasures.is_empty() {
        return Ok(());
    }
    // child -> parents its rows follow on delete
    let mut follows: BTreeMap<&QualifiedName, Vec<&QualifiedName>> = BTreeMap::new();
    for table in &schema.tables {
        for key in &table.foreign_keys {
            if follows_parent_on_delete(&key.ddl) {
                follows.entry(&table.name).or_default().push(&key.references);
            }
        }
    }
    for start in schema
        .tables
        .iter()
        .map(|t| &t.name)
        .filter(|n| members.contains(*n))
    {
        // Breadth-first up the cascading keys, remembering the way.
        let mut way: BTreeMap<&QualifiedName, &QualifiedName> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(table) = queue.pop_front() {
            for parent in follows.get(table).into_iter().flatten() {
                if *parent == start || way.contains_key(parent) {
                    continue;
                }
                way.insert(parent, table);
                if !members.contains(*parent)
                    && let Some(erasure) = erasures.iter().find(|e| &e.table == *parent)
                {
                    let mut path = vec![(*parent).clone()];
                    let mut at = *parent;
                    while let Some(child) = way.get(at) {
                        path.push((*child).clone());
                        at = child;
                    }
                    path.reverse();
                    let mut needed: Vec<String> = members.iter().map(QualifiedName::display).collect();
                    needed.extend(
                        path.iter()
                            .filter(|t| !members.contains(*t))
                            .map(QualifiedName::display),
                    );
                    needed.sort();
                    needed.dedup();
                    return Err(PostgresError::ErasureOutOfReach {
                        id: erasure.id.clone(),
                        table: start.display(),
                        erased_table: parent.display(),
                        reach: Box::new(super::ErasureReach {
                            path: path
                                .iter()
                                .map(QualifiedName::display)
                                .collect::<Vec<_>>()
                                .join(" -> "),
                            needed: needed.join(","),
                        }),
                    });
                }
                queue.push_back(parent);
            }
        }
    }
    Ok(())
}

/// Whether a foreign key's rows change when their parent row is deleted
/// (`pg_get_constraintdef` writes the action only when it is not NO ACTION).
fn follows_parent_on_delete(ddl: &str) -> bool {
    ["ON DELETE CASCADE", "ON DELETE SET NULL", "ON DELETE SET DEFAULT"]
        .iter()
        .any(|action| ddl.contains(action))
}

struct RestorePlan {
    database: String,
    full_restore: bool,
    /// Chosen data tables (roots), parents before children by foreign keys.
    roots: Vec<QualifiedName>,
    /// Every table of the chosen families (roots and partitions).
    members: BTreeSet<QualifiedName>,
    /// Members that exist in the target before the restore (and stay).
    existing: BTreeSet<QualifiedName>,
    /// Chosen tables (roots) whose definition in the target differs from
    /// the backup's, dropped and created again (`replace_existing`).
    replaced: Vec<QualifiedName>,
    /// [`RestoreOptions::create_roles`].
    create_roles: Option<RoleCreation>,
    /// [`RestoreOptions::database_properties`].
    database_properties: bool,
    /// The backup's large objects are restored: always in a full restore,
    /// in a partial one when asked ([`RestoreOptions::large_objects`]).
    large_objects: bool,
    /// `(kind, object)` of what held an owner or grants in the target
    /// before the restore (`proof::privileged_objects`).
    privileged_before: BTreeSet<(String, String)>,
    /// The named objects (functions, views, types, casts, …) the target
    /// holds before the restore, left as they are, so not proved, and its
    /// comments (`named::named_before`).
    named_before: named::NamedBefore,
    /// [`RestoreOptions::no_security_labels`].
    no_security_labels: bool,
}

impl RestorePlan {
    /// Everything that can be refused is refused here, before any change.
    async fn new<S: ObjectSource>(
        schema: &DatabaseSchema,
        backup: &BackupReader<'_, S>,
        client: &Transaction<'_>,
        options: &RestoreOptions,
    ) -> Result<Self, PostgresError> {
        let TableSelection {
            full: full_restore,
            roots,
            members,
        } = select_tables(schema, &options.tables, |name| {
            backup.table(&name.schema, &name.name).is_some()
        })?;

        let row = client
            .query_one(
                "SELECT current_database()::text, current_setting('server_version_num')::int",
                &[],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "inspecting the target database",
                source,
            })?;
        let database: String = row.get(0);
        let target_major = major_version(row.get(1));
        let backup_major = major_version(schema.server_version_num);
        if target_major < backup_major {
            return Err(PostgresError::IncompatibleServer {
                backup_major,
                target_major,
            });
        }

        let mut existing = BTreeSet::new();
        for member in &members {
            if relation_exists(client, member).await? {
                existing.insert(member.clone());
            }
        }
        let replaced: Vec<String> = roots
            .iter()
            .filter(|r| existing.contains(*r))
            .map(|r| r.display())
            .collect();
        if !replaced.is_empty() && options.confirm_database.as_deref() != Some(database.as_str()) {
            return Err(PostgresError::ConfirmationRequired {
                database,
                tables: replaced.join(", "),
            });
        }
        // Tables that exist must be the backup's tables, or the restore
        // would load rows into something else (e.g. the half-made tables
        // of an interrupted restore) and call it restored.
        let mut to_replace = Vec::new();
        if !existing.is_empty() {
            let kept: BTreeSet<QualifiedName> = members
                .iter()
                .filter(|member| {
                    schema
                        .table(member)
                        .is_some_and(|table| existing.contains(&schema.data_root(table).name))
                })
                .cloned()
                .collect();
            let differences = proof::differences(client, schema, &kept).await?;
            if !differences.is_empty() {
                if !options.replace_existing {
                    return Err(PostgresError::DefinitionMismatch {
                        database,
                        differences: proof::describe(&differences),
                    });
                }
                for (name, _) in &differences {
                    let root = schema
                        .table(name)
                        .map_or_else(|| name.clone(), |table| schema.data_root(table).name.clone());
                    if existing.contains(&root) && !to_replace.contains(&root) {
                        to_replace.push(root);
                    }
                }
                for root in &to_replace {
                    for member in schema.family_of(root) {
                        existing.remove(&member.name);
                    }
                }
            }
        }
        // A child this restore creates under a parent it does not create
        // (the backup or the restore left it out): refused now, naming the
        // parent and what it lacks, rather than failing on the CREATE.
        check_parents(client, schema, &members, &existing, &database).await?;
        if !full_restore {
            refuse_erasures_out_of_reach(schema, &members, &options.erasures)?;
        }
        let large_objects = full_restore || options.large_objects;
        if large_objects {
            // As pg_restore, which fails on `lo_create` of an OID in use:
            // refused here, before any change, naming every such OID.
            let taken = super::large_objects::existing(client, schema).await?;
            if !taken.is_empty() {
                let oids: Vec<String> = taken.iter().map(u32::to_string).collect();
                return Err(PostgresError::LargeObjectsExist {
                    database,
                    oids: oids.join(", "),
                });
            }
        }
        // A label goes back only through its provider: refused now, before
        // any change, rather than failing once the tables are loaded.
        let labels =
            security_labels::to_apply(&schema.security_labels, full_restore, large_objects, |table| {
                members.contains(table) && !existing.contains(table)
            });
        if !options.no_security_labels {
            let missing = security_labels::missing_providers(client, &labels).await?;
            if !missing.is_empty() {
                let objects: Vec<String> = labels
                    .iter()
                    .filter(|label| missing.contains(&label.provider))
                    .map(|label| label.describe())
                    .collect();
                return Err(PostgresError::SecurityLabelProviderMissing {
                    database,
                    providers: missing.join(", "),
                    objects: objects.join(", "),
                });
            }
        }
        let privileged_before = proof::privileged_objects(client, &members).await?;
        let named_before = named::named_before(client, schema).await?;
        Ok(Self {
            database,
            full_restore,
            roots,
            members,
            existing,
            replaced: to_replace,
            create_roles: options.create_roles,
            database_properties: options.database_properties,
            large_objects,
            privileged_before,
            named_before,
            no_security_labels: options.no_security_labels,
        })
    }

    /// The security labels this restore puts back (none with
    /// `--no-security-labels`).
    fn security_labels<'a>(&self, schema: &'a DatabaseSchema) -> Vec<&'a security_labels::SecurityLabel> {
        if self.no_security_labels {
            return Vec::new();
        }
        security_labels::to_apply(
            &schema.security_labels,
            self.full_restore,
            self.large_objects,
            |table| self.members.contains(table) && !self.existing.contains(table),
        )
    }

    async fn run<S: ObjectSource>(
        &self,
        schema: &DatabaseSchema,
        backup: &BackupReader<'_, S>,
        client: &mut Transaction<'_>,
        progress: &dyn Progress,
    ) -> Result<(Vec<RestoredTable>, LoadMode, Vec<String>, Vec<String>), PostgresError> {
        let mut warnings = Vec::new();
        exec(client, "preparing the restore session", &session_settings()).await?;
        let mode = choose_load_mode(client).await?;
        if !self.replaced.is_empty() {
            progress.phase("dropping the tables to replace");
            proof::drop_replaced(client, &self.replaced).await?;
        }
        progress.phase("creating tables");

        let created: Vec<&Table> = schema
            .tables
            .iter()
            .filter(|t| self.members.contains(&t.name) && !self.existing.contains(&t.name))
            .collect();
        let mut roles_created = Vec::new();
        if !created.is_empty() {
            roles_created = self.create_roles(schema, client, &mut warnings).await?;
            create_missing_objects(schema, client, &created, self.full_restore).await?;
        }

        let existing_roots: Vec<&QualifiedName> =
            self.roots.iter().filter(|r| self.existing.contains(*r)).collect();
        let mut paused_triggers = Vec::new();
        if !existing_roots.is_empty() {
            progress.phase("emptying the tables to replace");
            paused_triggers = self
                .empty_existing_tables(schema, client, &existing_roots, mode)
                .await?;
        }

        let mut restored = Vec::new();
        for root in &self.roots {
            let table = schema
                .table(root)
                .ok_or_else(|| PostgresError::MissingTableSection {
                    table: root.display(),
                })?;
            let created = !self.existing.contains(root);
            let rows = load_table(backup, client, table, created, progress).await?;
            restored.push(RestoredTable {
                name: root.clone(),
                rows,
                created,
            });
        }

        if !created.is_empty() {
            progress.phase("adding constraints and indexes");
        }
        // Partitions' own indexes before their parents' (deepest first:
        // tables are listed parents first), which take them over.
        for table in created.iter().rev() {
            for index in &table.partition_indexes {
                exec(
                    client,
                    "creating an index of a partition",
                    &reparse::as_printed(index),
                )
                .await?;
            }
        }
        for table in &created {
            for constraint in &table.constraints {
                exec(
                    client,
                    "adding a constraint",
                    &reparse::as_printed(&constraint.ddl),
                )
                .await?;
            }
            for index in &table.indexes {
                exec(client, "creating an index", &reparse::as_printed(index)).await?;
            }
        }
        // Foreign keys added here are validated by PostgreSQL as they are
        // added (all rows are loaded by then); the check after the load
        // need not scan them a second time.
        let mut validated_here: BTreeSet<(QualifiedName, String)> = BTreeSet::new();
        for table in &created {
            for foreign_key in &table.foreign_keys {
                if relation_exists(client, &foreign_key.references).await? {
                    exec(client, "adding a foreign key", &foreign_key.ddl).await?;
                    validated_here.insert((table.name.clone(), foreign_key.name.clone()));
                } else {
                    warnings.push(format!(
                        "foreign key {} on {} not created: {} is not in the target",
                        foreign_key.name,
                        table.name.display(),
                        foreign_key.references.display()
                    ));
                }
            }
            add_table_triggers_and_settings(client, table).await?;
        }
        self.finish_objects(
            schema,
            backup,
            client,
            !created.is_empty(),
            &mut warnings,
            progress,
        )
        .await?;
        if mode == LoadMode::ReplicationRole {
            progress.phase("checking foreign keys");
            check_foreign_keys(client, &self.members, &validated_here).await?;
        } else {
            // Exactly the triggers paused for the load, each back in its
            // state: one that was disabled before the restore stays disabled.
            for (table, trigger, enable) in &paused_triggers {
                exec(
                    client,
                    "re-enabling a user trigger",
                    &format!("ALTER TABLE {} {enable} {}", table.quoted(), quote_ident(trigger)),
                )
                .await?;
            }
        }
        Ok((restored, mode, warnings, roles_created))
    }

    /// With [`RestoreOptions::create_roles`], creates the recorded roles
    /// the target lacks, before the objects they own (in the caller's
    /// transaction, so a failed restore takes them away too).
    async fn create_roles(
        &self,
        schema: &DatabaseSchema,
        client: &mut Transaction<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<String>, PostgresError> {
        let Some(mode) = self.create_roles else {
            return Ok(Vec::new());
        };
        let created = cluster::create_roles(schema, client, mode).await?;
        warnings.extend(created.warnings);
        Ok(created.names)
    }

    async fn empty_existing_tables(
        &self,
        schema: &DatabaseSchema,
        client: &Transaction<'_>,
        roots: &[&QualifiedName],
        mode: LoadMode,
    ) -> Result<Vec<(QualifiedName, String, &'static str)>, PostgresError> {
        let outside = referencing_tables_outside(client, &self.members).await?;
        let mut paused = Vec::new();
        if mode == LoadMode::LiveConstraints {
            if let Some((table, constraint)) = outside.first() {
                return Err(PostgresError::ForeignKeyViolation {
                    constraint: constraint.clone(),
                    table: table.clone(),
                });
            }
            for root in roots {
                let rows = client
                    .query(
                        "SELECT t.tgname::text AS name, t.tgenabled::text AS state FROM pg_catalog.pg_trigger t \
                         WHERE t.tgrelid = $1::text::regclass AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
                         ORDER BY t.tgname",
                        &[&root.quoted()],
                    )
                    .await
                    .map_err(|source| PostgresError::Query {
                        what: "listing the user triggers to pause for the load",
                        source,
                    })?;
                for row in rows {
                    let name: String = row.get("name");
                    let enable = match row.get::<_, String>("state").as_str() {
                        "R" => "ENABLE REPLICA TRIGGER",
                        "A" => "ENABLE ALWAYS TRIGGER",
                        _ => "ENABLE TRIGGER",
                    };
                    exec(
                        client,
                        "disabling a user trigger for the load",
                        &format!(
                            "ALTER TABLE {} DISABLE TRIGGER {}",
                            root.quoted(),
                            quote_ident(&name)
                        ),
                    )
                    .await?;
                    paused.push(((*root).clone(), name, enable));
                }
            }
        }
        // ONLY: a table's inheritance children are not part of its data
        // section, so emptying it must not empty them. A partitioned root's
        // section covers its partitions, so it is emptied whole, except
        // for foreign partitions: their rows are another server's (a
        // TRUNCATE or DELETE through postgres_fdw would remove them there),
        // so then only its other partitions are emptied.
        let mut emptied: Vec<Vec<String>> = Vec::new();
        for root in roots.iter() {
            let partitioned = schema
                .table(root)
                .is_some_and(|t| t.kind == super::schema::TableKind::Partitioned);
            emptied.push(if partitioned {
                local_partitions(client, root)
                    .await?
                    .unwrap_or_else(|| vec![root.quoted()])
            } else {
                vec![format!("ONLY {}", root.quoted())]
            });
        }
        if outside.is_empty() {
            let names: Vec<String> = emptied.concat();
            if names.is_empty() {
                return Ok(paused);
            }
            exec(
                client,
                "emptying the tables to restore",
                &format!("TRUNCATE TABLE {}", names.join(", ")),
            )
            .await?;
        } else {
            // TRUNCATE refuses tables referenced from outside the restore;
            // in replica mode DELETE fires no cascades, and every foreign key
            // is checked before commit.
            for name in emptied.iter().rev().flatten() {
                exec(
                    client,
                    "emptying a table to restore",
                    &format!("DELETE FROM {name}"),
                )
                .await?;
            }
        }
        Ok(paused)
    }

    /// After the tables: sequences, views, materialized views, comments and
    /// (when the restore created tables) owners and grants.
    #[allow(clippy::too_many_arguments)] // two call sites, each argument a different part of the restore
    async fn finish_objects<S: ObjectSource>(
        &self,
        schema: &DatabaseSchema,
        backup: &BackupReader<'_, S>,
        client: &mut Transaction<'_>,
        created_tables: bool,
        warnings: &mut Vec<String>,
        progress: &dyn Progress,
    ) -> Result<(), PostgresError> {
        progress.phase("setting sequences and views");
        add_unvalidated_domain_constraints(schema, client).await?;
        self.set_sequences(schema, client).await?;
        if self.full_restore {
            create_views(schema, client, warnings).await?;
        }
        refresh_materialized_views(schema, client, self.full_restore, &self.members).await?;
        if self.full_restore {
            create_objects_at(schema, client, Stage::AfterViews).await?;
        } else {
            self.create_objects_of_created_tables(schema, client, warnings)
                .await?;
        }
        self.restore_large_objects(schema, backup, client, warnings, progress)
            .await?;
        if created_tables || self.full_restore {
            apply_comments(schema, client, warnings).await?;
        }
        if created_tables {
            apply_privileges(schema, client, warnings).await?;
        }
        if self.database_properties {
            cluster::apply_database_properties(schema, client, warnings).await?;
        }
        if self.full_restore {
            create_last_objects(schema, client, created_tables, warnings).await?;
        }
        // Last, when every object they name exists (event triggers too).
        if created_tables || self.full_restore || self.large_objects {
            self.apply_security_labels(schema, client, warnings).await?;
        }
        Ok(())
    }

    /// Puts the backup's security labels back (their providers were checked
    /// by [`RestorePlan::new`]); with `--no-security-labels`, names in one
    /// warning those it leaves out. One whose object is not in the target
    /// (a view not created) becomes a warning, as a comment does.
    async fn apply_security_labels(
        &self,
        schema: &DatabaseSchema,
        client: &mut Transaction<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<(), PostgresError> {
        if self.no_security_labels {
            let left_out: Vec<String> = security_labels::to_apply(
                &schema.security_labels,
                self.full_restore,
                self.large_objects,
                |table| self.members.contains(table) && !self.existing.contains(table),
            )
            .iter()
            .map(|label| label.describe())
            .collect();
            if !left_out.is_empty() {
                warnings.push(format!(
                    "security labels not restored (--no-security-labels): {}",
                    left_out.join(", ")
                ));
            }
            return Ok(());
        }
        for label in self.security_labels(schema) {
            if let Err(error) = attempt(client, &[label.statement.as_str()]).await? {
                warnings.push(format!(
                    "security label not restored ({error}): {}",
                    label.statement
                ));
            }
        }
        Ok(())
    }

    /// In a partial restore: creates the rules of the tables this restore
    /// created (as a full restore would, after their data), and names in a
    /// warning every later-stage object the target lacks that a partial
    /// restore leaves out — publications, triggers and rules of views (a
    /// partial restore creates no view), event triggers, default
    /// privileges, subscriptions — so that nothing differs without a word.
    async fn create_objects_of_created_tables(
        &self,
        schema: &DatabaseSchema,
        client: &Transaction<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<(), PostgresError> {
        for object in schema.objects.iter().filter(|o| o.stage != Stage::BeforeTables) {
            let created_with_table = object.stage == Stage::AfterViews
                && object
                    .relation
                    .as_ref()
                    .is_some_and(|table| self.members.contains(table) && !self.existing.contains(table));
            if created_with_table {
                create_object(client, object).await?;
                continue;
            }
            // A rule of a backed-up table this restore leaves alone goes
            // with that table: not a loss of this restore.
            let of_table_left_alone = object
                .relation
                .as_ref()
                .is_some_and(|table| schema.table(table).is_some() && !self.members.contains(table));
            if of_table_left_alone {
                continue;
            }
            let present: bool = client
                .query_one(object.exists.as_str(), &[])
                .await
                .map_err(|source| PostgresError::Query {
                    what: "looking up an object a partial restore leaves out",
                    source,
                })?
                .get(0);
            if !present {
                warnings.push(format!(
                    "not restored by a partial restore (restore the whole backup to bring it back): {}",
                    object.describe
                ));
            }
        }
        Ok(())
    }

    /// The large objects, after the tables' data as pg_restore brings
    /// them: with their OIDs, bytes, owners, grants and comments. A restore
    /// of chosen tables leaves them out, as `pg_restore -t` does, and says
    /// so, unless asked for them (`--large-objects`).
    async fn restore_large_objects<S: ObjectSource>(
        &self,
        schema: &DatabaseSchema,
        backup: &BackupReader<'_, S>,
        client: &mut Transaction<'_>,
        warnings: &mut Vec<String>,
        progress: &dyn Progress,
    ) -> Result<(), PostgresError> {
        if schema.large_objects.is_empty() {
            return Ok(());
        }
        if !self.large_objects {
            warnings.push(format!(
                "{} large object(s) not restored: a restore of chosen tables leaves them out, as pg_restore -t does; \
                 add --large-objects (payload largeObjects) or restore the whole backup to bring them back",
                schema.large_objects.len()
            ));
            return Ok(());
        }
        progress.phase("restoring large objects");
        super::large_objects::restore(backup, schema, client).await?;
        // Created by this restore, so they get their owners and grants
        // whether or not tables were created.
        apply_role_statements(
            super::large_objects::privileges(schema),
            client,
            &mut RolePresence::default(),
            warnings,
        )
        .await?;
        for comment in schema.large_objects.iter().filter_map(|o| o.comment.as_ref()) {
            if let Err(error) = attempt(client, &[comment]).await? {
                warnings.push(format!("comment not restored ({error}): {comment}"));
            }
        }
        Ok(())
    }

    async fn set_sequences(
        &self,
        schema: &DatabaseSchema,
        client: &Transaction<'_>,
    ) -> Result<(), PostgresError> {
        for sequence in &schema.sequences {
            let belongs = match &sequence.owned_by {
                Some(owner) => self.members.contains(&owner.table),
                None => self.full_restore,
            };
            if !belongs || !relation_exists(client, &sequence.name).await? {
                continue;
            }
            exec(
                client,
                "setting a sequence",
                &format!(
                    "SELECT pg_catalog.setval({}, {}, {})",
                    quote_literal(&sequence.name.quoted()),
                    sequence.last_value,
                    sequence.is_called
                ),
            )
            .await?;
        }
        Ok(())
    }
}

/// Adds the domains' `NOT VALID` constraints, after the data: to a domain
/// that lacks them (one the restore created; an existing domain keeps its
/// own constraints).
async fn add_unvalidated_domain_constraints(
    schema: &DatabaseSchema,
    client: &Transaction<'_>,
) -> Result<(), PostgresError> {
    for constraint in &schema.domain_constraints {
        let missing: bool = client
            .query_one(
                "SELECT pg_catalog.to_regtype($1) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint \
                 WHERE contypid = pg_catalog.to_regtype($1) AND conname = $2)",
                &[&constraint.domain.quoted(), &constraint.name],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "looking up a domain constraint",
                source,
            })?
            .get(0);
        if missing {
            exec(
                client,
                "adding a domain's NOT VALID constraint",
                &reparse::as_printed(&constraint.ddl),
            )
            .await?;
        }
    }
    Ok(())
}

/// The restore's settings for one transaction: names resolve only as the
/// backup wrote them (fully qualified), function bodies are not checked
/// before the objects they use exist, values read as they were written, and
/// tables are stored by heap unless their DDL says `USING` another method,
/// and in the database's default tablespace unless the backup names one.
fn session_settings() -> String {
    format!(
        "SET LOCAL search_path = ''; SET LOCAL check_function_bodies = false; \
         SET LOCAL client_min_messages = warning; SET LOCAL default_table_access_method = heap; \
         SET LOCAL default_tablespace = ''; {}",
        super::DETERMINISTIC_OUTPUT
    )
}

/// What a created table gets last: triggers (none fired during the load),
/// storage parameters, replica identity and row-level security.
async fn add_table_triggers_and_settings<C: GenericClient>(
    client: &C,
    table: &Table,
) -> Result<(), PostgresError> {
    for trigger in &table.triggers {
        exec(client, "creating a trigger", &reparse::as_printed(trigger)).await?;
    }
    for statement in &table.settings {
        exec(
            client,
            "restoring a table's storage parameters or replica identity",
            statement,
        )
        .await?;
    }
    for statement in &table.row_security {
        exec(
            client,
            "restoring row-level security",
            &reparse::as_printed(statement),
        )
        .await?;
    }
    Ok(())
}

async fn commit(transaction: Transaction<'_>, what: &'static str) -> Result<(), PostgresError> {
    transaction
        .commit()
        .await
        .map_err(|source| PostgresError::Query { what, source })
}

/// The end of every restore: the erasure ledger, then `COMMIT`.
async fn erase_and_commit(
    mut transaction: Transaction<'_>,
    erasures: &[Erasure],
    restored: &BTreeSet<QualifiedName>,
    progress: &dyn Progress,
) -> Result<Vec<AppliedErasure>, PostgresError> {
    let erased = apply_erasures(&mut transaction, erasures, Some(restored)).await?;
    progress.phase("committing");
    commit(transaction, "committing the restore").await?;
    Ok(erased)
}

/// Applies the erasure ledger inside `transaction`: each erasure in its own
/// savepoint; one blocked by a non-cascading foreign key is retried after
/// the others (its referencing rows may be erased later in the ledger),
/// and fails the restore when nothing else can unblock it. Only erasures of
/// `restored` tables act (all, when `None`): the rest of the target is not
/// the restore's to change.
async fn apply_erasures(
    transaction: &mut Transaction<'_>,
    erasures: &[Erasure],
    restored: Option<&BTreeSet<QualifiedName>>,
) -> Result<Vec<AppliedErasure>, PostgresError> {
    let mut applied = Vec::new();
    let mut pending: Vec<&Erasure> = erasures.iter().collect();
    while !pending.is_empty() {
        let mut blocked = Vec::new();
        let mut last_block = None;
        let before = pending.len();
        for erasure in pending {
            let table = erasure.table.display();
            if restored.is_some_and(|restored| !restored.contains(&erasure.table)) {
                applied.push(AppliedErasure {
                    id: erasure.id.clone(),
                    table,
                    rows: 0,
                    skipped: Some("its table is not restored here".into()),
                });
                continue;
            }
            if !relation_exists(transaction, &erasure.table).await? {
                applied.push(AppliedErasure {
                    id: erasure.id.clone(),
                    table,
                    rows: 0,
                    skipped: Some("no such table in this database".into()),
                });
                continue;
            }
            let types = key_column_types(transaction, erasure).await?;
            let (statement, values) = erasure.delete_statement(&types);
            let parameters: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let savepoint_error = |what| move |source| PostgresError::Query { what, source };
            let savepoint = transaction
                .savepoint("erasure")
                .await
                .map_err(savepoint_error("setting a savepoint"))?;
            match savepoint.execute(statement.as_str(), &parameters).await {
                Ok(rows) => {
                    savepoint
                        .commit()
                        .await
                        .map_err(savepoint_error("releasing a savepoint"))?;
                    applied.push(AppliedErasure {
                        id: erasure.id.clone(),
                        table,
                        rows,
                        skipped: None,
                    });
                }
                Err(error) => {
                    savepoint
                        .rollback()
                        .await
                        .map_err(savepoint_error("rolling back to a savepoint"))?;
                    match error.code() {
                        Some(code) if *code == tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION => {
                            last_block = Some((erasure, error));
                            blocked.push(erasure);
                        }
                        Some(code) if *code == tokio_postgres::error::SqlState::UNDEFINED_COLUMN => {
                            applied.push(AppliedErasure {
                                id: erasure.id.clone(),
                                table,
                                rows: 0,
                                skipped: Some("a key column is not in this table".into()),
                            });
                        }
                        // A key value that is no value of its column's type
                        // (`id=abc` for an integer) matches no row.
                        Some(code) if code.code().starts_with("22") => {
                            applied.push(AppliedErasure {
                                id: erasure.id.clone(),
                                table,
                                rows: 0,
                                skipped: Some(format!(
                                    "a key value is not a value of its column's type (SQLSTATE {})",
                                    code.code()
                                )),
                            });
                        }
                        _ => {
                            return Err(PostgresError::ErasureFailed {
                                id: erasure.id.clone(),
                                table,
                                source: Box::new(super::ErasureDatabaseError::redact(&error)),
                            });
                        }
                    }
                }
            }
        }
        if blocked.len() == before
            && let Some((erasure, source)) = last_block
        {
            return Err(PostgresError::ErasureBlocked {
                id: erasure.id.clone(),
                table: erasure.table.display(),
                source: Box::new(super::ErasureDatabaseError::redact(&source)),
            });
        }
        pending = blocked;
    }
    Ok(applied)
}

/// The types of an erasure's key columns in the target (`format_type`
/// without a type modifier, so a value is never cut to a `varchar(n)`), so
/// keys are compared in their column's type and its index is used.
async fn key_column_types(
    transaction: &Transaction<'_>,
    erasure: &Erasure,
) -> Result<BTreeMap<String, String>, PostgresError> {
    let columns: Vec<&str> = erasure.key.keys().map(String::as_str).collect();
    let rows = transaction
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attname = ANY($2) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&erasure.table.quoted(), &columns],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading the types of an erasure's key columns",
            source,
        })?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Applies the erasure ledger to a database in its own transaction (deep
/// verification's scratch copy, after its comparison with the backup).
pub async fn erase_rows(
    client: &mut Client,
    erasures: &[Erasure],
) -> Result<Vec<AppliedErasure>, PostgresError> {
    let mut transaction = client
        .transaction()
        .await
        .map_err(|source| PostgresError::Query {
            what: "starting the erasure transaction",
            source,
        })?;
    let applied = apply_erasures(&mut transaction, erasures, None).await?;
    commit(transaction, "committing the erasures").await?;
    Ok(applied)
}

/// Runs `statements` inside a savepoint: kept if they all succeed, undone
/// if one fails. `Ok(Err(..))` is that statement's failure, after which the
/// restore transaction goes on; `Err` is the savepoint itself failing.
async fn attempt(
    transaction: &mut Transaction<'_>,
    statements: &[&str],
) -> Result<Result<(), tokio_postgres::Error>, PostgresError> {
    let savepoint_error = |what| move |source| PostgresError::Query { what, source };
    let savepoint = transaction
        .savepoint("restore_attempt")
        .await
        .map_err(savepoint_error("setting a savepoint"))?;
    let mut outcome = Ok(());
    for statement in statements {
        outcome = savepoint.batch_execute(statement).await;
        if outcome.is_err() {
            break;
        }
    }
    match outcome {
        Ok(()) => savepoint
            .commit()
            .await
            .map_err(savepoint_error("releasing a savepoint"))?,
        Err(_) => savepoint
            .rollback()
            .await
            .map_err(savepoint_error("rolling back to a savepoint"))?,
    }
    Ok(outcome)
}

async fn choose_load_mode(transaction: &mut Transaction<'_>) -> Result<LoadMode, PostgresError> {
    match attempt(transaction, &["SET LOCAL session_replication_role = replica"]).await? {
        Ok(()) => Ok(LoadMode::ReplicationRole),
        Err(error) => {
            tracing::info!(%error, "session_replication_role not permitted; loading with live foreign keys");
            Ok(LoadMode::LiveConstraints)
        }
    }
}

/// Creates what the target lacks before the data goes in: extensions and
/// schemas, then types, functions, sequences and the missing tables, each
/// after what it depends on ([`creation_order`]).
async fn create_missing_objects(
    schema: &DatabaseSchema,
    client: &Transaction<'_>,
    created: &[&Table],
    with_views: bool,
) -> Result<Vec<CreatedObject>, PostgresError> {
    let mut made = Vec::new();
    for extension in &schema.extensions {
        // The schema first, as it is made: a failed restore drops what it
        // made in the reverse order, the extension before its schema.
        if !exists(
            client,
            "looking up a schema",
            "SELECT pg_catalog.to_regnamespace(pg_catalog.quote_ident($1)) IS NOT NULL",
            &extension.schema,
        )
        .await?
        {
            made.push(CreatedObject::new("SCHEMA", quote_ident(&extension.schema)));
        }
        if !exists(
            client,
            "looking up an extension",
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = $1)",
            &extension.name,
        )
        .await?
        {
            made.push(CreatedObject::new("EXTENSION", quote_ident(&extension.name)));
        }
        exec(
            client,
            "creating an extension the backup uses",
            &format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {schema}",
                quote_ident(&extension.name),
                schema = quote_ident(&extension.schema)
            ),
        )
        .await?;
    }
    for name in &schema.schemas {
        if !exists(
            client,
            "looking up a schema",
            "SELECT pg_catalog.to_regnamespace(pg_catalog.quote_ident($1)) IS NOT NULL",
            name,
        )
        .await?
        {
            made.push(CreatedObject::new("SCHEMA", quote_ident(name)));
        }
        exec(
            client,
            "creating a schema",
            &format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(name)),
        )
        .await?;
    }
    for collation in &schema.collations {
        if !exists(
            client,
            "looking up a collation",
            "SELECT pg_catalog.to_regcollation($1) IS NOT NULL",
            &collation.name.quoted(),
        )
        .await?
        {
            exec(client, "creating a collation", &collation.ddl).await?;
            made.push(CreatedObject::new("COLLATION", collation.name.quoted()));
        }
    }
    for object in creation_order(schema, created, with_views)? {
        match object {
            Creation::Type(user_type) => {
                if !exists(
                    client,
                    "looking up a type",
                    "SELECT pg_catalog.to_regtype($1) IS NOT NULL",
                    &user_type.name.quoted(),
                )
                .await?
                {
                    exec(client, "creating a type", &reparse::as_printed(&user_type.ddl)).await?;
                    made.push(CreatedObject::new("TYPE", user_type.name.quoted()));
                }
            }
            Creation::Function(function) => {
                if !function_exists(client, function).await? {
                    exec(client, "creating a function", &function.ddl).await?;
                    made.push(CreatedObject::new(
                        routine_kind(&function.ddl),
                        function
                            .signature
                            .clone()
                            .unwrap_or_else(|| function.name.quoted()),
                    ));
                }
            }
            Creation::Sequence(sequence) => {
                let needed = match &sequence.owned_by {
                    Some(owner) => created.iter().any(|t| t.name == owner.table),
                    None => true,
                };
                if let (true, Some(ddl)) = (needed, &sequence.ddl)
                    && !relation_exists(client, &sequence.name).await?
                {
                    exec(client, "creating a sequence", ddl).await?;
                    made.push(CreatedObject::new("SEQUENCE", sequence.name.quoted()));
                }
            }
            Creation::Table(table) => {
                exec(
                    client,
                    "creating a table from the backup",
                    &reparse::as_printed(&table.create_ddl),
                )
                .await?;
                made.push(CreatedObject::new("TABLE", table.name.quoted()));
                // Moved while empty: a partition would otherwise stay in its
                // parent's tablespace (tablespaces.rs).
                if let Some(tablespace) = &table.tablespace {
                    exec(
                        client,
                        "moving a new table into its tablespace",
                        &format!(
                            "ALTER TABLE ONLY {} SET TABLESPACE {}",
                            table.name.quoted(),
                            quote_ident(tablespace)
                        ),
                    )
                    .await?;
                }
            }
            Creation::Object(object) => {
                if let Some(created) = create_object(client, object).await? {
                    made.push(created);
                }
            }
            Creation::View(view) => {
                if relation_exists(client, &view.name).await? {
                    continue;
                }
                // A view in a cycle through functions is its placeholder
                // here; its body comes after them (an object of its own).
                let statements: Vec<Cow<'_, str>> = match &view.placeholder {
                    Some(placeholder) => vec![Cow::Borrowed(placeholder.as_str())],
                    None => view_statements(view),
                };
                let statements: Vec<&str> = statements.iter().map(AsRef::as_ref).collect();
                // One that fails here (e.g. its tables are not in the
                // backup) is tried again after the data and then reported
                // as a warning (create_views), as before views were ordered.
                if try_in_savepoint(client, &statements).await?.is_ok() {
                    let kind = if view.materialized {
                        "MATERIALIZED VIEW"
                    } else {
                        "VIEW"
                    };
                    made.push(CreatedObject::new(kind, view.name.quoted()));
                }
            }
        }
    }
    for sequence in &schema.sequences {
        if let (Some(owner), false) = (&sequence.owned_by, sequence.identity)
            && created.iter().any(|t| t.name == owner.table)
        {
            exec(
                client,
                "attaching a sequence to its column",
                &format!(
                    "ALTER SEQUENCE {} OWNED BY {}.{}",
                    sequence.name.quoted(),
                    owner.table.quoted(),
                    quote_ident(&owner.column)
                ),
            )
            .await?;
        }
    }
    Ok(made)
}

/// A view's or materialized view's statements (its definition, indexes and
/// settings), each run as it will read back as the backup printed it.
fn view_statements(view: &View) -> Vec<Cow<'_, str>> {
    std::iter::once(view.ddl.as_str())
        .chain(view.indexes.iter().map(String::as_str))
        .chain(view.settings.iter().map(String::as_str))
        .map(reparse::as_printed)
        .collect()
}

/// Runs `statements` under a savepoint: on an error they are undone and the
/// transaction goes on (`attempt` for a shared transaction reference).
async fn try_in_savepoint(
    client: &Transaction<'_>,
    statements: &[&str],
) -> Result<Result<(), tokio_postgres::Error>, PostgresError> {
    exec(client, "setting a savepoint", "SAVEPOINT restore_view").await?;
    let mut outcome = Ok(());
    for statement in statements {
        outcome = client.batch_execute(statement).await;
        if outcome.is_err() {
            break;
        }
    }
    let end = if outcome.is_ok() {
        "RELEASE SAVEPOINT restore_view"
    } else {
        "ROLLBACK TO SAVEPOINT restore_view; RELEASE SAVEPOINT restore_view"
    };
    exec(client, "ending a savepoint", end).await?;
    Ok(outcome)
}

/// An object a restore created (kind as in `DROP <kind>`, and its quoted
/// name or function signature), so a restore that commits as it goes can
/// remove it again when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CreatedObject {
    pub kind: String,
    pub name: String,
}

impl CreatedObject {
    fn new(kind: impl Into<String>, name: String) -> Self {
        Self {
            kind: kind.into(),
            name,
        }
    }
}

/// Creates an object of a kind family unless the target has it already
/// (then it is left as it is, as existing types and functions are).
async fn create_object<C: GenericClient>(
    client: &C,
    object: &CatalogObject,
) -> Result<Option<CreatedObject>, PostgresError> {
    let present: bool = client
        .query_one(object.exists.as_str(), &[])
        .await
        .map_err(|source| PostgresError::Query {
            what: "looking up an object of the backup",
            source,
        })?
        .get(0);
    if present {
        return Ok(None);
    }
    // A part split off its table or domain (a column default, a domain
    // check) goes with its owner: there is nothing of its own to drop.
    let droppable = !object.drop_kind.is_empty();
    client
        .batch_execute(&reparse::as_printed(&object.ddl))
        .await
        .map_err(|source| PostgresError::CreateObject {
            object: object.describe.clone(),
            source,
        })?;
    Ok(droppable.then(|| CreatedObject::new(object.drop_kind.clone(), object.drop_name.clone())))
}

/// Creates the objects of one later stage (after the views, or last) that
/// the target lacks. They belong to the whole database: only a full restore
/// creates them.
async fn create_objects_at(
    schema: &DatabaseSchema,
    client: &Transaction<'_>,
    stage: Stage,
) -> Result<(), PostgresError> {
    for object in schema.objects.iter().filter(|o| o.stage == stage) {
        create_object(client, object).await?;
    }
    Ok(())
}

/// What `DROP` takes for a routine the restore created: `DROP FUNCTION`
/// refuses a procedure or an aggregate. Told from its DDL
/// (`pg_get_functiondef` prints `CREATE OR REPLACE PROCEDURE`, the capture
/// `CREATE AGGREGATE`).
fn routine_kind(ddl: &str) -> &'static str {
    let head = ddl.trim_start();
    if head.starts_with("CREATE AGGREGATE") {
        "AGGREGATE"
    } else if head.starts_with("CREATE OR REPLACE PROCEDURE") || head.starts_with("CREATE PROCEDURE") {
        "PROCEDURE"
    } else {
        "FUNCTION"
    }
}

/// Creates the last stage's objects (default privileges, event triggers)
/// each followed by its owner and grants: they could not be applied with the
/// others, before the object exists, and an event trigger created earlier
/// would fire on the statements of the objects after it.
async fn create_last_objects(
    schema: &DatabaseSchema,
    transaction: &mut Transaction<'_>,
    created_tables: bool,
    warnings: &mut Vec<String>,
) -> Result<(), PostgresError> {
    let mut roles = RolePresence::default();
    for object in schema.objects.iter().filter(|o| o.stage == Stage::Last) {
        create_object(&*transaction, object).await?;
        if created_tables {
            apply_role_statements(object.privileges.iter(), transaction, &mut roles, warnings).await?;
        }
    }
    Ok(())
}

/// Overloads share a name: a function is identified by its signature.
async fn function_exists(client: &Transaction<'_>, function: &NamedDdl) -> Result<bool, PostgresError> {
    match &function.signature {
        // Compared as text among the functions of that name:
        // `to_regprocedure` fails outright on a signature naming a shell
        // type (a base type's input/output functions, before the type).
        Some(signature) => Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n \
                 ON n.oid = p.pronamespace WHERE n.nspname = $1 AND p.proname = $2 \
                 AND p.oid::pg_catalog.regprocedure::pg_catalog.text = $3)",
                &[&function.name.schema, &function.name.name, signature],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "looking up a function",
                source,
            })?
            .get::<_, bool>(0)),
        // Backups from before signatures were captured.
        None => Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = $1 AND p.proname = $2)",
                &[&function.name.schema, &function.name.name],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "looking up a function",
                source,
            })?
            .get::<_, bool>(0)),
    }
}

/// Decoded blocks waiting for COPY: enough to keep the server busy while
/// the next ones are authenticated, decrypted and decompressed, and a
/// bounded amount of memory (blocks are at most 256 KiB).
const DECODE_AHEAD_BLOCKS: usize = 16;

/// Loads one table with COPY FROM STDIN. Its parts are decoded on their own
/// task ahead of the load, so decoding and the server's parsing overlap.
/// `freeze`: the table was created in this transaction, so its rows can be
/// written frozen (no hint-bit rewrite or anti-wraparound vacuum later).
async fn load_table<S: ObjectSource>(
    backup: &BackupReader<'_, S>,
    client: &Transaction<'_>,
    table: &Table,
    freeze: bool,
    progress: &dyn Progress,
) -> Result<u64, PostgresError> {
    let sections = backup
        .table(&table.name.schema, &table.name.name)
        .ok_or_else(|| PostgresError::MissingTableSection {
            table: table.name.display(),
        })?;
    let expected = sections.rows();
    let freeze = freeze && can_load_frozen(table);
    progress.begin_table(&table.name.display(), Some(sections.plain_bytes()));
    let rows = copy_parts(backup, client, table, sections.parts(), freeze, progress).await?;
    progress.finish_table();
    if rows != expected {
        return Err(PostgresError::RowCountMismatch {
            table: table.name.display(),
            expected,
            actual: rows,
        });
    }
    tracing::info!(table = %table.name, rows, frozen = freeze, "table restored");
    Ok(rows)
}

/// Whether COPY can write `table`'s rows frozen (when the table was created
/// or emptied in the same transaction): not through a partitioned table,
/// whose rows go to its partitions.
fn can_load_frozen(table: &Table) -> bool {
    table.kind == TableKind::Table
}

/// Streams `parts` (in order) into `table`'s backed-up columns and returns
/// the rows the server counted: text parts with one `COPY … FROM STDIN`
/// (they are one stream cut in pieces), binary parts with one each (each
/// is a whole binary stream, header and end marker included).
async fn copy_parts<S: ObjectSource>(
    backup: &BackupReader<'_, S>,
    transaction: &Transaction<'_>,
    table: &Table,
    parts: &[&crate::container::SectionEntry],
    freeze: bool,
    progress: &dyn Progress,
) -> Result<u64, PostgresError> {
    if parts.iter().all(|part| part.copy_format == CopyFormat::Text) {
        return copy_in(
            backup,
            transaction,
            table,
            parts,
            CopyFormat::Text,
            freeze,
            progress,
        )
        .await;
    }
    let mut rows = 0;
    for part in parts {
        let format = part.copy_format;
        rows += copy_in(
            backup,
            transaction,
            table,
            std::slice::from_ref(part),
            format,
            freeze,
            progress,
        )
        .await?;
    }
    Ok(rows)
}

/// Streams `parts` (in order) into `table` with one `COPY … FROM STDIN` in
/// `format`. Each part is decoded on its own task ahead of the load, so
/// decoding and the server's parsing overlap.
async fn copy_in<S: ObjectSource>(
    backup: &BackupReader<'_, S>,
    transaction: &Transaction<'_>,
    table: &Table,
    parts: &[&crate::container::SectionEntry],
    format: CopyFormat,
    freeze: bool,
    progress: &dyn Progress,
) -> Result<u64, PostgresError> {
    let table_error = |what: &'static str| {
        let table = table.name.display();
        move |source| PostgresError::TableQuery { what, table, source }
    };
    let target = if table.copy_columns.is_empty() {
        table.name.quoted()
    } else {
        format!(
            "{} ({})",
            table.name.quoted(),
            quote_column_list(&table.copy_columns)
        )
    };
    let statement = format!("COPY {target} FROM STDIN{}", format.copy_options(freeze));
    let sink = transaction
        .copy_in::<_, Bytes>(statement.as_str())
        .await
        .map_err(table_error("starting COPY FROM STDIN"))?;
    let mut sink = std::pin::pin!(sink);
    let (blocks, mut decoded) = tokio::sync::mpsc::channel::<Bytes>(DECODE_AHEAD_BLOCKS);
    let decode = async move {
        for part in parts {
            let mut section = backup.open_section(part).await?;
            let blocks = blocks.clone();
            let decoding = tokio::spawn(async move {
                while let Some(block) = section.next_block().await? {
                    if blocks.send(block).await.is_err() {
                        break; // the load ended first; its error is the one to report
                    }
                }
                Ok::<(), crate::ContainerError>(())
            });
            decoding.await.map_err(PostgresError::PipelineTaskFailed)??;
        }
        Ok::<(), PostgresError>(())
    };
    // An integrity failure ends the load with an error; dropping the sink
    // unfinished aborts the COPY (and, in a transaction, rolls it back).
    let load = async {
        let mut counter = super::RowCounter::new(format);
        while let Some(block) = decoded.recv().await {
            let (rows, bytes) = (counter.count(&block), block.len() as u64);
            sink.send(block).await.map_err(table_error("sending COPY data"))?;
            progress.advance(rows, bytes);
        }
        Ok::<(), PostgresError>(())
    };
    futures_util::try_join!(decode, load)?;
    sink.as_mut()
        .finish()
        .await
        .map_err(table_error("finishing COPY"))
}

/// Foreign keys from tables outside the restore into tables inside it.
async fn referencing_tables_outside(
    client: &Transaction<'_>,
    members: &BTreeSet<QualifiedName>,
) -> Result<Vec<(String, String)>, PostgresError> {
    let rows = client
        .query(
            "SELECT cn.nspname::text, c.relname::text, con.conname::text, rn.nspname::text, r.relname::text \
             FROM pg_catalog.pg_constraint con \
             JOIN pg_catalog.pg_class c ON c.oid = con.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_catalog.pg_class r ON r.oid = con.confrelid JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace \
             WHERE con.contype = 'f'",
            &[],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "listing foreign keys",
            source,
        })?;
    Ok(rows
        .iter()
        .filter(|r| {
            let child = QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1));
            let parent = QualifiedName::new(r.get::<_, String>(3), r.get::<_, String>(4));
            members.contains(&parent) && !members.contains(&child)
        })
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).display(),
                r.get(2),
            )
        })
        .collect())
}

/// With triggers off during the load, re-checks every foreign key that
/// touches a restored table, as an anti-join per constraint, except those
/// this restore added (PostgreSQL validated them when they were added).
async fn check_foreign_keys(
    client: &Transaction<'_>,
    members: &BTreeSet<QualifiedName>,
    validated_here: &BTreeSet<(QualifiedName, String)>,
) -> Result<(), PostgresError> {
    let rows = client
        .query(
            "SELECT con.conname::text, cn.nspname::text, c.relname::text, rn.nspname::text, r.relname::text, \
                    (SELECT array_agg(a.attname::text ORDER BY k.i) FROM unnest(con.conkey) WITH ORDINALITY k(n, i) \
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n), \
                    (SELECT array_agg(a.attname::text ORDER BY k.i) FROM unnest(con.confkey) WITH ORDINALITY k(n, i) \
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n) \
             FROM pg_catalog.pg_constraint con \
             JOIN pg_catalog.pg_class c ON c.oid = con.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_catalog.pg_class r ON r.oid = con.confrelid JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace \
             WHERE con.contype = 'f' AND con.conparentid = 0 AND con.convalidated",
            &[],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "listing foreign keys to check",
            source,
        })?;
    for row in rows {
        let constraint: String = row.get(0);
        let child = QualifiedName::new(row.get::<_, String>(1), row.get::<_, String>(2));
        let parent = QualifiedName::new(row.get::<_, String>(3), row.get::<_, String>(4));
        if !members.contains(&child) && !members.contains(&parent) {
            continue;
        }
        if validated_here.contains(&(child.clone(), constraint.clone())) {
            continue;
        }
        let child_columns: Vec<String> = row.get(5);
        let parent_columns: Vec<String> = row.get(6);
        let not_null = child_columns
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let join = child_columns
            .iter()
            .zip(&parent_columns)
            .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} c WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {join}))",
            child.quoted(),
            parent.quoted()
        );
        let broken: bool = client
            .query_one(sql.as_str(), &[])
            .await
            .map_err(|source| PostgresError::Query {
                what: "checking a foreign key after the load",
                source,
            })?
            .get(0);
        if broken {
            return Err(PostgresError::ForeignKeyViolation {
                constraint,
                table: child.display(),
            });
        }
    }
    Ok(())
}

/// Creates the views the target lacks; a view that still fails after every
/// other view had its chance (e.g. its tables were not restored) becomes a
/// warning, not a failed restore.
async fn create_views(
    schema: &DatabaseSchema,
    transaction: &mut Transaction<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), PostgresError> {
    let mut pending = Vec::new();
    for view in &schema.views {
        if !relation_exists(transaction, &view.name).await? {
            pending.push(view);
        }
    }
    loop {
        let mut failed = Vec::new();
        let before = pending.len();
        for view in pending {
            let statements = view_statements(view);
            let statements: Vec<&str> = statements.iter().map(AsRef::as_ref).collect();
            if let Err(error) = attempt(transaction, &statements).await? {
                failed.push((view, error));
            }
        }
        if failed.is_empty() || failed.len() == before {
            for (view, error) in failed {
                warnings.push(format!("view {} not created: {error}", view.name.display()));
            }
            return Ok(());
        }
        pending = failed.into_iter().map(|(view, _)| view).collect();
    }
}

/// Puts the backup's comments back. One whose object is not in the target
/// (a view whose tables were not restored) becomes a warning.
async fn apply_comments(
    schema: &DatabaseSchema,
    transaction: &mut Transaction<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), PostgresError> {
    for comment in &schema.comments {
        if let Err(error) = attempt(transaction, &[comment]).await? {
            warnings.push(format!("comment not restored ({error}): {comment}"));
        }
    }
    Ok(())
}

/// Gives objects their owners and grants back where the role exists and the
/// restoring role may; reports the rest as warnings (the objects then
/// belong to the restoring role). Applied only when the restore created
/// tables: an existing database keeps its own owners and grants.
async fn apply_privileges(
    schema: &DatabaseSchema,
    transaction: &mut Transaction<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), PostgresError> {
    // The last stage's objects get theirs once they exist.
    let object_privileges = schema
        .objects
        .iter()
        .filter(|o| o.stage != Stage::Last)
        .flat_map(|o| o.privileges.iter());
    let mut roles = RolePresence::default();
    apply_role_statements(
        schema.privileges.iter().chain(object_privileges),
        transaction,
        &mut roles,
        warnings,
    )
    .await
}

/// Whether each role named so far exists: each is looked up once, however
/// many statements name it.
#[derive(Default)]
struct RolePresence(std::collections::BTreeMap<String, bool>);

/// Whether `warning` is the one [`apply_role_statements`] gave for skipping
/// `statement` (the proof excuses exactly those).
fn skipped_by(warning: &str, statement: &str) -> bool {
    (warning.starts_with("role ") || warning.starts_with("not restored ("))
        && warning.ends_with(statement)
        && warning[..warning.len() - statement.len()].ends_with(": ")
}

/// Applies role statements whose role exists, reporting the rest (and
/// those that fail) as warnings, in the words [`skipped_by`] knows.
async fn apply_role_statements<'a>(
    statements: impl Iterator<Item = &'a RoleStatement>,
    transaction: &mut Transaction<'_>,
    roles: &mut RolePresence,
    warnings: &mut Vec<String>,
) -> Result<(), PostgresError> {
    for privilege in statements {
        let present = match roles.0.get(privilege.role.as_str()) {
            Some(present) => *present,
            None => {
                let present = privilege.role == "PUBLIC"
                    || exists(
                        transaction,
                        "looking up a role",
                        "SELECT pg_catalog.to_regrole(pg_catalog.quote_ident($1)) IS NOT NULL",
                        &privilege.role,
                    )
                    .await?;
                roles.0.insert(privilege.role.clone(), present);
                present
            }
        };
        if !present {
            warnings.push(format!(
                "role {:?} does not exist here, so this was not restored: {}",
                privilege.role, privilege.statement
            ));
            continue;
        }
        if let Err(error) = attempt(transaction, &[&privilege.statement]).await? {
            warnings.push(format!("not restored ({error}): {}", privilege.statement));
        }
    }
    Ok(())
}

/// Refreshes the backup's materialized views: all of them after a full
/// restore; after a partial one, those that read a restored table. Views
/// the backup does not know are left alone, as pg_restore leaves them.
async fn refresh_materialized_views(
    schema: &DatabaseSchema,
    client: &Transaction<'_>,
    full_restore: bool,
    members: &BTreeSet<QualifiedName>,
) -> Result<(), PostgresError> {
    let restored: Vec<String> = members.iter().map(QualifiedName::quoted).collect();
    // One the source never populated (`WITH NO DATA`) stays unpopulated.
    for view in schema.views.iter().filter(|v| v.materialized && v.populated) {
        let refresh = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL AND ($2 OR EXISTS ( \
                   SELECT 1 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d \
                     ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
                   WHERE r.ev_class = pg_catalog.to_regclass($1) \
                     AND d.refobjid IN (SELECT pg_catalog.to_regclass(t) FROM unnest($3::text[]) AS t)))",
                &[&view.name.quoted(), &full_restore, &restored],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "finding the materialized views to refresh",
                source,
            })?
            .get::<_, bool>(0);
        if refresh {
            exec(
                client,
                "refreshing a materialized view",
                &format!("REFRESH MATERIALIZED VIEW {}", view.name.quoted()),
            )
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::routine_kind;

    #[test]
    fn procedures_and_aggregates_are_dropped_as_what_they_are() {
        assert_eq!(
            routine_kind("CREATE OR REPLACE PROCEDURE public.p()\n LANGUAGE sql\nAS $procedure$ $procedure$"),
            "PROCEDURE"
        );
        assert_eq!(
            routine_kind("CREATE AGGREGATE public.total(integer) (SFUNC = int4pl, STYPE = integer)"),
            "AGGREGATE"
        );
        assert_eq!(
            routine_kind("CREATE OR REPLACE FUNCTION public.f()\n RETURNS integer"),
            "FUNCTION"
        );
    }
}

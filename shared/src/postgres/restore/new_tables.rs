//! Restore into a target that holds none of the chosen tables, over several
//! connections (`docs/POSTGRES.md`, "Restore into new tables").
//!
//! One transaction cannot span connections, so this restore commits as it
//! goes, and if any step fails, interrupts the others and removes what it
//! created:
//! 1. one transaction creates what the tables need and the tables
//!    themselves, without constraints, indexes or triggers;
//! 2. every connection takes the next ready step: a table's data (its
//!    parts in one COPY, frozen after a TRUNCATE in the same transaction;
//!    largest tables first), a table's constraints or one of its indexes
//!    once its data is in (while other tables still load) — a primary key
//!    or unique constraint of an ordinary table is one more index here
//!    (`CREATE UNIQUE INDEX`, built beside the others), which the key takes
//!    over (`ADD CONSTRAINT … USING INDEX`) once all of them are built —,
//!    or a foreign key once both of its tables have their keys — added
//!    `NOT VALID` one at a time (adding locks both tables), then validated
//!    (which locks only the referencing table against writes and other
//!    validations), so foreign keys of different tables are checked at once;
//! 3. one last transaction adds triggers and table settings, sets
//!    sequences, creates views, puts comments and grants back and applies
//!    the erasure ledger.
//!
//! An interruption ([`RestoreOptions::interrupt`]) is such a failure too:
//! every connection's statement is cancelled and its step rolled back,
//! then what step 1 created is removed.
//!
//! No step waits on another's locks: a table's constraints come before its
//! indexes (which share their lock), its keys are attached after all of
//! them, a foreign key comes after every step
//! on both of its tables, and the board keeps additions and validations
//! that would block each other apart.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_postgres::Client;

use super::{
    CreatedObject, LoadMode, RestoreOptions, RestorePlan, RestoreReport, RestoredTable,
    add_table_triggers_and_settings, can_load_frozen, cancel, commit, copy_parts, create_missing_objects,
    erase_and_commit, exec, proof, relation_exists, session_settings,
};
use crate::container::{BackupReader, ObjectSource, SectionEntry};
use crate::postgres::PostgresError;
use crate::postgres::schema::{DatabaseSchema, ForeignKey, KeyIndex, QualifiedName, Table, TableKind};
use crate::progress::Progress;

/// Restores `plan` (none of whose tables exist in the target) over `client`
/// and `helpers`. On failure, what step 1 created is dropped again.
pub(super) async fn restore_new_tables<S: ObjectSource>(
    plan: &RestorePlan,
    schema: &DatabaseSchema,
    backup: &BackupReader<'_, S>,
    client: &mut Client,
    mut helpers: Vec<Client>,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport, PostgresError> {
    let started = std::time::Instant::now();
    let connections = 1 + helpers.len();
    let tokens: Vec<tokio_postgres::CancelToken> = std::iter::once(&*client)
        .chain(helpers.iter())
        .map(Client::cancel_token)
        .collect();
    let tables: Vec<&Table> = schema
        .tables
        .iter()
        .filter(|t| plan.members.contains(&t.name))
        .collect();
    progress.phase("creating tables");
    let mut role_warnings = Vec::new();
    let (created, roles_created) = {
        let mut transaction = begin(client, "starting the restore transaction").await?;
        // Roles first: dropped last (after what they own) if the restore fails.
        let roles = plan
            .create_roles(schema, &mut transaction, &mut role_warnings)
            .await?;
        let mut created: Vec<CreatedObject> = roles
            .iter()
            .map(|role| CreatedObject::new("ROLE", crate::postgres::schema::quote_ident(role)))
            .collect();
        created.extend(create_missing_objects(schema, &transaction, &tables, plan.full_restore).await?);
        commit(transaction, "committing the new tables").await?;
        (created, roles)
    };
    // Not interruptible until its tables are known (it is short: DDL only).
    let load = load_and_finish(
        plan,
        schema,
        backup,
        client,
        &mut helpers,
        options,
        &tables,
        (&roles_created, &role_warnings),
        progress,
    );
    let outcome = match options.interrupt.guard(load).await {
        Ok(outcome) => outcome,
        Err(reason) => {
            // Every connection rolled back (its locks released) before
            // what the restore created is dropped.
            let connections = std::iter::once(&*client).chain(helpers.iter());
            futures_util::future::join_all(
                connections
                    .zip(&tokens)
                    .map(|(connection, token)| cancel::settle(connection, token)),
            )
            .await;
            Err(PostgresError::Stopped { reason })
        }
    };
    match outcome {
        Ok((restored, warnings, erased)) => Ok(RestoreReport {
            database: plan.database.clone(),
            tables: restored,
            mode: LoadMode::NewTables { connections },
            warnings: role_warnings.into_iter().chain(warnings).collect(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            erased,
            roles_created,
        }),
        Err(cause) => {
            if cause.is_interrupted() {
                tracing::info!(error = %cause, "the restore into new tables was interrupted; removing what it created");
            } else {
                tracing::error!(target: crate::operations::OUTCOME_LOG, error = %cause, "the restore into new tables failed; removing what it created");
            }
            match remove_created(client, &created).await {
                Ok(()) => match cause {
                    PostgresError::Stopped { reason } => Err(PostgresError::Interrupted {
                        reason,
                        database: plan.database.clone(),
                    }),
                    cause => Err(cause),
                },
                Err((remaining, source)) => Err(PostgresError::RestoreLeftObjects {
                    cause: Box::new(cause),
                    remaining,
                    source,
                }),
            }
        }
    }
}

type Finished = (Vec<RestoredTable>, Vec<String>, Vec<super::AppliedErasure>);

#[allow(clippy::too_many_arguments)] // one call site, each argument a different part of the restore
async fn load_and_finish<S: ObjectSource>(
    plan: &RestorePlan,
    schema: &DatabaseSchema,
    backup: &BackupReader<'_, S>,
    client: &mut Client,
    helpers: &mut [Client],
    options: &RestoreOptions,
    tables: &[&Table],
    (roles_created, role_warnings): (&[String], &[String]),
    progress: &dyn Progress,
) -> Result<Finished, PostgresError> {
    let steps = Steps::plan(plan, schema, backup, tables)?;
    let total_bytes = plan
        .roots
        .iter()
        .filter_map(|root| backup.table(&root.schema, &root.name))
        .map(|sections| sections.plain_bytes())
        .sum();
    progress.phase("loading tables, adding constraints and indexes");
    progress.begin_table("all tables", Some(total_bytes));
    let board = Mutex::new(Board::new(steps.list.len()));
    let wake = Notify::new();
    let mut backends = Vec::with_capacity(1 + helpers.len());
    for connection in std::iter::once(&*client).chain(helpers.iter()) {
        backends.push(backend_pid(connection).await?);
    }
    let crew = Crew {
        steps: &steps,
        board: &board,
        wake: &wake,
        backends: &backends,
    };
    {
        let mut workers = Vec::with_capacity(1 + helpers.len());
        workers.push(work(client, 0, &crew, backup, progress));
        for (index, helper) in helpers.iter_mut().enumerate() {
            workers.push(work(helper, 1 + index, &crew, backup, progress));
        }
        // The first failure stops the board and interrupts the others'
        // statements (see `work`); dropping their futures then aborts a
        // COPY they were sending, and their steps' transactions roll back.
        futures_util::future::try_join_all(workers).await?;
    }
    progress.finish_table();
    let Board {
        done,
        rows,
        mut warnings,
        ..
    } = board
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let left = done.iter().filter(|done| !**done).count();
    if left > 0 {
        return Err(PostgresError::RestoreStepsLeft { left });
    }
    let mut restored = Vec::with_capacity(plan.roots.len());
    for root in &plan.roots {
        let expected = backup.table(&root.schema, &root.name).map_or(0, |s| s.rows());
        let actual = rows.get(root).copied().unwrap_or(0);
        if actual != expected {
            return Err(PostgresError::RowCountMismatch {
                table: root.display(),
                expected,
                actual,
            });
        }
        tracing::info!(table = %root, rows = actual, "table restored");
        restored.push(RestoredTable {
            name: root.clone(),
            rows: actual,
            created: true,
        });
    }

    let mut transaction = begin(client, "starting the restore's last transaction").await?;
    for table in tables {
        add_table_triggers_and_settings(&transaction, table).await?;
    }
    plan.finish_objects(schema, backup, &mut transaction, true, &mut warnings, progress)
        .await?;
    progress.phase("comparing the restored tables with the backup");
    // The roles were created first, their warnings made then.
    let all_warnings: Vec<String> = role_warnings.iter().chain(&warnings).cloned().collect();
    proof::prove_restored(&transaction, schema, plan, &all_warnings, true, roles_created).await?;
    if !options.erasures.is_empty() {
        progress.phase("applying the erasure ledger");
    }
    let erased = erase_and_commit(transaction, &options.erasures, &plan.members, progress).await?;
    Ok((restored, warnings, erased))
}

/// The server process behind `client`, so a failing step can interrupt
/// the statements the other connections are running.
async fn backend_pid(client: &Client) -> Result<i32, PostgresError> {
    Ok(client
        .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading the restore connection's process id",
            source,
        })?
        .get(0))
}

/// A transaction with the restore's session settings.
async fn begin<'c>(
    client: &'c mut Client,
    what: &'static str,
) -> Result<tokio_postgres::Transaction<'c>, PostgresError> {
    let transaction = client
        .transaction()
        .await
        .map_err(|source| PostgresError::Query { what, source })?;
    exec(&transaction, "preparing the restore session", &session_settings()).await?;
    Ok(transaction)
}

/// What one step does.
enum Work<'s> {
    /// A table's data: all its parts, in one transaction that empties the
    /// table first, so the rows can be written frozen. (Two COPYs into one
    /// table contend for extending it and gained nothing; frozen rows spare
    /// the index builds and key checks that read them next a hint-bit
    /// rewrite of every page.)
    Load {
        table: &'s Table,
        parts: Vec<&'s SectionEntry>,
    },
    /// Constraints or indexes of one table (or of a partitioned family), in order.
    Statements {
        what: &'static str,
        statements: Vec<&'s str>,
    },
    /// Adds a foreign key: validated at once, or (`not_valid`) only
    /// recorded, for a [`Work::Validate`] step to check.
    ForeignKey {
        table: &'s Table,
        key: &'s ForeignKey,
        not_valid: bool,
    },
    /// Validates a foreign key added `NOT VALID`: this holds only a lock
    /// that lets the referenced table be read and indexed meanwhile, so
    /// foreign keys of different tables are checked at once.
    Validate { table: &'s Table, key: &'s ForeignKey },
}

impl std::fmt::Display for Work<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Load { table, parts } => write!(f, "loading {} ({} parts)", table.name, parts.len()),
            Self::Statements { what, statements } => {
                write!(f, "{what}: {}", statements.first().copied().unwrap_or_default())
            }
            Self::ForeignKey { table, key, .. } => write!(f, "foreign key {} on {}", key.name, table.name),
            Self::Validate { table, key } => write!(f, "validating {} on {}", key.name, table.name),
        }
    }
}

struct Step<'s> {
    work: Work<'s>,
    /// Steps that must be done first.
    after: Vec<usize>,
    /// Foreign keys: never two at once.
    one_at_a_time: bool,
}

/// Every step of phase 2, best first: a worker takes the first ready one,
/// so constraints and indexes (which free the critical path) go before
/// more loading, and loads go largest table first.
struct Steps<'s> {
    list: Vec<Step<'s>>,
}

impl<'s> Steps<'s> {
    fn plan<S: ObjectSource>(
        plan: &RestorePlan,
        schema: &'s DatabaseSchema,
        backup: &'s BackupReader<'_, S>,
        tables: &[&'s Table],
    ) -> Result<Self, PostgresError> {
        // Roots by their stored size, largest first.
        let mut roots: Vec<(&'s Table, Vec<&'s SectionEntry>, u64)> = Vec::new();
        for root in &plan.roots {
            let table = schema
                .table(root)
                .ok_or_else(|| PostgresError::MissingTableSection {
                    table: root.display(),
                })?;
            let sections =
                backup
                    .table(&root.schema, &root.name)
                    .ok_or_else(|| PostgresError::MissingTableSection {
                        table: root.display(),
                    })?;
            roots.push((table, sections.parts().to_vec(), sections.stored_bytes()));
        }
        roots.sort_by_key(|(_, _, stored)| std::cmp::Reverse(*stored));

        // Post-data steps first; loads are appended after them.
        let mut post: Vec<(Work<'s>, Vec<Dependency>, bool)> = Vec::new();
        // Per root: the post-data steps that must be done before a foreign
        // key may touch the family.
        let mut family_ready: BTreeMap<QualifiedName, Vec<Dependency>> = BTreeMap::new();
        for (root, _, _) in &roots {
            let family: Vec<&'s Table> = tables
                .iter()
                .copied()
                .filter(|t| schema.data_root(t).name == root.name)
                .collect();
            let loaded = Dependency::Loaded(root.name.clone());
            let mut ready = vec![loaded.clone()];
            if family.len() > 1 {
                // A partitioned family: its keys and indexes reach into the
                // partitions, so they go in order on one connection.
                // Partitions' own indexes first (deepest first: the family
                // lists parents first), which their parents' indexes take over.
                let statements: Vec<&'s str> = family
                    .iter()
                    .rev()
                    .flat_map(|t| t.partition_indexes.iter().map(String::as_str))
                    .chain(family.iter().flat_map(|t| {
                        t.constraints
                            .iter()
                            .map(|c| c.ddl.as_str())
                            .chain(t.indexes.iter().map(String::as_str))
                    }))
                    .collect();
                if !statements.is_empty() {
                    ready.push(Dependency::Post(post.len()));
                    post.push((
                        Work::Statements {
                            what: "adding constraints and indexes",
                            statements,
                        },
                        vec![loaded],
                        false,
                    ));
                }
            } else {
                let table = family.first().copied().unwrap_or(root);
                // Keys with a prebuilt index: their index is built as any
                // other, in parallel, and the constraint attached after.
                let keys: Vec<&'s KeyIndex> = table
                    .key_indexes
                    .iter()
                    .filter(|key| table.constraints.iter().any(|c| c.name.name == key.constraint))
                    .collect();
                let constraints: Vec<&'s str> = table
                    .constraints
                    .iter()
                    .filter(|c| !keys.iter().any(|key| key.constraint == c.name.name))
                    .map(|c| c.ddl.as_str())
                    .collect();
                let mut index_after = vec![loaded];
                if !constraints.is_empty() {
                    let step = post.len();
                    post.push((
                        Work::Statements {
                            what: "adding a constraint",
                            statements: constraints,
                        },
                        index_after.clone(),
                        false,
                    ));
                    ready.push(Dependency::Post(step));
                    index_after = vec![Dependency::Post(step)];
                }
                let mut built = Vec::new();
                let indexes = keys
                    .iter()
                    .map(|key| key.create_index.as_str())
                    .chain(table.indexes.iter().map(String::as_str));
                for index in indexes {
                    built.push(Dependency::Post(post.len()));
                    post.push((
                        Work::Statements {
                            what: "creating an index",
                            statements: vec![index],
                        },
                        index_after.clone(),
                        false,
                    ));
                }
                ready.extend(built.iter().cloned());
                if !keys.is_empty() {
                    // After every index build of the table, not only the
                    // keys': attaching locks the table against them.
                    ready.push(Dependency::Post(post.len()));
                    post.push((
                        Work::Statements {
                            what: "adding a key over its index",
                            statements: keys.iter().map(|key| key.attach.as_str()).collect(),
                        },
                        built,
                        false,
                    ));
                }
            }
            family_ready.insert(root.name.clone(), ready);
        }
        let mut validations = Vec::new();
        for table in tables {
            let own_root = &schema.data_root(table).name;
            for key in &table.foreign_keys {
                let mut after = family_ready.get(own_root).cloned().unwrap_or_default();
                let parent = schema.table(&key.references);
                if let Some(parent) = parent {
                    after.extend(
                        family_ready
                            .get(&schema.data_root(parent).name)
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                // NOT VALID then VALIDATE gives the same constraint; it is
                // not offered on partitioned tables before PostgreSQL 18,
                // and a key the backup holds NOT VALID stays as it is.
                let not_valid = table.kind == TableKind::Table
                    && parent.is_some_and(|p| p.kind == TableKind::Table)
                    && !key.ddl.trim_end().ends_with("NOT VALID");
                if not_valid {
                    validations.push((
                        Work::Validate { table, key },
                        vec![Dependency::Post(post.len())],
                        false,
                    ));
                }
                post.push((
                    Work::ForeignKey {
                        table,
                        key,
                        not_valid,
                    },
                    after,
                    true,
                ));
            }
        }
        post.extend(validations);

        let first_load = post.len();
        let load_steps: BTreeMap<QualifiedName, usize> = roots
            .iter()
            .enumerate()
            .map(|(index, (table, _, _))| (table.name.clone(), first_load + index))
            .collect();
        let mut list: Vec<Step<'s>> = Vec::new();
        let resolve = |dependencies: Vec<Dependency>| -> Vec<usize> {
            let mut after = Vec::new();
            for dependency in dependencies {
                match dependency {
                    Dependency::Post(index) => after.push(index),
                    Dependency::Loaded(root) => after.extend(load_steps.get(&root).copied()),
                }
            }
            after.sort_unstable();
            after.dedup();
            after
        };
        for (work, dependencies, one_at_a_time) in post {
            list.push(Step {
                work,
                after: resolve(dependencies),
                one_at_a_time,
            });
        }
        for (table, parts, _) in roots {
            list.push(Step {
                work: Work::Load { table, parts },
                after: Vec::new(),
                one_at_a_time: false,
            });
        }
        Ok(Self { list })
    }
}

#[derive(Debug, Clone)]
enum Dependency {
    /// This root's data.
    Loaded(QualifiedName),
    /// A post-data step, by its index in the list.
    Post(usize),
}

/// Which steps are taken and done, shared by the workers.
struct Board {
    taken: Vec<bool>,
    done: Vec<bool>,
    running: usize,
    one_at_a_time_running: bool,
    /// The foreign key being added (table, referenced table).
    adding: Option<(QualifiedName, QualifiedName)>,
    /// Tables whose foreign key is being validated.
    validating: std::collections::BTreeSet<QualifiedName>,
    rows: BTreeMap<QualifiedName, u64>,
    warnings: Vec<String>,
    /// A step failed: no new step starts.
    failed: bool,
    /// The end of the load was announced (the steps after it named).
    load_announced: bool,
}

enum Next {
    Run(usize),
    Wait,
    Finished,
}

impl Board {
    fn new(steps: usize) -> Self {
        Self {
            taken: vec![false; steps],
            done: vec![false; steps],
            running: 0,
            one_at_a_time_running: false,
            adding: None,
            validating: std::collections::BTreeSet::new(),
            rows: BTreeMap::new(),
            warnings: Vec::new(),
            failed: false,
            load_announced: false,
        }
    }

    /// Once, when every table is loaded and steps remain (keys, indexes,
    /// foreign keys): how many remain. The bytes bar is full then, and
    /// must not sit at 100 % while the indexes are built.
    fn after_the_load(&mut self, steps: &Steps<'_>) -> Option<usize> {
        if self.load_announced || self.failed {
            return None;
        }
        let loads_done = steps
            .list
            .iter()
            .zip(&self.done)
            .all(|(step, done)| *done || !matches!(step.work, Work::Load { .. }));
        let left = self.done.iter().filter(|done| !**done).count();
        if !loads_done || left == 0 {
            return None;
        }
        self.load_announced = true;
        Some(left)
    }

    fn next(&mut self, steps: &Steps<'_>) -> Next {
        if self.failed {
            return Next::Finished;
        }
        let ready = |index: usize, step: &Step<'_>| {
            let blocked = (step.one_at_a_time && self.one_at_a_time_running) || self.would_wait(&step.work);
            !self.taken[index] && !blocked && step.after.iter().all(|&before| self.done[before])
        };
        let pick = steps
            .list
            .iter()
            .enumerate()
            .position(|(index, step)| ready(index, step));
        match pick {
            Some(index) => {
                self.taken[index] = true;
                self.running += 1;
                let step = &steps.list[index];
                if step.one_at_a_time {
                    self.one_at_a_time_running = true;
                }
                match step.work {
                    Work::ForeignKey { table, key, .. } => {
                        self.adding = Some((table.name.clone(), key.references.clone()));
                    }
                    Work::Validate { table, .. } => {
                        self.validating.insert(table.name.clone());
                    }
                    Work::Load { .. } | Work::Statements { .. } => {}
                }
                Next::Run(index)
            }
            // Nothing ready and nothing running that could make a step
            // ready: done (or, if steps are left, the caller reports it).
            None if self.running == 0 => Next::Finished,
            None => Next::Wait,
        }
    }

    /// Whether `work` would wait for a lock a running step holds: adding a
    /// foreign key locks both of its tables against a validation of either;
    /// a validation locks its table against another validation of it and
    /// against adding a foreign key that touches it.
    fn would_wait(&self, work: &Work<'_>) -> bool {
        match work {
            Work::ForeignKey { table, key, .. } => {
                self.validating.contains(&table.name) || self.validating.contains(&key.references)
            }
            Work::Validate { table, .. } => {
                self.validating.contains(&table.name)
                    || self
                        .adding
                        .as_ref()
                        .is_some_and(|(child, parent)| child == &table.name || parent == &table.name)
            }
            Work::Load { .. } | Work::Statements { .. } => false,
        }
    }

    fn finish(&mut self, steps: &Steps<'_>, index: usize, outcome: StepOutcome) {
        self.done[index] = true;
        self.running -= 1;
        let step = &steps.list[index];
        if step.one_at_a_time {
            self.one_at_a_time_running = false;
        }
        match step.work {
            Work::ForeignKey { .. } => self.adding = None,
            Work::Validate { table, .. } => {
                self.validating.remove(&table.name);
            }
            Work::Load { .. } | Work::Statements { .. } => {}
        }
        match outcome {
            StepOutcome::Loaded { table, rows } => *self.rows.entry(table).or_default() += rows,
            StepOutcome::Warning(warning) => self.warnings.push(warning),
            StepOutcome::Done => {}
        }
    }
}

enum StepOutcome {
    Loaded { table: QualifiedName, rows: u64 },
    Warning(String),
    Done,
}

/// What the workers share.
struct Crew<'a, 's> {
    steps: &'a Steps<'s>,
    board: &'a Mutex<Board>,
    wake: &'a Notify,
    /// The server process of each connection, by worker number.
    backends: &'a [i32],
}

/// One connection's loop: take the next ready step, run it in its own
/// transaction, mark it done, wake the others. When its step fails, it
/// stops the board and interrupts the statements of the other connections
/// (from its own, free again once its step's transaction rolled back):
/// an index build left running would hold its table's lock, and the
/// removal of what the restore created would wait for it to end.
async fn work<S: ObjectSource>(
    client: &mut Client,
    worker: usize,
    crew: &Crew<'_, '_>,
    backup: &BackupReader<'_, S>,
    progress: &dyn Progress,
) -> Result<(), PostgresError> {
    let Crew {
        steps, board, wake, ..
    } = *crew;
    loop {
        // Registered before looking, so a step finishing in between still wakes us.
        let woken = wake.notified();
        let next = board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next(steps);
        match next {
            Next::Finished => {
                wake.notify_waiters();
                return Ok(());
            }
            Next::Wait => woken.await,
            Next::Run(index) => {
                let started = std::time::Instant::now();
                let work = &steps.list[index].work;
                let outcome = match run_step(client, work, backup, progress).await {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        let already_failed = std::mem::replace(
                            &mut board
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .failed,
                            true,
                        );
                        wake.notify_waiters();
                        if already_failed {
                            // Another step failed first and interrupted this
                            // one: that failure is the restore's error, and
                            // this worker's cancellation only its consequence
                            // (which could otherwise reach the caller first).
                            tracing::debug!(%error, step = %work, "a restore step stopped after another one failed");
                            return Ok(());
                        }
                        interrupt_others(client, worker, crew.backends).await;
                        return Err(error);
                    }
                };
                tracing::debug!(step = %work, ms = started.elapsed().as_millis(), "restore step done");
                let left = {
                    let mut board = board.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    board.finish(steps, index, outcome);
                    board.after_the_load(steps)
                };
                wake.notify_waiters();
                if let Some(left) = left {
                    progress.phase(&format!(
                        "all rows loaded; adding keys, indexes and foreign keys ({left} steps)"
                    ));
                }
            }
        }
    }
}

/// Cancels whatever the other connections are running (best effort: the
/// restore's error is the one to report).
async fn interrupt_others(client: &Client, worker: usize, backends: &[i32]) {
    let others: Vec<i32> = backends
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != worker)
        .map(|(_, pid)| *pid)
        .collect();
    if let Err(error) = client
        .execute(
            "SELECT pg_catalog.pg_cancel_backend(pid) FROM unnest($1::int[]) AS pid",
            &[&others],
        )
        .await
    {
        tracing::warn!(%error, "could not interrupt the restore's other connections; removing what it created waits for their statements to end");
    }
}

async fn run_step<S: ObjectSource>(
    client: &mut Client,
    work: &Work<'_>,
    backup: &BackupReader<'_, S>,
    progress: &dyn Progress,
) -> Result<StepOutcome, PostgresError> {
    let transaction = begin(client, "starting a restore step").await?;
    #[cfg(debug_assertions)]
    test_pause(&transaction, work, "before").await?;
    let outcome = match work {
        Work::Load { table, parts } => {
            let freeze = can_load_frozen(table);
            if freeze {
                let empty = format!("TRUNCATE ONLY {}", table.name.quoted());
                exec(&transaction, "emptying a new table to load it frozen", &empty).await?;
            }
            #[cfg(debug_assertions)]
            test_pause(&transaction, work, "load").await?;
            let rows = copy_parts(backup, &transaction, table, parts, freeze, progress).await?;
            StepOutcome::Loaded {
                table: table.name.clone(),
                rows,
            }
        }
        Work::Statements { what, statements } => {
            // Constraints, indexes and keys over them: each run as it will
            // read back as the backup printed it.
            for statement in statements {
                exec(&transaction, what, &super::reparse::as_printed(statement)).await?;
            }
            StepOutcome::Done
        }
        Work::ForeignKey {
            table,
            key,
            not_valid,
        } => {
            if relation_exists(&transaction, &key.references).await? {
                if *not_valid {
                    let unchecked = format!("{} NOT VALID", key.ddl.trim_end());
                    exec(&transaction, "adding a foreign key", &unchecked).await?;
                } else {
                    exec(&transaction, "adding a foreign key", &key.ddl).await?;
                }
                StepOutcome::Done
            } else {
                StepOutcome::Warning(format!(
                    "foreign key {} on {} not created: {} is not in the target",
                    key.name,
                    table.name.display(),
                    key.references.display()
                ))
            }
        }
        Work::Validate { table, key } => {
            // Not there when its table or referenced table was missing
            // (reported by the step that would have added it).
            let added = transaction
                .query_opt(
                    "SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2",
                    &[&table.name.quoted(), &key.name],
                )
                .await
                .map_err(|source| PostgresError::Query {
                    what: "looking up a foreign key to validate",
                    source,
                })?
                .is_some();
            if added {
                let validate = format!(
                    "ALTER TABLE ONLY {} VALIDATE CONSTRAINT {}",
                    table.name.quoted(),
                    super::quote_ident(&key.name)
                );
                exec(&transaction, "validating a foreign key", &validate).await?;
            }
            StepOutcome::Done
        }
    };
    commit(transaction, "committing a restore step").await?;
    Ok(outcome)
}

/// Test builds only (`debug_assertions`): `BACKUPCTL_TEST_PAUSE_AT=load`,
/// `index` or `foreign-key` (or the target database's setting
/// `backupctl.test_pause`) holds every such step, inside its transaction
/// (a load after its TRUNCATE, so it holds the table's lock), on a
/// server-side `pg_sleep` that only a cancel ends: the interruption tests
/// stop a restore at a known moment, with a statement running.
#[cfg(debug_assertions)]
async fn test_pause(
    transaction: &tokio_postgres::Transaction<'_>,
    work: &Work<'_>,
    point: &str,
) -> Result<(), PostgresError> {
    // Or, for tests that run the restore in their own process (the Lambda
    // handlers'), the target database's setting `backupctl.test_pause`.
    let at = match std::env::var("BACKUPCTL_TEST_PAUSE_AT") {
        Ok(at) => at,
        Err(_) => transaction
            .query_one("SELECT current_setting('backupctl.test_pause', true)", &[])
            .await
            .map_err(|source| PostgresError::Query {
                what: "reading the test pause setting",
                source,
            })?
            .get::<_, Option<String>>(0)
            .unwrap_or_default(),
    };
    let here = match work {
        Work::Load { .. } => point == "load" && at == "load",
        Work::Statements { what, .. } => point == "before" && at == "index" && *what == "creating an index",
        Work::ForeignKey { .. } => point == "before" && at == "foreign-key",
        Work::Validate { .. } => false,
    };
    if here {
        eprintln!("backupctl test hook: paused at {work}");
        exec(
            transaction,
            "pausing for a test",
            "SELECT pg_catalog.pg_sleep(3600)",
        )
        .await?;
    }
    Ok(())
}

/// Drops what the restore created: its tables first (with what hangs on
/// them), then the rest newest first. Objects other than tables are dropped
/// without CASCADE, so nothing made by someone else in the meantime goes
/// with them. On failure, returns what is still there.
async fn remove_created(
    client: &mut Client,
    created: &[CreatedObject],
) -> Result<(), (String, tokio_postgres::Error)> {
    let tables: Vec<&str> = created
        .iter()
        .filter(|object| object.kind == "TABLE")
        .map(|object| object.name.as_str())
        .collect();
    // (statement, what it drops as the error would name it)
    let mut statements: Vec<(String, String)> = Vec::new();
    if !tables.is_empty() {
        statements.push((
            format!("DROP TABLE IF EXISTS {} CASCADE", tables.join(", ")),
            format!("TABLE {}", tables.join(", TABLE ")),
        ));
    }
    for object in created.iter().rev().filter(|object| object.kind != "TABLE") {
        statements.push((
            format!("DROP {} IF EXISTS {}", object.kind, object.name),
            format!("{} {}", object.kind, object.name),
        ));
    }
    for (index, (statement, _)) in statements.iter().enumerate() {
        let mut dropped = client.batch_execute(statement).await;
        if dropped
            .as_ref()
            .is_err_and(|error| error.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED))
        {
            // A cancel request meant for an interrupted step arrived late.
            dropped = client.batch_execute(statement).await;
        }
        if let Err(error) = dropped {
            let remaining: Vec<&str> = statements[index..]
                .iter()
                .map(|(_, what)| what.as_str())
                .collect();
            return Err((remaining.join(", "), error));
        }
    }
    Ok(())
}

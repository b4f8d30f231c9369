//! A restore proves what it built. Tables it is to load into that already
//! exist must be the backup's tables (else the restore is refused, or with
//! `replace_existing` they are dropped and created again); and before it
//! commits, the restored tables are read back from the catalog and compared
//! with the backup's schema section: columns, constraints, foreign keys,
//! indexes, triggers and their states, storage parameters, replica
//! identity and row-level security, as the server prints them; the
//! sequences it set (options, identity options, owning column, value); and
//! the owners and grants (table and column) when it applied them, less
//! those it skipped with a warning; the other objects, comments and
//! database properties by name (`super::named`). Row counts are compared
//! as each table loads (`RowCountMismatch`).

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Transaction;

use super::{PostgresError, RestorePlan, relation_exists, skipped_by};
use crate::postgres::catalog::{
    PrivilegeRow, capture_privileges_now, capture_sequences_now, capture_tables_now,
};
use crate::postgres::plan::{DEFAULT_KEY, part_owner};
use crate::postgres::schema::{
    DatabaseSchema, QualifiedName, RoleStatement, Sequence, Table, TableKind, quote_ident,
};
use crate::postgres::tablespaces::unplaced;

/// What differs, per table.
pub(super) type Differences = Vec<(QualifiedName, Vec<String>)>;

/// How the tables `members` (chosen tables and their partitions) in the
/// target differ from the backup's. Empty when they match.
pub(super) async fn differences(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
    members: &BTreeSet<QualifiedName>,
) -> Result<Differences, PostgresError> {
    let mut roots = Vec::new();
    let mut references = BTreeSet::new();
    for table in schema.tables.iter().filter(|t| members.contains(&t.name)) {
        if table.kind != TableKind::Partition && relation_exists(client, &table.name).await? {
            roots.push(table.name.clone());
        }
        references.extend(table.foreign_keys.iter().map(|key| key.references.clone()));
    }
    // A foreign key to a table the target lacks is not created (a warning
    // of the restore), so its absence is no difference.
    let mut present = BTreeSet::new();
    for name in references {
        if relation_exists(client, &name).await? {
            present.insert(name);
        }
    }
    // Defaults the backup created apart were left out of its tables' DDL.
    let split_defaults: BTreeSet<(QualifiedName, String)> = schema
        .objects
        .iter()
        .filter(|object| object.key.starts_with(DEFAULT_KEY))
        .filter_map(|object| part_owner(&object.key))
        .collect();
    let target: BTreeMap<QualifiedName, Table> = capture_tables_now(client, &roots, &split_defaults)
        .await?
        .into_iter()
        .map(|table| (table.name.clone(), table))
        .collect();
    let mut found = Differences::new();
    for table in schema.tables.iter().filter(|t| members.contains(&t.name)) {
        match target.get(&table.name) {
            None => found.push((table.name.clone(), vec!["the table is missing".into()])),
            Some(here) => {
                let differences = table_differences(table, here, &|name| present.contains(name));
                if !differences.is_empty() {
                    found.push((table.name.clone(), differences));
                }
            }
        }
    }
    for name in target.keys().filter(|name| !members.contains(*name)) {
        found.push((name.clone(), vec!["this partition is not in the backup".into()]));
    }
    Ok(found)
}

/// Fails with [`PostgresError::RestoreDiffers`] when what the restore
/// built differs from the backup's schema section: the tables, the
/// sequences it set (options, identity options, owning column, value),
/// the other objects it created, matched by name (`named`), the comments
/// and database properties it applied, the roles it created
/// (`roles_created`, `created_roles`) and, when it applied them (it
/// created tables), the owners and grants. `warnings`: the restore's,
/// which name each thing it skipped. Run in the restore's last
/// transaction, so the failure undoes the restore.
pub(super) async fn prove_restored(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
    plan: &RestorePlan,
    warnings: &[String],
    created_tables: bool,
    roles_created: &[String],
) -> Result<(), PostgresError> {
    let mut found = describe(&differences(client, schema, &plan.members).await?);
    let mut more = sequence_differences(client, schema, plan).await?;
    more.extend(super::named::named_differences(client, schema, plan, warnings, created_tables).await?);
    more.extend(
        super::created_roles::role_differences(client, schema, roles_created, plan.create_roles, warnings)
            .await?,
    );
    if created_tables {
        let tables: Vec<QualifiedName> = plan.members.iter().cloned().collect();
        let here = capture_privileges_now(client, &tables).await?;
        let skipped = |statement: &str| warnings.iter().any(|w| skipped_by(w, statement));
        let privileges = privilege_differences(&schema.privileges, &here, &skipped, &plan.privileged_before);
        if !privileges.is_empty() {
            more.push(format!("owners and grants: {}", privileges.join(", ")));
        }
    }
    for difference in more {
        if !found.is_empty() {
            found.push_str("; ");
        }
        found.push_str(&difference);
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(PostgresError::RestoreDiffers { differences: found })
}

/// The objects whose owner or grants the target holds before the restore
/// (`(kind, object)` of [`PrivilegeRow`]): the restore gives them the
/// backup's owner and grants but takes none of their own away, so grants
/// they had before are no difference.
pub(super) async fn privileged_objects(
    client: &Transaction<'_>,
    members: &BTreeSet<QualifiedName>,
) -> Result<BTreeSet<(String, String)>, PostgresError> {
    let tables: Vec<QualifiedName> = members.iter().cloned().collect();
    Ok(capture_privileges_now(client, &tables)
        .await?
        .into_iter()
        .map(|row| (row.kind, row.object))
        .collect())
}

/// `sequence public.orders_id_seq: …` for each sequence the restore set
/// (as `set_sequences` chooses them) that differs from the backup's, and
/// for each sequence owned by a restored table that the backup lacks.
async fn sequence_differences(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
    plan: &RestorePlan,
) -> Result<Vec<String>, PostgresError> {
    let belongs = |sequence: &Sequence| match &sequence.owned_by {
        Some(owner) => plan.members.contains(&owner.table),
        None => plan.full_restore,
    };
    let names: BTreeSet<QualifiedName> = schema
        .sequences
        .iter()
        .filter(|s| belongs(s))
        .map(|s| s.name.clone())
        .collect();
    let here: BTreeMap<QualifiedName, Sequence> = capture_sequences_now(client, &plan.members, &names)
        .await?
        .into_iter()
        .map(|sequence| (sequence.name.clone(), sequence))
        .collect();
    let mut found = Vec::new();
    for sequence in schema.sequences.iter().filter(|s| belongs(s)) {
        let differences = match here.get(&sequence.name) {
            None => vec!["the sequence is missing".to_owned()],
            Some(here) => sequence_differs(sequence, here),
        };
        if !differences.is_empty() {
            found.push(format!(
                "sequence {}: {}",
                sequence.name.display(),
                differences.join(", ")
            ));
        }
    }
    let recorded: BTreeSet<&QualifiedName> = schema.sequences.iter().map(|s| &s.name).collect();
    for sequence in here.values().filter(|s| !recorded.contains(&s.name)) {
        if let Some(owner) = &sequence.owned_by
            && plan.members.contains(&owner.table)
        {
            found.push(format!(
                "sequence {}: it is not in the backup (owned by {}.{})",
                sequence.name.display(),
                owner.table.display(),
                owner.column
            ));
        }
    }
    Ok(found)
}

/// How the target's sequence `here` differs from the backup's.
fn sequence_differs(backup: &Sequence, here: &Sequence) -> Vec<String> {
    let mut found = Vec::new();
    let identity = |sequence: &Sequence| {
        if sequence.identity {
            "an identity sequence"
        } else {
            "not an identity sequence"
        }
    };
    if backup.identity != here.identity {
        found.push(format!(
            "{} here, {} in the backup",
            identity(here),
            identity(backup)
        ));
    }
    if backup.ddl != here.ddl {
        let what = if backup.identity {
            "identity options"
        } else {
            "options"
        };
        found.push(format!(
            "{what} `{}` here, `{}` in the backup",
            here.ddl.as_deref().unwrap_or_default(),
            backup.ddl.as_deref().unwrap_or_default()
        ));
    }
    if backup.owned_by != here.owned_by {
        let owner = |sequence: &Sequence| {
            sequence.owned_by.as_ref().map_or_else(
                || "owned by no column".to_owned(),
                |owner| format!("owned by {}.{}", owner.table.display(), owner.column),
            )
        };
        found.push(format!("{} here, {} in the backup", owner(here), owner(backup)));
    }
    if (backup.last_value, backup.is_called) != (here.last_value, here.is_called) {
        found.push(format!(
            "value {} (is_called {}) here, {} (is_called {}) in the backup",
            here.last_value, here.is_called, backup.last_value, backup.is_called
        ));
    }
    found
}

/// Whether `statement` is about the object of `row`: its owner, one of its
/// grants (table or column) or its `REVOKE … FROM PUBLIC`, as
/// `capture_privileges` prints them.
fn about(statement: &str, row: &PrivilegeRow) -> bool {
    statement.starts_with(&owner_prefix(row))
        || (statement.starts_with("GRANT ")
            && statement.contains(&format!(" ON {} {} TO ", row.grant_kind, row.object)))
        || statement == format!("REVOKE ALL ON {} {} FROM PUBLIC", row.grant_kind, row.object)
}

fn owner_prefix(row: &PrivilegeRow) -> String {
    format!("ALTER {} {} OWNER TO ", row.kind, row.object)
}

/// How the owners and grants in the target (`here`) differ from the
/// backup's (`backup`): each backup statement the restore applied must be
/// there, and an object the restore made holds nothing else. A statement
/// the restore skipped with a warning (its role is missing here, or the
/// restoring role may not make it) is no difference, nor is the owner an
/// object has instead of a skipped owner (it belongs to the restoring
/// role), nor a skipped owner's grant to that role (it owns the object).
fn privilege_differences(
    backup: &[RoleStatement],
    here: &[PrivilegeRow],
    skipped: &dyn Fn(&str) -> bool,
    before: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let held: BTreeSet<&str> = here.iter().map(|row| row.statement.statement.as_str()).collect();
    let recorded: BTreeSet<&str> = backup.iter().map(|s| s.statement.as_str()).collect();
    // An object whose recorded owner was skipped: its owner here.
    let owner_skipped = |row: &PrivilegeRow| -> Option<&str> {
        let prefix = owner_prefix(row);
        backup
            .iter()
            .any(|s| s.statement.starts_with(&prefix) && skipped(&s.statement))
            .then(|| {
                here.iter()
                    .find(|other| other.statement.statement.starts_with(&prefix))
                    .map(|other| other.statement.role.as_str())
            })
            .flatten()
    };
    let mut found = Vec::new();
    for statement in backup {
        let text = statement.statement.as_str();
        if held.contains(text) || skipped(text) {
            continue;
        }
        let implied_by_owner = here
            .iter()
            .find(|row| about(text, row))
            .and_then(&owner_skipped)
            .is_some_and(|owner| owner == statement.role);
        if !implied_by_owner {
            found.push(format!("missing `{text}`"));
        }
    }
    let mut extra = BTreeSet::new();
    for row in here {
        let text = row.statement.statement.as_str();
        if recorded.contains(text)
            || before.contains(&(row.kind.clone(), row.object.clone()))
            || !backup.iter().any(|s| about(&s.statement, row))
        {
            continue;
        }
        let excused = text.starts_with(&owner_prefix(row)) && owner_skipped(row).is_some();
        if !excused {
            extra.insert(text);
        }
    }
    found.extend(
        extra
            .into_iter()
            .map(|text| format!("`{text}` is not in the backup")),
    );
    found
}

/// `--replace-existing`: drops the chosen tables whose definition differs,
/// in the restore's transaction; they are then created as new. Without
/// CASCADE: what else depends on them refuses it, by name.
pub(super) async fn drop_replaced(
    client: &Transaction<'_>,
    roots: &[QualifiedName],
) -> Result<(), PostgresError> {
    let names: Vec<String> = roots.iter().map(QualifiedName::quoted).collect();
    client
        .batch_execute(&format!("DROP TABLE {}", names.join(", ")))
        .await
        .map_err(|source| PostgresError::ReplaceFailed {
            tables: roots
                .iter()
                .map(QualifiedName::display)
                .collect::<Vec<_>>()
                .join(", "),
            source,
        })
}

/// `orders: missing primary key orders_pkey, missing index orders_day; customers: …`
pub(super) fn describe(found: &Differences) -> String {
    found
        .iter()
        .map(|(table, differences)| format!("{}: {}", table.display(), differences.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// How `here` (the target's) differs from `backup` (the backup's).
/// `present`: whether a referenced table is in the target.
fn table_differences(backup: &Table, here: &Table, present: &dyn Fn(&QualifiedName) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    // Identity sequence options are not read back from the target.
    let (backup_ddl, here_ddl) = (
        without_identity_options(&backup.create_ddl),
        without_identity_options(&here.create_ddl),
    );
    if backup_ddl != here_ddl {
        let (ours, theirs) = (columns(&backup_ddl), columns(&here_ddl));
        let before = found.len();
        for (name, definition) in &ours {
            match theirs.get(name) {
                None => found.push(format!("missing column {name}")),
                Some(other) if other != definition => found.push(format!(
                    "column {name} is `{other}` here, `{definition}` in the backup"
                )),
                Some(_) => {}
            }
        }
        for name in theirs.keys().filter(|name| !ours.contains_key(*name)) {
            found.push(format!("column {name} is not in the backup"));
        }
        if found.len() == before {
            found.push(format!(
                "the table is `{here_ddl}` here, `{backup_ddl}` in the backup"
            ));
        }
    }
    // (name, kind) → statement: a trigger may share a constraint's name.
    let named = |table: &Table| -> BTreeMap<(String, &'static str), String> {
        let mut named = BTreeMap::new();
        // Where a key or an index is stored is not part of its definition:
        // one restored where its tablespace was missing is still the
        // backup's (tablespaces.rs).
        for constraint in &table.constraints {
            let ddl = unplaced(&constraint.ddl);
            let kind = constraint_kind(ddl, &constraint.name.name);
            named.insert((constraint.name.name.clone(), kind), ddl.to_owned());
        }
        for key in &table.foreign_keys {
            named.insert((key.name.clone(), "foreign key"), key.ddl.clone());
        }
        for index in table.indexes.iter().map(|index| unplaced(index)) {
            named.insert((name_after(index, "INDEX "), "index"), index.to_owned());
        }
        for trigger in table.triggers.iter().filter(|t| t.starts_with("CREATE ")) {
            named.insert((name_after(trigger, "TRIGGER "), "trigger"), trigger.clone());
        }
        named
    };
    let (ours, theirs) = (named(backup), named(here));
    for ((name, kind), ddl) in &ours {
        match theirs.get(&(name.clone(), *kind)) {
            None => {
                let skipped = *kind == "foreign key"
                    && backup
                        .foreign_keys
                        .iter()
                        .any(|k| &k.name == name && !present(&k.references));
                if !skipped {
                    found.push(format!("missing {kind} {name}"));
                }
            }
            Some(other) if other != ddl => found.push(format!("{kind} {name} differs: `{other}` here")),
            Some(_) => {}
        }
    }
    for (name, kind) in theirs.keys().filter(|key| !ours.contains_key(*key)) {
        found.push(format!("{kind} {name} is not in the backup"));
    }
    // A disabled trigger, a storage parameter, the replica identity or a
    // policy changes what the table does without changing its shape: the
    // capture prints each as one statement, the same way on both sides.
    let statements = |list: &[String], keep: fn(&&String) -> bool| -> BTreeSet<String> {
        list.iter().filter(keep).cloned().collect()
    };
    let trigger_state: fn(&&String) -> bool = |statement| !statement.starts_with("CREATE ");
    let every: fn(&&String) -> bool = |_| true;
    for (what, ours, theirs) in [
        (
            "trigger state",
            statements(&backup.triggers, trigger_state),
            statements(&here.triggers, trigger_state),
        ),
        (
            "setting",
            statements(&backup.settings, every),
            statements(&here.settings, every),
        ),
        (
            "row-level security",
            statements(&backup.row_security, every),
            statements(&here.row_security, every),
        ),
    ] {
        for statement in ours.difference(&theirs) {
            found.push(format!("missing {what} `{statement}`"));
        }
        for statement in theirs.difference(&ours) {
            found.push(format!("{what} `{statement}` is not in the backup"));
        }
    }
    found
}

/// `primary key`, `unique constraint`, … from `ALTER TABLE … ADD CONSTRAINT "name" <definition>`.
fn constraint_kind(ddl: &str, name: &str) -> &'static str {
    let marker = format!("ADD CONSTRAINT {} ", quote_ident(name));
    let definition = ddl.split_once(&marker).map_or("", |(_, definition)| definition);
    if definition.starts_with("PRIMARY KEY") {
        "primary key"
    } else if definition.starts_with("UNIQUE") {
        "unique constraint"
    } else if definition.starts_with("CHECK") {
        "check constraint"
    } else if definition.starts_with("EXCLUDE") {
        "exclusion constraint"
    } else {
        "constraint"
    }
}

/// The (unquoted) identifier after the first `marker`: the index of
/// `CREATE [UNIQUE] INDEX name ON …`, the trigger of `CREATE TRIGGER name …`.
fn name_after(statement: &str, marker: &str) -> String {
    let rest = statement.split_once(marker).map_or(statement, |(_, rest)| rest);
    match rest.strip_prefix('"') {
        Some(quoted) => {
            let mut name = String::new();
            let mut chars = quoted.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                    } else {
                        break;
                    }
                }
                name.push(c);
            }
            name
        }
        None => rest.split(' ').next().unwrap_or_default().to_owned(),
    }
}

/// The column definitions of `CREATE TABLE name (col type …, …) …` by
/// column name, identity sequence options left out; empty for a partition
/// (`PARTITION OF`), whose columns are its parent's.
fn columns(create_ddl: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    // Skip `CREATE … TABLE "schema"."name" ` (quotes may hold parentheses).
    let mut in_identifier = false;
    let mut start = None;
    for (at, c) in create_ddl.char_indices() {
        match c {
            '"' => in_identifier = !in_identifier,
            '(' if !in_identifier => {
                start = Some(at + 1);
                break;
            }
            _ => {}
        }
    }
    let Some(start) = start else {
        return found;
    };
    if create_ddl[..start].contains(" PARTITION OF ") {
        return found;
    }
    let (mut depth, mut quote, mut from) = (0usize, None::<char>, start);
    let mut definitions = Vec::new();
    for (at, c) in create_ddl[start..].char_indices() {
        let at = start + at;
        match (quote, c) {
            (Some(open), c) if c == open => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') if depth == 0 => {
                definitions.push(&create_ddl[from..at]);
                break;
            }
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                definitions.push(&create_ddl[from..at]);
                from = at + 1;
            }
            _ => {}
        }
    }
    for definition in definitions {
        let definition = definition.trim();
        if definition.is_empty() {
            continue;
        }
        found.insert(name_after(definition, ""), definition.to_owned());
    }
    found
}

/// Every `… AS IDENTITY (SEQUENCE NAME … CACHE 1)` → `… AS IDENTITY`.
fn without_identity_options(ddl: &str) -> String {
    const MARKER: &str = "AS IDENTITY (";
    let mut out = String::with_capacity(ddl.len());
    let mut rest = ddl;
    while let Some(at) = rest.find(MARKER) {
        out.push_str(&rest[..at]);
        out.push_str("AS IDENTITY");
        let options = &rest[at + MARKER.len()..];
        let mut depth = 1usize;
        let mut end = options.len();
        for (offset, c) in options.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = offset + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &options[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::schema::{ForeignKey, NamedDdl};

    fn orders(complete: bool) -> Table {
        let name = QualifiedName::new("public", "orders");
        let mut table = Table {
            name: name.clone(),
            kind: TableKind::Table,
            parent: None,
            create_ddl: "CREATE TABLE \"public\".\"orders\" (\"id\" bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME \"public\".\"orders_id_seq\" START WITH 1), \"total\" numeric(10,2) DEFAULT 0.00 NOT NULL, \"note\" text DEFAULT 'a, (b'::text)".into(),
            copy_columns: vec!["id".into(), "total".into(), "note".into()],
            constraints: Vec::new(),
            foreign_keys: Vec::new(),
            indexes: Vec::new(),
            partition_indexes: Vec::new(),
            triggers: Vec::new(),
            settings: Vec::new(),
            row_security: Vec::new(),
            key_indexes: Vec::new(),
            tablespace: None,
        };
        if complete {
            table.constraints.push(NamedDdl::new(
                QualifiedName::new("public", "orders_pkey"),
                "ALTER TABLE ONLY \"public\".\"orders\" ADD CONSTRAINT \"orders_pkey\" PRIMARY KEY (id)"
                    .into(),
            ));
            table.foreign_keys.push(ForeignKey {
                name: "orders_customer_fk".into(),
                references: QualifiedName::new("public", "customers"),
                ddl: "ALTER TABLE \"public\".\"orders\" ADD CONSTRAINT \"orders_customer_fk\" FOREIGN KEY (customer) REFERENCES public.customers(id)".into(),
            });
            table
                .indexes
                .push("CREATE INDEX \"Orders By Day\" ON public.orders USING btree (total)".into());
            table
                .triggers
                .push("CREATE TRIGGER orders_audit AFTER INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.audit()".into());
        }
        table
    }

    #[test]
    fn a_half_made_table_is_told_apart_by_what_it_lacks() {
        let present = |_: &QualifiedName| true;
        assert!(table_differences(&orders(true), &orders(true), &present).is_empty());
        let found = table_differences(&orders(true), &orders(false), &present);
        assert_eq!(
            found,
            vec![
                "missing index Orders By Day",
                "missing trigger orders_audit",
                "missing foreign key orders_customer_fk",
                "missing primary key orders_pkey",
            ],
            "{found:?}"
        );
        // A foreign key to a table the target lacks is not expected.
        let absent = |_: &QualifiedName| false;
        assert!(
            !table_differences(&orders(true), &orders(false), &absent)
                .contains(&"missing foreign key orders_customer_fk".to_owned())
        );
        // Extra objects are differences too.
        let found = table_differences(&orders(false), &orders(true), &present);
        assert!(
            found.contains(&"primary key orders_pkey is not in the backup".to_owned()),
            "{found:?}"
        );
    }

    #[test]
    fn a_trigger_left_enabled_a_lost_setting_or_policy_is_a_difference() {
        let mut backup = orders(true);
        backup
            .triggers
            .push("ALTER TABLE \"public\".\"orders\" DISABLE TRIGGER \"orders_audit\"".into());
        backup
            .settings
            .push("ALTER TABLE \"public\".\"orders\" SET (fillfactor='70')".into());
        backup
            .row_security
            .push("ALTER TABLE \"public\".\"orders\" ENABLE ROW LEVEL SECURITY".into());
        assert!(table_differences(&backup, &backup, &|_| true).is_empty());
        let mut here = orders(true);
        here.row_security
            .push("ALTER TABLE \"public\".\"orders\" FORCE ROW LEVEL SECURITY".into());
        let found = table_differences(&backup, &here, &|_| true);
        assert_eq!(
            found,
            vec![
                "missing trigger state `ALTER TABLE \"public\".\"orders\" DISABLE TRIGGER \"orders_audit\"`",
                "missing setting `ALTER TABLE \"public\".\"orders\" SET (fillfactor='70')`",
                "missing row-level security `ALTER TABLE \"public\".\"orders\" ENABLE ROW LEVEL SECURITY`",
                "row-level security `ALTER TABLE \"public\".\"orders\" FORCE ROW LEVEL SECURITY` is not in the backup",
            ],
            "{found:?}"
        );
    }

    #[test]
    fn columns_are_compared_one_by_one_without_identity_options() {
        let mut here = orders(false);
        here.create_ddl = "CREATE TABLE \"public\".\"orders\" (\"id\" bigint GENERATED ALWAYS AS IDENTITY, \"total\" numeric DEFAULT 0.00 NOT NULL, \"extra\" integer)".into();
        let found = table_differences(&orders(false), &here, &|_| true);
        assert_eq!(
            found,
            vec![
                "missing column note",
                "column total is `\"total\" numeric DEFAULT 0.00 NOT NULL` here, `\"total\" numeric(10,2) DEFAULT 0.00 NOT NULL` in the backup",
                "column extra is not in the backup",
            ],
            "{found:?}"
        );
    }

    fn row(kind: &str, object: &str, role: &str, statement: &str) -> PrivilegeRow {
        PrivilegeRow {
            kind: kind.into(),
            grant_kind: if kind == "SEQUENCE" { "SEQUENCE" } else { "TABLE" }.into(),
            object: object.into(),
            statement: RoleStatement {
                role: role.into(),
                statement: statement.into(),
            },
        }
    }

    fn recorded(rows: &[PrivilegeRow]) -> Vec<RoleStatement> {
        rows.iter().map(|r| r.statement.clone()).collect()
    }

    #[test]
    fn owners_and_grants_must_come_back_except_what_was_skipped_with_a_warning() {
        let backup = vec![
            row(
                "TABLE",
                "public.orders",
                "alice",
                "ALTER TABLE public.orders OWNER TO alice",
            ),
            row(
                "TABLE",
                "public.orders",
                "bob",
                "GRANT SELECT ON TABLE public.orders TO bob",
            ),
            row(
                "TABLE",
                "public.orders",
                "carol",
                "GRANT UPDATE (note) ON TABLE public.orders TO carol",
            ),
        ];
        let nothing = |_: &str| false;
        let before = BTreeSet::new();
        assert!(privilege_differences(&recorded(&backup), &backup, &nothing, &before).is_empty());

        // A grant lost, an owner changed, a grant too many.
        let here = vec![
            row(
                "TABLE",
                "public.orders",
                "postgres",
                "ALTER TABLE public.orders OWNER TO postgres",
            ),
            row(
                "TABLE",
                "public.orders",
                "carol",
                "GRANT UPDATE (note) ON TABLE public.orders TO carol",
            ),
            row(
                "TABLE",
                "public.orders",
                "dave",
                "GRANT DELETE ON TABLE public.orders TO dave",
            ),
            // Not the backup's object: none of its business.
            row(
                "TABLE",
                "public.other",
                "dave",
                "ALTER TABLE public.other OWNER TO dave",
            ),
        ];
        let found = privilege_differences(&recorded(&backup), &here, &nothing, &before);
        assert_eq!(
            found,
            vec![
                "missing `ALTER TABLE public.orders OWNER TO alice`",
                "missing `GRANT SELECT ON TABLE public.orders TO bob`",
                "`ALTER TABLE public.orders OWNER TO postgres` is not in the backup",
                "`GRANT DELETE ON TABLE public.orders TO dave` is not in the backup",
            ],
            "{found:?}"
        );

        // alice and bob are missing here: their statements were skipped,
        // the table belongs to the restoring role. Nothing else differs.
        let skipped = |s: &str| s.contains("alice") || s.contains("bob");
        let here = vec![
            row(
                "TABLE",
                "public.orders",
                "postgres",
                "ALTER TABLE public.orders OWNER TO postgres",
            ),
            row(
                "TABLE",
                "public.orders",
                "carol",
                "GRANT UPDATE (note) ON TABLE public.orders TO carol",
            ),
        ];
        assert!(privilege_differences(&recorded(&backup), &here, &skipped, &before).is_empty());
        // ... but carol's column grant is still required.
        let found = privilege_differences(&recorded(&backup), &here[..1], &skipped, &before);
        assert_eq!(
            found,
            vec!["missing `GRANT UPDATE (note) ON TABLE public.orders TO carol`"],
            "{found:?}"
        );
        // Grants an object held before the restore are not its to remove.
        let mut here = backup.clone();
        here.push(row(
            "TABLE",
            "public.orders",
            "dave",
            "GRANT DELETE ON TABLE public.orders TO dave",
        ));
        let before = BTreeSet::from([("TABLE".to_owned(), "public.orders".to_owned())]);
        assert!(privilege_differences(&recorded(&backup), &here, &nothing, &before).is_empty());
    }

    #[test]
    fn a_sequence_differs_by_options_owner_identity_or_value() {
        let backup = Sequence {
            name: QualifiedName::new("public", "orders_id_seq"),
            ddl: Some("SEQUENCE NAME \"public\".\"orders_id_seq\" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9 START WITH 1 CACHE 1".into()),
            owned_by: Some(crate::postgres::schema::SequenceOwner {
                table: QualifiedName::new("public", "orders"),
                column: "id".into(),
            }),
            identity: true,
            last_value: 5,
            is_called: true,
        };
        assert!(sequence_differs(&backup, &backup).is_empty());
        let mut here = backup.clone();
        here.ddl = Some("SEQUENCE NAME \"public\".\"orders_id_seq\" INCREMENT BY 5 MINVALUE 1 MAXVALUE 9 START WITH 1 CACHE 1".into());
        here.owned_by = None;
        here.last_value = 6;
        let found = sequence_differs(&backup, &here);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("identity options `SEQUENCE NAME"),
            "{found:?}"
        );
        assert_eq!(
            found[1],
            "owned by no column here, owned by orders.id in the backup"
        );
        assert_eq!(
            found[2],
            "value 6 (is_called true) here, 5 (is_called true) in the backup"
        );
    }

    #[test]
    fn only_the_restores_own_warnings_excuse_a_statement() {
        let statement = "GRANT SELECT ON TABLE public.orders TO bob";
        assert!(super::skipped_by(
            &format!("role \"bob\" does not exist here, so this was not restored: {statement}"),
            statement
        ));
        assert!(super::skipped_by(
            &format!("not restored (permission denied): {statement}"),
            statement
        ));
        assert!(!super::skipped_by(
            &format!("something else: {statement}"),
            statement
        ));
        assert!(!super::skipped_by(
            "not restored (x): GRANT SELECT ON TABLE public.orders TO bobby",
            "public.orders TO bobby"
        ));
    }
}

//! A restore proves what it built. Tables it is to load into that already
//! exist must be the backup's tables (else the restore is refused, or with
//! `replace_existing` they are dropped and created again); and before it
//! commits, the restored tables are read back from the catalog and compared
//! with the backup's schema section: columns, constraints, foreign keys,
//! indexes, triggers and their states, storage parameters, replica
//! identity and row-level security, as the server prints them. Row counts are compared
//! as each table loads (`RowCountMismatch`).

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Transaction;

use super::{PostgresError, relation_exists};
use crate::postgres::catalog::capture_tables_now;
use crate::postgres::plan::{DEFAULT_KEY, part_owner};
use crate::postgres::schema::{DatabaseSchema, QualifiedName, Table, TableKind, quote_ident};
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

/// Fails with [`PostgresError::RestoreDiffers`] when the restored tables
/// differ from the backup's (run in the restore's last transaction, so the
/// failure undoes the restore).
pub(super) async fn prove_restored(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
    members: &BTreeSet<QualifiedName>,
) -> Result<(), PostgresError> {
    let found = differences(client, schema, members).await?;
    if found.is_empty() {
        return Ok(());
    }
    Err(PostgresError::RestoreDiffers {
        differences: describe(&found),
    })
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
}

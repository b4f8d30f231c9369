//! What a restore touches and in which order, decided from the backup's
//! schema alone: no connection, so every rule here has a unit test.

use std::collections::{BTreeMap, BTreeSet};

use super::kinds::{CatalogObject, Stage};
use super::schema::{DatabaseSchema, NamedDdl, QualifiedName, Sequence, Table};
use super::{PostgresError, resolve_table_names};

/// The tables a restore loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSelection {
    /// Whether every table of the backup was asked for (views and free
    /// sequences then come back too).
    pub full: bool,
    /// Chosen tables with their own data section, parents before children
    /// by the foreign keys between them.
    pub roots: Vec<QualifiedName>,
    /// Every table of the chosen families: roots and their partitions.
    pub members: BTreeSet<QualifiedName>,
}

/// Resolves `requested` (all when empty) against the backup's tables and
/// orders them for loading. `has_section` says whether the backup holds a
/// table's data.
pub fn select_tables(
    schema: &DatabaseSchema,
    requested: &[String],
    has_section: impl Fn(&QualifiedName) -> bool,
) -> Result<TableSelection, PostgresError> {
    let data_tables: Vec<QualifiedName> = schema.data_tables().map(|t| t.name.clone()).collect();
    let chosen = if requested.is_empty() {
        data_tables
    } else {
        resolve_table_names(requested, &data_tables, "in the backup")?
    };
    if let Some(missing) = chosen.iter().find(|name| !has_section(name)) {
        return Err(PostgresError::MissingTableSection {
            table: missing.display(),
        });
    }
    let roots = dependency_order(schema, &chosen);
    let members = roots
        .iter()
        .flat_map(|root| schema.family_of(root).into_iter().map(|t| t.name.clone()))
        .collect();
    Ok(TableSelection {
        full: requested.is_empty(),
        roots,
        members,
    })
}

/// Parents before children, by the foreign keys between the chosen tables
/// (a partition's keys count for its root). A cycle is broken in backup
/// order: the load runs with foreign keys deferred or checked afterwards,
/// so any order of a cycle loads.
pub fn dependency_order(schema: &DatabaseSchema, chosen: &[QualifiedName]) -> Vec<QualifiedName> {
    let chosen_set: BTreeSet<&QualifiedName> = chosen.iter().collect();
    let mut depends_on: BTreeMap<&QualifiedName, BTreeSet<QualifiedName>> = BTreeMap::new();
    for table in &schema.tables {
        let root = &schema.data_root(table).name;
        if !chosen_set.contains(root) {
            continue;
        }
        for fk in &table.foreign_keys {
            if let Some(target) = schema.table(&fk.references) {
                let target_root = schema.data_root(target).name.clone();
                if &target_root != root && chosen_set.contains(&target_root) {
                    depends_on.entry(root).or_default().insert(target_root);
                }
            }
        }
    }
    let mut ordered: Vec<QualifiedName> = Vec::with_capacity(chosen.len());
    let mut pending: Vec<&QualifiedName> = chosen.iter().collect();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|name| {
                depends_on
                    .get(name)
                    .is_none_or(|deps| deps.iter().all(|d| ordered.contains(d)))
            })
            // Only a cycle is left: take the first in backup order.
            .unwrap_or(0);
        ordered.push(pending.remove(ready).clone());
    }
    ordered
}

/// One object a restore into a database that lacks it creates before the
/// data is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation<'a> {
    Type(&'a NamedDdl),
    Function(&'a NamedDdl),
    Sequence(&'a Sequence),
    Table(&'a Table),
    /// An object of a kind family created with the tables
    /// ([`Stage::BeforeTables`]).
    Object(&'a CatalogObject),
}

impl Creation<'_> {
    fn key(&self) -> String {
        match self {
            Self::Type(user_type) => DatabaseSchema::type_key(&user_type.name),
            Self::Function(function) => DatabaseSchema::function_key(function),
            Self::Sequence(sequence) => format!("sequence:{}", sequence.name.quoted()),
            Self::Table(table) => DatabaseSchema::table_key(&table.name),
            Self::Object(object) => object.key.clone(),
        }
    }
}

/// Types, functions, standalone sequences and the tables to create, in an
/// order where everything comes after what it depends on
/// ([`DatabaseSchema::dependencies`]); otherwise kinds in that order and
/// each kind in capture order. A cycle (rare: a table default calling a
/// function that takes the table's row type) is broken in that same order.
pub fn creation_order<'a>(schema: &'a DatabaseSchema, tables: &[&'a Table]) -> Vec<Creation<'a>> {
    let mut pending: Vec<Creation<'a>> = schema
        .types
        .iter()
        .map(Creation::Type)
        .chain(schema.functions.iter().map(Creation::Function))
        .chain(
            schema
                .objects
                .iter()
                .filter(|o| o.stage == Stage::BeforeTables)
                .map(Creation::Object),
        )
        .chain(
            schema
                .sequences
                .iter()
                .filter(|s| !s.identity)
                .map(Creation::Sequence),
        )
        .chain(tables.iter().copied().map(Creation::Table))
        .collect();
    let keys: BTreeSet<String> = pending.iter().map(Creation::key).collect();
    let mut needs: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let own_edges = schema.objects.iter().flat_map(|object| {
        object
            .depends_on
            .iter()
            .map(move |dependency| (object.key.as_str(), dependency.as_str()))
    });
    let edges = schema
        .dependencies
        .iter()
        .map(|edge| (edge.dependent.as_str(), edge.dependency.as_str()))
        .chain(own_edges);
    for (dependent, dependency) in edges {
        if keys.contains(dependent) && keys.contains(dependency) {
            needs.entry(dependent.to_owned()).or_default().insert(dependency);
        }
    }
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|object| {
                needs
                    .get(&object.key())
                    .is_none_or(|deps| deps.iter().all(|d| done.contains(*d)))
            })
            .unwrap_or(0);
        let object = pending.remove(ready);
        done.insert(object.key());
        ordered.push(object);
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::schema::{ForeignKey, SCHEMA_FORMAT_VERSION, TableKind};

    fn name(table: &str) -> QualifiedName {
        QualifiedName::new("public", table)
    }

    fn table(table: &str, kind: TableKind, parent: Option<&str>, references: &[&str]) -> Table {
        Table {
            name: name(table),
            kind,
            parent: parent.map(name),
            create_ddl: String::new(),
            copy_columns: Vec::new(),
            constraints: Vec::new(),
            foreign_keys: references
                .iter()
                .map(|target| ForeignKey {
                    name: format!("{table}_{target}_fkey"),
                    references: name(target),
                    ddl: String::new(),
                })
                .collect(),
            indexes: Vec::new(),
            triggers: Vec::new(),
            row_security: Vec::new(),
            settings: Vec::new(),
        }
    }

    fn schema(tables: Vec<Table>) -> DatabaseSchema {
        DatabaseSchema {
            format_version: SCHEMA_FORMAT_VERSION,
            database: "carwash".into(),
            server_version: "15".into(),
            server_version_num: 150000,
            extensions: Vec::new(),
            schemas: Vec::new(),
            collations: Vec::new(),
            types: Vec::new(),
            functions: Vec::new(),
            sequences: Vec::new(),
            tables,
            views: Vec::new(),
            objects: Vec::new(),
            domain_constraints: Vec::new(),
            accepted_losses: Vec::new(),
            dependencies: Vec::new(),
            comments: Vec::new(),
            privileges: Vec::new(),
            cluster: None,
        }
    }

    fn names(list: &[QualifiedName]) -> Vec<&str> {
        list.iter().map(|n| n.name.as_str()).collect()
    }

    fn named(kind_name: &str, signature: Option<&str>) -> NamedDdl {
        NamedDdl {
            name: name(kind_name),
            ddl: String::new(),
            signature: signature.map(str::to_owned),
        }
    }

    fn key(creation: &Creation<'_>) -> String {
        match creation {
            Creation::Type(t) => format!("type {}", t.name.name),
            Creation::Function(f) => format!("function {}", f.name.name),
            Creation::Sequence(s) => format!("sequence {}", s.name.name),
            Creation::Table(t) => format!("table {}", t.name.name),
            Creation::Object(o) => format!("{} {}", o.kind, o.drop_name),
        }
    }

    #[test]
    fn objects_are_created_after_what_they_depend_on_not_by_kind() {
        // Given a domain whose CHECK calls a function, a function taking a
        // table's row type, and a table using the domain
        let mut schema = schema(vec![
            table("Booking", TableKind::Table, None, &[]),
            table("Payment", TableKind::Table, None, &[]),
        ]);
        schema.types = vec![named("money_amount", None)];
        schema.functions = vec![
            named("booking_total", Some("public.booking_total(\"Booking\")")),
            named("positive", Some("public.positive(numeric)")),
        ];
        let dependency = |dependent: String, dependency: String| crate::postgres::schema::Dependency {
            dependent,
            dependency,
        };
        schema.dependencies = vec![
            dependency(
                DatabaseSchema::type_key(&name("money_amount")),
                "function:public.positive(numeric)".into(),
            ),
            dependency(
                "function:public.booking_total(\"Booking\")".into(),
                DatabaseSchema::table_key(&name("Booking")),
            ),
            dependency(
                DatabaseSchema::table_key(&name("Payment")),
                DatabaseSchema::type_key(&name("money_amount")),
            ),
            // an edge to something not being created is ignored
            dependency(
                DatabaseSchema::table_key(&name("Payment")),
                DatabaseSchema::table_key(&name("Elsewhere")),
            ),
        ];
        let tables: Vec<&Table> = schema.tables.iter().collect();
        // When the creation order is planned
        let order: Vec<String> = creation_order(&schema, &tables).iter().map(key).collect();
        // Then each object follows what it needs; the rest keep kind order
        assert_eq!(
            order,
            [
                "function positive",
                "type money_amount",
                "table Booking",
                "function booking_total",
                "table Payment"
            ]
        );
    }

    #[test]
    fn without_dependencies_kinds_keep_their_order() {
        let mut schema = schema(vec![table("Booking", TableKind::Table, None, &[])]);
        schema.types = vec![named("Mood", None)];
        schema.functions = vec![named("touch", Some("public.touch()"))];
        let tables: Vec<&Table> = schema.tables.iter().collect();
        let order: Vec<String> = creation_order(&schema, &tables).iter().map(key).collect();
        assert_eq!(order, ["type Mood", "function touch", "table Booking"]);
    }

    #[test]
    fn parents_load_before_the_tables_that_reference_them() {
        // Given Booking → User and Booking → Service, listed child first
        let schema = schema(vec![
            table("Booking", TableKind::Table, None, &["User", "Service"]),
            table("User", TableKind::Table, None, &[]),
            table("Service", TableKind::Table, None, &[]),
        ]);
        // When the whole backup is selected
        let selection = select_tables(&schema, &[], |_| true).unwrap();
        // Then both parents come before Booking
        assert_eq!(names(&selection.roots), ["User", "Service", "Booking"]);
        assert!(selection.full);
    }

    #[test]
    fn a_foreign_key_cycle_across_two_tables_loads_both_once_in_backup_order() {
        // Given Customer ⇄ Address (each references the other)
        let schema = schema(vec![
            table("Customer", TableKind::Table, None, &["Address"]),
            table("Address", TableKind::Table, None, &["Customer"]),
            table("Invoice", TableKind::Table, None, &["Customer"]),
        ]);
        let selection = select_tables(&schema, &[], |_| true).unwrap();
        // Then the cycle is broken at the first table, each loads once, and
        // what depends on the cycle still comes after it
        assert_eq!(names(&selection.roots), ["Customer", "Address", "Invoice"]);
    }

    #[test]
    fn partitions_travel_with_their_root_and_their_keys_order_it() {
        // Given a partitioned Booking whose partition references User
        let schema = schema(vec![
            table("Booking", TableKind::Partitioned, None, &[]),
            table("Booking_2026", TableKind::Partition, Some("Booking"), &["User"]),
            table("User", TableKind::Table, None, &[]),
        ]);
        let selection = select_tables(&schema, &[], |_| true).unwrap();
        assert_eq!(names(&selection.roots), ["User", "Booking"]);
        assert!(selection.members.contains(&name("Booking_2026")));
        // And a partition cannot be chosen on its own
        assert!(select_tables(&schema, &["Booking_2026".into()], |_| true).is_err());
    }

    #[test]
    fn a_partial_selection_orders_only_what_was_asked_and_needs_every_section() {
        let schema = schema(vec![
            table("Booking", TableKind::Table, None, &["User"]),
            table("User", TableKind::Table, None, &[]),
            table("Service", TableKind::Table, None, &[]),
        ]);
        let selection = select_tables(&schema, &["Booking".into(), "User".into()], |_| true).unwrap();
        assert_eq!(names(&selection.roots), ["User", "Booking"]);
        assert!(!selection.full);
        assert!(!selection.members.contains(&name("Service")));
        // When the backup lacks a chosen table's data, the plan is refused
        let error = select_tables(&schema, &["User".into()], |n| n.name != "User").unwrap_err();
        assert!(error.to_string().contains("User"), "{error}");
    }
}

//! What a restore touches and in which order, decided from the backup's
//! schema alone: no connection, so every rule here has a unit test.

use std::collections::{BTreeMap, BTreeSet};

use super::schema::{DatabaseSchema, QualifiedName};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::schema::{ForeignKey, SCHEMA_FORMAT_VERSION, Table, TableKind};

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
            types: Vec::new(),
            functions: Vec::new(),
            sequences: Vec::new(),
            tables,
            views: Vec::new(),
            accepted_losses: Vec::new(),
        }
    }

    fn names(list: &[QualifiedName]) -> Vec<&str> {
        list.iter().map(|n| n.name.as_str()).collect()
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

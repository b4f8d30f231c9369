//! The captured database schema, stored as the backup's schema section.
//!
//! Everything needed to recreate the exported tables in an empty database,
//! as DDL the server itself printed (`format_type`, `pg_get_expr`,
//! `pg_get_constraintdef`, `pg_get_indexdef`, …) under an empty
//! `search_path`, so every name is schema-qualified and the DDL does not
//! depend on the restoring session's `search_path`.

use serde::{Deserialize, Serialize};

/// Version of this JSON document's shape; readers refuse newer ones.
/// 2 added function signatures, trigger states, row-level security, view
/// options and accepted losses: a reader of version 1 would drop them
/// silently, so it must refuse instead. 3 added domains' NOT VALID
/// constraints, views' column defaults and settings, materialized views'
/// populated state and unlogged sequences (and per-column settings in the
/// tables' settings, which a reader of 2 would apply but not expect). 4
/// added the object kinds of [`super::kinds`] (casts, …). 5 added
/// tablespaces (`tablespaces.rs`): a reader of 4 would put the tables in
/// the default one and fail on an index whose tablespace the target lacks,
/// so a backup that names one is written as 5 ([`TABLESPACES_FORMAT_VERSION`])
/// and one that names none stays 4, readable as before. 6 added security
/// labels (`security_labels.rs`): a reader of 5 would restore without them
/// and say nothing, so a backup holding one is written as 6
/// ([`SECURITY_LABELS_FORMAT_VERSION`]); one without stays 4 or 5. 7 added
/// the keys and indexes of partitions ([`Table::partition_indexes`]): a
/// reader of 6 would let the server name them and put them beside their
/// parent's, so a backup holding one is written as 7
/// ([`PARTITION_INDEXES_FORMAT_VERSION`]). 8 added the database's own
/// security labels (`kinds::cluster::DatabaseProperties::security_labels`):
/// a reader of 7 would create the database without them and say nothing,
/// so a backup holding one is written as 8
/// ([`DATABASE_LABELS_FORMAT_VERSION`]).
pub const SCHEMA_FORMAT_VERSION: u32 = 8;

/// The format a schema section holding a label of the database itself is
/// written in.
pub const DATABASE_LABELS_FORMAT_VERSION: u32 = 8;

/// The format a schema section holding a security label is written in.
pub const SECURITY_LABELS_FORMAT_VERSION: u32 = 6;

/// The format a schema section holding keys or indexes of partitions is
/// written in.
pub const PARTITION_INDEXES_FORMAT_VERSION: u32 = 7;

/// The format a schema section naming a tablespace is written in.
pub const TABLESPACES_FORMAT_VERSION: u32 = 5;

/// The format a schema section naming no tablespace is written in.
pub const PLAIN_FORMAT_VERSION: u32 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSchema {
    pub format_version: u32,
    pub database: String,
    /// `server_version` as the server reports it, e.g. `15.20 (Debian …)`.
    pub server_version: String,
    /// `server_version_num`, e.g. `150020`.
    pub server_version_num: i32,
    pub extensions: Vec<Extension>,
    pub schemas: Vec<String>,
    /// User collations, created before the types and tables that use them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collations: Vec<NamedDdl>,
    /// Enum and domain types, in creation order.
    pub types: Vec<NamedDdl>,
    /// User functions and procedures (`pg_get_functiondef`).
    pub functions: Vec<NamedDdl>,
    pub sequences: Vec<Sequence>,
    /// Tables in an order that creates parents before partitions.
    pub tables: Vec<Table>,
    /// Views and materialized views, in creation order.
    pub views: Vec<View>,
    /// Objects of the other kinds ([`super::kinds`]: casts, …), each
    /// created at its stage after what it depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<super::kinds::CatalogObject>,
    /// Domain constraints the source holds `NOT VALID`, added after the
    /// data is loaded (they never checked the existing rows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domain_constraints: Vec<DomainConstraint>,
    /// `COMMENT ON …` for the backed-up objects (tables, columns, indexes,
    /// sequences, views, constraints, schemas, types, functions, triggers,
    /// policies), applied last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comments: Vec<String>,
    /// Who owns each object and what others were granted: `ALTER … OWNER
    /// TO` and `GRANT`/`REVOKE` statements, each with the role it needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileges: Vec<RoleStatement>,
    /// Objects the capture does not reproduce, accepted explicitly when the
    /// backup was taken (`BACKUP_ALLOW_SCHEMA_LOSS`); empty otherwise, since
    /// a backup that would lose anything else is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_losses: Vec<super::fidelity::Uncaptured>,
    /// What must exist before what, among types, functions and tables, as
    /// `pg_depend` records it (keys: [`DatabaseSchema::type_key`], …).
    /// Creation follows these, not a fixed order of kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    /// The roles the objects name and the database's own properties
    /// ([`super::kinds::cluster`]), for a restore into a new instance.
    /// Optional, and no format version bump: a reader that predates it
    /// ignores the field (no `deny_unknown_fields`) and restores exactly as
    /// before (missing roles are warnings), which is what a restore without
    /// `--create-roles`/`--create-db` does anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::kinds::cluster::Cluster>,
    /// The database's large objects (metadata; their bytes are in the
    /// `largeobjects` section), by OID. A reader that predates the field
    /// never gets this far: it refuses the trailer's unknown section kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub large_objects: Vec<super::large_objects::LargeObject>,
    /// `SECURITY LABEL`s of the backed-up objects, applied after every
    /// object exists (and the large objects' bytes are in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_labels: Vec<super::security_labels::SecurityLabel>,
    /// The parents of the backed-up tables (by inheritance) and of the
    /// foreign tables (by inheritance or as a partition), with the columns
    /// each parent had: a restore that creates the child but not its parent
    /// (the backup or the restore leaves it out) checks, before any change,
    /// that the target has that parent with those columns. No format
    /// version bump: a reader that predates the field creates the child
    /// as before, and a missing parent fails its `CREATE` (rolled back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherited_parents: Vec<InheritedParent>,
}

/// A child's parent ([`DatabaseSchema::inherited_parents`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InheritedParent {
    pub child: QualifiedName,
    /// The child is a foreign table (a kind-family object, created by every
    /// restore whose target lacks it).
    pub child_foreign: bool,
    /// The child is a partition of the parent (`ATTACH PARTITION`), not an
    /// inheritance child.
    pub partition: bool,
    pub parent: QualifiedName,
    /// The parent is a table or foreign table of the backup.
    pub parent_in_backup: bool,
    /// The parent is a foreign table.
    pub parent_foreign: bool,
    /// The parent's columns, in order, as `format_type` printed them.
    pub columns: Vec<ParentColumn>,
    /// A partitioned parent's key (`pg_get_partkeydef`: `RANGE (at)`), so
    /// a deep verification can stand in for a parent the backup left out
    /// (`plan::stand_in_parents`). Absent from backups taken before it was
    /// recorded: their partitions' parents are then checked, not stood in for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
}

/// A column of an [`InheritedParent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentColumn {
    pub name: String,
    pub type_name: String,
}

impl std::fmt::Display for ParentColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.type_name)
    }
}

/// A statement that names a role (`PUBLIC` for everyone), applied when the
/// role exists in the target and the restoring role may; reported otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatement {
    pub role: String,
    pub statement: String,
}

/// A domain's `NOT VALID` constraint: `ALTER DOMAIN … ADD CONSTRAINT …
/// NOT VALID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainConstraint {
    pub domain: QualifiedName,
    pub name: String,
    pub ddl: String,
}

/// `dependent` cannot be created before `dependency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    pub dependent: String,
    pub dependency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    pub name: String,
    pub schema: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `Booking` for the public schema, `audit.Event` otherwise (for people).
    pub fn display(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// An object recreated by one DDL statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedDdl {
    pub name: QualifiedName,
    pub ddl: String,
    /// Functions: the signature as `regprocedure` prints it
    /// (`app.add(integer,integer)`), which tells overloads apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl NamedDdl {
    pub fn new(name: QualifiedName, ddl: String) -> Self {
        Self {
            name,
            ddl,
            signature: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sequence {
    pub name: QualifiedName,
    /// `CREATE SEQUENCE …` for standalone and serial sequences; `None` for
    /// identity sequences, which the table's DDL creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddl: Option<String>,
    /// The table column that owns it (serial or identity), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<SequenceOwner>,
    pub identity: bool,
    pub last_value: i64,
    pub is_called: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequenceOwner {
    pub table: QualifiedName,
    pub column: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableKind {
    /// An ordinary table.
    Table,
    /// A partitioned table: holds no rows itself; its data section covers
    /// all its partitions and is restored through it.
    Partitioned,
    /// A partition (leaf or intermediate): created with its parent, its rows
    /// travel in the partitioned root's section.
    Partition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Table {
    pub name: QualifiedName,
    pub kind: TableKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<QualifiedName>,
    /// `CREATE TABLE …` with columns, defaults, identity, generated columns
    /// and NOT NULL (or `PARTITION OF … FOR VALUES …`).
    pub create_ddl: String,
    /// Columns in the data section, in order: every non-generated column.
    pub copy_columns: Vec<String>,
    /// `ALTER TABLE … ADD CONSTRAINT …` for primary key, unique, check and
    /// exclusion constraints.
    pub constraints: Vec<NamedDdl>,
    /// Foreign keys, added after data is loaded.
    pub foreign_keys: Vec<ForeignKey>,
    /// `CREATE INDEX …` for indexes that back no constraint.
    pub indexes: Vec<String>,
    /// A partition's keys and indexes that are attached to its parent's,
    /// as pg_dump writes them: `ALTER TABLE ONLY <partition> ADD CONSTRAINT
    /// <its own name> …`, then `CREATE INDEX <its own name> ON <partition>
    /// …`, each in its own tablespace, in the order of the parent's names.
    /// A restore adds them before the parent's (the deepest partitions
    /// first), which then takes each over instead of building one the
    /// server would name and place itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_indexes: Vec<String>,
    /// `CREATE TRIGGER …` for user triggers, each followed by the
    /// `ALTER TABLE … DISABLE/ENABLE REPLICA/ENABLE ALWAYS TRIGGER` that
    /// restores its state when it is not simply enabled.
    pub triggers: Vec<String>,
    /// Storage parameters (`ALTER TABLE … SET (fillfactor = …)`, also for
    /// the TOAST table) and the replica identity, applied after the indexes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// `ALTER TABLE … ENABLE/FORCE ROW LEVEL SECURITY` and `CREATE POLICY …`,
    /// applied after the data is loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub row_security: Vec<String>,
    /// Primary keys and unique constraints (of `constraints`) that a
    /// restore may build as plain unique indexes beside the table's other
    /// indexes, then attach with `ADD CONSTRAINT … USING INDEX`. Empty in
    /// backups made before it existed, whose keys are added by their
    /// `constraints` statement; older restorers ignore it and do the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_indexes: Vec<KeyIndex>,
    /// The tablespace it is stored in when not the database's default (a
    /// partition in the default one while its parent is not names the
    /// database's default, which it would otherwise inherit); set by
    /// `ALTER TABLE … SET TABLESPACE` while the new table is empty
    /// (`tablespaces.rs`). Its indexes and keys carry their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<String>,
}

/// A primary key or unique constraint built in two steps: its index (as
/// any other index, so in parallel with them), then the constraint taking
/// that index over, which only changes the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyIndex {
    /// The constraint's name (also its index's, which the constraint keeps).
    pub constraint: String,
    /// `CREATE UNIQUE INDEX <constraint> ON ONLY … USING btree (…)` with the
    /// key's `INCLUDE`, storage parameters and `NULLS NOT DISTINCT`, wrapped
    /// in its tablespace when it has one (`tablespaces::placed_sql`).
    pub create_index: String,
    /// `ALTER TABLE ONLY … ADD CONSTRAINT <constraint> PRIMARY KEY|UNIQUE
    /// USING INDEX <constraint>` with its `DEFERRABLE`/`INITIALLY DEFERRED`.
    pub attach: String,
}

impl Table {
    /// Whether the table has its own data section (ordinary tables and
    /// partitioned roots).
    pub fn has_data_section(&self) -> bool {
        self.kind != TableKind::Partition
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForeignKey {
    pub name: String,
    pub references: QualifiedName,
    pub ddl: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub name: QualifiedName,
    pub materialized: bool,
    /// `CREATE [MATERIALIZED] VIEW … AS …` (materialized views `WITH NO DATA`).
    pub ddl: String,
    /// `CREATE INDEX …` on a materialized view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<String>,
    /// Applied right after the view: column defaults (`ALTER VIEW … ALTER
    /// COLUMN … SET DEFAULT …`), a materialized view's clustered index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// A materialized view created `WITH NO DATA` and never refreshed stays
    /// unpopulated (not refreshed by the restore).
    #[serde(default = "populated", skip_serializing_if = "is_populated")]
    pub populated: bool,
    /// A plain view in a cycle through functions (pg_dump's
    /// `repairViewRuleMultiLoop`): created first as this placeholder, with
    /// its columns' names and types and no body; its real body is an object
    /// of its own (`CREATE OR REPLACE VIEW`, key `view-body:…`) created
    /// after the functions it calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
}

fn populated() -> bool {
    true
}

fn is_populated(populated: &bool) -> bool {
    *populated
}

impl DatabaseSchema {
    /// Dependency keys (the catalog query builds the same strings).
    pub fn type_key(name: &QualifiedName) -> String {
        format!("type:{}\u{1f}{}", name.schema, name.name)
    }

    pub fn view_key(name: &QualifiedName) -> String {
        format!("view:{}\u{1f}{}", name.schema, name.name)
    }

    pub fn table_key(name: &QualifiedName) -> String {
        format!("table:{}\u{1f}{}", name.schema, name.name)
    }

    /// Functions by signature (`regprocedure`); by name for backups that
    /// predate signatures.
    pub fn function_key(function: &NamedDdl) -> String {
        match &function.signature {
            Some(signature) => format!("function:{signature}"),
            None => format!("function:{}", function.name.quoted()),
        }
    }

    pub fn table(&self, name: &QualifiedName) -> Option<&Table> {
        self.tables.iter().find(|t| &t.name == name)
    }

    /// Tables whose rows have their own data section.
    pub fn data_tables(&self) -> impl Iterator<Item = &Table> {
        self.tables.iter().filter(|t| t.has_data_section())
    }

    /// The partitioned root a table's rows travel with (itself if it is not
    /// a partition).
    pub fn data_root<'a>(&'a self, table: &'a Table) -> &'a Table {
        let mut current = table;
        while let Some(parent) = current.parent.as_ref().and_then(|p| self.table(p)) {
            current = parent;
        }
        current
    }

    /// The table and all its partitions, parents first.
    pub fn family_of<'a>(&'a self, root: &QualifiedName) -> Vec<&'a Table> {
        self.tables
            .iter()
            .filter(|t| &self.data_root(t).name == root)
            .collect()
    }
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` would, but always
/// (quoting a name that needs none is harmless and never wrong).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"a", "b"`: a column list for COPY or SELECT.
pub fn quote_column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Quotes a string literal for SQL (standard-conforming strings).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted_safely() {
        assert_eq!(quote_ident("Booking"), "\"Booking\"");
        assert_eq!(quote_ident("we\"ird name"), "\"we\"\"ird name\"");
        assert_eq!(quote_literal("O'Brien"), "'O''Brien'");
        assert_eq!(
            QualifiedName::new("public", "User").quoted(),
            "\"public\".\"User\""
        );
        assert_eq!(QualifiedName::new("public", "User").display(), "User");
        assert_eq!(QualifiedName::new("audit", "Event").display(), "audit.Event");
    }
}

//! Object kinds beyond tables, types, functions and views, one module per
//! family (as pg_dump has one `dumpXxx` per kind): each owns its catalog
//! query, the DDL that recreates an object, the test that tells whether the
//! target already has it, the statement that removes it again, and the
//! dependency edges that order it among everything else.
//!
//! To add a kind: write a module here with `capture(client, context)`
//! returning [`CatalogObject`]s, call it from [`capture_objects`], add its
//! catalog to [`ORDERED_CATALOGS`] when `pg_depend` orders it, remove its
//! detection from `fidelity.rs`, and add a fixture to
//! `tests/fixtures/fidelity/`. The restore needs no change: it creates every
//! [`CatalogObject`] at its [`Stage`], after what it depends on.

pub mod base_types;
mod casts;
pub mod cluster;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Row, Transaction};

use super::PostgresError;
use super::schema::{QualifiedName, RoleStatement};

/// When a restore creates an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// With the types, functions and tables, in dependency order (casts,
    /// operators, text search, foreign servers, …): tables, defaults and
    /// indexes may need them.
    BeforeTables,
    /// After the data, the views and the materialized views (rules and
    /// triggers on views, publications).
    AfterViews,
    /// Last, after comments and grants: objects that would act on the
    /// restore itself (event triggers, default privileges, subscriptions).
    Last,
}

/// One object of a kind family, as the backup carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogObject {
    /// The family's name for people and for `--allow-schema-loss`-style
    /// messages (`cast`, `operator class`, …).
    pub kind: String,
    /// `pg_describe_object`'s words for it (`cast from integer to app.code`).
    pub describe: String,
    /// Ordering key: [`object_key`] of its catalog row, so `pg_depend`
    /// edges (see `catalog::capture_dependencies`) and the family's own
    /// edges find it.
    pub key: String,
    /// Schema the object lives in, if any (created before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Statements that create it, its comment included.
    pub ddl: String,
    /// A query returning one boolean: whether the target already has it
    /// (then it is left as it is, as existing types and functions are).
    pub exists: String,
    /// What `DROP` takes to remove it (`CAST`, `OPERATOR CLASS`, …) and its
    /// name as `DROP` takes it, for the clean-up of a failed restore.
    pub drop_kind: String,
    pub drop_name: String,
    pub stage: Stage,
    /// Keys of what must exist before it, beyond `pg_depend`'s direct edges
    /// (e.g. an operator class's operators, recorded on its members).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Owner and grants, applied with the tables' (when the role exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileges: Vec<RoleStatement>,
}

/// What every family's capture may need to know.
#[derive(Debug, Clone)]
pub struct CaptureContext<'a> {
    pub server_version_num: i32,
    /// The backup's tables.
    pub tables: &'a [QualifiedName],
}

/// Catalogs whose rows are [`CatalogObject`]s ordered by `pg_depend`: the
/// dependency capture gives their rows the key [`object_key`] makes.
pub const ORDERED_CATALOGS: &[&str] = &["pg_cast"];

/// The ordering key of a catalog row (`obj:pg_cast:16402`). Oids are only
/// compared within one backup's schema section, where they are stable.
pub fn object_key(catalog: &str, oid: u32) -> String {
    format!("obj:{catalog}:{oid}")
}

/// The same key as SQL, for `pg_depend` rows (`classid`, `objid` columns).
pub(crate) fn object_key_sql(class_column: &str, oid_column: &str) -> String {
    format!("'obj:' || {class_column}::regclass::text || ':' || {oid_column}::text")
}

/// Every object of every family the backup carries, in capture order.
pub async fn capture_objects(
    client: &Transaction<'_>,
    context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let mut objects = Vec::new();
    objects.extend(base_types::capture(client, context).await?);
    objects.extend(casts::capture(client, context).await?);
    Ok(objects)
}

pub(crate) async fn query(
    client: &Transaction<'_>,
    what: &'static str,
    sql: &str,
) -> Result<Vec<Row>, PostgresError> {
    client
        .query(sql, &[])
        .await
        .map_err(|source| PostgresError::Query { what, source })
}

/// SQL: not a member of an extension (the extension recreates it).
pub(crate) fn not_from_extension(class: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{class}'::regclass AND d.objid = {oid} AND d.deptype = 'e')"
    )
}

/// SQL: the comment statement for an object, or an empty string
/// (`target` is the object as `COMMENT ON` names it, as SQL text).
pub(crate) fn comment_sql(class: &str, oid: &str, target: &str) -> String {
    format!(
        "COALESCE((SELECT format(E';\\nCOMMENT ON %s IS %L', {target}, ds.description) FROM pg_description ds \
                   WHERE ds.classoid = '{class}'::regclass AND ds.objoid = {oid} AND ds.objsubid = 0), '')"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_catalog_and_the_row() {
        assert_eq!(object_key("pg_cast", 16402), "obj:pg_cast:16402");
        assert_eq!(
            object_key_sql("d.classid", "d.objid"),
            "'obj:' || d.classid::regclass::text || ':' || d.objid::text"
        );
    }
}

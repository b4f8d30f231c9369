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

mod access_methods;
pub mod base_types;
mod casts;
pub mod cluster;
mod conversions;
mod default_privileges;
mod event_triggers;
mod extension_config;
mod foreign_data;
mod languages;
mod operators;
mod publications;
mod rules;
mod subscriptions;
mod text_search;
mod transforms;
mod view_triggers;

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
    /// The table or view it belongs to (a rule, a trigger on a view): a
    /// partial restore that creates that table creates it too, where
    /// objects of the whole database are left out (and reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<QualifiedName>,
}

/// SQL: the object's namespace `n` is a user schema.
pub(crate) const USER_NAMESPACE: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'";

/// What every family's capture may need to know.
#[derive(Debug, Clone)]
pub struct CaptureContext<'a> {
    pub server_version_num: i32,
    /// The backup's tables.
    pub tables: &'a [QualifiedName],
}

/// Catalogs whose rows are [`CatalogObject`]s ordered by `pg_depend`: the
/// dependency capture gives their rows the key [`object_key`] makes.
pub const ORDERED_CATALOGS: &[&str] = &[
    "pg_language",
    "pg_transform",
    "pg_cast",
    "pg_am",
    "pg_operator",
    "pg_opfamily",
    "pg_opclass",
    "pg_conversion",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_ts_dict",
    "pg_ts_config",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_event_trigger",
    "pg_publication",
    "pg_subscription",
];

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
    objects.extend(languages::capture(client, context).await?);
    objects.extend(base_types::capture(client, context).await?);
    objects.extend(transforms::capture(client, context).await?);
    objects.extend(casts::capture(client, context).await?);
    objects.extend(access_methods::capture(client, context).await?);
    objects.extend(operators::capture(client, context).await?);
    objects.extend(conversions::capture(client, context).await?);
    objects.extend(text_search::capture(client, context).await?);
    objects.extend(foreign_data::capture(client, context).await?);
    objects.extend(extension_config::capture(client, context).await?);
    objects.extend(rules::capture(client, context).await?);
    objects.extend(view_triggers::capture(client, context).await?);
    // Default privileges before event triggers: both come last, and an
    // event trigger would fire on `ALTER DEFAULT PRIVILEGES`.
    objects.extend(default_privileges::capture(client, context).await?);
    objects.extend(event_triggers::capture(client, context).await?);
    objects.extend(publications::capture(client, context).await?);
    objects.extend(subscriptions::capture(client, context).await?);
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

/// SQL: a `text[]` of [`role_statement`] entries: `ALTER <kind> <target>
/// OWNER TO <owner>` (`kind_target` is SQL text such as `format('SERVER
/// %I', fs.srvname)`), then one `GRANT … ON <grant_target>` per grantee and
/// grant option other than the owner, in the order of the ACL (which
/// pg_dump prints them in, and which decides the restored ACL's order).
pub(crate) fn owner_and_grants_sql(owner: &str, kind_target: &str, acl: &str, grant_target: &str) -> String {
    format!(
        "ARRAY[pg_get_userbyid({owner}) || chr(31) || format('ALTER %s OWNER TO %I', {kind_target}, pg_get_userbyid({owner}))] || \
         {grants}",
        grants = grants_sql(acl, owner, grant_target)
    )
}

/// SQL: a `text[]` of [`role_statement`] entries, one `GRANT` per grantee
/// and grant option in `acl` other than `owner`, in the ACL's order.
pub(crate) fn grants_sql(acl: &str, owner: &str, grant_target: &str) -> String {
    format!(
        "ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END || chr(31) || \
                      format('GRANT %s ON %s TO %s%s', string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type), \
                             {grant_target}, \
                             CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, \
                             CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
                 FROM aclexplode({acl}) WITH ORDINALITY a (grantor, grantee, privilege_type, is_grantable, n) \
                WHERE a.grantee <> {owner} \
                GROUP BY a.grantee, a.is_grantable ORDER BY min(a.n))"
    )
}

/// The statements of [`owner_and_grants_sql`] and [`grants_sql`] (`role`,
/// unit separator, statement), each with the role it needs.
pub(crate) fn role_statements(entries: Vec<String>) -> Vec<RoleStatement> {
    entries
        .into_iter()
        .filter_map(|entry| {
            entry.split_once('\u{1f}').map(|(role, statement)| RoleStatement {
                role: role.to_owned(),
                statement: statement.to_owned(),
            })
        })
        .collect()
}

/// SQL: whether the catalog row named `name` in schema `schema` exists, as
/// the query an object's `exists` holds (`catalog` and its name and
/// namespace columns; `schema`/`name` are SQL text expressions).
pub(crate) fn exists_in_schema_sql(
    catalog: &str,
    name_column: &str,
    namespace_column: &str,
    schema: &str,
    name: &str,
) -> String {
    format!(
        "format('SELECT EXISTS (SELECT 1 FROM pg_catalog.{catalog} x JOIN pg_catalog.pg_namespace n ON n.oid = x.{namespace_column} \
                 WHERE n.nspname = %L AND x.{name_column} = %L)', {schema}, {name})"
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

    #[test]
    fn role_statements_pair_each_statement_with_the_role_it_needs() {
        let statements = role_statements(vec![
            "app\u{1f}ALTER SERVER s OWNER TO app".to_owned(),
            "PUBLIC\u{1f}GRANT USAGE ON FOREIGN SERVER s TO PUBLIC".to_owned(),
        ]);
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].role, "app");
        assert_eq!(
            statements[1].statement,
            "GRANT USAGE ON FOREIGN SERVER s TO PUBLIC"
        );
    }
}

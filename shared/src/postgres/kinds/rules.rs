//! Rewrite rules on tables, views and materialized views (not a view's
//! `_RETURN` rule, which is its body), as pg_dump's `dumpRule` writes them:
//! `pg_get_ruledef`, then `ALTER TABLE … DISABLE RULE | ENABLE REPLICA RULE
//! | ENABLE ALWAYS RULE` when the rule is not in the default (origin)
//! state, and its comment. Created after the views: a rule's actions may
//! name any table or view. Rules on tables follow the backup's table
//! filter (a rule goes with its table); rules on views and materialized
//! views go with them, which every backup carries.

use super::{
    CaptureContext, CatalogObject, Stage, USER_NAMESPACE, comment_sql, not_from_extension, object_key, query,
};
use crate::postgres::PostgresError;
use crate::postgres::schema::QualifiedName;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing rules",
        &format!(
            "SELECT r.oid, pg_describe_object('pg_rewrite'::regclass, r.oid, 0) AS describe, \
                    format('%I ON %s', r.rulename, c.oid::regclass) AS name, n.nspname AS schema, c.relname::text AS relation, \
                    c.relkind IN ('v', 'm') AS on_view, \
                    rtrim(pg_get_ruledef(r.oid), ';') \
                    || CASE r.ev_enabled WHEN 'D' THEN format(E';\\nALTER TABLE %s DISABLE RULE %I', c.oid::regclass, r.rulename) \
                                         WHEN 'R' THEN format(E';\\nALTER TABLE %s ENABLE REPLICA RULE %I', c.oid::regclass, r.rulename) \
                                         WHEN 'A' THEN format(E';\\nALTER TABLE %s ENABLE ALWAYS RULE %I', c.oid::regclass, r.rulename) \
                                         ELSE '' END \
                    || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite WHERE ev_class = pg_catalog.to_regclass(%L) \
                            AND rulename = %L)', c.oid::regclass::text, r.rulename) AS exists \
             FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE r.rulename <> '_RETURN' AND {USER_NAMESPACE} AND {not_extension} \
               AND (c.relkind IN ('v', 'm') OR c.oid = ANY ({tables})) \
             ORDER BY n.nspname, c.relname, r.rulename",
            comment = comment_sql(
                "pg_rewrite",
                "r.oid",
                "format('RULE %I ON %s', r.rulename, c.oid::regclass)"
            ),
            not_extension = not_from_extension("pg_class", "c.oid"),
            tables = table_oids_sql(context.tables),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| CatalogObject {
            relation: Some(QualifiedName::new(
                row.get::<_, String>("schema"),
                row.get::<_, String>("relation"),
            )),
            kind: "rule".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_rewrite", row.get("oid")),
            schema: Some(row.get("schema")),
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: "RULE".to_owned(),
            drop_name: row.get("name"),
            stage: Stage::AfterViews,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        })
        .collect())
}

/// SQL: an `oid[]` of the backup's tables (names as literals, so quotes in
/// them cannot end the literal).
pub(super) fn table_oids_sql(tables: &[QualifiedName]) -> String {
    let oids: Vec<String> = tables
        .iter()
        .map(|table| format!("'{}'::regclass::oid", table.quoted().replace('\'', "''")))
        .collect();
    format!("ARRAY[{}]::oid[]", oids.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_filter_becomes_an_oid_array_with_quotes_escaped() {
        // Given no tables, then a table whose name holds a quote
        // When each becomes SQL
        // Then the empty one is still a typed array and the quote is doubled
        assert_eq!(table_oids_sql(&[]), "ARRAY[]::oid[]");
        assert_eq!(
            table_oids_sql(&[QualifiedName::new("app", "it's")]),
            r#"ARRAY['"app"."it''s"'::regclass::oid]::oid[]"#
        );
    }
}

//! Transforms (`CREATE TRANSFORM FOR type LANGUAGE lang (FROM SQL WITH
//! FUNCTION …, TO SQL WITH FUNCTION …)`), as pg_dump's `dumpTransform`
//! writes them, with their comments; not an extension's. Ordered by
//! `pg_depend` after their type, language and functions, and before the
//! functions that name them (`TRANSFORM FOR TYPE`).

use super::{CaptureContext, CatalogObject, Stage, comment_sql, not_from_extension, object_key, query};
use crate::postgres::PostgresError;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let target = "format('FOR %s LANGUAGE %I', tr.trftype::regtype, l.lanname)";
    let rows = query(
        client,
        "listing transforms",
        &format!(
            "SELECT tr.oid, pg_describe_object('pg_transform'::regclass, tr.oid, 0) AS describe, \
                    {target} AS name, \
                    format('CREATE TRANSFORM %s (%s)', {target}, \
                           concat_ws(', ', \
                                     CASE WHEN tr.trffromsql <> 0 THEN 'FROM SQL WITH FUNCTION ' || tr.trffromsql::regprocedure::text END, \
                                     CASE WHEN tr.trftosql <> 0 THEN 'TO SQL WITH FUNCTION ' || tr.trftosql::regprocedure::text END)) \
                    || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_transform tr JOIN pg_catalog.pg_language l ON l.oid = tr.trflang \
                             WHERE tr.trftype = pg_catalog.to_regtype(%L) AND l.lanname = %L)', tr.trftype::regtype, l.lanname) AS exists \
             FROM pg_transform tr JOIN pg_language l ON l.oid = tr.trflang \
             WHERE tr.oid >= 16384 AND {not_extension} \
             ORDER BY tr.oid",
            comment = comment_sql("pg_transform", "tr.oid", &format!("'TRANSFORM ' || {target}")),
            not_extension = not_from_extension("pg_transform", "tr.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| CatalogObject {
            relation: None,
            kind: "transform".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_transform", row.get("oid")),
            schema: None,
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: "TRANSFORM".to_owned(),
            drop_name: row.get("name"),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        })
        .collect())
}

//! Casts (`CREATE CAST`), as pg_dump's `dumpCast` writes them: by function,
//! `WITH INOUT` or `WITHOUT FUNCTION`, explicit, `AS ASSIGNMENT` or `AS
//! IMPLICIT`. Casts belong to no schema and have no owner; they are ordered
//! after their function and both types by `pg_depend`.

use super::{CaptureContext, CatalogObject, Stage, comment_sql, not_from_extension, object_key, query};
use crate::postgres::PostgresError;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing casts",
        &format!(
            "SELECT ca.oid, pg_describe_object('pg_cast'::regclass, ca.oid, 0) AS describe, \
                    format('(%s AS %s)', format_type(ca.castsource, NULL), format_type(ca.casttarget, NULL)) AS name, \
                    format('CREATE CAST (%s AS %s) %s%s', format_type(ca.castsource, NULL), \
                           format_type(ca.casttarget, NULL), \
                           CASE ca.castmethod WHEN 'f' THEN 'WITH FUNCTION ' || ca.castfunc::regprocedure::text \
                                              WHEN 'i' THEN 'WITH INOUT' ELSE 'WITHOUT FUNCTION' END, \
                           CASE ca.castcontext WHEN 'a' THEN ' AS ASSIGNMENT' WHEN 'i' THEN ' AS IMPLICIT' \
                                               ELSE '' END) \
                      || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_cast WHERE castsource = pg_catalog.to_regtype(%L) \
                            AND casttarget = pg_catalog.to_regtype(%L))', \
                           format_type(ca.castsource, NULL), format_type(ca.casttarget, NULL)) AS exists \
             FROM pg_cast ca \
             WHERE ca.oid >= 16384 AND {not_extension} \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_cast'::regclass AND d.objid = ca.oid \
                               AND d.deptype = 'i') \
             ORDER BY ca.oid",
            comment = comment_sql(
                "pg_cast",
                "ca.oid",
                "format('CAST (%s AS %s)', format_type(ca.castsource, NULL), format_type(ca.casttarget, NULL))"
            ),
            not_extension = not_from_extension("pg_cast", "ca.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| CatalogObject {
            relation: None,
            kind: "cast".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_cast", row.get("oid")),
            schema: None,
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: "CAST".to_owned(),
            drop_name: row.get("name"),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        })
        .collect())
}

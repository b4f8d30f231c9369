//! Access methods of the database's own (`CREATE ACCESS METHOD … TYPE
//! INDEX|TABLE HANDLER …`), as pg_dump's `dumpAccessMethod` writes them.
//! They belong to no schema and have no owner; `pg_depend` orders them
//! after their handler and before the operator classes, tables and
//! materialized views that use them (a table's access method is in its
//! `CREATE TABLE … USING`, see `catalog::create_table_ddl`).

use super::{CaptureContext, CatalogObject, Stage, comment_sql, not_from_extension, object_key, query};
use crate::postgres::PostgresError;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing access methods",
        &format!(
            "SELECT am.oid, pg_describe_object('pg_am'::regclass, am.oid, 0) AS describe, \
                    quote_ident(am.amname) AS name, \
                    format('CREATE ACCESS METHOD %I TYPE %s HANDLER %s', am.amname, \
                           CASE am.amtype WHEN 'i' THEN 'INDEX' ELSE 'TABLE' END, am.amhandler::regproc) \
                      || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_am WHERE amname = %L)', am.amname) AS exists \
             FROM pg_am am \
             WHERE am.oid >= 16384 AND {not_extension} \
             ORDER BY am.oid",
            comment = comment_sql("pg_am", "am.oid", "'ACCESS METHOD ' || quote_ident(am.amname)"),
            not_extension = not_from_extension("pg_am", "am.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| CatalogObject {
            relation: None,
            kind: "access method".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_am", row.get("oid")),
            schema: None,
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: "ACCESS METHOD".to_owned(),
            drop_name: row.get("name"),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        })
        .collect())
}

//! Encoding conversions (`CREATE [DEFAULT] CONVERSION`), as pg_dump's
//! `dumpConversion` writes them, with their owners; ordered after their
//! function by `pg_depend`.

use super::{
    CaptureContext, CatalogObject, Stage, USER_NAMESPACE, comment_sql, not_from_extension, object_key, query,
};
use crate::postgres::PostgresError;
use crate::postgres::schema::{RoleStatement, quote_ident};

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing conversions",
        &format!(
            "SELECT co.oid, pg_describe_object('pg_conversion'::regclass, co.oid, 0) AS describe, \
                    n.nspname::text AS schema, format('%I.%I', n.nspname, co.conname) AS name, \
                    pg_get_userbyid(co.conowner) AS owner, \
                    format('CREATE %sCONVERSION %I.%I FOR %L TO %L FROM %s', \
                           CASE WHEN co.condefault THEN 'DEFAULT ' ELSE '' END, n.nspname, co.conname, \
                           pg_encoding_to_char(co.conforencoding), pg_encoding_to_char(co.contoencoding), \
                           co.conproc::regproc) \
                      || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_conversion co \
                              JOIN pg_catalog.pg_namespace n ON n.oid = co.connamespace \
                            WHERE n.nspname = %L AND co.conname = %L)', n.nspname, co.conname) AS exists \
             FROM pg_conversion co JOIN pg_namespace n ON n.oid = co.connamespace \
             WHERE {USER_NAMESPACE} AND {not_extension} \
             ORDER BY co.oid",
            comment = comment_sql(
                "pg_conversion",
                "co.oid",
                "format('CONVERSION %I.%I', n.nspname, co.conname)"
            ),
            not_extension = not_from_extension("pg_conversion", "co.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get("name");
            let role: String = row.get("owner");
            CatalogObject {
                relation: None,
                kind: "conversion".to_owned(),
                describe: row.get("describe"),
                key: object_key("pg_conversion", row.get("oid")),
                schema: Some(row.get("schema")),
                ddl: row.get("ddl"),
                exists: row.get("exists"),
                drop_kind: "CONVERSION".to_owned(),
                privileges: vec![RoleStatement {
                    statement: format!("ALTER CONVERSION {name} OWNER TO {}", quote_ident(&role)),
                    role,
                }],
                drop_name: name,
                stage: Stage::BeforeTables,
                depends_on: Vec::new(),
            }
        })
        .collect())
}

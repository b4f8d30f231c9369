//! Procedural languages made with `CREATE LANGUAGE` (not by an extension,
//! as `plpgsql` is), as pg_dump's `dumpProcLang` writes them: `CREATE
//! [TRUSTED] LANGUAGE … HANDLER … [INLINE …] [VALIDATOR …]`, its comment,
//! owner and `USAGE` grants. Ordered by `pg_depend`: after its handler,
//! inline and validator functions, before the functions written in it.

use super::{
    CaptureContext, CatalogObject, Stage, comment_sql, not_from_extension, object_key, owner_and_grants_sql,
    query, role_statements,
};
use crate::postgres::PostgresError;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing procedural languages",
        &format!(
            "SELECT l.oid, pg_describe_object('pg_language'::regclass, l.oid, 0) AS describe, \
                    quote_ident(l.lanname) AS name, \
                    format('CREATE %sLANGUAGE %I HANDLER %s%s%s', \
                           CASE WHEN l.lanpltrusted THEN 'TRUSTED ' ELSE '' END, l.lanname, l.lanplcallfoid::regproc, \
                           CASE WHEN l.laninline <> 0 THEN ' INLINE ' || l.laninline::regproc::text ELSE '' END, \
                           CASE WHEN l.lanvalidator <> 0 THEN ' VALIDATOR ' || l.lanvalidator::regproc::text ELSE '' END) \
                    || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_language WHERE lanname = %L)', l.lanname) AS exists, \
                    {privileges} AS privileges \
             FROM pg_language l \
             WHERE l.lanispl AND l.oid >= 16384 AND {not_extension} \
             ORDER BY l.oid",
            comment = comment_sql("pg_language", "l.oid", "format('LANGUAGE %I', l.lanname)"),
            privileges = owner_and_grants_sql(
                "l.lanowner",
                "format('LANGUAGE %I', l.lanname)",
                "l.lanacl",
                "format('LANGUAGE %I', l.lanname)"
            ),
            not_extension = not_from_extension("pg_language", "l.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| CatalogObject {
            relation: None,
            kind: "language".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_language", row.get("oid")),
            schema: None,
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: "LANGUAGE".to_owned(),
            drop_name: row.get("name"),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: role_statements(row.get("privileges")),
        })
        .collect())
}

//! Base types (`CREATE TYPE name (INPUT = …, OUTPUT = …, …)`), as pg_dump's
//! `dumpBaseType` and `dumpShellType` write them. A base type and its
//! input/output functions need each other (the functions take or return
//! the type, the type names the functions): pg_dump breaks that cycle with
//! a shell type (`CREATE TYPE name` with no definition) created before the
//! functions, and so does the restore (`super::super::plan::shells_first`).
//! The functions themselves are carried as functions (C or `internal`).

use super::{CaptureContext, CatalogObject, Stage, not_from_extension, query};
use crate::postgres::PostgresError;
use crate::postgres::schema::{DatabaseSchema, QualifiedName};

/// Key of a base type's shell (`shell-type:schema␟name`); the defined type
/// is keyed as every type is ([`DatabaseSchema::type_key`]).
pub const SHELL_KEY: &str = "shell-type:";

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing base types",
        &format!(
            "SELECT n.nspname::text AS schema, t.typname::text AS name, \
                    format('%I.%I', n.nspname, t.typname) AS quoted, \
                    format('CREATE TYPE %I.%I (INPUT = %s, OUTPUT = %s', n.nspname, t.typname, \
                           t.typinput::regproc, t.typoutput::regproc) \
                      || CASE WHEN t.typreceive <> 0 THEN ', RECEIVE = ' || t.typreceive::regproc ELSE '' END \
                      || CASE WHEN t.typsend <> 0 THEN ', SEND = ' || t.typsend::regproc ELSE '' END \
                      || CASE WHEN t.typmodin <> 0 THEN ', TYPMOD_IN = ' || t.typmodin::regproc ELSE '' END \
                      || CASE WHEN t.typmodout <> 0 THEN ', TYPMOD_OUT = ' || t.typmodout::regproc ELSE '' END \
                      || CASE WHEN t.typanalyze <> 0 THEN ', ANALYZE = ' || t.typanalyze::regproc ELSE '' END \
                      || COALESCE(', SUBSCRIPT = ' || NULLIF(to_jsonb(t) ->> 'typsubscript', '-'), '') \
                      || ', INTERNALLENGTH = ' || CASE WHEN t.typlen = -1 THEN 'variable' ELSE t.typlen::text END \
                      || CASE WHEN t.typbyval THEN ', PASSEDBYVALUE' ELSE '' END \
                      || ', ALIGNMENT = ' || CASE t.typalign WHEN 'c' THEN 'char' WHEN 's' THEN 'int2' \
                                                             WHEN 'i' THEN 'int4' ELSE 'double' END \
                      || ', STORAGE = ' || CASE t.typstorage WHEN 'p' THEN 'plain' WHEN 'e' THEN 'external' \
                                                             WHEN 'm' THEN 'main' ELSE 'extended' END \
                      || CASE WHEN t.typcategory <> 'U' THEN ', CATEGORY = ' || quote_literal(t.typcategory::text) ELSE '' END \
                      || CASE WHEN t.typispreferred THEN ', PREFERRED = true' ELSE '' END \
                      || COALESCE(', DEFAULT = ' || quote_literal(t.typdefault), '') \
                      || CASE WHEN t.typelem <> 0 THEN ', ELEMENT = ' || format_type(t.typelem, NULL) ELSE '' END \
                      || CASE WHEN t.typdelim <> ',' THEN ', DELIMITER = ' || quote_literal(t.typdelim::text) ELSE '' END \
                      || CASE WHEN t.typcollation <> 0 THEN ', COLLATABLE = true' ELSE '' END \
                      || ')' AS ddl \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typtype = 'b' AND t.typisdefined AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname !~ '^pg_' AND t.oid >= 16384 AND {not_extension} \
               AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid) \
             ORDER BY t.oid",
            not_extension = not_from_extension("pg_type", "t.oid"),
        ),
    )
    .await?;
    let mut objects = Vec::new();
    for row in &rows {
        let name = QualifiedName::new(row.get::<_, String>("schema"), row.get::<_, String>("name"));
        let quoted: String = row.get("quoted");
        // Looked up by name: `to_regtype` fails outright on a shell type.
        let lookup = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n \
             ON n.oid = t.typnamespace WHERE n.nspname = {} AND t.typname = {}",
            crate::postgres::schema::quote_literal(&name.schema),
            crate::postgres::schema::quote_literal(&name.name)
        );
        // Dropped with CASCADE: its input/output functions depend on it
        // and it on them, so neither goes alone. Only a restore that
        // created the type drops it, with what it created on it.
        let drop_name = format!("{quoted} CASCADE");
        objects.push(CatalogObject {
            relation: None,
            kind: "shell type".to_owned(),
            describe: format!("shell type {}", name.display()),
            key: format!("{SHELL_KEY}{}\u{1f}{}", name.schema, name.name),
            schema: Some(name.schema.clone()),
            ddl: format!("CREATE TYPE {quoted}"),
            exists: format!("{lookup})"),
            drop_kind: "TYPE".to_owned(),
            drop_name: drop_name.clone(),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        });
        objects.push(CatalogObject {
            relation: None,
            kind: "base type".to_owned(),
            describe: format!("type {}", name.display()),
            key: DatabaseSchema::type_key(&name),
            schema: Some(name.schema.clone()),
            ddl: row.get("ddl"),
            // The shell exists already: only a defined type counts.
            exists: format!("{lookup} AND t.typisdefined)"),
            drop_kind: "TYPE".to_owned(),
            drop_name,
            stage: Stage::BeforeTables,
            depends_on: vec![format!("{SHELL_KEY}{}\u{1f}{}", name.schema, name.name)],
            privileges: Vec::new(),
        });
    }
    Ok(objects)
}

//! Extension configuration tables (`pg_extension_config_dump(table,
//! filter)`): the extension's script creates the table, so its definition
//! comes back with `CREATE EXTENSION`; its rows that match the filter are
//! the user's, and pg_dump dumps them as data. The capture reads those rows
//! inside the backup's snapshot and carries them as `INSERT` statements
//! (each value as its type's text output, which the column's input
//! function reads back exactly, as `COPY` does); a configuration sequence
//! comes back with `setval`, as pg_dump writes it. Loaded with the objects
//! made before the tables, right after `CREATE EXTENSION` has made the
//! table and inserted its own rows (which the filter leaves out): before
//! the foreign keys of user tables that reference them are added and
//! checked, as pg_restore loads them in its data section. The restore runs
//! with `session_replication_role = replica` when it may, so the
//! extension's own triggers do not fire then. Configuration tables are small
//! by design (settings, lookup rows): carried in the schema section rather
//! than streamed as a table.

use super::{CaptureContext, CatalogObject, Stage, query};
use crate::postgres::PostgresError;
use crate::postgres::schema::quote_literal;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    // One row per configuration relation of an extension the backup
    // recreates, with the SQL that reads its rows (or the sequence's state)
    // in this snapshot: the filter is pg_dump's own text (`WHERE …`),
    // appended after the table as pg_dump appends it.
    let relations = query(
        client,
        "listing extension configuration tables",
        "SELECT c.oid, c.relkind = 'S' AS sequence, n.nspname::text AS schema, \
                c.oid::regclass::text AS name, e.extname::text AS extension, \
                COALESCE(x.condition, '') AS condition, \
                (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a \
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') AS columns, \
                (SELECT string_agg(format('quote_nullable(t.%I::text)', a.attname), $$ || ', ' || $$ ORDER BY a.attnum) \
                   FROM pg_attribute a \
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') AS values \
         FROM pg_extension e \
         CROSS JOIN LATERAL unnest(e.extconfig, e.extcondition) AS x(relation, condition) \
         JOIN pg_class c ON c.oid = x.relation JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE e.extname <> 'plpgsql' AND c.relkind IN ('r', 'S') \
         ORDER BY e.oid, c.oid",
    )
    .await?;
    let mut objects = Vec::new();
    for relation in &relations {
        let oid: u32 = relation.get("oid");
        let name: String = relation.get("name");
        let extension: String = relation.get("extension");
        let condition: String = relation.get("condition");
        let (ddl, exists, describe) = if relation.get::<_, bool>("sequence") {
            let state = client
                .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
                .await
                .map_err(|source| PostgresError::Query {
                    what: "reading an extension's configuration sequence",
                    source,
                })?;
            let (last_value, is_called): (i64, bool) = (state.get(0), state.get(1));
            (
                format!(
                    "SELECT pg_catalog.setval({}, {last_value}, {is_called})",
                    quote_literal(&name)
                ),
                // setval is idempotent: always applied.
                "SELECT false".to_owned(),
                format!("state of sequence {name} (configuration of extension {extension})"),
            )
        } else {
            let (Some(columns), Some(values)) = (
                relation.get::<_, Option<String>>("columns"),
                relation.get::<_, Option<String>>("values"),
            ) else {
                // A table without columns holds nothing to restore.
                continue;
            };
            let rows: Vec<String> = client
                .query(
                    &format!("SELECT '(' || {values} || ')' FROM ONLY {name} t {condition}"),
                    &[],
                )
                .await
                .map_err(|source| PostgresError::Query {
                    what: "reading an extension's configuration table",
                    source,
                })?
                .iter()
                .map(|row| row.get(0))
                .collect();
            if rows.is_empty() {
                continue;
            }
            (
                format!("INSERT INTO {name} ({columns}) VALUES {}", rows.join(",\n")),
                // A target whose table already holds rows the filter keeps
                // has its own configuration: left as it is.
                format!("SELECT EXISTS (SELECT 1 FROM ONLY {name} t {condition})"),
                format!(
                    "{} rows of table {name} (configuration of extension {extension})",
                    rows.len()
                ),
            )
        };
        objects.push(CatalogObject {
            relation: None,
            kind: "extension configuration".to_owned(),
            describe,
            key: format!("extension-config:{oid}"),
            schema: Some(relation.get("schema")),
            ddl,
            exists,
            // Rows in the extension's table: the restore's transaction
            // takes them back with everything else; nothing to drop.
            drop_kind: String::new(),
            drop_name: String::new(),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        });
    }
    Ok(objects)
}

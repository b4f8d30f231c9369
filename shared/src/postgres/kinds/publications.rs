//! Publications, as pg_dump's `dumpPublication`, `dumpPublicationTable` and
//! `dumpPublicationNamespace` write them: `CREATE PUBLICATION p [FOR ALL
//! TABLES] WITH (publish = '…'[, publish_via_partition_root = true]
//! [, publish_generated_columns = stored])`, then one `ALTER PUBLICATION p
//! ADD TABLE ONLY t [(columns)] [WHERE (…)]` per table of the backup and
//! (15+) one `ALTER PUBLICATION p ADD TABLES IN SCHEMA s` per schema, and
//! its comment. They belong to no schema; their owner is a role statement.
//! Created after the views: every table they name exists by then.

use super::{CaptureContext, CatalogObject, Stage, comment_sql, object_key, query, role_statements};
use crate::postgres::PostgresError;
use crate::postgres::schema::QualifiedName;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let version = context.server_version_num;
    // `pubgencols` is 18+: stored generated columns published.
    let generated = if version >= 180_000 {
        "CASE WHEN p.pubgencols = 's' THEN ', publish_generated_columns = stored' ELSE '' END"
    } else {
        "''"
    };
    let publications = query(
        client,
        "listing publications",
        &format!(
            "SELECT p.oid, pg_describe_object('pg_publication'::regclass, p.oid, 0) AS describe, \
                    quote_ident(p.pubname) AS name, \
                    format('CREATE PUBLICATION %I%s WITH (publish = %L%s%s)', p.pubname, \
                           CASE WHEN p.puballtables THEN ' FOR ALL TABLES' ELSE '' END, \
                           concat_ws(', ', CASE WHEN p.pubinsert THEN 'insert' END, \
                                           CASE WHEN p.pubupdate THEN 'update' END, \
                                           CASE WHEN p.pubdelete THEN 'delete' END, \
                                           CASE WHEN p.pubtruncate THEN 'truncate' END), \
                           CASE WHEN p.pubviaroot THEN ', publish_via_partition_root = true' ELSE '' END, \
                           {generated}) AS ddl, \
                    {comment} AS comment, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %L)', p.pubname) \
                      AS exists, \
                    ARRAY[pg_get_userbyid(p.pubowner) || chr(31) || \
                          format('ALTER PUBLICATION %I OWNER TO %I', p.pubname, pg_get_userbyid(p.pubowner))] \
                      AS privileges \
             FROM pg_publication p \
             ORDER BY p.pubname",
            comment = comment_sql("pg_publication", "p.oid", "format('PUBLICATION %I', p.pubname)"),
        ),
    )
    .await?;
    // Column lists and row filters are 15+.
    let (columns, filter) = if version >= 150_000 {
        (
            "CASE WHEN pr.prattrs IS NOT NULL THEN \
                  format(' (%s)', (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n) \
                                     FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY k (attnum, n) \
                                     JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = k.attnum)) \
                  ELSE '' END",
            "CASE WHEN pr.prqual IS NOT NULL THEN format(' WHERE (%s)', pg_get_expr(pr.prqual, pr.prrelid)) \
                  ELSE '' END",
        )
    } else {
        ("''", "''")
    };
    let tables = query(
        client,
        "listing the tables of publications",
        &format!(
            "SELECT pr.prpubid AS publication, n.nspname AS schema, c.relname AS relname, \
                    format(E';\\nALTER PUBLICATION %I ADD TABLE ONLY %I.%I%s%s', p.pubname, n.nspname, c.relname, \
                           {columns}, {filter}) AS ddl \
             FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             ORDER BY n.nspname, c.relname"
        ),
    )
    .await?;
    let schemas = if version >= 150_000 {
        query(
            client,
            "listing the schemas of publications",
            "SELECT pn.pnpubid AS publication, \
                    format(E';\\nALTER PUBLICATION %I ADD TABLES IN SCHEMA %I', p.pubname, n.nspname) AS ddl \
             FROM pg_publication_namespace pn JOIN pg_publication p ON p.oid = pn.pnpubid \
             JOIN pg_namespace n ON n.oid = pn.pnnspid \
             ORDER BY n.nspname",
        )
        .await?
    } else {
        Vec::new()
    };
    Ok(publications
        .iter()
        .map(|row| {
            let oid: u32 = row.get("oid");
            let mut ddl: String = row.get("ddl");
            // Only the backup's tables: the others are not restored.
            for table in tables.iter().filter(|t| t.get::<_, u32>("publication") == oid) {
                let name = QualifiedName::new(
                    table.get::<_, String>("schema"),
                    table.get::<_, String>("relname"),
                );
                if context.tables.contains(&name) {
                    ddl.push_str(table.get("ddl"));
                }
            }
            for schema in schemas.iter().filter(|s| s.get::<_, u32>("publication") == oid) {
                ddl.push_str(schema.get("ddl"));
            }
            ddl.push_str(row.get("comment"));
            CatalogObject {
                relation: None,
                kind: "publication".to_owned(),
                describe: row.get("describe"),
                key: object_key("pg_publication", oid),
                schema: None,
                ddl,
                exists: row.get("exists"),
                drop_kind: "PUBLICATION".to_owned(),
                drop_name: row.get("name"),
                stage: Stage::AfterViews,
                depends_on: Vec::new(),
                privileges: role_statements(row.get("privileges")),
            }
        })
        .collect())
}

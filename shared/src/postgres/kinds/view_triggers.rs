//! Triggers on views (`INSTEAD OF … FOR EACH ROW` and statement triggers),
//! as pg_dump's `dumpTrigger` writes them: `pg_get_triggerdef`, then
//! `ALTER TABLE … DISABLE TRIGGER | ENABLE REPLICA TRIGGER | ENABLE ALWAYS
//! TRIGGER` when the trigger is not in the default (origin) state, and its
//! comment (`ALTER TABLE` refuses those states on a view, so only an edited
//! catalog has them; written anyway, as pg_dump does). Triggers on tables go with their table (`catalog.rs`); these
//! are created after the views and the functions they call.

use super::{
    CaptureContext, CatalogObject, Stage, USER_NAMESPACE, comment_sql, not_from_extension, object_key, query,
};
use crate::postgres::PostgresError;
use crate::postgres::schema::QualifiedName;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing triggers on views",
        &format!(
            "SELECT t.oid, pg_describe_object('pg_trigger'::regclass, t.oid, 0) AS describe, \
                    format('%I ON %s', t.tgname, c.oid::regclass) AS name, n.nspname AS schema, c.relname::text AS relation, \
                    pg_get_triggerdef(t.oid) \
                    || CASE t.tgenabled WHEN 'D' THEN format(E';\\nALTER TABLE %s DISABLE TRIGGER %I', c.oid::regclass, t.tgname) \
                                        WHEN 'R' THEN format(E';\\nALTER TABLE %s ENABLE REPLICA TRIGGER %I', c.oid::regclass, t.tgname) \
                                        WHEN 'A' THEN format(E';\\nALTER TABLE %s ENABLE ALWAYS TRIGGER %I', c.oid::regclass, t.tgname) \
                                        ELSE '' END \
                    || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = pg_catalog.to_regclass(%L) \
                            AND tgname = %L)', c.oid::regclass::text, t.tgname) AS exists \
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'v' AND NOT t.tgisinternal AND {USER_NAMESPACE} AND {not_extension} \
             ORDER BY n.nspname, c.relname, t.tgname",
            comment = comment_sql(
                "pg_trigger",
                "t.oid",
                "format('TRIGGER %I ON %s', t.tgname, c.oid::regclass)"
            ),
            not_extension = not_from_extension("pg_class", "c.oid"),
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
            kind: "trigger on a view".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_trigger", row.get("oid")),
            schema: Some(row.get("schema")),
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: "TRIGGER".to_owned(),
            drop_name: row.get("name"),
            stage: Stage::AfterViews,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        })
        .collect())
}

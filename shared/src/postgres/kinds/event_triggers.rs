//! Event triggers, as pg_dump's `dumpEventTrigger` writes them: `CREATE
//! EVENT TRIGGER … ON <event> [WHEN TAG IN (…)] EXECUTE FUNCTION f()`, then
//! `ALTER EVENT TRIGGER … ENABLE REPLICA | ENABLE ALWAYS | DISABLE` when the
//! trigger is not in the default (origin) state, and its comment. They
//! belong to no schema; their owner is a role statement. Created last: an
//! event trigger created earlier would fire on the restore's own DDL.

use super::{
    CaptureContext, CatalogObject, Stage, comment_sql, not_from_extension, object_key, query, role_statements,
};
use crate::postgres::PostgresError;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing event triggers",
        &format!(
            "SELECT e.oid, pg_describe_object('pg_event_trigger'::regclass, e.oid, 0) AS describe, \
                    quote_ident(e.evtname) AS name, \
                    format(E'CREATE EVENT TRIGGER %I ON %I%s\\n   EXECUTE FUNCTION %I.%I()', e.evtname, e.evtevent, \
                           CASE WHEN e.evttags IS NOT NULL THEN \
                                format(E'\\n   WHEN TAG IN (%s)', \
                                       (SELECT string_agg(quote_literal(t.tag), ', ' ORDER BY t.n) \
                                          FROM unnest(e.evttags) WITH ORDINALITY t (tag, n))) \
                                ELSE '' END, \
                           pn.nspname, p.proname) \
                    || CASE e.evtenabled WHEN 'R' THEN format(E';\\nALTER EVENT TRIGGER %I ENABLE REPLICA', e.evtname) \
                                         WHEN 'A' THEN format(E';\\nALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname) \
                                         WHEN 'D' THEN format(E';\\nALTER EVENT TRIGGER %I DISABLE', e.evtname) \
                                         ELSE '' END \
                    || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = %L)', e.evtname) AS exists, \
                    ARRAY[pg_get_userbyid(e.evtowner) || chr(31) || \
                          format('ALTER EVENT TRIGGER %I OWNER TO %I', e.evtname, pg_get_userbyid(e.evtowner))] AS privileges \
             FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace \
             WHERE {not_extension} \
             ORDER BY e.evtname",
            comment = comment_sql("pg_event_trigger", "e.oid", "format('EVENT TRIGGER %I', e.evtname)"),
            not_extension = not_from_extension("pg_event_trigger", "e.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| CatalogObject {
            relation: None,
            kind: "event trigger".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_event_trigger", row.get("oid")),
            schema: None,
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: "EVENT TRIGGER".to_owned(),
            drop_name: row.get("name"),
            stage: Stage::Last,
            depends_on: Vec::new(),
            privileges: role_statements(row.get("privileges")),
        })
        .collect())
}

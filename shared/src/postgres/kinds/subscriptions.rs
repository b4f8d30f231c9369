//! Subscriptions, as pg_dump's `dumpSubscription` writes them: `CREATE
//! SUBSCRIPTION s CONNECTION '…' PUBLICATION p1, p2 WITH (connect = false,
//! slot_name = …, …)`, and its comment. `connect = false` brings it back
//! disabled and without touching the publisher (no slot is created, no
//! data copied), as pg_dump's does; enabling it is the operator's call.
//! Every option the server has is written explicitly rather than only the
//! non-default ones, so the restored catalog row is the source's whatever
//! the target's defaults are (18 changed `streaming`'s). Only the
//! subscriptions of the backed-up database, and only when the connection
//! string can be read (superuser, as for pg_dump): otherwise `fidelity.rs`
//! refuses the backup by name. Created last: nothing else depends on them.

use super::{CaptureContext, CatalogObject, Stage, comment_sql, object_key, query, role_statements};
use crate::postgres::PostgresError;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    // The connection string is readable by superusers only; selecting it
    // otherwise fails the whole query, so ask first.
    let readable = query(
        client,
        "checking whether subscriptions can be read",
        "SELECT has_column_privilege('pg_catalog.pg_subscription', 'subconninfo', 'SELECT')",
    )
    .await?;
    if !readable.first().is_some_and(|row| row.get::<_, bool>(0)) {
        return Ok(Vec::new());
    }
    let version = context.server_version_num;
    let mut options = vec![
        "CASE WHEN s.subslotname IS NULL THEN ', slot_name = NONE' \
              ELSE format(', slot_name = %L', s.subslotname) END",
        "format(', synchronous_commit = %L', s.subsynccommit)",
    ];
    if version >= 140_000 {
        options.push("format(', binary = %s', (s.subbinary)::text)");
    }
    if (140_000..160_000).contains(&version) {
        options.push("format(', streaming = %s', s.substream::text)");
    }
    if version >= 150_000 {
        options.push("format(', two_phase = %s', (s.subtwophasestate <> 'd')::text)");
        options.push("format(', disable_on_error = %s', (s.subdisableonerr)::text)");
    }
    if version >= 160_000 {
        options.push(
            "format(', streaming = %s', CASE s.substream WHEN 't' THEN 'on' WHEN 'p' THEN 'parallel' ELSE 'off' END)",
        );
        options.push("format(', origin = %L', s.suborigin)");
        options.push("format(', password_required = %s', (s.subpasswordrequired)::text)");
        options.push("format(', run_as_owner = %s', (s.subrunasowner)::text)");
    }
    if version >= 170_000 {
        options.push("format(', failover = %s', (s.subfailover)::text)");
    }
    let rows = query(
        client,
        "listing subscriptions",
        &format!(
            "SELECT s.oid, pg_describe_object('pg_subscription'::regclass, s.oid, 0) AS describe, \
                    quote_ident(s.subname) AS name, \
                    format('CREATE SUBSCRIPTION %I CONNECTION %L PUBLICATION %s WITH (connect = false%s)', \
                           s.subname, s.subconninfo, \
                           (SELECT string_agg(quote_ident(p.name), ', ' ORDER BY p.n) \
                              FROM unnest(s.subpublications) WITH ORDINALITY p (name, n)), \
                           {options}) \
                      || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription WHERE subname = %L \
                            AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))', \
                           s.subname) AS exists, \
                    ARRAY[pg_get_userbyid(s.subowner) || chr(31) || \
                          format('ALTER SUBSCRIPTION %I OWNER TO %I', s.subname, pg_get_userbyid(s.subowner))] \
                      AS privileges \
             FROM pg_subscription s \
             WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY s.subname",
            options = options.join(" || "),
            comment = comment_sql("pg_subscription", "s.oid", "format('SUBSCRIPTION %I', s.subname)"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| CatalogObject {
            relation: None,
            kind: "subscription".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_subscription", row.get("oid")),
            schema: None,
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: "SUBSCRIPTION".to_owned(),
            drop_name: row.get("name"),
            stage: Stage::Last,
            depends_on: Vec::new(),
            privileges: role_statements(row.get("privileges")),
        })
        .collect())
}

//! Foreign data, as pg_dump's `dumpForeignDataWrapper`,
//! `dumpForeignServer`, `dumpUserMappings` and `dumpTableSchema` (for
//! relkind `f`) write it: wrappers with handler, validator and options;
//! servers with type, version and options; user mappings with options; and
//! foreign tables — their definition only: as pg_dump, the rows stay where
//! they are (foreign tables are not [`crate::postgres::schema::Table`]s,
//! so the export never copies them and a restore never loads them).
//!
//! User mappings are recorded as statements that need their role (on the
//! server's object, applied with the grants): a target without the role
//! gets a warning naming the mapping, as for a grant to it, instead of a
//! failed restore. Their options are read from `pg_user_mappings`, as
//! pg_dump reads them: a backup role that may not see a mapping's options
//! (neither superuser, nor the mapping's user, nor the server's owner with
//! `USAGE`) records the mapping without them, as pg_dump does.
//!
//! A wrapper that an extension creates comes back with the extension; the
//! grants on it made since (not in `pg_init_privs`) are carried, as
//! pg_dump carries them. Foreign tables that others inherit from are
//! carried as pg_dump carries them: the children (tables of the backup)
//! are created after them with `INHERITS`, ordered by `pg_depend`, and only
//! the children's own rows are exported (`ONLY`). A foreign table whose
//! parent is not an ordinary or partitioned table of the backup is refused
//! by `fidelity.rs`.

use super::{
    CaptureContext, CatalogObject, Stage, comment_sql, grants_sql, not_from_extension, object_key,
    owner_and_grants_sql, query, role_statements,
};
use crate::postgres::PostgresError;
use crate::postgres::catalog::column_settings;

const USER_NAMESPACE: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'";

/// SQL: ` OPTIONS (name 'value', …)` for an options array, or nothing.
fn options_sql(options: &str) -> String {
    format!(
        "COALESCE(' OPTIONS (' || (SELECT string_agg(format('%I %L', o.option_name, o.option_value), ', ') \
                                     FROM pg_options_to_table({options}) o) || ')', '')"
    )
}

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let mut objects = wrappers(client).await?;
    objects.extend(servers(client).await?);
    objects.extend(foreign_tables(client, context).await?);
    Ok(objects)
}

fn object(row: &tokio_postgres::Row, kind: &str, catalog: &str, drop_kind: &str) -> CatalogObject {
    CatalogObject {
        relation: None,
        kind: kind.to_owned(),
        describe: row.get("describe"),
        key: object_key(catalog, row.get("oid")),
        schema: row.get("schema"),
        ddl: row.get("ddl"),
        exists: row.get("exists"),
        drop_kind: drop_kind.to_owned(),
        drop_name: row.get("name"),
        stage: Stage::BeforeTables,
        depends_on: row.get("depends_on"),
        privileges: role_statements(row.get("privileges")),
    }
}

async fn wrappers(client: &tokio_postgres::Transaction<'_>) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing foreign-data wrappers",
        &format!(
            "SELECT w.oid, NULL::text AS schema, pg_describe_object('pg_foreign_data_wrapper'::regclass, w.oid, 0) AS describe, \
                    quote_ident(w.fdwname) AS name, \
                    format('CREATE FOREIGN DATA WRAPPER %I%s%s', w.fdwname, \
                           CASE WHEN w.fdwhandler <> 0 THEN ' HANDLER ' || w.fdwhandler::regproc::text ELSE '' END, \
                           CASE WHEN w.fdwvalidator <> 0 THEN ' VALIDATOR ' || w.fdwvalidator::regproc::text ELSE '' END) \
                      || {options} || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_foreign_data_wrapper WHERE fdwname = %L)', w.fdwname) \
                      AS exists, \
                    ARRAY[]::text[] AS depends_on, \
                    {privileges} AS privileges \
             FROM pg_foreign_data_wrapper w WHERE {not_extension} ORDER BY w.oid",
            options = options_sql("w.fdwoptions"),
            comment = comment_sql(
                "pg_foreign_data_wrapper",
                "w.oid",
                "format('FOREIGN DATA WRAPPER %I', w.fdwname)"
            ),
            privileges = owner_and_grants_sql(
                "w.fdwowner",
                "format('FOREIGN DATA WRAPPER %I', w.fdwname)",
                "w.fdwacl",
                "format('FOREIGN DATA WRAPPER %I', w.fdwname)"
            ),
            not_extension = not_from_extension("pg_foreign_data_wrapper", "w.oid"),
        ),
    )
    .await?;
    let mut objects: Vec<CatalogObject> = rows
        .iter()
        .map(|row| {
            object(
                row,
                "foreign-data wrapper",
                "pg_foreign_data_wrapper",
                "FOREIGN DATA WRAPPER",
            )
        })
        .collect();
    // An extension's wrapper: only the grants made on it since the
    // extension created it. It is never created here (`exists` holds), so
    // the grants are applied when the extension brought it back.
    let extension_rows = query(
        client,
        "listing grants on extensions' foreign-data wrappers",
        &format!(
            "SELECT w.oid, NULL::text AS schema, pg_describe_object('pg_foreign_data_wrapper'::regclass, w.oid, 0) AS describe, \
                    quote_ident(w.fdwname) AS name, '' AS ddl, 'SELECT true' AS exists, ARRAY[]::text[] AS depends_on, \
                    {grants} AS privileges \
             FROM pg_foreign_data_wrapper w \
             LEFT JOIN pg_init_privs ip ON ip.classoid = 'pg_foreign_data_wrapper'::regclass AND ip.objoid = w.oid \
             WHERE NOT {not_extension} ORDER BY w.oid",
            grants = grants_sql(
                "ARRAY(SELECT item FROM unnest(w.fdwacl) item \
                        WHERE item::text <> ALL (COALESCE(ip.initprivs, '{}'::aclitem[])::text[]))",
                "w.fdwowner",
                "format('FOREIGN DATA WRAPPER %I', w.fdwname)"
            ),
            not_extension = not_from_extension("pg_foreign_data_wrapper", "w.oid"),
        ),
    )
    .await?;
    objects.extend(
        extension_rows
            .iter()
            .map(|row| {
                object(
                    row,
                    "foreign-data wrapper",
                    "pg_foreign_data_wrapper",
                    "FOREIGN DATA WRAPPER",
                )
            })
            .filter(|wrapper| !wrapper.privileges.is_empty()),
    );
    Ok(objects)
}

async fn servers(client: &tokio_postgres::Transaction<'_>) -> Result<Vec<CatalogObject>, PostgresError> {
    let mappings = format!(
        "ARRAY(SELECT CASE WHEN um.umuser = 0 THEN 'PUBLIC' ELSE um.usename::text END || chr(31) || \
                      format('CREATE USER MAPPING FOR %s SERVER %I', \
                             CASE WHEN um.umuser = 0 THEN 'PUBLIC' ELSE quote_ident(um.usename) END, fs.srvname) \
                      || {options} \
                 FROM pg_user_mappings um WHERE um.srvid = fs.oid ORDER BY um.usename)",
        options = options_sql("um.umoptions")
    );
    let rows = query(
        client,
        "listing foreign servers",
        &format!(
            "SELECT fs.oid, NULL::text AS schema, pg_describe_object('pg_foreign_server'::regclass, fs.oid, 0) AS describe, \
                    quote_ident(fs.srvname) AS name, \
                    format('CREATE SERVER %I%s%s FOREIGN DATA WRAPPER %I', fs.srvname, \
                           ' TYPE ' || quote_literal(fs.srvtype), ' VERSION ' || quote_literal(fs.srvversion), w.fdwname) \
                      || {options} || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_foreign_server WHERE srvname = %L)', fs.srvname) \
                      AS exists, \
                    ARRAY[]::text[] AS depends_on, \
                    {privileges} || {mappings} AS privileges \
             FROM pg_foreign_server fs JOIN pg_foreign_data_wrapper w ON w.oid = fs.srvfdw \
             WHERE {not_extension} ORDER BY fs.oid",
            options = options_sql("fs.srvoptions"),
            comment = comment_sql("pg_foreign_server", "fs.oid", "format('SERVER %I', fs.srvname)"),
            privileges = owner_and_grants_sql(
                "fs.srvowner",
                "format('SERVER %I', fs.srvname)",
                "fs.srvacl",
                "format('FOREIGN SERVER %I', fs.srvname)"
            ),
            not_extension = not_from_extension("pg_foreign_server", "fs.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| object(row, "foreign server", "pg_foreign_server", "SERVER"))
        .collect())
}

/// Foreign tables: columns with their type, options, collation, default or
/// generation expression and NOT NULL, CHECK constraints, the server and
/// the table's options; then per-column settings, comments on the table and
/// its columns. Ordered after their server, the types of their columns and
/// the functions their defaults and checks call (their own edges:
/// `catalog::capture_dependencies` keys tables by name, not these).
async fn foreign_tables(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    const TYPE: &str = "'type:' || tn.nspname || chr(31) || t.typname";
    let columns = "(SELECT string_agg(format(E'\\n    %I %s%s%s%s%s', a.attname, format_type(a.atttypid, a.atttypmod), \
                          COALESCE(' OPTIONS (' || (SELECT string_agg(format('%I %L', o.option_name, o.option_value), ', ') \
                                                    FROM pg_options_to_table(a.attfdwoptions) o) || ')', ''), \
                          CASE WHEN a.attcollation <> ty.typcollation AND a.attcollation <> 0 THEN \
                               (SELECT format(' COLLATE %I.%I', cn.nspname, co.collname) FROM pg_collation co \
                                  JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) \
                               ELSE '' END, \
                          CASE a.attgenerated WHEN 's' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(ad.adbin, ad.adrelid) || ') STORED' \
                                              WHEN 'v' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(ad.adbin, ad.adrelid) || ')' \
                               ELSE COALESCE(' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid), '') END, \
                          CASE WHEN a.attnotnull THEN \
                               COALESCE((SELECT ' CONSTRAINT ' || quote_ident(nn.conname) FROM pg_constraint nn \
                                          WHERE nn.conrelid = c.oid AND nn.contype = 'n' AND nn.conkey[1] = a.attnum), '') \
                               || ' NOT NULL' ELSE '' END), ',' ORDER BY a.attnum) \
                     FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid \
                     LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                      AND (a.attislocal OR c.relispartition))";
    let checks = "(SELECT string_agg(format(E'\\n    CONSTRAINT %I %s', con.conname, pg_get_constraintdef(con.oid)), ',' \
                                     ORDER BY con.conname) \
                     FROM pg_constraint con WHERE con.conrelid = c.oid AND con.contype = 'c' \
                      AND (con.conislocal OR c.relispartition))";
    // Its parents (tables or foreign tables; one the backup leaves out is
    // checked in the target at restore, `plan::parents_to_check`): the
    // inherited columns and checks come from them, so only the table's own
    // are listed above, as pg_dump lists them.
    // A partition (of a partitioned table) is written as
    // pg_dump writes one: every column and check in its CREATE, then
    // `ATTACH PARTITION`; its rows are not exported (export.rs reads the
    // partitioned table through its other partitions).
    let inherits = "CASE WHEN c.relispartition THEN '' \
                         ELSE COALESCE(' INHERITS (' || (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno) \
                                                         FROM pg_inherits i WHERE i.inhrelid = c.oid) || ')', '') END";
    let attach = "CASE WHEN c.relispartition THEN \
                    (SELECT format(E';\\nALTER TABLE ONLY %s ATTACH PARTITION %s %s', i.inhparent::regclass, c.oid::regclass, \
                                   pg_get_expr(c.relpartbound, c.oid)) \
                       FROM pg_inherits i WHERE i.inhrelid = c.oid) ELSE '' END";
    // Triggers, each in its state and with its comment, and extended
    // statistics (a target only when set: `format` would print a NULL one
    // as nothing), as on tables (`catalog::capture_tables`): no row is ever
    // loaded into a foreign table, so they can be made with it.
    let triggers = "COALESCE((SELECT string_agg(E';\\n' || pg_get_triggerdef(t.oid) || \
                                  CASE t.tgenabled \
                                       WHEN 'D' THEN format(E';\\nALTER FOREIGN TABLE %s DISABLE TRIGGER %I', c.oid::regclass, t.tgname) \
                                       WHEN 'R' THEN format(E';\\nALTER FOREIGN TABLE %s ENABLE REPLICA TRIGGER %I', c.oid::regclass, t.tgname) \
                                       WHEN 'A' THEN format(E';\\nALTER FOREIGN TABLE %s ENABLE ALWAYS TRIGGER %I', c.oid::regclass, t.tgname) \
                                       ELSE '' END || \
                                  COALESCE((SELECT format(E';\\nCOMMENT ON TRIGGER %I ON %s IS %L', t.tgname, c.oid::regclass, ds.description) \
                                              FROM pg_description ds WHERE ds.classoid = 'pg_trigger'::regclass \
                                               AND ds.objoid = t.oid AND ds.objsubid = 0), ''), \
                                  '' ORDER BY t.tgname) \
                         FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal AND t.tgparentid = 0), '')";
    let statistics = "COALESCE((SELECT string_agg(E';\\n' || pg_get_statisticsobjdef(s.oid) || \
                                    COALESCE(format(E';\\nALTER STATISTICS %I.%I SET STATISTICS ', sn.nspname, s.stxname) \
                                             || NULLIF(to_jsonb(s) ->> 'stxstattarget', '-1'), '') || \
                                    COALESCE(format(E';\\nCOMMENT ON STATISTICS %I.%I IS %L', sn.nspname, s.stxname, \
                                                    obj_description(s.oid, 'pg_statistic_ext')), ''), \
                                    '' ORDER BY s.stxname) \
                           FROM pg_statistic_ext s JOIN pg_namespace sn ON sn.oid = s.stxnamespace \
                          WHERE s.stxrelid = c.oid), '')";
    // The statistics' owners, as role statements.
    let statistics_owners = "ARRAY(SELECT pg_get_userbyid(s.stxowner) || chr(31) || \
                                          format('ALTER STATISTICS %I.%I OWNER TO %I', sn.nspname, s.stxname, \
                                                 pg_get_userbyid(s.stxowner)) \
                                     FROM pg_statistic_ext s JOIN pg_namespace sn ON sn.oid = s.stxnamespace \
                                    WHERE s.stxrelid = c.oid ORDER BY s.stxname)";
    // Comments on its own constraints (an inherited one is made with its
    // parent's, later, and pg_dump leaves its comment out too).
    let constraint_comments = "COALESCE((SELECT string_agg(format(E';\\nCOMMENT ON CONSTRAINT %I ON %s IS %L', con.conname, \
                                                                  c.oid::regclass, ds.description), '' ORDER BY con.conname) \
                                           FROM pg_constraint con JOIN pg_description ds ON ds.classoid = 'pg_constraint'::regclass \
                                                AND ds.objoid = con.oid AND ds.objsubid = 0 \
                                          WHERE con.conrelid = c.oid AND (con.conislocal OR c.relispartition)), '')";
    let column_comments = "COALESCE((SELECT string_agg(format(E';\\nCOMMENT ON COLUMN %s.%I IS %L', c.oid::regclass, a.attname, \
                                                              ds.description), '' ORDER BY a.attnum) \
                                       FROM pg_description ds JOIN pg_attribute a ON a.attrelid = ds.objoid AND a.attnum = ds.objsubid \
                                      WHERE ds.classoid = 'pg_class'::regclass AND ds.objoid = c.oid AND ds.objsubid > 0), '')";
    // What its columns, defaults and checks need, as the plan keys them.
    let depends_on = format!(
        "ARRAY(SELECT DISTINCT key FROM (SELECT CASE \
                 WHEN d.refclassid = 'pg_type'::regclass THEN \
                   (SELECT CASE WHEN rc.relkind IN ('r', 'p') THEN 'table:' || rn.nspname || chr(31) || rc.relname \
                                ELSE {TYPE} END \
                      FROM pg_type t JOIN pg_namespace tn ON tn.oid = t.typnamespace \
                      LEFT JOIN pg_class rc ON rc.oid = t.typrelid LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
                     WHERE t.oid = d.refobjid) \
                 WHEN d.refclassid = 'pg_proc'::regclass THEN \
                   (SELECT 'function:' || p.oid::regprocedure::text FROM pg_proc p WHERE p.oid = d.refobjid) \
                 ELSE {server} END \
               FROM pg_depend d \
              WHERE d.deptype = 'n' AND d.refobjid >= 16384 \
                AND d.refclassid IN ('pg_type'::regclass, 'pg_proc'::regclass, 'pg_foreign_server'::regclass) \
                AND ((d.classid = 'pg_class'::regclass AND d.objid = c.oid) \
                     OR (d.classid = 'pg_attrdef'::regclass AND d.objid IN (SELECT oid FROM pg_attrdef WHERE adrelid = c.oid)) \
                     OR (d.classid = 'pg_trigger'::regclass AND d.objid IN (SELECT oid FROM pg_trigger WHERE tgrelid = c.oid)) \
                     OR (d.classid = 'pg_constraint'::regclass \
                         AND d.objid IN (SELECT oid FROM pg_constraint WHERE conrelid = c.oid)))) keys(key) \
          WHERE key IS NOT NULL) || \
         ARRAY(SELECT CASE WHEN p.relkind = 'f' THEN {parent_key} \
                           ELSE 'table:' || pn.nspname || chr(31) || p.relname END FROM pg_inherits i \
                 JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace \
                WHERE i.inhrelid = c.oid)",
        server = super::object_key_sql("d.refclassid", "d.refobjid"),
        parent_key = super::object_key_sql("'pg_class'::regclass", "p.oid"),
    );
    let sql = format!(
        "SELECT c.oid, n.nspname::text AS schema, pg_describe_object('pg_class'::regclass, c.oid, 0) AS describe, \
                    c.oid::regclass::text AS name, \
                    format(E'CREATE FOREIGN TABLE %s (%s\\n)%s SERVER %I', c.oid::regclass, \
                           concat_ws(',', {columns}, {checks}), {inherits}, fs.srvname) || {options} \
                      || COALESCE((SELECT string_agg(E';\\n' || s, '') FROM unnest({settings}) s), '') \
                      || {attach} || {triggers} || {statistics} || {comment} || {column_comments} \
                      || {constraint_comments} AS ddl, \
                    format('SELECT pg_catalog.to_regclass(%L) IS NOT NULL', c.oid::regclass) AS exists, \
                    {depends_on} AS depends_on, \
                    {privileges} || {column_grants} || {statistics_owners} AS privileges \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_foreign_table ft ON ft.ftrelid = c.oid JOIN pg_foreign_server fs ON fs.oid = ft.ftserver \
             WHERE c.relkind = 'f' AND {USER_NAMESPACE} AND {not_extension} \
             ORDER BY c.oid",
        options = options_sql("ft.ftoptions"),
        settings = column_settings("FOREIGN TABLE"),
        comment = comment_sql("pg_class", "c.oid", "format('FOREIGN TABLE %s', c.oid::regclass)"),
        privileges = owner_and_grants_sql(
            "c.relowner",
            "format('FOREIGN TABLE %s', c.oid::regclass)",
            "c.relacl",
            "format('TABLE %s', c.oid::regclass)"
        ),
        column_grants = column_grants_sql(),
        not_extension = not_from_extension("pg_class", "c.oid"),
    );
    let rows = query(client, "listing foreign tables", &sql).await?;
    Ok(rows
        .iter()
        .map(|row| object(row, "foreign table", "pg_class", "FOREIGN TABLE"))
        .collect())
}

/// SQL: a `text[]` of grants on the columns of the foreign table `c`, per
/// column, grantee and grant option, in each column's ACL order.
fn column_grants_sql() -> String {
    "ARRAY(SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END || chr(31) || \
                  format('GRANT %s ON TABLE %s TO %s%s', \
                         string_agg(format('%s (%I)', x.privilege_type, a.attname), ', ' ORDER BY x.privilege_type), \
                         c.oid::regclass, \
                         CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END, \
                         CASE WHEN x.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
             FROM pg_attribute a, aclexplode(a.attacl) WITH ORDINALITY x (grantor, grantee, privilege_type, is_grantable, n) \
            WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL AND NOT a.attisdropped AND a.attnum > 0 \
            GROUP BY a.attnum, a.attname, x.grantee, x.is_grantable ORDER BY a.attnum, min(x.n))"
        .to_owned()
}

//! Schema capture: reads the system catalogs inside the backup's snapshot
//! and turns them into [`DatabaseSchema`].

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::{Row, Transaction};

use super::PostgresError;
use super::fidelity::{AcceptedLoss, refuse_unaccepted, uncaptured_objects};
use super::kinds::{CaptureContext, CatalogObject, ORDERED_CATALOGS, Stage, capture_objects, object_key_sql};
use super::schema::{
    DatabaseSchema, Dependency, DomainConstraint, Extension, ForeignKey, InheritedParent, KeyIndex, NamedDdl,
    ParentColumn, QualifiedName, RoleStatement, SCHEMA_FORMAT_VERSION, Sequence, SequenceOwner, Table,
    TableKind, View, quote_ident,
};

/// Which tables a backup covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFilter {
    /// Only these tables (`Booking`, `public.Booking`); all when empty.
    pub include: Vec<String>,
    /// Never these tables.
    pub exclude: Vec<String>,
    /// Only these schemas; every non-system schema when empty.
    pub schemas: Vec<String>,
    /// Kinds of objects the capture does not reproduce that the operator
    /// accepted losing; any other such object refuses the backup.
    pub accepted_loss: AcceptedLoss,
    /// The change-capture slot (`BACKUP_PITR_SLOT`): when this database has
    /// it, the export records where replay of its changes must start.
    pub stream_slot: Option<String>,
    /// The change-capture publication (`BACKUP_PITR_PUBLICATION`): with the
    /// slot, the export records its tables' catalog fingerprint.
    pub stream_publication: Option<String>,
}

/// SQL: the table access method of relation `c` when it has one other
/// than heap (`CREATE TABLE … USING`); NULL for heap, views and, before
/// PostgreSQL 17, partitioned tables.
const ACCESS_METHOD: &str =
    "(SELECT am.amname::text FROM pg_am am WHERE am.oid = c.relam AND am.amname <> 'heap')";

/// `CREATE AGGREGATE` for any aggregate (`p` its pg_proc row, `ag` its
/// pg_aggregate row): plain, ordered-set (`ORDER BY` in the arguments, as
/// `pg_get_function_arguments` prints them) and hypothetical-set, with the
/// moving-aggregate mode, written as pg_dump's `dumpAgg` writes it — the
/// same options in the same order, a `FINALFUNC_MODIFY` or
/// `MFINALFUNC_MODIFY` only when it differs from the kind's default
/// (`READ_ONLY` for plain aggregates, `READ_WRITE` for ordered-set ones).
/// Functions and types are named as the server prints them under the
/// capture's empty `search_path` (qualified unless in pg_catalog).
const AGGREGATE_DDL: &str = "format('CREATE AGGREGATE %s(%s) (SFUNC = %s, STYPE = %s%s)', \
      p.oid::regproc, pg_get_function_arguments(p.oid), ag.aggtransfn::regproc, \
      format_type(ag.aggtranstype, NULL), concat( \
      CASE WHEN ag.aggtransspace <> 0 THEN ', SSPACE = ' || ag.aggtransspace END, \
      CASE WHEN ag.agginitval IS NOT NULL THEN ', INITCOND = ' || quote_literal(ag.agginitval) END, \
      CASE WHEN ag.aggfinalfn <> 0 THEN ', FINALFUNC = ' || ag.aggfinalfn::regproc \
           || CASE WHEN ag.aggfinalextra THEN ', FINALFUNC_EXTRA' ELSE '' END \
           || CASE WHEN ag.aggfinalmodify <> CASE ag.aggkind WHEN 'n' THEN 'r' ELSE 'w' END \
                   THEN ', FINALFUNC_MODIFY = ' || CASE ag.aggfinalmodify WHEN 'r' THEN 'READ_ONLY' \
                                                       WHEN 's' THEN 'SHAREABLE' ELSE 'READ_WRITE' END \
                   ELSE '' END END, \
      CASE WHEN ag.aggcombinefn <> 0 THEN ', COMBINEFUNC = ' || ag.aggcombinefn::regproc END, \
      CASE WHEN ag.aggserialfn <> 0 THEN ', SERIALFUNC = ' || ag.aggserialfn::regproc END, \
      CASE WHEN ag.aggdeserialfn <> 0 THEN ', DESERIALFUNC = ' || ag.aggdeserialfn::regproc END, \
      CASE WHEN ag.aggmtransfn <> 0 THEN ', MSFUNC = ' || ag.aggmtransfn::regproc \
           || ', MINVFUNC = ' || ag.aggminvtransfn::regproc \
           || ', MSTYPE = ' || format_type(ag.aggmtranstype, NULL) END, \
      CASE WHEN ag.aggmtransspace <> 0 THEN ', MSSPACE = ' || ag.aggmtransspace END, \
      CASE WHEN ag.aggminitval IS NOT NULL THEN ', MINITCOND = ' || quote_literal(ag.aggminitval) END, \
      CASE WHEN ag.aggmfinalfn <> 0 THEN ', MFINALFUNC = ' || ag.aggmfinalfn::regproc \
           || CASE WHEN ag.aggmfinalextra THEN ', MFINALFUNC_EXTRA' ELSE '' END \
           || CASE WHEN ag.aggmfinalmodify <> CASE ag.aggkind WHEN 'n' THEN 'r' ELSE 'w' END \
                   THEN ', MFINALFUNC_MODIFY = ' || CASE ag.aggmfinalmodify WHEN 'r' THEN 'READ_ONLY' \
                                                        WHEN 's' THEN 'SHAREABLE' ELSE 'READ_WRITE' END \
                   ELSE '' END END, \
      (SELECT ', SORTOP = OPERATOR(' || quote_ident(sn.nspname) || '.' || so.oprname || ')' \
         FROM pg_operator so JOIN pg_namespace sn ON sn.oid = so.oprnamespace WHERE so.oid = ag.aggsortop), \
      CASE WHEN ag.aggkind = 'h' THEN ', HYPOTHETICAL' END, \
      CASE p.proparallel WHEN 's' THEN ', PARALLEL = SAFE' WHEN 'r' THEN ', PARALLEL = RESTRICTED' END))";

/// An array expression of `ALTER <alter> <relation c> ALTER COLUMN …`
/// statements for the columns of `c` (a table or materialized view): the
/// statistics target (`-1` through 16, NULL from 17 is the default),
/// storage other than the type's, compression (14+) and column options
/// such as `n_distinct` (not the `pg_attver` option this machine's Debian
/// server stamps on every column by itself), as pg_dump writes them. Read
/// through `to_jsonb` where the column's type or presence varies by version.
pub(crate) fn column_settings(alter: &str) -> String {
    format!(
        "ARRAY(SELECT format('ALTER {alter} %s ALTER COLUMN %I %s', c.oid::regclass, a.attname, s.setting) \
           FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid, LATERAL (VALUES \
             (1, 'SET STATISTICS ' || NULLIF(to_jsonb(a) ->> 'attstattarget', '-1')), \
             (2, 'SET STORAGE ' || CASE WHEN a.attstorage <> ty.typstorage THEN \
                   CASE a.attstorage WHEN 'p' THEN 'PLAIN' WHEN 'e' THEN 'EXTERNAL' WHEN 'm' THEN 'MAIN' \
                                     ELSE 'EXTENDED' END END), \
             (3, 'SET COMPRESSION ' || CASE to_jsonb(a) ->> 'attcompression' WHEN 'p' THEN 'pglz' \
                                            WHEN 'l' THEN 'lz4' END), \
             (4, 'SET (' || NULLIF(array_to_string(ARRAY(SELECT o FROM unnest(a.attoptions) o \
                                                         WHERE o NOT LIKE 'pg\\_attver=%'), ', '), '') || ')') \
           ) AS s(n, setting) \
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND s.setting IS NOT NULL \
          ORDER BY a.attnum, s.n)"
    )
}

/// `CREATE INDEX …` for the index `index` (an oid expression), followed by
/// `ALTER INDEX … ALTER COLUMN n SET STATISTICS …` for its expression
/// columns that have a statistics target, as pg_dump writes them.
fn index_ddl(index: &str) -> String {
    // In its tablespace, as pg_dump writes it (tablespaces.rs).
    super::tablespaces::placed_sql(
        &format!("({})", index_statements(index)),
        &format!("(SELECT ic.reltablespace FROM pg_class ic WHERE ic.oid = {index})"),
    )
}

fn index_statements(index: &str) -> String {
    format!(
        "pg_get_indexdef({index}) || COALESCE((SELECT string_agg(format('; ALTER INDEX %s ALTER COLUMN %s SET STATISTICS %s', \
                                                                     {index}::regclass, a.attnum, s.target), '' ORDER BY a.attnum) \
           FROM pg_attribute a, LATERAL (SELECT NULLIF(to_jsonb(a) ->> 'attstattarget', '-1') AS target) s \
          WHERE a.attrelid = {index} AND a.attnum > 0 AND s.target IS NOT NULL), '')"
    )
}

const USER_NAMESPACE: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'";
const NOT_FROM_EXTENSION: &str = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {CLASS}::regclass AND d.objid = {OID} AND d.deptype = 'e')";

fn not_from_extension(class: &str, oid: &str) -> String {
    NOT_FROM_EXTENSION
        .replace("{CLASS}", &format!("'{class}'"))
        .replace("{OID}", oid)
}

async fn query(client: &Transaction<'_>, what: &'static str, sql: &str) -> Result<Vec<Row>, PostgresError> {
    client
        .query(sql, &[])
        .await
        .map_err(|source| PostgresError::Query { what, source })
}

/// Captures the schema of the tables that `filter` selects. Must run inside
/// the backup's snapshot transaction, which it leaves with an empty
/// `search_path` (so all printed DDL is schema-qualified).
pub async fn capture_schema(
    client: &Transaction<'_>,
    filter: &TableFilter,
) -> Result<DatabaseSchema, PostgresError> {
    client
        .batch_execute("SELECT pg_catalog.set_config('search_path', '', true)")
        .await
        .map_err(|source| PostgresError::Query {
            what: "clearing search_path for schema capture",
            source,
        })?;
    let info = query(
        client,
        "reading server version",
        "SELECT current_database()::text AS database, current_setting('server_version') AS server_version, \
         current_setting('server_version_num')::int AS server_version_num",
    )
    .await?;
    let (database, server_version, server_version_num): (String, String, i32) = (
        info[0].get("database"),
        info[0].get("server_version"),
        info[0].get("server_version_num"),
    );
    if server_version_num < super::OLDEST_SUPPORTED_SERVER {
        return Err(PostgresError::UnsupportedServer { server_version });
    }

    let extensions = query(
        client,
        "listing extensions",
        "SELECT e.extname::text AS name, n.nspname::text AS schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname <> 'plpgsql' ORDER BY e.oid",
    )
    .await?
    .iter()
    .map(|r| Extension {
        name: r.get("name"),
        schema: r.get("schema"),
    })
    .collect();

    // Read first: the cycles it shows decide which column defaults and
    // domain checks are created apart from their table or domain.
    let (dependencies, split) = super::plan::break_cycles(capture_dependencies(client).await?);
    let split_defaults: BTreeSet<(QualifiedName, String)> = split
        .iter()
        .filter(|key| key.starts_with(super::plan::DEFAULT_KEY))
        .filter_map(|key| super::plan::part_owner(key))
        .collect();
    let split_checks: BTreeSet<(QualifiedName, String)> = split
        .iter()
        .filter(|key| key.starts_with(super::plan::DOMAIN_CHECK_KEY))
        .filter_map(|key| super::plan::part_owner(key))
        .collect();
    let mut tables = capture_tables(client, filter, server_version_num, &split_defaults).await?;
    let table_names: BTreeSet<QualifiedName> = tables.iter().map(|t| t.name.clone()).collect();
    let sequences = capture_sequences(client, &table_names).await?;
    attach_identity_options(&mut tables, &sequences);
    let (types, domain_constraints) = capture_types(client, &split_checks).await?;
    let collations = capture_collations(client).await?;
    let functions = capture_functions(client).await?;
    let views = capture_views(client).await?;

    let mut schemas: BTreeSet<String> = tables.iter().map(|t| t.name.schema.clone()).collect();
    // Every user schema the backup covers comes back, an empty one too (with
    // its owner, grants and comment), as pg_dump restores it.
    schemas.extend(
        query(
            client,
            "listing schemas",
            &format!(
                "SELECT n.nspname::text AS name FROM pg_namespace n WHERE {USER_NAMESPACE} AND {} ORDER BY 1",
                not_from_extension("pg_namespace", "n.oid")
            ),
        )
        .await?
        .iter()
        .map(|r| r.get::<_, String>("name"))
        .filter(|name| filter.schemas.is_empty() || filter.schemas.contains(name)),
    );
    schemas.extend(sequences.iter().map(|s| s.name.schema.clone()));
    schemas.extend(types.iter().map(|t: &NamedDdl| t.name.schema.clone()));
    schemas.extend(collations.iter().map(|c| c.name.schema.clone()));
    schemas.extend(functions.iter().map(|f| f.name.schema.clone()));
    schemas.extend(views.iter().map(|v: &View| v.name.schema.clone()));

    // Fail closed: what the capture above does not reproduce refuses the
    // backup, unless that kind of loss was accepted (and is then recorded).
    let table_names: Vec<QualifiedName> = tables.iter().map(|t| t.name.clone()).collect();
    let found = uncaptured_objects(client, &table_names).await?;
    let accepted_losses = refuse_unaccepted(found, &filter.accepted_loss)?;
    for loss in &accepted_losses {
        tracing::warn!(kind = %loss.kind, object = loss.object, "not captured; the loss was accepted");
    }
    let objects = capture_objects(
        client,
        &CaptureContext {
            server_version_num,
            tables: &table_names,
        },
    )
    .await?;
    let mut objects = objects;
    let shells: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.key.starts_with(super::kinds::base_types::SHELL_KEY))
        .map(|o| o.key.clone())
        .collect();
    let dependencies = super::plan::shells_first(dependencies, &shells);
    objects.extend(split_parts(client, &split).await?);
    let mut views = views;
    objects.extend(split_views(client, &split, &mut views).await?);
    schemas.extend(objects.iter().filter_map(|o| o.schema.clone()));
    let comments = capture_comments(client, &table_names).await?;
    let mut privileges = capture_privileges(client, &table_names).await?;
    if schemas.contains("public") {
        privileges.extend(capture_public_schema(client, server_version_num).await?);
    }
    let mut schema = DatabaseSchema {
        format_version: SCHEMA_FORMAT_VERSION,
        database,
        server_version,
        server_version_num,
        extensions,
        schemas: schemas.into_iter().collect(),
        collations,
        types,
        functions,
        sequences,
        tables,
        views,
        objects,
        domain_constraints,
        accepted_losses,
        dependencies,
        comments,
        privileges,
        cluster: None,
        large_objects: super::large_objects::capture(client).await?,
        security_labels: super::security_labels::capture(client, &table_names).await?,
        inherited_parents: capture_inherited_parents(client, &table_names).await?,
    };
    // A cycle no split breaks would fail the restore half-way: refuse the
    // backup now, naming it.
    let every_table: Vec<&Table> = schema.tables.iter().collect();
    super::plan::creation_order(&schema, &every_table, true)?;
    // The roles are those the schema's statements name: read last.
    schema.cluster = Some(super::kinds::cluster::capture(client, &schema).await?);
    // Readable by a reader of the previous format unless it names a
    // tablespace, which that reader would not honour.
    let names_a_tablespace = !super::tablespaces::named_tablespaces(&schema).is_empty()
        || schema
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.database.as_ref())
            .is_some_and(|database| database.tablespace.is_some());
    let has_partition_indexes = schema.tables.iter().any(|t| !t.partition_indexes.is_empty());
    let labels_the_database = schema
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.database.as_ref())
        .is_some_and(|database| !database.security_labels.is_empty());
    schema.format_version = if labels_the_database {
        super::schema::DATABASE_LABELS_FORMAT_VERSION
    } else if has_partition_indexes {
        super::schema::PARTITION_INDEXES_FORMAT_VERSION
    } else if !schema.security_labels.is_empty() {
        super::schema::SECURITY_LABELS_FORMAT_VERSION
    } else if names_a_tablespace {
        super::schema::TABLESPACES_FORMAT_VERSION
    } else {
        super::schema::PLAIN_FORMAT_VERSION
    };
    Ok(schema)
}

/// User functions, procedures and aggregates (`pg_get_functiondef`, or the
/// aggregate's `CREATE AGGREGATE`), each with its signature; extension
/// members and internal-dependency routines left out.
pub(crate) async fn capture_functions(client: &Transaction<'_>) -> Result<Vec<NamedDdl>, PostgresError> {
    Ok(query(
        client,
        "listing functions",
        &format!(
            "SELECT n.nspname::text AS schema, p.proname::text AS name, \
                    CASE WHEN p.prokind = 'a' THEN {AGGREGATE_DDL} ELSE pg_get_functiondef(p.oid) END AS ddl, \
                    p.oid::regprocedure::text AS signature FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
             LEFT JOIN pg_aggregate ag ON ag.aggfnoid = p.oid \
             WHERE {USER_NAMESPACE} AND {} \
               AND p.prokind IN ('f', 'p', 'w', 'a') \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid \
                               AND d.deptype = 'i') \
             ORDER BY p.oid",
            not_from_extension("pg_proc", "p.oid")
        ),
    )
    .await?
    .iter()
    .map(|r| NamedDdl {
        name: QualifiedName::new(r.get::<_, String>("schema"), r.get::<_, String>("name")),
        ddl: r.get("ddl"),
        signature: Some(r.get("signature")),
    })
    .collect())
}

/// User views and materialized views, with their indexes and settings.
pub(crate) async fn capture_views(client: &Transaction<'_>) -> Result<Vec<View>, PostgresError> {
    Ok(query(
        client,
        "listing views",
        &format!(
            "SELECT n.nspname::text AS schema, c.relname::text AS name, c.relkind = 'm' AS materialized, \
                    pg_get_viewdef(c.oid) AS body, array_to_string(c.reloptions, ', ') AS options, \
                    ARRAY(SELECT {index_ddl} FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
                          WHERE i.indrelid = c.oid ORDER BY ic.relname) AS indexes, \
                    c.relispopulated AS populated, {ACCESS_METHOD} AS access_method, \
                    (SELECT ts.spcname::text FROM pg_tablespace ts WHERE ts.oid = c.reltablespace) AS tablespace, \
                    ARRAY(SELECT format('ALTER VIEW %s ALTER COLUMN %I SET DEFAULT %s', c.oid::regclass, a.attname, \
                                        pg_get_expr(ad.adbin, ad.adrelid)) \
                            FROM pg_attrdef ad JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum \
                           WHERE ad.adrelid = c.oid ORDER BY a.attnum) || \
                    ARRAY(SELECT format('ALTER MATERIALIZED VIEW %s CLUSTER ON %I', c.oid::regclass, ic.relname) \
                            FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
                           WHERE i.indrelid = c.oid AND i.indisclustered) || \
                    {column_settings} || \
                    ARRAY(SELECT pg_get_statisticsobjdef(s.oid) || \
                                 COALESCE('; ALTER STATISTICS ' || quote_ident(sn.nspname) || '.' || quote_ident(s.stxname) || \
                                          ' SET STATISTICS ' || NULLIF(to_jsonb(s) ->> 'stxstattarget', '-1'), '') || \
                                 COALESCE('; COMMENT ON STATISTICS ' || quote_ident(sn.nspname) || '.' || quote_ident(s.stxname) || \
                                          ' IS ' || quote_literal(obj_description(s.oid, 'pg_statistic_ext')), '') \
                            FROM pg_statistic_ext s JOIN pg_namespace sn ON sn.oid = s.stxnamespace WHERE s.stxrelid = c.oid \
                           ORDER BY s.stxname) AS settings \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_NAMESPACE} AND c.relkind IN ('v', 'm') AND {} \
             ORDER BY c.oid",
            not_from_extension("pg_class", "c.oid"),
            column_settings = column_settings("MATERIALIZED VIEW"),
            index_ddl = index_ddl("i.indexrelid"),
        ),
    )
    .await?
    .iter()
    .map(|r| {
        let name = QualifiedName::new(r.get::<_, String>("schema"), r.get::<_, String>("name"));
        let materialized: bool = r.get("materialized");
        let body: String = r.get("body");
        let body = body.trim_end().trim_end_matches(';');
        // security_barrier, security_invoker, check_option (as pg_dump keeps them)
        let options = r
            .get::<_, Option<String>>("options")
            .filter(|o| !o.is_empty())
            .map(|o| format!(" WITH ({o})"))
            .unwrap_or_default();
        let using = r
            .get::<_, Option<String>>("access_method")
            .map(|method| format!(" USING {}", quote_ident(&method)))
            .unwrap_or_default();
        let ddl = if materialized {
            format!(
                "CREATE MATERIALIZED VIEW {}{using}{options} AS {body} WITH NO DATA",
                name.quoted()
            )
        } else {
            format!("CREATE VIEW {}{options} AS {body}", name.quoted())
        };
        // A materialized view in its tablespace, as pg_dump writes it.
        let ddl = match r.get::<_, Option<String>>("tablespace") {
            Some(tablespace) => super::tablespaces::placed(&tablespace, &ddl),
            None => ddl,
        };
        View {
            name,
            materialized,
            ddl,
            indexes: r.get("indexes"),
            settings: r.get("settings"),
            populated: r.get("populated"),
            placeholder: None,
        }
    })
    .collect())
}

/// Ownership and privileges of the backed-up tables (and their columns,
/// sequences and views) and of user schemas, sequences, views, types (base
/// types too, not their array types, which follow them) and functions; owners of the tables' extended statistics and of collations:
/// `ALTER … OWNER TO`, `GRANT …` for every grantee other than the
/// owner, and `REVOKE … FROM PUBLIC` where a default grant to everyone was
/// taken away. Sequences owned by a table follow the table's owner. Grants
/// to several roles on one object (or column) are made in the order of its
/// ACL, which pg_dump prints them in.
async fn capture_privileges(
    client: &Transaction<'_>,
    tables: &[QualifiedName],
) -> Result<Vec<RoleStatement>, PostgresError> {
    Ok(privilege_rows(client, tables)
        .await?
        .into_iter()
        .map(|row| row.statement)
        .collect())
}

/// One statement of [`capture_privileges`] with the object it is about:
/// `kind` as `ALTER` names it, `grant_kind` as `GRANT` does, and `object`
/// as both print it (`public.orders`, `app.add(integer,integer)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrivilegeRow {
    pub kind: String,
    pub grant_kind: String,
    pub object: String,
    pub statement: RoleStatement,
}

async fn privilege_rows(
    client: &Transaction<'_>,
    tables: &[QualifiedName],
) -> Result<Vec<PrivilegeRow>, PostgresError> {
    let table_list: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let chosen = "(SELECT unnest($1::text[])::regclass::oid)";
    let relations = format!(
        "SELECT c.oid, c.relowner AS owner, c.relacl AS acl, \
                CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind, \
                CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS grant_kind, \
                c.oid::regclass::text AS object, \
                NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                            AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) AS own_owner \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE {USER_NAMESPACE} AND {} AND (c.oid IN {chosen} OR c.relkind IN ('S', 'v', 'm'))",
        not_from_extension("pg_class", "c.oid")
    );
    let others = format!(
        "SELECT n.oid, n.nspowner, n.nspacl, 'SCHEMA', 'SCHEMA', quote_ident(n.nspname), true FROM pg_namespace n \
          WHERE {USER_NAMESPACE} AND n.nspname <> 'public' AND {} \
         UNION ALL \
         SELECT t.oid, t.typowner, t.typacl, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, \
                CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype::text, true \
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
           LEFT JOIN pg_class tc ON tc.oid = t.typrelid \
          WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND tc.relkind = 'c') \
                 OR (t.typtype = 'b' AND t.oid >= 16384 \
                     AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid))) \
            AND {USER_NAMESPACE} AND {} \
         UNION ALL \
         SELECT p.oid, p.proowner, p.proacl, \
                CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, \
                CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.oid::regprocedure::text, true \
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE p.prokind IN ('f', 'p', 'w', 'a') AND {USER_NAMESPACE} AND {} \
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid \
                            AND d.deptype = 'i') \
         UNION ALL \
         SELECT s.oid, s.stxowner, NULL::aclitem[], 'STATISTICS', 'STATISTICS', \
                quote_ident(sn.nspname) || '.' || quote_ident(s.stxname), true \
           FROM pg_statistic_ext s JOIN pg_namespace sn ON sn.oid = s.stxnamespace \
          WHERE s.stxrelid IN {chosen} OR s.stxrelid IN (SELECT m.oid FROM pg_class m WHERE m.relkind = 'm') \
         UNION ALL \
         SELECT co.oid, co.collowner, NULL::aclitem[], 'COLLATION', 'COLLATION', \
                quote_ident(n.nspname) || '.' || quote_ident(co.collname), true \
           FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace WHERE {USER_NAMESPACE} AND {}",
        not_from_extension("pg_namespace", "n.oid"),
        not_from_extension("pg_type", "t.oid"),
        not_from_extension("pg_proc", "p.oid"),
        not_from_extension("pg_collation", "co.oid"),
    );
    let sql = format!(
        "WITH objects (oid, owner, acl, kind, grant_kind, object, own_owner) AS ({relations} UNION ALL {others}) \
         SELECT role, statement, kind, grant_kind, object FROM ( \
           SELECT 1 AS step, o.object AS sort, pg_get_userbyid(o.owner) AS role, \
                  format('ALTER %s %s OWNER TO %I', o.kind, o.object, pg_get_userbyid(o.owner)) AS statement, \
                  o.kind, o.grant_kind, o.object \
             FROM objects o WHERE o.own_owner \
           UNION ALL \
           SELECT 2, o.object || chr(1) || lpad(min(a.n)::text, 6, '0'), CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, \
                  format('GRANT %s ON %s %s TO %s%s', string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type), \
                         o.grant_kind, o.object, \
                         CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, \
                         CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), \
                  o.kind, o.grant_kind, o.object \
             FROM objects o, aclexplode(o.acl) WITH ORDINALITY a (grantor, grantee, privilege_type, is_grantable, n) \
            WHERE o.acl IS NOT NULL AND a.grantee <> o.owner \
            GROUP BY o.object, o.kind, o.grant_kind, a.grantee, a.is_grantable \
           UNION ALL \
           SELECT 3, o.object, 'PUBLIC', format('REVOKE ALL ON %s %s FROM PUBLIC', o.grant_kind, o.object), \
                  o.kind, o.grant_kind, o.object \
             FROM objects o \
            WHERE o.acl IS NOT NULL AND o.kind IN ('FUNCTION', 'PROCEDURE', 'AGGREGATE', 'TYPE', 'DOMAIN') \
              AND NOT EXISTS (SELECT 1 FROM aclexplode(o.acl) a WHERE a.grantee = 0) \
           UNION ALL \
           SELECT 4, c.oid::regclass::text || '.' || a.attname || chr(1) || lpad(min(x.n)::text, 6, '0'), \
                  CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END, \
                  format('GRANT %s ON TABLE %s TO %s%s', \
                         string_agg(format('%s (%I)', x.privilege_type, a.attname), ', ' ORDER BY x.privilege_type), \
                         c.oid::regclass, \
                         CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END, \
                         CASE WHEN x.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), \
                  CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, \
                  'TABLE', c.oid::regclass::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid, \
                  aclexplode(a.attacl) WITH ORDINALITY x (grantor, grantee, privilege_type, is_grantable, n) \
            WHERE (c.oid IN {chosen} OR (c.relkind IN ('v', 'm') AND {USER_NAMESPACE} AND {view_not_extension})) \
              AND a.attacl IS NOT NULL AND NOT a.attisdropped AND a.attnum > 0 \
            GROUP BY c.oid, c.relkind, a.attname, x.grantee, x.is_grantable \
         ) privileges ORDER BY step, sort, statement",
        view_not_extension = not_from_extension("pg_class", "c.oid"),
    );
    let rows = client
        .query(sql.as_str(), &[&table_list])
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading ownership and privileges",
            source,
        })?;
    Ok(rows
        .iter()
        .map(|r| PrivilegeRow {
            kind: r.get("kind"),
            grant_kind: r.get("grant_kind"),
            object: r.get("object"),
            statement: RoleStatement {
                role: r.get("role"),
                statement: r.get("statement"),
            },
        })
        .collect())
}

/// The owners and grants of the objects [`capture_privileges`] covers (for
/// `tables`, those of them that exist) and of the `public` schema, as the
/// database holds them now, for a restore to compare with the backup's.
/// Leaves the transaction with an empty `search_path`, so names print as
/// the backup's did.
pub(crate) async fn capture_privileges_now(
    client: &Transaction<'_>,
    tables: &[QualifiedName],
) -> Result<Vec<PrivilegeRow>, PostgresError> {
    let version = query(
        client,
        "reading the server version to compare owners and grants",
        "SELECT pg_catalog.set_config('search_path', '', true), current_setting('server_version_num')::int AS version",
    )
    .await?;
    let mut existing = Vec::new();
    for table in tables {
        let present: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                &[&table.quoted()],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "looking up a table to compare its owner and grants",
                source,
            })?
            .get(0);
        if present {
            existing.push(table.clone());
        }
    }
    let mut rows = privilege_rows(client, &existing).await?;
    rows.extend(
        capture_public_schema(client, version[0].get("version"))
            .await?
            .into_iter()
            .map(|statement| PrivilegeRow {
                kind: "SCHEMA".to_owned(),
                grant_kind: "SCHEMA".to_owned(),
                object: "public".to_owned(),
                statement,
            }),
    );
    Ok(rows)
}

/// The sequences as the database holds them now (those owned by a column
/// of `tables`, and those named in `names`), in the shape of a backup's
/// schema section, for a restore to compare with the backup's. No other
/// sequence is read (the restoring role may not be allowed to).
pub(crate) async fn capture_sequences_now(
    client: &Transaction<'_>,
    tables: &BTreeSet<QualifiedName>,
    names: &BTreeSet<QualifiedName>,
) -> Result<Vec<Sequence>, PostgresError> {
    query(
        client,
        "emptying the search path to compare sequences",
        "SELECT pg_catalog.set_config('search_path', '', true)",
    )
    .await?;
    capture_sequences_where(client, &|name, owner| {
        names.contains(name) || owner.is_some_and(|owner| tables.contains(&owner.table))
    })
    .await
}

/// The `public` schema's owner and privileges, when they are not what its
/// server version gives a new database (initdb makes it; PostgreSQL 15
/// changed its owner to `pg_database_owner` and took `CREATE` from
/// `PUBLIC`). As pg_dump does, a default one restores nothing, so the
/// target's own default stays; a changed one is set exactly: its owner,
/// then every grant taken from `PUBLIC` and the source's grants made.
async fn capture_public_schema(
    client: &Transaction<'_>,
    server_version_num: i32,
) -> Result<Vec<RoleStatement>, PostgresError> {
    // pg_database_owner's fixed oid (15+), and the bootstrap superuser's.
    const DATABASE_OWNER: u32 = 6171;
    const BOOTSTRAP_SUPERUSER: u32 = 10;
    let rows = query(
        client,
        "reading the public schema's owner and privileges",
        "SELECT n.nspowner AS owner, pg_get_userbyid(n.nspowner) AS owner_name,                 ARRAY(SELECT x::text FROM unnest(COALESCE(n.nspacl, acldefault('n', n.nspowner))) x ORDER BY 1) AS acl,                 ARRAY(SELECT format('GRANT %s ON SCHEMA public TO %s%s',                                     string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type),                                     CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,                                     CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)                         FROM aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner)))                              WITH ORDINALITY a (grantor, grantee, privilege_type, is_grantable, n)                        WHERE a.grantee <> n.nspowner                        GROUP BY a.grantee, a.is_grantable ORDER BY min(a.n)) AS grants,                 ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END                         FROM aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner)))                              WITH ORDINALITY a (grantor, grantee, privilege_type, is_grantable, n)                        WHERE a.grantee <> n.nspowner                        GROUP BY a.grantee, a.is_grantable ORDER BY min(a.n)) AS grantees            FROM pg_namespace n WHERE n.nspname = 'public'",
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok(Vec::new());
    };
    let owner: u32 = row.get("owner");
    let owner_name: String = row.get("owner_name");
    let acl: Vec<String> = row.get("acl");
    let (default_owner, default_acl) = if server_version_num >= 150000 {
        (
            DATABASE_OWNER,
            vec![
                "=U/pg_database_owner".to_owned(),
                "pg_database_owner=UC/pg_database_owner".to_owned(),
            ],
        )
    } else {
        let bootstrap = quote_acl_role(&owner_name);
        (
            BOOTSTRAP_SUPERUSER,
            vec![
                format!("={}/{bootstrap}", "UC"),
                format!("{bootstrap}=UC/{bootstrap}"),
            ],
        )
    };
    let mut statements = Vec::new();
    if owner != default_owner {
        statements.push(RoleStatement {
            role: owner_name.clone(),
            statement: format!("ALTER SCHEMA public OWNER TO {}", quote_ident(&owner_name)),
        });
    }
    if owner != default_owner || acl != default_acl {
        statements.push(RoleStatement {
            role: "PUBLIC".to_owned(),
            statement: "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_owned(),
        });
        let grants: Vec<String> = row.get("grants");
        let grantees: Vec<String> = row.get("grantees");
        statements.extend(
            grantees
                .into_iter()
                .zip(grants)
                .map(|(role, statement)| RoleStatement { role, statement }),
        );
    }
    Ok(statements)
}

/// A role name as an `aclitem` prints it (double-quoted when it must be).
fn quote_acl_role(role: &str) -> String {
    if role
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        role.to_owned()
    } else {
        format!("\"{}\"", role.replace('"', "\"\""))
    }
}

/// `COMMENT ON …` statements for the backed-up tables (and their columns,
/// indexes, constraints, triggers and policies), and for every user
/// schema, type, function, sequence and view, as the server formats names.
pub(crate) async fn capture_comments(
    client: &Transaction<'_>,
    tables: &[QualifiedName],
) -> Result<Vec<String>, PostgresError> {
    let table_list: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let chosen = "(SELECT unnest($1::text[])::regclass::oid)";
    let user = format!("{USER_NAMESPACE} AND {}", not_from_extension("pg_class", "c.oid"));
    let sql = format!(
        "SELECT statement FROM ( \
           SELECT 1 AS step, format('COMMENT ON %s %s IS %L', \
                    CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' \
                                   WHEN 'i' THEN 'INDEX' WHEN 'I' THEN 'INDEX' ELSE 'TABLE' END, \
                    c.oid::regclass, d.description) AS statement, c.oid::text AS sort \
             FROM pg_description d JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_index i ON i.indexrelid = c.oid \
            WHERE d.objsubid = 0 AND {user} AND ( \
                  (c.relkind IN ('r', 'p') AND c.oid IN {chosen}) \
               OR (c.relkind IN ('i', 'I') AND (i.indrelid IN {chosen} \
                   OR EXISTS (SELECT 1 FROM pg_class m WHERE m.oid = i.indrelid AND m.relkind = 'm'))) \
               OR c.relkind IN ('v', 'm', 'S')) \
           UNION ALL \
           SELECT 2, format('COMMENT ON COLUMN %s.%I IS %L', c.oid::regclass, a.attname, d.description), \
                  c.oid::text || '.' || lpad(a.attnum::text, 5, '0') \
             FROM pg_description d JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid \
            WHERE d.objsubid > 0 AND {user} AND (c.oid IN {chosen} OR c.relkind IN ('v', 'm', 'c')) \
           UNION ALL \
           SELECT 3, CASE WHEN con.contypid <> 0 \
                       THEN format('COMMENT ON CONSTRAINT %I ON DOMAIN %s IS %L', con.conname, con.contypid::regtype, d.description) \
                       ELSE format('COMMENT ON CONSTRAINT %I ON %s IS %L', con.conname, con.conrelid::regclass, d.description) END, \
                  con.oid::text \
             FROM pg_description d JOIN pg_constraint con ON d.classoid = 'pg_constraint'::regclass AND con.oid = d.objoid \
            WHERE con.conrelid IN {chosen} OR con.contypid IN (SELECT t.oid FROM pg_type t \
                    JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype = 'd' AND {USER_NAMESPACE}) \
           UNION ALL \
           SELECT 4, format('COMMENT ON SCHEMA %I IS %L', n.nspname, d.description), n.oid::text \
             FROM pg_description d JOIN pg_namespace n ON d.classoid = 'pg_namespace'::regclass AND n.oid = d.objoid \
            WHERE {USER_NAMESPACE} AND NOT (n.nspname = 'public' AND d.description = 'standard public schema') \
           UNION ALL \
           SELECT 5, format('COMMENT ON %s %s IS %L', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, \
                            t.oid::regtype, d.description), t.oid::text \
             FROM pg_description d JOIN pg_type t ON d.classoid = 'pg_type'::regclass AND t.oid = d.objoid \
             JOIN pg_namespace n ON n.oid = t.typnamespace \
            WHERE (t.typtype IN ('e', 'd', 'r') \
                   OR (t.typtype = 'b' AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)) \
                   OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class tc WHERE tc.oid = t.typrelid AND tc.relkind = 'c'))) \
              AND {USER_NAMESPACE} AND {type_not_extension} \
           UNION ALL \
           SELECT 6, format('COMMENT ON %s %s IS %L', \
                            CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, \
                            p.oid::regprocedure, d.description), p.oid::text \
             FROM pg_description d JOIN pg_proc p ON d.classoid = 'pg_proc'::regclass AND p.oid = d.objoid \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
            WHERE p.prokind IN ('f', 'p', 'w', 'a') AND {USER_NAMESPACE} AND {proc_not_extension} \
           UNION ALL \
           SELECT 7, format('COMMENT ON TRIGGER %I ON %s IS %L', tg.tgname, tg.tgrelid::regclass, d.description), tg.oid::text \
             FROM pg_description d JOIN pg_trigger tg ON d.classoid = 'pg_trigger'::regclass AND tg.oid = d.objoid \
            WHERE tg.tgrelid IN {chosen} \
           UNION ALL \
           SELECT 8, format('COMMENT ON POLICY %I ON %s IS %L', pol.polname, pol.polrelid::regclass, d.description), pol.oid::text \
             FROM pg_description d JOIN pg_policy pol ON d.classoid = 'pg_policy'::regclass AND pol.oid = d.objoid \
            WHERE pol.polrelid IN {chosen} \
           UNION ALL \
           SELECT 9, format('COMMENT ON EXTENSION %I IS %L', e.extname, d.description), e.extname::text \
             FROM pg_description d JOIN pg_extension e ON d.classoid = 'pg_extension'::regclass AND e.oid = d.objoid \
            WHERE d.description IS DISTINCT FROM (SELECT a.comment FROM pg_available_extensions a WHERE a.name = e.extname) \
           UNION ALL \
           SELECT 10, format('COMMENT ON COLLATION %I.%I IS %L', n.nspname, co.collname, d.description), co.oid::text \
             FROM pg_description d JOIN pg_collation co ON d.classoid = 'pg_collation'::regclass AND co.oid = d.objoid \
             JOIN pg_namespace n ON n.oid = co.collnamespace \
            WHERE {USER_NAMESPACE} AND {collation_not_extension} \
         ) comments ORDER BY step, sort",
        collation_not_extension = not_from_extension("pg_collation", "co.oid"),
        type_not_extension = not_from_extension("pg_type", "t.oid"),
        proc_not_extension = not_from_extension("pg_proc", "p.oid"),
    );
    let rows = client
        .query(sql.as_str(), &[&table_list])
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading comments",
            source,
        })?;
    Ok(rows.iter().map(|r| r.get("statement")).collect())
}

/// `pg_depend`'s normal dependencies among types, functions and tables, as
/// keys the restore plan understands: a function taking or returning a
/// table's row type, a `BEGIN ATOMIC` body reading a table, a domain whose
/// CHECK calls a function, a column whose type, default or generation
/// expression needs a type or function. An array type stands for its
/// element type (the array is created with it; `pg_depend` names the
/// array). Column defaults and domain checks come with keys of their own
/// (`default:…`, `domain-check:…`), and so does a plain view's body (its
/// `_RETURN` rule, `view-body:…`), for [`super::plan::break_cycles`]; a
/// view itself needs the types of its columns (its placeholder does).
async fn capture_dependencies(client: &Transaction<'_>) -> Result<Vec<Dependency>, PostgresError> {
    const TYPE: &str = "'type:' || tn.nspname || chr(31) || t.typname";
    // A relation `c` as tables and views are keyed.
    const RELATION: &str = "CASE WHEN c.relkind IN ('v', 'm') THEN 'view:' ELSE 'table:' END \
                            || cn.nspname || chr(31) || c.relname";
    // A type `t`; a table's or view's row type is the relation `c`.
    const TYPE_OR_RELATION: &str = "CASE WHEN c.relkind IN ('r', 'p', 'v', 'm') THEN \
                                    CASE WHEN c.relkind IN ('v', 'm') THEN 'view:' ELSE 'table:' END \
                                    || cn.nspname || chr(31) || c.relname \
                                    ELSE 'type:' || tn.nspname || chr(31) || t.typname END";
    // Objects initdb made (below FirstNormalObjectId) always exist on the
    // target, so edges to or between them do not order anything; skipping
    // them takes this query from ~200 ms to a few on an empty database.
    const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
    // The kind families' catalogs, keyed by oid (`kinds::object_key`).
    let ordered: Vec<String> = ORDERED_CATALOGS
        .iter()
        .map(|c| format!("'{c}'::regclass"))
        .collect();
    let ordered = ordered.join(", ");
    let object = object_key_sql("d.classid", "d.objid");
    let referenced_object = object_key_sql("d.refclassid", "d.refobjid");
    // Foreign tables are kind-family objects (kinds/foreign_data.rs): what
    // reads one (a function's row type, a BEGIN ATOMIC body) comes after it.
    let foreign_table = object_key_sql("'pg_class'::regclass", "c.oid");
    let rows = query(
        client,
        "reading dependencies between objects",
        &format!(
            "SELECT DISTINCT dependent, dependency FROM ( \
               SELECT CASE \
                 WHEN d.classid = 'pg_proc'::regclass THEN \
                   (SELECT 'function:' || p.oid::regprocedure::text FROM pg_proc p WHERE p.oid = d.objid) \
                 WHEN d.classid = 'pg_type'::regclass THEN \
                   (SELECT {TYPE} FROM pg_type t JOIN pg_namespace tn ON tn.oid = t.typnamespace WHERE t.oid = d.objid) \
                 WHEN d.classid = 'pg_constraint'::regclass THEN \
                   (SELECT 'domain-check:' || tn.nspname || chr(31) || t.typname || chr(31) || con.conname \
                      FROM pg_constraint con JOIN pg_type t ON t.oid = con.contypid \
                      JOIN pg_namespace tn ON tn.oid = t.typnamespace WHERE con.oid = d.objid) \
                 WHEN d.classid = 'pg_attrdef'::regclass THEN \
                   (SELECT CASE WHEN att.attgenerated <> '' THEN 'table:' || cn.nspname || chr(31) || c.relname \
                                ELSE 'default:' || cn.nspname || chr(31) || c.relname || chr(31) || att.attname END \
                      FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid \
                      JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                      JOIN pg_attribute att ON att.attrelid = a.adrelid AND att.attnum = a.adnum \
                    WHERE a.oid = d.objid) \
                 WHEN d.classid = 'pg_class'::regclass THEN \
                   (SELECT CASE WHEN c.relkind = 'c' THEN 'type:' || cn.nspname || chr(31) || ct.typname \
                                ELSE 'table:' || cn.nspname || chr(31) || c.relname END \
                      FROM pg_class c JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                      LEFT JOIN pg_type ct ON ct.oid = c.reltype \
                     WHERE c.oid = d.objid AND c.relkind IN ('r', 'p', 'c')) \
                 WHEN d.classid = 'pg_rewrite'::regclass THEN \
                   (SELECT CASE WHEN c.relkind = 'v' THEN 'view-body:' ELSE 'view:' END || cn.nspname || chr(31) || c.relname \
                      FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class \
                      JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                     WHERE r.oid = d.objid AND r.rulename = '_RETURN' AND c.relkind IN ('v', 'm')) \
                 WHEN d.classid IN ({ordered}) THEN {object} \
               END AS dependent, CASE \
                 WHEN d.refclassid = 'pg_proc'::regclass THEN \
                   (SELECT 'function:' || p.oid::regprocedure::text FROM pg_proc p WHERE p.oid = d.refobjid) \
                 WHEN d.refclassid = 'pg_type'::regclass THEN \
                   (SELECT CASE WHEN c.relkind = 'f' THEN {foreign_table} ELSE {TYPE_OR_RELATION} END \
                      FROM pg_type t JOIN pg_namespace tn ON tn.oid = t.typnamespace \
                      LEFT JOIN pg_class c ON c.oid = t.typrelid LEFT JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                    WHERE t.oid = COALESCE((SELECT e.oid FROM pg_type e WHERE e.typarray = d.refobjid), d.refobjid)) \
                 WHEN d.refclassid = 'pg_class'::regclass THEN \
                   (SELECT CASE WHEN c.relkind = 'f' THEN {foreign_table} ELSE {RELATION} END FROM pg_class c \
                      JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                     WHERE c.oid = d.refobjid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')) \
                 WHEN d.refclassid IN ({ordered}) THEN {referenced_object} \
               END AS dependency \
               FROM pg_depend d \
               WHERE d.deptype = 'n' \
                 AND d.objid >= {FIRST_NORMAL_OBJECT_ID} AND d.refobjid >= {FIRST_NORMAL_OBJECT_ID} \
                 AND d.classid IN ('pg_proc'::regclass, 'pg_type'::regclass, 'pg_constraint'::regclass, \
                                   'pg_attrdef'::regclass, 'pg_class'::regclass, 'pg_rewrite'::regclass, {ordered}) \
                 AND d.refclassid IN ('pg_proc'::regclass, 'pg_type'::regclass, 'pg_class'::regclass, {ordered}) \
               UNION ALL \
               SELECT 'view:' || vn.nspname || chr(31) || v.relname, \
                      (SELECT {TYPE_OR_RELATION} \
                         FROM pg_type t JOIN pg_namespace tn ON tn.oid = t.typnamespace \
                         LEFT JOIN pg_class c ON c.oid = t.typrelid \
                         LEFT JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                        WHERE t.oid = COALESCE((SELECT e.oid FROM pg_type e WHERE e.typarray = a.atttypid), a.atttypid)) \
                 FROM pg_class v JOIN pg_namespace vn ON vn.oid = v.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = v.oid AND a.attnum > 0 AND NOT a.attisdropped \
                WHERE v.relkind IN ('v', 'm') AND a.atttypid >= {FIRST_NORMAL_OBJECT_ID} \
             ) edges \
             WHERE dependent IS NOT NULL AND dependency IS NOT NULL AND dependent <> dependency \
             ORDER BY 1, 2"
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Dependency {
            dependent: r.get("dependent"),
            dependency: r.get("dependency"),
        })
        .collect())
}

/// The column defaults and domain checks [`super::plan::break_cycles`]
/// split off, as objects created after their table or domain and after what
/// they call (pg_dump's `ALTER TABLE … SET DEFAULT` and `ALTER DOMAIN … ADD
/// CONSTRAINT` after the function). They go with their owner, so a failed
/// restore's clean-up has nothing of theirs to drop.
pub(crate) async fn split_parts(
    client: &Transaction<'_>,
    split: &BTreeSet<String>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let mut objects = Vec::new();
    for key in split {
        let Some((owner, part)) = super::plan::part_owner(key) else {
            continue;
        };
        let (kind, sql) = if key.starts_with(super::plan::DEFAULT_KEY) {
            (
                "column default",
                "SELECT pg_describe_object('pg_attrdef'::regclass, ad.oid, 0) AS describe, \
                        format('ALTER TABLE ONLY %s ALTER COLUMN %I SET DEFAULT %s', c.oid::regclass, a.attname, \
                               pg_get_expr(ad.adbin, ad.adrelid)) AS ddl, \
                        format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attrdef ad JOIN pg_catalog.pg_attribute a \
                                ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum \
                                WHERE ad.adrelid = pg_catalog.to_regclass(%L) AND a.attname = %L)', \
                               c.oid::regclass::text, a.attname) AS exists \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid \
                 JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3",
            )
        } else {
            (
                "domain constraint",
                "SELECT pg_describe_object('pg_constraint'::regclass, con.oid, 0) AS describe, \
                        format('ALTER DOMAIN %s ADD CONSTRAINT %I %s', t.oid::regtype, con.conname, \
                               pg_get_constraintdef(con.oid)) AS ddl, \
                        format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint \
                                WHERE contypid = pg_catalog.to_regtype(%L) AND conname = %L)', \
                               t.oid::regtype::text, con.conname) AS exists \
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                 JOIN pg_constraint con ON con.contypid = t.oid \
                 WHERE n.nspname = $1 AND t.typname = $2 AND con.conname = $3",
            )
        };
        let rows = client
            .query(sql, &[&owner.schema, &owner.name, &part])
            .await
            .map_err(|source| PostgresError::Query {
                what: "reading a column default or domain check created apart",
                source,
            })?;
        objects.extend(rows.iter().map(|row| CatalogObject {
            relation: None,
            kind: kind.to_owned(),
            describe: row.get("describe"),
            key: key.clone(),
            schema: Some(owner.schema.clone()),
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: String::new(),
            drop_name: String::new(),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        }));
    }
    Ok(objects)
}

/// The comment a placeholder view carries until its body replaces it, so a
/// restore tells its own placeholder from a view the target already had.
const PLACEHOLDER_COMMENT: &str = "pgbackup: placeholder until its functions exist";

/// Plain views whose body [`super::plan::break_cycles`] split off: each gets
/// a placeholder (its columns as typed NULLs, as pg_dump's
/// `createDummyViewAsClause`) and its body becomes an object created after
/// the functions it calls (`CREATE OR REPLACE VIEW`, then its settings).
async fn split_views(
    client: &Transaction<'_>,
    split: &BTreeSet<String>,
    views: &mut [View],
) -> Result<Vec<CatalogObject>, PostgresError> {
    let mut objects = Vec::new();
    for key in split
        .iter()
        .filter(|key| key.starts_with(super::plan::VIEW_BODY_KEY))
    {
        let Some((name, _)) = super::plan::part_owner(key) else {
            continue;
        };
        let Some(view) = views.iter_mut().find(|v| v.name == name && !v.materialized) else {
            continue;
        };
        let row = client
            .query_one(
                "SELECT format('CREATE VIEW %s AS SELECT %s', c.oid::regclass, \
                        string_agg(format('NULL::%s%s AS %I', format_type(a.atttypid, a.atttypmod), \
                                          CASE WHEN a.attcollation <> t.typcollation THEN ' COLLATE ' || \
                                            (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) \
                                               FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace \
                                              WHERE co.oid = a.attcollation) ELSE '' END, a.attname), \
                                   ', ' ORDER BY a.attnum)) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE n.nspname = $1 AND c.relname = $2 GROUP BY c.oid",
                &[&name.schema, &name.name],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "reading the columns of a view in a cycle",
                source,
            })?;
        let placeholder: String = row.get(0);
        let marker = super::schema::quote_literal(PLACEHOLDER_COMMENT);
        view.placeholder = Some(format!(
            "{placeholder}; COMMENT ON VIEW {} IS {marker}",
            name.quoted()
        ));
        let mut ddl = view.ddl.replacen("CREATE VIEW ", "CREATE OR REPLACE VIEW ", 1);
        for setting in &view.settings {
            ddl.push_str("; ");
            ddl.push_str(setting);
        }
        ddl.push_str(&format!("; COMMENT ON VIEW {} IS NULL", name.quoted()));
        objects.push(CatalogObject {
            relation: None,
            kind: "view definition".to_owned(),
            describe: format!("definition of view {}", name.display()),
            key: key.clone(),
            schema: Some(name.schema.clone()),
            ddl,
            // Only over the restore's own placeholder (a missing view, or
            // one the target had, is left alone).
            exists: format!(
                "SELECT pg_catalog.obj_description(pg_catalog.to_regclass({}), 'pg_class') IS DISTINCT FROM {marker}",
                super::schema::quote_literal(&name.quoted())
            ),
            drop_kind: String::new(),
            drop_name: String::new(),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: Vec::new(),
        });
    }
    Ok(objects)
}

struct ColumnRow {
    name: String,
    type_name: String,
    not_null: bool,
    default: Option<String>,
    identity: String,
    generated: String,
    collation: Option<String>,
    /// Defined on the table itself (not only inherited from a parent).
    local: bool,
    /// PostgreSQL 18+: the name of the column's NOT NULL constraint.
    not_null_name: Option<String>,
    /// PostgreSQL 18+: false for a `NOT VALID` NOT NULL constraint, which is
    /// added after the data instead (the rows may hold nulls).
    not_null_valid: bool,
    /// PostgreSQL 18+: `NOT NULL NO INHERIT`.
    not_null_no_inherit: bool,
}

async fn capture_tables(
    client: &Transaction<'_>,
    filter: &TableFilter,
    server_version_num: i32,
    split_defaults: &BTreeSet<(QualifiedName, String)>,
) -> Result<Vec<Table>, PostgresError> {
    let rows = query(
        client,
        "listing tables",
        &format!(
            "SELECT c.oid::bigint AS oid, n.nspname::text AS schema, c.relname::text AS name, \
                    c.relkind::text AS relkind, c.relispartition AS is_partition, \
                    c.relpersistence::text AS persistence, pg_get_partkeydef(c.oid) AS partition_key, \
                    CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END AS partition_bound, \
                    c.relrowsecurity AS row_security, c.relforcerowsecurity AS force_row_security, \
                    array_to_string(c.reloptions, ', ') AS storage, \
                    (SELECT array_to_string(ARRAY(SELECT 'toast.' || o FROM unnest(tc.reloptions) o), ', ') \
                       FROM pg_class tc WHERE tc.oid = c.reltoastrelid) AS toast_storage, \
                    c.relreplident::text AS replica_identity, {column_settings} AS column_settings, \
                    CASE WHEN c.reloftype <> 0 THEN c.reloftype::regtype::text END AS of_type, \
                    {ACCESS_METHOD} AS access_method, \
                    (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
                      WHERE i.indrelid = c.oid AND i.indisclustered) AS clustered_index, \
                    ARRAY(SELECT pg_get_statisticsobjdef(s.oid) || \
                                 COALESCE('; ALTER STATISTICS ' || quote_ident(sn.nspname) || '.' || quote_ident(s.stxname) || \
                                          ' SET STATISTICS ' || NULLIF(to_jsonb(s) ->> 'stxstattarget', '-1'), '') || \
                                 COALESCE('; COMMENT ON STATISTICS ' || quote_ident(sn.nspname) || '.' || quote_ident(s.stxname) || \
                                          ' IS ' || quote_literal(obj_description(s.oid, 'pg_statistic_ext')), '') \
                            FROM pg_statistic_ext s JOIN pg_namespace sn ON sn.oid = s.stxnamespace WHERE s.stxrelid = c.oid \
                           ORDER BY s.stxname) AS statistics, \
                    ARRAY(SELECT quote_ident(pn.nspname) || '.' || quote_ident(p.relname) FROM pg_inherits i \
                            JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace \
                           WHERE i.inhrelid = c.oid AND NOT c.relispartition ORDER BY i.inhseqno) AS inherits, \
                    (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
                      WHERE i.indrelid = c.oid AND i.indisreplident) AS replica_index, \
                    (SELECT pn.nspname::text FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
                       JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE i.inhrelid = c.oid AND c.relispartition) \
                      AS parent_schema, \
                    (SELECT p.relname::text FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
                       WHERE i.inhrelid = c.oid AND c.relispartition) AS parent_name, \
                    (SELECT ts.spcname::text FROM pg_tablespace ts WHERE ts.oid = CASE \
                       WHEN c.reltablespace <> 0 THEN c.reltablespace \
                       WHEN c.relispartition AND EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
                                                          WHERE i.inhrelid = c.oid AND p.reltablespace <> 0) \
                         THEN (SELECT dattablespace FROM pg_database WHERE datname = current_database()) END) \
                      AS tablespace \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND {USER_NAMESPACE} AND {} ORDER BY c.oid",
            not_from_extension("pg_class", "c.oid"),
            column_settings = column_settings("TABLE ONLY"),
        ),
    )
    .await?;

    struct Candidate {
        oid: i64,
        name: QualifiedName,
        kind: TableKind,
        unlogged: bool,
        partition_key: Option<String>,
        partition_bound: Option<String>,
        parent: Option<QualifiedName>,
        row_security: bool,
        force_row_security: bool,
        settings: Vec<String>,
        /// Parents by (non-partition) inheritance, quoted, in order.
        inherits: Vec<String>,
        /// A typed table's type (`CREATE TABLE … OF type`).
        of_type: Option<String>,
        access_method: Option<String>,
        tablespace: Option<String>,
    }
    let mut candidates: Vec<Candidate> = rows
        .iter()
        .map(|r| {
            let relkind: String = r.get("relkind");
            let is_partition: bool = r.get("is_partition");
            let parent = match (
                r.get::<_, Option<String>>("parent_schema"),
                r.get::<_, Option<String>>("parent_name"),
            ) {
                (Some(schema), Some(name)) => Some(QualifiedName::new(schema, name)),
                _ => None,
            };
            Candidate {
                oid: r.get("oid"),
                name: QualifiedName::new(r.get::<_, String>("schema"), r.get::<_, String>("name")),
                kind: if is_partition {
                    TableKind::Partition
                } else if relkind == "p" {
                    TableKind::Partitioned
                } else {
                    TableKind::Table
                },
                unlogged: r.get::<_, String>("persistence") == "u",
                partition_key: r.get("partition_key"),
                partition_bound: r.get("partition_bound"),
                parent,
                row_security: r.get("row_security"),
                force_row_security: r.get("force_row_security"),
                settings: table_settings(r),
                inherits: r.get("inherits"),
                of_type: r.get("of_type"),
                access_method: r.get("access_method"),
                tablespace: r.get("tablespace"),
            }
        })
        .collect();

    // Select data roots by the filter, then keep their partitions with them.
    let roots: BTreeMap<QualifiedName, QualifiedName> = {
        let parents: BTreeMap<QualifiedName, QualifiedName> = candidates
            .iter()
            .filter_map(|c| c.parent.clone().map(|p| (c.name.clone(), p)))
            .collect();
        candidates
            .iter()
            .map(|c| {
                let mut root = c.name.clone();
                while let Some(parent) = parents.get(&root) {
                    root = parent.clone();
                }
                (c.name.clone(), root)
            })
            .collect()
    };
    let data_roots: Vec<QualifiedName> = candidates
        .iter()
        .filter(|c| c.kind != TableKind::Partition)
        .map(|c| c.name.clone())
        .collect();
    let selected_roots = super::select_tables(&data_roots, filter)?;
    candidates.retain(|c| selected_roots.contains(&roots[&c.name]));
    // Parents before partitions (ATTACH PARTITION can make a parent younger).
    let mut ordered: Vec<Candidate> = Vec::with_capacity(candidates.len());
    while !candidates.is_empty() {
        let ready = candidates
            .iter()
            .position(|c| {
                c.parent
                    .as_ref()
                    .is_none_or(|p| ordered.iter().any(|o| &o.name == p))
            })
            .unwrap_or(0);
        ordered.push(candidates.remove(ready));
    }
    if ordered.is_empty() {
        return Ok(Vec::new());
    }

    let oid_list = ordered
        .iter()
        .map(|c| c.oid.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut columns: BTreeMap<i64, Vec<ColumnRow>> = BTreeMap::new();
    for r in query(
        client,
        "listing columns",
        &format!(
            "SELECT a.attrelid::bigint AS relid, a.attname::text AS name, \
                    format_type(a.atttypid, a.atttypmod) AS type_name, a.attnotnull AS not_null, \
                    pg_get_expr(ad.adbin, ad.adrelid) AS default_expr, a.attidentity::text AS identity, \
                    a.attgenerated::text AS generated, a.attislocal AS local, \
                    nn.conname::text AS not_null_name, COALESCE(nn.convalidated, true) AS not_null_valid, \
                    COALESCE(nn.connoinherit, false) AS not_null_no_inherit, \
                    CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0 THEN \
                      (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co \
                       JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) END AS collation \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
             LEFT JOIN pg_constraint nn ON nn.conrelid = a.attrelid AND nn.contype = 'n' AND nn.conkey[1] = a.attnum \
             WHERE a.attrelid IN ({oid_list}) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum"
        ),
    )
    .await?
    {
        columns.entry(r.get("relid")).or_default().push(ColumnRow {
            name: r.get("name"),
            type_name: r.get("type_name"),
            not_null: r.get("not_null"),
            default: r.get("default_expr"),
            identity: r.get("identity"),
            generated: r.get("generated"),
            collation: r.get("collation"),
            local: r.get("local"),
            not_null_name: r.get("not_null_name"),
            not_null_valid: r.get("not_null_valid"),
            not_null_no_inherit: r.get("not_null_no_inherit"),
        });
    }

    let mut constraints: BTreeMap<i64, Vec<NamedDdl>> = BTreeMap::new();
    let mut key_indexes: BTreeMap<i64, Vec<KeyIndex>> = BTreeMap::new();
    let mut foreign_keys: BTreeMap<i64, Vec<ForeignKey>> = BTreeMap::new();
    for r in query(
        client,
        "listing constraints",
        &format!(
            "SELECT con.conrelid::bigint AS relid, con.conname::text AS name, con.contype::text AS kind, \
                    pg_get_constraintdef(con.oid) AS definition, \
                    rn.nspname::text AS references_schema, rc.relname::text AS references_name, \
                    (SELECT NULLIF(array_to_string(ic.reloptions, ', '), '') FROM pg_class ic \
                      WHERE ic.oid = con.conindid AND con.contype IN ('p', 'u')) AS index_options, \
                    con.condeferrable AS deferrable, con.condeferred AS deferred, \
                    CASE WHEN con.contype IN ('p', 'u') AND EXISTS (SELECT 1 FROM pg_class ic \
                              JOIN pg_am am ON am.oid = ic.relam WHERE ic.oid = con.conindid AND am.amname = 'btree') \
                         THEN {key_index} END AS key_index, \
                    (SELECT ts.spcname::text FROM pg_class ic JOIN pg_tablespace ts ON ts.oid = ic.reltablespace \
                      WHERE ic.oid = con.conindid AND con.contype IN ('p', 'u', 'x')) AS index_tablespace \
             FROM pg_constraint con LEFT JOIN pg_class rc ON rc.oid = con.confrelid \
             LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
             WHERE con.conrelid IN ({oid_list}) \
               AND (con.contype IN ('p', 'u', 'c', 'x', 'f') OR (con.contype = 'n' AND NOT con.convalidated)) \
               AND con.conislocal AND con.conparentid = 0 \
             ORDER BY con.conrelid, con.contype = 'c', con.conname",
            key_index = index_ddl("con.conindid"),
        ),
    )
    .await?
    {
        let relid: i64 = r.get("relid");
        let table = &ordered[ordered.iter().position(|c| c.oid == relid).unwrap_or(0)].name;
        let name: String = r.get("name");
        let definition = with_index_options(r.get("definition"), r.get("index_options"));
        let ddl = format!(
            "ALTER TABLE ONLY {} ADD CONSTRAINT {} {definition}",
            table.quoted(),
            quote_ident(&name)
        );
        // A key's index in its tablespace, as pg_dump writes it.
        let ddl = match r.get::<_, Option<String>>("index_tablespace") {
            Some(tablespace) => super::tablespaces::placed(&tablespace, &ddl),
            None => ddl,
        };
        if r.get::<_, String>("kind") == "f" {
            foreign_keys.entry(relid).or_default().push(ForeignKey {
                name,
                references: QualifiedName::new(
                    r.get::<_, String>("references_schema"),
                    r.get::<_, String>("references_name"),
                ),
                ddl: ddl.replacen("ALTER TABLE ONLY", "ALTER TABLE", 1),
            });
        } else {
            let kind: String = r.get("kind");
            let ordinary = ordered
                .iter()
                .any(|c| c.oid == relid && c.kind == TableKind::Table);
            // A btree key of an ordinary table can be built as a plain
            // unique index beside the table's other indexes, then taken over
            // by its constraint (`USING INDEX` refuses partitioned tables
            // and other access methods, e.g. a temporal key's GiST). Its
            // index is named as the constraint (a constraint renames its
            // index), and has the default sort order and no expression or
            // predicate, as `USING INDEX` requires, being the key's own.
            if let Some(create_index) = r.get::<_, Option<String>>("key_index").filter(|_| ordinary) {
                let key = if kind == "p" { "PRIMARY KEY" } else { "UNIQUE" };
                let deferrable = match (r.get::<_, bool>("deferrable"), r.get::<_, bool>("deferred")) {
                    (true, true) => " DEFERRABLE INITIALLY DEFERRED",
                    (true, false) => " DEFERRABLE",
                    (false, _) => "",
                };
                key_indexes.entry(relid).or_default().push(KeyIndex {
                    attach: format!(
                        "ALTER TABLE ONLY {} ADD CONSTRAINT {} {key} USING INDEX {}{deferrable}",
                        table.quoted(),
                        quote_ident(&name),
                        quote_ident(&name)
                    ),
                    constraint: name.clone(),
                    // Already in its tablespace (`index_ddl`).
                    create_index,
                });
            }
            let name = QualifiedName::new(table.schema.clone(), name);
            // Constraints on a partitioned table must not use ONLY, and a
            // CHECK must reach inheritance children too (they inherit it).
            let ddl = if kind == "c"
                || ordered
                    .iter()
                    .any(|c| c.oid == relid && c.kind == TableKind::Partitioned)
            {
                ddl.replacen("ALTER TABLE ONLY", "ALTER TABLE", 1)
            } else {
                ddl
            };
            constraints
                .entry(relid)
                .or_default()
                .push(NamedDdl::new(name, ddl));
        }
    }

    let mut indexes: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    // Keys and indexes of partitions attached to their parent's: their
    // names and tablespaces are their own (made before the parent's, or
    // moved), which adding the parent's alone would not give back.
    let mut partition_indexes: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in query(
        client,
        "listing keys of partitions",
        &format!(
            "SELECT con.conrelid::bigint AS relid, \
                    format('ALTER TABLE %s %s ADD CONSTRAINT %I ', \
                           CASE WHEN c.relkind = 'p' THEN '' ELSE 'ONLY' END, con.conrelid::regclass, con.conname) AS head, \
                    pg_get_constraintdef(con.oid) AS definition, \
                    CASE WHEN con.contype <> 'x' THEN NULLIF(array_to_string(ic.reloptions, ', '), '') END AS index_options, \
                    ts.spcname::text AS index_tablespace \
             FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
             JOIN pg_class ic ON ic.oid = con.conindid LEFT JOIN pg_tablespace ts ON ts.oid = ic.reltablespace \
             WHERE con.conrelid IN ({oid_list}) AND con.contype IN ('p', 'u', 'x') AND con.conparentid <> 0 \
             ORDER BY con.conrelid, (SELECT p.conname FROM pg_constraint p WHERE p.oid = con.conparentid), con.conname"
        ),
    )
    .await?
    {
        let ddl = format!(
            "{}{}",
            r.get::<_, String>("head"),
            with_index_options(r.get("definition"), r.get("index_options"))
        );
        let ddl = match r.get::<_, Option<String>>("index_tablespace") {
            Some(tablespace) => super::tablespaces::placed(&tablespace, &ddl),
            None => ddl,
        };
        partition_indexes.entry(r.get("relid")).or_default().push(ddl);
    }
    // Indexes that back no constraint, on the table itself or, attached
    // to its parent's, as a partition's own (ordered by the parent index's
    // name, the order the parent's are made in).
    for r in query(
        client,
        "listing indexes",
        &format!(
            "SELECT i.indrelid::bigint AS relid, {} AS ddl, ic.relispartition AS attached FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid IN ({oid_list}) \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid \
                               AND con.contype IN ('p', 'u', 'x')) \
             ORDER BY i.indrelid, ic.relispartition, \
                      (SELECT pc.relname FROM pg_inherits h JOIN pg_class pc ON pc.oid = h.inhparent \
                        WHERE h.inhrelid = i.indexrelid), ic.relname",
            index_ddl("i.indexrelid")
        ),
    )
    .await?
    {
        let relid: i64 = r.get("relid");
        // On a partitioned table (a sub-partitioned partition too: the
        // server prints ONLY for these only) the index is printed `ON ONLY`,
        // which makes an invalid index with none on the partitions; without
        // ONLY it is built on every partition too (taking over those made
        // before it), as pg_dump's attach steps end up.
        let ddl = r.get::<_, String>("ddl").replacen(" ON ONLY ", " ON ", 1);
        let list = if r.get("attached") {
            &mut partition_indexes
        } else {
            &mut indexes
        };
        list.entry(relid).or_default().push(ddl);
    }

    let inherited_trigger_filter = if server_version_num >= 130_000 {
        "AND t.tgparentid = 0"
    } else {
        ""
    };
    let mut triggers: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in query(
        client,
        "listing triggers",
        &format!(
            "SELECT t.tgrelid::bigint AS relid, pg_get_triggerdef(t.oid) AS ddl, t.tgname::text AS name, \
                    t.tgenabled::text AS state FROM pg_trigger t \
             WHERE t.tgrelid IN ({oid_list}) AND NOT t.tgisinternal {inherited_trigger_filter} \
             ORDER BY t.tgrelid, t.tgname"
        ),
    )
    .await?
    {
        let relid: i64 = r.get("relid");
        let table = &ordered[ordered.iter().position(|c| c.oid == relid).unwrap_or(0)].name;
        let list = triggers.entry(relid).or_default();
        list.push(r.get("ddl"));
        // O: enabled (the default after CREATE); the others are restored.
        let state = match r.get::<_, String>("state").as_str() {
            "D" => Some("DISABLE TRIGGER"),
            "R" => Some("ENABLE REPLICA TRIGGER"),
            "A" => Some("ENABLE ALWAYS TRIGGER"),
            _ => None,
        };
        if let Some(state) = state {
            list.push(format!(
                "ALTER TABLE {} {state} {}",
                table.quoted(),
                quote_ident(&r.get::<_, String>("name"))
            ));
        }
    }

    // Row-level security: the table's flags, then its policies.
    let mut row_security: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for c in &ordered {
        if c.row_security {
            row_security.entry(c.oid).or_default().push(format!(
                "ALTER TABLE {} ENABLE ROW LEVEL SECURITY",
                c.name.quoted()
            ));
        }
        if c.force_row_security {
            row_security.entry(c.oid).or_default().push(format!(
                "ALTER TABLE {} FORCE ROW LEVEL SECURITY",
                c.name.quoted()
            ));
        }
    }
    for r in query(
        client,
        "listing row-level security policies",
        &format!(
            "SELECT pol.polrelid::bigint AS relid, pol.polname::text AS name, pol.polpermissive AS permissive, \
                    pol.polcmd::text AS command, \
                    CASE WHEN pol.polroles = '{{0}}' THEN 'PUBLIC' ELSE \
                      (SELECT string_agg(quote_ident(rolname), ', ' ORDER BY rolname) FROM pg_roles \
                       WHERE oid = ANY (pol.polroles)) END AS roles, \
                    pg_get_expr(pol.polqual, pol.polrelid) AS using_expr, \
                    pg_get_expr(pol.polwithcheck, pol.polrelid) AS check_expr \
             FROM pg_policy pol WHERE pol.polrelid IN ({oid_list}) ORDER BY pol.polrelid, pol.polname"
        ),
    )
    .await?
    {
        let relid: i64 = r.get("relid");
        let table = &ordered[ordered.iter().position(|c| c.oid == relid).unwrap_or(0)].name;
        let command = match r.get::<_, String>("command").as_str() {
            "r" => "SELECT",
            "a" => "INSERT",
            "w" => "UPDATE",
            "d" => "DELETE",
            _ => "ALL",
        };
        let mut ddl = format!(
            "CREATE POLICY {} ON {} AS {} FOR {command} TO {}",
            quote_ident(&r.get::<_, String>("name")),
            table.quoted(),
            if r.get::<_, bool>("permissive") {
                "PERMISSIVE"
            } else {
                "RESTRICTIVE"
            },
            r.get::<_, String>("roles"),
        );
        if let Some(using) = r.get::<_, Option<String>>("using_expr") {
            ddl.push_str(&format!(" USING ({using})"));
        }
        if let Some(check) = r.get::<_, Option<String>>("check_expr") {
            ddl.push_str(&format!(" WITH CHECK ({check})"));
        }
        row_security.entry(relid).or_default().push(ddl);
    }

    // A partition whose columns are not in its parent's order (created on
    // its own, then attached) is created the same way, or it would take the
    // parent's order.
    let own_column_order: BTreeSet<i64> = ordered
        .iter()
        .filter(|c| c.kind == TableKind::Partition)
        .filter_map(|c| {
            let parent = ordered.iter().find(|p| Some(&p.name) == c.parent.as_ref())?;
            let names = |oid: i64| -> Vec<&str> {
                columns
                    .get(&oid)
                    .map(|cols| cols.iter().map(|col| col.name.as_str()).collect())
                    .unwrap_or_default()
            };
            // On 18 a partition made on its own and then attached keeps
            // its own NOT NULL constraint names; one made `PARTITION OF`
            // takes its parent's.
            let not_null_names = |oid: i64| -> BTreeMap<&str, &str> {
                columns
                    .get(&oid)
                    .map(|cols| {
                        cols.iter()
                            .filter_map(|col| Some((col.name.as_str(), col.not_null_name.as_deref()?)))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let parent_names = not_null_names(parent.oid);
            let own_names = not_null_names(c.oid)
                .into_iter()
                .any(|(column, constraint)| parent_names.get(column).is_some_and(|p| *p != constraint));
            (names(c.oid) != names(parent.oid) || own_names).then_some(c.oid)
        })
        .collect();
    Ok(ordered
        .into_iter()
        .map(|c| {
            let mut cols = columns.remove(&c.oid).unwrap_or_default();
            // A default split off to break a cycle is set after the table
            // (and the function it calls) exist.
            for col in &mut cols {
                if split_defaults.contains(&(c.name.clone(), col.name.clone())) {
                    col.default = None;
                }
            }
            let copy_columns = cols
                .iter()
                .filter(|col| col.generated.is_empty())
                .map(|col| col.name.clone())
                .collect();
            // An inheritance child lists only its own columns; the rest come
            // from its parents.
            let listed: Vec<&ColumnRow> = cols
                .iter()
                .filter(|col| col.local || c.inherits.is_empty())
                .collect();
            let create_ddl = create_table_ddl(
                &c.name,
                TableShape {
                    kind: c.kind,
                    unlogged: c.unlogged,
                    partition_key: c.partition_key.as_deref(),
                    parent: c.parent.as_ref(),
                    partition_bound: c.partition_bound.as_deref(),
                    own_column_order: own_column_order.contains(&c.oid),
                    of_type: c.of_type.as_deref(),
                    inherits: &c.inherits,
                    access_method: c.access_method.as_deref(),
                },
                &listed,
            );
            Table {
                name: c.name,
                kind: c.kind,
                parent: c.parent,
                create_ddl,
                copy_columns,
                constraints: constraints.remove(&c.oid).unwrap_or_default(),
                foreign_keys: foreign_keys.remove(&c.oid).unwrap_or_default(),
                indexes: indexes.remove(&c.oid).unwrap_or_default(),
                partition_indexes: partition_indexes.remove(&c.oid).unwrap_or_default(),
                triggers: triggers.remove(&c.oid).unwrap_or_default(),
                row_security: row_security.remove(&c.oid).unwrap_or_default(),
                key_indexes: key_indexes.remove(&c.oid).unwrap_or_default(),
                settings: c.settings,
                tablespace: c.tablespace,
            }
        })
        .collect())
}

/// A primary key's or unique constraint's definition with its index's
/// storage parameters (`pg_get_constraintdef` leaves them out; an
/// exclusion constraint has them), before `DEFERRABLE` as the grammar wants.
fn with_index_options(mut definition: String, options: Option<String>) -> String {
    if let Some(options) = options {
        let at = definition.find(" DEFERRABLE").unwrap_or(definition.len());
        definition.insert_str(at, &format!(" WITH ({options})"));
    }
    definition
}

/// A table's storage parameters and replica identity, as statements.
fn table_settings(row: &Row) -> Vec<String> {
    let name = QualifiedName::new(row.get::<_, String>("schema"), row.get::<_, String>("name"));
    let mut settings: Vec<String> = row.get("column_settings");
    for options in ["storage", "toast_storage"] {
        if let Some(options) = row.get::<_, Option<String>>(options).filter(|o| !o.is_empty()) {
            settings.push(format!("ALTER TABLE ONLY {} SET ({options})", name.quoted()));
        }
    }
    let identity = match row.get::<_, String>("replica_identity").as_str() {
        "f" => Some("FULL".to_owned()),
        "n" => Some("NOTHING".to_owned()),
        "i" => row
            .get::<_, Option<String>>("replica_index")
            .map(|index| format!("USING INDEX {}", quote_ident(&index))),
        _ => None,
    };
    if let Some(identity) = identity {
        settings.push(format!(
            "ALTER TABLE ONLY {} REPLICA IDENTITY {identity}",
            name.quoted()
        ));
    }
    settings.extend(row.get::<_, Vec<String>>("statistics"));
    if let Some(index) = row.get::<_, Option<String>>("clustered_index") {
        settings.push(format!(
            "ALTER TABLE {} CLUSTER ON {}",
            name.quoted(),
            quote_ident(&index)
        ));
    }
    settings
}

/// Placeholder in a column definition, replaced by the identity sequence's
/// options once sequences are read.
const IDENTITY_OPTIONS: &str = "\u{1}IDENTITY_OPTIONS\u{1}";

/// What, besides its columns, shapes a table's `CREATE TABLE`.
struct TableShape<'a> {
    kind: TableKind,
    unlogged: bool,
    partition_key: Option<&'a str>,
    parent: Option<&'a QualifiedName>,
    partition_bound: Option<&'a str>,
    /// A partition created with its own column list, then attached.
    own_column_order: bool,
    /// A typed table's type.
    of_type: Option<&'a str>,
    /// Parents by (non-partition) inheritance, quoted: the columns that
    /// come only from them are not listed.
    inherits: &'a [String],
    /// Its table access method, when not the default heap (the restore
    /// session sets heap as the default, as pg_dump does).
    access_method: Option<&'a str>,
}

fn create_table_ddl(name: &QualifiedName, shape: TableShape<'_>, columns: &[&ColumnRow]) -> String {
    let partition_clause = shape
        .partition_key
        .map(|key| format!(" PARTITION BY {key}"))
        .unwrap_or_default();
    let unlogged = if shape.unlogged { "UNLOGGED " } else { "" };
    let using = shape
        .access_method
        .map(|method| format!(" USING {}", quote_ident(method)))
        .unwrap_or_default();
    let attach = match (shape.kind, shape.parent, shape.partition_bound) {
        (TableKind::Partition, Some(parent), Some(bound)) => Some((parent, bound)),
        _ => None,
    };
    if let Some((parent, bound)) = attach
        && !shape.own_column_order
    {
        return format!(
            "CREATE {unlogged}TABLE {} PARTITION OF {} {bound}{partition_clause}{using}",
            name.quoted(),
            parent.quoted()
        );
    }
    if let Some(of_type) = shape.of_type {
        // A typed table's columns are its type's; only their defaults and
        // NOT NULL are its own.
        let options: Vec<String> = columns
            .iter()
            .filter(|col| col.not_null || col.default.is_some())
            .map(|col| {
                let mut def = format!("{} WITH OPTIONS", quote_ident(&col.name));
                if let Some(expr) = &col.default {
                    def.push_str(&format!(" DEFAULT {expr}"));
                }
                if col.not_null {
                    def.push_str(" NOT NULL");
                }
                def
            })
            .collect();
        let options = if options.is_empty() {
            String::new()
        } else {
            format!(" ({})", options.join(", "))
        };
        return format!(
            "CREATE {unlogged}TABLE {} OF {of_type}{options}{partition_clause}{using}",
            name.quoted()
        );
    }
    let definitions: Vec<String> = columns
        .iter()
        .map(|col| {
            let mut def = format!("{} {}", quote_ident(&col.name), col.type_name);
            if let Some(collation) = &col.collation {
                def.push_str(&format!(" COLLATE {collation}"));
            }
            match (col.generated.as_str(), col.identity.as_str(), &col.default) {
                ("s", _, Some(expr)) => def.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED")),
                ("v", _, Some(expr)) => def.push_str(&format!(" GENERATED ALWAYS AS ({expr}) VIRTUAL")),
                (_, "a", _) => def.push_str(&format!(" GENERATED ALWAYS AS IDENTITY{IDENTITY_OPTIONS}")),
                (_, "d", _) => def.push_str(&format!(" GENERATED BY DEFAULT AS IDENTITY{IDENTITY_OPTIONS}")),
                (_, _, Some(expr)) => def.push_str(&format!(" DEFAULT {expr}")),
                _ => {}
            }
            // A NOT VALID one is added after the data (with the constraints).
            if col.not_null && col.identity.is_empty() && col.not_null_valid {
                // Its name when not the one PostgreSQL 18 would choose.
                if let Some(constraint) = &col.not_null_name
                    && *constraint != format!("{}_{}_not_null", name.name, col.name)
                {
                    def.push_str(&format!(" CONSTRAINT {}", quote_ident(constraint)));
                }
                def.push_str(" NOT NULL");
                if col.not_null_no_inherit {
                    def.push_str(" NO INHERIT");
                }
            }
            def
        })
        .collect();
    let inherits = if shape.inherits.is_empty() {
        String::new()
    } else {
        format!(" INHERITS ({})", shape.inherits.join(", "))
    };
    let mut ddl = format!(
        "CREATE {unlogged}TABLE {} ({}){inherits}{partition_clause}{using}",
        name.quoted(),
        definitions.join(", ")
    );
    if let Some((parent, bound)) = attach {
        ddl.push_str(&format!(
            "; ALTER TABLE ONLY {} ATTACH PARTITION {} {bound}",
            parent.quoted(),
            name.quoted()
        ));
    }
    ddl
}

async fn capture_sequences(
    client: &Transaction<'_>,
    tables: &BTreeSet<QualifiedName>,
) -> Result<Vec<Sequence>, PostgresError> {
    // A sequence owned by a table outside the backup belongs to that table.
    capture_sequences_where(client, &|_, owner| {
        owner.is_none_or(|owner| tables.contains(&owner.table))
    })
    .await
}

/// The sequences `keep` (given a sequence's name and owning column) keeps,
/// each read only if kept.
async fn capture_sequences_where(
    client: &Transaction<'_>,
    keep: &(dyn Fn(&QualifiedName, Option<&SequenceOwner>) -> bool + Sync),
) -> Result<Vec<Sequence>, PostgresError> {
    let rows = query(
        client,
        "listing sequences",
        &format!(
            "SELECT n.nspname::text AS schema, c.relname::text AS name, format_type(s.seqtypid, NULL) AS data_type, \
                    s.seqstart AS start, s.seqincrement AS increment, s.seqmax AS max, s.seqmin AS min, \
                    s.seqcache AS cache, s.seqcycle AS cycle, tn.nspname::text AS owner_schema, \
                    tc.relname::text AS owner_table, a.attname::text AS owner_column, d.deptype::text AS dependency, \
                    c.relpersistence::text AS persistence, tc.relpersistence::text AS owner_persistence \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_sequence s ON s.seqrelid = c.oid \
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
             LEFT JOIN pg_class tc ON tc.oid = d.refobjid LEFT JOIN pg_namespace tn ON tn.oid = tc.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE c.relkind = 'S' AND {USER_NAMESPACE} AND {} ORDER BY c.oid",
            not_from_extension("pg_class", "c.oid")
        ),
    )
    .await?;
    let mut sequences = Vec::new();
    for r in rows {
        let name = QualifiedName::new(r.get::<_, String>("schema"), r.get::<_, String>("name"));
        let owned_by = match (
            r.get::<_, Option<String>>("owner_schema"),
            r.get::<_, Option<String>>("owner_table"),
            r.get::<_, Option<String>>("owner_column"),
        ) {
            (Some(schema), Some(table), Some(column)) => Some(SequenceOwner {
                table: QualifiedName::new(schema, table),
                column,
            }),
            _ => None,
        };
        if !keep(&name, owned_by.as_ref()) {
            continue;
        }
        let identity = r.get::<_, Option<String>>("dependency").as_deref() == Some("i");
        // An identity sequence takes its type from the column.
        let data_type = if identity {
            String::new()
        } else {
            format!("AS {} ", r.get::<_, String>("data_type"))
        };
        let options = format!(
            "{data_type}INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {}{}",
            r.get::<_, i64>("increment"),
            r.get::<_, i64>("min"),
            r.get::<_, i64>("max"),
            r.get::<_, i64>("start"),
            r.get::<_, i64>("cache"),
            if r.get::<_, bool>("cycle") { " CYCLE" } else { "" }
        );
        let state = query(
            client,
            "reading a sequence's current value",
            &format!("SELECT last_value, is_called FROM {}", name.quoted()),
        )
        .await?;
        sequences.push(Sequence {
            ddl: Some(if identity {
                // Its persistence, when not its table's (as pg_dump writes it).
                let persistence = r.get::<_, String>("persistence");
                let own = if Some(&persistence) == r.get::<_, Option<String>>("owner_persistence").as_ref() {
                    ""
                } else if persistence == "u" {
                    "UNLOGGED "
                } else {
                    "LOGGED "
                };
                format!("SEQUENCE NAME {} {own}{options}", name.quoted())
            } else {
                // UNLOGGED sequences came in PostgreSQL 15.
                let unlogged = if r.get::<_, String>("persistence") == "u" {
                    "UNLOGGED "
                } else {
                    ""
                };
                format!("CREATE {unlogged}SEQUENCE {} {options}", name.quoted())
            }),
            name,
            owned_by,
            identity,
            last_value: state[0].get("last_value"),
            is_called: state[0].get("is_called"),
        });
    }
    Ok(sequences)
}

/// Puts each identity sequence's options into its column definition.
fn attach_identity_options(tables: &mut [Table], sequences: &[Sequence]) {
    for sequence in sequences.iter().filter(|s| s.identity) {
        let (Some(owner), Some(options)) = (&sequence.owned_by, &sequence.ddl) else {
            continue;
        };
        if let Some(table) = tables.iter_mut().find(|t| t.name == owner.table) {
            let column_start = format!("{} ", quote_ident(&owner.column));
            if let Some(at) = table.create_ddl.find(&column_start)
                && let Some(marker) = table.create_ddl[at..].find(IDENTITY_OPTIONS)
            {
                let at = at + marker;
                table
                    .create_ddl
                    .replace_range(at..at + IDENTITY_OPTIONS.len(), &format!(" ({options})"));
            }
        }
    }
    for table in tables {
        table.create_ddl = table.create_ddl.replace(IDENTITY_OPTIONS, "");
    }
}

/// The parents of the backed-up tables (inheritance; their partitions go
/// with their roots) and of the foreign tables (inheritance, or a
/// partition's), each with its columns, for the restore's check that a
/// parent it does not create is in the target
/// ([`DatabaseSchema::inherited_parents`]).
async fn capture_inherited_parents(
    client: &Transaction<'_>,
    tables: &[QualifiedName],
) -> Result<Vec<InheritedParent>, PostgresError> {
    let table_list: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let chosen = "(SELECT unnest($1::text[])::regclass::oid)";
    let sql = format!(
        "SELECT cn.nspname::text AS child_schema, c.relname::text AS child_name, c.relkind = 'f' AS child_foreign, \
                c.relispartition AS partition, pn.nspname::text AS parent_schema, p.relname::text AS parent_name, \
                p.relkind = 'f' AS parent_foreign, (p.oid IN {chosen} OR p.relkind = 'f') AS parent_in_backup, \
                ARRAY(SELECT a.attname::text FROM pg_attribute a \
                       WHERE a.attrelid = p.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS column_names, \
                ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                       WHERE a.attrelid = p.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS column_types, \
                CASE WHEN p.relkind = 'p' THEN pg_get_partkeydef(p.oid) END AS partition_key \
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
           JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace \
          WHERE (c.oid IN {chosen} AND NOT c.relispartition) \
             OR (c.relkind = 'f' AND {foreign_user} AND {foreign_not_extension}) \
          ORDER BY i.inhrelid, i.inhseqno",
        foreign_user = USER_NAMESPACE.replace("n.nspname", "cn.nspname"),
        foreign_not_extension = not_from_extension("pg_class", "c.oid"),
    );
    let rows = client
        .query(sql.as_str(), &[&table_list])
        .await
        .map_err(|source| PostgresError::Query {
            what: "listing the parents of tables",
            source,
        })?;
    Ok(rows
        .iter()
        .map(|r| {
            let names: Vec<String> = r.get("column_names");
            let types: Vec<String> = r.get("column_types");
            InheritedParent {
                child: QualifiedName::new(
                    r.get::<_, String>("child_schema"),
                    r.get::<_, String>("child_name"),
                ),
                child_foreign: r.get("child_foreign"),
                partition: r.get("partition"),
                parent: QualifiedName::new(
                    r.get::<_, String>("parent_schema"),
                    r.get::<_, String>("parent_name"),
                ),
                parent_in_backup: r.get("parent_in_backup"),
                parent_foreign: r.get("parent_foreign"),
                columns: names
                    .into_iter()
                    .zip(types)
                    .map(|(name, type_name)| ParentColumn { name, type_name })
                    .collect(),
                partition_key: r.get("partition_key"),
            }
        })
        .collect())
}

/// User collations. The ICU locale's column was renamed twice (13-14
/// `collcollate`, 15-16 `colliculocale`, 17+ `colllocale`), so it is read
/// from the row as JSON.
async fn capture_collations(client: &Transaction<'_>) -> Result<Vec<NamedDdl>, PostgresError> {
    let rows = query(
        client,
        "listing collations",
        &format!(
            "SELECT n.nspname::text AS schema, co.collname::text AS name, \
                    CASE co.collprovider \
                      WHEN 'i' THEN format('provider = icu, locale = %L, deterministic = %s%s', \
                             COALESCE(to_jsonb(co) ->> 'colllocale', to_jsonb(co) ->> 'colliculocale', co.collcollate), \
                             CASE WHEN co.collisdeterministic THEN 'true' ELSE 'false' END, \
                             COALESCE(', rules = ' || quote_literal(to_jsonb(co) ->> 'collicurules'), '')) \
                      WHEN 'b' THEN format('provider = builtin, locale = %L', to_jsonb(co) ->> 'colllocale') \
                      ELSE format('provider = libc, lc_collate = %L, lc_ctype = %L', co.collcollate, co.collctype) \
                    END AS options \
             FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace \
             WHERE {USER_NAMESPACE} AND {} ORDER BY co.oid",
            not_from_extension("pg_collation", "co.oid")
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let name = QualifiedName::new(r.get::<_, String>("schema"), r.get::<_, String>("name"));
            let ddl = format!(
                "CREATE COLLATION {} ({})",
                name.quoted(),
                r.get::<_, String>("options")
            );
            NamedDdl::new(name, ddl)
        })
        .collect())
}

/// User enum, domain, composite and range types, and the domains' NOT VALID
/// constraints (added after the data, as pg_dump does: inside `CREATE
/// DOMAIN` they are a syntax error, and before the load they would check
/// the rows they were never checked against).
pub(crate) async fn capture_types(
    client: &Transaction<'_>,
    split_checks: &BTreeSet<(QualifiedName, String)>,
) -> Result<(Vec<NamedDdl>, Vec<DomainConstraint>), PostgresError> {
    let rows = query(
        client,
        "listing enum, domain and composite types",
        &format!(
            "SELECT n.nspname::text AS schema, t.typname::text AS name, t.typtype::text AS kind, \
                    (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid) \
                      AS labels, \
                    format_type(t.typbasetype, t.typtypmod) AS base_type, \
                    t.typnotnull AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.contypid = t.oid \
                                                 AND c.contype = 'n') AS not_null, \
                    t.typdefault AS default_expr, \
                    (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co \
                       JOIN pg_namespace cn ON cn.oid = co.collnamespace \
                     WHERE co.oid = t.typcollation \
                       AND t.typcollation <> (SELECT b.typcollation FROM pg_type b WHERE b.oid = t.typbasetype)) \
                      AS collation, \
                    (SELECT array_agg('CONSTRAINT ' || quote_ident(c.conname) || ' ' || pg_get_constraintdef(c.oid) \
                                      ORDER BY c.conname) FROM pg_constraint c WHERE c.contypid = t.oid AND c.convalidated) \
                      AS checks, \
                    (SELECT array_agg(c.conname::text ORDER BY c.conname) FROM pg_constraint c \
                      WHERE c.contypid = t.oid AND c.convalidated) AS check_names, \
                    (SELECT array_agg(c.conname::text ORDER BY c.conname) FROM pg_constraint c \
                      WHERE c.contypid = t.oid AND NOT c.convalidated) AS unvalidated_names, \
                    (SELECT array_agg(format('ALTER DOMAIN %s ADD CONSTRAINT %I %s', t.oid::regtype, c.conname, \
                                             pg_get_constraintdef(c.oid)) ORDER BY c.conname) FROM pg_constraint c \
                      WHERE c.contypid = t.oid AND NOT c.convalidated) AS unvalidated, \
                    (SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod) || \
                              CASE WHEN a.attcollation <> 0 AND a.attcollation <> at.typcollation THEN \
                                ' COLLATE ' || (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) \
                                                FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace \
                                                WHERE co.oid = a.attcollation) ELSE '' END, \
                            ', ' ORDER BY a.attnum) \
                       FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid \
                      WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS attributes, \
                    (SELECT 'SUBTYPE = ' || format_type(rg.rngsubtype, NULL) || \
                            CASE WHEN NOT opc.opcdefault THEN ', SUBTYPE_OPCLASS = ' || quote_ident(opn.nspname) || '.' || \
                                 quote_ident(opc.opcname) ELSE '' END || \
                            CASE WHEN rg.rngcollation <> 0 AND rg.rngcollation <> st.typcollation THEN ', COLLATION = ' || \
                                 (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co \
                                    JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = rg.rngcollation) \
                                 ELSE '' END || \
                            CASE WHEN rg.rngcanonical <> 0 THEN ', CANONICAL = ' || rg.rngcanonical::regproc ELSE '' END || \
                            CASE WHEN rg.rngsubdiff <> 0 THEN ', SUBTYPE_DIFF = ' || rg.rngsubdiff::regproc ELSE '' END || \
                            COALESCE(', MULTIRANGE_TYPE_NAME = ' || \
                                     ((to_jsonb(rg) ->> 'rngmultitypid')::oid)::regtype::text, '') \
                       FROM pg_range rg JOIN pg_opclass opc ON opc.oid = rg.rngsubopc \
                       JOIN pg_namespace opn ON opn.oid = opc.opcnamespace JOIN pg_type st ON st.oid = rg.rngsubtype \
                      WHERE rg.rngtypid = t.oid) AS range_options \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             LEFT JOIN pg_class tc ON tc.oid = t.typrelid \
             WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND tc.relkind = 'c')) \
               AND {USER_NAMESPACE} AND {} ORDER BY t.oid",
            not_from_extension("pg_type", "t.oid")
        ),
    )
    .await?;
    let mut unvalidated = Vec::new();
    for r in &rows {
        let names: Vec<String> = r
            .get::<_, Option<Vec<String>>>("unvalidated_names")
            .unwrap_or_default();
        let statements: Vec<String> = r.get::<_, Option<Vec<String>>>("unvalidated").unwrap_or_default();
        for (constraint, ddl) in names.into_iter().zip(statements) {
            unvalidated.push(DomainConstraint {
                domain: QualifiedName::new(r.get::<_, String>("schema"), r.get::<_, String>("name")),
                name: constraint,
                ddl,
            });
        }
    }
    let types = rows
        .iter()
        .map(|r| {
            let name = QualifiedName::new(r.get::<_, String>("schema"), r.get::<_, String>("name"));
            let ddl = if r.get::<_, String>("kind") == "e" {
                let labels: Vec<String> = r.get::<_, Option<Vec<String>>>("labels").unwrap_or_default();
                let labels: Vec<String> = labels.iter().map(|l| super::schema::quote_literal(l)).collect();
                format!("CREATE TYPE {} AS ENUM ({})", name.quoted(), labels.join(", "))
            } else if r.get::<_, String>("kind") == "r" {
                let options: String = r.get::<_, Option<String>>("range_options").unwrap_or_default();
                format!("CREATE TYPE {} AS RANGE ({options})", name.quoted())
            } else if r.get::<_, String>("kind") == "c" {
                let attributes: String = r.get::<_, Option<String>>("attributes").unwrap_or_default();
                format!("CREATE TYPE {} AS ({attributes})", name.quoted())
            } else {
                let mut ddl = format!(
                    "CREATE DOMAIN {} AS {}",
                    name.quoted(),
                    r.get::<_, String>("base_type")
                );
                if let Some(collation) = r.get::<_, Option<String>>("collation") {
                    ddl.push_str(&format!(" COLLATE {collation}"));
                }
                if let Some(default) = r.get::<_, Option<String>>("default_expr") {
                    ddl.push_str(&format!(" DEFAULT {default}"));
                }
                if r.get::<_, bool>("not_null") {
                    ddl.push_str(" NOT NULL");
                }
                let checks = r.get::<_, Option<Vec<String>>>("checks").unwrap_or_default();
                let check_names = r.get::<_, Option<Vec<String>>>("check_names").unwrap_or_default();
                for (check, check_name) in checks.into_iter().zip(check_names) {
                    // Added after the function it calls (split_parts).
                    if split_checks.contains(&(name.clone(), check_name)) {
                        continue;
                    }
                    ddl.push(' ');
                    ddl.push_str(&check);
                }
                ddl
            };
            NamedDdl::new(name, ddl)
        })
        .collect();
    Ok((types, unvalidated))
}

/// The tables `roots` (with their partitions) as the database holds them
/// now, in the shape of a backup's schema section, for a restore to compare
/// with the backup's. Identity columns come without their sequence's
/// options. Leaves the transaction with an empty `search_path`, as
/// [`capture_schema`] does, so the DDL prints as the backup's did.
pub(crate) async fn capture_tables_now(
    client: &Transaction<'_>,
    roots: &[QualifiedName],
    split_defaults: &BTreeSet<(QualifiedName, String)>,
) -> Result<Vec<Table>, PostgresError> {
    if roots.is_empty() {
        return Ok(Vec::new());
    }
    let version = query(
        client,
        "reading the server version to compare tables",
        "SELECT pg_catalog.set_config('search_path', '', true), current_setting('server_version_num')::int AS version",
    )
    .await?;
    let filter = TableFilter {
        include: roots.iter().map(ToString::to_string).collect(),
        ..TableFilter::default()
    };
    let mut tables = capture_tables(client, &filter, version[0].get("version"), split_defaults).await?;
    for table in &mut tables {
        table.create_ddl = table.create_ddl.replace(IDENTITY_OPTIONS, "");
    }
    Ok(tables)
}

/// The objects other than tables and sequences, as the database holds them
/// now: what [`capture_schema`] records of them, read by the same queries,
/// for a restore to compare with the backup's (`restore::proof`).
pub(crate) struct NamedNow {
    /// The server's `server_version_num`.
    pub server_version_num: i32,
    pub functions: Vec<NamedDdl>,
    pub views: Vec<View>,
    pub types: Vec<NamedDdl>,
    pub domain_constraints: Vec<DomainConstraint>,
    pub objects: Vec<CatalogObject>,
    pub comments: Vec<String>,
    pub security_labels: Vec<super::security_labels::SecurityLabel>,
}

/// Reads [`NamedNow`] in a bounded number of queries (one per kind
/// family, not per object). `tables`: the backup's tables, of which those
/// the database has decide which comments and foreign tables are read;
/// `split_checks`: the domain checks the backup created apart, left out of
/// their domains as the backup left them. Leaves the transaction with an
/// empty `search_path`, so names print as the backup's did.
pub(crate) async fn capture_named_now(
    client: &Transaction<'_>,
    tables: &[QualifiedName],
    split_checks: &BTreeSet<(QualifiedName, String)>,
) -> Result<NamedNow, PostgresError> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let row = client
        .query_one(
            "SELECT pg_catalog.set_config('search_path', '', true), \
                    current_setting('server_version_num')::int AS version, \
                    ARRAY(SELECT t FROM unnest($1::text[]) t WHERE pg_catalog.to_regclass(t) IS NOT NULL) AS present",
            &[&names],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading which of the backup's tables are here",
            source,
        })?;
    let present: Vec<String> = row.get("present");
    let present: Vec<QualifiedName> = tables
        .iter()
        .filter(|table| present.contains(&table.quoted()))
        .cloned()
        .collect();
    let (types, domain_constraints) = capture_types(client, split_checks).await?;
    Ok(NamedNow {
        server_version_num: row.get("version"),
        functions: capture_functions(client).await?,
        views: capture_views(client).await?,
        types,
        domain_constraints,
        objects: capture_objects(
            client,
            &CaptureContext {
                server_version_num: row.get("version"),
                tables: &present,
            },
        )
        .await?,
        comments: capture_comments(client, &present).await?,
        security_labels: super::security_labels::capture(client, &present).await?,
    })
}

//! Text search parsers, templates, dictionaries and configurations, as
//! pg_dump's `dumpTSParser`, `dumpTSTemplate`, `dumpTSDictionary` and
//! `dumpTSConfig` write them: a configuration with its mappings
//! (`pg_ts_config_map`, one `ADD MAPPING FOR` per token type, its
//! dictionaries in their order), a dictionary with its options as stored.
//! Dictionaries and configurations have owners; none of the four has
//! grants. `pg_depend` orders a dictionary after its template, a
//! configuration after its parser and dictionaries, and a table whose
//! column or default names a configuration after it.

use super::{
    CaptureContext, CatalogObject, Stage, comment_sql, exists_in_schema_sql, not_from_extension, object_key,
    query, role_statements,
};
use crate::postgres::PostgresError;

const USER_NAMESPACE: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'";

/// One family member: its catalog, the words `CREATE`/`DROP`/`COMMENT ON`
/// take, its name and namespace columns, and the SQL of its `CREATE`
/// (over `x`, the catalog row, and `n`, its namespace).
struct Family {
    catalog: &'static str,
    kind: &'static str,
    sql_kind: &'static str,
    name_column: &'static str,
    namespace_column: &'static str,
    owner_column: Option<&'static str>,
    create: &'static str,
}

const FAMILIES: [Family; 4] = [
    Family {
        catalog: "pg_ts_parser",
        kind: "text search parser",
        sql_kind: "TEXT SEARCH PARSER",
        name_column: "prsname",
        namespace_column: "prsnamespace",
        owner_column: None,
        create: "format('CREATE TEXT SEARCH PARSER %I.%I (START = %s, GETTOKEN = %s, END = %s%s, LEXTYPES = %s)', \
                        n.nspname, x.prsname, x.prsstart::regproc, x.prstoken::regproc, x.prsend::regproc, \
                        CASE WHEN x.prsheadline <> 0 THEN ', HEADLINE = ' || x.prsheadline::regproc::text ELSE '' END, \
                        x.prslextype::regproc)",
    },
    Family {
        catalog: "pg_ts_template",
        kind: "text search template",
        sql_kind: "TEXT SEARCH TEMPLATE",
        name_column: "tmplname",
        namespace_column: "tmplnamespace",
        owner_column: None,
        create: "format('CREATE TEXT SEARCH TEMPLATE %I.%I (%sLEXIZE = %s)', n.nspname, x.tmplname, \
                        CASE WHEN x.tmplinit <> 0 THEN 'INIT = ' || x.tmplinit::regproc::text || ', ' ELSE '' END, \
                        x.tmpllexize::regproc)",
    },
    Family {
        catalog: "pg_ts_dict",
        kind: "text search dictionary",
        sql_kind: "TEXT SEARCH DICTIONARY",
        name_column: "dictname",
        namespace_column: "dictnamespace",
        owner_column: Some("dictowner"),
        // The options as the server stored them (`stopwords = 'english'`).
        create: "(SELECT format('CREATE TEXT SEARCH DICTIONARY %I.%I (TEMPLATE = %I.%I%s)', n.nspname, x.dictname, \
                               tn.nspname, t.tmplname, ', ' || x.dictinitoption) \
                    FROM pg_ts_template t JOIN pg_namespace tn ON tn.oid = t.tmplnamespace WHERE t.oid = x.dicttemplate)",
    },
    Family {
        catalog: "pg_ts_config",
        kind: "text search configuration",
        sql_kind: "TEXT SEARCH CONFIGURATION",
        name_column: "cfgname",
        namespace_column: "cfgnamespace",
        owner_column: Some("cfgowner"),
        // As pg_dump: the parser, then the mappings by token type, each
        // token's dictionaries in their order (`mapseqno`).
        create: "(SELECT format('CREATE TEXT SEARCH CONFIGURATION %I.%I (PARSER = %I.%I)', n.nspname, x.cfgname, \
                               pn.nspname, p.prsname) \
                    FROM pg_ts_parser p JOIN pg_namespace pn ON pn.oid = p.prsnamespace WHERE p.oid = x.cfgparser) \
                 || COALESCE((SELECT string_agg(format(E';\\nALTER TEXT SEARCH CONFIGURATION %I.%I ADD MAPPING FOR %I WITH %s', \
                                                       n.nspname, x.cfgname, t.alias, m.dictionaries), '' ORDER BY m.token) \
                                FROM (SELECT mm.maptokentype AS token, \
                                             string_agg(mm.mapdict::regdictionary::text, ', ' ORDER BY mm.mapseqno) AS dictionaries \
                                        FROM pg_ts_config_map mm WHERE mm.mapcfg = x.oid GROUP BY mm.maptokentype) m \
                                JOIN ts_token_type(x.cfgparser) t ON t.tokid = m.token), '')",
    },
];

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let mut objects = Vec::new();
    for family in &FAMILIES {
        let Family {
            catalog,
            kind,
            sql_kind,
            name_column,
            namespace_column,
            owner_column,
            create,
        } = family;
        let privileges = match owner_column {
            Some(owner) => format!(
                "ARRAY[pg_get_userbyid(x.{owner}) || chr(31) || \
                       format('ALTER {sql_kind} %I.%I OWNER TO %I', n.nspname, x.{name_column}, pg_get_userbyid(x.{owner}))]"
            ),
            None => "ARRAY[]::text[]".to_owned(),
        };
        let rows = query(
            client,
            "listing text search objects",
            &format!(
                "SELECT x.oid, n.nspname::text AS schema, pg_describe_object('{catalog}'::regclass, x.oid, 0) AS describe, \
                        format('%I.%I', n.nspname, x.{name_column}) AS name, \
                        {create} || {comment} AS ddl, {exists} AS exists, {privileges} AS privileges \
                 FROM {catalog} x JOIN pg_namespace n ON n.oid = x.{namespace_column} \
                 WHERE {USER_NAMESPACE} AND {not_extension} \
                 ORDER BY x.oid",
                comment = comment_sql(
                    catalog,
                    "x.oid",
                    &format!("format('{sql_kind} %I.%I', n.nspname, x.{name_column})")
                ),
                exists = exists_in_schema_sql(catalog, name_column, namespace_column, "n.nspname", &format!("x.{name_column}")),
                not_extension = not_from_extension(catalog, "x.oid"),
            ),
        )
        .await?;
        objects.extend(rows.iter().map(|row| CatalogObject {
            relation: None,
            kind: (*kind).to_owned(),
            describe: row.get("describe"),
            key: object_key(catalog, row.get("oid")),
            schema: Some(row.get("schema")),
            ddl: row.get("ddl"),
            exists: row.get("exists"),
            drop_kind: (*sql_kind).to_owned(),
            drop_name: row.get("name"),
            stage: Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: role_statements(row.get("privileges")),
        }));
    }
    Ok(objects)
}

//! Operators, operator families and operator classes, as pg_dump's
//! `dumpOpr`, `dumpOpfamily` and `dumpOpclass` write them.
//!
//! - An operator names its commutator and negator as `OPERATOR(schema.op)`:
//!   when that one does not exist yet PostgreSQL makes a shell operator,
//!   which the other's own `CREATE OPERATOR` fills in later. So operators
//!   need no order among themselves, and a shell (`oprcode = 0`) counts as
//!   missing on the target. Shell operators of the source are not carried.
//! - A family is created empty, then given the members that belong to no
//!   class (`ALTER OPERATOR FAMILY … ADD`): those `pg_depend` ties to the
//!   family itself. Cross-type btree members and optional GiST support
//!   functions end up there even when `CREATE OPERATOR CLASS` added them.
//! - A class always names its family (created before it), and lists the
//!   members `pg_depend` ties to the class, its `STORAGE` type and whether
//!   it is the `DEFAULT` for its type. A class over built-in operators and
//!   functions is carried like any other.
//!
//! Members are written with their types (`regoperator`, `regprocedure`),
//! so the catalogs come back row for row; the family and class depend on
//! their members' operators and functions (`depends_on`), which `pg_depend`
//! records only on the member rows.

use super::{
    CaptureContext, CatalogObject, Stage, USER_NAMESPACE, comment_sql, not_from_extension, object_key, query,
};
use crate::postgres::PostgresError;
use crate::postgres::schema::{RoleStatement, quote_ident};

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let mut objects = capture_operators(client).await?;
    objects.extend(capture_families(client).await?);
    objects.extend(capture_classes(client).await?);
    Ok(objects)
}

/// SQL: an operator as `OPERATOR(schema.op)` names it (commutator, negator).
fn operator_reference(oid: &str) -> String {
    format!(
        "(SELECT format('OPERATOR(%I.%s)', rn.nspname, r.oprname) FROM pg_operator r \
           JOIN pg_namespace rn ON rn.oid = r.oprnamespace WHERE r.oid = {oid})"
    )
}

async fn capture_operators(
    client: &tokio_postgres::Transaction<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    // `schema.op (left, right)`, as DROP, COMMENT ON and ALTER … OWNER take it.
    let name = "format('%I.%s (%s, %s)', n.nspname, o.oprname, \
                       CASE WHEN o.oprleft = 0 THEN 'NONE' ELSE format_type(o.oprleft, NULL) END, \
                       CASE WHEN o.oprright = 0 THEN 'NONE' ELSE format_type(o.oprright, NULL) END)";
    let rows = query(
        client,
        "listing operators",
        &format!(
            "SELECT o.oid, pg_describe_object('pg_operator'::regclass, o.oid, 0) AS describe, \
                    n.nspname::text AS schema, {name} AS name, pg_get_userbyid(o.oprowner) AS owner, \
                    format('CREATE OPERATOR %I.%s (', n.nspname, o.oprname) || array_to_string(ARRAY[ \
                      'FUNCTION = ' || o.oprcode::regproc::text, \
                      CASE WHEN o.oprleft <> 0 THEN 'LEFTARG = ' || format_type(o.oprleft, NULL) END, \
                      CASE WHEN o.oprright <> 0 THEN 'RIGHTARG = ' || format_type(o.oprright, NULL) END, \
                      CASE WHEN o.oprcom <> 0 THEN 'COMMUTATOR = ' || {commutator} END, \
                      CASE WHEN o.oprnegate <> 0 THEN 'NEGATOR = ' || {negator} END, \
                      CASE WHEN o.oprcanmerge THEN 'MERGES' END, \
                      CASE WHEN o.oprcanhash THEN 'HASHES' END, \
                      CASE WHEN o.oprrest <> 0 THEN 'RESTRICT = ' || o.oprrest::regproc::text END, \
                      CASE WHEN o.oprjoin <> 0 THEN 'JOIN = ' || o.oprjoin::regproc::text END], ', ') || ')' \
                      || {comment} AS ddl, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_operator \
                            WHERE oid = pg_catalog.to_regoperator(%L) AND oprcode <> 0)', o.oid::regoperator::text) AS exists \
             FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace \
             WHERE {USER_NAMESPACE} AND o.oprcode <> 0 AND {not_extension} \
             ORDER BY o.oid",
            commutator = operator_reference("o.oprcom"),
            negator = operator_reference("o.oprnegate"),
            comment = comment_sql("pg_operator", "o.oid", &format!("'OPERATOR ' || {name}")),
            not_extension = not_from_extension("pg_operator", "o.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get("name");
            CatalogObject {
                relation: None,
                kind: "operator".to_owned(),
                describe: row.get("describe"),
                key: object_key("pg_operator", row.get("oid")),
                schema: Some(row.get("schema")),
                ddl: row.get("ddl"),
                exists: row.get("exists"),
                drop_kind: "OPERATOR".to_owned(),
                privileges: vec![owner("OPERATOR", &name, row.get("owner"))],
                drop_name: name,
                stage: Stage::BeforeTables,
                depends_on: Vec::new(),
            }
        })
        .collect())
}

fn owner(kind: &str, name: &str, role: String) -> RoleStatement {
    RoleStatement {
        statement: format!("ALTER {kind} {name} OWNER TO {}", quote_ident(&role)),
        role,
    }
}

/// SQL: the operators (`pg_amop`) and support functions (`pg_amproc`) of
/// family `family` that `pg_depend` ties to `owner_class`/`owner_oid` (the
/// class, or the family itself for members of no class), as the member
/// list of `CREATE OPERATOR CLASS` or `ALTER OPERATOR FAMILY … ADD`
/// (`members`) and as the keys of the operators and functions they name
/// (`member_keys`).
fn members_sql(owner_class: &str, owner_oid: &str, family: &str) -> String {
    format!(
        "SELECT ao.amopstrategy::int AS number, 1 AS part, \
                format_type(ao.amoplefttype, NULL) || format_type(ao.amoprighttype, NULL) AS types, \
                format('OPERATOR %s %s%s', ao.amopstrategy, ao.amopopr::regoperator, \
                       CASE WHEN ao.amoppurpose = 'o' THEN format(' FOR ORDER BY %I.%I', sn.nspname, sf.opfname) \
                            ELSE '' END) AS member, \
                'obj:pg_operator:' || ao.amopopr::text AS member_key, \
                CASE WHEN ao.amoppurpose = 'o' THEN 'obj:pg_opfamily:' || ao.amopsortfamily::text END AS sort_key \
           FROM pg_amop ao JOIN pg_depend d ON d.classid = 'pg_amop'::regclass AND d.objid = ao.oid \
           LEFT JOIN pg_opfamily sf ON sf.oid = ao.amopsortfamily \
           LEFT JOIN pg_namespace sn ON sn.oid = sf.opfnamespace \
          WHERE d.refclassid = '{owner_class}'::regclass AND d.refobjid = {owner_oid} AND ao.amopfamily = {family} \
         UNION ALL \
         SELECT ap.amprocnum::int, 2, format_type(ap.amproclefttype, NULL) || format_type(ap.amprocrighttype, NULL), \
                format('FUNCTION %s (%s, %s) %s', ap.amprocnum, format_type(ap.amproclefttype, NULL), \
                       format_type(ap.amprocrighttype, NULL), ap.amproc::regprocedure), \
                'function:' || ap.amproc::regprocedure::text, NULL \
           FROM pg_amproc ap JOIN pg_depend d ON d.classid = 'pg_amproc'::regclass AND d.objid = ap.oid \
          WHERE d.refclassid = '{owner_class}'::regclass AND d.refobjid = {owner_oid} AND ap.amprocfamily = {family}"
    )
}

/// SQL columns `members` (comma-separated, operators then functions, by
/// number) and `member_keys` of [`members_sql`].
fn member_columns(owner_class: &str, owner_oid: &str, family: &str) -> String {
    let members = members_sql(owner_class, owner_oid, family);
    format!(
        "(SELECT string_agg(m.member, ', ' ORDER BY m.part, m.number, m.types) FROM ({members}) m) AS members, \
         ARRAY(SELECT k FROM ({members}) m, LATERAL (VALUES (m.member_key), (m.sort_key)) AS keys(k) \
                WHERE k IS NOT NULL) AS member_keys"
    )
}

async fn capture_families(
    client: &tokio_postgres::Transaction<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let name = "format('%I.%I USING %I', n.nspname, f.opfname, am.amname)";
    let rows = query(
        client,
        "listing operator families",
        &format!(
            "SELECT f.oid, pg_describe_object('pg_opfamily'::regclass, f.oid, 0) AS describe, \
                    n.nspname::text AS schema, {name} AS name, pg_get_userbyid(f.opfowner) AS owner, \
                    {comment} AS comment, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_opfamily f \
                              JOIN pg_catalog.pg_namespace n ON n.oid = f.opfnamespace \
                              JOIN pg_catalog.pg_am am ON am.oid = f.opfmethod \
                            WHERE n.nspname = %L AND f.opfname = %L AND am.amname = %L)', \
                           n.nspname, f.opfname, am.amname) AS exists, \
                    {members} \
             FROM pg_opfamily f JOIN pg_namespace n ON n.oid = f.opfnamespace JOIN pg_am am ON am.oid = f.opfmethod \
             WHERE {USER_NAMESPACE} AND {not_extension} \
             ORDER BY f.oid",
            comment = comment_sql("pg_opfamily", "f.oid", &format!("'OPERATOR FAMILY ' || {name}")),
            members = member_columns("pg_opfamily", "f.oid", "f.oid"),
            not_extension = not_from_extension("pg_opfamily", "f.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get("name");
            let mut ddl = format!("CREATE OPERATOR FAMILY {name}");
            if let Some(members) = row.get::<_, Option<String>>("members") {
                ddl.push_str(&format!(";\nALTER OPERATOR FAMILY {name} ADD {members}"));
            }
            ddl.push_str(row.get::<_, &str>("comment"));
            CatalogObject {
                relation: None,
                kind: "operator family".to_owned(),
                describe: row.get("describe"),
                key: object_key("pg_opfamily", row.get("oid")),
                schema: Some(row.get("schema")),
                ddl,
                exists: row.get("exists"),
                drop_kind: "OPERATOR FAMILY".to_owned(),
                privileges: vec![owner("OPERATOR FAMILY", &name, row.get("owner"))],
                drop_name: name,
                stage: Stage::BeforeTables,
                depends_on: row.get("member_keys"),
            }
        })
        .collect())
}

async fn capture_classes(
    client: &tokio_postgres::Transaction<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let name = "format('%I.%I USING %I', n.nspname, c.opcname, am.amname)";
    let rows = query(
        client,
        "listing operator classes",
        &format!(
            "SELECT c.oid, pg_describe_object('pg_opclass'::regclass, c.oid, 0) AS describe, \
                    n.nspname::text AS schema, {name} AS name, pg_get_userbyid(c.opcowner) AS owner, \
                    format('CREATE OPERATOR CLASS %I.%I %sFOR TYPE %s USING %I FAMILY %I.%I AS ', \
                           n.nspname, c.opcname, CASE WHEN c.opcdefault THEN 'DEFAULT ' ELSE '' END, \
                           format_type(c.opcintype, NULL), am.amname, fn.nspname, f.opfname) AS head, \
                    CASE WHEN c.opckeytype <> 0 THEN 'STORAGE ' || format_type(c.opckeytype, NULL) END AS storage, \
                    format_type(c.opcintype, NULL) AS input_type, \
                    {comment} AS comment, \
                    format('SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_opclass c \
                              JOIN pg_catalog.pg_namespace n ON n.oid = c.opcnamespace \
                              JOIN pg_catalog.pg_am am ON am.oid = c.opcmethod \
                            WHERE n.nspname = %L AND c.opcname = %L AND am.amname = %L)', \
                           n.nspname, c.opcname, am.amname) AS exists, \
                    'obj:pg_opfamily:' || c.opcfamily::text AS family_key, \
                    {members} \
             FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace JOIN pg_am am ON am.oid = c.opcmethod \
             JOIN pg_opfamily f ON f.oid = c.opcfamily JOIN pg_namespace fn ON fn.oid = f.opfnamespace \
             WHERE {USER_NAMESPACE} AND {not_extension} \
             ORDER BY c.oid",
            comment = comment_sql("pg_opclass", "c.oid", &format!("'OPERATOR CLASS ' || {name}")),
            members = member_columns("pg_opclass", "c.oid", "c.opcfamily"),
            not_extension = not_from_extension("pg_opclass", "c.oid"),
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get("name");
            let items: Vec<String> = [
                row.get::<_, Option<String>>("storage"),
                row.get::<_, Option<String>>("members"),
            ]
            .into_iter()
            .flatten()
            .collect();
            // A class with no member of its own (all of them loose in the
            // family) still needs something after AS: pg_dump writes its
            // input type as storage, which PostgreSQL takes as no storage.
            let items = if items.is_empty() {
                format!("STORAGE {}", row.get::<_, &str>("input_type"))
            } else {
                items.join(", ")
            };
            let mut depends_on: Vec<String> = row.get("member_keys");
            depends_on.push(row.get("family_key"));
            CatalogObject {
                relation: None,
                kind: "operator class".to_owned(),
                describe: row.get("describe"),
                key: object_key("pg_opclass", row.get("oid")),
                schema: Some(row.get("schema")),
                ddl: format!(
                    "{}{items}{}",
                    row.get::<_, &str>("head"),
                    row.get::<_, &str>("comment")
                ),
                exists: row.get("exists"),
                drop_kind: "OPERATOR CLASS".to_owned(),
                privileges: vec![owner("OPERATOR CLASS", &name, row.get("owner"))],
                drop_name: name,
                stage: Stage::BeforeTables,
                depends_on,
            }
        })
        .collect())
}

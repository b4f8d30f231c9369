//! Default privileges (`pg_default_acl`), as pg_dump's `dumpDefaultACL`
//! restores them: `ALTER DEFAULT PRIVILEGES FOR ROLE r [IN SCHEMA s]
//! GRANT|REVOKE … ON TABLES|SEQUENCES|FUNCTIONS|TYPES|SCHEMAS|LARGE OBJECTS`.
//! A global entry (no schema) holds the whole ACL, which replaces the
//! built-in one (`acldefault`), so it is restored as the difference from
//! that: revokes for the built-in privileges it lacks, grants for the rest.
//! A per-schema entry only adds to the global one: grants only.
//!
//! Every statement is a role statement (its grantee's): a missing role is a
//! warning, and the roles are recorded for `--create-roles`. Applied last,
//! so they do not change the privileges of the objects the restore creates.

use super::{CaptureContext, CatalogObject, Stage, object_key, query, role_statements};
use crate::postgres::PostgresError;

pub(super) async fn capture(
    client: &tokio_postgres::Transaction<'_>,
    _context: &CaptureContext<'_>,
) -> Result<Vec<CatalogObject>, PostgresError> {
    let rows = query(
        client,
        "listing default privileges",
        // The built-in ACL is `acldefault`'s, which spells sequences `s`
        // where pg_default_acl has `S` (as pg_dump does). Each change is
        // one privilege of one grantee; they are grouped by grantee and
        // change, revokes first, in the order of the ACLs.
        "SELECT d.oid, \
                'default privileges of role ' || quote_ident(pg_get_userbyid(d.defaclrole)) \
                  || COALESCE(' in schema ' || quote_ident(n.nspname), '') || ' on ' || lower(w.words) AS describe, \
                ARRAY(SELECT c.role || chr(31) || \
                             format('ALTER DEFAULT PRIVILEGES FOR ROLE %I%s %s %s ON %s %s %s%s', \
                                    pg_get_userbyid(d.defaclrole), \
                                    COALESCE(' IN SCHEMA ' || quote_ident(n.nspname), ''), \
                                    CASE WHEN c.change LIKE 'revoke%' THEN 'REVOKE' ELSE 'GRANT' END \
                                      || CASE c.change WHEN 'revoke-option' THEN ' GRANT OPTION FOR' ELSE '' END, \
                                    string_agg(c.privilege, ', ' ORDER BY c.n), w.words, \
                                    CASE WHEN c.change LIKE 'revoke%' THEN 'FROM' ELSE 'TO' END, \
                                    CASE WHEN c.role = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(c.role) END, \
                                    CASE c.change WHEN 'grant-option' THEN ' WITH GRANT OPTION' ELSE '' END) \
                        FROM (SELECT CASE WHEN COALESCE(a.grantee, o.grantee) = 0 THEN 'PUBLIC' \
                                          ELSE pg_get_userbyid(COALESCE(a.grantee, o.grantee)) END AS role, \
                                     COALESCE(a.privilege_type, o.privilege_type) AS privilege, \
                                     COALESCE(a.n, 0) * 1000 + COALESCE(o.n, 0) AS n, \
                                     CASE WHEN a.grantee IS NULL THEN 'revoke' \
                                          WHEN o.grantee IS NULL AND a.is_grantable THEN 'grant-option' \
                                          WHEN o.grantee IS NULL THEN 'grant' \
                                          WHEN a.is_grantable AND NOT o.is_grantable THEN 'grant-option' \
                                          WHEN o.is_grantable AND NOT a.is_grantable THEN 'revoke-option' END AS change \
                                FROM aclexplode(d.defaclacl) WITH ORDINALITY a (grantor, grantee, privilege_type, is_grantable, n) \
                                FULL JOIN aclexplode(b.base) WITH ORDINALITY o (grantor, grantee, privilege_type, is_grantable, n) \
                                  ON o.grantee = a.grantee AND o.privilege_type = a.privilege_type) c \
                       WHERE c.change IS NOT NULL \
                       GROUP BY c.role, c.change \
                       ORDER BY c.change LIKE 'grant%', min(c.n)) AS privileges \
         FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace \
         CROSS JOIN LATERAL (SELECT CASE WHEN d.defaclnamespace = 0 \
                                         THEN acldefault(CASE WHEN d.defaclobjtype = 'S' THEN 's'::\"char\" \
                                                              ELSE d.defaclobjtype END, d.defaclrole) \
                                         ELSE NULL::aclitem[] END AS base) b \
         CROSS JOIN LATERAL (SELECT CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' \
                                                         WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' \
                                                         WHEN 'n' THEN 'SCHEMAS' WHEN 'L' THEN 'LARGE OBJECTS' END AS words) w \
         ORDER BY d.oid",
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| CatalogObject {
            relation: None,
            kind: "default privileges".to_owned(),
            describe: row.get("describe"),
            key: object_key("pg_default_acl", row.get("oid")),
            schema: None,
            // Nothing to create: the statements are role statements, applied
            // once the roles are known to exist.
            ddl: String::new(),
            exists: "SELECT false".to_owned(),
            drop_kind: String::new(),
            drop_name: String::new(),
            stage: Stage::Last,
            depends_on: Vec::new(),
            privileges: role_statements(row.get("privileges")),
        })
        .collect())
}

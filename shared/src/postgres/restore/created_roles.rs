//! The proof's part for the roles a restore made (`--create-roles`): each
//! is there with the attributes it was created with (the recorded ones,
//! less `SUPERUSER` always and `LOGIN` unless `as-recorded`, as
//! `Role::create_ddl` writes them), its settings and comment, and the
//! recorded memberships of those roles, no fewer and no more, less those a
//! warning of the restore said were not restored. Three queries (the
//! roles, the server's version, the memberships), whatever the number of
//! roles.

use std::collections::BTreeSet;

use tokio_postgres::Transaction;

use super::{PostgresError, skipped_by};
use crate::postgres::kinds::cluster::{Membership, Role, RoleCreation};
use crate::postgres::schema::DatabaseSchema;

/// How the roles `created` (by this restore, with `mode`) differ from the
/// backup's record of them: `role x: …` each.
pub(super) async fn role_differences(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
    created: &[String],
    mode: Option<RoleCreation>,
    warnings: &[String],
) -> Result<Vec<String>, PostgresError> {
    let (Some(mode), Some(cluster)) = (mode, schema.cluster.as_ref()) else {
        return Ok(Vec::new());
    };
    if created.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = created.to_vec();
    let query =
        |what: &'static str| move |source: tokio_postgres::Error| PostgresError::Query { what, source };
    let here: Vec<Role> = client
        .query(
            "SELECT r.rolname::text AS name, r.rolsuper, r.rolcanlogin, r.rolcreatedb, r.rolcreaterole, \
                    r.rolinherit, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
                    to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00' AS valid_until, \
                    COALESCE(r.rolconfig, ARRAY[]::text[]) AS config, \
                    pg_catalog.shobj_description(r.oid, 'pg_authid') AS comment \
             FROM pg_catalog.pg_roles r WHERE r.rolname = ANY($1::text[])",
            &[&names],
        )
        .await
        .map_err(query("reading the roles the restore created"))?
        .iter()
        .map(|row| Role {
            name: row.get("name"),
            superuser: row.get("rolsuper"),
            login: row.get("rolcanlogin"),
            create_db: row.get("rolcreatedb"),
            create_role: row.get("rolcreaterole"),
            inherit: row.get("rolinherit"),
            replication: row.get("rolreplication"),
            bypass_rls: row.get("rolbypassrls"),
            connection_limit: row.get("rolconnlimit"),
            valid_until: row.get("valid_until"),
            config: row.get("config"),
            comment: row.get("comment"),
        })
        .collect();
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(query("reading the server version to compare roles"))?
        .get(0);
    let options = if version >= 160000 {
        "bool_or(am.inherit_option) AS inherit, bool_or(am.set_option) AS set"
    } else {
        "NULL::bool AS inherit, NULL::bool AS set"
    };
    let memberships: Vec<Membership> = client
        .query(
            &format!(
                "SELECT g.rolname::text AS role, m.rolname::text AS member, bool_or(am.admin_option) AS admin, {options} \
                 FROM pg_catalog.pg_auth_members am JOIN pg_catalog.pg_roles g ON g.oid = am.roleid \
                 JOIN pg_catalog.pg_roles m ON m.oid = am.member \
                 WHERE m.rolname = ANY($1::text[]) GROUP BY g.rolname, m.rolname"
            ),
            &[&names],
        )
        .await
        .map_err(query("reading the memberships of the roles the restore created"))?
        .iter()
        .map(|row| Membership {
            role: row.get("role"),
            member: row.get("member"),
            admin: row.get("admin"),
            inherit: row.get("inherit"),
            set: row.get("set"),
        })
        .collect();
    let mut found = Vec::new();
    for recorded in cluster.roles.iter().filter(|r| created.contains(&r.name)) {
        match here.iter().find(|role| role.name == recorded.name) {
            None => found.push(format!("role {}: missing", recorded.name)),
            Some(role) => {
                let differences = attribute_differences(&as_created(recorded, mode), role);
                if !differences.is_empty() {
                    found.push(format!("role {}: {}", recorded.name, differences.join(", ")));
                }
            }
        }
    }
    found.extend(membership_differences(
        &cluster.memberships,
        &memberships,
        created,
        warnings,
    ));
    Ok(found)
}

/// The role as `create_ddl` makes it from its record: never a superuser,
/// and able to log in only as recorded with [`RoleCreation::AsRecorded`].
fn as_created(recorded: &Role, mode: RoleCreation) -> Role {
    Role {
        superuser: false,
        login: mode == RoleCreation::AsRecorded && recorded.login,
        ..recorded.clone()
    }
}

/// `CREATEDB here, NOCREATEDB in the backup`, … for each attribute of
/// `here` that is not `expected`'s.
fn attribute_differences(expected: &Role, here: &Role) -> Vec<String> {
    let mut found = Vec::new();
    let flags = [
        ("SUPERUSER", expected.superuser, here.superuser),
        ("LOGIN", expected.login, here.login),
        ("CREATEDB", expected.create_db, here.create_db),
        ("CREATEROLE", expected.create_role, here.create_role),
        ("INHERIT", expected.inherit, here.inherit),
        ("REPLICATION", expected.replication, here.replication),
        ("BYPASSRLS", expected.bypass_rls, here.bypass_rls),
    ];
    let word = |name: &str, on: bool| if on { name.to_owned() } else { format!("NO{name}") };
    for (name, recorded, held) in flags {
        if recorded != held {
            found.push(format!(
                "{} here, {} in the backup",
                word(name, held),
                word(name, recorded)
            ));
        }
    }
    if expected.connection_limit != here.connection_limit {
        found.push(format!(
            "connection limit {} here, {} in the backup",
            here.connection_limit, expected.connection_limit
        ));
    }
    if expected.valid_until != here.valid_until {
        found.push(format!(
            "valid until {:?} here, {:?} in the backup",
            here.valid_until, expected.valid_until
        ));
    }
    let (recorded, held): (BTreeSet<&String>, BTreeSet<&String>) =
        (expected.config.iter().collect(), here.config.iter().collect());
    if recorded != held {
        found.push(format!(
            "settings {:?} here, {:?} in the backup",
            here.config, expected.config
        ));
    }
    if expected.comment != here.comment {
        found.push(format!(
            "comment {:?} here, {:?} in the backup",
            here.comment, expected.comment
        ));
    }
    found
}

/// The recorded memberships of the `created` roles that are missing or
/// differ (`missing `GRANT g TO m …``), less those a warning says were not
/// restored, and the memberships they have that the backup lacks.
fn membership_differences(
    recorded: &[Membership],
    here: &[Membership],
    created: &[String],
    warnings: &[String],
) -> Vec<String> {
    // The options read on 16+ only; a record from an older server has none.
    let same = |a: &Membership, b: &Membership| {
        a.role == b.role
            && a.member == b.member
            && a.admin == b.admin
            && (a.inherit.is_none() || b.inherit.is_none() || (a.inherit, a.set) == (b.inherit, b.set))
    };
    let mut found = Vec::new();
    for membership in recorded.iter().filter(|m| created.contains(&m.member)) {
        let statement = membership.grant_ddl();
        if here.iter().any(|held| same(membership, held))
            || warnings.iter().any(|w| skipped_by(w, &statement))
        {
            continue;
        }
        found.push(format!(
            "role {}: missing membership `{statement}`",
            membership.member
        ));
    }
    for held in here.iter().filter(|held| !recorded.iter().any(|m| same(m, held))) {
        found.push(format!(
            "role {}: membership `{}` is not in the backup",
            held.member,
            held.grant_ddl()
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> Role {
        Role {
            name: name.into(),
            superuser: true,
            login: true,
            create_db: false,
            create_role: false,
            inherit: true,
            replication: false,
            bypass_rls: false,
            connection_limit: 3,
            valid_until: None,
            config: vec!["work_mem=8MB".into()],
            comment: Some("the app".into()),
        }
    }

    fn member(role: &str, member: &str, admin: bool) -> Membership {
        Membership {
            role: role.into(),
            member: member.into(),
            admin,
            inherit: None,
            set: None,
        }
    }

    #[test]
    fn a_created_role_differs_by_attribute_setting_or_comment_but_not_by_what_creation_leaves_out() {
        let recorded = role("app");
        let created = as_created(&recorded, RoleCreation::Nologin);
        assert!(!created.superuser && !created.login);
        assert!(attribute_differences(&created, &created).is_empty());
        let mut here = created.clone();
        here.create_db = true;
        here.connection_limit = -1;
        here.config.clear();
        here.comment = None;
        assert_eq!(
            attribute_differences(&created, &here),
            vec![
                "CREATEDB here, NOCREATEDB in the backup",
                "connection limit -1 here, 3 in the backup",
                "settings [] here, [\"work_mem=8MB\"] in the backup",
                "comment None here, Some(\"the app\") in the backup",
            ]
        );
        assert!(as_created(&recorded, RoleCreation::AsRecorded).login);
    }

    #[test]
    fn a_membership_lost_or_added_is_a_difference_unless_a_warning_named_it() {
        let recorded = vec![member("group", "app", true), member("other", "app", false)];
        let created = vec!["app".to_owned()];
        assert!(membership_differences(&recorded, &recorded, &created, &[]).is_empty());
        let here = vec![member("group", "app", false), member("extra", "app", false)];
        assert_eq!(
            membership_differences(&recorded, &here, &created, &[]),
            vec![
                "role app: missing membership `GRANT \"group\" TO \"app\" WITH ADMIN OPTION`",
                "role app: missing membership `GRANT \"other\" TO \"app\"`",
                "role app: membership `GRANT \"group\" TO \"app\"` is not in the backup",
                "role app: membership `GRANT \"extra\" TO \"app\"` is not in the backup",
            ]
        );
        let warned = [
            "role \"other\" does not exist here, so this was not restored: GRANT \"other\" TO \"app\""
                .to_owned(),
        ];
        assert_eq!(
            membership_differences(&recorded, &recorded[..1], &created, &warned),
            Vec::<String>::new()
        );
    }
}

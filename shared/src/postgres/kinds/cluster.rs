//! Cluster-wide things a backup names, for disaster recovery into a new
//! instance (issue #24 items 3 and 4): the roles its objects name, with
//! their attributes and memberships among them, and the database's own
//! properties (settings, comment, grants, encoding and locale).
//!
//! They are recorded in every backup (the schema section's optional
//! `cluster` field) and restored only on request: roles with
//! [`RoleCreation`] (`backupctl restore --create-roles`), never altering a
//! role the target has; the database's properties only into a database
//! created for the restore (`--create-db`), never onto an existing one.
//! Passwords are never read (`pg_roles`, not `pg_authid`) nor restored.

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use super::query;
use crate::postgres::PostgresError;
use crate::postgres::schema::{DatabaseSchema, quote_ident, quote_literal};

/// What the backup records beyond the database's objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// Every role the backup's objects name (owners, grantees, policy
    /// roles, default-privilege roles, the database's owner and grantees,
    /// roles with settings in the database), and the roles those are
    /// members of, transitively. Predefined `pg_*` roles are not recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// Memberships of the recorded roles (`GRANT role TO member`), also in
    /// predefined roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memberships: Vec<Membership>,
    /// The backed-up database's own properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseProperties>,
}

/// A role as `pg_roles` shows it (no password: it is never read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    pub name: String,
    pub superuser: bool,
    pub login: bool,
    pub create_db: bool,
    pub create_role: bool,
    pub inherit: bool,
    pub replication: bool,
    pub bypass_rls: bool,
    /// -1: no limit.
    pub connection_limit: i32,
    /// `VALID UNTIL`, as the server prints it in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// `ALTER ROLE … SET` in every database: `name=value` as `rolconfig`
    /// holds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `GRANT role TO member`, with its options (`inherit` and `set` are read
/// from PostgreSQL 16 on; before, the member's INHERIT decides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    pub role: String,
    pub member: String,
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<bool>,
}

/// The database's own properties: applied only to a database created for
/// the restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseProperties {
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `libc`, `icu` (15+) or `builtin` (17+).
    pub locale_provider: String,
    /// The ICU or builtin locale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_rules: Option<String>,
    pub connection_limit: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// `ALTER DATABASE … SET`: `name=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// `ALTER ROLE … IN DATABASE … SET`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_settings: Vec<RoleSettings>,
    /// Whether the database has grants of its own (`datacl` not the
    /// default): then `PUBLIC`'s default `CONNECT, TEMPORARY` is revoked
    /// and [`DatabaseProperties::grants`] given.
    pub custom_grants: bool,
    /// Every grant to a role other than the owner, `PUBLIC` included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<DatabaseGrant>,
    /// Its default tablespace when not `pg_default` (`CREATE DATABASE …
    /// TABLESPACE`, as `pg_dump --create` writes it): used when the server
    /// has it, else a warning (tablespaces.rs: a backup never creates one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<String>,
    /// The database's own `SECURITY LABEL`s (pg_shseclabel), by provider:
    /// given to a database the restore creates, in a session started once
    /// its settings (which may preload the provider) are applied
    /// (`security_labels::apply_database_labels`). A backup holding one is
    /// written in schema format 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_labels: Vec<DatabaseLabel>,
}

/// One label of the database itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseLabel {
    pub provider: String,
    pub label: String,
}

impl DatabaseLabel {
    /// `security label (selinux) on the database`, as refusals and
    /// warnings name it.
    pub fn describe(&self) -> String {
        format!("security label ({}) on the database", self.provider)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleSettings {
    pub role: String,
    pub config: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseGrant {
    /// A role, or `PUBLIC`.
    pub role: String,
    /// `CONNECT, TEMPORARY`, …
    pub privileges: String,
    pub grantable: bool,
}

/// How a restore creates the recorded roles the target lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleCreation {
    /// `NOLOGIN` whatever the source said: nobody can log in as a role
    /// that has no password yet (the default of `--create-roles`).
    Nologin,
    /// Every attribute as recorded, `LOGIN` too (still without a password).
    AsRecorded,
}

impl std::str::FromStr for RoleCreation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "nologin" => Ok(Self::Nologin),
            "as-recorded" => Ok(Self::AsRecorded),
            other => Err(format!(
                "unknown role creation mode {other:?}: use nologin (the default) or as-recorded"
            )),
        }
    }
}

impl std::fmt::Display for RoleCreation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Nologin => "nologin",
            Self::AsRecorded => "as-recorded",
        })
    }
}

/// Reads the roles the captured schema names and the database's
/// properties. Called once the rest of the schema is captured, since the
/// roles are those its statements name.
pub async fn capture(client: &Transaction<'_>, schema: &DatabaseSchema) -> Result<Cluster, PostgresError> {
    let named: Vec<String> = schema
        .privileges
        .iter()
        .chain(schema.objects.iter().flat_map(|o| o.privileges.iter()))
        .chain(crate::postgres::large_objects::privileges(schema))
        .map(|p| p.role.clone())
        .filter(|role| role != "PUBLIC")
        .collect();
    let tables: Vec<String> = schema.tables.iter().map(|t| t.name.quoted()).collect();
    // Roles the objects name, then (recursively) the roles those are
    // members of: their privileges reach the named roles through the
    // memberships, so a recovery without them would grant less.
    let closure = "WITH RECURSIVE named (oid) AS ( \
           SELECT r.oid FROM pg_roles r WHERE r.rolname = ANY($1::text[]) \
           UNION SELECT unnest(p.polroles) FROM pg_policy p \
                  WHERE p.polrelid IN (SELECT pg_catalog.to_regclass(t) FROM unnest($2::text[]) t) \
           UNION SELECT d.defaclrole FROM pg_default_acl d \
           UNION SELECT a.grantee FROM pg_default_acl d, aclexplode(d.defaclacl) a \
           UNION SELECT s.setrole FROM pg_db_role_setting s JOIN pg_database db ON db.oid = s.setdatabase \
                  WHERE db.datname = current_database() \
           UNION SELECT db.datdba FROM pg_database db WHERE db.datname = current_database() \
           UNION SELECT a.grantee FROM pg_database db, aclexplode(db.datacl) a WHERE db.datname = current_database() \
         ), closure (oid) AS ( \
           SELECT oid FROM named \
           UNION SELECT m.roleid FROM pg_auth_members m JOIN closure c ON m.member = c.oid \
         )";
    let rows = client
        .query(
            &format!(
                "{closure} SELECT r.rolname::text AS name, r.rolsuper, r.rolcanlogin, r.rolcreatedb, r.rolcreaterole, \
                        r.rolinherit, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
                        to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00' AS valid_until, \
                        COALESCE(r.rolconfig, ARRAY[]::text[]) AS config, \
                        shobj_description(r.oid, 'pg_authid') AS comment \
                 FROM pg_roles r WHERE r.oid IN (SELECT oid FROM closure) AND r.rolname !~ '^pg_' \
                 ORDER BY r.rolname"
            ),
            &[&named, &tables],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading the roles the backup names",
            source,
        })?;
    let roles: Vec<Role> = rows
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
            // `infinity` prints as NULL through to_char: no limit either way.
            valid_until: row.get("valid_until"),
            config: row.get("config"),
            comment: row.get("comment"),
        })
        .collect();
    let options = if schema.server_version_num >= 160000 {
        "bool_or(am.inherit_option) AS inherit, bool_or(am.set_option) AS set"
    } else {
        "NULL::bool AS inherit, NULL::bool AS set"
    };
    let rows = client
        .query(
            &format!(
                "{closure} SELECT g.rolname::text AS role, m.rolname::text AS member, bool_or(am.admin_option) AS admin, {options} \
                 FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member \
                 WHERE am.member IN (SELECT oid FROM closure) AND m.rolname !~ '^pg_' \
                 GROUP BY g.rolname, m.rolname ORDER BY g.rolname, m.rolname"
            ),
            &[&named, &tables],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading the memberships of the roles the backup names",
            source,
        })?;
    let memberships = rows
        .iter()
        .map(|row| Membership {
            role: row.get("role"),
            member: row.get("member"),
            admin: row.get("admin"),
            inherit: row.get("inherit"),
            set: row.get("set"),
        })
        .collect();
    Ok(Cluster {
        roles,
        memberships,
        database: capture_database(client, schema.server_version_num).await?,
    })
}

pub(crate) async fn capture_database(
    client: &Transaction<'_>,
    server_version_num: i32,
) -> Result<Option<DatabaseProperties>, PostgresError> {
    let (provider, locale, rules) = match server_version_num {
        v if v >= 170000 => ("d.datlocprovider::text", "d.datlocale", "d.daticurules"),
        v if v >= 160000 => ("d.datlocprovider::text", "d.daticulocale", "d.daticurules"),
        v if v >= 150000 => ("d.datlocprovider::text", "d.daticulocale", "NULL::text"),
        _ => ("'c'", "NULL::text", "NULL::text"),
    };
    let rows = query(
        client,
        "reading the database's properties",
        &format!(
            "SELECT pg_get_userbyid(d.datdba)::text AS owner, pg_encoding_to_char(d.encoding)::text AS encoding, \
                    d.datcollate::text AS collate, d.datctype::text AS ctype, \
                    CASE {provider} WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END AS provider, \
                    {locale}::text AS locale, {rules}::text AS rules, d.datconnlimit, \
                    shobj_description(d.oid, 'pg_database') AS comment, \
                    ARRAY(SELECT unnest(s.setconfig) FROM pg_db_role_setting s \
                          WHERE s.setdatabase = d.oid AND s.setrole = 0) AS settings, \
                    ARRAY(SELECT pg_get_userbyid(s.setrole)::text FROM pg_db_role_setting s \
                          WHERE s.setdatabase = d.oid AND s.setrole <> 0 ORDER BY 1) AS setting_roles, \
                    ARRAY(SELECT array_to_string(s.setconfig, chr(1)) FROM pg_db_role_setting s \
                          WHERE s.setdatabase = d.oid AND s.setrole <> 0 ORDER BY pg_get_userbyid(s.setrole)) AS role_configs, \
                    d.datacl IS NOT NULL AS custom_grants, \
                    (SELECT t.spcname::text FROM pg_tablespace t \
                      WHERE t.oid = d.dattablespace AND t.spcname <> 'pg_default') AS tablespace, \
                    ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END \
                          FROM aclexplode(d.datacl) WITH ORDINALITY a (grantor, grantee, privilege_type, is_grantable, n) \
                          WHERE a.grantee <> d.datdba GROUP BY a.grantee, a.is_grantable ORDER BY min(a.n)) AS grantees, \
                    ARRAY(SELECT string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) \
                          FROM aclexplode(d.datacl) WITH ORDINALITY a (grantor, grantee, privilege_type, is_grantable, n) \
                          WHERE a.grantee <> d.datdba GROUP BY a.grantee, a.is_grantable ORDER BY min(a.n)) AS privileges, \
                    ARRAY(SELECT a.is_grantable \
                          FROM aclexplode(d.datacl) WITH ORDINALITY a (grantor, grantee, privilege_type, is_grantable, n) \
                          WHERE a.grantee <> d.datdba GROUP BY a.grantee, a.is_grantable ORDER BY min(a.n)) AS grantable, \
                    ARRAY(SELECT l.provider FROM pg_shseclabel l \
                          WHERE l.classoid = 'pg_database'::regclass AND l.objoid = d.oid ORDER BY l.provider) AS label_providers, \
                    ARRAY(SELECT l.label FROM pg_shseclabel l \
                          WHERE l.classoid = 'pg_database'::regclass AND l.objoid = d.oid ORDER BY l.provider) AS labels \
             FROM pg_database d WHERE d.datname = current_database()"
        ),
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let setting_roles: Vec<String> = row.get("setting_roles");
    let role_configs: Vec<String> = row.get("role_configs");
    let grantees: Vec<String> = row.get("grantees");
    let privileges: Vec<String> = row.get("privileges");
    let grantable: Vec<bool> = row.get("grantable");
    let label_providers: Vec<String> = row.get("label_providers");
    let labels: Vec<String> = row.get("labels");
    Ok(Some(DatabaseProperties {
        owner: row.get("owner"),
        encoding: row.get("encoding"),
        collate: row.get("collate"),
        ctype: row.get("ctype"),
        locale_provider: row.get("provider"),
        locale: row.get("locale"),
        icu_rules: row.get("rules"),
        connection_limit: row.get("datconnlimit"),
        comment: row.get("comment"),
        tablespace: row.get("tablespace"),
        settings: row.get("settings"),
        role_settings: setting_roles
            .into_iter()
            .zip(role_configs)
            .map(|(role, config)| RoleSettings {
                role,
                config: config.split('\u{1}').map(str::to_owned).collect(),
            })
            .collect(),
        custom_grants: row.get("custom_grants"),
        security_labels: label_providers
            .into_iter()
            .zip(labels)
            .map(|(provider, label)| DatabaseLabel { provider, label })
            .collect(),
        grants: grantees
            .into_iter()
            .zip(privileges)
            .zip(grantable)
            .map(|((role, privileges), grantable)| DatabaseGrant {
                role,
                privileges,
                grantable,
            })
            .collect(),
    }))
}

/// Settings whose value is a list of names, which `ALTER … SET` must be
/// given element by element (as pg_dump's `makeAlterConfigCommand` does):
/// quoted whole, `search_path` would become one schema named `a, b`.
const LIST_SETTINGS: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// `SET name TO value` for a `name=value` entry of `rolconfig` or
/// `setconfig`.
pub fn set_clause(entry: &str) -> String {
    let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
    let value = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        split_list(value)
            .iter()
            .map(|item| quote_literal(item))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        quote_literal(value)
    };
    format!("SET {} TO {value}", quote_ident(name))
}

/// Splits a list setting's value (`app, "$user", public`) into its names,
/// double quotes removed, as the server's `SplitGUCList` does.
fn split_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        item.push('"');
                    } else {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_owned();
        }
        items.push(item);
        if chars.next().is_none() {
            break;
        }
    }
    items
}

impl Role {
    /// `CREATE ROLE` and its settings and comment. Never `SUPERUSER` (a
    /// restore must not mint superusers; reported instead) and never a
    /// password; `NOLOGIN` unless [`RoleCreation::AsRecorded`].
    pub fn create_ddl(&self, mode: RoleCreation) -> String {
        let flag = |on: bool, name: &str| {
            if on {
                format!(" {name}")
            } else {
                format!(" NO{name}")
            }
        };
        let login = mode == RoleCreation::AsRecorded && self.login;
        let mut ddl = format!(
            "CREATE ROLE {} WITH NOSUPERUSER{}{}{}{}{}{}",
            quote_ident(&self.name),
            flag(self.inherit, "INHERIT"),
            flag(self.create_role, "CREATEROLE"),
            flag(self.create_db, "CREATEDB"),
            flag(login, "LOGIN"),
            flag(self.replication, "REPLICATION"),
            flag(self.bypass_rls, "BYPASSRLS"),
        );
        if self.connection_limit != -1 {
            ddl.push_str(&format!(" CONNECTION LIMIT {}", self.connection_limit));
        }
        if let Some(until) = &self.valid_until {
            ddl.push_str(&format!(" VALID UNTIL {}", quote_literal(until)));
        }
        for entry in &self.config {
            ddl.push_str(&format!(
                ";\nALTER ROLE {} {}",
                quote_ident(&self.name),
                set_clause(entry)
            ));
        }
        if let Some(comment) = &self.comment {
            ddl.push_str(&format!(
                ";\nCOMMENT ON ROLE {} IS {}",
                quote_ident(&self.name),
                quote_literal(comment)
            ));
        }
        ddl
    }
}

impl Membership {
    /// `GRANT role TO member` with its options, in the syntax of the
    /// server that recorded them (16+ when `inherit`/`set` are known; the
    /// target is never older than the source).
    pub fn grant_ddl(&self) -> String {
        let grant = format!(
            "GRANT {} TO {}",
            quote_ident(&self.role),
            quote_ident(&self.member)
        );
        match (self.inherit, self.set) {
            (Some(inherit), Some(set)) => {
                format!("{grant} WITH ADMIN {}, INHERIT {inherit}, SET {set}", self.admin)
            }
            _ if self.admin => format!("{grant} WITH ADMIN OPTION"),
            _ => grant,
        }
    }
}

/// What [`create_roles`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreatedRoles {
    pub names: Vec<String>,
    pub warnings: Vec<String>,
}

/// Creates the recorded roles the target lacks (an existing role is never
/// altered), then the recorded memberships of the roles it created. In the
/// caller's transaction: if the restore fails, they are gone with it.
pub async fn create_roles(
    schema: &DatabaseSchema,
    transaction: &mut Transaction<'_>,
    mode: RoleCreation,
) -> Result<CreatedRoles, PostgresError> {
    let mut created = CreatedRoles::default();
    let Some(cluster) = &schema.cluster else {
        created.warnings.push(
            "this backup records no roles (taken before roles were recorded): none was created".to_owned(),
        );
        return Ok(created);
    };
    for role in &cluster.roles {
        if role_exists(transaction, &role.name).await? {
            continue;
        }
        transaction
            .batch_execute(&role.create_ddl(mode))
            .await
            .map_err(|source| PostgresError::CreateRole {
                role: role.name.clone(),
                source,
            })?;
        if role.superuser {
            created.warnings.push(format!(
                "role {:?} is a superuser in the source; it was created without SUPERUSER (grant it by hand if it must be one)",
                role.name
            ));
        }
        if mode == RoleCreation::Nologin && role.login {
            created.warnings.push(format!(
                "role {:?} could log in in the source; it was created NOLOGIN and without a password (ALTER ROLE … LOGIN PASSWORD …, or --create-roles=as-recorded)",
                role.name
            ));
        }
        created.names.push(role.name.clone());
    }
    // Memberships only of the roles created here: an existing role is
    // never given, or deprived of, anything.
    for membership in cluster
        .memberships
        .iter()
        .filter(|m| created.names.contains(&m.member))
    {
        let statement = membership.grant_ddl();
        if !role_exists(transaction, &membership.role).await? {
            created.warnings.push(format!(
                "role {:?} does not exist here, so this was not restored: {statement}",
                membership.role
            ));
            continue;
        }
        if let Err(error) = attempt(transaction, &statement).await? {
            created
                .warnings
                .push(format!("not restored ({error}): {statement}"));
        }
    }
    Ok(created)
}

/// Applies the database's recorded properties to the database the
/// restore runs in, which the restore created (`--create-db`): settings,
/// per-role settings, comment, connection limit, grants and owner. Each
/// that fails (a role missing, a setting this server does not know) is a
/// warning, not a failed restore.
pub async fn apply_database_properties(
    schema: &DatabaseSchema,
    transaction: &mut Transaction<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), PostgresError> {
    let Some(properties) = schema.cluster.as_ref().and_then(|c| c.database.as_ref()) else {
        warnings.push(
            "this backup records no database properties (taken before they were recorded): none was applied"
                .to_owned(),
        );
        return Ok(());
    };
    let name: String = transaction
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading the target database's name",
            source,
        })?
        .get(0);
    let database = quote_ident(&name);
    let mut statements: Vec<(Option<&str>, String)> = Vec::new();
    for entry in &properties.settings {
        statements.push((None, format!("ALTER DATABASE {database} {}", set_clause(entry))));
    }
    for settings in &properties.role_settings {
        for entry in &settings.config {
            statements.push((
                Some(&settings.role),
                format!(
                    "ALTER ROLE {} IN DATABASE {database} {}",
                    quote_ident(&settings.role),
                    set_clause(entry)
                ),
            ));
        }
    }
    if let Some(comment) = &properties.comment {
        statements.push((
            None,
            format!("COMMENT ON DATABASE {database} IS {}", quote_literal(comment)),
        ));
    }
    if properties.connection_limit != -1 {
        statements.push((
            None,
            format!(
                "ALTER DATABASE {database} CONNECTION LIMIT {}",
                properties.connection_limit
            ),
        ));
    }
    if properties.custom_grants {
        statements.push((None, format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC")));
        for grant in &properties.grants {
            let grantee = if grant.role == "PUBLIC" {
                "PUBLIC".to_owned()
            } else {
                quote_ident(&grant.role)
            };
            statements.push((
                (grant.role != "PUBLIC").then_some(grant.role.as_str()),
                format!(
                    "GRANT {} ON DATABASE {database} TO {grantee}{}",
                    grant.privileges,
                    if grant.grantable { " WITH GRANT OPTION" } else { "" }
                ),
            ));
        }
    }
    // The owner last: the grants above are made as the restoring role,
    // which owns the new database until then (ALTER … OWNER moves them to
    // the new owner as grantor, as the source has them).
    statements.push((
        Some(&properties.owner),
        format!(
            "ALTER DATABASE {database} OWNER TO {}",
            quote_ident(&properties.owner)
        ),
    ));
    for (role, statement) in statements {
        if let Some(role) = role
            && !role_exists(transaction, role).await?
        {
            warnings.push(format!(
                "role {role:?} does not exist here, so this was not restored: {statement}"
            ));
            continue;
        }
        if let Err(error) = attempt(transaction, &statement).await? {
            warnings.push(format!("not restored ({error}): {statement}"));
        }
    }
    Ok(())
}

/// The statement a `CREATE DATABASE` for a restore into a new instance
/// runs: the source's encoding and locale, from `template0` (which any
/// locale may be copied from).
pub fn create_database_ddl(name: &str, properties: &DatabaseProperties) -> String {
    let mut ddl = format!(
        "CREATE DATABASE {} WITH TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_ident(name),
        quote_literal(&properties.encoding),
        quote_literal(&properties.collate),
        quote_literal(&properties.ctype),
    );
    if properties.locale_provider != "libc" {
        ddl.push_str(&format!(" LOCALE_PROVIDER {}", properties.locale_provider));
        if let Some(locale) = &properties.locale {
            let keyword = if properties.locale_provider == "icu" {
                "ICU_LOCALE"
            } else {
                "BUILTIN_LOCALE"
            };
            ddl.push_str(&format!(" {keyword} {}", quote_literal(locale)));
        }
        if let Some(rules) = &properties.icu_rules {
            ddl.push_str(&format!(" ICU_RULES {}", quote_literal(rules)));
        }
    }
    if let Some(tablespace) = &properties.tablespace {
        ddl.push_str(&format!(" TABLESPACE {}", quote_ident(tablespace)));
    }
    ddl
}

/// What [`create_database`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedDatabase {
    pub name: String,
    /// Whether it has the source's encoding and locale (else the server's
    /// defaults: the source's locale is not installed here).
    pub as_source: bool,
    pub warnings: Vec<String>,
}

/// Creates the database `url` names, for a restore into a new instance
/// (`--create-db`), with the source's encoding and locale where this
/// server has them; `None` when the server has a database by that name
/// already (which is then left as it is).
pub async fn create_database(
    url: &str,
    source: Option<&DatabaseProperties>,
    ignore_tablespaces: bool,
) -> Result<Option<CreatedDatabase>, PostgresError> {
    let target = crate::postgres::ConnectionTarget::parse(url)?;
    let Some(name) = target.config.get_dbname().map(str::to_owned) else {
        return Ok(None);
    };
    let admin = target.with_database("postgres").connect().await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|source| PostgresError::Query {
            what: "looking for the target database",
            source,
        })?
        .is_some();
    if exists {
        return Ok(None);
    }
    let mut warnings = Vec::new();
    if let Some(properties) = source {
        // The source's default tablespace only where this server has it
        // and the role may create in it; else the server's default.
        let mut properties = properties.clone();
        if let Some(tablespace) = properties.tablespace.take() {
            let usable = admin
                .query_opt(
                    "SELECT 1 FROM pg_catalog.pg_tablespace WHERE spcname = $1 \
                       AND pg_catalog.has_tablespace_privilege(oid, 'CREATE')",
                    &[&tablespace],
                )
                .await
                .map_err(|source| PostgresError::Query {
                    what: "looking for the source database's default tablespace",
                    source,
                })?
                .is_some();
            if usable && !ignore_tablespaces {
                properties.tablespace = Some(tablespace);
            } else {
                warnings.push(format!(
                    "database {name:?} created in this server's default tablespace, not the source's {}: {}",
                    quote_ident(&tablespace),
                    if ignore_tablespaces {
                        "--no-tablespaces"
                    } else {
                        "this server has no such tablespace, or the role may not create in it"
                    }
                ));
            }
        }
        let properties = &properties;
        match admin.batch_execute(&create_database_ddl(&name, properties)).await {
            Ok(()) => {
                return Ok(Some(CreatedDatabase {
                    name,
                    as_source: true,
                    warnings,
                }));
            }
            // A locale this server lacks: the data still restores (into
            // UTF-8 or the server's default), so say so and go on.
            Err(error) => warnings.push(format!(
                "database {name:?} created with this server's default encoding and locale, not the source's ({} {}/{}, {}): {error}",
                properties.encoding, properties.collate, properties.ctype, properties.locale_provider
            )),
        }
    }
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
        .map_err(|source| PostgresError::Query {
            what: "creating the target database (--create-db)",
            source,
        })?;
    Ok(Some(CreatedDatabase {
        name,
        as_source: false,
        warnings,
    }))
}

/// Drops database `name` on the server `url` names (a database a failed
/// restore had created): WITH (FORCE), as a session of the failed restore
/// may not have ended yet.
pub async fn drop_database(url: &str, name: &str) -> Result<(), PostgresError> {
    let target = crate::postgres::ConnectionTarget::parse(url)?;
    let admin = target.with_database("postgres").connect().await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
        .map_err(|source| PostgresError::Query {
            what: "dropping the database the failed restore had created",
            source,
        })
}

async fn role_exists(transaction: &Transaction<'_>, role: &str) -> Result<bool, PostgresError> {
    Ok(transaction
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "looking up a role",
            source,
        })?
        .get(0))
}

/// Runs `statement` in a savepoint: `Ok(Err(..))` is its failure, after
/// which the transaction goes on.
async fn attempt(
    transaction: &mut Transaction<'_>,
    statement: &str,
) -> Result<Result<(), tokio_postgres::Error>, PostgresError> {
    let savepoint_error = |what| move |source| PostgresError::Query { what, source };
    let savepoint = transaction
        .savepoint("cluster_attempt")
        .await
        .map_err(savepoint_error("setting a savepoint"))?;
    match savepoint.batch_execute(statement).await {
        Ok(()) => {
            savepoint
                .commit()
                .await
                .map_err(savepoint_error("releasing a savepoint"))?;
            Ok(Ok(()))
        }
        Err(error) => {
            savepoint
                .rollback()
                .await
                .map_err(savepoint_error("rolling back to a savepoint"))?;
            Ok(Err(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role() -> Role {
        Role {
            name: "app".into(),
            superuser: true,
            login: true,
            create_db: true,
            create_role: false,
            inherit: true,
            replication: false,
            bypass_rls: false,
            connection_limit: 5,
            valid_until: Some("2030-01-01 00:00:00+00".into()),
            config: vec![
                "search_path=app, \"$user\", public".into(),
                "work_mem=64MB".into(),
            ],
            comment: None,
        }
    }

    #[test]
    fn roles_are_never_superusers_and_log_in_only_as_recorded() {
        let nologin = role().create_ddl(RoleCreation::Nologin);
        assert!(nologin.starts_with(
            "CREATE ROLE \"app\" WITH NOSUPERUSER INHERIT NOCREATEROLE CREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 VALID UNTIL '2030-01-01 00:00:00+00'"
        ));
        assert!(nologin.contains("ALTER ROLE \"app\" SET \"search_path\" TO 'app', '$user', 'public'"));
        assert!(nologin.contains("ALTER ROLE \"app\" SET \"work_mem\" TO '64MB'"));
        assert!(!nologin.contains("PASSWORD"));
        assert!(role().create_ddl(RoleCreation::AsRecorded).contains(" LOGIN "));
    }

    #[test]
    fn memberships_keep_their_options() {
        let mut membership = Membership {
            role: "g".into(),
            member: "m".into(),
            admin: true,
            inherit: None,
            set: None,
        };
        assert_eq!(membership.grant_ddl(), "GRANT \"g\" TO \"m\" WITH ADMIN OPTION");
        membership.inherit = Some(false);
        membership.set = Some(true);
        assert_eq!(
            membership.grant_ddl(),
            "GRANT \"g\" TO \"m\" WITH ADMIN true, INHERIT false, SET true"
        );
    }

    #[test]
    fn list_settings_are_split_as_the_server_splits_them() {
        assert_eq!(split_list("a, \"B c\" ,d"), vec!["a", "B c", "d"]);
        assert_eq!(split_list(""), Vec::<String>::new());
        assert_eq!("nologin".parse(), Ok(RoleCreation::Nologin));
        assert!("everything".parse::<RoleCreation>().is_err());
    }
}

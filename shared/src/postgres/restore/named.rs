//! The proof's part for everything that is not a table or a sequence:
//! functions and procedures, views and materialized views, types and
//! domains, and every object of the kind families (casts, operators, text
//! search, foreign data, event triggers, publications, rules, triggers on
//! views, default privileges, …); the comments; and with `--create-db` the
//! database's settings, comment and connection limit.
//!
//! Objects are matched by name (kind and qualified name or signature,
//! never by oid) and compared with the backup's definition as the server
//! prints it, read back by the queries that made the backup
//! (`catalog::capture_named_now`: one query per kind family, however many
//! objects there are), and so are their owners and grants, the column
//! defaults and domain checks created apart to break a dependency cycle
//! (one query each), the rows of the extensions' configuration tables
//! (their count and digest) and the comments the target has on what the
//! restore made. What the target had before the restore is left as it
//! was, so it is no difference; what the restore skipped with a warning
//! is none either.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Transaction;

use sha2::{Digest, Sha256};

use super::{PostgresError, RestorePlan, routine_kind, skipped_by};
use crate::postgres::catalog::{NamedNow, capture_named_now, split_parts};
use crate::postgres::kinds::CatalogObject;
use crate::postgres::kinds::cluster::{self, DatabaseProperties};
use crate::postgres::plan::{DEFAULT_KEY, DOMAIN_CHECK_KEY, STAND_IN_PARENT, VIEW_BODY_KEY, part_owner};
use crate::postgres::schema::{DatabaseSchema, DomainConstraint, NamedDdl, QualifiedName, View, quote_ident};

/// An object's identity: its kind (`function`, `view`, `cast`, …) and its
/// name as people read it (a signature, `pg_describe_object`'s words).
pub(super) type Identity = (String, String);

/// Definitions by identity.
type Definitions = BTreeMap<Identity, String>;

/// The kind family whose objects are rows of data, not definitions (the
/// extension's own configuration tables): compared by their rows' count
/// and digest ([`configuration_rows`]).
const EXTENSION_CONFIGURATION: &str = "extension configuration";

/// What the target holds before the restore changes anything.
#[derive(Debug, Default)]
pub(super) struct NamedBefore {
    /// The identities the restore leaves as they are (as it does existing
    /// types and functions), so their definitions are not its to prove.
    pub objects: BTreeSet<Identity>,
    /// The comments (`COMMENT ON …`) already there: one the target has
    /// after the restore that neither the backup nor this set holds was
    /// made during the restore.
    pub comments: BTreeSet<String>,
}

/// Reads [`NamedBefore`] (the same queries as the proof, once).
pub(super) async fn named_before(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
) -> Result<NamedBefore, PostgresError> {
    let now = read_now(client, schema).await?;
    Ok(NamedBefore {
        objects: definitions_now(&now).into_keys().collect(),
        comments: now.comments.into_iter().collect(),
    })
}

async fn read_now(client: &Transaction<'_>, schema: &DatabaseSchema) -> Result<NamedNow, PostgresError> {
    let tables: Vec<QualifiedName> = schema.tables.iter().map(|t| t.name.clone()).collect();
    // Domain checks the backup created apart are not part of its domains.
    let split_checks: BTreeSet<(QualifiedName, String)> = schema
        .objects
        .iter()
        .filter(|object| object.key.starts_with(DOMAIN_CHECK_KEY))
        .filter_map(|object| part_owner(&object.key))
        .collect();
    capture_named_now(client, &tables, &split_checks).await
}

fn definitions_now(now: &NamedNow) -> Definitions {
    definitions(
        &now.functions,
        &now.views,
        &now.types,
        &now.domain_constraints,
        &now.objects,
    )
}

/// Every named object's definition, by identity, as the backup's schema
/// section holds them (or [`NamedNow`] in the same shape).
fn definitions(
    functions: &[NamedDdl],
    views: &[View],
    types: &[NamedDdl],
    domain_constraints: &[DomainConstraint],
    objects: &[CatalogObject],
) -> Definitions {
    let mut found = Definitions::new();
    for function in functions {
        let name = function
            .signature
            .clone()
            .unwrap_or_else(|| function.name.display());
        let kind = routine_kind(&function.ddl).to_lowercase();
        found.insert((kind, name), function.ddl.clone());
    }
    for view in views {
        let kind = if view.materialized {
            "materialized view"
        } else {
            "view"
        };
        let statements: Vec<&str> = std::iter::once(view.ddl.as_str())
            .chain(view.indexes.iter().map(String::as_str))
            .chain(view.settings.iter().map(String::as_str))
            .collect();
        found.insert((kind.to_owned(), view.name.display()), statements.join(";\n"));
    }
    for user_type in types {
        let kind = if user_type.ddl.starts_with("CREATE DOMAIN ") {
            "domain"
        } else {
            "type"
        };
        // A domain's NOT VALID constraints are added after the data.
        let mut ddl = user_type.ddl.clone();
        for constraint in domain_constraints.iter().filter(|c| c.domain == user_type.name) {
            ddl.push_str(";\n");
            ddl.push_str(&constraint.ddl);
        }
        found.insert((kind.to_owned(), user_type.name.display()), ddl);
    }
    // Parts split off a table, a domain or a view are compared with their
    // owner (the table's proof, the domain, the view).
    // (Those split off a table or a domain are also compared on their
    // own, `split_part_differences`.)
    let split = [DEFAULT_KEY, DOMAIN_CHECK_KEY, VIEW_BODY_KEY];
    for object in objects {
        // A stand-in is the restore's, not the backup's (a scratch database's).
        if split.iter().any(|key| object.key.starts_with(key)) || object.kind == STAND_IN_PARENT {
            continue;
        }
        if object.kind == EXTENSION_CONFIGURATION {
            let (identity, definition) = configuration_rows(object);
            found.insert(identity, definition);
            continue;
        }
        let ddl = definition_of(object);
        found
            .entry((object.kind.clone(), object.describe.clone()))
            .and_modify(|all| {
                all.push_str(";\n");
                all.push_str(&ddl);
            })
            .or_insert(ddl);
    }
    found
}

/// An extension configuration table's rows as `(identity, "N rows, digest
/// …")`, matched by the table's name (its oid and, in the description, its
/// row count differ from the backup's). The digest is over the rows sorted
/// (a table's rows come back in any order); a configuration sequence is
/// compared by its `setval`.
fn configuration_rows(object: &CatalogObject) -> (Identity, String) {
    let kind = EXTENSION_CONFIGURATION.to_owned();
    let Some(table) = object
        .describe
        .split_once(" rows of table ")
        .map(|(_, table)| table)
    else {
        return ((kind, object.describe.clone()), object.ddl.clone());
    };
    let mut rows = value_rows(&object.ddl);
    rows.sort_unstable();
    let mut digest = Sha256::new();
    for row in &rows {
        digest.update(row.as_bytes());
        digest.update(b"\n");
    }
    let hex: String = digest
        .finalize()
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    (
        (kind, format!("rows of table {table}")),
        format!("{} rows, digest {hex}", rows.len()),
    )
}

/// The rows of `INSERT INTO name (columns) VALUES (…),\n(…)`: each
/// top-level parenthesised group after the column list, quoted text
/// (`'…'` with `''` inside, `"…"`) skipped over.
fn value_rows(insert: &str) -> Vec<&str> {
    let (mut groups, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut chars = insert.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match (quote, c) {
            (Some(open), c) if c == open => {
                // A doubled quote stays inside the quoted text.
                if chars.peek().is_some_and(|&(_, next)| next == open) {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => {
                if depth == 0 {
                    start = at;
                }
                depth += 1;
            }
            (None, ')') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    groups.push(&insert[start..=at]);
                }
            }
            _ => {}
        }
    }
    // The first group is the column list.
    groups.into_iter().skip(1).collect()
}

/// Owners and grants (`ALTER … OWNER TO`, `GRANT`, user mappings) of each
/// object of the kind families, by identity; for default privileges,
/// which are nothing but their grants, none (their definition holds them).
fn grants(objects: &[CatalogObject]) -> BTreeMap<Identity, BTreeSet<String>> {
    let mut found: BTreeMap<Identity, BTreeSet<String>> = BTreeMap::new();
    for object in objects.iter().filter(|o| !o.ddl.is_empty()) {
        found
            .entry((object.kind.clone(), object.describe.clone()))
            .or_default()
            .extend(object.privileges.iter().map(|s| s.statement.clone()));
    }
    found
}

/// `publication app.p: owner and grants: missing `…`, `…` is not in the
/// backup` for each object the restore made (not in `before`, in both)
/// whose owner or grants differ from the backup's.
fn grant_differences(
    backup: &BTreeMap<Identity, BTreeSet<String>>,
    here: &BTreeMap<Identity, BTreeSet<String>>,
    before: &BTreeSet<Identity>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (identity, recorded) in backup.iter().filter(|(identity, _)| !before.contains(*identity)) {
        let Some(held) = here.get(identity) else {
            continue;
        };
        let mut differences: Vec<String> = recorded
            .difference(held)
            .map(|statement| format!("missing `{statement}`"))
            .collect();
        differences.extend(
            held.difference(recorded)
                .map(|statement| format!("`{statement}` is not in the backup")),
        );
        if !differences.is_empty() {
            found.push(format!(
                "{}: owner and grants: {}",
                label(identity),
                differences.join(", ")
            ));
        }
    }
    found
}

/// An object's DDL; for one that is nothing but its grants (default
/// privileges, whose DDL is empty), those grants.
fn definition_of(object: &CatalogObject) -> String {
    if object.ddl.is_empty() {
        let statements: Vec<&str> = object.privileges.iter().map(|s| s.statement.as_str()).collect();
        statements.join(";\n")
    } else {
        object.ddl.clone()
    }
}

/// The objects a warning of the restore names, by name or by one of
/// their statements (a grant of default privileges to a missing role):
/// what differs in them is what the restore said it skipped.
fn named_in_warnings(objects: &[CatalogObject], warnings: &[String]) -> BTreeSet<Identity> {
    objects
        .iter()
        .filter(|object| {
            object
                .privileges
                .iter()
                .any(|s| warnings.iter().any(|w| skipped_by(w, &s.statement)))
        })
        .map(|object| (object.kind.clone(), object.describe.clone()))
        .collect()
}

/// `function app.answer()`, `cast from integer to app.code`.
fn label((kind, name): &Identity) -> String {
    if name.starts_with(kind.as_str()) {
        name.clone()
    } else {
        format!("{kind} {name}")
    }
}

/// How the target's named objects, comments and (with `--create-db`)
/// database properties differ from the backup's, one entry per object.
/// `warnings`: the restore's, which name what it skipped; `created_tables`:
/// whether it created tables (then it created what they need, and, in a
/// full restore, every object the target lacked).
pub(super) async fn named_differences(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
    plan: &RestorePlan,
    warnings: &[String],
    created_tables: bool,
) -> Result<Vec<String>, PostgresError> {
    let now = read_now(client, schema).await?;
    let mut backup = definitions(
        &schema.functions,
        &schema.views,
        &schema.types,
        &schema.domain_constraints,
        &schema.objects,
    );
    let mut here = definitions_now(&now);
    // A backup from before signatures were recorded names routines
    // without their arguments: they cannot be matched one to one.
    if schema.functions.iter().any(|f| f.signature.is_none()) {
        let routine = |(kind, _): &Identity| matches!(kind.as_str(), "function" | "procedure" | "aggregate");
        backup.retain(|identity, _| !routine(identity));
        here.retain(|identity, _| !routine(identity));
    }
    // Another major version prints definitions in its own words (a view's
    // body, a range type's multirange): then only presence is compared.
    let same_major = crate::postgres::major_version(now.server_version_num)
        == crate::postgres::major_version(schema.server_version_num);
    if !same_major {
        for definition in backup.values_mut().chain(here.values_mut()) {
            definition.clear();
        }
    }
    let every_object_expected = plan.full_restore && created_tables;
    // A partial restore makes the objects of the tables it creates (their
    // rules): those must be there too.
    let of_created_tables: BTreeSet<Identity> = schema
        .objects
        .iter()
        .filter(|object| {
            object
                .relation
                .as_ref()
                .is_some_and(|table| plan.members.contains(table) && !plan.existing.contains(table))
        })
        .map(|object| (object.kind.clone(), object.describe.clone()))
        .collect();
    let expected = |identity: &Identity| every_object_expected || of_created_tables.contains(identity);
    let skipped = named_in_warnings(&schema.objects, warnings);
    let mut found = compare(&backup, &here, &plan.named_before.objects, &expected, warnings);
    if created_tables {
        // Owners and grants are applied when the restore created tables.
        found.extend(grant_differences(
            &grants(&schema.objects),
            &grants(&now.objects),
            &plan.named_before.objects,
        ));
    }
    found.retain(|difference| {
        !skipped
            .iter()
            .any(|identity| difference.starts_with(&format!("{}: ", label(identity))))
    });
    found.extend(split_part_differences(client, schema, plan, warnings, same_major).await?);
    if created_tables || plan.full_restore {
        found.extend(comment_differences(&schema.comments, &now.comments, warnings));
        found.extend(extra_comments(
            &schema.comments,
            &now.comments,
            &plan.named_before.comments,
        ));
    }
    // Those the restore applied (`RestorePlan::apply_security_labels`).
    if created_tables || plan.full_restore || plan.large_objects {
        found.extend(crate::postgres::security_labels::differences(
            &plan.security_labels(schema),
            &now.security_labels,
            warnings,
        ));
    }
    if plan.database_properties
        && let Some(recorded) = schema.cluster.as_ref().and_then(|c| c.database.as_ref())
    {
        found.extend(database_differences(client, recorded, warnings).await?);
    }
    Ok(found)
}

/// The column defaults and domain checks the backup created apart from
/// their table or domain to break a dependency cycle (left out of their
/// owner's definition on both sides, so compared here on their own), for
/// the tables and domains this restore made: missing (unless a warning
/// names it) or with another definition. One query per such part (a
/// backup has few, most none).
async fn split_part_differences(
    client: &Transaction<'_>,
    schema: &DatabaseSchema,
    plan: &RestorePlan,
    warnings: &[String],
    same_major: bool,
) -> Result<Vec<String>, PostgresError> {
    let made_by_restore = |key: &str| {
        let Some((owner, _)) = part_owner(key) else {
            return false;
        };
        if key.starts_with(DEFAULT_KEY) {
            plan.members.contains(&owner) && !plan.existing.contains(&owner)
        } else {
            key.starts_with(DOMAIN_CHECK_KEY)
                && !plan
                    .named_before
                    .objects
                    .contains(&("domain".to_owned(), owner.display()))
        }
    };
    let parts: Vec<&CatalogObject> = schema
        .objects
        .iter()
        .filter(|object| made_by_restore(&object.key))
        .collect();
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let keys: BTreeSet<String> = parts.iter().map(|part| part.key.clone()).collect();
    let here: BTreeMap<String, String> = split_parts(client, &keys)
        .await?
        .into_iter()
        .map(|part| (part.key, part.ddl))
        .collect();
    let mut found = Vec::new();
    for part in parts {
        // (`pg_describe_object` names a domain's constraint without its
        // domain before PostgreSQL 16)
        let name = match part_owner(&part.key) {
            Some((domain, check)) if part.key.starts_with(DOMAIN_CHECK_KEY) => {
                format!("constraint {check} on domain {}", domain.display())
            }
            _ => part.describe.clone(),
        };
        match here.get(&part.key) {
            None if !warnings.iter().any(|w| w.contains(part.describe.as_str())) => {
                found.push(format!("{name}: missing"));
            }
            Some(ddl) if same_major && *ddl != part.ddl => {
                found.push(format!("{name}: {}", what_differs(ddl, &part.ddl)));
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Comments the target has that the backup lacks and that were not there
/// before the restore: made while it ran, so a difference.
fn extra_comments(backup: &[String], here: &[String], before: &BTreeSet<String>) -> Vec<String> {
    let recorded: BTreeSet<&str> = backup.iter().map(String::as_str).collect();
    here.iter()
        .filter(|comment| !recorded.contains(comment.as_str()) && !before.contains(*comment))
        .map(|comment| format!("comment `{comment}` is not in the backup"))
        .collect()
}

/// The differences between the backup's definitions and the target's:
/// changed (naming the first place they differ), missing (when the
/// restore was to create it, `expected`, and did not say it skipped it),
/// and made by the restore but not in the backup. Objects in `before`
/// were the target's own and are left out.
fn compare(
    backup: &Definitions,
    here: &Definitions,
    before: &BTreeSet<Identity>,
    expected: &dyn Fn(&Identity) -> bool,
    warnings: &[String],
) -> Vec<String> {
    let mut found = Vec::new();
    for (identity, definition) in backup {
        if before.contains(identity) {
            continue;
        }
        match here.get(identity) {
            Some(now) if now == definition => {}
            Some(now) => found.push(format!("{}: {}", label(identity), what_differs(now, definition))),
            None => {
                let skipped = warnings.iter().any(|w| w.contains(identity.1.as_str()));
                if expected(identity) && !skipped {
                    found.push(format!("{}: missing", label(identity)));
                }
            }
        }
    }
    for identity in here.keys() {
        if !backup.contains_key(identity) && !before.contains(identity) {
            found.push(format!("{}: it is not in the backup", label(identity)));
        }
    }
    found
}

/// Where `here` first differs from `backup`: the line (or, in a long
/// line, the stretch of it) of each.
fn what_differs(here: &str, backup: &str) -> String {
    let (ours, theirs): (Vec<&str>, Vec<&str>) = (here.lines().collect(), backup.lines().collect());
    let at = ours
        .iter()
        .zip(&theirs)
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| ours.len().min(theirs.len()));
    let (a, b) = (ours.get(at).copied(), theirs.get(at).copied());
    let column = match (a, b) {
        (Some(a), Some(b)) => a
            .char_indices()
            .zip(b.chars())
            .find(|((_, x), y)| x != y)
            .map_or_else(|| a.len().min(b.len()), |((at, _), _)| at),
        _ => 0,
    };
    let excerpt = |line: Option<&str>| match line {
        None => "(nothing more)".to_owned(),
        Some(line) => window(line, column),
    };
    format!("`{}` here, `{}` in the backup", excerpt(a), excerpt(b))
}

/// At most about 160 characters of `line` around byte `at`.
fn window(line: &str, at: usize) -> String {
    const BEFORE: usize = 60;
    const AFTER: usize = 100;
    let start = line
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i + BEFORE >= at)
        .unwrap_or(0);
    let end = line
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i > at + AFTER)
        .unwrap_or(line.len());
    let mut text = String::new();
    if start > 0 {
        text.push('…');
    }
    text.push_str(line[start..end].trim());
    if end < line.len() {
        text.push('…');
    }
    text
}

/// The backup's comments the restore applied that the target lacks or
/// holds with other words (as missing ones: the statement is the comment's
/// text). One the restore reported as not restored is no difference.
fn comment_differences(backup: &[String], here: &[String], warnings: &[String]) -> Vec<String> {
    let held: BTreeSet<&str> = here.iter().map(String::as_str).collect();
    backup
        .iter()
        .filter(|comment| !held.contains(comment.as_str()))
        .filter(|comment| !warnings.iter().any(|w| w.contains(comment.as_str())))
        .map(|comment| format!("missing comment `{comment}`"))
        .collect()
}

/// `--create-db`: the database's settings (`ALTER DATABASE … SET`), its
/// per-role settings, comment and connection limit, as recorded, less
/// what the restore reported as not applied.
async fn database_differences(
    client: &Transaction<'_>,
    recorded: &DatabaseProperties,
    warnings: &[String],
) -> Result<Vec<String>, PostgresError> {
    let row = client
        .query_one(
            "SELECT current_database()::text, current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading the target database's name",
            source,
        })?;
    let (name, version): (String, i32) = (row.get(0), row.get(1));
    let Some(here) = cluster::capture_database(client, version).await? else {
        return Ok(vec!["database: its properties cannot be read here".to_owned()]);
    };
    let database = quote_ident(&name);
    Ok(property_differences(recorded, &here, &database, warnings))
}

fn property_differences(
    recorded: &DatabaseProperties,
    here: &DatabaseProperties,
    database: &str,
    warnings: &[String],
) -> Vec<String> {
    let skipped = |statement: &str| warnings.iter().any(|w| w.contains(statement));
    let mut found = Vec::new();
    for entry in recorded.settings.iter().filter(|e| !here.settings.contains(e)) {
        if !skipped(&format!(
            "ALTER DATABASE {database} {}",
            cluster::set_clause(entry)
        )) {
            found.push(format!("database setting `{entry}`: missing"));
        }
    }
    for entry in here.settings.iter().filter(|e| !recorded.settings.contains(e)) {
        found.push(format!("database setting `{entry}`: it is not in the backup"));
    }
    for settings in &recorded.role_settings {
        let theirs = here
            .role_settings
            .iter()
            .find(|s| s.role == settings.role)
            .map(|s| s.config.as_slice())
            .unwrap_or_default();
        for entry in settings.config.iter().filter(|e| !theirs.contains(e)) {
            let statement = format!(
                "ALTER ROLE {} IN DATABASE {database} {}",
                quote_ident(&settings.role),
                cluster::set_clause(entry)
            );
            if !skipped(&statement) {
                found.push(format!(
                    "database setting `{entry}` of role {}: missing",
                    settings.role
                ));
            }
        }
    }
    if recorded.comment != here.comment && !skipped(&format!("COMMENT ON DATABASE {database} IS")) {
        found.push(format!(
            "database comment {:?} here, {:?} in the backup",
            here.comment, recorded.comment
        ));
    }
    if recorded.connection_limit != here.connection_limit
        && !skipped(&format!("ALTER DATABASE {database} CONNECTION LIMIT"))
    {
        found.push(format!(
            "database connection limit {} here, {} in the backup",
            here.connection_limit, recorded.connection_limit
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(kind: &str, name: &str) -> Identity {
        (kind.to_owned(), name.to_owned())
    }

    #[test]
    fn objects_differ_by_definition_presence_or_origin_but_not_what_was_there_before() {
        let backup = Definitions::from([
            (
                identity("function", "app.answer()"),
                "CREATE FUNCTION …\n AS $$SELECT 42$$".to_owned(),
            ),
            (
                identity("view", "app.totals"),
                "CREATE VIEW app.totals AS SELECT 1".to_owned(),
            ),
            (
                identity("cast", "cast from integer to app.code"),
                "CREATE CAST …".to_owned(),
            ),
            (identity("domain", "app.positive"), "CREATE DOMAIN x".to_owned()),
        ]);
        let mut here = backup.clone();
        assert!(compare(&backup, &here, &BTreeSet::new(), &|_| true, &[]).is_empty());
        here.insert(
            identity("function", "app.answer()"),
            "CREATE FUNCTION …\n AS $$SELECT 43$$".to_owned(),
        );
        here.remove(&identity("cast", "cast from integer to app.code"));
        here.insert(identity("function", "app.extra()"), "CREATE …".to_owned());
        let found = compare(&backup, &here, &BTreeSet::new(), &|_| true, &[]);
        assert_eq!(
            found,
            vec![
                "cast from integer to app.code: missing",
                "function app.answer(): `AS $$SELECT 43$$` here, `AS $$SELECT 42$$` in the backup",
                "function app.extra(): it is not in the backup",
            ],
            "{found:?}"
        );
        // A partial restore creates what it needs only; what the target had
        // before is its own; a warning names what was skipped.
        assert_eq!(
            compare(&backup, &here, &BTreeSet::new(), &|_| false, &[]).len(),
            2
        );
        let before = BTreeSet::from([
            identity("function", "app.answer()"),
            identity("function", "app.extra()"),
        ]);
        let warnings = ["not restored: cast from integer to app.code".to_owned()];
        assert!(compare(&backup, &here, &before, &|_| true, &warnings).is_empty());
    }

    #[test]
    fn a_long_line_is_shown_where_it_differs() {
        let backup = format!(
            "CREATE DOMAIN app.d AS integer{} CHECK (VALUE > 0)",
            " ".repeat(200)
        );
        let here = backup.replace("> 0", ">= 0");
        let found = what_differs(&here, &backup);
        assert!(found.starts_with("`…"), "{found}");
        assert!(found.contains("CHECK (VALUE >= 0)` here"), "{found}");
        assert_eq!(
            what_differs("a\nb", "a"),
            "`b` here, `(nothing more)` in the backup"
        );
    }

    #[test]
    fn a_comment_lost_is_a_difference_unless_reported() {
        let backup = vec!["COMMENT ON TABLE app.orders IS 'what was bought'".to_owned()];
        assert_eq!(
            comment_differences(&backup, &[], &[]),
            vec!["missing comment `COMMENT ON TABLE app.orders IS 'what was bought'`"]
        );
        assert!(comment_differences(&backup, &backup, &[]).is_empty());
        let warned = [format!("comment not restored (no such table): {}", backup[0])];
        assert!(comment_differences(&backup, &[], &warned).is_empty());
    }

    #[test]
    fn configuration_rows_compare_by_table_count_and_digest_in_any_order() {
        let object = |describe: &str, ddl: &str| CatalogObject {
            kind: EXTENSION_CONFIGURATION.to_owned(),
            describe: describe.to_owned(),
            key: "extension-config:1".to_owned(),
            schema: Some("settings".to_owned()),
            ddl: ddl.to_owned(),
            exists: String::new(),
            drop_kind: String::new(),
            drop_name: String::new(),
            stage: crate::postgres::kinds::Stage::BeforeTables,
            depends_on: Vec::new(),
            privileges: Vec::new(),
            relation: None,
        };
        let insert =
            "INSERT INTO settings.setting (name, \"va(l\"\"ue\") VALUES ('a', 'x,\n(y'),\n('it''s', NULL)";
        assert_eq!(value_rows(insert), vec!["('a', 'x,\n(y')", "('it''s', NULL)"]);
        let describe = "2 rows of table settings.setting (configuration of extension e)";
        let (identity, backup) = configuration_rows(&object(describe, insert));
        assert_eq!(
            identity.1,
            "rows of table settings.setting (configuration of extension e)"
        );
        assert!(backup.starts_with("2 rows, digest "), "{backup}");
        // The same rows in another order (another oid too) are no difference;
        // one row less is.
        let reordered =
            "INSERT INTO settings.setting (name, \"va(l\"\"ue\") VALUES ('it''s', NULL),\n('a', 'x,\n(y')";
        assert_eq!(
            configuration_rows(&object(describe, reordered)),
            (identity.clone(), backup.clone())
        );
        let fewer = "INSERT INTO settings.setting (name, \"va(l\"\"ue\") VALUES ('a', 'x,\n(y')";
        let (same, one) = configuration_rows(&object(
            "1 rows of table settings.setting (configuration of extension e)",
            fewer,
        ));
        assert_eq!(same, identity);
        assert!(one.starts_with("1 rows, digest ") && one != backup, "{one}");
    }

    #[test]
    fn owners_and_grants_of_objects_the_restore_made_must_be_the_backups() {
        let server = identity("foreign server", "server s");
        let backup = BTreeMap::from([(
            server.clone(),
            BTreeSet::from([
                "ALTER SERVER s OWNER TO app".to_owned(),
                "GRANT USAGE ON FOREIGN SERVER s TO reader".to_owned(),
            ]),
        )]);
        assert!(grant_differences(&backup, &backup, &BTreeSet::new()).is_empty());
        let here = BTreeMap::from([(
            server.clone(),
            BTreeSet::from([
                "ALTER SERVER s OWNER TO postgres".to_owned(),
                "GRANT USAGE ON FOREIGN SERVER s TO reader".to_owned(),
            ]),
        )]);
        assert_eq!(
            grant_differences(&backup, &here, &BTreeSet::new()),
            vec![
                "foreign server server s: owner and grants: missing `ALTER SERVER s OWNER TO app`, \
                 `ALTER SERVER s OWNER TO postgres` is not in the backup"
            ]
        );
        // The target's own server keeps its own owner.
        assert!(grant_differences(&backup, &here, &BTreeSet::from([server])).is_empty());
    }

    #[test]
    fn a_comment_made_during_the_restore_is_a_difference_one_from_before_is_not() {
        let backup = vec!["COMMENT ON TABLE app.orders IS 'bought'".to_owned()];
        let here = vec![
            backup[0].clone(),
            "COMMENT ON TABLE app.tickets IS 'added'".to_owned(),
            "COMMENT ON VIEW app.old IS 'theirs'".to_owned(),
        ];
        let before = BTreeSet::from(["COMMENT ON VIEW app.old IS 'theirs'".to_owned()]);
        assert_eq!(
            extra_comments(&backup, &here, &before),
            vec!["comment `COMMENT ON TABLE app.tickets IS 'added'` is not in the backup"]
        );
    }
}

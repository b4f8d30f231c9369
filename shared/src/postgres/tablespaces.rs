//! Tablespaces: where a table, an index (a key's too) and a materialized
//! view are stored, carried as pg_dump carries them, and what a restore
//! does when the target lacks one.
//!
//! pg_dump writes `SET default_tablespace = ts` before each object stored
//! outside the database's default tablespace. So does the capture for the
//! statements that create an index, a key (its index) or a materialized
//! view: their DDL comes wrapped as
//! `SET default_tablespace = "ts";\n<DDL>;\nSET default_tablespace = ''`
//! ([`placed`]), so every connection of a restore (the helpers of a
//! new-tables restore too) creates them there without knowing about
//! tablespaces. A table's tablespace is a field of its own
//! ([`crate::postgres::schema::Table::tablespace`]), applied by `ALTER TABLE
//! … SET TABLESPACE` right after it is created, while it is still empty:
//! a partition takes its parent's tablespace whatever `default_tablespace`
//! says, so only an explicit move puts it where the source had it.
//!
//! Tablespaces themselves are cluster-wide objects, with a directory on
//! the server's disk: as pg_dump (not pg_dumpall), a backup names them but
//! never creates them. A restore checks, before any change, which of the
//! named tablespaces the target has and may create in; every object meant
//! for one it lacks (or every object, with `--no-tablespaces`, as
//! pg_restore's option) is created in the target database's default
//! tablespace instead, and the report has one warning per such tablespace
//! naming it and its objects. pg_restore instead reports an error per
//! object and goes on; a backup tool that restores all or nothing would
//! fail there, so the data is restored and the difference is said.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::GenericClient;

use super::PostgresError;
use super::schema::{DatabaseSchema, quote_ident};

const OPEN: &str = "SET default_tablespace = ";
const CLOSE: &str = ";\nSET default_tablespace = ''";

/// `ddl` created in `tablespace` (see the module documentation).
pub fn placed(tablespace: &str, ddl: &str) -> String {
    format!("{OPEN}{};\n{ddl}{CLOSE}", quote_ident(tablespace))
}

/// SQL: the text expression `ddl` wrapped by [`placed`] when the relation's
/// `reltablespace` expression is not the database's default (0).
pub(crate) fn placed_sql(ddl: &str, reltablespace: &str) -> String {
    format!(
        "CASE WHEN {reltablespace} = 0 THEN {ddl} \
              ELSE format(E'{OPEN}%I;\\n', (SELECT spcname FROM pg_catalog.pg_tablespace WHERE oid = {reltablespace})) \
                   || {ddl} || E';\\nSET default_tablespace = ''''' END"
    )
}

/// The tablespace a DDL string was [`placed`] in, and its bare statements.
pub fn placement(ddl: &str) -> (Option<String>, &str) {
    let Some(rest) = ddl.strip_prefix(OPEN) else {
        return (None, ddl);
    };
    let Some(rest) = rest.strip_suffix(CLOSE) else {
        return (None, ddl);
    };
    match split_identifier(rest) {
        Some((name, body)) => match body.strip_prefix(";\n") {
            Some(body) => (Some(name), body),
            None => (None, ddl),
        },
        None => (None, ddl),
    }
}

/// The bare statements of a DDL string, wherever it was [`placed`]: what
/// the comparison of an existing table with the backup's looks at (a table
/// restored where its tablespace was missing is still the backup's table).
pub fn unplaced(ddl: &str) -> &str {
    placement(ddl).1
}

/// An identifier at the start of `text`, as `quote_ident` or `%I` wrote it
/// (quoted with doubled quotes inside, or bare), and what follows it.
fn split_identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if c == '"' {
                if chars.peek().is_some_and(|(_, next)| *next == '"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some((name, &quoted[at + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = text
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(text.len());
        (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
    }
}

/// Every tablespace the schema section names, with the objects placed in
/// each (as `index "x"`, `table app.t`, …), for the restore's warnings.
pub fn named_tablespaces(schema: &DatabaseSchema) -> BTreeMap<String, Vec<String>> {
    let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut note = |ddl: &str, what: String| {
        if let (Some(tablespace), _) = placement(ddl) {
            named.entry(tablespace).or_default().push(what);
        }
    };
    for table in &schema.tables {
        for constraint in &table.constraints {
            note(&constraint.ddl, format!("key {}", constraint.name.display()));
        }
        for index in table.indexes.iter().chain(&table.partition_indexes) {
            note(index, format!("an index of {}", table.name.display()));
        }
    }
    for view in &schema.views {
        note(&view.ddl, format!("materialized view {}", view.name.display()));
        for index in &view.indexes {
            note(index, format!("an index of {}", view.name.display()));
        }
    }
    for table in &schema.tables {
        if let Some(tablespace) = &table.tablespace {
            named
                .entry(tablespace.clone())
                .or_default()
                .push(format!("table {}", table.name.display()));
        }
    }
    named
}

/// Rewrites the schema so that every object meant for a tablespace the
/// target lacks (or every object, with `ignore_all`) is created in the
/// target database's default tablespace; returns one warning per such
/// tablespace. Runs before any change, on the connection of the restore.
pub async fn place_in_target<C: GenericClient>(
    client: &C,
    schema: &mut DatabaseSchema,
    ignore_all: bool,
) -> Result<Vec<String>, PostgresError> {
    let named = named_tablespaces(schema);
    if named.is_empty() {
        return Ok(Vec::new());
    }
    // A tablespace is usable when it exists and the restoring role may
    // create in it; the database's own default needs no privilege.
    let rows = client
        .query(
            "SELECT t.spcname::text, pg_catalog.has_tablespace_privilege(t.oid, 'CREATE') \
                    OR t.oid = (SELECT dattablespace FROM pg_catalog.pg_database WHERE datname = current_database()) \
             FROM pg_catalog.pg_tablespace t",
            &[],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "listing the target's tablespaces",
            source,
        })?;
    let present: BTreeMap<String, bool> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut unusable = BTreeSet::new();
    let mut warnings = Vec::new();
    for (tablespace, objects) in &named {
        let why = if ignore_all {
            "left out (--no-tablespaces)"
        } else {
            match present.get(tablespace) {
                Some(true) => continue,
                Some(false) => "the restoring role may not create in it",
                None => "the target has no such tablespace",
            }
        };
        unusable.insert(tablespace.clone());
        warnings.push(format!(
            "tablespace {} {why}: {} created in the database's default tablespace instead: {}",
            quote_ident(tablespace),
            if objects.len() == 1 {
                "1 object"
            } else {
                "these objects"
            },
            objects.join(", ")
        ));
    }
    if unusable.is_empty() {
        return Ok(warnings);
    }
    let strip = |ddl: &mut String| {
        if let (Some(tablespace), body) = placement(ddl)
            && unusable.contains(&tablespace)
        {
            *ddl = body.to_owned();
        }
    };
    for table in &mut schema.tables {
        if table.tablespace.as_ref().is_some_and(|t| unusable.contains(t)) {
            table.tablespace = None;
        }
        table.constraints.iter_mut().for_each(|c| strip(&mut c.ddl));
        table
            .key_indexes
            .iter_mut()
            .for_each(|key| strip(&mut key.create_index));
        table.indexes.iter_mut().for_each(strip);
        table.partition_indexes.iter_mut().for_each(strip);
    }
    for view in &mut schema.views {
        strip(&mut view.ddl);
        view.indexes.iter_mut().for_each(strip);
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placed_statement_gives_back_its_tablespace_and_its_statement() {
        let ddl = "CREATE INDEX i ON t (a);\nSELECT 1";
        for name in ["fast", "We\"ird;\nname", "ts_2"] {
            let wrapped = placed(name, ddl);
            assert_eq!(placement(&wrapped), (Some(name.to_owned()), ddl));
            assert_eq!(unplaced(&wrapped), ddl);
        }
        // The server's %I leaves a plain name bare.
        let bare = format!("{OPEN}fast;\n{ddl}{CLOSE}");
        assert_eq!(placement(&bare), (Some("fast".to_owned()), ddl));
        assert_eq!(placement(ddl), (None, ddl));
        assert_eq!(
            placement("SET default_tablespace = x"),
            (None, "SET default_tablespace = x")
        );
    }
}

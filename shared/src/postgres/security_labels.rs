//! `SECURITY LABEL`s (pg_seclabel, and a subscription's in pg_shseclabel)
//! on the objects a backup carries, as pg_dump carries them: captured as
//! the statement that sets each, and applied once every object exists.
//!
//! A label only goes back through the provider that wrote it (sepgsql, or
//! any module calling `register_label_provider`) loaded in the restoring
//! session, so the restore checks the target's providers before it changes
//! anything: a missing one refuses the restore, naming it and the objects,
//! unless `--no-security-labels` (as pg_restore's option) leaves them all
//! out with one warning. The database's own label (pg_shseclabel) is
//! recorded with the database's properties (`kinds::cluster`) and given
//! only to a database the restore creates (`--create-db`), in a session
//! started once the database's settings are applied, so that a provider
//! its `session_preload_libraries` loads is there
//! ([`apply_database_labels`]); a provider missing there refuses the
//! restore before any change ([`database_label_providers_missing`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use super::PostgresError;
use super::kinds::cluster::{DatabaseLabel, DatabaseProperties};
use super::schema::{QualifiedName, quote_ident, quote_literal};

/// One object's label of one provider.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityLabel {
    pub provider: String,
    /// As PostgreSQL describes the object (`pg_describe_object`), for people:
    /// `column note of table app.booking`.
    pub object: String,
    /// The table, view or sequence it is on (or one of whose columns), which
    /// decides whether a partial restore applies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<QualifiedName>,
    /// `SECURITY LABEL FOR provider ON kind identity IS 'label'`, the
    /// identity as `pg_identify_object` prints it (always qualified).
    pub statement: String,
}

impl SecurityLabel {
    /// Whether it labels a large object (`pg_describe_object` says `large
    /// object <oid>` for those alone).
    pub fn is_on_large_object(&self) -> bool {
        self.relation.is_none() && self.object.starts_with("large object ")
    }

    /// `security label (selinux) on table app.booking`, as the backup's
    /// refusal named it before labels were carried.
    pub fn describe(&self) -> String {
        format!("security label ({}) on {}", self.provider, self.object)
    }
}

/// The labels of the objects the backup carries: of `tables` (and their
/// columns) among tables, of every other user object, not of an
/// extension's members (the extension makes those). Also used by the
/// restore's proof to read what the target holds.
pub async fn capture(
    client: &Transaction<'_>,
    tables: &[QualifiedName],
) -> Result<Vec<SecurityLabel>, PostgresError> {
    let table_list: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    // `pg_identify_object`'s type is the statement's object kind, but for
    // columns (`table column`, `view column`, …) and domains (`type`).
    let sql = "SELECT l.provider, pg_catalog.pg_describe_object(l.classoid, l.objoid, l.objsubid) AS object, \
                      cn.nspname::text AS relation_schema, c.relname::text AS relation_name, \
                      pg_catalog.format('SECURITY LABEL FOR %I ON %s %s IS %L', l.provider, \
                          CASE WHEN o.type LIKE '% column' THEN 'COLUMN' \
                               WHEN t.typtype = 'd' THEN 'DOMAIN' \
                               ELSE pg_catalog.upper(o.type) END, \
                          o.identity, l.label) AS statement \
               FROM (SELECT s.classoid, s.objoid, s.objsubid, s.provider, s.label FROM pg_catalog.pg_seclabel s \
                     UNION ALL \
                     SELECT s.classoid, s.objoid, 0, s.provider, s.label FROM pg_catalog.pg_shseclabel s \
                     JOIN pg_catalog.pg_subscription sub ON s.classoid = 'pg_catalog.pg_subscription'::regclass \
                                                        AND sub.oid = s.objoid \
                     WHERE sub.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())) l \
               CROSS JOIN LATERAL pg_catalog.pg_identify_object(l.classoid, l.objoid, l.objsubid) o \
               LEFT JOIN pg_catalog.pg_class c ON l.classoid = 'pg_catalog.pg_class'::regclass AND c.oid = l.objoid \
               LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
               LEFT JOIN pg_catalog.pg_type t ON l.classoid = 'pg_catalog.pg_type'::regclass AND t.oid = l.objoid \
               WHERE (l.objoid >= 16384 OR l.classoid = 'pg_catalog.pg_largeobject'::regclass) \
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = l.classoid \
                                 AND e.objid = l.objoid AND e.deptype = 'e') \
                 AND (c.oid IS NULL OR c.relkind NOT IN ('r', 'p') \
                      OR c.oid IN (SELECT pg_catalog.unnest($1::text[])::regclass::oid)) \
               ORDER BY statement";
    let rows = client
        .query(sql, &[&table_list])
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading security labels",
            source,
        })?;
    Ok(rows
        .iter()
        .map(|row| {
            let schema: Option<String> = row.get("relation_schema");
            let name: Option<String> = row.get("relation_name");
            SecurityLabel {
                provider: row.get("provider"),
                object: row.get("object"),
                relation: schema
                    .zip(name)
                    .map(|(schema, name)| QualifiedName::new(schema, name)),
                statement: row.get("statement"),
            }
        })
        .collect())
}

/// The labels a restore applies: every one in a full restore; in a partial
/// one those of the tables it creates (and their columns), as
/// `pg_restore -t` restores a table's labels and nothing else's, and the
/// large objects' when it restores them (`large_objects`).
pub fn to_apply(
    labels: &[SecurityLabel],
    full_restore: bool,
    large_objects: bool,
    created: impl Fn(&QualifiedName) -> bool,
) -> Vec<&SecurityLabel> {
    labels
        .iter()
        .filter(|label| {
            full_restore
                || label.relation.as_ref().is_some_and(&created)
                || (large_objects && label.is_on_large_object())
        })
        .collect()
}

/// The providers of `labels` that the session has not loaded. Probed
/// without changing anything: `SECURITY LABEL` looks its provider up
/// before the object, so labelling a schema that does not exist fails
/// with `invalid_parameter_value` only when the provider is not loaded.
pub async fn missing_providers(
    client: &Transaction<'_>,
    labels: &[&SecurityLabel],
) -> Result<Vec<String>, PostgresError> {
    let providers: BTreeSet<&str> = labels.iter().map(|label| label.provider.as_str()).collect();
    missing_provider_names(client, providers).await
}

/// [`missing_providers`] by name: those of `providers` the session has not
/// loaded.
pub async fn missing_provider_names(
    client: &Transaction<'_>,
    providers: BTreeSet<&str>,
) -> Result<Vec<String>, PostgresError> {
    if providers.is_empty() {
        return Ok(Vec::new());
    }
    let providers: Vec<&str> = providers.into_iter().collect();
    let error = |source| PostgresError::Query {
        what: "checking the target's security label providers",
        source,
    };
    // The names travel as a parameter (a DO block takes none), through a
    // setting local to the transaction.
    client
        .query_one(
            "SELECT pg_catalog.set_config('pgbackup.label_providers', $1::text[]::text, true)",
            &[&providers],
        )
        .await
        .map_err(error)?;
    client
        .batch_execute(
            "DO $probe$ DECLARE provider text; missing text[] := '{}'; BEGIN \
               FOREACH provider IN ARRAY pg_catalog.current_setting('pgbackup.label_providers')::text[] LOOP \
                 BEGIN \
                   EXECUTE pg_catalog.format('SECURITY LABEL FOR %I ON SCHEMA %I IS NULL', provider, \
                                             'pgbackup: no such schema'); \
                 EXCEPTION WHEN invalid_parameter_value THEN missing := missing || provider; \
                           WHEN OTHERS THEN NULL; \
                 END; \
               END LOOP; \
               PERFORM pg_catalog.set_config('pgbackup.label_providers', missing::text, true); \
             END $probe$",
        )
        .await
        .map_err(error)?;
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('pgbackup.label_providers')::text[] AS missing",
            &[],
        )
        .await
        .map_err(error)?;
    Ok(row.get("missing"))
}

/// The labels `applied` that the target (`here`) lacks or holds with
/// another text, unless the restore reported one as not restored.
pub fn differences(applied: &[&SecurityLabel], here: &[SecurityLabel], warnings: &[String]) -> Vec<String> {
    let held: BTreeSet<&str> = here.iter().map(|label| label.statement.as_str()).collect();
    applied
        .iter()
        .filter(|label| !held.contains(label.statement.as_str()))
        .filter(|label| !warnings.iter().any(|w| w.contains(label.statement.as_str())))
        .map(|label| format!("missing security label `{}`", label.statement))
        .collect()
}

/// The providers of the database's own labels that a new session of the
/// database `url` names would not load, probed before the restore changes
/// anything: in a session started with the recorded database settings'
/// `session_preload_libraries` (which the restore gives the database only
/// at its end), or, when the restoring role may not set that at
/// connection (not a superuser), in a plain session.
pub async fn database_label_providers_missing(
    url: &str,
    properties: &DatabaseProperties,
) -> Result<Vec<String>, PostgresError> {
    let providers: BTreeSet<&str> = properties
        .security_labels
        .iter()
        .map(|label| label.provider.as_str())
        .collect();
    if providers.is_empty() {
        return Ok(Vec::new());
    }
    let target = super::ConnectionTarget::parse(url)?;
    let preload = properties
        .settings
        .iter()
        .find_map(|entry| entry.strip_prefix("session_preload_libraries="));
    let client = match preload {
        Some(libraries) => {
            let mut with_preload = target.clone();
            // A space in a startup option's value is escaped with `\`.
            let value = libraries.replace('\\', "\\\\").replace(' ', "\\ ");
            with_preload
                .config
                .options(format!("-c session_preload_libraries={value}"));
            match with_preload.connect().await {
                Ok(client) => client,
                Err(_) => target.connect().await?,
            }
        }
        None => target.connect().await?,
    };
    let mut client = client;
    let transaction = client
        .transaction()
        .await
        .map_err(|source| PostgresError::Query {
            what: "checking the target's security label providers",
            source,
        })?;
    missing_provider_names(&transaction, providers).await
}

/// Gives the database `url` names (one the restore created) its recorded
/// labels, in a new session (which loads what the database's settings,
/// applied by the restore, preload), and reads them back: a label that is
/// not there afterwards is an error naming it.
pub async fn apply_database_labels(url: &str, properties: &DatabaseProperties) -> Result<(), PostgresError> {
    if properties.security_labels.is_empty() {
        return Ok(());
    }
    let client = super::connect(url).await?;
    let error = |what| move |source| PostgresError::Query { what, source };
    let database: String = client
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await
        .map_err(error("reading the target database's name"))?
        .get(0);
    for label in &properties.security_labels {
        client
            .batch_execute(&format!(
                "SECURITY LABEL FOR {} ON DATABASE {} IS {}",
                quote_ident(&label.provider),
                quote_ident(&database),
                quote_literal(&label.label)
            ))
            .await
            .map_err(error("giving the database its security label"))?;
    }
    let here: Vec<DatabaseLabel> = client
        .query(
            "SELECT s.provider, s.label FROM pg_catalog.pg_shseclabel s JOIN pg_catalog.pg_database d ON d.oid = s.objoid \
              WHERE s.classoid = 'pg_catalog.pg_database'::regclass AND d.datname = pg_catalog.current_database() \
              ORDER BY s.provider",
            &[],
        )
        .await
        .map_err(error("reading the database's security labels back"))?
        .iter()
        .map(|row| DatabaseLabel {
            provider: row.get(0),
            label: row.get(1),
        })
        .collect();
    let missing: Vec<String> = properties
        .security_labels
        .iter()
        .filter(|label| !here.contains(label))
        .map(DatabaseLabel::describe)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PostgresError::DatabaseLabelNotApplied {
            labels: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(relation: Option<(&str, &str)>, statement: &str) -> SecurityLabel {
        SecurityLabel {
            provider: "selinux".into(),
            object: "table app.booking".into(),
            relation: relation.map(|(schema, name)| QualifiedName::new(schema, name)),
            statement: statement.into(),
        }
    }

    #[test]
    fn a_partial_restore_applies_the_labels_of_the_tables_it_creates_only() {
        let labels = vec![
            label(
                Some(("app", "booking")),
                "SECURITY LABEL FOR selinux ON TABLE app.booking IS 'a'",
            ),
            label(
                Some(("app", "audit")),
                "SECURITY LABEL FOR selinux ON TABLE app.audit IS 'b'",
            ),
            label(None, "SECURITY LABEL FOR selinux ON SCHEMA app IS 'c'"),
            SecurityLabel {
                object: "large object 4242".into(),
                ..label(None, "SECURITY LABEL FOR selinux ON LARGE OBJECT 4242 IS 'd'")
            },
        ];
        let booking = QualifiedName::new("app", "booking");
        let partial = to_apply(&labels, false, false, |name| name == &booking);
        assert_eq!(partial, vec![&labels[0]]);
        // With its large objects (`--large-objects`), their labels too
        let with_objects = to_apply(&labels, false, true, |name| name == &booking);
        assert_eq!(with_objects, vec![&labels[0], &labels[3]]);
        assert_eq!(to_apply(&labels, true, false, |_| false).len(), 4);
    }

    #[test]
    fn a_label_lost_is_a_difference_unless_reported() {
        let labels = vec![label(None, "SECURITY LABEL FOR selinux ON SCHEMA app IS 'c'")];
        let applied: Vec<&SecurityLabel> = labels.iter().collect();
        assert_eq!(
            differences(&applied, &[], &[]),
            vec!["missing security label `SECURITY LABEL FOR selinux ON SCHEMA app IS 'c'`"]
        );
        assert!(differences(&applied, &labels, &[]).is_empty());
        let reported = [format!("not restored: {}", labels[0].statement)];
        assert!(differences(&applied, &[], &reported).is_empty());
    }
}

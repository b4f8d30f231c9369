//! PostgreSQL engine: consistent streaming export and transactional restore
//! over the COPY protocol (see `docs/POSTGRES.md`).

pub mod catalog;
pub mod export;
pub mod restore;
pub mod schema;

use std::collections::BTreeSet;

use tokio_postgres::{Client, NoTls};

pub use catalog::TableFilter;
pub use export::{ExportReport, ExportedTable, export_database};
pub use export::{copy_out_statement, count_rows};
pub use restore::{RestoreOptions, RestoreReport, RestoredTable, restore_backup};
pub use schema::{DatabaseSchema, QualifiedName};
pub use tokio_postgres::Config;

use crate::container::ContainerError;

/// Session settings under which COPY text is exported, restored and
/// re-exported for deep verification, so the same rows always print as the
/// same bytes (dates in ISO, UTC offsets, full float precision, hex bytea).
pub const DETERMINISTIC_OUTPUT: &str = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'";

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "could not connect to PostgreSQL; check DATABASE_URL, that the server is up and reachable, and the credentials"
    )]
    Connect(#[source] tokio_postgres::Error),
    #[error("PostgreSQL failed while {what}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL failed while {what} for table {table}")]
    TableQuery {
        what: &'static str,
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("no table named {names} {where_}; tables available: {available}", names = .names.join(", "))]
    UnknownTables {
        names: Vec<String>,
        where_: &'static str,
        available: String,
    },
    #[error("table name {name:?} is ambiguous; say which schema: {candidates}")]
    AmbiguousTable { name: String, candidates: String },
    #[error("the backup has no schema section; it cannot be restored by this build")]
    MissingSchemaSection,
    #[error("the backup's schema section is unreadable")]
    MalformedSchemaSection(#[source] serde_json::Error),
    #[error(
        "the backup's schema section has version {found}; this build reads up to {supported}; use a newer backupctl"
    )]
    UnsupportedSchemaVersion { found: u32, supported: u32 },
    #[error(
        "the backup comes from PostgreSQL {backup_major}, the target runs {target_major}; restore into PostgreSQL {backup_major} or newer"
    )]
    IncompatibleServer { backup_major: i32, target_major: i32 },
    #[error(
        "restoring would replace data in database {database:?} (tables {tables}); confirm by naming the database (e.g. --yes / \"confirm\": \"{database}\")"
    )]
    ConfirmationRequired { database: String, tables: String },
    #[error(
        "table {table}: the backup records {expected} rows but {actual} were loaded; the restore was rolled back"
    )]
    RowCountMismatch {
        table: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "the restore would break foreign key {constraint} on table {table} (rows referencing missing rows); include the related tables in the restore. Nothing was changed"
    )]
    ForeignKeyViolation { constraint: String, table: String },
    #[error("table {table} in the backup has no data section; the backup is incomplete")]
    MissingTableSection { table: String },
}

impl PostgresError {
    /// The PostgreSQL error underneath, if any, for logs.
    pub fn database_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            Self::Connect(e) | Self::Query { source: e, .. } | Self::TableQuery { source: e, .. } => {
                e.as_db_error()
            }
            _ => None,
        }
    }
}

/// Connects without TLS and drives the connection on a background task.
pub async fn connect(url: &str) -> Result<Client, PostgresError> {
    let config: tokio_postgres::Config = url.parse().map_err(PostgresError::Connect)?;
    connect_with(&config).await
}

/// Connects with a parsed configuration (e.g. another database on the same server).
pub async fn connect_with(config: &tokio_postgres::Config) -> Result<Client, PostgresError> {
    let (client, connection) = config.connect(NoTls).await.map_err(PostgresError::Connect)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection ended with an error");
        }
    });
    Ok(client)
}

/// Resolves user-given table names (`Booking`, `public.Booking`,
/// `audit.Event`) against the available tables.
pub fn resolve_table_names(
    requested: &[String],
    available: &[QualifiedName],
    where_: &'static str,
) -> Result<Vec<QualifiedName>, PostgresError> {
    let mut resolved = Vec::new();
    let mut unknown = Vec::new();
    for wanted in requested.iter().map(|w| w.trim()).filter(|w| !w.is_empty()) {
        let by_name: Vec<&QualifiedName> = available.iter().filter(|q| q.name == wanted).collect();
        let found = match by_name.as_slice() {
            [one] => Some((*one).clone()),
            [] => wanted
                .split_once('.')
                .and_then(|(schema, name)| available.iter().find(|q| q.schema == schema && q.name == name))
                .cloned(),
            many => {
                return Err(PostgresError::AmbiguousTable {
                    name: wanted.to_owned(),
                    candidates: many.iter().map(|q| q.to_string()).collect::<Vec<_>>().join(", "),
                });
            }
        };
        match found {
            Some(name) if !resolved.contains(&name) => resolved.push(name),
            Some(_) => {}
            None => unknown.push(wanted.to_owned()),
        }
    }
    if !unknown.is_empty() {
        return Err(PostgresError::UnknownTables {
            names: unknown,
            where_,
            available: available
                .iter()
                .map(QualifiedName::display)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(resolved)
}

/// Applies a [`TableFilter`] to the data tables of a database.
pub(crate) fn select_tables(
    data_roots: &[QualifiedName],
    filter: &TableFilter,
) -> Result<BTreeSet<QualifiedName>, PostgresError> {
    let in_schemas: Vec<QualifiedName> = data_roots
        .iter()
        .filter(|q| filter.schemas.is_empty() || filter.schemas.contains(&q.schema))
        .cloned()
        .collect();
    let mut selected: BTreeSet<QualifiedName> = if filter.include.is_empty() {
        in_schemas.iter().cloned().collect()
    } else {
        resolve_table_names(&filter.include, &in_schemas, "in the database")?
            .into_iter()
            .collect()
    };
    for excluded in resolve_table_names(&filter.exclude, &in_schemas, "in the database")? {
        selected.remove(&excluded);
    }
    Ok(selected)
}

/// Major version from `server_version_num` (150020 → 15; before 10 the
/// major was two numbers, 90624 → 9, which only matters for comparison
/// with 10 and later).
pub fn major_version(server_version_num: i32) -> i32 {
    server_version_num / 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<QualifiedName> {
        vec![
            QualifiedName::new("public", "Booking"),
            QualifiedName::new("public", "User"),
            QualifiedName::new("audit", "User"),
            QualifiedName::new("public", "odd.name"),
        ]
    }

    #[test]
    fn names_resolve_bare_qualified_and_dotted() {
        let found = resolve_table_names(
            &[
                "Booking".into(),
                "audit.User".into(),
                "odd.name".into(),
                "Booking".into(),
            ],
            &names(),
            "in the backup",
        )
        .unwrap();
        assert_eq!(
            found,
            vec![
                QualifiedName::new("public", "Booking"),
                QualifiedName::new("audit", "User"),
                QualifiedName::new("public", "odd.name")
            ]
        );
    }

    #[test]
    fn unknown_and_ambiguous_names_are_refused_with_the_choices() {
        let err =
            resolve_table_names(&["Bookings".into(), "Nope".into()], &names(), "in the backup").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Bookings, Nope") && text.contains("available: Booking"),
            "{text}"
        );
        let err = resolve_table_names(&["User".into()], &names(), "in the backup").unwrap_err();
        assert!(matches!(err, PostgresError::AmbiguousTable { .. }), "{err}");
    }

    #[test]
    fn major_versions() {
        assert_eq!(major_version(150_020), 15);
        assert_eq!(major_version(90_624), 9);
    }
}

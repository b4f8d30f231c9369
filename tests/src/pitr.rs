//! Set-up shared by the change-capture suites (`pitr_capture`,
//! `pitr_replay`, `pitr_retention`, `pitr_slot_loss`; docs/PITR.md): the
//! logical clusters of `infra/pg-logical.sh`, a database under capture with
//! a slot of its own, services that know the slot, and a store that kills
//! or fails a capture run where a crash or a storage outage would.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use backup_core::ContainerOptions;
use backup_core::changes::{CaptureRequest, Lsn, PitrNames};
use backup_core::config::Settings;
use backup_core::metrics::MetricsSink;
use backup_core::operations::Services;
use backup_core::operations::{Confirmation, RestoreRequest};
use backup_core::postgres;
use backup_core::repository::BackupSelector;
use backup_core::storage::{BackupStore, ObjectInfo, ObjectReader, ObjectUpload, SharedStore, StorageError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use crate::{TestDatabase, test_keyring};

/// The shared logical cluster (PostgreSQL 15 on 54400; `PGBACKUP_LOGICAL_URL`
/// overrides), started once per test binary.
pub fn logical_admin() -> String {
    if let Ok(url) = std::env::var("PGBACKUP_LOGICAL_URL") {
        return url;
    }
    logical_admin_on(54400)
}

/// A logical cluster of `infra/pg-logical.sh` on `port` (started if it is
/// not up): a test that changes cluster settings takes a port of its own,
/// so the other suites' slots on the shared one are not touched.
pub fn logical_admin_on(port: u16) -> String {
    static STARTED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut started = STARTED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if started.insert(port) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/pg-logical.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .env("PGBACKUP_LOGICAL_PORT", port.to_string())
            .status()
            .expect("running infra/pg-logical.sh");
        assert!(
            status.success(),
            "PGBACKUP_LOGICAL_PORT={port} infra/pg-logical.sh start failed"
        );
    }
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// A database with a slot of its own (slots are cluster-wide: `s_` and the
/// database's name) and the publication `pitr_pub`. Capture is not enabled
/// here (each suite sets its own tables up first); the slot is dropped when
/// the value is, before the database, which could not be dropped while a
/// slot of it exists.
pub struct PitrDatabase {
    pub names: PitrNames,
    pub database: TestDatabase,
}

impl PitrDatabase {
    pub async fn create(label: &str) -> Self {
        Self::create_on(&logical_admin(), label).await
    }

    pub async fn create_on(admin: &str, label: &str) -> Self {
        let database = TestDatabase::create_on(admin, label).await;
        let names = PitrNames {
            slot: format!("s_{}", database.name.to_lowercase()),
            publication: "pitr_pub".to_owned(),
        };
        Self { names, database }
    }

    pub fn url(&self) -> &str {
        &self.database.url
    }

    pub async fn client(&self) -> Client {
        self.database.client().await
    }

    pub fn capture_request(&self) -> CaptureRequest {
        CaptureRequest::new(self.database.url.clone(), self.names.clone())
    }

    /// The slot's `confirmed_flush_lsn`.
    pub async fn confirmed_position(&self) -> Lsn {
        let text: String = self
            .client()
            .await
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.names.slot],
            )
            .await
            .unwrap()
            .get(0);
        text.parse().unwrap()
    }
}

impl Drop for PitrDatabase {
    fn drop(&mut self) {
        let (url, slot) = (self.database.url.clone(), self.names.slot.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok(client) = postgres::connect(&url).await {
                    let _ = client
                        .execute(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                            &[&slot],
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// Services over `store` that know the database's slot and publication
/// (so base backups record their stream position); `keyring: false` as
/// the prune function runs, without the key.
pub fn pitr_services(store: SharedStore, names: &PitrNames, keyring: bool, metrics: MetricsSink) -> Services {
    let mut settings = Settings::from_lookup(|_| None).unwrap();
    settings.keyring = keyring.then(test_keyring);
    let mut services = Services::new(store, &settings, "test", metrics);
    services.pitr_slot = Some(names.slot.clone());
    services.pitr_publication = Some(names.publication.clone());
    services
}

const HEALTHY: u8 = 0;
const KILL_NEXT: u8 = 1;
const FAIL_DOCUMENTS: u8 = 2;

/// The store as a capture run sees it when the run dies or storage fails
/// on the way, at the two points the at-least-once design has to survive
/// (docs/PITR.md, "At-least-once"):
///
/// * [`kill_next_capture`](Self::kill_next_capture): the next segment's
///   document is stored, then the run dies before the slot advances, and
///   cleans up nothing (its deletes of that segment are not made);
/// * [`fail_documents`](Self::fail_documents): until [`heal`](Self::heal),
///   every segment document write fails before anything is stored, as an
///   outage would; the run cleans up after itself.
///
/// Everything else, and every other key, goes to the store inside.
#[derive(Debug)]
pub struct InterruptedCaptureStore {
    inner: SharedStore,
    fault: AtomicU8,
    /// `changes/{id}` of each killed run: what it would have cleaned up.
    killed: Mutex<Vec<String>>,
}

impl InterruptedCaptureStore {
    pub fn new(inner: SharedStore) -> Self {
        Self {
            inner,
            fault: AtomicU8::new(HEALTHY),
            killed: Mutex::new(Vec::new()),
        }
    }

    pub fn kill_next_capture(&self) {
        self.fault.store(KILL_NEXT, Ordering::SeqCst);
    }

    pub fn fail_documents(&self) {
        self.fault.store(FAIL_DOCUMENTS, Ordering::SeqCst);
    }

    /// No fault from now on (a kill not yet used is called off).
    pub fn heal(&self) {
        self.fault.store(HEALTHY, Ordering::SeqCst);
    }

    fn left_by_a_killed_run(&self, key: &str) -> bool {
        let stem = key.rsplit_once('.').map_or(key, |(stem, _)| stem);
        self.killed.lock().unwrap().iter().any(|killed| killed == stem)
    }
}

fn injected(key: &str, what: &str) -> StorageError {
    StorageError::Io {
        operation: "write",
        key: key.to_owned(),
        source: std::io::Error::other(format!("injected: {what}")),
    }
}

impl BackupStore for InterruptedCaptureStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn begin_upload<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn ObjectUpload>, StorageError>> {
        self.inner.begin_upload(key)
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            if !key.starts_with("changes/") {
                return self.inner.put(key, bytes).await;
            }
            if self.fault.load(Ordering::SeqCst) == FAIL_DOCUMENTS {
                return Err(injected(key, "the segment document cannot be stored"));
            }
            let stored = self.inner.put(key, bytes).await?;
            if self
                .fault
                .compare_exchange(KILL_NEXT, HEALTHY, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                let stem = key.rsplit_once('.').map_or(key, |(stem, _)| stem);
                self.killed.lock().unwrap().push(stem.to_owned());
                return Err(injected(key, "the capture is killed before the slot advances"));
            }
            Ok(stored)
        }
        .boxed()
    }
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        self.inner.put_if_absent(key, bytes)
    }
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: u64,
    ) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        self.inner.get_range(key, offset, length)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        self.inner.get(key)
    }
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        self.inner.head(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, StorageError>> {
        self.inner.list(prefix)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        // A killed run does not clean up after itself.
        if self.left_by_a_killed_run(key) {
            return async { Ok(()) }.boxed();
        }
        self.inner.delete(key)
    }
}

/// A restore of the whole `source` backup chain into `target`, to the
/// instant `at`, without a safety backup.
pub fn at_request(source: &TestDatabase, target: &TestDatabase, at: DateTime<Utc>) -> RestoreRequest {
    RestoreRequest {
        selector: BackupSelector::Before(at),
        tables: Default::default(),
        database_url: Some(source.url.clone()),
        target_url: Some(target.url.clone()),
        safety_backup: false,
        confirmation: Confirmation::Operator,
        replace_existing: false,
        reason: None,
        requested_by: None,
        container: ContainerOptions::default(),
        create_roles: None,
        create_database: false,
        no_tablespaces: false,
        no_security_labels: false,
        large_objects: false,
        at: Some(at),
    }
}

/// A TCP proxy to `upstream` (`host:port`) on a port of its own that holds
/// every chunk `one_way` before passing it on, each way, in order: a
/// database a network away (a Lambda and its RDS), where each round trip
/// costs what it does there. tokio's timers have a millisecond's
/// resolution, so a delay is at least that. Returns the proxy's port.
pub async fn delayed_proxy(upstream: String, one_way: std::time::Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(delayed_copy(client_read, server_write, one_way));
            tokio::spawn(delayed_copy(server_read, client_write, one_way));
        }
    });
    port
}

async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(read) = from.read(&mut buffer).await {
        if read == 0
            || sender
                .send((tokio::time::Instant::now() + delay, buffer[..read].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(sender);
    let _ = writer.await;
}

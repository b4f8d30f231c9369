//! The ECS task image (issue #28), as Fargate would run it: built by
//! infra/build-image.sh without a Docker daemon (umoci), unpacked with
//! `umoci unpack`, and its entrypoint run under `chroot` as the image's
//! non-root user, with only what the image holds (its binary, libraries,
//! CA certificates). It talks to the real PostgreSQL on 127.0.0.1 (chroot
//! keeps the network namespace) and to moto's S3 and Secrets Manager, with
//! the key and the database credentials as Secrets Manager secrets and
//! ECS's metadata variable set, so the cloud path's rules apply.
//!
//! Needs root (chroot) and umoci (.ci/run installs it); skipped
//! with a message only when umoci is missing. `--nocapture` prints the
//! image's sizes and the create/restore times against backupctl's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::*;
use serde_json::{Value, json};

const KEY: &str = "5d2c8b1a0f9e8d7c6b5a49382716051f2e3d4c5b6a79880f1e2d3c4b5a697887";
const TASK_NAME: &str = "pgbackup-test-task";
const EXIT_BAD_ORDER: i32 = 64;
const EXIT_RETRYABLE: i32 = 75;
const EXIT_CONFIGURATION: i32 = 78;
const EXIT_INTERRUPTED: i32 = 130;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn has(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Bytes of the regular files under `path` (what the layout or the
/// unpacked root file system weighs).
fn bytes_under(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.path().symlink_metadata().unwrap();
        if metadata.is_dir() {
            total += bytes_under(&entry.path());
        } else if metadata.is_file() {
            total += metadata.len();
        }
    }
    total
}

fn run(command: &mut std::process::Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

struct Image {
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    layout_bytes: u64,
    rootfs_bytes: u64,
    build_time: Duration,
}

/// The image of the binary cargo built for this test, as the README's
/// command builds it, then unpacked as the container runtime would.
fn build_and_unpack() -> Image {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    let started = Instant::now();
    run(
        std::process::Command::new(repository().join("infra/build-image.sh"))
            .args(["--profile", "dev", "--tag", "test", "--binary"])
            .arg(env!("CARGO_BIN_EXE_backup-task"))
            .arg("--out")
            .arg(&layout),
    );
    let build_time = started.elapsed();
    // The push tool reads the layout as the registry will get it.
    if has("skopeo") {
        let inspected = run(std::process::Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:test", layout.display())));
        let config: Value = serde_json::from_slice(&inspected.stdout).unwrap();
        assert_eq!(config["Architecture"], "amd64");
        assert_eq!(
            config["Labels"]["org.opencontainers.image.licenses"],
            "Apache-2.0"
        );
        assert!(
            config["Labels"]["io.pgbackup.debian-packages"]
                .as_str()
                .unwrap()
                .contains("libc6="),
            "{config}"
        );
    }
    let bundle = dir.path().join("bundle");
    run(std::process::Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle));
    // The runtime's configuration: the entrypoint, as the image's non-root user.
    let runtime: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(runtime["process"]["args"], json!(["/usr/local/bin/backup-task"]));
    assert_eq!(runtime["process"]["user"], json!({"uid": 65532, "gid": 65532}));
    let rootfs = bundle.join("rootfs");
    Image {
        layout_bytes: bytes_under(&layout),
        rootfs_bytes: bytes_under(&rootfs),
        rootfs,
        build_time,
        _dir: dir,
    }
}

async fn secret(name: &str, value: &str) -> String {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into()))
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "t",
        ))
        .load()
        .await;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(format!("{name}-{}-{nanos}", std::process::id()))
        .secret_string(value)
        .send()
        .await
        .expect("Secrets Manager stand-in on 127.0.0.1:5000 (infra/services.sh start)")
        .arn
        .unwrap()
}

/// chroot's path, looked up here: the task's environment has no PATH.
fn chroot() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("chroot"))
        .find(|path| path.is_file())
        .expect("chroot (coreutils)")
}

/// A task's run: the image's entrypoint under chroot as its user, with
/// only `env` (what the task definition and the container overrides set).
fn task(rootfs: &Path, args: &[&str], env: &BTreeMap<String, String>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(chroot());
    command
        .arg("--userspec=65532:65532")
        .arg(rootfs)
        .arg("/usr/local/bin/backup-task")
        .args(args)
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

async fn task_output(rootfs: &Path, args: &[&str], env: &BTreeMap<String, String>) -> (Output, Duration) {
    let started = Instant::now();
    let output = task(rootfs, args, env).output().await.unwrap();
    (output, started.elapsed())
}

/// The one result line on stdout (the last; EMF metric lines come before it).
fn result(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "the last stdout line is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn succeeded(output: &Output, what: &str) -> Value {
    assert!(
        output.status.success(),
        "{what} failed ({:?}): {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    result(output)
}

/// `backupctl` (built beside this test by the workspace's build) with the
/// same bucket under another prefix, the key in plain environment as on a
/// host; None when it was not built.
fn backupctl() -> Option<PathBuf> {
    let deps = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let binary = deps.parent()?.join("backupctl");
    binary.is_file().then_some(binary)
}

async fn backupctl_run(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Duration {
    let started = Instant::now();
    let output = tokio::process::Command::new(binary)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "backupctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_backs_up_and_restores_under_chroot_as_an_ecs_task() {
    if !has("umoci") {
        eprintln!(
            "SKIPPED the_image_backs_up_and_restores_under_chroot_as_an_ecs_task: umoci is not installed (apt-get install umoci skopeo; .ci/run installs them)"
        );
        return;
    }
    let uid = run(std::process::Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test runs the image under chroot, which needs root"
    );

    // Given the image built and unpacked
    let image = build_and_unpack();
    let rootfs = &image.rootfs;
    // and a database, a bucket, the key and the database's credentials in
    // Secrets Manager, and a webhook receiver
    let source = TestDatabase::create("fgt_source").await;
    // PGBACKUP_TASK_IMAGE_BOOKINGS scales it for a timing run by hand.
    let bookings: u32 = std::env::var("PGBACKUP_TASK_IMAGE_BOOKINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    load_carwash(&source.client().await, bookings).await;
    let (s3, bucket) = s3_test_bucket("fgt", false).await;
    let webhook = WebhookReceiver::start(Vec::new()).await;
    let keyring_arn = secret("fgt-keyring", KEY).await;
    // An RDS-managed master secret: credentials only (trust authentication
    // here ignores the password); host, port and name as the task's settings.
    let database_arn = secret(
        "fgt-database",
        &json!({"username": "postgres", "password": "pw-sentinel-fgt-77aa"}).to_string(),
    )
    .await;
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    let env: BTreeMap<String, String> = [
        ("BACKUP_STORAGE_TYPE", "s3"),
        ("S3_BACKUP_BUCKET", bucket.as_str()),
        ("S3_PREFIX", "fargate"),
        ("BACKUP_KEYRING_SECRET_ARN", keyring_arn.as_str()),
        ("DATABASE_SECRET_ARN", database_arn.as_str()),
        ("DATABASE_HOST", "127.0.0.1"),
        ("DATABASE_PORT", "5432"),
        ("DATABASE_NAME", source.name.as_str()),
        // TLS to the server through the image's libssl.
        ("DATABASE_SSLMODE", "require"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("BACKUP_WEBHOOK_URL", webhook.url.as_str()),
        ("BACKUP_TASK_NAME", TASK_NAME),
        // What the ECS agent sets in every container: the cloud path.
        (
            "ECS_CONTAINER_METADATA_URI_V4",
            "http://169.254.170.2/v4/fgt-test",
        ),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    // When the task creates a backup, the order in BACKUP_TASK_ORDER as a
    // container override sets it
    let mut create_env = env.clone();
    create_env.insert(
        "BACKUP_TASK_ORDER".into(),
        // No requester: the audit record then names the task itself.
        json!({"reason": "fargate drill"}).to_string(),
    );
    let (created, task_create) = task_output(rootfs, &["create"], &create_env).await;
    // Then it succeeds and prints the backup's metadata
    let metadata = succeeded(&created, "task create");
    let id = metadata["id"].as_str().unwrap().to_owned();
    assert_eq!(metadata["reason"], "fargate drill");
    assert!(
        metadata["recordCount"].as_u64().unwrap() > u64::from(bookings),
        "{metadata}"
    );
    // with the functions' EMF metrics on stdout and JSON logs on stderr
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(stdout.lines().any(|l| l.contains("\"_aws\"")), "{stdout}");
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["level"] == "INFO")),
        "{stderr}"
    );
    // the backup, its metadata and an audit record naming the task in the bucket
    let keys: Vec<String> = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    assert!(keys.contains(&format!("fargate/backups/{id}.backup")), "{keys:?}");
    assert!(keys.contains(&format!("fargate/metadata/{id}.json")), "{keys:?}");
    let audit_key = keys
        .iter()
        .find(|k| k.starts_with("fargate/audit/"))
        .unwrap_or_else(|| panic!("no audit record: {keys:?}"));
    let audit: Value = serde_json::from_slice(&s3_object(&s3, &bucket, audit_key).await).unwrap();
    assert_eq!(audit["actor"], format!("task:{TASK_NAME}"), "{audit}");
    // and the webhook heard of it
    assert!(
        webhook.received().iter().any(|r| r.raw_body.contains(&id)),
        "{:?}",
        webhook.events()
    );
    // and the database password is nowhere in what the task printed
    for output in [&created.stdout, &created.stderr] {
        assert!(!String::from_utf8_lossy(output).contains("pw-sentinel-fgt-77aa"));
    }

    // When the task restores that backup into another database, the order
    // as its argument (a console payload)
    let copy = TestDatabase::create("fgt_copy").await;
    let order = json!({"backupId": id, "target": copy.name, "confirm": copy.name,
                       "reason": "restore drill", "requestedBy": "ops"});
    let (restored, task_restore) = task_output(rootfs, &["restore", &order.to_string()], &env).await;
    let outcome = succeeded(&restored, "task restore");
    // Then the copy holds the same data, table by table and as pg_dump sees it
    assert_eq!(
        table_digests(&copy.client().await).await,
        table_digests(&source.client().await).await,
        "{outcome}"
    );
    let (source_rows, copy_rows) = (data_dump(&source.url), data_dump(&copy.url));
    assert!(
        source_rows == copy_rows,
        "{}",
        difference(&source_rows, &copy_rows)
    );

    // When the task verifies that backup in full, and the nightly schedule's
    // order (a container override) takes another
    let order = json!({"backupId": id, "depth": "full"}).to_string();
    let (verified, _) = task_output(rootfs, &["verify", &order], &env).await;
    let report = succeeded(&verified, "task verify");
    assert_eq!(report["backupId"], id.as_str(), "{report}");
    assert_eq!(report["status"], "passed", "{report}");
    // with its metrics sent to a CloudWatch agent's EMF listener, as in ECS
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut nightly = env.clone();
    nightly.insert("BACKUP_TASK_ORDER".into(), r#"{"schedule": "nightly"}"#.into());
    nightly.insert(
        "BACKUP_METRICS".into(),
        format!("tcp:{}", agent.local_addr().unwrap()),
    );
    let (scheduled, _) = task_output(rootfs, &["create"], &nightly).await;
    let scheduled = succeeded(&scheduled, "task nightly create");
    assert_eq!(scheduled["trigger"], "schedule", "{scheduled}");
    let (mut connection, _) = tokio::time::timeout(Duration::from_secs(5), agent.accept())
        .await
        .expect("the task sent its metrics to the agent")
        .unwrap();
    let mut line = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut connection, &mut line)
        .await
        .unwrap();
    let emf: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(emf["Operation"], "create", "{emf}");
    // When that backup is damaged in the bucket (one byte in its middle)
    let damaged_key = format!("fargate/backups/{}.backup", scheduled["id"].as_str().unwrap());
    let mut bytes = s3_object(&s3, &bucket, &damaged_key).await;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    s3.put_object()
        .bucket(&bucket)
        .key(&damaged_key)
        .body(bytes.into())
        .send()
        .await
        .unwrap();
    // Then verifying it fails the task with exit 1
    let order = json!({"backupId": scheduled["id"], "depth": "full"}).to_string();
    let (damaged, _) = task_output(rootfs, &["verify", &order], &env).await;
    assert_eq!(damaged.status.code(), Some(1), "{:?}", result(&damaged));

    // When the order is bad (a restore without its confirmation; an
    // operation the task does not run)
    let (unconfirmed, _) = task_output(rootfs, &["restore", r#"{"backupId": "latest"}"#], &env).await;
    let (unknown, _) = task_output(rootfs, &["prune"], &env).await;
    // Then nothing runs and the exit code says so
    assert_eq!(
        unconfirmed.status.code(),
        Some(EXIT_BAD_ORDER),
        "{:?}",
        result(&unconfirmed)
    );
    assert_eq!(result(&unconfirmed)["errorType"], "Fatal.InvalidEvent");
    assert_eq!(unknown.status.code(), Some(EXIT_BAD_ORDER));
    // When the database cannot be reached, the code says a retry may help
    let mut unreachable = env.clone();
    unreachable.insert("DATABASE_PORT".into(), "1".into());
    let (failed, _) = task_output(rootfs, &["create"], &unreachable).await;
    assert_eq!(
        failed.status.code(),
        Some(EXIT_RETRYABLE),
        "{:?}",
        result(&failed)
    );
    assert_eq!(result(&failed)["errorType"], "Retryable.Database");
    // When a secret is in the task's plain environment, the task refuses to
    // start, naming the variable but never its value
    let mut plain = env.clone();
    plain.insert("BACKUP_ENCRYPTION_KEY".into(), KEY.into());
    let (refused, _) = task_output(rootfs, &["create"], &plain).await;
    assert_eq!(refused.status.code(), Some(EXIT_CONFIGURATION));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        said.contains("BACKUP_ENCRYPTION_KEY") && !said.contains(KEY),
        "{said}"
    );

    // When ECS stops the task (SIGTERM) in the middle of a restore
    let stopped = TestDatabase::create("fgt_stopped").await;
    let mut paused = env.clone();
    paused.insert("BACKUPCTL_TEST_PAUSE_AT".into(), "load".into());
    let order = json!({"backupId": id, "target": stopped.name, "confirm": stopped.name});
    let child = task(rootfs, &["restore", &order.to_string()], &paused)
        .spawn()
        .unwrap();
    wait_for_pause(&stopped).await;
    let pid = child.id().unwrap().to_string();
    run(std::process::Command::new("kill").args(["-TERM", &pid]));
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the task ends within 120 s of SIGTERM")
        .unwrap();
    // Then it undoes what it made and exits 130, as backupctl does
    assert_eq!(
        output.status.code(),
        Some(EXIT_INTERRUPTED),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table_digests(&stopped.client().await).await.is_empty(),
        "an interrupted restore left tables"
    );

    // The same create and restore with backupctl on the host, for comparison
    let comparison = match backupctl() {
        None => "backupctl not built beside the test (cargo build -p backupctl): no comparison".to_owned(),
        Some(binary) => {
            let copy = TestDatabase::create("fgt_ctl_copy").await;
            let common = [
                ("BACKUP_STORAGE_TYPE", "s3"),
                ("S3_BACKUP_BUCKET", bucket.as_str()),
                ("S3_PREFIX", "backupctl"),
                ("BACKUP_ENCRYPTION_KEY", KEY),
                ("DATABASE_URL", source.url.as_str()),
                ("AWS_ENDPOINT_URL", endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
            ];
            let ctl_create = backupctl_run(&binary, &["create", "--json"], &common).await;
            let ctl_restore = backupctl_run(
                &binary,
                &[
                    "restore",
                    "--backup-id",
                    "latest",
                    "--target-url",
                    &copy.url,
                    "--yes",
                    "--json",
                ],
                &common,
            )
            .await;
            format!(
                "backupctl create {} ms, restore {} ms",
                ctl_create.as_millis(),
                ctl_restore.as_millis()
            )
        }
    };
    let database_bytes: i64 = source
        .client()
        .await
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "task image: layout {} bytes, unpacked rootfs {} bytes, built in {} ms; chroot task create {} ms, restore {} ms; {comparison} (debug builds, {} bookings, database {database_bytes} bytes)",
        image.layout_bytes,
        image.rootfs_bytes,
        image.build_time.as_millis(),
        task_create.as_millis(),
        task_restore.as_millis(),
        bookings
    );
}

/// Waits until a restore step in `database` sits in the test hook's sleep.
async fn wait_for_pause(database: &TestDatabase) {
    let admin = backup_core_connect().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let paused: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
                 AND query LIKE '%pg_sleep(3600)%' AND pid <> pg_backend_pid()",
                &[&database.name],
            )
            .await
            .unwrap()
            .get(0);
        if paused > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the restore did not reach the pause in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn backup_core_connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

//! The ECS task image (issue #28), as Fargate would run it: built by
//! infra/build-image.sh without a Docker daemon (umoci), unpacked with
//! `umoci unpack`, and its entrypoint run under `chroot` as the image's
//! non-root user, with only what the image holds (its binary, libraries,
//! CA certificates). Both of Fargate's architectures: this machine's
//! (amd64), and arm64 (the template's default), cross-built by the script
//! and run through qemu-aarch64-static, copied into the unpacked root and
//! started explicitly (no binfmt_misc registration needed).
//!
//! It talks to the real PostgreSQL on 127.0.0.1 (chroot keeps the network
//! namespace) and to a moto of its own with IAM enforced
//! (infra/iam_emulation.py): the stack is provisioned from template.yaml
//! with the Fargate engine, and the task runs with the task definition's
//! environment and the task role's keys, the key and the database
//! credentials as Secrets Manager secrets and ECS's metadata variable set,
//! so the cloud path's rules and the template's grants apply.
//!
//! Needs root (chroot) and umoci (.ci/run installs it); skipped
//! with a message only when umoci is missing, and the arm64 story outside
//! CI when the cross toolchain or qemu is missing (in CI that fails).
//! `--nocapture` prints the images' sizes and the create/restore times
//! against backupctl's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::*;
use serde_json::{Value, json};

const KEY: &str = "5d2c8b1a0f9e8d7c6b5a49382716051f2e3d4c5b6a79880f1e2d3c4b5a697887";
const PASSWORD: &str = "pw-sentinel-fgt-77aa";
const TASK_NAME: &str = "pgbackup-test-task";
const EXIT_FAILED: i32 = 1;
const EXIT_BAD_ORDER: i32 = 64;
const EXIT_UNAVAILABLE: i32 = 69;
const EXIT_RETRYABLE: i32 = 75;
const EXIT_CONFIGURATION: i32 = 78;
const EXIT_INTERRUPTED: i32 = 130;
/// Where the test puts qemu in the unpacked arm64 root (not in the image).
const QEMU_IN_ROOT: &str = "/qemu-aarch64-static";

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

/// Which of Fargate's two architectures a story runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The ELF e_machine the binary in the image must carry.
    fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 0x3e,
            Arch::Arm64 => 0xb7,
        }
    }
}

struct Image {
    _dir: tempfile::TempDir,
    arch: Arch,
    rootfs: PathBuf,
    layout_bytes: u64,
    rootfs_bytes: u64,
    build_time: Duration,
}

/// The image as the README's commands build it, then unpacked as the
/// container runtime would. amd64 packages the binary cargo built for this
/// test; arm64 has the script cross-build it (a dev build without debug
/// info: what CI can afford) — None when that cannot be done here.
fn build_and_unpack(arch: Arch) -> Option<Image> {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    let mut build = std::process::Command::new(repository().join("infra/build-image.sh"));
    build
        .args(["--arch", arch.name(), "--profile", "dev", "--tag", "test"])
        .arg("--out")
        .arg(&layout);
    match arch {
        Arch::Amd64 => {
            build.arg("--binary").arg(env!("CARGO_BIN_EXE_backup-task"));
        }
        Arch::Arm64 => {
            build.env("CARGO_PROFILE_DEV_DEBUG", "0");
        }
    }
    let started = Instant::now();
    let output = build.output().unwrap();
    let build_time = started.elapsed();
    if output.status.code() == Some(EXIT_UNAVAILABLE) {
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs the {} toolchain (.ci/run), yet: {said}",
            arch.name()
        );
        eprintln!("SKIPPED the {} image story: {said}", arch.name());
        return None;
    }
    assert!(
        output.status.success(),
        "build-image.sh --arch {} failed: {}{}",
        arch.name(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The push tool reads the layout as the registry will get it.
    if has("skopeo") {
        let inspected = run(std::process::Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:test", layout.display())));
        let config: Value = serde_json::from_slice(&inspected.stdout).unwrap();
        assert_eq!(config["Architecture"], arch.name());
        assert_eq!(
            config["Labels"]["org.opencontainers.image.licenses"],
            "Apache-2.0"
        );
        let packages = config["Labels"]["io.pgbackup.debian-packages"].as_str().unwrap();
        // On aarch64 OpenSSL is vendored into the binary (shared/Cargo.toml).
        let loaded = match arch {
            Arch::Amd64 => ["libc6=", "libssl3=", "ca-certificates="],
            Arch::Arm64 => ["libc6=", "libgcc-s1=", "ca-certificates="],
        };
        for package in loaded {
            assert!(packages.contains(package), "{config}");
        }
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
    let binary = std::fs::read(rootfs.join("usr/local/bin/backup-task")).unwrap();
    assert_eq!(
        u16::from_le_bytes([binary[18], binary[19]]),
        arch.elf_machine(),
        "the image's binary is not {}",
        arch.name()
    );
    let (layout_bytes, rootfs_bytes) = (bytes_under(&layout), bytes_under(&rootfs));
    if arch == Arch::Arm64 {
        // The emulator goes into this unpacked copy only, never the image:
        // Fargate's Graviton hosts run the binary natively.
        let qemu = which("qemu-aarch64-static")?;
        std::fs::copy(qemu, rootfs.join(QEMU_IN_ROOT.trim_start_matches('/'))).unwrap();
    }
    Some(Image {
        arch,
        layout_bytes,
        rootfs_bytes,
        rootfs,
        build_time,
        _dir: dir,
    })
}

/// A program's path on this machine's PATH (and /usr/sbin, where chroot is).
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// moto with IAM enforcement on a port of its own, the stack provisioned
/// into it from template.yaml with the Fargate engine
/// (infra/iam_emulation.py, as functions/common/tests/iam_enforced.rs).
struct Stack {
    emulator: Child,
    endpoint: String,
    bucket: String,
    /// The task definition's container environment, resolved.
    task_environment: BTreeMap<String, String>,
    task_keys: (String, String),
    admin_keys: (String, String),
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
    }
}

impl Stack {
    fn provision(database: &TestDatabase, webhook: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut emulator = std::process::Command::new(python())
            .arg(repository().join("infra/iam_emulation.py"))
            .args(["serve", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the venv from infra/services.sh install");
        let endpoint = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = emulator.kill();
                panic!("the IAM emulator did not start on {endpoint}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let parameters = json!({
            "keyring": KEY,
            // An RDS-managed master secret: credentials only (trust
            // authentication here ignores the password); host, port and
            // name as the template's parameters.
            "databaseSecret": json!({"username": "postgres", "password": PASSWORD}).to_string(),
            "DatabaseHost": "127.0.0.1",
            "DatabasePort": "5432",
            "DatabaseName": database.name,
            // TLS to the server through the image's libssl.
            "DatabaseSslMode": "require",
            "WebhookUrl": webhook,
            "EnableFargate": "true",
            "BackupEngine": "fargate",
            "TaskImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/pgbackup:test",
        });
        let output = std::process::Command::new(python())
            .arg(repository().join("infra/iam_emulation.py"))
            .arg("provision")
            .arg(&endpoint)
            .arg(repository().join("template.yaml"))
            .arg(parameters.to_string())
            .output()
            .unwrap();
        let mut stack = Self {
            emulator,
            endpoint,
            bucket: String::new(),
            task_environment: BTreeMap::new(),
            task_keys: Default::default(),
            admin_keys: Default::default(),
        };
        assert!(
            output.status.success(),
            "provision: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let provisioned: Value = serde_json::from_slice(&output.stdout).unwrap();
        let keys = |user: &str| {
            let user = &provisioned["users"][user];
            (
                user["accessKeyId"].as_str().unwrap().to_owned(),
                user["secretAccessKey"].as_str().unwrap().to_owned(),
            )
        };
        stack.bucket = provisioned["bucket"].as_str().unwrap().to_owned();
        stack.task_keys = keys("task");
        stack.admin_keys = keys("admin");
        stack.task_environment = provisioned["users"]["task"]["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        stack
    }

    /// What the container gets: the task definition's environment and,
    /// as ECS hands them over, the task role's credentials.
    fn container_environment(&self) -> BTreeMap<String, String> {
        let mut env = self.task_environment.clone();
        for (k, v) in [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", self.task_keys.0.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.task_keys.1.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("BACKUP_TASK_NAME", TASK_NAME),
            // What the ECS agent sets in every container: the cloud path.
            (
                "ECS_CONTAINER_METADATA_URI_V4",
                "http://169.254.170.2/v4/fgt-test",
            ),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
        env
    }

    /// An S3 client with these keys (the test's own eye on the bucket:
    /// the administrator's).
    async fn s3(&self, (access_key, secret_key): &(String, String)) -> aws_sdk_s3::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                access_key, secret_key, None, None, "test",
            ))
            .load()
            .await;
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        )
    }
}

/// A task's run: the image's entrypoint under chroot as its user, with
/// only `env` (what the task definition and the container overrides set);
/// an arm64 image's through the qemu copied into its root.
fn task(image: &Image, args: &[&str], env: &BTreeMap<String, String>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(which("chroot").expect("chroot (coreutils)"));
    command.arg("--userspec=65532:65532").arg(&image.rootfs);
    if image.arch == Arch::Arm64 {
        command.arg(QEMU_IN_ROOT);
    }
    command
        .arg("/usr/local/bin/backup-task")
        .args(args)
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

async fn task_output(image: &Image, args: &[&str], env: &BTreeMap<String, String>) -> (Output, Duration) {
    let started = Instant::now();
    let output = task(image, args, env).output().await.unwrap();
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

/// Whether the story can run here: umoci (false, with the reason printed,
/// when it is missing) and root.
fn can_run(story: &str) -> bool {
    if !has("umoci") {
        eprintln!(
            "SKIPPED {story}: umoci is not installed (apt-get install umoci skopeo; .ci/run installs them)"
        );
        return false;
    }
    let uid = run(std::process::Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test runs the image under chroot, which needs root"
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_backs_up_and_restores_under_chroot_as_an_ecs_task() {
    if can_run("the amd64 image story") {
        story(Arch::Amd64).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arm64_image_backs_up_and_restores_under_chroot_through_qemu() {
    if !can_run("the arm64 image story") {
        return;
    }
    if which("qemu-aarch64-static").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs qemu-user-static (.ci/run)"
        );
        eprintln!(
            "SKIPPED the arm64 image story: qemu-aarch64-static is missing (apt-get install qemu-user-static)"
        );
        return;
    }
    story(Arch::Arm64).await;
}

async fn story(arch: Arch) {
    // Given the image built and unpacked
    let Some(image) = build_and_unpack(arch) else {
        return;
    };
    // and a database, a webhook receiver, and the stack deployed from the
    // template with the Fargate engine: the bucket, the key and the
    // database's credentials in Secrets Manager, IAM enforced from here on
    let source = TestDatabase::create("fgt_source").await;
    // PGBACKUP_TASK_IMAGE_BOOKINGS scales it for a timing run by hand.
    let bookings: u32 = std::env::var("PGBACKUP_TASK_IMAGE_BOOKINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    load_carwash(&source.client().await, bookings).await;
    let webhook = WebhookReceiver::start(Vec::new()).await;
    let stack = Stack::provision(&source, &webhook.url);
    let (s3, bucket) = (stack.s3(&stack.admin_keys).await, stack.bucket.clone());
    // and the container's environment: the task definition's, the task
    // role's credentials
    let env = stack.container_environment();
    assert_eq!(env["BACKUP_WEBHOOK_URL"], webhook.url);
    assert!(env["DATABASE_SECRET_ARN"].starts_with("arn:aws:secretsmanager:"));

    // When the task creates a backup, the order in BACKUP_TASK_ORDER as a
    // container override sets it
    let mut create_env = env.clone();
    create_env.insert(
        "BACKUP_TASK_ORDER".into(),
        // No requester: the audit record then names the task itself.
        json!({"reason": "fargate drill"}).to_string(),
    );
    let (created, task_create) = task_output(&image, &["create"], &create_env).await;
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
    assert!(keys.contains(&format!("backups/{id}.backup")), "{keys:?}");
    assert!(keys.contains(&format!("metadata/{id}.json")), "{keys:?}");
    let audit_key = keys
        .iter()
        .find(|k| k.starts_with("audit/"))
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
        assert!(!String::from_utf8_lossy(output).contains(PASSWORD));
    }

    // When the task restores that backup into another database, the order
    // as its argument (a console payload)
    let copy = TestDatabase::create("fgt_copy").await;
    let order = json!({"backupId": id, "target": copy.name, "confirm": copy.name,
                       "reason": "restore drill", "requestedBy": "ops"});
    let (restored, task_restore) = task_output(&image, &["restore", &order.to_string()], &env).await;
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

    // When the task role tries what the template does not grant it:
    // deleting the backup, writing a verification record (the verify
    // function's)
    let task_s3 = stack.s3(&stack.task_keys).await;
    let deleted = task_s3
        .delete_object()
        .bucket(&bucket)
        .key(format!("backups/{id}.backup"))
        .send()
        .await;
    let recorded = task_s3
        .put_object()
        .bucket(&bucket)
        .key(format!("verification/{id}.json"))
        .body(b"{}".to_vec().into())
        .send()
        .await;
    // Then IAM refuses both, so the grants above were the template's
    for (what, refused) in [
        (
            "delete a backup",
            deleted
                .err()
                .map(|e| e.raw_response().map(|r| r.status().as_u16())),
        ),
        (
            "record a verification",
            recorded
                .err()
                .map(|e| e.raw_response().map(|r| r.status().as_u16())),
        ),
    ] {
        assert_eq!(refused, Some(Some(403)), "the task role may {what}");
    }

    // When the task verifies that backup in full
    let order = json!({"backupId": id, "depth": "full"}).to_string();
    let (verified, _) = task_output(&image, &["verify", &order], &env).await;
    // Then it reads and checks the whole backup but cannot record the
    // verification (README: deep verification stays with the verify function)
    assert_ne!(verified.status.code(), Some(0), "{:?}", result(&verified));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(said.contains("verification/"), "{said}");

    // When the nightly schedule's order (a container override) takes
    // another, with its metrics sent to a CloudWatch agent's EMF listener,
    // as in ECS
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut nightly = env.clone();
    nightly.insert("BACKUP_TASK_ORDER".into(), r#"{"schedule": "nightly"}"#.into());
    nightly.insert(
        "BACKUP_METRICS".into(),
        format!("tcp:{}", agent.local_addr().unwrap()),
    );
    let (scheduled, _) = task_output(&image, &["create"], &nightly).await;
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
    let damaged_key = format!("backups/{}.backup", scheduled["id"].as_str().unwrap());
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
    // Then restoring it fails the task with exit 1 and leaves the target empty
    let broken = TestDatabase::create("fgt_broken").await;
    let order = json!({"backupId": scheduled["id"], "target": broken.name, "confirm": broken.name});
    let (damaged, _) = task_output(&image, &["restore", &order.to_string()], &env).await;
    assert_eq!(damaged.status.code(), Some(EXIT_FAILED), "{:?}", result(&damaged));
    assert!(
        table_digests(&broken.client().await).await.is_empty(),
        "a failed restore left tables"
    );

    // When the order is bad (a restore without its confirmation; an
    // operation the task does not run)
    let (unconfirmed, _) = task_output(&image, &["restore", r#"{"backupId": "latest"}"#], &env).await;
    let (unknown, _) = task_output(&image, &["prune"], &env).await;
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
    let (failed, _) = task_output(&image, &["create"], &unreachable).await;
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
    let (refused, _) = task_output(&image, &["create"], &plain).await;
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
    let child = task(&image, &["restore", &order.to_string()], &paused)
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

    // When the database is under change capture and the task restores it to
    // an instant between two captured changes (amd64 only: the arm64 image
    // runs the same handler, and qemu makes each run slower)
    if arch == Arch::Amd64 {
        restore_to_an_instant(&image, &stack, &env).await;
    }

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
                ("AWS_ENDPOINT_URL", stack.endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", stack.admin_keys.0.as_str()),
                ("AWS_SECRET_ACCESS_KEY", stack.admin_keys.1.as_str()),
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
    let emulated = if arch == Arch::Arm64 {
        " (under qemu-aarch64-static)"
    } else {
        ""
    };
    println!(
        "task image {}: layout {} bytes, unpacked rootfs {} bytes, built in {} ms; chroot task create {} ms, restore {} ms{emulated}; {comparison} (debug builds, {} bookings, database {database_bytes} bytes)",
        arch.name(),
        image.layout_bytes,
        image.rootfs_bytes,
        image.build_time.as_millis(),
        task_create.as_millis(),
        task_restore.as_millis(),
        bookings
    );
}

/// The task restores to an instant (issue #29's `restore --at` through the
/// Fargate engine): a database on the shared logical cluster under change
/// capture, a base backup taken by the task, changes captured into the
/// bucket (the test plays the capture function, with the administrator's
/// keys), then the task's `{"at": …}` restore into a new database under
/// the task role, which must read `changes/`. Its digest must be the
/// source's at that instant, not before and not after.
async fn restore_to_an_instant(image: &Image, stack: &Stack, env: &BTreeMap<String, String>) {
    use backup_core::changes::{self, CaptureRequest};
    use backup_core::operations::{self, CaptureRun, Services};
    use integration_tests::pitr::{PitrDatabase, logical_admin};

    // Given a database on the logical cluster, capture enabled
    let pitr = PitrDatabase::create("fgt_pitr").await;
    let client = pitr.client().await;
    client
        .batch_execute(
            "CREATE TABLE \"Booking\" (id serial PRIMARY KEY, note text NOT NULL, price numeric(8,2));
             INSERT INTO \"Booking\" (note, price) SELECT 'seed ' || g, g FROM generate_series(1, 200) g;",
        )
        .await
        .unwrap();
    changes::enable_pitr(pitr.url(), &pitr.names, &[]).await.unwrap();
    // and the task's environment pointed at it (a container override; the
    // template's tasks use the default slot and publication names)
    let port = logical_admin()
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut pitr_env = env.clone();
    for (name, value) in [
        ("DATABASE_PORT", port.as_str()),
        ("DATABASE_NAME", pitr.database.name.as_str()),
        // (the logical cluster has no TLS)
        ("DATABASE_SSLMODE", "disable"),
        ("BACKUP_PITR_SLOT", pitr.names.slot.as_str()),
        ("BACKUP_PITR_PUBLICATION", pitr.names.publication.as_str()),
    ] {
        pitr_env.insert(name.to_owned(), value.to_owned());
    }
    // and a base backup taken by the task, which records the slot's position
    let (created, _) = task_output(image, &["create"], &pitr_env).await;
    let base = succeeded(&created, "task create of the captured database");
    assert_eq!(base["changeStream"]["slot"], pitr.names.slot.as_str(), "{base}");
    // and changes after it, the instant, and changes after the instant, all captured
    client
        .batch_execute(
            "INSERT INTO \"Booking\" (note, price) VALUES ('after base', 1.50);
             UPDATE \"Booking\" SET price = price * 2 WHERE id % 7 = 0;
             DELETE FROM \"Booking\" WHERE id BETWEEN 10 AND 19;",
        )
        .await
        .unwrap();
    let instant: String = client
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let expected = table_digests(&client).await;
    // (segment documents keep commit times to the millisecond)
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("UPDATE \"Booking\" SET note = 'past the instant'; INSERT INTO \"Booking\" (note) VALUES ('late')")
        .await
        .unwrap();
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&stack.endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            &stack.admin_keys.0,
            &stack.admin_keys.1,
            None,
            None,
            "test",
        ))
        .load()
        .await;
    let lookup: BTreeMap<&str, &str> = [
        ("BACKUP_STORAGE_TYPE", "s3"),
        ("S3_BACKUP_BUCKET", stack.bucket.as_str()),
        ("S3_FORCE_PATH_STYLE", "true"),
        ("BACKUP_ENCRYPTION_KEY", KEY),
    ]
    .into_iter()
    .collect();
    let settings =
        backup_core::config::Settings::from_lookup(|name| lookup.get(name).map(|v| (*v).to_owned())).unwrap();
    let store = settings.open_store_with(Some(&aws)).await.unwrap();
    let mut services = Services::new(
        store,
        &settings,
        "capture",
        backup_core::metrics::MetricsSink::Disabled,
    );
    services.pitr_slot = Some(pitr.names.slot.clone());
    services.pitr_publication = Some(pitr.names.publication.clone());
    let run = CaptureRun {
        capture: CaptureRequest::new(pitr.url().to_owned(), pitr.names.clone()),
        enable_on_first_run: false,
        accepted_loss: Default::default(),
    };
    let captured = operations::capture_and_report(&services, &run)
        .await
        .unwrap_or_else(|error| panic!("capture: {}", error.chain()));
    assert!(captured.report.changes() > 10, "{captured:?}");

    // When the task restores the database to the instant into a new one
    let target = TestDatabase::create_on(&logical_admin(), "fgt_pitr_at").await;
    let order = json!({"at": instant, "target": target.name, "confirm": target.name,
                       "reason": "restore to 10:42", "requestedBy": "ops"});
    let (restored, took) = task_output(image, &["restore", &order.to_string()], &pitr_env).await;
    let outcome = succeeded(&restored, "task restore to an instant");

    // Then the new database holds the source's data as it was at the instant
    assert_eq!(table_digests(&target.client().await).await, expected, "{outcome}");
    // and the outcome names the base and the instant reached
    assert_eq!(outcome["backupId"], base["id"], "{outcome}");
    let replayed = &outcome["replayed"];
    assert!(replayed["changes"].as_u64().unwrap() > 10, "{outcome}");
    assert!(replayed["reachedLsn"].is_string(), "{outcome}");
    assert!(replayed["reachedTime"].is_string(), "{outcome}");
    println!(
        "task restore --at: {} ms, {} changes captured",
        took.as_millis(),
        captured.report.changes()
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

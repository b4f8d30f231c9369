//! Each function does its real work with exactly the IAM policy and the
//! environment that `template.yaml` gives it — after the SAM transform, as
//! AWS would create them — against moto with IAM enforced
//! (`infra/iam_emulation.py`), and is denied what it must not do.
//!
//! One IAM user per function carries the function's resolved inline
//! policies; the handlers run with that user's keys, so a missing
//! permission fails here as it would fail on the first real night.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup_lambda::{Environment, handlers};
use integration_tests::*;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn event(payload: Value) -> LambdaEvent<Value> {
    let mut context = Context::default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    context.deadline = now + 600_000;
    LambdaEvent::new(payload, context)
}

/// moto with IAM enforcement on a port of its own (its own process: turning
/// enforcement on must not disturb the other tests' moto).
struct IamEmulator {
    child: Child,
    endpoint: String,
}

impl IamEmulator {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra environment for the emulator (`PGBACKUP_LAMBDA_BRIDGE`).
    fn start_with(environment: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(python())
            .arg(repo().join("infra/iam_emulation.py"))
            .args(["serve", &port.to_string()])
            .envs(environment.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the venv from infra/services.sh install");
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, endpoint };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the IAM emulator did not start on {endpoint}");
    }
}

impl Drop for IamEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct User {
    access_key: String,
    secret_key: String,
    environment: HashMap<String, String>,
}

/// A stack "deployed" into the emulator from a template.
struct Stack {
    endpoint: String,
    bucket: String,
    keyring_arn: String,
    ledger_head_arn: String,
    database_arn: String,
    users: HashMap<String, User>,
}

fn provision(emulator: &IamEmulator, template: &Path, parameters: Value) -> Stack {
    let output = Command::new(python())
        .arg(repo().join("infra/iam_emulation.py"))
        .arg("provision")
        .arg(&emulator.endpoint)
        .arg(template)
        .arg(parameters.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "provision: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let provisioned: Value = serde_json::from_slice(&output.stdout).unwrap();
    let users = provisioned["users"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, user)| {
            let environment = user["environment"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (
                name.clone(),
                User {
                    access_key: user["accessKeyId"].as_str().unwrap().to_owned(),
                    secret_key: user["secretAccessKey"].as_str().unwrap().to_owned(),
                    environment,
                },
            )
        })
        .collect();
    Stack {
        endpoint: emulator.endpoint.clone(),
        bucket: provisioned["bucket"].as_str().unwrap().to_owned(),
        keyring_arn: provisioned["keyringArn"].as_str().unwrap().to_owned(),
        ledger_head_arn: provisioned["ledgerHeadArn"].as_str().unwrap().to_owned(),
        database_arn: provisioned["databaseArn"].as_str().unwrap().to_owned(),
        users,
    }
}

/// The template's parameters for a stack backing up `database` on the
/// local server with an RDS-managed-style secret (username/password only).
fn parameters(database: &TestDatabase, extra: Value) -> Value {
    let mut parameters = json!({
        "keyring": K1,
        "databaseSecret": json!({"username": "postgres", "password": ""}).to_string(),
        "DatabaseHost": "127.0.0.1",
        "DatabasePort": "5432",
        "DatabaseName": database.name,
        // The local server's certificate is issued to localhost, not 127.0.0.1.
        "DatabaseSslMode": "require",
        "KeepVerified": "1",
    });
    for (k, v) in extra.as_object().unwrap() {
        parameters[k] = v.clone();
    }
    parameters
}

impl Stack {
    /// A function's environment exactly as the template sets it, plus the
    /// credentials Lambda would give its role, and test speed-ups.
    async fn function(&self, name: &str, extra: &[(&str, &str)]) -> Environment {
        let user = &self.users[name];
        let mut vars = user.environment.clone();
        for (k, v) in [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", user.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", user.secret_key.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_LAMBDA_FUNCTION_NAME", name),
            ("VERIFY_METADATA_WAIT_SECONDS", "2"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            vars.insert(k.to_owned(), v.to_owned());
        }
        Environment::load_with(|name| vars.get(name).cloned())
            .await
            .unwrap_or_else(|e| panic!("{name} cold start: {}", e.chain()))
    }

    async fn config(&self, name: &str) -> aws_config::SdkConfig {
        let user = &self.users[name];
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &user.access_key,
                &user.secret_key,
                None,
                None,
                "test",
            ))
            .load()
            .await
    }

    async fn s3(&self, name: &str) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.config(name).await)
                .force_path_style(true)
                .build(),
        )
    }

    async fn secrets(&self, name: &str) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.config(name).await)
    }

    /// The keyring secret's current value, read as the administrator.
    async fn current_keyring(&self) -> String {
        self.secrets("admin")
            .await
            .get_secret_value()
            .secret_id(&self.keyring_arn)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .unwrap()
            .secret_string
            .unwrap()
    }

    async fn read(&self, key: &str) -> Vec<u8> {
        s3_object(&self.s3("admin").await, &self.bucket, key).await
    }

    /// Plants a copy of backup `id` taken `days` ago, as an older run would
    /// have left it, for prune to expire.
    async fn plant_old_copy(&self, id: &str, days: i64) -> String {
        let taken = chrono::Utc::now() - chrono::Duration::days(days);
        let old_id = format!("backup-{}-01dca5e0", taken.timestamp_millis());
        let mut metadata: Value =
            serde_json::from_slice(&self.read(&format!("metadata/{id}.json")).await).unwrap();
        metadata["id"] = json!(old_id);
        metadata["timestamp"] = json!(taken.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let admin = self.s3("admin").await;
        admin
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/backups/{id}.backup", self.bucket))
            .key(format!("backups/{old_id}.backup"))
            .send()
            .await
            .unwrap();
        admin
            .put_object()
            .bucket(&self.bucket)
            .key(format!("metadata/{old_id}.json"))
            .body(metadata.to_string().into_bytes().into())
            .send()
            .await
            .unwrap();
        old_id
    }

    async fn versions(&self, key: &str) -> (usize, usize) {
        let listed = self
            .s3("admin")
            .await
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await
            .unwrap();
        (listed.versions().len(), listed.delete_markers().len())
    }
}

fn s3_event(bucket: &str, id: &str) -> Value {
    let mut payload: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("events/s3-object-created.json")).unwrap())
            .unwrap();
    payload["detail"]["bucket"]["name"] = json!(bucket);
    payload["detail"]["object"]["key"] = json!(format!("backups/{id}.backup"));
    payload
}

/// Enough bookings for an uncompressed backup of several 5 MiB parts.
const BOOKINGS: u32 = 60_000;
const SPEED_UPS: &[(&str, &str)] = &[("BACKUP_COMPRESSION_LEVEL", "0"), ("BACKUP_UPLOAD_PART_MIB", "5")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_works_with_its_template_policy_and_is_denied_the_rest() {
    let emulator = IamEmulator::start();
    let database = TestDatabase::create("iam_src").await;
    load_carwash(&database.client().await, BOOKINGS).await;
    // (the region guard on: create must be allowed to read the bucket's region)
    let stack = provision(
        &emulator,
        &repo().join("template.yaml"),
        parameters(&database, json!({"AllowedRegions": "eu-west-1,us-east-1"})),
    );

    // create, from the hourly schedule: a multipart upload of several parts
    let create = stack.function("create", SPEED_UPS).await;
    let metadata = handlers::create(&create, event(json!({"reason": "iam test"})))
        .await
        .unwrap_or_else(|e| panic!("create: {}", e.chain()));
    let id = metadata["id"].as_str().unwrap().to_owned();
    let size = metadata["sizeBytes"].as_u64().unwrap();
    assert!(size > 3 * 5 * 1024 * 1024, "several parts: {size} bytes");
    let uploads = stack
        .s3("admin")
        .await
        .list_multipart_uploads()
        .bucket(&stack.bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "no multipart upload left open");

    // admin, the optional endpoint: a Function URL request as AWS documents it
    let admin = stack.function("endpoint", SPEED_UPS).await;
    let request: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("events/admin-post-backups.json")).unwrap(),
    )
    .unwrap();
    let answer = handlers::admin(&admin, event(request.clone()))
        .await
        .unwrap_or_else(|e| panic!("admin: {}", e.chain()));
    assert_eq!(answer["statusCode"], 201, "{answer}");
    let mut list = request;
    list["requestContext"]["http"]["method"] = json!("GET");
    list["body"] = Value::Null;
    let answer = handlers::admin(&admin, event(list)).await.unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");

    // verify, from the S3 Object Created event on EventBridge
    let verify = stack.function("verify", &[]).await;
    let report = handlers::verify(&verify, event(s3_event(&stack.bucket, &id)))
        .await
        .unwrap_or_else(|e| panic!("verify: {}", e.chain()));
    assert_eq!(report["status"], "passed", "{report}");
    assert_eq!(report["depth"], "full");

    // restore, from the console, into another database
    let copy = TestDatabase::create("iam_copy").await;
    let restore = stack.function("restore", &[]).await;
    let outcome = handlers::restore(
        &restore,
        event(json!({"backupId": id, "target": copy.name, "confirm": copy.name, "reason": "iam test"})),
    )
    .await
    .unwrap_or_else(|e| panic!("restore: {}", e.chain()));
    assert_eq!(outcome["targetDatabase"], copy.name.as_str());
    assert_eq!(
        table_digests(&copy.client().await).await,
        table_digests(&database.client().await).await
    );

    // prune, from its schedule: an expired backup gets a delete marker, its
    // data stays as a noncurrent version for the lifecycle to expire
    let old = stack.plant_old_copy(&id, 45).await;
    let prune = stack.function("prune", &[]).await;
    let pruned = handlers::prune(&prune, event(json!({})))
        .await
        .unwrap_or_else(|e| panic!("prune: {}", e.chain()));
    assert_eq!(pruned["deleted"][0]["backupId"], old.as_str(), "{pruned}");
    assert_eq!(pruned["failures"], json!([]), "{pruned}");
    assert_eq!(stack.versions(&format!("backups/{old}.backup")).await, (1, 1));
    // and the storage measure counts that noncurrent version (what the
    // bucket bills), through the prune role's own policy
    let kept = stack.read(&format!("backups/{id}.backup")).await.len() as u64;
    let storage = &pruned["storage"];
    assert!(storage["noncurrentBytes"].as_u64().unwrap() >= kept, "{pruned}");
    assert!(storage["usedBytes"].as_u64().unwrap() >= 2 * kept, "{pruned}");

    // rotate, as Secrets Manager drives it: the four steps on the keyring
    // secret (its start staged as in handlers.rs's begin_rotation: moto's
    // RotateSecret cannot run a Lambda)
    let admin_secrets = stack.secrets("admin").await;
    admin_secrets
        .rotate_secret()
        .secret_id(&stack.keyring_arn)
        .rotate_immediately(false)
        .rotation_rules(
            aws_sdk_secretsmanager::types::RotationRulesType::builder()
                .automatically_after_days(90)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let token = "0123456789abcdef0123456789abcdef".to_owned();
    admin_secrets
        .put_secret_value()
        .secret_id(&stack.keyring_arn)
        .client_request_token(&token)
        .secret_string(K1)
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let rotate = stack.function("rotate", &[]).await;
    for step in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        handlers::rotate_keyring(
            &rotate,
            event(json!({"SecretId": stack.keyring_arn, "ClientRequestToken": token, "Step": step})),
        )
        .await
        .unwrap_or_else(|e| panic!("rotate {step}: {}", e.chain()));
    }
    // then a new backup uses the new key, and the verify function reads both
    assert!(
        create.keyring_changed().await,
        "a warm create notices the rotation"
    );
    let rotated = handlers::create(&stack.function("create", SPEED_UPS).await, event(json!({})))
        .await
        .unwrap_or_else(|e| panic!("create after rotation: {}", e.chain()));
    assert_ne!(rotated["keyId"], metadata["keyId"]);
    let verify = stack.function("verify", &[]).await;
    for backup in [&id, rotated["id"].as_str().unwrap()] {
        let report = handlers::verify(&verify, event(json!({"backupId": backup, "depth": "full"})))
            .await
            .unwrap_or_else(|e| panic!("verify after rotation: {}", e.chain()));
        assert_eq!(report["status"], "passed", "{report}");
    }

    // erase, from the console (restore function): the ledger record is
    // written, and the next restore (which reads the ledger) applies it
    let source = database.client().await;
    let user: String = source
        .query_one("SELECT \"userId\" FROM \"Booking\" LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    for (table, column) in [("Booking", "userId"), ("User", "id")] {
        handlers::restore(
            &restore,
            event(json!({"erase": {"table": table, "key": {column: user}, "reason": "GDPR request"}})),
        )
        .await
        .unwrap_or_else(|e| panic!("erase from {table}: {}", e.chain()));
    }
    let erased_copy = TestDatabase::create("iam_erased").await;
    let outcome = handlers::restore(
        &restore,
        event(json!({"backupId": id, "target": erased_copy.name, "confirm": erased_copy.name})),
    )
    .await
    .unwrap_or_else(|e| panic!("restore with the ledger: {}", e.chain()));
    assert_eq!(outcome["erased"].as_array().map(Vec::len), Some(2), "{outcome}");
    let left: i64 = erased_copy
        .client()
        .await
        .query_one("SELECT count(*) FROM \"User\" WHERE \"id\" = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // and the ledger's head, out of the bucket's reach, counts both records
    let head: Value = serde_json::from_str(
        &stack
            .secrets("admin")
            .await
            .get_secret_value()
            .secret_id(&stack.ledger_head_arn)
            .send()
            .await
            .unwrap()
            .secret_string
            .unwrap(),
    )
    .unwrap();
    assert_eq!(head["count"], 2, "{head}");

    // and each is denied what it must not do
    let backup = format!("backups/{id}.backup");
    let metadata_key = format!("metadata/{id}.json");
    let verification_key = format!("verification/{id}.json");
    let pruned_backup = format!("backups/{old}.backup");
    for (function, attempt, key) in [
        ("create", S3Attempt::Delete, backup.as_str()),
        ("create", S3Attempt::Get, verification_key.as_str()),
        ("prune", S3Attempt::Get, backup.as_str()),
        ("prune", S3Attempt::DeleteVersion, pruned_backup.as_str()),
        ("prune", S3Attempt::Put, "backups/forged.backup"),
        ("prune", S3Attempt::Put, "erasures/forged.json"),
        ("create", S3Attempt::Put, "erasures/forged.json"),
        ("verify", S3Attempt::Delete, backup.as_str()),
        ("verify", S3Attempt::Put, backup.as_str()),
        ("verify", S3Attempt::Put, metadata_key.as_str()),
        ("restore", S3Attempt::Delete, backup.as_str()),
    ] {
        let status = attempt
            .status(&stack.s3(function).await, &stack.bucket, key)
            .await;
        assert_eq!(status, Some(403), "{function} may {attempt:?} {key}");
    }
    for (function, arn) in [
        ("prune", &stack.keyring_arn),
        ("prune", &stack.database_arn),
        ("verify", &stack.database_arn),
        ("rotate", &stack.database_arn),
    ] {
        let read = stack
            .secrets(function)
            .await
            .get_secret_value()
            .secret_id(arn)
            .send()
            .await;
        assert!(read.is_err(), "{function} must not read {arn}");
    }
    // Only restore may write the ledger's head: a role that can also write
    // the bucket could otherwise roll the ledger back with it.
    for function in ["create", "prune", "verify", "rotate", "endpoint"] {
        let written = stack
            .secrets(function)
            .await
            .put_secret_value()
            .secret_id(&stack.ledger_head_arn)
            .secret_string("{}")
            .send()
            .await;
        assert!(written.is_err(), "{function} must not write the ledger head");
    }
}

/// An S3 request a function must not be able to make.
#[derive(Debug, Clone, Copy)]
enum S3Attempt {
    Get,
    Put,
    Delete,
    /// Delete a version for good (prune only adds delete markers).
    DeleteVersion,
}

impl S3Attempt {
    /// The HTTP status S3 answered with (`None`: it allowed it).
    async fn status(self, s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<u16> {
        fn refused<T, E>(result: Result<T, aws_sdk_s3::error::SdkError<E>>) -> Option<u16> {
            result
                .err()
                .map(|e| e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0))
        }
        match self {
            Self::Get => refused(s3.get_object().bucket(bucket).key(key).send().await),
            Self::Put => refused(
                s3.put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(b"forged".to_vec().into())
                    .send()
                    .await,
            ),
            Self::Delete => refused(s3.delete_object().bucket(bucket).key(key).send().await),
            Self::DeleteVersion => refused(
                s3.delete_object()
                    .bucket(bucket)
                    .key(key)
                    .version_id("any")
                    .send()
                    .await,
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_object_lock_every_write_sets_retention_and_prune_still_works() {
    let emulator = IamEmulator::start();
    let database = TestDatabase::create("iam_lock").await;
    load_carwash(&database.client().await, BOOKINGS).await;
    let stack = provision(
        &emulator,
        &repo().join("template.yaml"),
        parameters(
            &database,
            json!({"ObjectLockMode": "GOVERNANCE", "ObjectLockDays": "1", "AllowedRegions": "us-east-1"}),
        ),
    );
    let create = stack.function("create", SPEED_UPS).await;
    let metadata = handlers::create(&create, event(json!({})))
        .await
        .unwrap_or_else(|e| panic!("create under Object Lock: {}", e.chain()));
    let id = metadata["id"].as_str().unwrap().to_owned();
    assert!(metadata["sizeBytes"].as_u64().unwrap() > 10 * 1024 * 1024);
    let head = stack
        .s3("admin")
        .await
        .head_object()
        .bucket(&stack.bucket)
        .key(format!("backups/{id}.backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode().map(|m| m.as_str()), Some("GOVERNANCE"));

    let verify = stack.function("verify", &[]).await;
    let report = handlers::verify(&verify, event(s3_event(&stack.bucket, &id)))
        .await
        .unwrap_or_else(|e| panic!("verify under Object Lock: {}", e.chain()));
    assert_eq!(report["status"], "passed");

    // A locked, expired backup: prune marks it deleted; the locked version stays
    let old = stack.plant_old_copy(&id, 45).await;
    let admin = stack.s3("admin").await;
    admin
        .put_object_retention()
        .bucket(&stack.bucket)
        .key(format!("backups/{old}.backup"))
        .retention(
            aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Governance)
                .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                    chrono::Utc::now().timestamp() + 86_400,
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let prune = stack.function("prune", &[]).await;
    let pruned = handlers::prune(&prune, event(json!({})))
        .await
        .unwrap_or_else(|e| panic!("prune under Object Lock: {}", e.chain()));
    assert_eq!(pruned["deleted"][0]["backupId"], old.as_str(), "{pruned}");
    assert_eq!(pruned["failures"], json!([]));
    assert_eq!(stack.versions(&format!("backups/{old}.backup")).await, (1, 1));

    // restore's safety backup writes locked objects too
    let restore = stack.function("restore", SPEED_UPS).await;
    let outcome = handlers::restore(
        &restore,
        event(json!({"backupId": id, "confirm": database.name, "tables": ["Service"]})),
    )
    .await
    .unwrap_or_else(|e| panic!("in-place restore under Object Lock: {}", e.chain()));
    assert!(outcome["safetyBackupId"].is_string(), "{outcome}");
}

/// The emulation is a judge that can say no: a template without the grants
/// the code needs fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_missing_a_needed_permission_fails_the_run() {
    let emulator = IamEmulator::start();
    let database = TestDatabase::create("iam_broken").await;
    load_carwash(&database.client().await, BOOKINGS / 3).await;
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    for (what, from, to, extra, refused) in [
        (
            "create without s3:GetObject (HeadObject after a multipart upload)",
            "            - Sid: CheckUploadedBackups\n              Effect: Allow\n              Action: s3:GetObject\n",
            "            - Sid: CheckUploadedBackups\n              Effect: Allow\n              Action: s3:GetObjectTagging\n",
            json!({}),
            "storage head of",
        ),
        (
            "create without s3:PutObjectRetention under Object Lock",
            "              - Sid: LockNewObjects\n                Effect: Allow\n                Action: s3:PutObjectRetention\n",
            "              - Sid: LockNewObjects\n                Effect: Allow\n                Action: s3:GetObjectRetention\n",
            json!({"ObjectLockMode": "GOVERNANCE", "ObjectLockDays": "1"}),
            // S3's refusal itself, not the broken upload pipe it leaves behind
            "(AccessDenied)",
        ),
        (
            "create without s3:GetBucketLocation while AllowedRegions is set",
            "            - Sid: ReadBucketRegion\n              Effect: Allow\n              Action: s3:GetBucketLocation\n",
            "            - Sid: ReadBucketRegion\n              Effect: Allow\n              Action: s3:GetBucketTagging\n",
            json!({"AllowedRegions": "us-east-1"}),
            "storage GetBucketLocation of",
        ),
    ] {
        assert!(original.contains(from), "{what}: the template changed");
        let broken = repo().join(format!(".iam-broken-{}.yaml", std::process::id()));
        std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
        let stack = provision(&emulator, &broken, parameters(&database, extra));
        std::fs::remove_file(&broken).unwrap();
        let create = stack.function("create", SPEED_UPS).await;
        let result = handlers::create(&create, event(json!({}))).await;
        let error = result
            .err()
            .unwrap_or_else(|| panic!("{what}: the backup succeeded"));
        assert!(error.chain().contains(refused), "{what}: {}", error.chain());
        let listed = stack
            .s3("admin")
            .await
            .list_objects_v2()
            .bucket(&stack.bucket)
            .prefix("metadata/")
            .send()
            .await
            .unwrap();
        assert_eq!(listed.key_count(), Some(0), "{what}: nothing published");
    }
}

/// The Lambda service's side of Secrets Manager invoking the rotation
/// function: an HTTP endpoint on loopback that the emulator POSTs each
/// invocation to (`PGBACKUP_LAMBDA_BRIDGE`), answered by
/// `handlers::rotate_keyring` with the rotate function's environment (its
/// IAM user's keys). A handler error answers 500 with its message, which
/// fails the `RotateSecret` call as AWS fails it.
struct LambdaBridge {
    url: String,
    function: std::sync::Arc<tokio::sync::OnceCell<Environment>>,
    steps: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl LambdaBridge {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/invoke", listener.local_addr().unwrap());
        let function = std::sync::Arc::new(tokio::sync::OnceCell::<Environment>::new());
        let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (env, seen) = (function.clone(), steps.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (env, seen) = (env.clone(), seen.clone());
                tokio::spawn(async move { Self::answer(stream, &env, &seen).await });
            }
        });
        Self {
            url,
            function,
            steps,
            server,
        }
    }

    async fn answer(
        mut stream: tokio::net::TcpStream,
        env: &tokio::sync::OnceCell<Environment>,
        seen: &std::sync::Mutex<Vec<String>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = Vec::new();
        let mut buffer = [0u8; 8192];
        let body = loop {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the bridge request ended early");
            request.extend_from_slice(&buffer[..read]);
            let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse().unwrap());
            if request.len() >= end + 4 + length {
                break request[end + 4..end + 4 + length].to_vec();
            }
        };
        let payload: Value = serde_json::from_slice(&body).unwrap();
        seen.lock()
            .unwrap()
            .push(payload["Step"].as_str().unwrap_or("?").to_owned());
        let function = env
            .get()
            .expect("the rotate function is deployed before any rotation");
        let (status, text) = match handlers::rotate_keyring(function, event(payload)).await {
            Ok(result) => ("200 OK", result.to_string()),
            Err(error) => ("500 Internal Server Error", error.chain()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        stream.write_all(response.as_bytes()).await.unwrap();
        stream.shutdown().await.ok();
    }

    fn steps(&self) -> Vec<String> {
        self.steps.lock().unwrap().clone()
    }
}

impl Drop for LambdaBridge {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_rotation_on_without_rotating_passes_the_configuration_test() {
    // Given the stack deployed from the template, the rotate function behind
    // the Lambda bridge with exactly its template policy
    let bridge = LambdaBridge::start().await;
    let emulator = IamEmulator::start_with(&[("PGBACKUP_LAMBDA_BRIDGE", &bridge.url)]);
    let database = TestDatabase::create("iam_rotation_config").await;
    let stack = provision(
        &emulator,
        &repo().join("template.yaml"),
        parameters(&database, json!({})),
    );
    assert!(bridge.function.set(stack.function("rotate", &[]).await).is_ok());
    let rotate_arn = "arn:aws:lambda:us-east-1:123456789012:function:pgbackup-RotateKeyFunction";
    let admin = stack.secrets("admin").await;
    let deployed = stack.current_keyring().await;

    // When the template's KeyringRotationSchedule switches rotation on
    // (RotateImmediatelyOnUpdate: false): RotateSecret without rotating,
    // which tests the configuration on a pending copy of the current value
    let switched = admin
        .rotate_secret()
        .secret_id(&stack.keyring_arn)
        .rotation_lambda_arn(rotate_arn)
        .rotate_immediately(false)
        .rotation_rules(
            aws_sdk_secretsmanager::types::RotationRulesType::builder()
                .automatically_after_days(90)
                .build(),
        )
        .send()
        .await;

    // Then the test step passes, so the deploy goes on, and nothing changed
    if let Err(error) = &switched {
        panic!(
            "RotateSecret(RotateImmediately=false) failed: {}",
            aws_sdk_secretsmanager::error::DisplayErrorContext(error)
        );
    }
    assert_eq!(bridge.steps(), ["testSecret"]);
    assert_eq!(
        stack.current_keyring().await,
        deployed,
        "the configuration test rotated nothing"
    );
    let described = admin
        .describe_secret()
        .secret_id(&stack.keyring_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(described.rotation_enabled(), Some(true));
    assert!(
        described
            .version_ids_to_stages()
            .into_iter()
            .flatten()
            .all(|(_, stages)| !stages.iter().any(|s| s == "AWSPENDING")),
        "no pending version is left for the first real rotation to trip on"
    );

    // And when the schedule comes due, RotateSecret runs the four steps and
    // the keyring gets a new current key while keeping the deployed one
    admin
        .rotate_secret()
        .secret_id(&stack.keyring_arn)
        .rotation_lambda_arn(rotate_arn)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the scheduled rotation failed: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
            )
        });
    assert_eq!(
        bridge.steps(),
        [
            "testSecret",
            "createSecret",
            "setSecret",
            "testSecret",
            "finishSecret"
        ]
    );
    let deployed = backup_core::Keyring::from_secret_string(&deployed, "deployed").unwrap();
    let rotated =
        backup_core::Keyring::from_secret_string(&stack.current_keyring().await, "rotated").unwrap();
    assert!(
        rotated.is_rotation_of(&deployed),
        "a new current key, every old one kept"
    );
}

/// The Fargate engine's task runs the create and restore code with the
/// task definition's environment and the task role: resolved from the
/// template (EnableFargate=true, BackupEngine=fargate), enforced by moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fargate_task_role_creates_and_restores_with_the_task_definitions_environment() {
    // Given the stack with the Fargate engine, and the task's environment
    // as its task definition sets it (two connections for 2 vCPUs)
    let emulator = IamEmulator::start();
    let database = TestDatabase::create("iam_task").await;
    load_carwash(&database.client().await, BOOKINGS / 3).await;
    let stack = provision(
        &emulator,
        &repo().join("template.yaml"),
        parameters(
            &database,
            json!({"EnableFargate": "true", "BackupEngine": "fargate",
                   "TaskImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/pgbackup:1"}),
        ),
    );
    assert_eq!(stack.users["task"].environment["BACKUP_EXPORT_CONNECTIONS"], "2");
    let task = stack.function("task", SPEED_UPS).await;

    // When the task backs the database up and restores it into a copy
    let metadata = handlers::create(&task, event(json!({"reason": "fargate task"})))
        .await
        .unwrap_or_else(|e| panic!("create with the task role: {}", e.chain()));
    let id = metadata["id"].as_str().unwrap().to_owned();
    let copy = TestDatabase::create("iam_task_copy").await;
    handlers::restore(
        &task,
        event(json!({"backupId": id, "target": copy.name, "confirm": copy.name, "reason": "fargate task"})),
    )
    .await
    .unwrap_or_else(|e| panic!("restore with the task role: {}", e.chain()));

    // Then the copy holds the same rows
    assert_eq!(
        table_digests(&copy.client().await).await,
        table_digests(&database.client().await).await
    );
    // and the task role can neither delete a backup nor write a
    // verification record (the verify function's)
    for (attempt, key) in [
        (S3Attempt::Delete, format!("backups/{id}.backup")),
        (S3Attempt::DeleteVersion, format!("backups/{id}.backup")),
        (S3Attempt::Put, format!("verification/{id}.json")),
    ] {
        let status = attempt.status(&stack.s3("task").await, &stack.bucket, &key).await;
        assert_eq!(status, Some(403), "the task role may {attempt:?} {key}");
    }
}

// ------------------------------------------------------------ change capture
// The capture function (EnablePitr=true) runs against a server with logical
// decoding (infra/pg-logical.sh: the shared server has wal_level = replica)
// with exactly its template role, and the verify function checks the
// segment S3's event announces with its own.

/// The logical cluster's admin URL (`PGBACKUP_LOGICAL_URL`, or the
/// cluster of `infra/pg-logical.sh`, started here if it is not up).
fn logical_admin() -> String {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if let Ok(url) = std::env::var("PGBACKUP_LOGICAL_URL") {
        return url;
    }
    STARTED.call_once(|| {
        let status = Command::new("bash")
            .arg(repo().join("infra/pg-logical.sh"))
            .arg("start")
            .status()
            .expect("running infra/pg-logical.sh");
        assert!(status.success(), "infra/pg-logical.sh start failed");
    });
    "postgres://postgres@127.0.0.1:54400/postgres".to_owned()
}

/// A database on the logical cluster with a slot name of its own (slots
/// are cluster-wide); the slot is dropped when the test ends, or the
/// database could not be.
struct CapturedDatabase {
    database: TestDatabase,
    slot: String,
    port: u16,
}

impl CapturedDatabase {
    async fn create(label: &str) -> Self {
        let admin = logical_admin();
        let port = admin
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432);
        let database = TestDatabase::create_on(&admin, label).await;
        let slot = format!("s_{}", database.name.to_lowercase());
        Self { database, slot, port }
    }

    /// Where the slot has been advanced to (its confirmed position).
    async fn confirmed(&self) -> String {
        self.database
            .client()
            .await
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for CapturedDatabase {
    fn drop(&mut self) {
        let (url, slot) = (self.database.url.clone(), self.slot.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(client) = backup_core::postgres::connect(&url).await {
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

fn scheduled() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("events/scheduled.json")).unwrap()).unwrap()
}

async fn keys_under(stack: &Stack, prefix: &str) -> Vec<String> {
    stack
        .s3("admin")
        .await
        .list_objects_v2()
        .bucket(&stack.bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_function_stores_a_segment_with_its_template_role_and_verify_checks_it() {
    // Given a database on a server with logical decoding
    let captured = CapturedDatabase::create("iam_capture").await;
    let client = captured.database.client().await;
    client
        .batch_execute("CREATE TABLE wash (id bigint PRIMARY KEY, plate text NOT NULL)")
        .await
        .unwrap();
    // and the stack deployed with EnablePitr=true, before its first backup
    // (no repository.json yet), IAM enforced
    let emulator = IamEmulator::start();
    let port = captured.port.to_string();
    let deploy = |template: &Path| {
        provision(
            &emulator,
            template,
            parameters(
                &captured.database,
                json!({"EnablePitr": "true", "DatabasePort": port, "DatabaseSslMode": "disable"}),
            ),
        )
    };
    let stack = deploy(&repo().join("template.yaml"));
    let slot = [("BACKUP_PITR_SLOT", captured.slot.as_str())];
    let capture = stack.function("capture", &slot).await;

    // When the capture function's schedule fires: the first run sets
    // capture up (slot and publication), the next takes what was committed
    let first = handlers::capture(&capture, event(scheduled()))
        .await
        .unwrap_or_else(|e| panic!("first capture: {}", e.chain()));
    assert!(
        first.get("enabled").is_some(),
        "the first run enables capture: {first}"
    );
    client
        .batch_execute("INSERT INTO wash VALUES (1, 'ABC-123'), (2, 'XYZ-789'); UPDATE wash SET plate = 'ABC-124' WHERE id = 1")
        .await
        .unwrap();
    let second = handlers::capture(&capture, event(scheduled()))
        .await
        .unwrap_or_else(|e| panic!("capture: {}", e.chain()));

    // Then one segment holds the three changes, stored with its document
    // (and the repository's identity) through the capture role alone
    assert_eq!(second["outcome"], "captured", "{second}");
    assert_eq!(second["segment"]["changes"], 3, "{second}");
    let id = second["segment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        keys_under(&stack, "changes/").await,
        [format!("changes/{id}.json"), format!("changes/{id}.segment")]
    );
    assert_eq!(keys_under(&stack, "repository.json").await, ["repository.json"]);

    // and the verify function, woken by S3's event for the new segment,
    // reads it through and passes it with its own role
    let verify = stack.function("verify", &[]).await;
    let mut announced = s3_event(&stack.bucket, "unused");
    announced["detail"]["object"]["key"] = json!(format!("changes/{id}.segment"));
    let report = handlers::verify(&verify, event(announced))
        .await
        .unwrap_or_else(|e| panic!("verify the segment: {}", e.chain()));
    assert_eq!(report["status"], "passed", "{report}");
    assert_eq!(report["segmentId"], id.as_str(), "{report}");
    assert_eq!(report["segmentsRead"], 1, "{report}");

    // When a column is added to the captured table (DDL, which logical
    // decoding does not carry) and a row follows
    client
        .batch_execute("ALTER TABLE wash ADD COLUMN bay int; INSERT INTO wash VALUES (5, 'NEW-001', 4)")
        .await
        .unwrap();
    let third = handlers::capture(&capture, event(scheduled()))
        .await
        .unwrap_or_else(|e| panic!("capture after the DDL: {}", e.chain()));
    // Then the run finds the chain cut and takes the base backup that
    // starts a new one itself, with the capture role alone: the backup,
    // its document and its audit record are stored
    assert!(third["chainCut"].is_object(), "{third}");
    let base = third["baseBackup"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no base backup: {third}"));
    assert_eq!(
        keys_under(&stack, "backups/").await,
        [format!("backups/{base}.backup")]
    );
    assert!(
        keys_under(&stack, "metadata/")
            .await
            .contains(&format!("metadata/{base}.json")),
        "{third}"
    );
    assert!(!keys_under(&stack, "audit/").await.is_empty(), "{third}");

    // Given a capture role that may not write under changes/
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    let from = "            - Sid: WriteChangeSegments\n              Effect: Allow\n              Action: [s3:PutObject, s3:AbortMultipartUpload]\n              Resource:\n                - !Sub \"${BackupBucket.Arn}/changes/*\"\n";
    let to = "            - Sid: WriteChangeSegments\n              Effect: Allow\n              Action: [s3:PutObject, s3:AbortMultipartUpload]\n              Resource:\n";
    assert!(
        original.contains(from),
        "the capture role's write statement changed"
    );
    let broken = repo().join(format!(".iam-capture-broken-{}.yaml", std::process::id()));
    std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
    let denied = deploy(&broken);
    std::fs::remove_file(&broken).unwrap();
    client
        .batch_execute("INSERT INTO wash VALUES (3, 'LMN-456')")
        .await
        .unwrap();
    let before = captured.confirmed().await;

    // When it runs
    let failed = handlers::capture(&denied.function("capture", &slot).await, event(scheduled())).await;

    // Then the run fails saying S3 refused the segment's write
    let error = failed
        .err()
        .unwrap_or_else(|| panic!("a capture without changes/ PutObject succeeded"))
        .chain();
    assert!(
        error.contains("changes/") && error.contains("AccessDenied"),
        "{error}"
    );
    // and nothing is published, and the slot keeps the changes for the next run
    assert_eq!(keys_under(&denied, "changes/").await, Vec::<String>::new());
    assert_eq!(captured.confirmed().await, before);
}

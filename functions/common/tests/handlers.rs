//! The handlers called directly with `LambdaEvent::new(payload, Context)`,
//! on AWS's documented event shapes, against the real PostgreSQL and moto's
//! S3 and Secrets Manager (started by infra/test.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup_lambda::{Environment, HandlerError, handlers};
use integration_tests::*;
use lambda_runtime::{Context, Diagnostic, LambdaEvent};
use serde_json::{Value, json};

const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const K3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn fixture(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    )
    .unwrap()
}

/// An event from `events/` (the AWS-documented shapes `sam local invoke`
/// and infra/lambda-e2e.sh use too).
fn aws_event(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    )
    .unwrap()
}

fn context(seconds_left: u64) -> Context {
    let mut context = Context::default();
    context.request_id = "test-request".into();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    context.deadline = now + seconds_left * 1000;
    context
}

fn event(payload: Value) -> LambdaEvent<Value> {
    LambdaEvent::new(payload, context(300))
}

async fn secrets_client() -> aws_sdk_secretsmanager::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into()))
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "t",
        ))
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&config)
}

async fn secret(name: &str, value: &str) -> String {
    let created = secrets_client()
        .await
        .create_secret()
        .name(format!("{name}-{}-{}", std::process::id(), rand_suffix()))
        .secret_string(value)
        .send()
        .await
        .expect("Secrets Manager stand-in on 127.0.0.1:5000 (infra/services.sh start)");
    created.arn.unwrap()
}

fn rand_suffix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_007
}

/// A deployed function's environment: S3 bucket, secrets by ARN.
struct Deployment {
    vars: HashMap<String, String>,
    bucket: String,
    s3: aws_sdk_s3::Client,
}

impl Deployment {
    async fn new(database: &TestDatabase, keyring: &str) -> Self {
        let (s3, bucket) = s3_test_bucket("fn", false).await;
        let config: tokio_postgres::Config = database.url.parse().unwrap();
        let rds_secret = json!({
            "username": config.get_user().unwrap(), "password": "", "engine": "postgres",
            "host": "127.0.0.1", "port": 5432, "dbname": config.get_dbname().unwrap(),
        });
        let vars = HashMap::from([
            ("BACKUP_STORAGE_TYPE".to_owned(), "s3".to_owned()),
            ("S3_BACKUP_BUCKET".to_owned(), bucket.clone()),
            ("S3_PREFIX".to_owned(), "car wash".to_owned()),
            (
                "BACKUP_KEYRING_SECRET_ARN".to_owned(),
                secret("keyring", keyring).await,
            ),
            (
                "DATABASE_SECRET_ARN".to_owned(),
                secret("database", &rds_secret.to_string()).await,
            ),
            ("AWS_LAMBDA_FUNCTION_NAME".to_owned(), "pgbackup-test".to_owned()),
            ("VERIFY_METADATA_WAIT_SECONDS".to_owned(), "5".to_owned()),
        ]);
        Self { vars, bucket, s3 }
    }

    async fn environment(&self, extra: &[(&str, &str)]) -> Environment {
        let mut vars = self.vars.clone();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        Environment::load_with(|name| vars.get(name).cloned())
            .await
            .unwrap()
    }

    async fn keys(&self) -> Vec<String> {
        let listed = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .send()
            .await
            .unwrap();
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    async fn json(&self, key: &str) -> serde_json::Value {
        serde_json::from_slice(&s3_object(&self.s3, &self.bucket, key).await).unwrap()
    }
}

fn keyring(current: &str) -> String {
    json!({"current": current, "keys": {"k1": K1, "k2": K2}}).to_string()
}

#[tokio::test]
async fn a_scheduled_create_honours_enable_auto_backup_and_uses_the_secrets() {
    let database = TestDatabase::create("fn_sched").await;
    load_carwash(&database.client().await, 300).await;
    let deployment = Deployment::new(&database, &keyring("k2")).await;

    // Given ENABLE_AUTO_BACKUP=false, a scheduled event is skipped and nothing is written
    let off = deployment.environment(&[("ENABLE_AUTO_BACKUP", "false")]).await;
    let skipped = handlers::create(&off, event(aws_event("scheduled.json")))
        .await
        .unwrap();
    assert_eq!(
        skipped,
        json!({"skipped": true, "reason": "ENABLE_AUTO_BACKUP=false"})
    );
    assert!(deployment.keys().await.is_empty());

    // Given it is on, the scheduled event takes a backup with the keyring's current key
    let on = deployment.environment(&[]).await;
    let metadata = handlers::create(&on, event(aws_event("scheduled.json")))
        .await
        .unwrap();
    assert_eq!(metadata["trigger"], "schedule");
    assert_eq!(metadata["keyId"], "k2");
    assert_eq!(
        metadata["reason"],
        "scheduled by arn:aws:events:eu-north-1:123456789012:rule/pgbackup-nightly-full"
    );
    assert!(metadata["recordCount"].as_u64().unwrap() > 300);
    let id = metadata["id"].as_str().unwrap();
    let keys = deployment.keys().await;
    assert!(
        keys.contains(&format!("car wash/backups/{id}.backup")),
        "{keys:?}"
    );
    assert!(keys.contains(&format!("car wash/metadata/{id}.json")));

    // and the prune schedule keeps it
    let pruned = handlers::prune(&on, event(aws_event("scheduled.json")))
        .await
        .unwrap();
    assert_eq!(pruned["deleted"], json!([]));
    assert_eq!(pruned["kept"][0]["backupId"], id);

    // When the hourly schedule fires with the input the template gives it
    let hourly = handlers::create(&on, event(json!({"schedule": "hourly"})))
        .await
        .unwrap();
    // Then its backup is recorded as hourly, which prune keeps for the
    // hourly retention only (the nightly one for the retention period)
    assert_eq!(hourly["trigger"], "hourly");
    handlers::create(&on, event(json!({"reason": "newest"})))
        .await
        .unwrap();
    let unprotected = deployment.environment(&[("BACKUP_KEEP_VERIFIED", "0")]).await;
    let pruned = handlers::prune(&unprotected, event(json!({"dryRun": true})))
        .await
        .unwrap();
    let reason_of = |backup: &Value| {
        pruned["kept"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["backupId"] == backup["id"])
            .map(|k| k["reason"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(reason_of(&hourly), "an hourly backup within 48 hours", "{pruned}");
    assert_eq!(
        reason_of(&metadata),
        "within the 30-day retention period",
        "{pruned}"
    );
    // and a schedule name it does not know is refused
    let error = handlers::create(&on, event(json!({"schedule": "daily"})))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::InvalidEvent(_)), "{error}");
}

#[tokio::test]
async fn manual_payloads_are_honoured_and_malformed_ones_refused_clearly() {
    let database = TestDatabase::create("fn_manual").await;
    load_carwash(&database.client().await, 100).await;
    let deployment = Deployment::new(&database, K1).await;
    let env = deployment.environment(&[]).await;

    let metadata = handlers::create(
        &env,
        event(json!({"reason": "before release 2.4", "trigger": "pre-deployment", "requestedBy": "ci", "tables": ["Booking", "User"]})),
    )
    .await
    .unwrap();
    assert_eq!(metadata["trigger"], "pre-deployment");
    assert_eq!(metadata["requestedBy"], "ci");
    assert_eq!(metadata["tables"], json!(["User", "Booking"]));
    assert!(
        metadata["keyId"].as_str().unwrap().starts_with("k-"),
        "a bare key gets a fingerprint id"
    );

    for (payload, says) in [
        (json!({"reasn": "typo"}), "unknown field `reasn`"),
        (json!({"trigger": "weekly"}), "not one of manual"),
        (json!("just a string"), "expected an EventBridge scheduled event"),
    ] {
        let error = handlers::create(&env, event(payload)).await.unwrap_err();
        assert!(error.to_string().contains(says), "{error}");
        let diagnostic = Diagnostic::from(error);
        assert_eq!(diagnostic.error_type, "Fatal.InvalidEvent");
    }
    let error = handlers::restore(&env, event(aws_event("scheduled.json")))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("only on a manual invocation"));
    let error = handlers::verify(&env, event(json!({"backupId": "latest", "depth": "thorough"})))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::InvalidEvent(_)));
}

#[tokio::test]
async fn an_s3_object_created_event_verifies_the_backup_even_when_metadata_comes_later() {
    let database = TestDatabase::create("fn_s3evt").await;
    load_carwash(&database.client().await, 200).await;
    let deployment = Deployment::new(&database, &keyring("k1")).await;
    let env = deployment.environment(&[]).await;
    let metadata = handlers::create(&env, event(json!({}))).await.unwrap();
    let id = metadata["id"].as_str().unwrap().to_owned();

    // The metadata is not there yet when the event arrives
    let metadata_key = format!("car wash/metadata/{id}.json");
    let stored = deployment
        .s3
        .get_object()
        .bucket(&deployment.bucket)
        .key(&metadata_key)
        .send()
        .await
        .unwrap();
    let document = stored.body.collect().await.unwrap().into_bytes();
    deployment
        .s3
        .delete_object()
        .bucket(&deployment.bucket)
        .key(&metadata_key)
        .send()
        .await
        .unwrap();
    let mut payload = fixture("s3-object-created.json");
    payload["Records"][0]["s3"]["bucket"]["name"] = json!(deployment.bucket);
    payload["Records"][0]["s3"]["object"]["key"] = json!(format!("car+wash/backups/{id}.backup"));
    let (s3, bucket) = (deployment.s3.clone(), deployment.bucket.clone());
    let late_metadata = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s3.put_object()
            .bucket(bucket)
            .key(metadata_key)
            .body(document.into())
            .send()
            .await
            .unwrap();
    });

    let report = handlers::verify(&env, event(payload)).await.unwrap();
    late_metadata.await.unwrap();
    assert_eq!(report["backupId"], id.as_str());
    assert_eq!(report["status"], "passed");
    assert_eq!(report["depth"], "full");
    assert!(
        deployment
            .keys()
            .await
            .contains(&format!("car wash/verification/{id}.json"))
    );

    // The same backup announced the way the template wires it: S3's
    // "Object Created" event on EventBridge, verified as VERIFY_EVENT_DEPTH says
    let quick = deployment.environment(&[("VERIFY_EVENT_DEPTH", "quick")]).await;
    let mut on_eventbridge = aws_event("s3-object-created.json");
    on_eventbridge["detail"]["bucket"]["name"] = json!(deployment.bucket);
    on_eventbridge["detail"]["object"]["key"] = json!(format!("car wash/backups/{id}.backup"));
    let report = handlers::verify(&quick, event(on_eventbridge.clone()))
        .await
        .unwrap();
    assert_eq!(report["backupId"], id.as_str());
    assert_eq!(report["status"], "passed");
    assert_eq!(
        report["depth"], "quick",
        "VERIFY_EVENT_DEPTH is read from the environment"
    );

    // A new object whose metadata never comes: verify gives up after
    // VERIFY_METADATA_WAIT_SECONDS (5 here), not the 30 s default
    let started = std::time::Instant::now();
    let mut never = on_eventbridge.clone();
    never["detail"]["object"]["key"] = json!("car wash/backups/backup-1700000000000-0badf00d.backup");
    let error = handlers::verify(&env, event(never)).await.unwrap_err();
    assert!(matches!(error, HandlerError::MetadataMissing(_)), "{error}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "{waited:?}"
    );

    // An event for something that is not a backup object is refused
    let mut not_backup = on_eventbridge;
    not_backup["detail"]["object"]["key"] = json!("car wash/metadata/whatever.json");
    assert!(matches!(
        handlers::verify(&env, event(not_backup)).await,
        Err(HandlerError::InvalidEvent(_))
    ));
    let mut other = fixture("s3-object-created.json");
    other["Records"][0]["s3"]["object"]["key"] = json!("car+wash/metadata/whatever.json");
    assert!(matches!(
        handlers::verify(&env, event(other)).await,
        Err(HandlerError::InvalidEvent(_))
    ));
}

#[tokio::test]
async fn old_keys_still_decrypt_after_a_rotation() {
    let database = TestDatabase::create("fn_rotate").await;
    load_carwash(&database.client().await, 100).await;
    let deployment = Deployment::new(&database, &keyring("k1")).await;
    let before = deployment.environment(&[]).await;
    let old = handlers::create(&before, event(json!({}))).await.unwrap();
    assert_eq!(old["keyId"], "k1");

    // The keyring secret is rotated: k2 becomes current, k1 stays for reading
    let arn = deployment.vars["BACKUP_KEYRING_SECRET_ARN"].clone();
    secrets_client()
        .await
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(keyring("k2"))
        .send()
        .await
        .unwrap();
    let after = deployment.environment(&[]).await;
    let new = handlers::create(&after, event(json!({}))).await.unwrap();
    assert_eq!(new["keyId"], "k2");
    let report = handlers::verify(&after, event(json!({"backupId": old["id"], "depth": "full"})))
        .await
        .unwrap();
    assert_eq!(report["status"], "passed");
}

#[tokio::test]
async fn a_restore_needs_the_target_databases_name_as_confirmation() {
    let database = TestDatabase::create("fn_restore").await;
    let client = database.client().await;
    load_carwash(&client, 300).await;
    let original = table_digests(&client).await;
    let deployment = Deployment::new(&database, K2).await;
    let env = deployment.environment(&[]).await;
    let metadata = handlers::create(&env, event(json!({}))).await.unwrap();
    let id = metadata["id"].as_str().unwrap();
    client
        .batch_execute("DELETE FROM \"EmailNotification\"")
        .await
        .unwrap();
    let changed = table_digests(&client).await;

    // A wrong confirmation is refused and changes nothing
    let error = handlers::restore(&env, event(json!({"backupId": id, "confirm": "production"})))
        .await
        .unwrap_err();
    assert_eq!(Diagnostic::from(error).error_type, "Fatal.Refused");
    assert_eq!(table_digests(&client).await, changed);

    // Into another database on the same server, confirmed by its name
    let copy = TestDatabase::create("fn_restore_copy").await;
    let outcome = handlers::restore(
        &env,
        event(json!({"backupId": id, "target": copy.name, "confirm": copy.name, "reason": "drill", "requestedBy": "ops"})),
    )
    .await
    .unwrap();
    assert_eq!(outcome["targetDatabase"], copy.name.as_str());
    assert_eq!(outcome["inPlace"], false);
    assert_eq!(table_digests(&copy.client().await).await, original);

    // Into a database the server does not have: refused naming it, unless
    // createDb asks for it to be made
    let fresh = TestDatabase::create("fn_restore_new").await;
    backup_core::postgres::connect(&admin_url())
        .await
        .unwrap()
        .batch_execute(&format!("DROP DATABASE \"{}\"", fresh.name))
        .await
        .unwrap();
    let missing = json!({"backupId": id, "target": fresh.name, "confirm": fresh.name});
    let error = handlers::restore(&env, event(missing.clone())).await.unwrap_err();
    assert!(error.to_string().contains(&fresh.name), "{error}");
    let mut create_db = missing;
    create_db["createDb"] = json!(true);
    let outcome = handlers::restore(&env, event(create_db)).await.unwrap();
    assert_eq!(outcome["databaseCreated"], true);
    assert_eq!(table_digests(&fresh.client().await).await, original);

    // In place, confirmed: a safety backup first, then the restore
    let outcome = handlers::restore(
        &env,
        event(json!({"backupId": id, "confirm": database.name, "tables": ["EmailNotification"]})),
    )
    .await
    .unwrap();
    assert!(outcome["safetyBackupId"].is_string());
    assert_eq!(table_digests(&client).await, original);
}

#[tokio::test]
async fn a_deadline_too_close_stops_the_backup_before_anything_is_published() {
    let database = TestDatabase::create("fn_deadline").await;
    load_carwash(&database.client().await, 100).await;
    let deployment = Deployment::new(&database, K1).await;
    let env = deployment
        .environment(&[("BACKUP_DEADLINE_MARGIN_MS", "15000")])
        .await;
    let error = handlers::create(&env, LambdaEvent::new(json!({}), context(5)))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::Timeout { .. }), "{error}");
    // A run that hit its deadline would hit it again: Lambda must not retry it
    assert_eq!(Diagnostic::from(error).error_type, "Fatal.Timeout");
    // Then nothing is published but one audit record, which says why
    let keys = deployment.keys().await;
    let (audit, published): (Vec<&String>, Vec<&String>) = keys.iter().partition(|k| k.contains("/audit/"));
    assert!(published.is_empty(), "nothing but the audit record: {keys:?}");
    assert_eq!(audit.len(), 1, "one audit record of the timeout: {keys:?}");
    let record = deployment.json(audit[0]).await;
    assert_eq!(record["operation"], "create", "{record}");
    assert_eq!(record["outcome"], "failure", "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("stopped before the Lambda deadline"),
        "{record}"
    );
    assert!(record["details"]["requestId"].is_string(), "{record}");
}

#[tokio::test]
async fn a_deadline_hit_mid_export_aborts_the_upload_and_reports_a_failure() {
    // Given a backup held mid-export (another session locks Booking), so
    // the Lambda deadline arrives while its upload is open
    let database = TestDatabase::create("fn_deadline_mid").await;
    load_carwash(&database.client().await, 300).await;
    let holder = database.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE \"Booking\" IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let deployment = Deployment::new(&database, K1).await;
    let receiver = WebhookReceiver::start(vec![]).await;
    let metrics = tempfile::NamedTempFile::new().unwrap();
    let env = deployment
        .environment(&[
            ("BACKUP_DEADLINE_MARGIN_MS", "1000"),
            ("BACKUP_WEBHOOK_URL", &receiver.url),
            ("BACKUP_METRICS", &format!("file:{}", metrics.path().display())),
        ])
        .await;

    // When the function has 4 s left
    let started = std::time::Instant::now();
    let error = handlers::create(&env, LambdaEvent::new(json!({}), context(4)))
        .await
        .unwrap_err();
    holder.batch_execute("ROLLBACK").await.unwrap();

    // Then it stops at the margin, mid-export, as a timeout
    assert!(matches!(error, HandlerError::Timeout { .. }), "{error}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it stopped mid-export, not before starting"
    );
    // and reports a failure: metric, webhook and audit record
    // (the create reports its own failure, then the Timeout is counted)
    let lines = std::fs::read_to_string(metrics.path()).unwrap();
    let metrics: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(metrics.iter().all(|m| m["Operation"] == "create"), "{lines}");
    assert_eq!(
        metrics.iter().filter(|m| m["BackupFailure"] == 1.0).count(),
        1,
        "{lines}"
    );
    assert_eq!(
        metrics.iter().filter(|m| m["Timeout"] == 1.0).count(),
        1,
        "{lines}"
    );
    let failures: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.body["type"] == "backup_failure")
        .collect();
    assert_eq!(failures.len(), 1, "{:?}", receiver.events());
    assert!(
        failures[0].body["error"].as_str().unwrap().contains("deadline"),
        "{:?}",
        failures[0].body
    );
    // and publishes nothing: no object, no metadata, no open multipart upload
    let keys = deployment.keys().await;
    assert!(keys.iter().all(|k| k.contains("/audit/")), "{keys:?}");
    let open_uploads = || async {
        deployment
            .s3
            .list_multipart_uploads()
            .bucket(&deployment.bucket)
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    };
    // (the abort runs as the dropped upload's last act; give it a moment)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_uploads().await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open_uploads().await, 0, "the multipart upload was left open");
}

#[tokio::test]
async fn a_deadline_hit_mid_restore_into_a_new_database_removes_what_it_created() {
    // Given a backup, and a restore into an empty database that the test
    // hook holds at its first index build (its tables already committed:
    // the restore into new tables commits step by step)
    let database = TestDatabase::create("fn_deadline_restore").await;
    load_carwash(&database.client().await, 100).await;
    let deployment = Deployment::new(&database, K1).await;
    let env = deployment
        .environment(&[("BACKUP_DEADLINE_MARGIN_MS", "6000")])
        .await;
    let id = handlers::create(&env, event(json!({}))).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let copy = TestDatabase::create("fn_deadline_restore_copy").await;
    let admin = backup_core::postgres::connect(&admin_url()).await.unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET backupctl.test_pause = 'index'",
            copy.name
        ))
        .await
        .unwrap();

    // When the Lambda deadline comes while it is held there
    let started = std::time::Instant::now();
    let error = handlers::restore(
        &env,
        LambdaEvent::new(
            json!({"backupId": id, "target": copy.name, "confirm": copy.name}),
            context(10),
        ),
    )
    .await
    .unwrap_err();

    // Then it stops as a timeout that changed nothing, before the deadline,
    // and the new database holds nothing of the backup
    assert!(
        matches!(&error, HandlerError::Timeout { outcome, .. } if outcome.contains("nothing")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" RESET backupctl.test_pause",
            copy.name
        ))
        .await
        .unwrap();
    let left: i64 = copy
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the restore left relations behind");

    // And the same warm environment serves the next invocation: the stop
    // was for that invocation only
    let outcome = handlers::restore(
        &env,
        event(json!({"backupId": id, "target": copy.name, "confirm": copy.name})),
    )
    .await
    .unwrap();
    assert_eq!(outcome["targetDatabase"], copy.name.as_str());
    assert_eq!(
        table_digests(&copy.client().await).await,
        table_digests(&database.client().await).await
    );
}

#[tokio::test]
async fn a_rotated_database_password_is_fetched_again_instead_of_failing_until_the_next_cold_start() {
    // Given a server that checks passwords, and an RDS-managed master secret
    // (username and password only) with the host, port and database given
    // as settings, as the template passes them
    let cluster = PasswordCluster::start();
    let admin = backup_core::postgres::connect(&cluster.admin_url("postgres"))
        .await
        .unwrap();
    for statement in [
        "CREATE ROLE app LOGIN PASSWORD 'before-rotation'",
        "CREATE DATABASE carwash OWNER app",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    let app = backup_core::postgres::connect(&cluster.url("app", "before-rotation", "carwash"))
        .await
        .unwrap();
    load_carwash(&app, 50).await;
    let arn = secret(
        "rds-managed",
        &json!({"username": "app", "password": "before-rotation"}).to_string(),
    )
    .await;
    let keyring_arn = secret("keyring", K1).await;
    let (_s3, bucket) = s3_test_bucket("fn-rotate-db", false).await;
    let port = cluster.port.to_string();
    let vars = HashMap::from([
        ("BACKUP_STORAGE_TYPE", "s3"),
        ("S3_BACKUP_BUCKET", bucket.as_str()),
        ("BACKUP_KEYRING_SECRET_ARN", keyring_arn.as_str()),
        ("DATABASE_SECRET_ARN", arn.as_str()),
        ("DATABASE_HOST", "127.0.0.1"),
        ("DATABASE_PORT", port.as_str()),
        ("DATABASE_NAME", "carwash"),
    ]);
    let env = Environment::load_with(|name| vars.get(name).map(|v| v.to_string()))
        .await
        .unwrap();

    // When the password is rotated after the cold start
    admin
        .batch_execute("ALTER ROLE app PASSWORD 'after-rotation'")
        .await
        .unwrap();
    secrets_client()
        .await
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(json!({"username": "app", "password": "after-rotation"}).to_string())
        .send()
        .await
        .unwrap();

    // Then the next backup fetches the secret again and succeeds
    let metadata = handlers::create(&env, event(json!({"reason": "after rotation"})))
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    assert!(metadata["recordCount"].as_u64().unwrap() > 50);
    assert_eq!(metadata["source"]["database"], "carwash");
}

#[tokio::test]
async fn the_daily_verification_restores_into_a_scratch_database_when_the_template_gives_its_secret() {
    // Given a deployment whose verify function has a scratch server's secret
    // (ScratchDatabaseSecretArn: username/password only, the host from
    // BACKUP_SCRATCH_DATABASE_HOST as the template passes ScratchDatabaseHost)
    let database = TestDatabase::create("fn_deep").await;
    load_carwash(&database.client().await, 100).await;
    let deployment = Deployment::new(&database, K1).await;
    let scratch = secret(
        "scratch",
        &json!({"username": "postgres", "password": ""}).to_string(),
    )
    .await;
    let env = deployment
        .environment(&[
            ("BACKUP_SCRATCH_DATABASE_SECRET_ARN", scratch.as_str()),
            ("BACKUP_SCRATCH_DATABASE_HOST", "127.0.0.1"),
        ])
        .await;
    let metadata = handlers::create(&env, event(json!({}))).await.unwrap();

    // When the daily schedule fires
    let report = handlers::verify(&env, event(aws_event("scheduled.json")))
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));

    // Then the newest backup was restored into a scratch database and the
    // restore time measured (what the RestoreTimeNearTimeout alarm watches)
    assert_eq!(report["backupId"], metadata["id"]);
    assert_eq!(report["depth"], "deep", "{report}");
    assert_eq!(report["status"], "passed", "{report}");
    assert!(report["restoreDurationMs"].as_u64().is_some(), "{report}");
}

#[tokio::test]
async fn a_scratch_secret_without_a_host_never_falls_back_to_the_production_host() {
    // Given a verify function whose scratch secret is RDS-managed
    // (username/password only) and whose production host is set
    let database = TestDatabase::create("fn_scratch_host").await;
    let deployment = Deployment::new(&database, K1).await;
    let scratch = secret(
        "scratch-hostless",
        &json!({"username": "postgres", "password": ""}).to_string(),
    )
    .await;
    let mut vars = deployment.vars.clone();
    vars.insert("BACKUP_SCRATCH_DATABASE_SECRET_ARN".into(), scratch);
    vars.insert("DATABASE_HOST".into(), "production.example".into());
    // When the function starts without a scratch host
    let started = Environment::load_with(|name| vars.get(name).cloned()).await;
    // Then it refuses to start, naming the setting to give, rather than
    // create scratch databases on the production server
    let error = started
        .err()
        .expect("the scratch server fell back to DATABASE_HOST");
    assert!(
        error.chain().contains("BACKUP_SCRATCH_DATABASE_HOST"),
        "{}",
        error.chain()
    );
    // and with the scratch host (and port) given, scratch databases go there
    vars.insert("BACKUP_SCRATCH_DATABASE_HOST".into(), "scratch.example".into());
    vars.insert("BACKUP_SCRATCH_DATABASE_PORT".into(), "6543".into());
    let env = Environment::load_with(|name| vars.get(name).cloned())
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    let url = env.settings.scratch_database_url.clone().unwrap();
    assert!(url.contains("@scratch.example:6543/postgres"), "{url}");
}

#[tokio::test]
async fn console_payloads_choose_backups_by_instant_or_at_random_and_deep_runs_are_drills() {
    // Given two backups of two states, and the application's checks stored in the bucket
    let database = TestDatabase::create("fn_drill").await;
    let client = database.client().await;
    load_carwash(&client, 100).await;
    let deployment = Deployment::new(&database, &keyring("k1")).await;
    let checks = format!(
        "{}\n-- name: services_still_offered\n-- expect: value >= 7\nSELECT count(*) FROM \"Service\" WHERE \"active\";\n",
        std::fs::read_to_string(format!(
            "{}/../../tests/fixtures/carwash-queries.sql",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    );
    deployment
        .s3
        .put_object()
        .bucket(&deployment.bucket)
        .key("car wash/drills/checks.sql")
        .body(checks.into_bytes().into())
        .send()
        .await
        .unwrap();
    let env = deployment
        .environment(&[
            ("BACKUP_SCRATCH_DATABASE_URL", &admin_url()),
            ("BACKUP_DRILL_CHECKS", "store:drills/checks.sql"),
        ])
        .await;
    let first = handlers::create(&env, event(json!({}))).await.unwrap();
    let first_state = table_digests(&client).await;
    client
        .batch_execute("UPDATE \"Service\" SET \"active\" = false")
        .await
        .unwrap();
    let second = handlers::create(&env, event(json!({}))).await.unwrap();

    // When the second backup is verified deeply from the console
    let report = handlers::verify(&env, event(json!({"backupId": second["id"], "depth": "deep"})))
        .await
        .unwrap();
    // Then the drill ran every check on the restored copy and caught the broken state
    assert_eq!(report["status"], "failed", "{report}");
    let drill = &report["drill"];
    assert_eq!(drill["checksFailed"], 1, "{drill}");
    assert_eq!(drill["checksPassed"], 11, "{drill}");
    assert!(drill["rtoMs"].as_u64().unwrap() > 0);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("services_still_offered: expected value >= 7, got 0")
    );
    let record = deployment
        .json(&format!(
            "car wash/verification/{}.json",
            second["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        record["drill"], *drill,
        "the drill is stored with the verification record"
    );

    // A full verification is no drill, and the random payload draws one of the two
    let random = handlers::verify(&env, event(json!({"backupId": "random", "depth": "full"})))
        .await
        .unwrap();
    assert!([&first["id"], &second["id"]].contains(&&random["backupId"]));
    assert!(
        random["selection"]
            .as_str()
            .unwrap()
            .contains("at random from 2 backups")
    );
    assert!(random.get("drill").is_none());

    // When a restore asks for the newest backup before the second one was taken
    let outcome = handlers::restore(
        &env,
        event(
            json!({"backupId": format!("before:{}", second["timestamp"].as_str().unwrap()),
                      "confirm": database.name, "safetyBackup": false}),
        ),
    )
    .await
    .unwrap();
    // Then the first backup is restored, and the outcome says why it was chosen
    assert_eq!(outcome["backupId"], first["id"]);
    // (verified or not, depending on what the random draw above verified)
    assert!(
        outcome["selection"]
            .as_str()
            .unwrap()
            .contains(first["id"].as_str().unwrap())
    );
    assert_eq!(table_digests(&client).await, first_state);
}

/// Secrets Manager's side of starting a rotation: rotation enabled and a
/// version staged AWSPENDING. (moto's RotateSecret without a Lambda it can
/// run makes its new version current at once, so the rotation is switched
/// on with the current value kept, and the pending version is staged by
/// hand, holding a copy of the current value as a placeholder.)
async fn begin_rotation(arn: &str) -> String {
    let secrets = secrets_client().await;
    // (once: moto's RotateSecret copies the value it was created with)
    let described = secrets.describe_secret().secret_id(arn).send().await.unwrap();
    if described.rotation_enabled() != Some(true) {
        secrets
            .rotate_secret()
            .secret_id(arn)
            .rotate_immediately(false)
            .rotation_rules(
                aws_sdk_secretsmanager::types::RotationRulesType::builder()
                    .automatically_after_days(90)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let current = secrets
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .unwrap()
        .secret_string
        .unwrap();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let token = format!("{nanos:016x}{:016x}", u64::from(std::process::id()));
    secrets
        .put_secret_value()
        .secret_id(arn)
        .client_request_token(&token)
        .secret_string(current)
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    token
}

/// Secrets Manager's side of a rotation: a pending version, then the four steps.
async fn rotate_keyring_secret(env: &Environment, arn: &str) -> Vec<Value> {
    let token = begin_rotation(arn).await;
    let mut done = Vec::new();
    for step in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        let payload = json!({"SecretId": arn, "ClientRequestToken": token, "Step": step});
        done.push(
            handlers::rotate_keyring(env, event(payload.clone()))
                .await
                .unwrap_or_else(|e| panic!("{step}: {}", e.chain())),
        );
        // Secrets Manager retries steps: each must be safe to run twice
        handlers::rotate_keyring(env, event(payload)).await.unwrap();
    }
    done
}

#[tokio::test]
async fn two_quarterly_rotations_keep_every_backup_restorable() {
    // Given the keyring secret as deployed: a bare key, and a backup under it
    let database = TestDatabase::create("fn_rotation").await;
    let client = database.client().await;
    load_carwash(&client, 100).await;
    let deployment = Deployment::new(&database, K1).await;
    let arn = deployment.vars["BACKUP_KEYRING_SECRET_ARN"].clone();
    let mut states = Vec::new();
    let mut backups = Vec::new();
    let first_env = deployment.environment(&[]).await;
    backups.push(handlers::create(&first_env, event(json!({}))).await.unwrap());
    states.push(table_digests(&client).await);

    for round in 1..=2 {
        // When Secrets Manager rotates it (the function's four steps)
        let env = deployment.environment(&[]).await;
        let steps = rotate_keyring_secret(&env, &arn).await;
        assert!(
            steps[2]["done"]
                .as_str()
                .unwrap()
                .contains("keeps every current key"),
            "{steps:?}"
        );
        // Then a warm function notices, and the next backup uses the new key
        assert!(env.keyring_changed().await);
        let rotated = deployment.environment(&[]).await;
        assert!(!rotated.keyring_changed().await);
        client
            .batch_execute(&format!("UPDATE \"Service\" SET \"price\" = {round}"))
            .await
            .unwrap();
        backups.push(handlers::create(&rotated, event(json!({}))).await.unwrap());
        states.push(table_digests(&client).await);
    }
    let key_ids: Vec<&str> = backups.iter().map(|b| b["keyId"].as_str().unwrap()).collect();
    let today = chrono::Utc::now().format("%Y%m%d").to_string();
    assert!(key_ids[0].starts_with("k-"), "{key_ids:?}");
    assert_eq!(key_ids[1], format!("k-{today}"));
    assert_eq!(key_ids[2], format!("k-{today}-2"));

    // And every backup, under each of the three keys, restores to its own state
    let env = deployment.environment(&[]).await;
    for (backup, state) in backups.iter().zip(&states) {
        let copy = TestDatabase::create("fn_rotation_copy").await;
        handlers::restore(
            &env,
            event(json!({"backupId": backup["id"], "target": copy.name, "confirm": copy.name})),
        )
        .await
        .unwrap();
        assert_eq!(&table_digests(&copy.client().await).await, state);
    }

    // A pending keyring that lost a key fails the test step, and nothing is finished
    let before = secrets_client()
        .await
        .get_secret_value()
        .secret_id(&arn)
        .send()
        .await
        .unwrap()
        .secret_string
        .unwrap();
    let token = begin_rotation(&arn).await;
    secrets_client()
        .await
        .put_secret_value()
        .secret_id(&arn)
        .client_request_token(&token)
        .secret_string(json!({"current": "lonely", "keys": {"lonely": K2}}).to_string())
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let error = handlers::rotate_keyring(
        &env,
        event(json!({"SecretId": arn, "ClientRequestToken": token, "Step": "testSecret"})),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("lost or changed a current key"),
        "{error}"
    );
    let after = secrets_client()
        .await
        .get_secret_value()
        .secret_id(&arn)
        .send()
        .await
        .unwrap()
        .secret_string
        .unwrap();
    assert_eq!(before, after, "the current keyring is untouched");
    // The audit trail holds each rotation and the refusal
    let audit: Vec<Value> = {
        let mut records = Vec::new();
        for key in deployment.keys().await.iter().filter(|k| k.contains("/audit/")) {
            records.push(deployment.json(key).await);
        }
        records
    };
    let rotations: Vec<&Value> = audit.iter().filter(|r| r["operation"] == "rotate-key").collect();
    assert_eq!(
        rotations
            .iter()
            .filter(|r| r["details"]["step"] == "finishSecret" && r["outcome"] == "success")
            .count(),
        4,
        "two rotations, each finish run twice"
    );
    assert!(rotations.iter().any(|r| r["outcome"] == "failure"));
    // and a malformed event is refused as such
    let error = handlers::rotate_keyring(&env, event(json!({"Step": "createSecret"})))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::InvalidEvent(_)));
}

async fn current_keyring_value(arn: &str) -> String {
    secrets_client()
        .await
        .get_secret_value()
        .secret_id(arn)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap()
        .secret_string
        .unwrap()
}

#[tokio::test]
async fn the_configuration_test_of_a_pending_copy_of_the_current_keyring_passes() {
    // Given the keyring secret as deployed, and rotation being switched on
    // without rotating: Secrets Manager stages a copy of the current value
    // as the pending version and runs only the test step on it
    let database = TestDatabase::create("fn_rotation_config").await;
    let deployment = Deployment::new(&database, &keyring("k2")).await;
    let arn = deployment.vars["BACKUP_KEYRING_SECRET_ARN"].clone();
    let env = deployment.environment(&[]).await;
    let token = begin_rotation(&arn).await;
    let before = current_keyring_value(&arn).await;
    // When testSecret runs on that copy
    let tested = handlers::rotate_keyring(
        &env,
        event(json!({"SecretId": arn, "ClientRequestToken": token, "Step": "testSecret"})),
    )
    .await
    .unwrap_or_else(|e| panic!("the configuration test failed: {}", e.chain()));
    // Then it passes, says it was a configuration test, and changes nothing
    assert!(
        tested["done"].as_str().unwrap().contains("configuration test"),
        "{tested}"
    );
    assert_eq!(current_keyring_value(&arn).await, before);
    // while a pending keyring that only re-labels an old key as current still fails it
    secrets_client()
        .await
        .put_secret_value()
        .secret_id(&arn)
        .client_request_token(&token)
        .secret_string(keyring("k1"))
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let error = handlers::rotate_keyring(
        &env,
        event(json!({"SecretId": arn, "ClientRequestToken": token, "Step": "testSecret"})),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("no new current key"), "{error}");
}

#[tokio::test]
async fn finish_refuses_a_pending_keyring_that_lost_a_key_even_without_its_test() {
    // Given a keyring of two keys with rotation on, and a pending version
    // staged by hand that dropped the older key and never went through testSecret
    let database = TestDatabase::create("fn_rotation_finish").await;
    let deployment = Deployment::new(&database, &keyring("k2")).await;
    let arn = deployment.vars["BACKUP_KEYRING_SECRET_ARN"].clone();
    let env = deployment.environment(&[]).await;
    let token = begin_rotation(&arn).await;
    secrets_client()
        .await
        .put_secret_value()
        .secret_id(&arn)
        .client_request_token(&token)
        .secret_string(json!({"current": "k3", "keys": {"k2": K2, "k3": K3}}).to_string())
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let before = current_keyring_value(&arn).await;
    // When finishSecret is invoked for it
    let error = handlers::rotate_keyring(
        &env,
        event(json!({"SecretId": arn, "ClientRequestToken": token, "Step": "finishSecret"})),
    )
    .await
    .expect_err("a pending keyring without k1 was made current");
    // Then it is refused, and the keyring every backup under k1 needs stays current
    assert!(
        error.to_string().contains("lost or changed a current key"),
        "{error}"
    );
    assert_eq!(current_keyring_value(&arn).await, before);
    assert!(!env.keyring_changed().await);
}

#[tokio::test]
async fn the_quarterly_schedule_payload_writes_the_audit_report_under_reports() {
    // Given a backup, and prune's quarterly payload (no dates: the previous quarter)
    let database = TestDatabase::create("fn_report").await;
    load_carwash(&database.client().await, 50).await;
    let deployment = Deployment::new(&database, K1).await;
    let env = deployment.environment(&[]).await;
    handlers::create(&env, event(json!({"reason": "quarter test"})))
        .await
        .unwrap();
    let answer = handlers::prune(&env, event(json!({"report": "audit"})))
        .await
        .unwrap();
    // Then the report of the quarter just ended is stored, as Markdown and JSON
    let period = answer["period"].as_str().unwrap().to_owned();
    assert!(period.len() == 7 && period.contains("-Q"), "{answer}");
    let keys = deployment.keys().await;
    for stored in [
        format!("car wash/reports/audit-{period}.md"),
        format!("car wash/reports/audit-{period}.json"),
    ] {
        assert!(keys.contains(&stored), "{keys:?}");
    }
    // A manual period reports on it, and a malformed one is refused as such
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let answer = handlers::prune(
        &env,
        event(json!({"report": "audit", "from": today, "to": today})),
    )
    .await
    .unwrap();
    assert_eq!(
        answer["operations"], 2,
        "the backup and the first report: {answer}"
    );
    let error = handlers::prune(&env, event(json!({"report": "audit", "from": "last tuesday"})))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("is not a date"), "{error}");
    let error = handlers::prune(&env, event(json!({"report": "weekly"})))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::InvalidEvent(_)));
}

#[tokio::test]
async fn an_erasure_from_the_console_is_applied_by_the_next_restore() {
    // Given a backup holding a customer, who then asks to be forgotten
    let database = TestDatabase::create("fn_erase").await;
    let client = database.client().await;
    load_carwash(&client, 100).await;
    let deployment = Deployment::new(&database, &keyring("k1")).await;
    let env = deployment.environment(&[]).await;
    let backup = handlers::create(&env, event(json!({}))).await.unwrap();
    let user: String = client
        .query_one("SELECT \"userId\" FROM \"Booking\" LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    // When the erasures are sent to the restore function as console payloads
    for (table, column) in [("User", "id"), ("Booking", "userId")] {
        let recorded = handlers::restore(
            &env,
            event(json!({"erase": {"table": table, "key": {column: user}, "reason": "GDPR #7", "requestedBy": "dpo"}})),
        )
        .await
        .unwrap();
        assert!(recorded["erasureId"].as_str().unwrap().starts_with("erasure-"));
        assert_eq!(recorded["keyId"], "k1");
    }
    // Then a restore of the old backup into a copy leaves the person out
    let copy = TestDatabase::create("fn_erase_copy").await;
    let outcome = handlers::restore(
        &env,
        event(json!({"backupId": backup["id"], "target": copy.name, "confirm": copy.name})),
    )
    .await
    .unwrap();
    assert_eq!(outcome["erased"].as_array().unwrap().len(), 2, "{outcome}");
    let left: i64 = copy
        .client()
        .await
        .query_one("SELECT count(*) FROM \"Booking\" WHERE \"userId\" = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // and a malformed erase payload is refused as such
    let error = handlers::restore(&env, event(json!({"erase": {"table": "User", "key": {}}})))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("at least one key column"), "{error}");
    let error = handlers::restore(&env, event(json!({"erase": {"table": "User"}})))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::InvalidEvent(_)), "{error}");
    // and one that would erase nothing (an empty column name, a table in the wrong case) is
    // refused when recorded instead of breaking or silently skipping every restore (#26 item 8)
    let error = handlers::restore(&env, event(json!({"erase": {"table": "User", "key": {"": "x"}}})))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("each with a name"), "{error}");
    let error = handlers::restore(
        &env,
        event(json!({"erase": {"table": "user", "key": {"id": "x"}}})),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("no table public.user"), "{error}");
    let outcome = handlers::restore(
        &env,
        event(json!({"backupId": backup["id"], "target": copy.name, "confirm": copy.name})),
    )
    .await
    .unwrap();
    assert_eq!(
        outcome["erased"].as_array().unwrap().len(),
        2,
        "nothing more was recorded: {outcome}"
    );
}

/// The Function URL request in `events/`, with another method, path or body.
fn admin_request(method: &str, path: &str, body: Option<Value>) -> Value {
    let mut request = aws_event("admin-post-backups.json");
    request["rawPath"] = json!(path);
    request["requestContext"]["http"]["method"] = json!(method);
    request["requestContext"]["http"]["path"] = json!(path);
    request["body"] = body.map_or(Value::Null, |b| json!(b.to_string()));
    request
}

fn answer_body(answer: &Value) -> Value {
    serde_json::from_str(answer["body"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_admin_endpoint_takes_a_backup_with_a_reason_and_lists_backups() {
    let database = TestDatabase::create("fn_admin").await;
    load_carwash(&database.client().await, 50).await;
    let deployment = Deployment::new(&database, K1).await;
    let env = deployment.environment(&[]).await;

    // POST /backups, as AWS documents a Function URL request (SigV4-signed caller)
    let created = handlers::admin(&env, event(aws_event("admin-post-backups.json")))
        .await
        .unwrap();
    assert_eq!(created["statusCode"], 201, "{created}");
    assert_eq!(created["headers"]["content-type"], "application/json");
    let metadata = answer_body(&created);
    assert_eq!(metadata["reason"], "before release 2.5");
    assert_eq!(metadata["trigger"], "pre-deployment");
    assert_eq!(
        metadata["requestedBy"], "arn:aws:iam::123456789012:user/ops-anna",
        "the signed caller is the requester"
    );
    let id = metadata["id"].as_str().unwrap();

    // GET /backups and GET /backups/{id}
    let listed = handlers::admin(&env, event(admin_request("GET", "/backups", None)))
        .await
        .unwrap();
    assert_eq!(listed["statusCode"], 200);
    assert_eq!(answer_body(&listed)[0]["id"], id);
    let one = handlers::admin(&env, event(admin_request("GET", &format!("/backups/{id}"), None)))
        .await
        .unwrap();
    assert_eq!(one["statusCode"], 200);
    assert_eq!(answer_body(&one)["checksum"], metadata["checksum"]);

    // What is refused, and how
    for (method, path, body, status, says) in [
        (
            "POST",
            "/backups",
            Some(json!({"trigger": "manual"})),
            400,
            "needs a reason",
        ),
        (
            "POST",
            "/backups",
            Some(json!({"reason": "x", "tabels": ["User"]})),
            400,
            "unknown field",
        ),
        (
            "GET",
            "/backups/backup-1-0000000a",
            None,
            404,
            "no backup backup-1-0000000a",
        ),
        ("GET", "/backups/..%2F..%2Fetc", None, 400, "is not a backup id"),
        ("DELETE", "/backups", None, 405, "not allowed"),
        ("GET", "/restore", None, 404, "no route"),
    ] {
        let answer = handlers::admin(&env, event(admin_request(method, path, body)))
            .await
            .unwrap();
        assert_eq!(answer["statusCode"], status, "{method} {path}: {answer}");
        assert!(
            answer_body(&answer)["error"].as_str().unwrap().contains(says),
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(
        deployment
            .keys()
            .await
            .iter()
            .filter(|k| k.contains("/metadata/"))
            .count(),
        1,
        "refused requests made no backup"
    );
    // Something that is not a Function URL request is refused as an event
    let error = handlers::admin(&env, event(json!({"reason": "x"})))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::InvalidEvent(_)), "{error}");
}

#[tokio::test]
async fn the_admin_endpoint_refuses_a_request_without_a_signed_caller() {
    let database = TestDatabase::create("fn_admin_unsigned").await;
    load_carwash(&database.client().await, 20).await;
    let deployment = Deployment::new(&database, K1).await;
    let env = deployment.environment(&[]).await;
    // Given requests that did not come through the IAM-authenticated URL:
    // no authorizer at all, or one without the signed caller, each naming
    // a requester in the body
    let body = json!({"reason": "looks legitimate", "requestedBy": "arn:aws:iam::123456789012:user/ceo"});
    let mut without_authorizer = admin_request("POST", "/backups", Some(body.clone()));
    without_authorizer["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    let mut without_iam = admin_request("POST", "/backups", Some(body));
    without_iam["requestContext"]["authorizer"] = json!({"iam": null});
    let mut listing = admin_request("GET", "/backups", None);
    listing["requestContext"]["authorizer"] = json!({});
    for request in [without_authorizer, without_iam, listing] {
        // When each reaches the admin function
        let answer = handlers::admin(&env, event(request.clone())).await.unwrap();
        // Then it is refused with 403, and says which request it was
        assert_eq!(answer["statusCode"], 403, "{request}: {answer}");
        assert_eq!(answer_body(&answer)["requestId"], "test-request", "{answer}");
    }
    // and no backup was taken on the body's word
    assert!(
        !deployment.keys().await.iter().any(|k| k.contains("/metadata/")),
        "an unsigned request made a backup"
    );
}

#[tokio::test]
async fn an_admin_endpoint_failure_answers_generically_with_the_request_id() {
    let database = TestDatabase::create("fn_admin_failure").await;
    let deployment = Deployment::new(&database, K1).await;
    // Given an endpoint whose bucket is gone and whose database secret names
    // a database that does not exist
    let bucket = format!("pgbackup-gone-{}", rand_suffix());
    let missing_database = format!("carwash_gone_{}", rand_suffix());
    let config: tokio_postgres::Config = database.url.parse().unwrap();
    let database_secret = secret(
        "database-gone",
        &json!({"username": config.get_user().unwrap(), "password": "", "host": "127.0.0.1",
                "port": 5432, "dbname": missing_database})
        .to_string(),
    )
    .await;
    let env = deployment
        .environment(&[
            ("S3_BACKUP_BUCKET", &bucket),
            ("DATABASE_SECRET_ARN", &database_secret),
        ])
        .await;
    for (request, never_says) in [
        (admin_request("GET", "/backups", None), bucket.as_str()),
        (
            admin_request("POST", "/backups", Some(json!({"reason": "before release 2.6"}))),
            missing_database.as_str(),
        ),
    ] {
        // When a request fails inside the operation
        let answer = handlers::admin(&env, event(request))
            .await
            .unwrap_or_else(|e| panic!("the endpoint answered with a function error: {}", e.chain()));
        // Then the answer is a generic 5xx with the request id to find the
        // cause in the log, and names neither the bucket, the host nor the database
        let status = answer["statusCode"].as_u64().unwrap();
        assert!(status == 500 || status == 503, "{answer}");
        let body = answer_body(&answer);
        assert_eq!(body["requestId"], "test-request", "{answer}");
        let text = answer["body"].as_str().unwrap();
        for secretish in [never_says, "127.0.0.1", "5432"] {
            assert!(
                !text.contains(secretish),
                "the answer names {secretish:?}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn a_create_past_sixty_percent_of_its_timeout_says_switch_to_fargate() {
    // Given a deployment with a webhook and a metrics file
    let database = TestDatabase::create("fn_near_timeout").await;
    load_carwash(&database.client().await, 300).await;
    let deployment = Deployment::new(&database, K1).await;
    let receiver = WebhookReceiver::start(vec![]).await;
    let metrics = tempfile::NamedTempFile::new().unwrap();
    let env = deployment
        .environment(&[
            ("BACKUP_DEADLINE_MARGIN_MS", "500"),
            ("BACKUP_WEBHOOK_URL", &receiver.url),
            ("BACKUP_METRICS", &format!("file:{}", metrics.path().display())),
        ])
        .await;
    let near = |lines: &str| lines.lines().filter(|l| l.contains("NearTimeout")).count();

    // When a create runs with plenty of time (300 s)
    let quick = handlers::create(&env, event(json!({}))).await.unwrap();
    // Then it says nothing about the engine
    assert!(quick.get("nearTimeout").is_none(), "{quick}");
    assert_eq!(near(&std::fs::read_to_string(metrics.path()).unwrap()), 0);

    // When the next one is held for 4 s of its 6 (another session locks
    // Booking, as a database too large for the run would hold it)
    let holder = database.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE \"Booking\" IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        holder.batch_execute("ROLLBACK").await.unwrap();
    });
    let slow = handlers::create(&env, LambdaEvent::new(json!({}), context(6)))
        .await
        .unwrap_or_else(|e| panic!("the held create still fits: {}", e.chain()));
    release.await.unwrap();

    // Then it succeeds and warns, with the measured seconds and the timeout
    let warning = &slow["nearTimeout"];
    assert_eq!(warning["what"], "create", "{slow}");
    assert_eq!(warning["backupId"], slow["id"]);
    let measured = warning["measuredSeconds"].as_f64().unwrap();
    let timeout = warning["timeoutSeconds"].as_f64().unwrap();
    assert!((4.0..6.0).contains(&measured), "{warning}");
    assert!((5.0..=6.0).contains(&timeout), "{warning}");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("switch this database to the Fargate engine"),
        "{warning}"
    );
    // and the NearTimeout metric is emitted for the alarm
    let lines = std::fs::read_to_string(metrics.path()).unwrap();
    let emitted: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|m| m.get("NearTimeout").is_some())
        .collect();
    assert_eq!(emitted.len(), 1, "{lines}");
    assert_eq!(emitted[0]["Operation"], "create");
    assert_eq!(emitted[0]["NearTimeout"], 1.0);
    assert!(
        emitted[0]["NearTimeoutPercent"].as_f64().unwrap() > 60.0,
        "{lines}"
    );
    // and the webhook says it, with the same numbers
    let switch: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.body["event"] == "switch_to_fargate")
        .collect();
    assert_eq!(switch.len(), 1, "{:?}", receiver.events());
    assert_eq!(switch[0].body["measuredSeconds"], warning["measuredSeconds"]);
    assert_eq!(switch[0].body["timeoutSeconds"], warning["timeoutSeconds"]);
    assert!(
        switch[0].body["message"]
            .as_str()
            .unwrap()
            .contains("Fargate engine"),
        "{:?}",
        switch[0].body
    );
}

#[tokio::test]
async fn a_measured_restore_past_sixty_percent_of_the_restore_timeout_says_switch_to_fargate() {
    // Given a verify function with a scratch server, whose template gives
    // the restore function's timeout — here 50 ms, which any real restore
    // passes — and a webhook
    let database = TestDatabase::create("fn_near_restore").await;
    load_carwash(&database.client().await, 100).await;
    let deployment = Deployment::new(&database, K1).await;
    let scratch = secret(
        "scratch",
        &json!({"username": "postgres", "password": ""}).to_string(),
    )
    .await;
    let receiver = WebhookReceiver::start(vec![]).await;
    let env = deployment
        .environment(&[
            ("BACKUP_SCRATCH_DATABASE_SECRET_ARN", scratch.as_str()),
            ("BACKUP_SCRATCH_DATABASE_HOST", "127.0.0.1"),
            ("BACKUP_RESTORE_TIMEOUT_SECONDS", "0.05"),
            ("BACKUP_WEBHOOK_URL", &receiver.url),
        ])
        .await;
    let metadata = handlers::create(&env, event(json!({}))).await.unwrap();
    assert!(metadata.get("nearTimeout").is_none(), "{metadata}");

    // When the daily deep verification measures the restore
    let report = handlers::verify(&env, event(aws_event("scheduled.json")))
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));

    // Then the verification passes and warns about the restore
    assert_eq!(report["status"], "passed", "{report}");
    let warning = &report["nearTimeout"];
    assert_eq!(warning["what"], "restore", "{report}");
    assert_eq!(warning["timeoutSeconds"], 0.05, "{warning}");
    let switch: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.body["event"] == "switch_to_fargate")
        .collect();
    assert_eq!(switch.len(), 1, "{:?}", receiver.events());
    assert!(
        switch[0].body["message"]
            .as_str()
            .unwrap()
            .contains("the restore took"),
        "{:?}",
        switch[0].body
    );
}

//! No secret anywhere: every `backupctl` path (local disk, S3, Azure Blob;
//! create, list, verify at every depth, restore, prune; and the failing
//! paths, whose error messages are where secrets usually slip out) runs
//! with known sentinel values for the master key, the database password,
//! the webhook secret and the storage keys. Everything it produces is then
//! searched for them: stdout, stderr (logs at debug level and the metric
//! lines), webhook bodies and headers, audit records, metadata,
//! verification records and the backup objects themselves.
//!
//! The Lambda side of the same check runs on the real binaries in
//! `infra/lambda-e2e.sh`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::Path;

use base64::Engine;
use integration_tests::*;
use support::*;

const MASTER_KEY: &str = "b40b95d93e61265c6d078927f22a49d53ad38b7651688cfa95dd37728490c1b8";
/// A second key: the "wrong key" of a failing verify must not leak either.
const WRONG_KEY: &str = "176c1a19c3aba6357e24b9d4641495c107735190664f35c3c4a750933b73f69b";
const DATABASE_PASSWORD: &str = "pw-sentinel-4b1d";
const WEBHOOK_SECRET: &str = "whsec-sentinel-9c2e";
const AWS_SECRET: &str = "aws-sentinel-7e3f";

/// Every form a secret could take in what we capture.
fn forms_of_secrets() -> Vec<(String, Vec<u8>)> {
    let mut forms = Vec::new();
    for (name, key) in [("master key", MASTER_KEY), ("wrong key", WRONG_KEY)] {
        let raw = hex::decode(key).unwrap();
        forms.push((format!("{name} (hex)"), key.as_bytes().to_vec()));
        forms.push((format!("{name} (first half, hex)"), key.as_bytes()[..32].to_vec()));
        forms.push((format!("{name} (HEX)"), key.to_uppercase().into_bytes()));
        forms.push((
            format!("{name} (base64)"),
            base64::engine::general_purpose::STANDARD
                .encode(&raw)
                .into_bytes(),
        ));
        forms.push((format!("{name} (raw bytes)"), raw));
    }
    for (name, text) in [
        ("database password", DATABASE_PASSWORD),
        ("webhook secret", WEBHOOK_SECRET),
        ("AWS secret access key", AWS_SECRET),
    ] {
        forms.push((name.to_owned(), text.as_bytes().to_vec()));
    }
    let azure_key = azure_test_settings("leak").access_key;
    forms.push(("Azure storage key".to_owned(), azure_key.clone().into_bytes()));
    forms.push((
        "Azure storage key (first 20)".to_owned(),
        azure_key.as_bytes()[..20].to_vec(),
    ));
    forms
}

/// Everything captured, by where it came from.
#[derive(Default)]
struct Captured {
    artifacts: Vec<(String, Vec<u8>)>,
}

impl Captured {
    fn add(&mut self, origin: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.artifacts.push((origin.into(), bytes.into()));
    }

    fn add_output(&mut self, what: &str, output: &std::process::Output) {
        self.add(format!("{what}: stdout"), output.stdout.clone());
        self.add(format!("{what}: stderr"), output.stderr.clone());
    }

    fn add_folder(&mut self, label: &str, dir: &Path) {
        for path in paths_under(dir) {
            let bytes = std::fs::read(&path).unwrap();
            self.add(format!("{label}: {}", path.display()), bytes);
        }
    }

    /// Then none of the secrets appears anywhere, in any form.
    fn assert_no_secret(&self) {
        let forms = forms_of_secrets();
        let mut leaks = Vec::new();
        for (origin, bytes) in &self.artifacts {
            for (secret, form) in &forms {
                if bytes.windows(form.len()).any(|w| w == form.as_slice()) {
                    leaks.push(format!("{secret} in {origin}"));
                }
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    format!("{scheme}://{user}:{DATABASE_PASSWORD}@{host}")
}

fn sentinel_cli(database: &TestDatabase, dir: &Path, receiver: &WebhookReceiver) -> Backupctl {
    let mut cli = Backupctl::new(database, dir);
    cli.database_url = with_password(&database.url);
    cli.key = MASTER_KEY.into();
    cli.webhook = Some((receiver.url.clone(), WEBHOOK_SECRET.into()));
    cli.extra_env = vec![
        (
            "RUST_LOG".into(),
            "debug,aws_smithy_runtime=info,aws_sdk_s3=info,hyper=info,h2=info,rustls=info".into(),
        ),
        ("BACKUP_SCRATCH_DATABASE_URL".into(), with_password(&admin_url())),
    ];
    cli
}

/// Runs `args`, captures its output, and says whether it succeeded.
async fn run(cli: &Backupctl, captured: &mut Captured, what: &str, args: &[&str]) -> std::process::Output {
    let output = cli.run(args).await;
    captured.add_output(what, &output);
    output
}

/// A failing path: what it is, the settings that make it fail, the command.
type FailingPath<'a> = (&'a str, Vec<(&'a str, String)>, Vec<&'a str>);

/// The whole life of a backup, then the failing paths, on one storage.
async fn every_path(cli: &mut Backupctl, captured: &mut Captured, storage: &str, target: &TestDatabase) {
    let ok = |output: &std::process::Output, what: &str| {
        assert!(output.status.success(), "{storage} {what}: {}", stderr_of(output));
    };
    let created = run(
        cli,
        captured,
        &format!("{storage} create"),
        &["create", "--json", "--reason", "leak check"],
    )
    .await;
    ok(&created, "create");
    let id = serde_json::from_slice::<serde_json::Value>(&created.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["verify", "--backup-id", &id, "--depth", "quick"],
        vec!["verify", "--backup-id", &id, "--depth", "full"],
        vec!["verify", "--backup-id", "latest", "--depth", "deep", "--json"],
        vec!["restore", "--backup-id", &id, "--yes", "--no-safety-backup"],
        vec![
            "restore",
            "--backup-id",
            &id,
            "--yes",
            "--target-url",
            &with_password(&target.url),
        ],
        vec!["prune", "--dry-run", "--json"],
        vec!["prune"],
    ] {
        let what = format!("{storage} {}", args.join(" "));
        let output = run(cli, captured, &what, &args).await;
        ok(&output, &what);
    }

    // The failing paths: each must fail, and say why without a secret
    let failing: Vec<FailingPath> = vec![
        (
            "unknown backup",
            vec![],
            vec!["verify", "--backup-id", "backup-1700000000000-00000000"],
        ),
        ("unknown table", vec![], vec!["create", "--tables", "Nope"]),
        (
            "refused overwrite",
            vec![],
            vec!["restore", "--backup-id", "latest"],
        ),
        (
            "wrong key",
            vec![("BACKUP_ENCRYPTION_KEY", WRONG_KEY.into())],
            vec!["verify", "--backup-id", "latest"],
        ),
        (
            "malformed key",
            vec![("BACKUP_ENCRYPTION_KEY", format!("zz{}", &MASTER_KEY[2..]))],
            vec!["list"],
        ),
        (
            "keyring with id and key swapped",
            vec![(
                "BACKUP_ENCRYPTION_KEY",
                format!(r#"{{"current":"k1","keys":{{"{MASTER_KEY}":"k1"}}}}"#),
            )],
            vec!["create"],
        ),
        (
            "key pasted as the current id",
            vec![(
                "BACKUP_ENCRYPTION_KEY",
                format!(r#"{{"current":"{WRONG_KEY}","keys":{{"k1":"{MASTER_KEY}"}}}}"#),
            )],
            vec!["create"],
        ),
        (
            "database missing",
            vec![("DATABASE_URL", with_password(&format!("{}_missing", target.url)))],
            vec!["create"],
        ),
        (
            "database refusing the connection",
            vec![(
                "DATABASE_URL",
                format!("postgres://postgres:{DATABASE_PASSWORD}@127.0.0.1:1/none"),
            )],
            vec!["create"],
        ),
        (
            "unreachable scratch database",
            vec![(
                "BACKUP_SCRATCH_DATABASE_URL",
                format!("postgres://postgres:{DATABASE_PASSWORD}@127.0.0.1:1/none"),
            )],
            vec!["verify", "--backup-id", "latest", "--depth", "deep"],
        ),
        (
            "unreachable webhook",
            vec![("BACKUP_WEBHOOK_URL", "http://127.0.0.1:1/hook".into())],
            vec!["create", "--tables", "Nope"],
        ),
    ];
    for (what, env, args) in failing {
        let saved = cli.extra_env.clone();
        for (name, value) in env {
            cli.extra_env.push((name.into(), value));
        }
        let output = run(cli, captured, &format!("{storage} failing: {what}"), &args).await;
        cli.extra_env = saved;
        assert!(!output.status.success(), "{storage} {what}: it succeeded");
    }
}

#[tokio::test]
async fn no_secret_appears_in_anything_backupctl_writes_or_says() {
    let database = TestDatabase::create("leak_source").await;
    let target = TestDatabase::create("leak_target").await;
    load_carwash(&database.client().await, 300).await;
    let receiver = WebhookReceiver::start(vec![]).await;
    let mut captured = Captured::default();

    // Local disk
    let local_dir = tempfile::tempdir().unwrap();
    let mut cli = sentinel_cli(&database, local_dir.path(), &receiver);
    every_path(&mut cli, &mut captured, "local", &target).await;
    captured.add_folder("local backup folder", local_dir.path());

    // S3, with the sentinel as the secret access key (the stand-in takes any)
    let (s3, bucket) = s3_test_bucket("leak", false).await;
    let s3_dir = tempfile::tempdir().unwrap();
    let mut cli = sentinel_cli(&database, s3_dir.path(), &receiver);
    cli.extra_env.extend(cloud_env(&[
        ("BACKUP_STORAGE_TYPE", "s3"),
        ("S3_BACKUP_BUCKET", &bucket),
    ]));
    cli.extra_env
        .push(("AWS_SECRET_ACCESS_KEY".into(), AWS_SECRET.into()));
    every_path(&mut cli, &mut captured, "s3", &target).await;
    // a bucket that does not exist fails with the SDK's own error text
    let mut missing = sentinel_cli(&database, s3_dir.path(), &receiver);
    missing.extra_env.extend(cloud_env(&[
        ("BACKUP_STORAGE_TYPE", "s3"),
        ("S3_BACKUP_BUCKET", "no-such-bucket-leak"),
    ]));
    missing
        .extra_env
        .push(("AWS_SECRET_ACCESS_KEY".into(), AWS_SECRET.into()));
    let output = run(&missing, &mut captured, "s3 failing: missing bucket", &["create"]).await;
    assert!(!output.status.success());
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    for object in listed.contents() {
        let key = object.key().unwrap();
        captured.add(format!("s3 object {key}"), s3_object(&s3, &bucket, key).await);
    }

    // Azure Blob (Azurite checks the shared key, so the real one is the sentinel)
    let azure = azure_test_settings("leak");
    let azure_dir = tempfile::tempdir().unwrap();
    let mut cli = sentinel_cli(&database, azure_dir.path(), &receiver);
    cli.extra_env.extend([
        ("BACKUP_STORAGE_TYPE".to_owned(), "azure".to_owned()),
        ("AZURE_STORAGE_ACCOUNT".to_owned(), azure.account.clone()),
        ("AZURE_STORAGE_KEY".to_owned(), azure.access_key.clone()),
        ("AZURE_CONTAINER".to_owned(), azure.container.clone()),
        ("AZURE_PREFIX".to_owned(), azure.prefix.clone()),
        ("AZURE_STORAGE_USE_EMULATOR".to_owned(), "true".to_owned()),
    ]);
    every_path(&mut cli, &mut captured, "azure", &target).await;
    let blobs = python_json(
        r#"
import base64, json, sys
from azure.storage.blob import BlobServiceClient
account, key, container, prefix = sys.argv[1:5]
url = f"http://127.0.0.1:10000/{account}"
service = BlobServiceClient(account_url=url, credential={"account_name": account, "account_key": key})
client = service.get_container_client(container)
print(json.dumps({b.name: base64.b64encode(client.download_blob(b.name).readall()).decode()
                  for b in client.list_blobs(name_starts_with=prefix)}))
"#,
        &[&azure.account, &azure.access_key, &azure.container, &azure.prefix],
    )
    .await;
    let blobs = blobs.as_object().unwrap();
    assert!(
        blobs.keys().any(|name| name.contains("metadata/")),
        "{:?}",
        blobs.keys()
    );
    for (name, body) in blobs {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body.as_str().unwrap())
            .unwrap();
        captured.add(format!("azure blob {name}"), bytes);
    }

    // Webhook requests: bodies and every header (the signature is an HMAC
    // made with the secret, never the secret)
    let requests = receiver.received();
    assert!(requests.iter().any(|r| r.body["type"] == "backup_failure"));
    assert!(requests.iter().any(|r| r.body["event"] == "backup_created"));
    for (n, request) in requests.iter().enumerate() {
        captured.add(
            format!("webhook request {n} body"),
            request.raw_body.clone().into_bytes(),
        );
        captured.add(
            format!("webhook request {n} headers"),
            format!("{:?}", request.headers),
        );
    }

    assert!(
        captured.artifacts.len() > 100,
        "captured {} artifacts",
        captured.artifacts.len()
    );
    captured.assert_no_secret();
}

//! Metadata documents carry a MAC under a key derived from the master key:
//! `list` and `verify` report a document that fails it, restore refuses it.
//! Run as a process on local storage and on the S3 stand-in, with the MAC
//! recomputed by Python from docs/FORMAT.md's recipe.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use serde_json::Value;
use support::*;

/// Where the metadata documents under test live, read and written behind
/// the tool's back.
enum Documents {
    Local(std::path::PathBuf),
    S3(aws_sdk_s3::Client, String),
}

impl Documents {
    async fn read(&self, id: &str) -> Vec<u8> {
        let key = format!("metadata/{id}.json");
        match self {
            Self::Local(dir) => std::fs::read(dir.join(key)).unwrap(),
            Self::S3(client, bucket) => s3_object(client, bucket, &key).await,
        }
    }

    async fn write(&self, id: &str, document: &Value) {
        let key = format!("metadata/{id}.json");
        let bytes = serde_json::to_vec_pretty(document).unwrap();
        match self {
            Self::Local(dir) => std::fs::write(dir.join(key), bytes).unwrap(),
            Self::S3(client, bucket) => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(bytes.into())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

/// docs/FORMAT.md's metadata MAC recipe, in Python's standard library only.
const PYTHON_RECIPE: &str = r#"
import hashlib, hmac, json, sys
document = json.loads(open(sys.argv[1], encoding="utf-8").read())
master = bytes.fromhex(sys.argv[2])
prk = hmac.new(b"\0" * 32, master, hashlib.sha256).digest()              # HKDF-Extract, no salt
# info: bound to the repository id the document names (repository.json), or
# the unbound label for a document sealed before there was one
repository = document.get("repositoryId")
info = b"pgbackup/v2 metadata mac " + repository.encode() if repository else b"pgbackup/v1 metadata mac"
key = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()  # HKDF-Expand, 32 bytes
stored = document.pop("metadataMac", None)
for unsealed in ("verification", "metadataIntegrity"):
    document.pop(unsealed, None)
canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
print(json.dumps({"stored": stored, "computed": hmac.new(key, canonical, hashlib.sha256).hexdigest()}))
"#;

async fn altered_metadata_is_reported_and_refused(cli: &Backupctl, documents: &Documents) {
    let database_url = cli.database_url.clone();
    let client = connect(&database_url).await;
    let original = table_digests(&client).await;
    // Given two backups, with a reason containing characters JSON escapes
    let first = cli
        .json(&["create", "--reason", "før \"release\" 2.4 ✓\n\tnext"])
        .await;
    let second = cli.json(&["create"]).await;
    let (first_id, second_id) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());

    // Then each stored document carries a MAC that Python recomputes from the documented recipe
    let stored = documents.read(first_id).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &stored).unwrap();
    let recomputed = python_json(PYTHON_RECIPE, &[file.path().to_str().unwrap(), KEY]).await;
    assert_eq!(recomputed["stored"], recomputed["computed"], "{recomputed}");
    assert_eq!(recomputed["stored"].as_str().unwrap().len(), 64);
    let listed = cli.json(&["list"]).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["metadataIntegrity"] == "authentic"),
        "{listed}"
    );

    // When someone without the key changes a field of the first backup's metadata
    let mut document: Value = serde_json::from_slice(&stored).unwrap();
    document["recordCount"] = Value::from(1);
    documents.write(first_id, &document).await;

    // Then list flags it, quick verification fails, and restore refuses it
    let listed = cli.json(&["list"]).await;
    let flagged = |listed: &Value, id: &str| {
        listed.as_array().unwrap().iter().find(|b| b["id"] == id).unwrap()["metadataIntegrity"].clone()
    };
    assert_eq!(flagged(&listed, first_id), "failed");
    assert_eq!(flagged(&listed, second_id), "authentic");
    let text = cli.run(&["list"]).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("METADATA ALTERED"));
    let verified = cli
        .run(&["verify", "--backup-id", first_id, "--depth", "quick", "--json"])
        .await;
    assert!(!verified.status.success());
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["status"], "failed");
    assert!(
        report["error"].as_str().unwrap().contains("fails its MAC"),
        "{report}"
    );
    client.batch_execute("DELETE FROM \"Testimonial\"").await.unwrap();
    let changed = table_digests(&client).await;
    let refused = cli
        .run(&["restore", "--backup-id", first_id, "--yes", "--no-safety-backup"])
        .await;
    assert!(!refused.status.success());
    assert!(
        cause_of(&refused).contains("fails its MAC"),
        "{}",
        stderr_of(&refused)
    );
    assert_eq!(table_digests(&client).await, changed, "nothing was restored");

    // A MAC copied from another document does not make an altered one pass either
    let other: Value = serde_json::from_slice(&documents.read(second_id).await).unwrap();
    document["metadataMac"] = other["metadataMac"].clone();
    documents.write(first_id, &document).await;
    assert_eq!(flagged(&cli.json(&["list"]).await, first_id), "failed");

    // Without the MAC (a document from before MACs) it is unsigned: listed so, restorable with a warning
    let mut unsigned: Value = serde_json::from_slice(&stored).unwrap();
    unsigned.as_object_mut().unwrap().remove("metadataMac");
    documents.write(first_id, &unsigned).await;
    assert_eq!(flagged(&cli.json(&["list"]).await, first_id), "unsigned");
    let restored = cli
        .json(&["restore", "--backup-id", first_id, "--yes", "--no-safety-backup"])
        .await;
    assert!(
        restored["warnings"][0]
            .as_str()
            .unwrap()
            .contains("carries no MAC"),
        "{restored}"
    );
    assert_eq!(table_digests(&client).await, original);

    // Without any key configured, documents are listed but not judged
    let keyless = Backupctl {
        key: String::new(),
        extra_env: cli.extra_env.clone(),
        global_args: cli.global_args.clone(),
        webhook: None,
        database_url: database_url.clone(),
        backup_dir: cli.backup_dir.clone(),
    };
    let listed = keyless.json(&["list"]).await;
    assert_eq!(flagged(&listed, second_id), Value::Null, "{listed}");
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn altered_metadata_on_local_storage_is_reported_and_refused() {
    let database = TestDatabase::create("meta_mac_local").await;
    load_carwash(&database.client().await, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    altered_metadata_is_reported_and_refused(&cli, &Documents::Local(dir.path().to_owned())).await;
}

#[tokio::test]
async fn altered_metadata_on_s3_is_reported_and_refused() {
    let database = TestDatabase::create("meta_mac_s3").await;
    load_carwash(&database.client().await, 100).await;
    let (client, bucket) = s3_test_bucket("metamac", false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.extra_env = cloud_env(&[("BACKUP_STORAGE_TYPE", "s3"), ("S3_BACKUP_BUCKET", &bucket)]);
    altered_metadata_is_reported_and_refused(&cli, &Documents::S3(client, bucket)).await;
}

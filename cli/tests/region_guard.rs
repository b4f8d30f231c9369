//! `BACKUP_ALLOWED_REGIONS`: create refuses a bucket outside the allowed
//! regions (GetBucketLocation on the S3 stand-in), before anything is read
//! from the database or written to the bucket.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use integration_tests::*;
use support::*;

async fn keys_in(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let listed = client.list_objects_v2().bucket(bucket).send().await.unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn create_refuses_a_bucket_outside_the_allowed_regions() {
    // Given a bucket in us-east-1, one in eu-central-1, and EU regions allowed
    let database = TestDatabase::create("region_guard").await;
    load_carwash(&database.client().await, 20).await;
    let (client, us_bucket) = s3_test_bucket("region-us", false).await;
    let eu_bucket = format!("{us_bucket}-eu");
    client
        .create_bucket()
        .bucket(&eu_bucket)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::EuCentral1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cli_for = |bucket: &str| {
        let mut cli = Backupctl::new(&database, dir.path());
        cli.extra_env = cloud_env(&[
            ("BACKUP_STORAGE_TYPE", "s3"),
            ("S3_BACKUP_BUCKET", bucket),
            ("BACKUP_ALLOWED_REGIONS", "eu-west-1, eu-central-1"),
        ]);
        cli
    };

    // When a backup is asked for into the US bucket
    let refused = cli_for(&us_bucket).run(&["create"]).await;
    // Then it fails, naming the bucket's region and the setting, and no backup is in the bucket
    assert!(!refused.status.success());
    let cause = cause_of(&refused);
    assert!(
        cause.contains("is in us-east-1") && cause.contains("BACKUP_ALLOWED_REGIONS"),
        "{cause}"
    );
    assert!(
        keys_in(&client, &us_bucket)
            .await
            .iter()
            .all(|k| k.starts_with("audit/")),
        "only the audit record of the refusal may be written"
    );

    // When it is asked for into the EU bucket, it is written and verifies
    let created = cli_for(&eu_bucket).json(&["create"]).await;
    let id = created["id"].as_str().unwrap();
    assert!(
        keys_in(&client, &eu_bucket)
            .await
            .contains(&format!("backups/{id}.backup"))
    );
    let report = cli_for(&eu_bucket)
        .json(&["verify", "--backup-id", id, "--depth", "full"])
        .await;
    assert_eq!(report["status"], "passed");

    // Local storage keeps data on this machine: the guard lets it through
    let mut local = Backupctl::new(&database, dir.path());
    local.extra_env = vec![("BACKUP_ALLOWED_REGIONS".into(), "eu-west-1".into())];
    local.json(&["create"]).await;

    // A malformed setting is refused as such
    let mut malformed = Backupctl::new(&database, dir.path());
    malformed.extra_env = vec![("BACKUP_ALLOWED_REGIONS".into(), "EU West".into())];
    let output = malformed.run(&["create"]).await;
    assert!(
        cause_of(&output).contains("BACKUP_ALLOWED_REGIONS=\"EU West\" is not valid"),
        "{}",
        stderr_of(&output)
    );
}

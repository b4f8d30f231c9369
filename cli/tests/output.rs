//! What a person or a cron job reads on stderr: nothing when all is well,
//! each failure once, more only when asked for (-v, -vv, RUST_LOG).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Output;

use integration_tests::*;
use support::*;

/// Runs backupctl as cron would: no RUST_LOG, no BACKUP_METRICS, stderr a file.
async fn as_cron(cli: &Backupctl, args: &[&str]) -> Output {
    cli.command(args)
        .env_remove("RUST_LOG")
        .env_remove("BACKUP_METRICS")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_successful_create_and_deep_verify_under_cron_say_nothing_on_stderr() {
    // Given the car-wash database
    let database = TestDatabase::create("cli_output_quiet").await;
    load_carwash(&database.client().await, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());

    // When a backup is taken and verified deeply, as a cron job would
    let created = as_cron(&cli, &["create"]).await;
    let verified = as_cron(&cli, &["verify", "--backup-id", "latest", "--depth", "deep"]).await;

    // Then both succeed and stderr is empty: no logs, no metric lines, no
    // warning about the scratch database's connections being closed
    assert!(created.status.success(), "{}", stderr_of(&created));
    assert!(verified.status.success(), "{}", stderr_of(&verified));
    assert_eq!(stderr_of(&created), "");
    assert_eq!(stderr_of(&verified), "");
    assert!(String::from_utf8_lossy(&verified.stdout).contains("passed"));
}

#[tokio::test]
async fn each_failure_is_said_once() {
    // Given a database URL naming a database that does not exist
    let database = TestDatabase::create("cli_output_once").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.database_url = database.url.replace("cli_output_once", "no_such_database_here");

    // When create, verify of an unknown backup and restore fail
    for args in [
        vec!["create"],
        vec!["verify", "--backup-id", "latest"],
        vec!["restore", "--backup-id", "latest", "--yes"],
    ] {
        let output = as_cron(&cli, &args).await;
        // Then each exits non-zero with exactly one line on stderr
        assert!(!output.status.success(), "{args:?}");
        let said = stderr_of(&output);
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?} said:\n{said}");
        assert!(lines[0].starts_with("backupctl: "), "{said}");
    }
}

#[tokio::test]
async fn verbose_shows_the_logs_and_quiet_hides_the_warnings() {
    // Given a backup under one key
    let database = TestDatabase::create("cli_output_levels").await;
    load_carwash(&database.client().await, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    let verbose = as_cron(&cli, &["-v", "create"]).await;
    // Then -v logs what happened
    assert!(verbose.status.success());
    assert!(
        stderr_of(&verbose).contains("backup created"),
        "{}",
        stderr_of(&verbose)
    );

    // When the next backups use another key: the warning shows by default, not with -q
    cli.key = OTHER_KEY.into();
    let warned = as_cron(&cli, &["create"]).await;
    assert!(
        stderr_of(&warned).contains("the newest backup before it"),
        "{}",
        stderr_of(&warned)
    );
    cli.key = KEY.into();
    let quiet = as_cron(&cli, &["-q", "create"]).await;
    assert!(quiet.status.success());
    assert_eq!(stderr_of(&quiet), "");
}

#[tokio::test]
async fn storage_errors_name_the_real_path_and_the_setting_and_a_missing_folder_is_no_empty_list() {
    // Given a backup whose object was then removed from the backup folder
    let database = TestDatabase::create("cli_output_paths").await;
    load_carwash(&database.client().await, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    let id = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    let object = dir.path().join(format!("{id}.backup"));
    std::fs::remove_file(&object).unwrap();

    // When it is restored
    let output = as_cron(
        &cli,
        &[
            "restore",
            "--backup-id",
            &id,
            "--yes",
            "--target-url",
            &database.url,
        ],
    )
    .await;

    // Then the one line names the file where it was looked for and the setting behind it
    assert!(!output.status.success());
    let cause = cause_of(&output);
    assert!(cause.contains(&object.display().to_string()), "{cause}");
    assert!(cause.contains("BACKUP_DIR"), "{cause}");
    assert!(!cause.contains("\"backups/"), "{cause}");

    // When list runs against a folder that does not exist
    cli.backup_dir = dir.path().join("no-such-folder");
    let listed = as_cron(&cli, &["list"]).await;
    // Then it says so (naming the folder and the flag) instead of "no backups yet"
    assert!(!listed.status.success());
    let cause = cause_of(&listed);
    assert!(
        cause.contains("no backup folder at") && cause.contains("no-such-folder"),
        "{cause}"
    );
    assert!(cause.contains("--backup-dir"), "{cause}");
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("no backups yet"));
    // And create still starts a new folder there
    assert!(as_cron(&cli, &["create"]).await.status.success());
}

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

/// Runs backupctl under a pseudo-terminal (util-linux `script`), `typed` on
/// its keyboard: what a person at a terminal sees and does.
async fn at_a_terminal(cli: &Backupctl, args: &[&str], typed: &str) -> (Option<i32>, String) {
    use tokio::io::AsyncWriteExt;
    let mut line = String::from(env!("CARGO_BIN_EXE_backupctl"));
    for arg in args {
        line.push_str(&format!(" '{arg}'"));
    }
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "dumb")
        .env("DATABASE_URL", &cli.database_url)
        .env("BACKUP_DIR", &cli.backup_dir)
        .env("BACKUP_ENCRYPTION_KEY", &cli.key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // After the prompt is up: typed too early, the terminal would echo it first.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stdin.write_all(typed.as_bytes()).await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    drop(stdin);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn without_yes_a_person_types_the_database_name_and_a_script_is_refused() {
    // Given a backup of a database that has changed since
    let database = TestDatabase::create("cli_output_confirm").await;
    let client = database.client().await;
    load_carwash(&client, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let id = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    let backed_up = table_digests(&client).await;
    client.batch_execute("DELETE FROM \"Testimonial\"").await.unwrap();
    let changed = table_digests(&client).await;
    let name = database.url.rsplit('/').next().unwrap().to_owned();

    // When a script restores without --yes
    let output = as_cron(&cli, &["restore", "--backup-id", &id, "--no-safety-backup"]).await;
    // Then it is refused with exit 2, in the CLI's words (no Lambda payload field), and nothing changed
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    let cause = cause_of(&output);
    assert!(
        cause.contains("--yes") && !cause.contains("\"confirm\""),
        "{cause}"
    );
    assert_eq!(table_digests(&client).await, changed);

    // When a person at a terminal types another name
    let (code, screen) = at_a_terminal(
        &cli,
        &["restore", "--backup-id", &id, "--no-safety-backup"],
        "not_this_one\n",
    )
    .await;
    // Then they were asked for the name, and the restore is refused
    assert!(screen.contains("Type the database's name to go on"), "{screen}");
    assert_ne!(code, Some(0), "{screen}");
    assert_eq!(table_digests(&client).await, changed);

    // When they type the right name, Then the restore runs
    let (code, screen) = at_a_terminal(
        &cli,
        &["restore", "--backup-id", &id, "--no-safety-backup"],
        &format!("{name}\n"),
    )
    .await;
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(table_digests(&client).await, backed_up);
}

#[tokio::test]
async fn a_restore_target_that_does_not_exist_is_named_and_create_db_makes_it() {
    // Given a backup, and a target URL naming a database the server does not have
    let database = TestDatabase::create("cli_output_target").await;
    let client = database.client().await;
    load_carwash(&client, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let id = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    let new_name = format!("{}_new", database.url.rsplit('/').next().unwrap());
    let base = database.url.rsplit_once('/').unwrap().0.to_owned();
    let target = format!("{base}/{new_name}");
    let admin = backup_core::postgres::connect(&admin_url()).await.unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{new_name}\""))
        .await
        .unwrap();

    // When it is restored there
    let output = as_cron(
        &cli,
        &["restore", "--backup-id", &id, "--target-url", &target, "--yes"],
    )
    .await;
    // Then the one line blames --target-url (not DATABASE_URL), says the database is missing and how to make it
    assert!(!output.status.success());
    let cause = cause_of(&output);
    assert!(
        cause.contains("--target-url") && !cause.contains("check DATABASE_URL"),
        "{cause}"
    );
    assert!(
        cause.contains("does not exist") && cause.contains("--create-db"),
        "{cause}"
    );

    // When --create-db is added, Then the database is created and holds the backup
    let output = as_cron(
        &cli,
        &[
            "restore",
            "--backup-id",
            &id,
            "--target-url",
            &target,
            "--create-db",
            "--yes",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("created database"),
        "{}",
        stderr_of(&output)
    );
    let restored = backup_core::postgres::connect(&target).await.unwrap();
    assert_eq!(table_digests(&restored).await, table_digests(&client).await);
    drop(restored);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{new_name}\" WITH (FORCE)"))
        .await
        .unwrap();
}

/// `backupctl <path> --help`'s subcommands (its `Commands:` section, less
/// `help`).
fn subcommands_of(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_subcommand_shows_examples_in_its_help() {
    // Given every subcommand, found by walking the help itself (so a new
    // one is held to this too)
    let mut paths: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    while let Some(path) = paths.pop() {
        // When its help is asked for
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_backupctl"))
            .args(&path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "{path:?}: {}", stderr_of(&output));
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        // Then it shows at least one example (the top level lists commands)
        if !path.is_empty() {
            assert!(
                help.contains("Example"),
                "`backupctl {} --help` shows no example:\n{help}",
                path.join(" ")
            );
            seen += 1;
        }
        for name in subcommands_of(&help) {
            let mut child = path.clone();
            child.push(name);
            paths.push(child);
        }
    }
    assert!(seen >= 12, "only {seen} subcommands found");
}

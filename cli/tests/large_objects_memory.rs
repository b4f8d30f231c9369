//! Large objects travel in bounded memory: a 256 MiB object is backed up
//! and restored by the `backupctl` binary with its peak resident set, as
//! `/usr/bin/time` measures it, well under the object's size.
//! `PGBACKUP_LARGE_OBJECT_MIB=1024` runs it with a 1 GiB object (the
//! figure the closing notes give; CI keeps 256 MiB for time).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use support::*;

/// MiB of the large object (256 unless `PGBACKUP_LARGE_OBJECT_MIB` says
/// more): far more than the bound, so a whole object in memory (or several
/// chunks of it queued) cannot pass.
fn object_mib() -> i64 {
    std::env::var("PGBACKUP_LARGE_OBJECT_MIB")
        .ok()
        .and_then(|mib| mib.parse().ok())
        .unwrap_or(256)
        .max(256)
}
/// The bound on the process's peak RSS, in MiB.
const PEAK_RSS_MIB: u64 = 100;

/// Runs `backupctl args` under `/usr/bin/time`; returns its peak RSS in KiB.
async fn peak_rss_kib(cli: &Backupctl, args: &[&str]) -> u64 {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut command = tokio::process::Command::new("/usr/bin/time");
    let inner = cli.command(args);
    let inner = inner.as_std();
    command
        .env_clear()
        .envs(inner.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(inner.get_program())
        .args(inner.get_args());
    let output = command.output().await.unwrap();
    assert!(
        output.status.success(),
        "backupctl {args:?} failed: {}",
        stderr_of(&output)
    );
    let text = std::fs::read_to_string(report.path()).unwrap();
    text.trim().lines().last().unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn a_large_object_of_256_mib_is_backed_up_and_restored_in_bounded_memory() {
    let mib = object_mib();
    // Given a database with one 256 MiB (or more) large object of varied bytes
    // (written 1 MiB at a time, so the server never holds it whole either)
    let source = TestDatabase::create("cli_lobs_big").await;
    let client = source.client().await;
    client
        .batch_execute(&format!(
            "DO $$ BEGIN PERFORM lo_create(777001); \
               FOR k IN 0..{last} LOOP \
                 PERFORM lo_put(777001, k * 1048576, \
                   (SELECT string_agg(md5((i + k * 32768)::text), '')::bytea FROM generate_series(1, 32768) i)); \
               END LOOP; END $$",
            last = mib - 1
        ))
        .await
        .unwrap();
    let size = "SELECT lo_lseek64(lo_open(777001, 262144), 0, 2)";
    let source_size: i64 = client.query_one(size, &[]).await.unwrap().get(0);
    assert_eq!(source_size, mib << 20);
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&source, dir.path());

    // When the binary backs it up, then restores it into a new database
    let create_kib = peak_rss_kib(&cli, &["create"]).await;
    let target = TestDatabase::create("cli_lobs_big_dst").await;
    let restore_kib = peak_rss_kib(
        &cli,
        &[
            "restore",
            "--backup-id",
            "latest",
            "--target-url",
            &target.url,
            "--yes",
            "--no-safety-backup",
        ],
    )
    .await;

    // Then the object is back, byte for byte, and neither process held
    // more than the bound
    let sums = "SELECT md5(string_agg(md5(lo_get(777001, k * 1048576, 1048576)), '' ORDER BY k)) \
                FROM generate_series(0::bigint, $1::bigint - 1) k";
    let restored = target.client().await;
    let before: String = client.query_one(sums, &[&mib]).await.unwrap().get(0);
    let after: String = restored.query_one(sums, &[&mib]).await.unwrap().get(0);
    assert_eq!(before, after, "the object's bytes differ");
    let restored_size: i64 = restored.query_one(size, &[]).await.unwrap().get(0);
    assert_eq!(restored_size, mib << 20, "the object's size differs");
    eprintln!(
        "peak RSS for a {mib} MiB large object: create {} MiB, restore {} MiB",
        create_kib / 1024,
        restore_kib / 1024
    );
    assert!(
        create_kib < PEAK_RSS_MIB * 1024,
        "create peaked at {create_kib} KiB"
    );
    assert!(
        restore_kib < PEAK_RSS_MIB * 1024,
        "restore peaked at {restore_kib} KiB"
    );
}

//! Disaster-recovery drills: `verify --depth deep --checks FILE.sql` runs
//! the application's named queries on the restored scratch copy and judges
//! each against its `-- expect:` line.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use support::*;

fn queries_fixture() -> String {
    format!(
        "{}/../tests/fixtures/carwash-queries.sql",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn a_deep_verification_with_checks_is_a_drill_whose_report_is_kept() {
    // Given a backup of the car-wash database
    let database = TestDatabase::create("cli_drill").await;
    load_carwash(&database.client().await, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let id = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();

    // When it is verified deeply with the application's checks
    let report = cli
        .json(&[
            "verify",
            "--backup-id",
            &id,
            "--depth",
            "deep",
            "--checks",
            &queries_fixture(),
        ])
        .await;
    // Then every check ran on the restored copy and passed, with the measured RTO
    assert_eq!(report["status"], "passed", "{report}");
    let drill = &report["drill"];
    assert_eq!(drill["checksPassed"], 11, "{drill}");
    assert_eq!(drill["checksFailed"], 0);
    assert_eq!(drill["rtoMs"], report["restoreDurationMs"]);
    assert_eq!(drill["checks"][0]["name"], "revenue_by_service");
    assert_eq!(drill["checks"][0]["detail"], "8 rows");
    // and the drill is kept with the verification record
    let listed = cli.json(&["list"]).await;
    assert_eq!(listed[0]["verification"]["drill"], *drill);

    // When an expectation does not hold, or a query fails, the drill fails and says which
    let failing = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        failing.path(),
        "-- name: no_bookings_expected\n-- expect: rows = 0\nSELECT 1 FROM \"Booking\" LIMIT 3;\n\n\
         -- name: table_gone\nSELECT * FROM \"Bookings\";\n\n\
         -- name: read_only\nDELETE FROM \"Booking\";\n\n\
         -- name: fine\n-- expect: value = 7\nSELECT count(*) FROM \"BusinessHours\";\n",
    )
    .unwrap();
    let output = cli
        .run(&[
            "verify",
            "--backup-id",
            &id,
            "--depth",
            "deep",
            "--checks",
            failing.path().to_str().unwrap(),
        ])
        .await;
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("FAIL check no_bookings_expected: expected rows = 0, got 3"),
        "{text}"
    );
    assert!(text.contains("FAIL check table_gone: the query failed"), "{text}");
    assert!(
        text.contains(
            "FAIL check read_only: the query failed: cannot execute DELETE in a read-only transaction"
        ),
        "{text}"
    );
    assert!(text.contains("ok   check fine: 1 rows"), "{text}");
    let listed = cli.json(&["list"]).await;
    assert_eq!(listed[0]["verification"]["status"], "failed");
    assert_eq!(listed[0]["verification"]["drill"]["checksFailed"], 3);

    // Checks need a restored copy, and a malformed file is refused before anything runs
    let shallow = cli
        .run(&["verify", "--backup-id", &id, "--checks", &queries_fixture()])
        .await;
    assert!(
        cause_of(&shallow).contains("--depth deep"),
        "{}",
        stderr_of(&shallow)
    );
    std::fs::write(failing.path(), "-- name: x\n-- expect: rows about 3\nSELECT 1;\n").unwrap();
    let malformed = cli
        .run(&[
            "verify",
            "--backup-id",
            &id,
            "--depth",
            "deep",
            "--checks",
            failing.path().to_str().unwrap(),
        ])
        .await;
    assert!(
        cause_of(&malformed).contains("checks file line 2"),
        "{}",
        stderr_of(&malformed)
    );

    // BACKUP_DRILL_CHECKS makes every deep verification a drill
    let mut configured = Backupctl::new(&database, dir.path());
    configured.extra_env = vec![("BACKUP_DRILL_CHECKS".into(), queries_fixture())];
    let report = configured
        .json(&["verify", "--backup-id", &id, "--depth", "deep"])
        .await;
    assert_eq!(report["drill"]["checksPassed"], 11, "{report}");
}

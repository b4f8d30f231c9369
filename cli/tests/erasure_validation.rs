//! An erasure that would erase nothing is refused when it is recorded, not
//! counted as done (issue #26 item 8, first half): a table or key column the
//! newest backup does not hold, in any spelling or case, is named and
//! leaves the ledger as it was.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use support::*;

fn ledger(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("erasures")).map_or(0, |entries| entries.count())
}

#[tokio::test]
async fn an_erasure_naming_a_table_or_column_the_newest_backup_lacks_is_refused_when_recorded() {
    // Given a backup of the car-wash database
    let database = TestDatabase::create("erase_validate").await;
    load_carwash(&database.client().await, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    cli.json(&["create"]).await;

    // When an erasure names the table in the wrong case, or a column it lacks
    for (args, expected) in [
        (["--table", "user", "--key", "id=someone"], "no table public.user"),
        (["--table", "User", "--key", "Id=someone"], "has no column \"Id\""),
    ] {
        let mut all = vec!["erase"];
        all.extend(args);
        let refused = cli.run(&all).await;
        // Then it is refused, naming what is wrong (never the key value), and nothing is recorded
        assert!(!refused.status.success(), "{args:?} was recorded");
        let cause = cause_of(&refused);
        assert!(cause.contains(expected), "{args:?}: {}", stderr_of(&refused));
        assert!(!cause.contains("someone"), "{cause}");
        assert_eq!(ledger(dir.path()), 0, "{args:?}");
    }

    // And the right spelling is recorded
    cli.json(&["erase", "--table", "User", "--key", "id=someone"])
        .await;
    assert_eq!(ledger(dir.path()), 1);
}

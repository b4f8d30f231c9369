//! Two first backups of an empty repository at once (two cron jobs, a
//! schedule and a manual run) each found no `repository.json` and each
//! wrote its own: the one overwritten had already sealed its metadata for
//! an id no longer in the store, so its backup failed its MAC ever after.
//! The identity is now written create-only, and the loser takes the
//! winner's.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use backup_core::identity;
use backup_core::storage::{BackupStore, LocalStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_writers_racing_for_the_repository_identity_all_get_the_same_one() {
    for round in 0..20 {
        // Given an empty repository
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());

        // When sixteen writers ensure its identity at once
        let racers = (0..16).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { identity::ensure(&store).await.unwrap() })
        });
        let identities: Vec<_> = futures_util::future::join_all(racers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();

        // Then all of them hold the one that is stored
        let stored = identity::read(&store as &dyn BackupStore).await.unwrap().unwrap();
        for identity in &identities {
            assert_eq!(identity.repository_id, stored.repository_id, "round {round}");
        }
    }
}

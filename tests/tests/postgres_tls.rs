//! TLS to PostgreSQL, as libpq's sslmode means it, against this machine's
//! server (ssl = on with its snakeoil certificate, issued to `localhost`).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use backup_core::postgres::{self, PostgresError};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

async fn encrypted(url: &str) -> Result<bool, PostgresError> {
    let client = postgres::connect(url).await?;
    Ok(client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0))
}

fn server_has_tls() -> bool {
    std::path::Path::new(SNAKEOIL).exists()
}

#[tokio::test]
async fn sslmode_is_honoured_as_libpq_does() {
    assert!(
        server_has_tls(),
        "this machine kind's PostgreSQL serves TLS with {SNAKEOIL}"
    );
    let base = "postgres://postgres@127.0.0.1:5432/postgres";
    // disable: plaintext; require: encrypted without checking the certificate
    assert!(!encrypted(&format!("{base}?sslmode=disable")).await.unwrap());
    assert!(encrypted(&format!("{base}?sslmode=require")).await.unwrap());

    // verify-ca: the certificate must chain to the given root
    assert!(
        encrypted(&format!("{base}?sslmode=verify-ca&sslrootcert={SNAKEOIL}"))
            .await
            .unwrap()
    );
    // verify-full: and name the host: localhost matches, 127.0.0.1 does not
    let by_name = "postgres://postgres@localhost:5432/postgres";
    assert!(
        encrypted(&format!("{by_name}?sslmode=verify-full&sslrootcert={SNAKEOIL}"))
            .await
            .unwrap()
    );
    let wrong_host = encrypted(&format!("{base}?sslmode=verify-full&sslrootcert={SNAKEOIL}")).await;
    assert!(
        matches!(wrong_host, Err(PostgresError::Connect(_))),
        "{wrong_host:?}"
    );
    // (Roots from sslrootcert are added to the system's; this machine's
    // system store already trusts the snakeoil certificate, so "no root
    // given" cannot be shown to fail here: the host-name case above shows
    // that verification is on.)
    // An empty sslrootcert (as an empty template parameter gives) means
    // "none given", not a file named "".
    assert!(
        encrypted(&format!("{by_name}?sslmode=verify-full&sslrootcert="))
            .await
            .unwrap()
    );
    let missing = encrypted(&format!(
        "{by_name}?sslmode=verify-full&sslrootcert=/nonexistent.pem"
    ))
    .await;
    assert!(
        matches!(missing, Err(PostgresError::RootCertificate { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_backup_and_restore_run_over_verified_tls() {
    let source = integration_tests::TestDatabase::create("tls_src").await;
    integration_tests::load_carwash(&source.client().await, 100).await;
    let url = source.url.replace("127.0.0.1", "localhost")
        + &format!("?sslmode=verify-full&sslrootcert={SNAKEOIL}");
    let mut client = postgres::connect(&url).await.unwrap();
    let (backup, report, _) =
        integration_tests::backup_to_memory(&mut client, &postgres::TableFilter::default()).await;
    assert!(report.record_count() > 100);
    let target = integration_tests::TestDatabase::create("tls_dst").await;
    let target_url = target.url.replace("127.0.0.1", "localhost")
        + &format!("?sslmode=verify-full&sslrootcert={SNAKEOIL}");
    let mut target_client = postgres::connect(&target_url).await.unwrap();
    integration_tests::restore_from_memory(&backup, &mut target_client, &postgres::RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        integration_tests::table_digests(&target_client).await,
        integration_tests::table_digests(&client).await
    );
}

//! Stopping what a restore's connections run when it is interrupted: the
//! server is asked to cancel the running statement (a cancel request on a
//! connection of its own, as `pg_cancel_backend` from a busy connection
//! could not be sent), until the connection has rolled back.

use std::time::Duration;

use tokio_postgres::{CancelToken, Client};

/// How often a cancel request is sent again while the connection is busy:
/// a statement that reached the server just after the first one still ends.
const RESEND: Duration = Duration::from_millis(250);

/// Asks the server to cancel the statement `token`'s connection runs (best effort).
pub(super) async fn cancel(token: &CancelToken) {
    // The request carries only the connection's cancel key, so the server's
    // certificate is not checked for it; TLS when the connection used it.
    let sent = match native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
    {
        Ok(connector) => {
            token
                .cancel_query(postgres_native_tls::MakeTlsConnector::new(connector))
                .await
        }
        Err(_) => token.cancel_query(tokio_postgres::NoTls).await,
    };
    if let Err(error) = sent {
        tracing::warn!(%error, "could not send a cancel request to PostgreSQL");
    }
}

/// After the work on `client` was dropped in the middle of a statement (its
/// transaction queued a `ROLLBACK`): cancels what the connection still runs
/// until it answers again, that is, until it has rolled back and holds no
/// lock of the restore.
pub(super) async fn settle(client: &Client, token: &CancelToken) {
    let answered = client.batch_execute("SELECT 1");
    let mut answered = std::pin::pin!(answered);
    loop {
        cancel(token).await;
        tokio::select! {
            // An error (the check itself cancelled, the connection gone) is an answer too.
            _ = &mut answered => return,
            () = tokio::time::sleep(RESEND) => {}
        }
    }
}

//! What the four Lambda functions share: parsing their events, loading
//! secrets once per execution environment, stopping before the deadline,
//! and reporting errors as Lambda diagnostics that say whether a retry can
//! help. Each function's `main.rs` only wires one handler to the runtime.

pub mod environment;
pub mod error;
pub mod events;
pub mod handlers;
pub mod secrets;

pub use environment::Environment;
pub use error::HandlerError;

/// JSON logs to stdout (CloudWatch Logs), level from `RUST_LOG` (default info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .without_time()
        .init();
}

/// Logs why the execution environment could not start (bad settings,
/// unreadable secret); the runtime then reports the error to Lambda.
pub fn log_cold_start_failure(error: &HandlerError) {
    tracing::error!(error = %error.chain(), "cold start failed");
}

//! What the Lambda functions share: parsing their events, loading
//! secrets once per execution environment, stopping before the deadline,
//! and reporting errors as Lambda diagnostics that say whether a retry can
//! help. Each function's `main.rs` only wires one handler to the runtime.

pub mod admin;
pub mod engine;
pub mod environment;
pub mod error;
pub mod events;
pub mod handlers;
pub mod rotation;
pub mod secrets;

pub use environment::Environment;
pub use error::HandlerError;

/// JSON logs to stdout (CloudWatch Logs), level from `RUST_LOG` (default info).
pub fn init_tracing() {
    init_tracing_to(std::io::stdout);
}

/// The same JSON logs on stderr: an ECS task keeps stdout for its result
/// (both streams reach the task's log group).
pub fn init_tracing_to_stderr() {
    init_tracing_to(std::io::stderr);
}

fn init_tracing_to<W>(writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let filter = match backup_core::postgres::NO_PARAMETER_LOGS.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .without_time()
        .init();
}

/// Logs why the execution environment could not start (bad settings,
/// unreadable secret); the runtime then reports the error to Lambda.
pub fn log_cold_start_failure(error: &HandlerError) {
    tracing::error!(error = %error.chain(), "cold start failed");
}

/// The whole of a function's `main`: load the environment once per cold
/// start, then answer every invocation with `handler`.
pub async fn serve<H>(handler: H) -> Result<(), lambda_runtime::Error>
where
    H: AsyncFn(
        &Environment,
        lambda_runtime::LambdaEvent<serde_json::Value>,
    ) -> Result<serde_json::Value, HandlerError>,
{
    let started = std::time::Instant::now();
    init_tracing();
    let environment = Environment::load().await.inspect_err(log_cold_start_failure)?;
    tracing::info!(
        init_ms = started.elapsed().as_millis() as u64,
        "cold start complete: settings, secrets and clients loaded"
    );
    let current = std::sync::Mutex::new(std::sync::Arc::new(environment));
    let (current, handler) = (&current, &handler);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            let environment = fresh_environment(current).await;
            handler(&environment, event)
                .await
                .map_err(lambda_runtime::Diagnostic::from)
        },
    ))
    .await
}

/// The environment for the next invocation: the one loaded before, or a
/// new one when the keyring was rotated since (backups made under the new
/// key must be readable by a warm function too).
async fn fresh_environment(
    current: &std::sync::Mutex<std::sync::Arc<Environment>>,
) -> std::sync::Arc<Environment> {
    let environment = current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if !environment.keyring_changed().await {
        return environment;
    }
    match Environment::load().await {
        Ok(fresh) => {
            tracing::info!("the keyring was rotated; settings and secrets loaded again");
            let fresh = std::sync::Arc::new(fresh);
            *current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
            fresh
        }
        Err(error) => {
            tracing::warn!(error = %error.chain(), "the keyring changed but could not be loaded again; using the one loaded before");
            environment
        }
    }
}

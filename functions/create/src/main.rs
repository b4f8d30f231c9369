//! AWS Lambda function `create`: configuration, secrets and clients once per
//! cold start, then one handler call per invocation.

use backup_lambda::{Environment, handlers};
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    backup_lambda::init_tracing();
    let environment = Environment::load()
        .await
        .inspect_err(backup_lambda::log_cold_start_failure)?;
    let environment = &environment;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handlers::create(environment, event)
            .await
            .map_err(Diagnostic::from)
    }))
    .await
}

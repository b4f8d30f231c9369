//! AWS Lambda function `verify`: configuration, secrets and clients once per
//! cold start, then one handler call per invocation.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    backup_lambda::serve(backup_lambda::handlers::verify).await
}

//! AWS Lambda function `capture`: every minute, the changes the logical
//! slot holds into one encrypted segment under `changes/` (point-in-time
//! recovery, docs/PITR.md). Configuration, secrets and clients once per
//! cold start, then one handler call per invocation.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    backup_lambda::serve(backup_lambda::handlers::capture).await
}

//! AWS Lambda function `admin`: the optional HTTPS endpoint (Function URL,
//! `AWS_IAM` auth) for manual backups and the backup list.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    backup_lambda::serve(backup_lambda::handlers::admin).await
}

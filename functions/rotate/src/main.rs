//! AWS Lambda function `rotate`: Secrets Manager's rotation function for
//! the keyring secret (createSecret, setSecret, testSecret, finishSecret).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    backup_lambda::serve(backup_lambda::handlers::rotate_keyring).await
}

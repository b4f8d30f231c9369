//! The optional admin endpoint: a Lambda Function URL with `AWS_IAM`
//! authentication (SigV4-signed requests only; IAM decides who may call it).
//!
//! * `POST /backups` — a manual backup; the body is the create payload and
//!   must give a reason; the caller's IAM ARN is recorded as the requester.
//! * `GET /backups` — every backup, newest first, verification merged in.
//! * `GET /backups/{id}` — one backup's metadata.
//!
//! Answers are Function URL responses (`statusCode`, `headers`, `body`).

use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest;
use backup_core::BackupId;
use backup_core::operations::{self, CreateRequest, Operation, OperationError};
use backup_core::repository::{BackupSelector, RepositoryError};
use backup_core::request::BackupOrder;
use base64::Engine as _;
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};

use crate::{Environment, HandlerError};

fn respond(status: u16, body: &Value) -> Value {
    json!({
        "statusCode": status,
        "headers": {"content-type": "application/json", "cache-control": "no-store"},
        "body": body.to_string(),
        "isBase64Encoded": false,
    })
}

fn problem(status: u16, message: impl Into<String>) -> Value {
    respond(status, &json!({"error": message.into()}))
}

/// Handles one request to the admin endpoint.
pub async fn handle(env: &Environment, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
    let request: LambdaFunctionUrlRequest = serde_json::from_value(event.payload)
        .map_err(|e| HandlerError::InvalidEvent(format!("{e}; expected a Lambda Function URL request")))?;
    let method = request.request_context.http.method.clone().unwrap_or_default();
    let path = request.raw_path.clone().unwrap_or_default();
    let caller = request
        .request_context
        .authorizer
        .as_ref()
        .and_then(|a| a.iam.as_ref())
        .and_then(|iam| iam.user_arn.clone());
    tracing::info!(%method, %path, caller = caller.as_deref().unwrap_or("unknown"), "admin request");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["backups"]) => match env.services.list().await {
            Ok(backups) => Ok(respond(200, &json!(backups))),
            Err(error) => Ok(failure(error)),
        },
        ("GET", ["backups", id]) => {
            let Ok(id) = id.parse::<BackupId>() else {
                return Ok(problem(400, format!("{id:?} is not a backup id")));
            };
            match env.services.repository.resolve(&BackupSelector::Id(id)).await {
                Ok(metadata) => Ok(respond(200, &json!(metadata))),
                Err(RepositoryError::UnknownBackup { id }) => Ok(problem(404, format!("no backup {id}"))),
                Err(error) => Ok(failure(error.into())),
            }
        }
        ("POST", ["backups"]) => create(env, &event.context, &request, caller).await,
        (_, ["backups"] | ["backups", _]) => Ok(problem(405, format!("{method} is not allowed on {path}"))),
        _ => Ok(problem(
            404,
            format!("no route {method} {path}; try GET /backups"),
        )),
    }
}

async fn create(
    env: &Environment,
    context: &lambda_runtime::Context,
    request: &LambdaFunctionUrlRequest,
    caller: Option<String>,
) -> Result<Value, HandlerError> {
    let body = request.body.clone().unwrap_or_default();
    let body = if request.is_base64_encoded {
        match base64::engine::general_purpose::STANDARD.decode(body.as_bytes()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => return Ok(problem(400, "the body is not valid base64")),
        }
    } else {
        body
    };
    let mut order: BackupOrder = match serde_json::from_str(if body.trim().is_empty() { "{}" } else { &body })
    {
        Ok(order) => order,
        Err(error) => {
            return Ok(problem(
                400,
                format!("{error}; expected {{\"reason\", \"trigger\", \"tables\"}}"),
            ));
        }
    };
    if order.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Ok(problem(400, "a manual backup needs a reason (\"reason\": \"…\")"));
    }
    // The signed caller is who asked, whatever the body says.
    order.requested_by = caller.or(order.requested_by);
    let database_url = env.database_url("back up").await?;
    let create = CreateRequest {
        database_url: database_url.as_str().to_owned(),
        tables: order.tables.clone(),
        request: order.request(),
        container: env.settings.container,
        accepted_loss: env.settings.allow_schema_loss.clone(),
    };
    let outcome = env
        .within_deadline(context, Operation::Create, async {
            Ok(operations::create_backup(&env.services, &create).await?)
        })
        .await;
    match outcome {
        Ok(metadata) => Ok(respond(201, &json!(metadata))),
        Err(HandlerError::Operation(error)) => Ok(failure(error)),
        Err(other) => Err(other),
    }
}

/// An operation that failed: 400 for what the request got wrong, 503 for
/// what may pass on retry (as the functions' diagnostics judge it), 500
/// otherwise; the message never holds a key.
fn failure(error: OperationError) -> Value {
    let request_error = matches!(
        error,
        OperationError::Request(_)
            | OperationError::Postgres(backup_core::postgres::PostgresError::UnknownTables { .. })
    );
    let error = HandlerError::Operation(error);
    let status = if request_error {
        400
    } else if error.is_retryable() {
        503
    } else {
        500
    };
    problem(status, error.chain())
}

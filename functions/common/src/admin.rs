//! The optional admin endpoint: a Lambda Function URL with `AWS_IAM`
//! authentication (SigV4-signed requests only; IAM decides who may call it).
//!
//! * `POST /backups` — a manual backup; the body is the create payload and
//!   must give a reason; the caller's IAM ARN is recorded as the requester.
//! * `GET /backups` — every backup, newest first, verification merged in.
//! * `GET /backups/{id}` — one backup's metadata.
//!
//! Answers are Function URL responses (`statusCode`, `headers`, `body`).
//!
//! A request without `requestContext.authorizer.iam` (the signed caller
//! AWS adds under `AWS_IAM` auth) is answered 403: it did not come through
//! the IAM-authenticated URL, so nothing in it, a body's `requestedBy`
//! least of all, can be trusted. What the request itself got wrong is
//! answered 400 with the reason; a failure of the operation is answered
//! generically (500, or 503 when a retry may pass) with the request id, and
//! its cause (which can name the bucket, the database host or row values)
//! goes to the function's log under that id only.

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

/// The id the function's log lines carry for this invocation (Lambda's
/// request id; the Function URL's own as a fallback).
fn request_id(context: &lambda_runtime::Context, request: &LambdaFunctionUrlRequest) -> String {
    if context.request_id.is_empty() {
        request.request_context.request_id.clone().unwrap_or_default()
    } else {
        context.request_id.clone()
    }
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
    let request_id = request_id(&event.context, &request);
    let Some(caller) = caller else {
        tracing::warn!(%method, %path, %request_id, "admin request refused: no signed caller (requestContext.authorizer.iam)");
        return Ok(respond(
            403,
            &json!({
                "error": "refused: only SigV4-signed requests through the Function URL (AWS_IAM auth) are answered",
                "requestId": request_id,
            }),
        ));
    };
    tracing::info!(%method, %path, %caller, %request_id, "admin request");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["backups"]) => match env.services.list().await {
            Ok(backups) => Ok(respond(200, &json!(backups))),
            Err(error) => Ok(failure(HandlerError::Operation(error), &request_id)),
        },
        ("GET", ["backups", id]) => {
            let Ok(id) = id.parse::<BackupId>() else {
                return Ok(problem(400, format!("{id:?} is not a backup id")));
            };
            match env.services.repository.resolve(&BackupSelector::Id(id)).await {
                Ok(metadata) => Ok(respond(200, &json!(metadata))),
                Err(RepositoryError::UnknownBackup { id }) => Ok(problem(404, format!("no backup {id}"))),
                Err(error) => Ok(failure(HandlerError::Operation(error.into()), &request_id)),
            }
        }
        ("POST", ["backups"]) => Ok(create(env, &event.context, &request, caller)
            .await
            .unwrap_or_else(|error| failure(error, &request_id))),
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
    caller: String,
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
    order.requested_by = Some(caller);
    let database_url = env.database_url("back up").await?;
    let create = CreateRequest {
        database_url: database_url.as_str().to_owned(),
        tables: order.tables.clone(),
        request: order.request(),
        container: env.settings.container,
        accepted_loss: env.settings.allow_schema_loss.clone(),
    };
    let metadata = env
        .within_deadline(context, Operation::Create, async {
            Ok(operations::create_backup(&env.services, &create).await?)
        })
        .await?;
    Ok(respond(201, &json!(metadata)))
}

/// A request that failed: 400 with the reason for what the request got
/// wrong; otherwise 503 (a retry may pass, as the functions' diagnostics
/// judge it) or 500, with a generic message and the request id. The cause
/// is logged under that id, never sent: it can name the bucket, the
/// database host or row values.
fn failure(error: HandlerError, request_id: &str) -> Value {
    if let HandlerError::Operation(
        error @ (OperationError::Request(_)
        | OperationError::Postgres(backup_core::postgres::PostgresError::UnknownTables { .. })),
    ) = &error
    {
        return problem(400, error.chain());
    }
    tracing::error!(%request_id, error = %error.chain(), "admin request failed");
    let (status, message) = if error.is_retryable() {
        (
            503,
            "the request failed for a reason that may pass; try again later",
        )
    } else {
        (500, "the request failed")
    };
    respond(
        status,
        &json!({
            "error": format!("{message} (the function's log has the cause under request id {request_id})"),
            "requestId": request_id,
        }),
    )
}

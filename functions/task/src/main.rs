//! `backup-task create|restore|verify [ORDER]`: one Lambda handler run once
//! as a process, the engine of an ECS Fargate task (no 15-minute limit).
//!
//! The same environment contract as the functions (`BACKUP_*`,
//! `S3_BACKUP_BUCKET`, `BACKUP_KEYRING_SECRET_ARN`, `DATABASE_SECRET_ARN`,
//! `DATABASE_*`), the same handlers, JSON logs, EMF metrics, audit records
//! and webhooks. The order is a console payload (`events/*.json`), given as
//! the second argument or in `BACKUP_TASK_ORDER` (what a container override
//! or an EventBridge Scheduler target sets); none is `{}`.
//!
//! stdout carries one JSON line: the handler's result, or
//! `{"errorType", "errorMessage"}` as Lambda reports a failure (logs go to
//! stderr; EMF metrics where `BACKUP_METRICS` says, stdout by default).
//! The exit code says what happened; see [`exit`].

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup_core::Interrupt;
use backup_core::operations::OperationError;
use backup_lambda::{Environment, HandlerError, handlers};
use lambda_runtime::{Context, Diagnostic, LambdaEvent};
use serde_json::{Value, json};

/// Exit codes, documented in the README ("Large databases"). A scheduler
/// or a state machine can tell a retry that may help (75) from one that
/// cannot.
mod exit {
    /// The operation failed in a way a retry does not fix (a damaged
    /// backup, a failed verification, a database error other than an
    /// unreachable server).
    pub const FAILED: u8 = 1;
    /// Refused before anything changed (an unconfirmed restore).
    pub const REFUSED: u8 = 2;
    /// The backup's key is not in the keyring (says nothing about the backup).
    pub const KEY_NOT_IN_KEYRING: u8 = 3;
    /// Bad order: unknown operation, order not JSON, or not a payload the
    /// operation accepts. Nothing ran.
    pub const BAD_ORDER: u8 = 64;
    /// Storage, the database or a secret was unreachable: a retry may help.
    pub const RETRYABLE: u8 = 75;
    /// The settings or secrets are wrong (or a secret was given as plain
    /// environment in ECS). Nothing ran.
    pub const CONFIGURATION: u8 = 78;
    /// Stopped by SIGTERM (ECS StopTask) or SIGINT and undone, as
    /// `backupctl` exits after an interruption.
    pub const INTERRUPTED: u8 = 130;
}

const USAGE: &str = "usage: backup-task create|restore|verify [ORDER_JSON] (or the order in BACKUP_TASK_ORDER; see events/*.json)";

/// The variables that would carry a secret in plain text. In ECS they come
/// from the task definition (its plain environment, readable by anyone
/// allowed ecs:DescribeTaskDefinition), so there the task refuses them:
/// the key and the credentials come from Secrets Manager through the task
/// role, as in the functions.
const PLAIN_SECRETS: [&str; 4] = [
    "BACKUP_ENCRYPTION_KEY",
    "DATABASE_URL",
    "BACKUP_SCRATCH_DATABASE_URL",
    "BACKUP_WEBHOOK_SECRET",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Restore,
    Verify,
}

#[derive(Debug, PartialEq)]
struct Order {
    operation: Operation,
    payload: Value,
}

/// The order from the arguments (without the program name) and the
/// `BACKUP_TASK_ORDER` value; a message for the person otherwise.
fn parse_order(args: &[String], from_env: Option<&str>) -> Result<Order, String> {
    let operation = match args.first().map(String::as_str) {
        Some("create") => Operation::Create,
        Some("restore") => Operation::Restore,
        Some("verify") => Operation::Verify,
        Some(other) => return Err(format!("unknown operation {other:?}; {USAGE}")),
        None => return Err(USAGE.to_owned()),
    };
    let from_env = from_env.filter(|order| !order.trim().is_empty());
    let text = match (args.get(1), from_env) {
        (Some(_), _) if args.len() > 2 => return Err(format!("one order at most; {USAGE}")),
        // Two orders that may disagree: which one the operator meant is a guess.
        (Some(_), Some(_)) => {
            return Err("an order both as an argument and in BACKUP_TASK_ORDER; give one".to_owned());
        }
        (Some(text), None) => text.as_str(),
        (None, Some(text)) => text,
        (None, None) => "{}",
    };
    let payload: Value =
        serde_json::from_str(text).map_err(|e| format!("the order is not JSON ({e}); {USAGE}"))?;
    if !payload.is_object() {
        return Err(format!("the order must be a JSON object; {USAGE}"));
    }
    Ok(Order { operation, payload })
}

/// Whether this process runs as an ECS task (the agent sets the metadata
/// endpoint in every container, Fargate included).
fn in_ecs(get: &impl Fn(&str) -> Option<String>) -> bool {
    ["ECS_CONTAINER_METADATA_URI_V4", "ECS_CONTAINER_METADATA_URI"]
        .iter()
        .any(|name| get(name).is_some_and(|v| !v.trim().is_empty()))
}

/// The plain-text secret variables set in ECS (names only: never a value).
fn plain_secrets_in_ecs(get: &impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
    if !in_ecs(get) {
        return Vec::new();
    }
    PLAIN_SECRETS
        .into_iter()
        .filter(|name| get(name).is_some_and(|v| !v.trim().is_empty()))
        .collect()
}

fn exit_code(error: &HandlerError) -> u8 {
    match error {
        HandlerError::InvalidEvent(_) => exit::BAD_ORDER,
        HandlerError::Refused(_) => exit::REFUSED,
        HandlerError::Operation(e) if e.is_interrupted() => exit::INTERRUPTED,
        HandlerError::Operation(OperationError::Refused(_) | OperationError::NotConfirmed) => exit::REFUSED,
        HandlerError::Operation(OperationError::KeyNotInKeyring { .. }) => exit::KEY_NOT_IN_KEYRING,
        error if error.is_retryable() => exit::RETRYABLE,
        HandlerError::Operation(OperationError::Config(_)) | HandlerError::MalformedSecret { .. } => {
            exit::CONFIGURATION
        }
        _ => exit::FAILED,
    }
}

/// Whether a verify result (one report, or `{"reports": [...]}` for an
/// event naming several backups) holds a failed verification.
fn verification_failed(result: &Value) -> bool {
    let failed = |report: &Value| report["status"] == "failed";
    match result.get("reports").and_then(Value::as_array) {
        Some(reports) => reports.iter().any(failed),
        None => failed(result),
    }
}

/// The one stdout line of a failure: Lambda's error shape, so a reader of
/// either engine's output sees the same thing.
fn print_failure(error_type: &str, message: &str) {
    println!("{}", json!({"errorType": error_type, "errorMessage": message}));
}

/// A context without a deadline: a task runs until it is done or stopped
/// (the handlers' deadline watch then never fires; SIGTERM stops instead).
fn context() -> Context {
    let mut context = Context::default();
    context.request_id = std::env::var("BACKUP_TASK_NAME").unwrap_or_else(|_| "backup-task".into());
    // A hundred years from now: far enough, and still a valid instant.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    context.deadline = u64::try_from(now).unwrap_or(0) + 100 * 365 * 24 * 3_600_000;
    context
}

/// SIGTERM (ECS StopTask, a scale-in) and SIGINT stop the operation as
/// after a failure: a create publishes nothing, a restore removes what it
/// created. The handlers reset the interrupt when their work starts (a
/// warm Lambda environment must not inherit an earlier stop), so the
/// request is held — triggered again every 100 ms — until the process
/// ends. A second signal exits at once, without the clean-up; ECS sends
/// SIGKILL after the container's stopTimeout anyway.
async fn stop_on_signals(interrupt: Interrupt) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut sigint), Ok(mut sigterm)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        tracing::warn!("could not listen for SIGINT and SIGTERM; they end the task without its clean-up");
        return;
    };
    let reason = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
    };
    tracing::warn!(reason, "stop requested: stopping as after a failure");
    loop {
        interrupt.trigger(reason);
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    tracing::error!(
        "stopped again: exiting before the clean-up finished; what it had not undone yet is left"
    );
    std::process::exit(exit::INTERRUPTED.into());
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    backup_lambda::init_tracing_to_stderr();
    let order = match parse_order(&args, std::env::var("BACKUP_TASK_ORDER").ok().as_deref()) {
        Ok(order) => order,
        Err(message) => {
            tracing::error!(error = %message, "bad order");
            print_failure("Fatal.InvalidOrder", &message);
            return ExitCode::from(exit::BAD_ORDER);
        }
    };
    let plain = plain_secrets_in_ecs(&|name| std::env::var(name).ok());
    if !plain.is_empty() {
        let message = format!(
            "{} set in the task's plain environment: in ECS the key and credentials come from Secrets Manager only (BACKUP_KEYRING_SECRET_ARN, DATABASE_SECRET_ARN, BACKUP_SCRATCH_DATABASE_SECRET_ARN); nothing ran",
            plain.join(", ")
        );
        tracing::error!(error = %message, "refused to start");
        print_failure("Fatal.Configuration", &message);
        return ExitCode::from(exit::CONFIGURATION);
    }
    // One async thread, as backupctl: the heavy work runs on blocking
    // threads, and the COPY streams' wake-ups stay on one thread (README
    // Performance).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            print_failure(
                "Fatal.Runtime",
                &format!("could not start the async runtime: {error}"),
            );
            return ExitCode::from(exit::FAILED);
        }
    };
    ExitCode::from(runtime.block_on(run(order)))
}

async fn run(order: Order) -> u8 {
    let started = std::time::Instant::now();
    // Listening from the start: a stop during the secrets' loading ends
    // the task before anything ran.
    let interrupt = Interrupt::new();
    tokio::spawn(stop_on_signals(interrupt.clone()));
    let mut environment = match Environment::load().await {
        Ok(environment) => environment,
        Err(error) => {
            backup_lambda::log_cold_start_failure(&error);
            let diagnostic = Diagnostic::from(error);
            print_failure(&diagnostic.error_type, &diagnostic.error_message);
            return if diagnostic.error_type.starts_with("Retryable.") {
                exit::RETRYABLE
            } else {
                exit::CONFIGURATION
            };
        }
    };
    environment.services.interrupt = interrupt.clone();
    environment.services.actor = format!(
        "task:{}",
        std::env::var("BACKUP_TASK_NAME").unwrap_or_else(|_| "backup-task".into())
    );
    if let Some(reason) = interrupt.reason() {
        let message = format!("stopped by {reason} before the operation started; nothing was changed");
        tracing::error!(error = %message, "interrupted");
        print_failure("Fatal.Interrupted", &message);
        return exit::INTERRUPTED;
    }
    tracing::info!(
        init_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        operation = ?order.operation,
        "settings, secrets and clients loaded"
    );
    let event = LambdaEvent::new(order.payload, context());
    let result = match order.operation {
        Operation::Create => handlers::create(&environment, event).await,
        Operation::Restore => handlers::restore(&environment, event).await,
        Operation::Verify => handlers::verify(&environment, event).await,
    };
    match result {
        Ok(value) => {
            println!("{value}");
            // A verification that ran and found the backup bad is the
            // handler's success but the task's failure, as for backupctl.
            if order.operation == Operation::Verify && verification_failed(&value) {
                tracing::error!(exit_code = exit::FAILED, "the backup failed verification");
                return exit::FAILED;
            }
            0
        }
        Err(error) => {
            let code = exit_code(&error);
            tracing::error!(error = %error.chain(), exit_code = code, "the operation failed");
            let diagnostic = Diagnostic::from(error);
            print_failure(&diagnostic.error_type, &diagnostic.error_message);
            code
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_order_comes_from_the_command_and_one_json_object() {
        // Given the operation alone, the payload is empty
        assert_eq!(
            parse_order(&args(&["create"]), None).unwrap(),
            Order {
                operation: Operation::Create,
                payload: json!({})
            }
        );
        // Given a console payload as the argument or in BACKUP_TASK_ORDER
        let payload = r#"{"backupId": "latest", "confirm": "carwash"}"#;
        let from_arg = parse_order(&args(&["restore", payload]), None).unwrap();
        let from_env = parse_order(&args(&["restore"]), Some(payload)).unwrap();
        assert_eq!(from_arg, from_env);
        assert_eq!(from_arg.payload["confirm"], "carwash");
        // An empty variable (a container override cleared) counts as none
        assert_eq!(
            parse_order(&args(&["verify"]), Some(" ")).unwrap().payload,
            json!({})
        );
        // Then everything else is refused with what was expected
        for (list, env, says) in [
            (&["prune"][..], None, "unknown operation"),
            (&[][..], None, "usage"),
            (&["create", "{"][..], None, "not JSON"),
            (&["create", "[1]"][..], None, "JSON object"),
            (&["create", "{}", "{}"][..], None, "one order at most"),
            (&["create", "{}"][..], Some("{}"), "give one"),
        ] {
            let error = parse_order(&args(list), env).unwrap_err();
            assert!(error.contains(says), "{list:?}: {error}");
        }
    }

    #[test]
    fn in_ecs_secrets_in_plain_environment_are_named_and_refused() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        // Outside ECS (a host, the tests) the plain variables are allowed, as for backupctl
        assert!(plain_secrets_in_ecs(&env(&[("BACKUP_ENCRYPTION_KEY", "00")])).is_empty());
        // In ECS they are named, never their values
        let named = plain_secrets_in_ecs(&env(&[
            ("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/x"),
            ("BACKUP_ENCRYPTION_KEY", "00"),
            ("DATABASE_URL", "postgres://u:pw@h/db"),
            ("BACKUP_KEYRING_SECRET_ARN", "arn:aws:secretsmanager:x"),
        ]));
        assert_eq!(named, vec!["BACKUP_ENCRYPTION_KEY", "DATABASE_URL"]);
    }

    #[test]
    fn exit_codes_tell_a_retry_that_may_help_from_one_that_cannot() {
        assert_eq!(
            exit_code(&HandlerError::InvalidEvent("x".into())),
            exit::BAD_ORDER
        );
        assert_eq!(exit_code(&HandlerError::Refused("x".into())), exit::REFUSED);
        assert_eq!(exit_code(&OperationError::NotConfirmed.into()), exit::REFUSED);
        assert_eq!(
            exit_code(&HandlerError::MetadataMissing("backup-1".into())),
            exit::RETRYABLE
        );
        assert_eq!(
            exit_code(&HandlerError::MalformedSecret {
                arn: "arn".into(),
                expected: "json"
            }),
            exit::CONFIGURATION
        );
        let damaged = backup_core::ContainerError::NotABackup;
        assert_eq!(
            exit_code(&OperationError::Container(damaged).into()),
            exit::FAILED
        );
    }

    #[test]
    fn a_failed_verification_is_a_failed_task() {
        assert!(verification_failed(&json!({"status": "failed"})));
        assert!(!verification_failed(&json!({"status": "passed"})));
        assert!(verification_failed(
            &json!({"reports": [{"status": "passed"}, {"status": "failed"}]})
        ));
        assert!(!verification_failed(&json!({"reports": [{"status": "passed"}]})));
    }
}

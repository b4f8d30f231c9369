//! template.yaml passes cfn-lint — on the file and, what AWS really
//! judges, on the template aws-sam-translator expands it into — and our own
//! checks for what cfn-lint misses (runtime, architecture, events); and each
//! of those judges fails on a template that gets it wrong. (IAM is proven by
//! running the functions: functions/common/tests/iam_enforced.rs.)
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn tool(name: &str) -> PathBuf {
    let python = PathBuf::from(integration_tests::python());
    python.parent().unwrap().join(name)
}

fn check(template: &Path) -> (bool, String) {
    let output = Command::new(integration_tests::python())
        .arg(repo().join("infra/check_template.py"))
        .arg(template)
        .output()
        .expect("the venv from infra/services.sh install");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[test]
fn the_template_passes_cfn_lint() {
    let output = Command::new(tool("cfn-lint"))
        .arg(repo().join("template.yaml"))
        .output()
        .expect("cfn-lint in the venv");
    assert!(
        output.status.success(),
        "cfn-lint: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `template` expanded by the SAM transform, then linted: (passed, report).
fn lint_expanded(template: &Path) -> (bool, String) {
    let expanded = tempfile::NamedTempFile::new().unwrap();
    let expansion = Command::new(integration_tests::python())
        .arg(repo().join("infra/expand_template.py"))
        .arg(template)
        .arg(expanded.path())
        .output()
        .unwrap();
    assert!(
        expansion.status.success(),
        "aws-sam-translator: {}",
        String::from_utf8_lossy(&expansion.stderr)
    );
    let output = Command::new(tool("cfn-lint"))
        .arg(expanded.path())
        .output()
        .expect("cfn-lint in the venv");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_template_expanded_by_the_sam_transform_passes_cfn_lint() {
    let (ok, report) = lint_expanded(&repo().join("template.yaml"));
    assert!(ok, "cfn-lint on the expanded template: {report}");
}

#[test]
fn a_dependency_cycle_in_the_expanded_template_is_caught() {
    // Given the verify function triggered by a direct S3 notification again
    // (the bucket then depends on the function, which depends on the bucket)
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    let from = "        NewBackupObject:\n          Type: EventBridgeRule\n          Properties:\n            Pattern:\n              source: [aws.s3]\n              detail-type: [Object Created]\n              detail:\n                bucket:\n                  name: [!Ref BackupBucket]\n                object:\n                  key: [{wildcard: \"*backups/*.backup\"}, {wildcard: \"*changes/*.segment\"}]\n";
    let to = "        NewBackupObject:\n          Type: S3\n          Properties:\n            Bucket: !Ref BackupBucket\n            Events: s3:ObjectCreated:*\n";
    assert!(original.contains(from), "the template's verify trigger changed");
    let broken = repo().join(format!(".template-cycle-{}.yaml", std::process::id()));
    std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
    // When it is expanded and linted
    let (ok, report) = lint_expanded(&broken);
    std::fs::remove_file(&broken).unwrap();
    // Then cfn-lint reports the cycle that would stop the deploy
    assert!(!ok && report.contains("E3004"), "{report}");
}

#[test]
fn the_template_passes_our_own_checks() {
    let (ok, report) = check(&repo().join("template.yaml"));
    assert!(ok, "{report}");
}

#[test]
fn our_checks_catch_what_cfn_lint_misses() {
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    for (what, from, to, says) in [
        (
            "runtime",
            "Runtime: provided.al2023",
            "Runtime: provided.al2",
            "Runtime must be provided.al2023",
        ),
        (
            "architecture",
            "Architectures: [arm64]",
            "Architectures: [x86_64]",
            "Architectures must be [arm64]",
        ),
        (
            "S3 event name",
            "detail-type: [Object Created]",
            "detail-type: [Object Create]",
            "detail-type Object Created",
        ),
        (
            "hourly schedule",
            "Schedule: rate(1 hour)",
            "Schedule: rate(6 hours)",
            "rate(1 hour) missing",
        ),
        (
            "hourly schedule without its retention class",
            "            Input: '{\"schedule\": \"hourly\"}'\n",
            "",
            "the hourly schedule must send Input",
        ),
        (
            "prune schedule ignores EnableAutoBackup",
            "            Description: Daily retention\n            State: !If [AutoBackupEnabled, ENABLED, DISABLED]\n",
            "            Description: Daily retention\n",
            "PruneFunction: schedules must follow EnableAutoBackup",
        ),
        (
            "two restores at once",
            "      # Never two restores into one database at once.\n      ReservedConcurrentExecutions: !If [ReservesConcurrency, 1, !Ref AWS::NoValue]\n",
            "",
            "RestoreFunction: ReservedConcurrentExecutions must be 1",
        ),
        (
            "binary",
            "Binary: verify",
            "Binary: verifier",
            "BuildProperties.Binary",
        ),
        (
            "an admin endpoint open to anyone",
            "        AuthType: AWS_IAM\n",
            "        AuthType: NONE\n",
            "must use AWS_IAM auth",
        ),
        (
            "MFA",
            "aws:MultiFactorAuthPresent: \"true\"",
            "aws:MultiFactorAuthPresent: \"false\"",
            "MultiFactorAuthPresent",
        ),
    ] {
        assert_caught(&original, what, from, to, says);
    }
}

/// A copy of the template with `from` replaced by `to` fails our checks,
/// with a report that `says` why.
fn assert_caught(original: &str, what: &str, from: &str, to: &str, says: &str) {
    assert!(
        original.contains(from),
        "{what}: the template no longer contains {from:?}"
    );
    // Beside the real one, so the checks can find functions/*/Cargo.toml.
    let broken = repo().join(format!(".template-check-{}.yaml", what.replace(' ', "-")));
    std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
    let (ok, report) = check(&broken);
    std::fs::remove_file(&broken).unwrap();
    assert!(!ok, "{what}: a broken template passed");
    assert!(report.contains(says), "{what}: {report}");
}

#[test]
fn our_checks_catch_a_template_that_fails_on_a_real_account() {
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    for (what, from, to, says) in [
        (
            "webhook URL shown in the console",
            "    NoEcho: true\n",
            "",
            "WebhookUrl must be NoEcho",
        ),
        (
            "rotate logs kept forever",
            "LogGroupName: !Sub \"/aws/lambda/${RotateKeyFunction}\"",
            "LogGroupName: !Sub \"/aws/lambda/${RotateKeyFunction}-old\"",
            "RotateKeyFunction: a log group",
        ),
        (
            "admin log group without the admin condition",
            "    Condition: AdminEndpointEnabled\n    Properties:\n      LogGroupName:",
            "    Properties:\n      LogGroupName:",
            "AdminFunction: a log group",
        ),
        (
            "no alarm on rotation errors",
            "Dimensions: [{Name: FunctionName, Value: !Ref RotateKeyFunction}]",
            "Dimensions: [{Name: FunctionName, Value: !Ref RestoreFunction}]",
            "RotateKeyFunction: an Errors alarm",
        ),
        (
            "rotation switched on before its log group exists",
            "DependsOn: [RotateKeyPermission, RotateKeyLogGroup]",
            "DependsOn: RotateKeyPermission",
            "must depend on RotateKeyLogGroup",
        ),
        (
            "a failed rotation alerts nobody",
            "eventName: [RotationFailed]",
            "eventName: [RotationSucceeded]",
            "RotationFailed to the AlertTopic",
        ),
        (
            "EventBridge may not publish to the alert topic",
            "Principal: {Service: events.amazonaws.com}",
            "Principal: {Service: sns.amazonaws.com}",
            "let events.amazonaws.com publish",
        ),
        (
            "admin function invocable directly, bypassing the URL's IAM auth",
            "            Condition:\n              Bool:\n                lambda:InvokedViaFunctionUrl: \"true\"\n",
            "",
            "through the Function URL only",
        ),
        (
            "a fixed reservation, refused on an account whose concurrency quota is 10",
            "ReservedConcurrentExecutions: !If [ReservesConcurrency, 1, !Ref AWS::NoValue]",
            "ReservedConcurrentExecutions: 1",
            "CreateFunction: ReservedConcurrentExecutions must be 1 (never two at once), following ReservedConcurrency",
        ),
        (
            "no-recent-backup alarm firing from the deploy on",
            "      TreatMissingData: missing\n      AlarmActions: [!Ref AlertTopic]\n      InsufficientDataActions: [!Ref AlertTopic]\n",
            "      TreatMissingData: breaching\n      AlarmActions: [!Ref AlertTopic]\n",
            "NoRecentBackupAlarm must not be in ALARM from the deploy",
        ),
        (
            "functions in a VPC with no route to S3",
            "Assert: !Not [!Contains [!Ref RouteTableIds, \"\"]]",
            "Assert: !Not [!Contains [!Ref SubnetIds, \"\"]]",
            "a template Rule must refuse CreateS3Endpoint=true in a VPC without RouteTableIds",
        ),
        (
            "scratch databases on the production server",
            "          BACKUP_SCRATCH_DATABASE_HOST: !Ref ScratchDatabaseHost\n",
            "          BACKUP_SCRATCH_DATABASE_HOST: !Ref DatabaseHost\n          DATABASE_HOST: !Ref DatabaseHost\n",
            "never the production DATABASE_HOST",
        ),
    ] {
        assert_caught(&original, what, from, to, says);
    }
}

#[test]
fn the_readme_deploy_command_survives_bash_history_expansion() {
    // Given the README's `sam deploy` command, as an operator pastes it into
    // an interactive bash (history expansion on), with `sam` standing in to
    // print the arguments it receives
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut command = Vec::new();
    for line in readme.lines().skip_while(|l| !l.starts_with("sam deploy ")) {
        command.push(line);
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    assert!(!command.is_empty(), "the README has no `sam deploy` command");
    let script = format!(
        "sam() {{ printf '%s\\n' \"$@\"; }}\n{}\nexit\n",
        command.join("\n")
    );
    // When bash runs it
    let mut bash = Command::new("bash")
        .args(["--norc", "--noprofile", "-i"])
        .env("HISTFILE", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    bash.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let output = bash.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    // Then `sam` gets the RDS-managed secret's ARN whole, `!db` included
    let arn = stdout
        .lines()
        .find_map(|arg| arg.strip_prefix("DatabaseSecretArn="))
        .unwrap_or_else(|| panic!("sam never ran or got no DatabaseSecretArn; bash said: {stderr}"));
    assert!(
        arn.starts_with("arn:aws:secretsmanager:") && arn.contains(":secret:rds!db-"),
        "{arn}"
    );
    assert!(!stderr.contains("event not found"), "{stderr}");
    assert!(
        stdout.lines().any(|arg| arg == "--parameter-overrides"),
        "{stdout}"
    );
}

#[test]
fn our_checks_catch_a_template_that_lets_a_bucket_writer_undo_an_erasure() {
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    for (what, from, to, says) in [
        (
            "a lifecycle rule without prefix expiring the hidden versions of erasure records",
            "          - Id: expire-pruned-backups\n            Status: Enabled\n            Prefix: backups/\n",
            "          - Id: expire-pruned-backups\n            Status: Enabled\n",
            "lifecycle rule expire-pruned-backups expires objects or versions, so it must name a prefix",
        ),
        (
            "a lifecycle rule expiring erasure records",
            "            Prefix: metadata/\n",
            "            Prefix: erasures/\n",
            "never one covering erasures/",
        ),
        (
            "a ledger head the verify role may write",
            "            - Sid: ReadKeyringAndLedgerHead\n              Effect: Allow\n              Action: secretsmanager:GetSecretValue\n",
            "            - Sid: ReadKeyringAndLedgerHead\n              Effect: Allow\n              Action: [secretsmanager:GetSecretValue, secretsmanager:PutSecretValue]\n",
            "VerifyFunction: only RestoreFunction may write LedgerHeadSecret",
        ),
        (
            "a restore function that does not anchor the ledger",
            "          DATABASE_SSL_ROOT_CERT: !Ref DatabaseSslRootCert\n          BACKUP_LEDGER_HEAD_SECRET_ARN: !Ref LedgerHeadSecret\n",
            "          DATABASE_SSL_ROOT_CERT: !Ref DatabaseSslRootCert\n",
            "RestoreFunction must have BACKUP_LEDGER_HEAD_SECRET_ARN",
        ),
    ] {
        assert_caught(&original, what, from, to, says);
    }
}

// ------------------------------------------------------------ Fargate engine
// The template with EnableFargate=true and BackupEngine=fargate, expanded by
// the SAM transform and "deployed" into moto with IAM enforced
// (infra/iam_emulation.py): the task role and the scheduler role hold what
// the task and EventBridge Scheduler need, and nothing more.

const TASK_IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/pgbackup:1";

/// The template with the Fargate engine chosen by default, as a deploy
/// with EnableFargate=true BackupEngine=fargate would see it.
fn fargate_defaults(template: &str) -> String {
    let mut out = template.to_owned();
    for (from, to) in [
        (
            "  EnableFargate:\n    Type: String\n    Default: \"false\"\n",
            "  EnableFargate:\n    Type: String\n    Default: \"true\"\n",
        ),
        (
            "  BackupEngine:\n    Type: String\n    Default: lambda\n",
            "  BackupEngine:\n    Type: String\n    Default: fargate\n",
        ),
    ] {
        assert!(out.contains(from), "the template's {from:?} changed");
        out = out.replacen(from, to, 1);
    }
    out
}

#[test]
fn the_template_with_the_fargate_engine_passes_cfn_lint_and_our_checks() {
    // Given the template with EnableFargate=true and BackupEngine=fargate
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    let path = repo().join(format!(".template-fargate-{}.yaml", std::process::id()));
    std::fs::write(&path, fargate_defaults(&original)).unwrap();
    // When it is expanded by the SAM transform and linted, and checked
    let (linted, lint_report) = lint_expanded(&path);
    let (checked, check_report) = check(&path);
    std::fs::remove_file(&path).unwrap();
    // Then both pass
    assert!(linted, "cfn-lint on the expanded Fargate template: {lint_report}");
    assert!(checked, "{check_report}");
}

#[test]
fn our_checks_catch_a_fargate_engine_that_would_fail_on_a_real_account() {
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    for (what, from, to, says) in [
        (
            "the scheduler may pass the task roles to any service",
            "                Resource: [!GetAtt BackupTaskRole.Arn, !GetAtt BackupTaskExecutionRole.Arn]\n                Condition:\n                  StringEquals:\n                    iam:PassedToService: ecs-tasks.amazonaws.com\n\n  # The create function's two schedules",
            "                Resource: [!GetAtt BackupTaskRole.Arn, !GetAtt BackupTaskExecutionRole.Arn]\n\n  # The create function's two schedules",
            "TaskSchedulerRole: iam:PassRole must be limited to iam:PassedToService ecs-tasks.amazonaws.com",
        ),
        (
            "both engines run the nightly backup",
            "            # Off when the Fargate task runs the schedules (BackupEngine=fargate).\n            State: !If [LambdaCreateScheduled, ENABLED, DISABLED]",
            "            State: !If [AutoBackupEnabled, ENABLED, DISABLED]",
            "CreateFunction: its schedules must be off when BackupEngine=fargate",
        ),
        (
            "a Fargate restore anyone may start without MFA",
            "          - Sid: StartRestoreWithMfa\n            Effect: Allow\n            Action: states:StartExecution\n            Resource: !Ref RestoreTaskStateMachine\n            Condition:\n              Bool:\n                aws:MultiFactorAuthPresent: \"true\"\n",
            "          - Sid: StartRestoreWithMfa\n            Effect: Allow\n            Action: states:StartExecution\n            Resource: !Ref RestoreTaskStateMachine\n",
            "RestoreTaskStartPolicy must require aws:MultiFactorAuthPresent",
        ),
        (
            "a failed task alerts nobody",
            "          lastStatus: [STOPPED]\n",
            "          lastStatus: [RUNNING]\n",
            "failed Fargate tasks (STOPPED, non-zero exit code) to the AlertTopic",
        ),
        (
            "task logs kept forever",
            "      LogGroupName: !Sub \"/aws/ecs/${AWS::StackName}/backup-task\"\n      RetentionInDays: !Ref LogRetentionDays\n",
            "      LogGroupName: !Sub \"/aws/ecs/${AWS::StackName}/backup-task\"\n",
            "BackupTaskLogGroup must keep its logs LogRetentionDays",
        ),
        (
            "a database password in the task definition",
            "            - {Name: DATABASE_SECRET_ARN, Value: !Ref DatabaseSecretArn}\n",
            "            - {Name: DATABASE_URL, Value: !Sub \"postgres://postgres:hunter2@${DatabaseHost}/app\"}\n",
            "BackupTaskDefinition: the database comes from DATABASE_SECRET_ARN",
        ),
        (
            "a Fargate engine deployed without an image",
            "      - Assert: !Not [!Equals [!Ref TaskImageUri, \"\"]]\n        AssertDescription: EnableFargate=true needs TaskImageUri (infra/publish-image.sh).\n",
            "",
            "a template Rule must refuse EnableFargate=true without VpcId, SubnetIds and TaskImageUri",
        ),
        (
            "the Fargate schedules chosen with the engine off",
            "      - Assert: !Equals [!Ref EnableFargate, \"true\"]\n",
            "      - Assert: !Equals [!Ref BackupEngine, fargate]\n",
            "a template Rule must refuse BackupEngine=fargate without EnableFargate=true",
        ),
        (
            "a task on x86 with no choice",
            "        CpuArchitecture: !Ref TaskCpuArchitecture\n",
            "        CpuArchitecture: X86_64\n",
            "RuntimePlatform must follow TaskCpuArchitecture",
        ),
    ] {
        assert_caught(&original, what, from, to, says);
    }
}

/// moto with IAM enforcement on a port of its own (its own process:
/// turning enforcement on must not disturb the other tests' moto).
struct IamEmulator {
    child: std::process::Child,
    endpoint: String,
}

impl IamEmulator {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(integration_tests::python())
            .arg(repo().join("infra/iam_emulation.py"))
            .args(["serve", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the venv from infra/services.sh install");
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, endpoint };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the IAM emulator did not start on {endpoint}");
    }

    /// `template` "deployed" with the Fargate engine: the provisioned stack
    /// as iam_emulation.py describes it.
    fn provision(&self, template: &Path, extra: serde_json::Value) -> serde_json::Value {
        let mut parameters = serde_json::json!({
            "keyring": "1111111111111111111111111111111111111111111111111111111111111111",
            "databaseSecret": serde_json::json!({"username": "postgres", "password": ""}).to_string(),
            "DatabaseHost": "127.0.0.1",
            "DatabaseName": "app",
            "EnableFargate": "true",
            "BackupEngine": "fargate",
            "TaskImageUri": TASK_IMAGE,
        });
        for (k, v) in extra.as_object().unwrap() {
            parameters[k] = v.clone();
        }
        let output = Command::new(integration_tests::python())
            .arg(repo().join("infra/iam_emulation.py"))
            .arg("provision")
            .arg(&self.endpoint)
            .arg(template)
            .arg(parameters.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "provision: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Each `[service, operation, params]` made with `user`'s keys (boto3):
    /// per call, whether it was allowed, and the answer or error code.
    fn attempt(
        &self,
        stack: &serde_json::Value,
        user: &str,
        calls: serde_json::Value,
    ) -> Vec<serde_json::Value> {
        let user = &stack["users"][user];
        let output = Command::new(integration_tests::python())
            .arg(repo().join("infra/iam_emulation.py"))
            .arg("attempt")
            .arg(&self.endpoint)
            .arg(user["accessKeyId"].as_str().unwrap())
            .arg(user["secretAccessKey"].as_str().unwrap())
            .arg(calls.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "attempt: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for IamEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The RunTask request EventBridge Scheduler makes for `schedule` (its
/// templated ECS target: EcsParameters, and the Input as the overrides).
fn run_task_of(stack: &serde_json::Value, schedule: &str) -> serde_json::Value {
    let target = &stack["fargate"]["schedules"][schedule]["Target"];
    let ecs = &target["EcsParameters"];
    let network = &ecs["NetworkConfiguration"]["AwsvpcConfiguration"];
    let overrides: serde_json::Value = serde_json::from_str(target["Input"].as_str().unwrap()).unwrap();
    serde_json::json!(["ecs", "run_task", {
        "cluster": target["Arn"],
        "taskDefinition": ecs["TaskDefinitionArn"],
        "launchType": ecs["LaunchType"],
        "count": ecs["TaskCount"],
        "networkConfiguration": {"awsvpcConfiguration": {
            "subnets": network["Subnets"],
            "securityGroups": network["SecurityGroups"],
            "assignPublicIp": network["AssignPublicIp"],
        }},
        "overrides": overrides,
    }])
}

fn allowed(answer: &serde_json::Value) -> bool {
    answer["allowed"] == true
}

#[test]
fn the_fargate_task_role_backs_up_and_restores_but_never_deletes() {
    // Given the stack deployed with the Fargate engine, IAM enforced
    let emulator = IamEmulator::start();
    let stack = emulator.provision(&repo().join("template.yaml"), serde_json::json!({}));
    let bucket = stack["bucket"].as_str().unwrap();
    let environment = &stack["users"]["task"]["environment"];
    // whose task definition carries the functions' contract, secrets by ARN
    // only, and one connection per vCPU of TaskCpu (2048: two)
    assert_eq!(environment["S3_BACKUP_BUCKET"], bucket);
    assert_eq!(environment["BACKUP_KEYRING_SECRET_ARN"], stack["keyringArn"]);
    assert_eq!(environment["DATABASE_SECRET_ARN"], stack["databaseArn"]);
    assert_eq!(
        environment["BACKUP_LEDGER_HEAD_SECRET_ARN"],
        stack["ledgerHeadArn"]
    );
    assert_eq!(environment["BACKUP_EXPORT_CONNECTIONS"], "2");
    assert_eq!(environment["BACKUP_RESTORE_CONNECTIONS"], "2");
    let container = &stack["fargate"]["container"];
    assert_eq!(container["image"], TASK_IMAGE);
    assert!(
        !container.to_string().contains("\"password\""),
        "a secret in the task definition: {container}"
    );

    // When the task, with its role, does what a create and a restore do
    let answers = emulator.attempt(
        &stack,
        "task",
        serde_json::json!([
            ["s3", "put_object", {"Bucket": bucket, "Key": "backups/20270101T000000Z.backup", "Body": "sealed"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "metadata/20270101T000000Z.json", "Body": "{}"}],
            ["s3", "get_object", {"Bucket": bucket, "Key": "backups/20270101T000000Z.backup"}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "metadata/"}],
            ["s3", "get_bucket_location", {"Bucket": bucket}],
            ["secretsmanager", "get_secret_value", {"SecretId": stack["keyringArn"]}],
            ["secretsmanager", "get_secret_value", {"SecretId": stack["databaseArn"]}],
            ["secretsmanager", "get_secret_value", {"SecretId": stack["ledgerHeadArn"]}],
        ]),
    );
    // Then every one is allowed
    for (i, answer) in answers.iter().enumerate() {
        assert!(allowed(answer), "task call {i} refused: {answer}");
    }

    // and what no backup or restore needs is refused
    let refused = emulator.attempt(
        &stack,
        "task",
        serde_json::json!([
            ["s3", "delete_object", {"Bucket": bucket, "Key": "backups/20270101T000000Z.backup"}],
            ["s3", "delete_object", {"Bucket": bucket, "Key": "metadata/20270101T000000Z.json"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "verification/20270101T000000Z.json", "Body": "{}"}],
            ["secretsmanager", "put_secret_value", {"SecretId": stack["keyringArn"], "SecretString": "forged"}],
            run_task_of(&stack, "TaskHourlySchedule"),
        ]),
    );
    for (i, answer) in refused.iter().enumerate() {
        assert!(!allowed(answer), "task call {i} allowed: {answer}");
        assert_eq!(answer["status"], 403, "{answer}");
    }
}

#[test]
fn the_scheduler_role_runs_the_backup_task_and_nothing_else() {
    // Given the stack deployed with BackupEngine=fargate, IAM enforced
    let emulator = IamEmulator::start();
    let stack = emulator.provision(&repo().join("template.yaml"), serde_json::json!({}));
    let fargate = &stack["fargate"];
    // the create function's schedules are off, the task's two are on
    for (rule, state) in fargate["lambdaCreateSchedules"].as_object().unwrap() {
        assert_eq!(state, "DISABLED", "{rule}: the Lambda create schedule still runs");
    }
    assert_eq!(fargate["lambdaCreateSchedules"].as_object().unwrap().len(), 2);
    let schedules = fargate["schedules"].as_object().unwrap();
    assert_eq!(schedules.len(), 2, "{schedules:?}");
    let expressions: Vec<_> = schedules
        .values()
        .map(|s| s["ScheduleExpression"].clone())
        .collect();
    assert!(
        expressions.contains(&serde_json::json!("cron(0 2 * * ? *)")),
        "{expressions:?}"
    );
    assert!(
        expressions.contains(&serde_json::json!("rate(1 hour)")),
        "{expressions:?}"
    );
    for schedule in schedules.values() {
        assert_eq!(schedule["State"], "ENABLED");
    }
    // and each orders a create marked with its schedule (kept by its retention)
    for (name, marked) in [
        ("TaskHourlySchedule", "hourly"),
        ("TaskNightlyFullSchedule", "nightly"),
    ] {
        let input: serde_json::Value =
            serde_json::from_str(schedules[name]["Target"]["Input"].as_str().unwrap()).unwrap();
        let order = &input["containerOverrides"][0];
        assert_eq!(order["command"], serde_json::json!(["create"]), "{name}");
        assert_eq!(order["environment"][0]["name"], "BACKUP_TASK_ORDER", "{name}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(order["environment"][0]["value"].as_str().unwrap())
                .unwrap(),
            serde_json::json!({ "schedule": marked }),
            "{name}"
        );
    }

    // When EventBridge Scheduler, with the scheduler role, starts each schedule's task
    let answers = emulator.attempt(
        &stack,
        "scheduler",
        serde_json::json!([
            run_task_of(&stack, "TaskNightlyFullSchedule"),
            run_task_of(&stack, "TaskHourlySchedule")
        ]),
    );
    // Then moto's ECS runs it (RunTask on the family, PassRole on both roles)
    for answer in &answers {
        assert!(allowed(answer), "RunTask refused: {answer}");
        let task = &answer["result"]["tasks"][0];
        assert_eq!(
            task["taskDefinitionArn"], fargate["taskDefinitionArn"],
            "{answer}"
        );
        assert_eq!(
            task["overrides"]["containerOverrides"][0]["command"],
            serde_json::json!(["create"])
        );
    }

    // and anything else is refused: the backups, the secrets, the functions,
    // another task definition
    let bucket = stack["bucket"].as_str().unwrap();
    let mut foreign = run_task_of(&stack, "TaskHourlySchedule");
    foreign[2]["taskDefinition"] = serde_json::json!("some-other-family:1");
    let refused = emulator.attempt(
        &stack,
        "scheduler",
        serde_json::json!([
            ["s3", "get_object", {"Bucket": bucket, "Key": "backups/20270101T000000Z.backup"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "backups/forged.backup", "Body": "x"}],
            ["secretsmanager", "get_secret_value", {"SecretId": stack["keyringArn"]}],
            ["lambda", "invoke", {"FunctionName": "pgbackup-CreateFunction"}],
            ["ecs", "register_task_definition", {"family": "pgbackup-backup-task", "containerDefinitions": [{"name": "x", "image": "evil", "memory": 512}]}],
            foreign,
        ]),
    );
    for (i, answer) in refused.iter().enumerate() {
        assert!(!allowed(answer), "scheduler call {i} allowed: {answer}");
        assert_eq!(answer["status"], 403, "{answer}");
    }
}

#[test]
fn with_the_lambda_engine_the_create_function_keeps_its_schedules() {
    // Given the stack deployed with EnableFargate=true but BackupEngine=lambda
    let emulator = IamEmulator::start();
    let stack = emulator.provision(
        &repo().join("template.yaml"),
        serde_json::json!({"BackupEngine": "lambda"}),
    );
    // Then the create function's schedules run, no task schedule exists,
    // and no scheduler role was made
    let fargate = &stack["fargate"];
    for (rule, state) in fargate["lambdaCreateSchedules"].as_object().unwrap() {
        assert_eq!(state, "ENABLED", "{rule}");
    }
    assert_eq!(fargate["schedules"], serde_json::json!({}));
    assert!(stack["users"].get("scheduler").is_none());
    // and the task definition (for console restores) is there
    assert!(
        fargate["taskDefinitionArn"]
            .as_str()
            .unwrap()
            .contains(":task-definition/")
    );
}

/// The emulation is a judge that can say no: a template missing a grant
/// the task or the scheduler needs fails here.
#[test]
fn a_fargate_template_missing_a_needed_permission_fails_the_emulation() {
    let emulator = IamEmulator::start();
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    for (what, from, to) in [
        (
            "the scheduler role without iam:PassRole",
            "              - Sid: PassTheTaskRolesToEcs\n                Effect: Allow\n                Action: iam:PassRole\n                Resource: [!GetAtt BackupTaskRole.Arn, !GetAtt BackupTaskExecutionRole.Arn]\n                Condition:\n                  StringEquals:\n                    iam:PassedToService: ecs-tasks.amazonaws.com\n\n  # The create function's two schedules",
            "\n  # The create function's two schedules",
        ),
        (
            "the scheduler role passing the roles to another service",
            "                    iam:PassedToService: ecs-tasks.amazonaws.com\n\n  # The create function's two schedules",
            "                    iam:PassedToService: lambda.amazonaws.com\n\n  # The create function's two schedules",
        ),
        (
            "the task role without s3:GetObject",
            "              - Sid: ReadBackups\n                Effect: Allow\n                Action: s3:GetObject\n",
            "              - Sid: ReadBackups\n                Effect: Allow\n                Action: s3:GetObjectTagging\n",
        ),
    ] {
        assert!(original.contains(from), "{what}: the template changed");
        let broken = repo().join(format!(".template-fargate-broken-{}.yaml", std::process::id()));
        std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
        let stack = emulator.provision(&broken, serde_json::json!({}));
        std::fs::remove_file(&broken).unwrap();
        let bucket = stack["bucket"].as_str().unwrap();
        let admin = emulator.attempt(
            &stack,
            "admin",
            serde_json::json!([["s3", "put_object", {"Bucket": bucket, "Key": "backups/b.backup", "Body": "x"}]]),
        );
        assert!(allowed(&admin[0]), "{admin:?}");
        let scheduler = emulator.attempt(
            &stack,
            "scheduler",
            serde_json::json!([run_task_of(&stack, "TaskHourlySchedule")]),
        );
        let task = emulator.attempt(
            &stack,
            "task",
            serde_json::json!([["s3", "get_object", {"Bucket": bucket, "Key": "backups/b.backup"}]]),
        );
        let refused = if what.starts_with("the scheduler") {
            &scheduler[0]
        } else {
            &task[0]
        };
        assert!(!allowed(refused), "{what}: still allowed: {refused}");
        assert_eq!(refused["status"], 403, "{what}: {refused}");
    }
}

// ------------------------------------------------------------ change capture
// The capture function (EnablePitr=true) with its template policy, IAM
// enforced: it writes segments under changes/ and reads the two secrets it
// needs; after a schema change it takes a base backup as create does; and
// nothing else (never a delete).

#[test]
fn the_capture_role_writes_change_segments_and_nothing_else() {
    // Given the stack deployed with EnablePitr=true, IAM enforced
    let emulator = IamEmulator::start();
    let stack = emulator.provision(
        &repo().join("template.yaml"),
        serde_json::json!({"EnableFargate": "false", "BackupEngine": "lambda", "EnablePitr": "true"}),
    );
    let bucket = stack["bucket"].as_str().unwrap();
    let environment = &stack["users"]["capture"]["environment"];
    // whose function gets the keyring and database secrets by ARN and sets
    // capture up on its first run
    assert_eq!(environment["BACKUP_KEYRING_SECRET_ARN"], stack["keyringArn"]);
    assert_eq!(environment["DATABASE_SECRET_ARN"], stack["databaseArn"]);
    assert_eq!(environment["PITR_ENABLE_ON_FIRST_RUN"], "true");
    let segment = "changes/0000000001948DF8-1765087200123.segment";
    let document = "changes/0000000001948DF8-1765087200123.json";

    // When the capture role reads what is not there yet (the first capture
    // before the first backup: no repository.json)
    let missing = emulator.attempt(
        &stack,
        "capture",
        serde_json::json!([
            ["s3", "get_object", {"Bucket": bucket, "Key": "repository.json"}],
            ["s3", "head_object", {"Bucket": bucket, "Key": document}],
        ]),
    );
    // Then S3 says "not found", as AWS says it only to a role that may
    // list the key (a 403 would fail the run instead of creating the
    // identity)
    for (i, answer) in missing.iter().enumerate() {
        assert_eq!(answer["status"], 404, "missing read {i}: {answer}");
    }

    // When the capture role does what a capture run does
    let answers = emulator.attempt(
        &stack,
        "capture",
        serde_json::json!([
            ["s3", "put_object", {"Bucket": bucket, "Key": "repository.json", "Body": "{}"}],
            ["s3", "get_object", {"Bucket": bucket, "Key": "repository.json"}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "metadata/"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": segment, "Body": "sealed"}],
            ["s3", "head_object", {"Bucket": bucket, "Key": segment}],
            ["s3", "put_object", {"Bucket": bucket, "Key": document, "Body": "{}"}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "changes/"}],
            ["s3", "get_object", {"Bucket": bucket, "Key": document}],
            ["secretsmanager", "get_secret_value", {"SecretId": stack["keyringArn"]}],
            ["secretsmanager", "get_secret_value", {"SecretId": stack["databaseArn"]}],
        ]),
    );
    // Then every one is allowed
    for (i, answer) in answers.iter().enumerate() {
        assert!(allowed(answer), "capture call {i} refused: {answer}");
    }

    // When a run finds the published tables' schema changed, it reads the
    // newest backups' metadata (the chain's base) and takes a base backup
    // as create does: object, metadata, audit record
    let admin = emulator.attempt(
        &stack,
        "admin",
        serde_json::json!([
            ["s3", "put_object", {"Bucket": bucket, "Key": "backups/b.backup", "Body": "x"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "metadata/b.json", "Body": "{}"}],
        ]),
    );
    assert!(admin.iter().all(allowed), "{admin:?}");
    let base_backup = emulator.attempt(
        &stack,
        "capture",
        serde_json::json!([
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "metadata/"}],
            ["s3", "get_object", {"Bucket": bucket, "Key": "metadata/b.json"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "backups/c.backup", "Body": "x"}],
            ["s3", "head_object", {"Bucket": bucket, "Key": "backups/c.backup"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "metadata/c.json", "Body": "{}"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "audit/2026/12/07/1-create-ab.json", "Body": "{}"}],
            ["s3", "get_bucket_location", {"Bucket": bucket}],
        ]),
    );
    // Then those are allowed too
    for (i, answer) in base_backup.iter().enumerate() {
        assert!(
            allowed(answer),
            "capture's base backup call {i} refused: {answer}"
        );
    }

    // and deletes, the rest of the bucket and the other secrets are refused
    let refused = emulator.attempt(
        &stack,
        "capture",
        serde_json::json!([
            ["s3", "delete_object", {"Bucket": bucket, "Key": "backups/b.backup"}],
            ["s3", "delete_object", {"Bucket": bucket, "Key": "metadata/b.json"}],
            ["s3", "delete_object", {"Bucket": bucket, "Key": segment}],
            ["s3", "get_object", {"Bucket": bucket, "Key": "audit/2026/12/07/1-create-ab.json"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "verification/forged.json", "Body": "{}"}],
            ["s3", "put_object", {"Bucket": bucket, "Key": "erasures/forged.json", "Body": "{}"}],
            ["secretsmanager", "get_secret_value", {"SecretId": stack["ledgerHeadArn"]}],
            ["secretsmanager", "put_secret_value", {"SecretId": stack["keyringArn"], "SecretString": "forged"}],
            // listing only where capture looks: not the backups, not the
            // rest of the bucket, not the whole bucket
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "backups/"}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "verification/"}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "audit/"}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "change"}],
            ["s3", "list_objects_v2", {"Bucket": bucket}],
            ["s3", "list_objects", {"Bucket": bucket}],
            ["s3", "list_object_versions", {"Bucket": bucket, "Prefix": "changes/"}],
            // and what is not there outside its prefixes stays unknown
            ["s3", "head_object", {"Bucket": bucket, "Key": "backups/none.backup"}],
        ]),
    );
    for (i, answer) in refused.iter().enumerate() {
        assert!(!allowed(answer), "capture call {i} allowed: {answer}");
        assert_eq!(answer["status"], 403, "{answer}");
    }

    // and the restore role reads the segments a restore to an instant replays
    let restore = emulator.attempt(
        &stack,
        "restore",
        serde_json::json!([["s3", "get_object", {"Bucket": bucket, "Key": document}]]),
    );
    assert!(allowed(&restore[0]), "{restore:?}");

    // and the verify role reads what verifying a new segment reads: its
    // document and object, the chain's documents, the identity and the
    // backups the chain starts from
    let verify = emulator.attempt(
        &stack,
        "verify",
        serde_json::json!([
            ["s3", "head_object", {"Bucket": bucket, "Key": document}],
            ["s3", "get_object", {"Bucket": bucket, "Key": document}],
            ["s3", "get_object", {"Bucket": bucket, "Key": segment}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "changes/"}],
            ["s3", "get_object", {"Bucket": bucket, "Key": "repository.json"}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "metadata/"}],
            ["s3", "get_object", {"Bucket": bucket, "Key": "metadata/b.json"}],
            ["s3", "list_objects_v2", {"Bucket": bucket, "Prefix": "verification/"}],
        ]),
    );
    for (i, answer) in verify.iter().enumerate() {
        assert!(allowed(answer), "verify call {i} refused: {answer}");
    }
}

/// The capture role's listing refusals are the s3:prefix condition's doing,
/// and the emulation evaluates it (moto alone ignores it: it lists the
/// whole bucket to any s3:ListBucket): without the condition the role
/// lists the backups; without repository.json in it, the first capture's
/// read of the missing identity is refused (403) instead of "not found".
#[test]
fn the_capture_roles_listing_limit_is_what_the_emulation_enforces() {
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    let condition = "              Condition:\n                StringLike:\n                  s3:prefix: [changes/*, metadata/*, repository.json]\n";
    assert!(
        original.contains(condition),
        "the capture role's listing condition changed"
    );
    let emulator = IamEmulator::start();
    for (what, to, call, status) in [
        (
            "no condition",
            "",
            serde_json::json!(["s3", "list_objects_v2", {"Prefix": "backups/"}]),
            200,
        ),
        (
            "no repository.json in it",
            "              Condition:\n                StringLike:\n                  s3:prefix: [changes/*, metadata/*]\n",
            serde_json::json!(["s3", "get_object", {"Key": "repository.json"}]),
            403,
        ),
    ] {
        // Given the capture role's condition changed
        let path = repo().join(format!(".template-capture-list-{}.yaml", std::process::id()));
        std::fs::write(&path, original.replacen(condition, to, 1)).unwrap();
        let stack = emulator.provision(
            &path,
            serde_json::json!({"EnableFargate": "false", "BackupEngine": "lambda", "EnablePitr": "true"}),
        );
        std::fs::remove_file(&path).unwrap();
        // When the capture role makes the call
        let mut call = call;
        call[2]["Bucket"] = stack["bucket"].clone();
        let answer = &emulator.attempt(&stack, "capture", serde_json::json!([call]))[0];
        // Then the answer is the one the condition prevented
        let got = if allowed(answer) {
            200
        } else {
            answer["status"].as_i64().unwrap()
        };
        assert_eq!(got, status, "{what}: {answer}");
    }
}

/// What EventBridge does with S3's "Object Created" events, by the rules
/// the expanded template creates (moto's pattern matcher, where `*`
/// crosses `/` as on AWS; iam_emulation.py route): every new backup and
/// every new change segment reaches verify; the documents written beside
/// them, verification records and the rest do not.
#[test]
fn new_backups_and_new_change_segments_reach_verify_and_nothing_else_does() {
    use backup_core::BackupId;
    use backup_core::changes::{Lsn, SegmentId};
    let backup = BackupId::new(chrono::Utc::now()).unwrap();
    let segment = SegmentId::new(Lsn(0x0194_8DF8), chrono::Utc::now());
    let keys = [
        (backup.object_key(), true),
        (segment.object_key(), true),
        (backup.metadata_key(), false),
        (format!("verification/{backup}.json"), false),
        (segment.metadata_key(), false),
        ("repository.json".to_owned(), false),
        (format!("audit/{backup}.json"), false),
        (format!("drills/{backup}.json"), false),
    ];
    // Given the template as deployed with EnablePitr=true
    // When S3 announces each new object
    let output = Command::new(integration_tests::python())
        .arg(repo().join("infra/iam_emulation.py"))
        .arg("route")
        .arg(repo().join("template.yaml"))
        .arg(serde_json::json!({"EnablePitr": "true"}).to_string())
        .arg(serde_json::json!(keys.iter().map(|(k, _)| k).collect::<Vec<_>>()).to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "route: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reached: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // Then only backups and segments reach verify
    for (key, verified) in &keys {
        let expected = if *verified {
            serde_json::json!(["verify"])
        } else {
            serde_json::json!([])
        };
        assert_eq!(reached[key.as_str()], expected, "{key}: {reached}");
    }
}

#[test]
fn the_template_with_pitr_enabled_passes_cfn_lint_after_the_transform() {
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    let from = "  EnablePitr:\n    Type: String\n    Default: \"false\"\n";
    assert!(original.contains(from), "the template's EnablePitr changed");
    let path = repo().join(format!(".template-pitr-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        original.replacen(
            from,
            "  EnablePitr:\n    Type: String\n    Default: \"true\"\n",
            1,
        ),
    )
    .unwrap();
    let (linted, report) = lint_expanded(&path);
    std::fs::remove_file(&path).unwrap();
    assert!(
        linted,
        "cfn-lint on the expanded template with EnablePitr=true: {report}"
    );
}

#[test]
fn our_checks_catch_a_capture_function_that_would_hurt() {
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    for (what, from, to, says) in [
        (
            "capture deployed without EnablePitr",
            "  CaptureFunction:\n    Type: AWS::Serverless::Function\n    Condition: PitrEnabled\n",
            "  CaptureFunction:\n    Type: AWS::Serverless::Function\n",
            "CaptureFunction must exist only when EnablePitr is true",
        ),
        (
            "capture every hour: an RPO of an hour",
            "            Schedule: rate(1 minute)\n",
            "            Schedule: rate(1 hour)\n",
            "rate(1 minute)",
        ),
        (
            "two readers of one slot",
            "      Timeout: 900\n      ReservedConcurrentExecutions: !If [ReservesConcurrency, 1, !Ref AWS::NoValue]\n",
            "      Timeout: 900\n",
            "CaptureFunction: ReservedConcurrentExecutions must be 1",
        ),
        (
            "a stopped capture that never alarms",
            "      Threshold: !Ref RpoAlarmSeconds\n      ComparisonOperator: GreaterThanThreshold\n      TreatMissingData: breaching\n",
            "      Threshold: !Ref RpoAlarmSeconds\n      ComparisonOperator: GreaterThanThreshold\n      TreatMissingData: notBreaching\n",
            "missing data as breaching",
        ),
        (
            "no alarm on the slot's lag",
            "      MetricName: SlotLagBytes\n",
            "      MetricName: SlotLagMegabytes\n",
            "an alarm on SlotLagBytes",
        ),
        (
            "capture logs kept forever",
            "      LogGroupName: !Sub \"/aws/lambda/${CaptureFunction}\"\n      RetentionInDays: !Ref LogRetentionDays\n",
            "      LogGroupName: !Sub \"/aws/lambda/${CaptureFunction}\"\n",
            "CaptureFunction: a log group",
        ),
    ] {
        assert_caught(&original, what, from, to, says);
    }
}

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
    let from = "        NewBackupObject:\n          Type: EventBridgeRule\n          Properties:\n            Pattern:\n              source: [aws.s3]\n              detail-type: [Object Created]\n              detail:\n                bucket:\n                  name: [!Ref BackupBucket]\n                object:\n                  key: [{wildcard: \"*backups/*.backup\"}]\n";
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

#!/usr/bin/env python3
"""Checks template.yaml for what cfn-lint does not: runtime, architecture,
build binaries, each function's events and schedules, the MFA restore
policy and the bucket's protections. IAM permissions are not judged here
by reading strings: functions/common/tests/iam_enforced.rs runs each
function with its expanded policy against moto with IAM enforced.

    .venv/bin/python infra/check_template.py template.yaml   (exit 0 when clean)
"""
import pathlib
import sys

from cfnlint.decode import cfn_yaml

FUNCTIONS = {"CreateFunction": "create", "PruneFunction": "prune", "VerifyFunction": "verify", "RestoreFunction": "restore",
             "RotateKeyFunction": "rotate", "AdminFunction": "admin"}


def main(path):
    repo = pathlib.Path(path).resolve().parent
    template = cfn_yaml.load(path)
    problems = []
    check = lambda ok, message: ok or problems.append(message)
    globals_ = template.get("Globals", {}).get("Function", {})
    resources = template["Resources"]

    for logical, binary in FUNCTIONS.items():
        function = resources.get(logical)
        if function is None:
            problems.append(f"{logical} is missing")
            continue
        props = function["Properties"]
        check(props.get("Runtime", globals_.get("Runtime")) == "provided.al2023", f"{logical}: Runtime must be provided.al2023")
        check(props.get("Architectures", globals_.get("Architectures")) == ["arm64"], f"{logical}: Architectures must be [arm64]")
        check(props.get("Handler", globals_.get("Handler")) == "bootstrap", f"{logical}: Handler must be bootstrap")
        metadata = function.get("Metadata", {})
        check(metadata.get("BuildMethod") == "rust-cargolambda", f"{logical}: BuildMethod must be rust-cargolambda")
        built = metadata.get("BuildProperties", {}).get("Binary")
        manifest = repo / "functions" / binary / "Cargo.toml"
        check(built == binary and manifest.exists() and f'name = "{binary}"' in manifest.read_text(),
              f"{logical}: BuildProperties.Binary must name the [[bin]] of functions/{binary}")

    events = lambda logical: resources[logical]["Properties"].get("Events", {})
    schedules = lambda logical: sorted(str(e["Properties"]["Schedule"]) for e in events(logical).values() if e["Type"] == "Schedule")
    check("cron(0 2 * * ? *)" in schedules("CreateFunction"), "create: nightly full backup cron(0 2 * * ? *) missing")
    check("rate(1 hour)" in schedules("CreateFunction"), "create: hourly backup rate(1 hour) missing (RPO 1 h)")
    for logical in FUNCTIONS:
        check(all("State" in e["Properties"] for e in events(logical).values() if e["Type"] == "Schedule"),
              f"{logical}: schedules must follow EnableAutoBackup (State)")
    check("cron(30 3 * * ? *)" in schedules("PruneFunction"), "prune: the daily retention schedule is missing")
    inputs = [str(e["Properties"].get("Input", "")) for e in events("PruneFunction").values() if e["Type"] == "Schedule"]
    check(any('"report": "audit"' in i for i in inputs), "prune: the quarterly audit report schedule is missing")
    # New backups reach verify through EventBridge (a direct S3 notification
    # makes a dependency cycle between the bucket and the function).
    s3_rules = [e["Properties"] for e in events("VerifyFunction").values() if e["Type"] == "EventBridgeRule"]
    check(len(s3_rules) == 1, "verify: one EventBridgeRule for new backup objects expected")
    for rule in s3_rules:
        pattern = rule.get("Pattern", {})
        check(pattern.get("source") == ["aws.s3"] and pattern.get("detail-type") == ["Object Created"],
              "verify: the rule must match source aws.s3, detail-type Object Created")
        detail = pattern.get("detail", {})
        check(detail.get("bucket", {}).get("name") == [{"Ref": "BackupBucket"}], "verify: the rule must watch BackupBucket")
        keys = [k.get("wildcard", "") for k in detail.get("object", {}).get("key", []) if isinstance(k, dict)]
        check(keys and all(k.endswith("backups/*.backup") for k in keys), "verify: the rule must match backups/*.backup keys")
    bucket_events = resources["BackupBucket"]["Properties"].get("NotificationConfiguration", {})
    check(bucket_events.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled") is True,
          "bucket: EventBridge notifications must be on (verify is triggered by them)")
    check(not events("RestoreFunction"), "restore: must have no events (console invoke only)")
    for logical in ("CreateFunction", "RestoreFunction"):
        check(resources[logical]["Properties"].get("ReservedConcurrentExecutions") == 1,
              f"{logical}: ReservedConcurrentExecutions must be 1 (never two at once)")

    rotation = [r["Properties"] for r in resources.values() if r.get("Type") == "AWS::SecretsManager::RotationSchedule"]
    check(len(rotation) == 1 and rotation[0].get("SecretId") == {"Ref": "KeyringSecret"}
          and rotation[0].get("RotationLambdaARN") == {"Fn::GetAtt": ["RotateKeyFunction", "Arn"]},
          "the keyring secret must be rotated by RotateKeyFunction (AWS::SecretsManager::RotationSchedule)")
    check(all(r.get("RotateImmediatelyOnUpdate") is False for r in rotation),
          "KeyringRotationSchedule: RotateImmediatelyOnUpdate must be false (no rotation at deploy time)")
    invoke = [r["Properties"] for r in resources.values() if r.get("Type") == "AWS::Lambda::Permission"
              and r["Properties"].get("Principal") == "secretsmanager.amazonaws.com"]
    check(len(invoke) == 1, "Secrets Manager must be allowed to invoke RotateKeyFunction")

    admin = resources.get("AdminFunction", {})
    check(admin.get("Condition") == "AdminEndpointEnabled", "AdminFunction must exist only when EnableAdminEndpoint is true")
    check(admin.get("Properties", {}).get("FunctionUrlConfig", {}).get("AuthType") == "AWS_IAM",
          "AdminFunction: the Function URL must use AWS_IAM auth, never NONE")

    mfa = resources.get("RestoreInvokePolicy", {}).get("Properties", {}).get("PolicyDocument", {}).get("Statement", [])
    check(any(s.get("Condition", {}).get("Bool", {}).get("aws:MultiFactorAuthPresent") == "true" for s in mfa),
          "RestoreInvokePolicy must require aws:MultiFactorAuthPresent")
    bucket = resources["BackupBucket"]["Properties"]
    check(bucket.get("VersioningConfiguration", {}).get("Status") == "Enabled", "bucket: versioning must be enabled")
    check(all(bucket.get("PublicAccessBlockConfiguration", {}).get(k) is True for k in
              ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")), "bucket: public access must be blocked")
    rules = bucket.get("LifecycleConfiguration", {}).get("Rules", [])
    check(any("AbortIncompleteMultipartUpload" in r for r in rules), "bucket: abort incomplete multipart uploads")

    for problem in problems:
        print(f"template check: {problem}")
    print(f"template check: {'ok' if not problems else str(len(problems)) + ' problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "template.yaml"))

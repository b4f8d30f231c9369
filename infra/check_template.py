#!/usr/bin/env python3
"""Checks template.yaml for what cfn-lint does not: runtime, architecture,
build binaries, each function's events and schedules, log groups and error
alarms, the rotation-failure alert, the MFA restore policy, the admin
endpoint's invoke policy, secret parameters and the bucket's protections. IAM permissions are not judged here
by reading strings: functions/common/tests/iam_enforced.rs runs each
function with its expanded policy against moto with IAM enforced.

    .venv/bin/python infra/check_template.py template.yaml   (exit 0 when clean)
"""
import json
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
    hourly = [e["Properties"] for e in events("CreateFunction").values()
              if e["Type"] == "Schedule" and str(e["Properties"]["Schedule"]) == "rate(1 hour)"]
    check(all(json.loads(str(h.get("Input", "{}"))) == {"schedule": "hourly"} for h in hourly),
          'create: the hourly schedule must send Input {"schedule": "hourly"} (else its backups are kept RetentionDays: ~24 full copies a day)')
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
    # One at a time, unless the account's concurrency quota cannot spare a
    # reservation (ReservedConcurrency=0): a fixed reservation fails the
    # deploy on such an account.
    reserved = template.get("Parameters", {}).get("ReservedConcurrency", {})
    check(str(reserved.get("Default")) == "1" and [str(v) for v in reserved.get("AllowedValues", [])] == ["0", "1"],
          "the ReservedConcurrency parameter (default 1, 0 = no reservation) is missing")
    for logical in ("CreateFunction", "RestoreFunction"):
        check(resources[logical]["Properties"].get("ReservedConcurrentExecutions")
              == {"Fn::If": ["ReservesConcurrency", 1, {"Ref": "AWS::NoValue"}]},
              f"{logical}: ReservedConcurrentExecutions must be 1 (never two at once), following ReservedConcurrency")

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

    # Every function keeps its logs for LogRetentionDays and alarms on errors.
    for logical in FUNCTIONS:
        condition = resources.get(logical, {}).get("Condition")
        groups = [name for name, r in resources.items() if r.get("Type") == "AWS::Logs::LogGroup"
                  and r["Properties"].get("LogGroupName") == {"Fn::Sub": f"/aws/lambda/${{{logical}}}"}]
        check(len(groups) == 1 and "RetentionInDays" in resources[groups[0]]["Properties"]
              and resources[groups[0]].get("Condition") == condition,
              f"{logical}: a log group /aws/lambda/${{{logical}}} with RetentionInDays (and the function's condition) is missing")
        errors = [r for r in resources.values() if r.get("Type") == "AWS::CloudWatch::Alarm"
                  and r["Properties"].get("Namespace") == "AWS/Lambda" and r["Properties"].get("MetricName") == "Errors"
                  and {"Name": "FunctionName", "Value": {"Ref": logical}} in r["Properties"].get("Dimensions", [])
                  and {"Ref": "AlertTopic"} in r["Properties"].get("AlarmActions", [])]
        check(len(errors) == 1, f"{logical}: an Errors alarm to the AlertTopic is missing")
    schedule = resources.get("KeyringRotationSchedule", {})
    depends = schedule.get("DependsOn", [])
    depends = [depends] if isinstance(depends, str) else depends
    check("RotateKeyLogGroup" in depends,
          "KeyringRotationSchedule must depend on RotateKeyLogGroup (its configuration test invokes the function at deploy time)")
    failed_rotation = [r["Properties"] for r in resources.values() if r.get("Type") == "AWS::Events::Rule"
                       and r["Properties"].get("EventPattern", {}).get("source") == ["aws.secretsmanager"]
                       and "RotationFailed" in r["Properties"]["EventPattern"].get("detail", {}).get("eventName", [])]
    check(len(failed_rotation) == 1 and any(t.get("Arn") == {"Ref": "AlertTopic"} for t in failed_rotation[0].get("Targets", [])),
          "an EventBridge rule sending Secrets Manager's RotationFailed to the AlertTopic is missing")
    topic_policies = [r["Properties"] for r in resources.values() if r.get("Type") == "AWS::SNS::TopicPolicy"
                      and {"Ref": "AlertTopic"} in r["Properties"].get("Topics", [])]
    publishers = {str(s.get("Principal", {}).get("Service")) for p in topic_policies
                  for s in p["PolicyDocument"]["Statement"] if s.get("Effect") == "Allow" and s.get("Action") == "sns:Publish"}
    for service in ("events.amazonaws.com", "cloudwatch.amazonaws.com"):
        check(service in publishers, f"AlertTopicPolicy must let {service} publish to the AlertTopic")

    # Functions in a VPC without a route to S3 would time out on every backup.
    s3_rules = [r for r in template.get("Rules", {}).values()
                if "CreateS3Endpoint" in str(r.get("RuleCondition"))
                and "RouteTableIds" in str([a.get("Assert") for a in r.get("Assertions", [])])]
    check(len(s3_rules) == 1, "a template Rule must refuse CreateS3Endpoint=true in a VPC without RouteTableIds")
    check(resources.get("S3GatewayEndpoint", {}).get("Condition") == "CreatesS3Endpoint"
          and resources.get("SecretsManagerEndpoint", {}).get("Condition") == "CreatesSecretsManagerEndpoint",
          "each VPC endpoint must follow its own flag (CreateS3Endpoint, CreateSecretsManagerEndpoint)")

    recent = resources.get("NoRecentBackupAlarm", {}).get("Properties", {})
    check(recent.get("TreatMissingData") == "missing" and {"Ref": "AlertTopic"} in recent.get("InsufficientDataActions", []),
          "NoRecentBackupAlarm must not be in ALARM from the deploy (TreatMissingData: missing) and must alert when backups stop (InsufficientDataActions)")

    parameters = template.get("Parameters", {})
    verify_env = resources["VerifyFunction"]["Properties"].get("Environment", {}).get("Variables", {})
    check("DATABASE_HOST" not in verify_env and verify_env.get("BACKUP_SCRATCH_DATABASE_HOST") == {"Ref": "ScratchDatabaseHost"},
          "VerifyFunction: the scratch server's host comes from ScratchDatabaseHost, never the production DATABASE_HOST")
    check(parameters.get("WebhookUrl", {}).get("NoEcho") is True,
          "WebhookUrl must be NoEcho (a webhook URL carries its credential)")

    invoke_admin = resources.get("AdminEndpointInvokePolicy", {}).get("Properties", {}).get("PolicyDocument", {}).get("Statement", [])
    actions = lambda s: s.get("Action") if isinstance(s.get("Action"), list) else [s.get("Action")]
    check(any("lambda:InvokeFunctionUrl" in actions(s) for s in invoke_admin),
          "AdminEndpointInvokePolicy must allow lambda:InvokeFunctionUrl")
    check(any("lambda:InvokeFunction" in actions(s)
              and s.get("Condition", {}).get("Bool", {}).get("lambda:InvokedViaFunctionUrl") == "true" for s in invoke_admin),
          "AdminEndpointInvokePolicy must allow lambda:InvokeFunction through the Function URL only (lambda:InvokedViaFunctionUrl)")

    mfa = resources.get("RestoreInvokePolicy", {}).get("Properties", {}).get("PolicyDocument", {}).get("Statement", [])
    check(any(s.get("Condition", {}).get("Bool", {}).get("aws:MultiFactorAuthPresent") == "true" for s in mfa),
          "RestoreInvokePolicy must require aws:MultiFactorAuthPresent")
    bucket = resources["BackupBucket"]["Properties"]
    check(bucket.get("VersioningConfiguration", {}).get("Status") == "Enabled", "bucket: versioning must be enabled")
    check(all(bucket.get("PublicAccessBlockConfiguration", {}).get(k) is True for k in
              ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")), "bucket: public access must be blocked")
    rules = bucket.get("LifecycleConfiguration", {}).get("Rules", [])
    check(any("AbortIncompleteMultipartUpload" in r for r in rules), "bucket: abort incomplete multipart uploads")

    # The erasure ledger: no lifecycle rule may expire erasures/ (nor the
    # hidden versions a deleted or overwritten record is restored from),
    # and only the restore role may write the ledger's head.
    for rule in rules:
        expires = any(k in rule for k in ("NoncurrentVersionExpiration", "NoncurrentVersionExpirationInDays",
                                           "ExpirationInDays", "ExpirationDate", "ExpiredObjectDeleteMarker"))
        prefix = rule.get("Prefix", rule.get("Filter", {}).get("Prefix", ""))
        check(not expires or (prefix and not "erasures/".startswith(prefix) and not "repository.json".startswith(prefix)),
              f"bucket: lifecycle rule {rule.get('Id')} expires objects or versions, so it must name a prefix, never one "
              "covering erasures/ or repository.json (a rule without one expires the hidden versions of erasure records)")

    def statements(logical):
        found = []
        for policy in resources.get(logical, {}).get("Properties", {}).get("Policies", []):
            if not isinstance(policy, dict):
                continue
            for statement in policy.get("Statement", []):
                if isinstance(statement, dict) and "Fn::If" in statement:
                    found += [b for b in statement["Fn::If"][1:] if isinstance(b, dict) and "Effect" in b]
                elif isinstance(statement, dict):
                    found.append(statement)
        return found

    def names(value):
        return value if isinstance(value, list) else [value]

    def writes_head(logical):
        return any(s.get("Effect") == "Allow"
                   and any(a in ("secretsmanager:PutSecretValue", "secretsmanager:*", "*") for a in names(s.get("Action")))
                   and any(r == {"Ref": "LedgerHeadSecret"} or r == "*" for r in names(s.get("Resource")))
                   for s in statements(logical))

    if "LedgerHeadSecret" in resources:
        for logical in FUNCTIONS:
            check(not writes_head(logical) or logical == "RestoreFunction",
                  f"{logical}: only RestoreFunction may write LedgerHeadSecret (a role that can also write the bucket could roll the ledger back)")
        check(writes_head("RestoreFunction"), "RestoreFunction must be allowed to write LedgerHeadSecret (it records erasures)")
        for logical in ("RestoreFunction", "VerifyFunction"):
            variables = resources[logical]["Properties"].get("Environment", {}).get("Variables", {})
            check(variables.get("BACKUP_LEDGER_HEAD_SECRET_ARN") == {"Ref": "LedgerHeadSecret"},
                  f"{logical} must have BACKUP_LEDGER_HEAD_SECRET_ARN: !Ref LedgerHeadSecret (else the ledger is not anchored)")
    else:
        problems.append("LedgerHeadSecret is missing (the erasure ledger's head)")

    for problem in problems:
        print(f"template check: {problem}")
    print(f"template check: {'ok' if not problems else str(len(problems)) + ' problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "template.yaml"))

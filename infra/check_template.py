#!/usr/bin/env python3
"""Checks template.yaml for what cfn-lint does not: runtime, architecture,
build binaries, each function's events and schedules, log groups and error
alarms, the rotation-failure alert, the MFA restore policy, the admin
endpoint's invoke policy, secret parameters, the bucket's protections and the
Fargate engine (task definition contract, schedules, PassRole conditions, MFA,
failed-task rule, the NearTimeout alarms). IAM permissions are not judged here
by reading strings: functions/common/tests/iam_enforced.rs runs each
function with its expanded policy against moto with IAM enforced.

    .venv/bin/python infra/check_template.py template.yaml   (exit 0 when clean)
"""
import json
import pathlib
import sys

from cfnlint.decode import cfn_yaml

FUNCTIONS = {"CreateFunction": "create", "PruneFunction": "prune", "VerifyFunction": "verify", "RestoreFunction": "restore",
             "RotateKeyFunction": "rotate", "AdminFunction": "admin", "CaptureFunction": "capture"}


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
        check(sorted(keys) == ["*backups/*.backup", "*changes/*.segment"],
              "verify: the rule must match backups/*.backup keys (new backups) and changes/*.segment keys (new change segments), nothing else")
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

    check_capture(template, resources, check)

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

    check_fargate(template, resources, check)

    for problem in problems:
        print(f"template check: {problem}")
    print(f"template check: {'ok' if not problems else str(len(problems)) + ' problem(s)'}")
    return 1 if problems else 0


def check_capture(template, resources, check):
    """The capture function (EnablePitr): only with the flag, every minute,
    one reader per slot, and alarms that see a stopped capture."""
    capture = resources.get("CaptureFunction", {})
    check(capture.get("Condition") == "PitrEnabled"
          and template.get("Conditions", {}).get("PitrEnabled") == {"Fn::Equals": [{"Ref": "EnablePitr"}, "true"]}
          and str(template.get("Parameters", {}).get("EnablePitr", {}).get("Default")) == "false",
          "CaptureFunction must exist only when EnablePitr is true (default false)")
    props = capture.get("Properties", {})
    schedules = [str(e["Properties"].get("Schedule")) for e in props.get("Events", {}).values() if e["Type"] == "Schedule"]
    check(schedules == ["rate(1 minute)"], "CaptureFunction: one schedule, rate(1 minute), expected")
    check(props.get("ReservedConcurrentExecutions") == {"Fn::If": ["ReservesConcurrency", 1, {"Ref": "AWS::NoValue"}]},
          "CaptureFunction: ReservedConcurrentExecutions must be 1 (one reader per slot), following ReservedConcurrency")
    check(props.get("Environment", {}).get("Variables", {}).get("PITR_ENABLE_ON_FIRST_RUN") == {"Ref": "EnablePitr"},
          "CaptureFunction: PITR_ENABLE_ON_FIRST_RUN must be EnablePitr (the first run sets capture up)")
    alarms = {r["Properties"].get("MetricName"): r for r in resources.values() if r.get("Type") == "AWS::CloudWatch::Alarm"
              and r["Properties"].get("Namespace") == "PgBackup"
              and {"Name": "Operation", "Value": "capture"} in r["Properties"].get("Dimensions", [])}
    for metric in ("SlotLagBytes", "OldestUncapturedCommitAgeSeconds", "CaptureFailures"):
        alarm = alarms.get(metric, {})
        check(alarm.get("Condition") == "PitrEnabled" and {"Ref": "AlertTopic"} in alarm.get("Properties", {}).get("AlarmActions", []),
              f"CaptureFunction: an alarm on {metric} to the AlertTopic (with the PitrEnabled condition) is missing")
    check(alarms.get("OldestUncapturedCommitAgeSeconds", {}).get("Properties", {}).get("TreatMissingData") == "breaching",
          "the RPO alarm must treat missing data as breaching (a capture that stopped reports nothing)")


def check_fargate(template, resources, check):
    """The Fargate engine (EnableFargate): what cfn-lint cannot know. Its
    IAM is proven under moto's emulation (tests/tests/template.rs)."""
    if "BackupTaskDefinition" not in resources:
        check(False, "BackupTaskDefinition is missing (the Fargate engine, EnableFargate)")
        return
    names = lambda value: value if isinstance(value, list) else [value]
    conditions = template.get("Conditions", {})
    for logical in ("BackupCluster", "BackupTaskDefinition", "BackupTaskRole", "BackupTaskExecutionRole",
                    "BackupTaskLogGroup", "RestoreTaskStateMachine", "RestoreTaskStartPolicy", "BackupTaskFailedRule"):
        check(resources.get(logical, {}).get("Condition") == "FargateEnabled",
              f"{logical} must exist only when EnableFargate is true (Condition FargateEnabled)")
    for logical in ("TaskSchedulerRole", "TaskNightlyFullSchedule", "TaskHourlySchedule"):
        check(resources.get(logical, {}).get("Condition") == "FargateEngine",
              f"{logical} must exist only when BackupEngine=fargate (Condition FargateEngine)")
    check("FargateEngine" in str(conditions.get("LambdaCreateScheduled")) and "AutoBackupEnabled" in str(conditions.get("LambdaCreateScheduled")),
          "the LambdaCreateScheduled condition must be AutoBackupEnabled and not FargateEngine")
    for name, event in resources["CreateFunction"]["Properties"].get("Events", {}).items():
        if event["Type"] == "Schedule":
            check(event["Properties"].get("State") == {"Fn::If": ["LambdaCreateScheduled", "ENABLED", "DISABLED"]},
                  f"CreateFunction: its schedules must be off when BackupEngine=fargate ({name}: State follows LambdaCreateScheduled)")

    # Fargate tasks need subnets (awsvpc) and an image: refused before
    # anything is created, not after the cluster is.
    rules = template.get("Rules", {})
    check(any("EnableFargate" in str(r.get("RuleCondition"))
              and all(k in str([a.get("Assert") for a in r.get("Assertions", [])]) for k in ("VpcId", "SubnetIds", "TaskImageUri"))
              for r in rules.values()),
          "a template Rule must refuse EnableFargate=true without VpcId, SubnetIds and TaskImageUri")
    check(any("BackupEngine" in str(r.get("RuleCondition"))
              and "EnableFargate" in str([a.get("Assert") for a in r.get("Assertions", [])])
              for r in rules.values()),
          "a template Rule must refuse BackupEngine=fargate without EnableFargate=true")
    definition = resources["BackupTaskDefinition"]["Properties"]
    check(definition.get("RequiresCompatibilities") == ["FARGATE"] and definition.get("NetworkMode") == "awsvpc",
          "BackupTaskDefinition: Fargate (RequiresCompatibilities [FARGATE], NetworkMode awsvpc)")
    check(definition.get("RuntimePlatform", {}).get("CpuArchitecture") == {"Ref": "TaskCpuArchitecture"},
          "BackupTaskDefinition: RuntimePlatform must follow TaskCpuArchitecture")
    check(definition.get("Cpu") == {"Ref": "TaskCpu"} and definition.get("Memory") == {"Ref": "TaskMemory"},
          "BackupTaskDefinition: Cpu and Memory must follow TaskCpu and TaskMemory")
    check(definition.get("TaskRoleArn") == {"Fn::GetAtt": ["BackupTaskRole", "Arn"]}
          and definition.get("ExecutionRoleArn") == {"Fn::GetAtt": ["BackupTaskExecutionRole", "Arn"]},
          "BackupTaskDefinition: the task role must be BackupTaskRole, the execution role BackupTaskExecutionRole")
    containers = definition.get("ContainerDefinitions", [])
    check(len(containers) == 1 and containers[0].get("Image") == {"Ref": "TaskImageUri"},
          "BackupTaskDefinition: one container, image TaskImageUri")
    container = containers[0] if containers else {}
    environment = {v.get("Name"): v.get("Value") for v in container.get("Environment", [])}
    # The functions' contract: the globals and the create function's
    # variables, the ledger head as the restore function has it.
    expected = dict(template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
    expected.update(resources["CreateFunction"]["Properties"].get("Environment", {}).get("Variables", {}))
    expected["BACKUP_LEDGER_HEAD_SECRET_ARN"] = {"Ref": "LedgerHeadSecret"}
    expected.pop("BACKUP_FUNCTION_TIMEOUT_SECONDS", None)  # a task has no timeout
    for name, value in expected.items():
        check(environment.get(name) == value, f"BackupTaskDefinition: {name} must be {value} as the functions have it")
    check(environment.get("DATABASE_SECRET_ARN") == {"Ref": "DatabaseSecretArn"}
          and not {"DATABASE_URL", "BACKUP_ENCRYPTION_KEY", "PGPASSWORD"} & set(environment)
          and "Secrets" not in container,
          "BackupTaskDefinition: the database comes from DATABASE_SECRET_ARN and the keyring from its ARN, read with the task role; never a URL, password or key in the task definition")
    for name in ("BACKUP_EXPORT_CONNECTIONS", "BACKUP_RESTORE_CONNECTIONS"):
        check(environment.get(name) == {"Fn::FindInMap": ["TaskConnections", {"Ref": "TaskCpu"}, "Connections"]},
              f"BackupTaskDefinition: {name} must follow the vCPUs (TaskConnections for TaskCpu)")
    cpus = [str(v) for v in template.get("Parameters", {}).get("TaskCpu", {}).get("AllowedValues", [])]
    mapping = template.get("Mappings", {}).get("TaskConnections", {})
    check(cpus and all(str(mapping.get(c, {}).get("Connections")) == str(max(1, int(c) // 1024)) for c in cpus),
          "Mappings.TaskConnections must give one connection per vCPU for every TaskCpu value")
    logs = container.get("LogConfiguration", {})
    check(logs.get("LogDriver") == "awslogs" and logs.get("Options", {}).get("awslogs-group") == {"Ref": "BackupTaskLogGroup"},
          "BackupTaskDefinition: logs must go to BackupTaskLogGroup (awslogs)")
    check("RetentionInDays" in resources.get("BackupTaskLogGroup", {}).get("Properties", {}),
          "BackupTaskLogGroup must keep its logs LogRetentionDays (RetentionInDays)")

    def role_statements(logical):
        found = []
        for policy in resources.get(logical, {}).get("Properties", {}).get("Policies", []):
            for statement in policy.get("PolicyDocument", {}).get("Statement", []):
                if "Fn::If" in statement:
                    found += [b for b in statement["Fn::If"][1:] if isinstance(b, dict) and "Effect" in b]
                else:
                    found.append(statement)
        return found

    for logical in ("TaskSchedulerRole", "RestoreTaskStateMachineRole"):
        passes = [s for s in role_statements(logical) if "iam:PassRole" in names(s.get("Action"))]
        check(passes and all(s.get("Condition", {}).get("StringEquals", {}).get("iam:PassedToService") == "ecs-tasks.amazonaws.com"
                             for s in passes),
              f"{logical}: iam:PassRole must be limited to iam:PassedToService ecs-tasks.amazonaws.com")
    task = role_statements("BackupTaskRole")
    check(not any(a.startswith("s3:Delete") or a in ("s3:*", "*") for s in task for a in names(s.get("Action"))),
          "BackupTaskRole must never delete a backup (no s3:Delete*)")

    schedules = {n: r["Properties"] for n, r in resources.items() if r.get("Type") == "AWS::Scheduler::Schedule"}
    expressions = sorted(str(s.get("ScheduleExpression")) for s in schedules.values())
    check(expressions == ["cron(0 2 * * ? *)", "rate(1 hour)"],
          "the Fargate engine's schedules must be the create function's: cron(0 2 * * ? *) and rate(1 hour)")
    for name, schedule in schedules.items():
        target = schedule.get("Target", {})
        check(target.get("Arn") == {"Fn::GetAtt": ["BackupCluster", "Arn"]}
              and target.get("EcsParameters", {}).get("TaskDefinitionArn") == {"Ref": "BackupTaskDefinition"},
              f"{name}: the target must run BackupTaskDefinition on BackupCluster")
        check("State" in schedule, f"{name}: must follow EnableAutoBackup (State)")
        try:
            order = json.loads(str(target.get("Input")))["containerOverrides"][0]
            check(order.get("command") == ["create"], f"{name}: the container command must be create")
            if str(schedule.get("ScheduleExpression")) == "rate(1 hour)":
                variables = {v["name"]: v["value"] for v in order.get("environment", [])}
                check(json.loads(variables.get("BACKUP_TASK_ORDER", "{}")) == {"schedule": "hourly"},
                      f"{name}: the hourly order must be {{\"schedule\": \"hourly\"}} (else its backups are kept RetentionDays)")
        except (ValueError, KeyError, IndexError, TypeError):
            check(False, f"{name}: Input must be the containerOverrides JSON")

    machine = resources.get("RestoreTaskStateMachine", {}).get("Properties", {})
    check(machine.get("StateMachineType") == "STANDARD" and "ecs:runTask.sync" in json.dumps(machine.get("Definition")),
          "RestoreTaskStateMachine: a Standard state machine running the task with ecs:runTask.sync")
    mfa = resources.get("RestoreTaskStartPolicy", {}).get("Properties", {}).get("PolicyDocument", {}).get("Statement", [])
    check(any(s.get("Effect") == "Allow" and s.get("Condition", {}).get("Bool", {}).get("aws:MultiFactorAuthPresent") == "true"
              for s in mfa) and all(s.get("Effect") != "Allow" or "Condition" in s for s in mfa),
          "RestoreTaskStartPolicy must require aws:MultiFactorAuthPresent")

    failed = [r["Properties"] for r in resources.values() if r.get("Type") == "AWS::Events::Rule"
              and r["Properties"].get("EventPattern", {}).get("detail-type") == ["ECS Task State Change"]]
    for operation in ("create", "verify"):
        check(any(r.get("Type") == "AWS::CloudWatch::Alarm" and r["Properties"].get("MetricName") == "NearTimeout"
                  and {"Name": "Operation", "Value": operation} in r["Properties"].get("Dimensions", [])
                  and {"Ref": "AlertTopic"} in r["Properties"].get("AlarmActions", []) for r in resources.values()),
              f"an alarm on NearTimeout ({operation}: switch to the Fargate engine) to the AlertTopic is missing")
    check(resources["CreateFunction"]["Properties"].get("Environment", {}).get("Variables", {})
          .get("BACKUP_FUNCTION_TIMEOUT_SECONDS") == {"Ref": "CreateTimeout"},
          "CreateFunction: BACKUP_FUNCTION_TIMEOUT_SECONDS must be CreateTimeout (the 60 % warning)")
    check(resources["VerifyFunction"]["Properties"].get("Environment", {}).get("Variables", {})
          .get("BACKUP_RESTORE_TIMEOUT_SECONDS") == {"Ref": "RestoreTimeout"},
          "VerifyFunction: BACKUP_RESTORE_TIMEOUT_SECONDS must be RestoreTimeout (the 60 % warning)")
    check(len(failed) == 1
          and failed[0]["EventPattern"].get("detail", {}).get("lastStatus") == ["STOPPED"]
          and "exitCode" in json.dumps(failed[0]["EventPattern"])
          and any(t.get("Arn") == {"Ref": "AlertTopic"} for t in failed[0].get("Targets", [])),
          "an EventBridge rule sending failed Fargate tasks (STOPPED, non-zero exit code) to the AlertTopic is missing")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "template.yaml"))

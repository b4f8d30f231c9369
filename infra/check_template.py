#!/usr/bin/env python3
"""Checks template.yaml for what cfn-lint does not: runtime, architecture,
build binaries, each function's events and its least-privilege policies.

    .venv/bin/python infra/check_template.py template.yaml   (exit 0 when clean)
"""
import pathlib
import re
import sys

from cfnlint.decode import cfn_yaml

VALID_S3_EVENTS = {
    "s3:ObjectCreated:*", "s3:ObjectCreated:Put", "s3:ObjectCreated:Post", "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
}
FUNCTIONS = {"CreateFunction": "create", "PruneFunction": "prune", "VerifyFunction": "verify", "RestoreFunction": "restore"}


def statements(function):
    for policy in function["Properties"].get("Policies", []):
        for statement in policy.get("Statement", []) if isinstance(policy, dict) else []:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            yield statement["Effect"], actions, [str(r) for r in resources]


def allowed(function, action_prefix):
    return [(a, r) for effect, actions, resources in statements(function) if effect == "Allow"
            for a in actions if a.startswith(action_prefix) for r in resources]


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
    check(all("State" in e["Properties"] for e in events("CreateFunction").values()),
          "create: schedules must follow EnableAutoBackup (State)")
    check(len(schedules("PruneFunction")) == 1, "prune: one daily schedule expected")
    s3_events = [e["Properties"] for e in events("VerifyFunction").values() if e["Type"] == "S3"]
    check(len(s3_events) == 1, "verify: one S3 event expected")
    for s3 in s3_events:
        names = s3["Events"] if isinstance(s3["Events"], list) else [s3["Events"]]
        check(all(n in VALID_S3_EVENTS for n in names), f"verify: {names} are not S3 ObjectCreated event names")
        rules = {r["Name"]: r["Value"] for r in s3.get("Filter", {}).get("S3Key", {}).get("Rules", [])}
        check(rules == {"prefix": "backups/", "suffix": ".backup"}, "verify: S3 filter must be backups/*.backup")
        check(s3["Bucket"] == {"Ref": "BackupBucket"}, "verify: S3 event must watch BackupBucket")
    check(not events("RestoreFunction"), "restore: must have no events (console invoke only)")

    create, prune, verify, restore = (resources[k] for k in FUNCTIONS)
    check(not allowed(create, "s3:Delete"), "create: must not delete")
    check(not allowed(create, "s3:GetObject"), "create: needs no reads")
    check(not allowed(prune, "secretsmanager:"), "prune: must not read secrets")
    check(not any("/backups/" in r for a, r in allowed(prune, "s3:GetObject")), "prune: must not read backup contents")
    check(all(re.search(r"/(verification|audit)/", r) for a, r in allowed(verify, "s3:PutObject")),
          "verify: may write verification records and audit only")
    check(not allowed(verify, "s3:Delete") and not allowed(restore, "s3:Delete"), "verify/restore: must not delete")
    for logical in ("CreateFunction", "VerifyFunction", "RestoreFunction"):
        check(allowed(resources[logical], "secretsmanager:GetSecretValue"), f"{logical}: needs the keyring secret")
    for logical, function in zip(FUNCTIONS, (create, prune, verify, restore)):
        check(not any(a.endswith("*") and ":" in a and a.split(":")[1] == "*" for a in
                      [a for _, acts, _ in statements(function) for a in acts]), f"{logical}: no service-wide wildcard actions")

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

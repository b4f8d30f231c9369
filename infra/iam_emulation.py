#!/usr/bin/env python3
"""IAM as AWS would check it, emulated with moto, for tests/iam_enforced.rs.

    iam_emulation.py serve PORT
        moto's server (S3, Secrets Manager, IAM) with gaps in its IAM
        emulation closed, so what AWS refuses is refused here too:
          - Secrets Manager requests are authorized against the secret's ARN
            (moto checks them against "*", so a policy naming the secret
            would never match);
          - S3 PutObjectRetention (`PUT ?retention`) and writes that carry
            Object Lock headers need s3:PutObjectRetention, as on AWS (moto
            maps both to PutObject only);
          - s3:ListBucket limited by an s3:prefix condition lists only
            there, and a read of a missing key answers 404 only to a caller
            who may list that key, 403 to others, as on AWS (moto ignores
            the condition and always answers 404).
        IAM is enforced from the moment `provision` turns it on.
        With PGBACKUP_LAMBDA_BRIDGE=URL in its environment, Secrets Manager's
        RotateSecret reaches the rotation function as on AWS: every invocation
        of a Lambda function moto does not hold is POSTed to URL (the test
        process, which runs our handler there with the rotate function's
        policy and environment), a function error fails the RotateSecret call,
        and after a configuration test (RotateImmediately=false) the pending
        copy it tested is removed again, as AWS removes it.

    iam_emulation.py provision ENDPOINT TEMPLATE PARAMETERS_JSON
        Expands TEMPLATE with aws-sam-translator, creates the bucket and the
        two secrets, resolves each function role's inline policies and its
        environment from the expanded template (Ref, Fn::Sub, Fn::GetAtt,
        Fn::If with the template's own conditions) and creates one IAM user
        per function with exactly those policies. Prints JSON: bucket,
        secret ARNs, and each function's access key, policies and
        environment. Then turns IAM enforcement on.
        With EnableFargate=true: a VPC and subnets in moto's EC2, the task
        and execution roles, the cluster and the task definition registered
        in moto's ECS from the template, and users "task" (the task role;
        the container's environment) and "scheduler" (the scheduler role);
        "fargate" in the JSON holds the resolved schedules and the create
        function's schedule states. ECS RunTask is authorized as on AWS:
        ecs:RunTask on the task definition's ARN and iam:PassRole on its two
        roles with iam:PassedToService=ecs-tasks.amazonaws.com.

    iam_emulation.py route TEMPLATE PARAMETERS_JSON KEYS_JSON
        Expands TEMPLATE and, for each key, the S3 "Object Created" event
        EventBridge receives when an object is stored under it (the shape of
        events/s3-object-created.json) is matched against every
        AWS::Events::Rule the expanded template creates, by moto's
        EventBridge pattern matcher (wildcards as AWS reads them: `*` also
        crosses `/`). Prints JSON: per key, the functions it reaches.

    iam_emulation.py attempt ENDPOINT ACCESS_KEY SECRET_KEY CALLS_JSON
        Makes each [service, operation, params] call with boto3 and these
        keys; prints, per call, whether it was allowed.

AWS managed policies the roles also get (logs, X-Ray, VPC networking)
grant nothing on S3 or Secrets Manager and are left out.
"""
import json
import os
import re
import sys
import urllib.error
import urllib.request

ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTIONS = {"create": "CreateFunction", "prune": "PruneFunction", "verify": "VerifyFunction", "restore": "RestoreFunction",
             "rotate": "RotateKeyFunction", "endpoint": "AdminFunction", "capture": "CaptureFunction"}


# ------------------------------------------------------------------- serve
def serve(port):
    from moto.s3 import responses as s3_responses
    from moto.secretsmanager.responses import SecretsManagerResponse

    s3_responses.ACTION_MAP["KEY"]["PUT"]["retention"] = "PutObjectRetention"
    s3_responses.ACTION_MAP["KEY"]["PUT"]["legal-hold"] = "PutObjectLegalHold"
    s3_responses.ACTION_MAP["KEY"]["GET"]["retention"] = "GetObjectRetention"

    original = s3_responses.S3Response._authenticate_and_authorize_s3_action

    def authorize_with_lock_headers(self, bucket_name=None, key_name=None):
        original(self, bucket_name=bucket_name, key_name=key_name)
        headers = {k.lower() for k in self.headers.keys()}
        if self.data.get("Action") == "PutObject" and (
            "x-amz-object-lock-mode" in headers or "x-amz-object-lock-retain-until-date" in headers
        ):
            self.data["Action"] = "PutObjectRetention"
            try:
                original(self, bucket_name=bucket_name, key_name=key_name)
            finally:
                self.data["Action"] = "PutObject"

    s3_responses.S3Response._authenticate_and_authorize_s3_action = authorize_with_lock_headers
    authorize_s3_prefix_as_aws_does()

    def secret_resource(self):
        secret_id = self._get_param("SecretId")
        if not secret_id:
            return "*"
        if secret_id.startswith("arn:"):
            return secret_id
        try:
            return self.backend.secrets[secret_id].arn
        except Exception:  # an unknown name: let the action fail as moto does
            return f"arn:aws:secretsmanager:{self.region}:{self.current_account}:secret:{secret_id}"

    SecretsManagerResponse._determine_resource = secret_resource
    authorize_ecs_run_task_as_aws_does()

    bridge = os.environ.get("PGBACKUP_LAMBDA_BRIDGE")
    if bridge:
        bridge_lambda_invocations(bridge)

    from moto.server import main

    main(["-H", "127.0.0.1", "-p", str(port)])


def authorize_s3_prefix_as_aws_does():
    """s3:prefix as AWS evaluates it; moto passes S3 no condition keys and
    ignores StringLike, so a ListBucket limited to a prefix would list the
    whole bucket here:
      - ListBucket and ListBucketVersions are checked with the request's
        prefix as s3:prefix (absent when the request names none);
      - a GetObject or HeadObject of a key that does not exist answers 404
        only when s3:ListBucket is allowed with s3:prefix = that key, and
        403 AccessDenied otherwise, as AWS answers (a caller who may not
        list there must not learn what does not exist)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.access_control import IAMPolicy, S3IAMRequest
    from moto.s3 import responses as s3_responses

    original = s3_responses.S3Response._authenticate_and_authorize_s3_action

    def check(self, action, resource, context):
        request = S3IAMRequest(account_id=self.current_account, method=self.method, path=self.raw_path,
                               data=self.data, body=self.raw_body, headers=self.headers, action=action)
        documents = [IAMPolicy(p)._policy_json for p in request._access_key.collect_policies()]
        if not policies_allow(documents, f"s3:{action}", resource, context):
            request._raise_access_denied()

    def authorize(self, bucket_name=None, key_name=None):
        enforced = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
        original(self, bucket_name=bucket_name, key_name=key_name)
        action = self.data.get("Action")
        if not enforced or not bucket_name:
            return
        bucket = f"arn:aws:s3:::{bucket_name}"
        if key_name is None and action in ("ListBucket", "ListBucketVersions"):
            prefix = self.querystring.get("prefix", [None])[0]
            check(self, action, bucket, {} if prefix is None else {"s3:prefix": prefix})
        elif key_name and action == "GetObject" and "versionId" not in self.querystring:
            try:
                missing = self.backend.get_object(bucket_name, key_name) is None
            except Exception:  # no such bucket: moto answers that itself
                missing = False
            if missing:
                check(self, "ListBucket", bucket, {"s3:prefix": key_name})

    s3_responses.S3Response._authenticate_and_authorize_s3_action = authorize


def like(pattern, value, ignore_case=False):
    """IAM's wildcard match: `*` any run of characters (`/` included), `?` one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


STRING_OPERATORS = {
    "StringEquals": lambda expected, actual: expected == actual,
    "StringLike": like,
}


def conditions_hold(conditions, context):
    """A statement's Condition block against the request's context keys:
    every operator and key must hold (AND), any listed value may match (OR).
    A key the request lacks fails a positive operator and satisfies a
    negated one (StringNot…) or an …IfExists one, as AWS documents."""
    context = {k.lower(): v for k, v in context.items()}
    for operator, keys in conditions.items():
        base = operator.removesuffix("IfExists")
        negated = base.startswith("StringNot")
        compare = STRING_OPERATORS.get(base.replace("StringNot", "String"))
        if compare is None:
            raise ValueError(f"the IAM emulation does not evaluate the condition operator {operator}")
        for key, expected in keys.items():
            expected = expected if isinstance(expected, list) else [expected]
            if key.lower() not in context:
                if negated or operator.endswith("IfExists"):
                    continue
                return False
            hit = any(compare(str(e), context[key.lower()]) for e in expected)
            if hit == negated:
                return False
    return True


def policies_allow(documents, action, resource, context):
    """IAM's verdict over identity policies: an explicit Deny wins, else
    some Allow must apply (its action, resource and conditions)."""
    allowed = False
    for document in documents:
        statements = document.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            listed = lambda name: (lambda v: v if isinstance(v, list) else [v])(statement.get(name, "*"))
            if "Action" in statement:
                concerned = any(like(a, action, ignore_case=True) for a in listed("Action"))
            else:
                concerned = not any(like(a, action, ignore_case=True) for a in listed("NotAction"))
            if not concerned or not any(like(r, resource) for r in listed("Resource")):
                continue
            if not conditions_hold(statement.get("Condition", {}), context):
                continue
            if statement.get("Effect") == "Deny":
                return False
            allowed = True
    return allowed


def authorize_ecs_run_task_as_aws_does():
    """ECS RunTask as AWS authorizes it: ecs:RunTask against the task
    definition's ARN (moto checks "*", which a policy naming the family
    never matches), and iam:PassRole on the task definition's task and
    execution roles, with iam:PassedToService = ecs-tasks.amazonaws.com
    (moto checks no PassRole at all)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.ecs.responses import EC2ContainerServiceResponse
    from moto.iam.access_control import IAMPolicy, IAMRequest, PermissionResult

    def task_definition(self):
        try:
            return self.ecs_backend.describe_task_definition(self._get_param("taskDefinition"))
        except Exception:  # unknown: let RunTask fail as moto does
            return None

    def ecs_resource(self):
        if self._get_action() == "RunTask":
            found = task_definition(self)
            if found is not None:
                return found.arn
            name = str(self._get_param("taskDefinition") or "*").split("/")[-1]
            return f"arn:aws:ecs:{self.region}:{self.current_account}:task-definition/{name}"
        return "*"

    original = EC2ContainerServiceResponse._authenticate_and_authorize_normal_action

    def authorize(self, resource="*"):
        enforced = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
        original(self, resource)
        if not enforced or self._get_action() != "RunTask":
            return
        found = task_definition(self)
        roles = [getattr(found, a, None) for a in ("task_role_arn", "execution_role_arn")] if found else []
        request = IAMRequest(account_id=self.current_account, method=self.method, path=self.raw_path, data=self.data,
                             body=self.raw_body, headers=self.headers, action="PassRole")
        policies = request._access_key.collect_policies()
        for role in filter(None, roles):
            results = [IAMPolicy(p).is_action_permitted("iam:PassRole", role, None,
                                                        {"iam:PassedToService": "ecs-tasks.amazonaws.com"})
                       for p in policies]
            if PermissionResult.DENIED in results or PermissionResult.PERMITTED not in results:
                request._raise_access_denied()

    EC2ContainerServiceResponse._determine_resource = ecs_resource
    EC2ContainerServiceResponse._authenticate_and_authorize_normal_action = authorize


def bridge_lambda_invocations(bridge):
    """Lambda invocations moto cannot run (it would look for the function in
    its own Lambda and run it in Docker) go to `bridge`, as Secrets Manager's
    RotateSecret makes them: {"Step", "SecretId", "ClientRequestToken"}."""
    from moto.awslambda.exceptions import UnknownFunctionException
    from moto.awslambda.models import LambdaBackend
    from moto.secretsmanager.exceptions import InvalidRequestException
    from moto.secretsmanager.models import SecretsManagerBackend

    class BridgedFunction:
        def __init__(self, arn):
            self.function_arn = arn

    original_get = LambdaBackend.get_function
    original_invoke = LambdaBackend.invoke

    def get_function(self, function_name_or_arn, qualifier=None):
        try:
            return original_get(self, function_name_or_arn, qualifier)
        except UnknownFunctionException:
            if str(function_name_or_arn).startswith("arn:aws:lambda:"):
                return BridgedFunction(function_name_or_arn)
            raise

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        try:
            original_get(self, function_name, qualifier)
        except UnknownFunctionException:
            request = urllib.request.Request(bridge, data=body.encode() if isinstance(body, str) else body,
                                             method="POST", headers={"Content-Type": "application/json",
                                                                     "X-Function-Arn": function_name})
            try:
                with urllib.request.urlopen(request, timeout=120) as answer:
                    return answer.read()
            except urllib.error.HTTPError as failed:
                step = json.loads(body).get("Step", "?") if isinstance(body, str) else "?"
                raise InvalidRequestException(
                    f"the rotation function {function_name} failed its {step} step: {failed.read().decode(errors='replace')}")
        return original_invoke(self, function_name, qualifier, body, headers, response_headers)

    LambdaBackend.get_function = get_function
    LambdaBackend.invoke = invoke

    original_rotate = SecretsManagerBackend.rotate_secret

    def rotate_secret(self, secret_id, client_request_token=None, rotation_lambda_arn=None, rotation_rules=None,
                      rotate_immediately=True):
        try:
            return original_rotate(self, secret_id, client_request_token=client_request_token,
                                   rotation_lambda_arn=rotation_lambda_arn, rotation_rules=rotation_rules,
                                   rotate_immediately=rotate_immediately)
        finally:
            secret = self.secrets.get(secret_id)
            if secret is not None and not rotate_immediately and getattr(secret, "rotation_lambda_arn", ""):
                # AWS: "The test creates an AWSPENDING version of the secret and then removes it."
                for version_id, version in list(secret.versions.items()):
                    if version.get("version_stages") == ["AWSPENDING"]:
                        del secret.versions[version_id]

    SecretsManagerBackend.rotate_secret = rotate_secret


# ------------------------------------------------------------ the template
NO_VALUE = object()


class Resolver:
    def __init__(self, template, parameters, physical):
        self.template = template
        self.physical = physical
        self.parameters = {}
        for name, spec in template.get("Parameters", {}).items():
            value = parameters.get(name, spec.get("Default"))
            if spec.get("Type") == "CommaDelimitedList":
                value = value if isinstance(value, list) else [v for v in str(value or "").split(",")]
            self.parameters[name] = value
        self.conditions = {}

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = self.truth(self.template["Conditions"][name])
        return self.conditions[name]

    def truth(self, node):
        (fn, args), = node.items()
        if fn == "Fn::Equals":
            return self.resolve(args[0]) == self.resolve(args[1])
        if fn == "Fn::Not":
            return not self.truth(args[0])
        if fn == "Fn::And":
            return all(self.truth(a) for a in args)
        if fn == "Fn::Or":
            return any(self.truth(a) for a in args)
        if fn == "Condition":
            return self.condition(args)
        raise ValueError(f"condition function {fn}")

    def ref(self, name):
        if name == "AWS::NoValue":
            return NO_VALUE
        pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
                  "AWS::StackName": "pgbackup", "AWS::URLSuffix": "amazonaws.com"}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical:
            return self.physical[name]["Ref"]
        raise KeyError(f"Ref {name}: no value for it in the emulation")

    def get_att(self, name, attribute):
        try:
            return self.physical[name][attribute]
        except KeyError:
            raise KeyError(f"GetAtt {name}.{attribute}: no value for it in the emulation")

    def sub(self, text, variables):
        out, rest = "", text
        while "${" in rest:
            before, _, after = rest.partition("${")
            name, _, rest = after.partition("}")
            out += before
            if name.startswith("!"):
                out += "${" + name[1:] + "}"
            elif name in variables:
                out += str(variables[name])
            elif "." in name and not name.startswith("AWS::"):
                out += str(self.get_att(*name.split(".", 1)))
            else:
                out += str(self.ref(name))
        return out + rest

    def resolve(self, node):
        if isinstance(node, list):
            return [v for v in (self.resolve(n) for n in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, value), = node.items()
            if key == "Ref":
                return self.ref(value)
            if key == "Fn::GetAtt":
                name, attribute = value if isinstance(value, list) else value.split(".", 1)
                return self.get_att(name, attribute)
            if key == "Fn::Sub":
                if isinstance(value, list):
                    return self.sub(value[0], {k: self.resolve(v) for k, v in value[1].items()})
                return self.sub(value, {})
            if key == "Fn::If":
                name, then, otherwise = value
                return self.resolve(then if self.condition(name) else otherwise)
            if key == "Fn::Join":
                return value[0].join(str(v) for v in self.resolve(value[1]))
            if key == "Fn::Select":
                return self.resolve(value[1])[int(self.resolve(value[0]))]
            if key == "Fn::FindInMap":
                mapping, first, second = (str(v) for v in self.resolve(value))
                return self.template["Mappings"][mapping][first][second]
            if key == "Fn::Split":
                return str(self.resolve(value[1])).split(value[0])
        resolved = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}


def function_policies(expanded, resolver, logical):
    """The inline policies of a function's role, fully resolved."""
    return role_policies(expanded, resolver, f"{logical}Role")


def role_policies(expanded, resolver, role):
    """The inline policies of an AWS::IAM::Role, fully resolved."""
    properties = expanded["Resources"][role]["Properties"]
    return {p["PolicyName"]: resolver.resolve(p["PolicyDocument"]) for p in properties.get("Policies", [])}


def lower_first(node):
    """CloudFormation's property names as the ECS API spells them
    (ContainerDefinitions -> containerDefinitions), keys of maps kept."""
    if isinstance(node, list):
        return [lower_first(n) for n in node]
    if isinstance(node, dict):
        return {(k[0].lower() + k[1:] if k[:1].isupper() else k): (v if k == "Options" else lower_first(v))
                for k, v in node.items()}
    return node


# --------------------------------------------------------------- provision
def set_enforcement(endpoint, after_requests):
    """moto checks IAM once `after_requests` more requests have passed."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=after_requests.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request).read()


def provision(endpoint, template_path, parameters):
    import boto3

    set_enforcement(endpoint, "inf")  # setting up is the administrator's job

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from expand_template import expand

    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="admin", aws_secret_access_key="admin")
    s3, sm, iam = (boto3.client(s, **kw) for s in ("s3", "secretsmanager", "iam"))
    suffix = os.urandom(4).hex()
    bucket = f"pgbackup-iam-{suffix}"
    lock = parameters.get("ObjectLockMode", "NONE") != "NONE"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=lock)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    keyring = sm.create_secret(Name=f"pgbackup-keyring-{suffix}", SecretString=parameters.pop("keyring"))["ARN"]
    # The template's LedgerHeadSecret, as deployed: "{}" until the first erasure.
    ledger_head = sm.create_secret(Name=f"pgbackup-ledger-head-{suffix}", SecretString="{}")["ARN"]
    database = sm.create_secret(Name=f"carwash-db-{suffix}", SecretString=parameters.pop("databaseSecret"))["ARN"]
    parameters["DatabaseSecretArn"] = database

    if parameters.get("EnableFargate") == "true":
        # Fargate tasks run in subnets, which moto's ECS checks exist.
        ec2 = boto3.client("ec2", **kw)
        vpc = ec2.create_vpc(CidrBlock="10.28.0.0/16")["Vpc"]["VpcId"]
        # (as the Secrets Manager endpoint's private DNS needs it)
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsSupport={"Value": True})
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.28.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)]
        table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        group = ec2.create_security_group(GroupName=f"pgbackup-{suffix}", Description="pgbackup functions",
                                          VpcId=vpc)["GroupId"]
        parameters.update(VpcId=vpc, SubnetIds=",".join(subnets), RouteTableIds=table)
    expanded = expand(template_path)
    physical = {
        "BackupBucket": {"Ref": bucket, "Arn": f"arn:aws:s3:::{bucket}"},
        "KeyringSecret": {"Ref": keyring},
        "LedgerHeadSecret": {"Ref": ledger_head},
        "AlertTopic": {"Ref": f"arn:aws:sns:{REGION}:{ACCOUNT}:pgbackup-alerts", "TopicName": "pgbackup-alerts"},
    }
    if parameters.get("EnableFargate") == "true":
        physical["FunctionSecurityGroup"] = {"Ref": group}
    resolver = Resolver(expanded, parameters, physical)
    users = {}

    def user_with(name, policies, environment):
        user = f"pgbackup-{name}-{suffix}"
        iam.create_user(UserName=user)
        for policy, document in policies.items():
            # AWS reads a document without Version as 2008-10-17; moto refuses it.
            document.setdefault("Version", "2012-10-17")
            iam.put_user_policy(UserName=user, PolicyName=policy, PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        users[name] = {"accessKeyId": key["AccessKeyId"], "secretAccessKey": key["SecretAccessKey"],
                       "policies": policies, "environment": environment}

    fargate = provision_fargate(kw, expanded, resolver, physical, suffix, user_with)
    for function, logical in FUNCTIONS.items():
        variables = expanded["Resources"][logical]["Properties"].get("Environment", {}).get("Variables", {})
        user_with(function, function_policies(expanded, resolver, logical),
                  {k: str(v) for k, v in resolver.resolve(variables).items()})
    # The test's own eye on the bucket once IAM is enforced.
    iam.create_user(UserName=f"pgbackup-admin-{suffix}")
    iam.put_user_policy(UserName=f"pgbackup-admin-{suffix}", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    admin = iam.create_access_key(UserName=f"pgbackup-admin-{suffix}")["AccessKey"]
    users["admin"] = {"accessKeyId": admin["AccessKeyId"], "secretAccessKey": admin["SecretAccessKey"],
                      "policies": {}, "environment": {}}
    # From here on every request is signed and checked against these users.
    set_enforcement(endpoint, "0")
    print(json.dumps({"bucket": bucket, "keyringArn": keyring, "ledgerHeadArn": ledger_head, "databaseArn": database,
                      "users": users, "fargate": fargate}))


def provision_fargate(kw, expanded, resolver, physical, suffix, user_with):
    """With EnableFargate: the two task roles (as IAM roles), the cluster and
    the task definition registered in moto's ECS from the template, and
    users "task" (the task role's policies; the container's environment) and
    "scheduler" (the scheduler role's, when BackupEngine=fargate). Returns
    what the schedules send, resolved, and the create function's schedule
    states."""
    import boto3

    resources = expanded["Resources"]
    lambda_create = {name: resolver.resolve(r["Properties"].get("State", "ENABLED"))
                     for name, r in resources.items() if r.get("Type") == "AWS::Events::Rule"
                     and any("CreateFunction" in json.dumps(t) for t in r["Properties"].get("Targets", []))}
    found = {"lambdaCreateSchedules": lambda_create, "enabled": resolver.condition("FargateEnabled")
             if "FargateEnabled" in expanded.get("Conditions", {}) else False}
    if not found["enabled"]:
        return found
    iam, ecs = (boto3.client(s, **kw) for s in ("iam", "ecs"))
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    for logical in ("BackupTaskRole", "BackupTaskExecutionRole"):
        arn = iam.create_role(RoleName=f"pgbackup-{logical}-{suffix}", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        physical[logical] = {"Ref": f"pgbackup-{logical}-{suffix}", "Arn": arn}
    physical["BackupTaskLogGroup"] = {"Ref": f"/aws/ecs/pgbackup/backup-task-{suffix}"}
    cluster = ecs.create_cluster(clusterName=f"pgbackup-{suffix}")["cluster"]["clusterArn"]
    physical["BackupCluster"] = {"Ref": f"pgbackup-{suffix}", "Arn": cluster}
    definition = lower_first(resolver.resolve(resources["BackupTaskDefinition"]["Properties"]))
    definition["cpu"], definition["memory"] = str(definition["cpu"]), str(definition["memory"])
    for container in definition["containerDefinitions"]:
        for variable in container.get("environment", []):
            variable["value"] = str(variable["value"])
    # moto's RunTask sums the containers' memory, which Fargate leaves
    # optional (the task's counts): registered with the task's.
    registered = ecs.register_task_definition(**dict(definition, containerDefinitions=[
        dict(c, memory=c.get("memory", int(definition["memory"]))) for c in definition["containerDefinitions"]]))["taskDefinition"]
    physical["BackupTaskDefinition"] = {"Ref": registered["taskDefinitionArn"]}
    container = definition["containerDefinitions"][0]
    user_with("task", role_policies(expanded, resolver, "BackupTaskRole"),
              {v["name"]: v["value"] for v in container.get("environment", [])})
    found.update(clusterArn=cluster, taskDefinitionArn=registered["taskDefinitionArn"], container=container,
                 taskRoleArn=physical["BackupTaskRole"]["Arn"],
                 executionRoleArn=physical["BackupTaskExecutionRole"]["Arn"])
    if "TaskSchedulerRole" in resources and resolver.condition(resources["TaskSchedulerRole"]["Condition"]):
        physical["TaskSchedulerRole"] = {"Ref": f"pgbackup-scheduler-{suffix}",
                                         "Arn": f"arn:aws:iam::{ACCOUNT}:role/pgbackup-scheduler-{suffix}"}
        user_with("scheduler", role_policies(expanded, resolver, "TaskSchedulerRole"), {})
    found["schedules"] = {name: resolver.resolve(r["Properties"]) for name, r in resources.items()
                          if r.get("Type") == "AWS::Scheduler::Schedule" and resolver.condition(r["Condition"])}
    return found


def route(template_path, parameters, keys):
    from moto.events.models import EventPattern

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from expand_template import expand

    expanded = expand(template_path)
    bucket = "pgbackup-route"
    resolver = Resolver(expanded, parameters, {"BackupBucket": {"Ref": bucket, "Arn": f"arn:aws:s3:::{bucket}"}})
    rules = []
    for resource in expanded["Resources"].values():
        properties = resource.get("Properties", {})
        if resource.get("Type") != "AWS::Events::Rule" or "EventPattern" not in properties:
            continue
        if "Condition" in resource and not resolver.condition(resource["Condition"]):
            continue
        targets = json.dumps(properties.get("Targets", []))
        functions = [name for name, logical in FUNCTIONS.items() if f'"{logical}"' in targets]
        rules.append((EventPattern.load(json.dumps(resolver.resolve(properties["EventPattern"]))), functions))
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "events", "s3-object-created.json")) as f:
        sample = json.load(f)
    reached = {}
    for key in keys:
        event = json.loads(json.dumps(sample))
        event["resources"] = [f"arn:aws:s3:::{bucket}"]
        event["detail"]["bucket"]["name"] = bucket
        event["detail"]["object"]["key"] = key
        reached[key] = sorted({f for pattern, functions in rules if pattern.matches_event(event) for f in functions})
    print(json.dumps(reached))


def attempt(endpoint, access_key, secret_key, calls):
    """Each call [service, operation, params] made with these keys: prints
    one line of JSON per call, {"allowed": true, "result": …} or
    {"allowed": false, "code": "AccessDenied", "status": 403}."""
    import boto3
    import botocore.exceptions

    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    answers = []
    for service, operation, params in calls:
        client = boto3.client(service, **kw)
        try:
            result = getattr(client, operation)(**params)
            result.pop("ResponseMetadata", None)
            result.pop("Body", None)
            answers.append({"allowed": True, "result": json.loads(json.dumps(result, default=str))})
        except botocore.exceptions.ClientError as refused:
            answers.append({"allowed": False, "code": refused.response.get("Error", {}).get("Code"),
                            "status": refused.response.get("ResponseMetadata", {}).get("HTTPStatusCode")})
    print(json.dumps(answers))


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "serve":
        serve(int(sys.argv[2]))
    elif command == "provision":
        provision(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif command == "route":
        route(sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]))
    elif command == "attempt":
        attempt(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)

#!/usr/bin/env python3
"""Expands template.yaml with aws-sam-translator, the library `sam build` and
`sam deploy` use, into the plain CloudFormation that AWS would create, so
cfn-lint can judge what the SAM transform adds (permissions, event wiring,
roles) and the IAM test can read each function's final policy.

    .venv/bin/python infra/expand_template.py template.yaml expanded.json
"""
import json
import os
import sys

from cfnlint.decode import cfn_yaml
from samtranslator.translator.transform import transform


class NoManagedPolicies:
    """The translator asks for AWS managed policy ARNs by name; they follow
    one pattern, so no call to IAM is needed."""

    def load(self):
        return {}


def strip_marks(value):
    """cfn-lint's YAML loader returns str/dict/list subclasses with line
    marks; the translator wants plain values."""
    if isinstance(value, dict):
        return {str(k): strip_marks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_marks(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def expand(path):
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-north-1")
    template = strip_marks(cfn_yaml.load(path))
    # `sam build` replaces the local CodeUri with the uploaded package's S3 URI.
    globals_ = template.get("Globals", {}).get("Function", {})
    if "CodeUri" in globals_:
        globals_["CodeUri"] = "s3://pgbackup-artifacts/package.zip"
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function" and "CodeUri" in resource.get("Properties", {}):
            resource["Properties"]["CodeUri"] = "s3://pgbackup-artifacts/package.zip"
    return transform(template, {}, NoManagedPolicies())


if __name__ == "__main__":
    source = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    expanded = expand(source)
    text = json.dumps(expanded, indent=1, sort_keys=True)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as out:
            out.write(text)
    else:
        print(text)

#!/usr/bin/env python3
"""Provision Switchyard's AWS resources on a local emulator (moto), from template.yaml.

    python infra/local_aws.py provision --endpoint URL --prefix NAME [--json]
                                        [--param Name=Value ...] [--api-keys K:T,...]
                                        [--webhook-secret whsec_...] [--callback-secret whsec_...]
                                        [--secret NAME=VALUE ...]
    python infra/local_aws.py teardown  --endpoint URL --prefix NAME

`provision` creates (or brings up to date) the DynamoDB table, the four SQS queues, the S3
bucket and a Secrets Manager secret, then prints the functions' environment as
`export NAME=value` lines (`eval "$(python infra/local_aws.py provision ...)"`), or as one
JSON object with --json. Re-running it is harmless. `teardown` deletes them (also harmless
when they are gone).

Nothing here restates the resources: the table's keys, attribute definitions, indexes,
projections, TTL and point-in-time recovery, the queues' attributes and redrive policies and
the bucket's settings are READ FROM template.yaml (its defaults, or --param overrides), and
so are the environment names (Globals.Function.Environment.Variables). The template's
CloudFormation functions (!Ref, !GetAtt, !FindInMap, !If, !Sub, ...) are evaluated here for
the resources this script makes.

Emulator names: <prefix>-<suffix>, the suffixes in LOCAL_NAMES (one place).

Runs with the moto venv's python (infra/moto.sh): boto3 + PyYAML + the standard library.
Refuses to run without an explicit endpoint, so it never touches a real AWS account.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

try:
    import yaml
except ImportError:  # pragma: no cover - only without the moto venv
    sys.exit("local_aws.py: PyYAML is missing; run it with the moto venv's python "
             "(${SWITCHYARD_VENV_AWS:-/var/tmp/switchyard-aws-venv}/bin/python)")
try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import ClientError
except ImportError:  # pragma: no cover
    sys.exit("local_aws.py: boto3 is missing; run it with the moto venv's python "
             "(${SWITCHYARD_VENV_AWS:-/var/tmp/switchyard-aws-venv}/bin/python)")

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template.yaml"

# Template logical id -> suffix of the resource's name on the emulator. Every table, queue,
# bucket and secret of template.yaml must be here (provision fails otherwise, so a resource
# added to the template cannot be silently missing locally).
LOCAL_NAMES = {
    "Table": "table",
    "Bucket": "blobs",
    "WorkQueue": "work",
    "WorkDLQ": "work-dlq",
    "NotifyQueue": "notify",
    "NotifyDLQ": "notify-dlq",
    "Secret": "secrets",
}
PROVISIONED_TYPES = {
    "AWS::DynamoDB::Table",
    "AWS::SQS::Queue",
    "AWS::S3::Bucket",
    "AWS::SecretsManager::Secret",
}

# Development settings for the emulator's secret (never used on AWS). The webhook and callback
# secrets are fixed so that re-provisioning keeps them and signatures made earlier still verify.
DEV_API_KEYS = "dev-key-0123456789:dev"
DEV_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"switchyard-dev-webhook-secret-01").decode()
DEV_CALLBACK_SECRET = "whsec_" + base64.b64encode(b"switchyard-dev-callback-secret-1").decode()

EMULATOR_ACCOUNT = "123456789012"  # moto's default account
PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$")


class ProvisionError(Exception):
    """A problem to report on one line (exit status 1)."""


def log(msg: str) -> None:
    print(f"local_aws.py: {msg}", file=sys.stderr)


def names(prefix: str) -> dict[str, str]:
    """Logical id -> the resource's name on the emulator."""
    if not PREFIX_RE.match(prefix):
        raise ProvisionError(
            f"--prefix {prefix!r}: use 3-40 characters of a-z, 0-9 and '-' (S3 bucket rules), "
            "starting and ending with a letter or digit")
    return {logical: f"{prefix}-{suffix}" for logical, suffix in LOCAL_NAMES.items()}


# ---- template.yaml: a YAML loader that keeps CloudFormation's short-form tags -------------------

class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns `!Ref X` into {"Ref": "X"}, `!GetAtt A.B` into
    {"Fn::GetAtt": ["A", "B"]}, and any other `!Name v` into {"Fn::Name": v}."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(doc, dict) or "Resources" not in doc:
        raise ProvisionError(f"{path}: not a CloudFormation template")
    return doc


# ---- CloudFormation functions, evaluated for the resources made here ----------------------------

NO_VALUE = object()  # AWS::NoValue: the property or list item is dropped


class Evaluator:
    """Evaluates the template's intrinsic functions with parameter values (defaults or
    overrides) and with what `physical` says of the resources (Ref / GetAtt values)."""

    def __init__(self, template: dict[str, Any], params: dict[str, str], region: str,
                 account: str, stack_name: str,
                 physical: Callable[[str, str | None], Any]) -> None:
        self.t = template
        self.region = region
        self.account = account
        self.stack_name = stack_name
        self.physical = physical
        self.params = self._parameters(params)

    def _parameters(self, overrides: dict[str, str]) -> dict[str, Any]:
        declared = self.t.get("Parameters", {})
        unknown = sorted(set(overrides) - set(declared))
        if unknown:
            raise ProvisionError(f"--param {', '.join(unknown)}: not a parameter of template.yaml")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            raw = overrides.get(name, spec.get("Default"))
            if raw is None:
                continue  # no default: an error only if something refers to it
            raw = str(raw)
            allowed = spec.get("AllowedValues")
            if allowed is not None and raw not in [str(a) for a in allowed]:
                raise ProvisionError(f"parameter {name}={raw}: not one of {allowed}")
            if spec.get("Type") == "Number":
                num = float(raw)
                if "MinValue" in spec and num < float(spec["MinValue"]):
                    raise ProvisionError(f"parameter {name}={raw}: below MinValue {spec['MinValue']}")
                if "MaxValue" in spec and num > float(spec["MaxValue"]):
                    raise ProvisionError(f"parameter {name}={raw}: above MaxValue {spec['MaxValue']}")
            pattern = spec.get("AllowedPattern")
            if pattern is not None and not re.fullmatch(pattern, raw):
                raise ProvisionError(f"parameter {name}={raw!r}: does not match {pattern}")
            if spec.get("Type") == "CommaDelimitedList":
                values[name] = [s.strip() for s in raw.split(",")]
            else:
                values[name] = raw
        return values

    def condition(self, name: str) -> bool:
        conds = self.t.get("Conditions", {})
        if name not in conds:
            raise ProvisionError(f"template.yaml: no condition {name}")
        return bool(self.eval(conds[name]))

    def eval(self, node: Any) -> Any:
        if isinstance(node, list):
            out = [self.eval(v) for v in node]
            return [v for v in out if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            fn = self._functions().get(key)
            if fn is not None:
                return fn(arg)
        out = {k: self.eval(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def _functions(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "Ref": self._ref,
            "Fn::GetAtt": self._getatt,
            "Fn::FindInMap": self._find_in_map,
            "Fn::If": self._if,
            "Fn::Equals": lambda a: str(self.eval(a[0])) == str(self.eval(a[1])),
            "Fn::Not": lambda a: not self.eval(a[0]),
            "Fn::And": lambda a: all(self.eval(x) for x in a),
            "Fn::Or": lambda a: any(self.eval(x) for x in a),
            "Condition": self.condition,
            "Fn::Join": lambda a: str(self.eval(a[0])).join(str(x) for x in self.eval(a[1])),
            "Fn::Split": lambda a: str(self.eval(a[1])).split(str(self.eval(a[0]))),
            "Fn::Select": lambda a: self.eval(a[1])[int(self.eval(a[0]))],
            "Fn::Sub": self._sub,
        }

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.stack_name,
        }
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.t.get("Parameters", {}):
            if name not in self.params:
                raise ProvisionError(f"parameter {name} has no default: give --param {name}=...")
            return self.params[name]
        if name in self.t["Resources"]:
            return self.physical(name, None)
        raise ProvisionError(f"template.yaml: !Ref {name}: no such parameter or resource")

    def _getatt(self, arg: list[str]) -> Any:
        resource, attribute = arg[0], str(self.eval(arg[1]))
        return self.physical(resource, attribute)

    def _find_in_map(self, arg: list[Any]) -> Any:
        m, k1, k2 = (self.eval(a) for a in arg)
        try:
            return self.t["Mappings"][m][str(k1)][str(k2)]
        except KeyError:
            raise ProvisionError(f"template.yaml: !FindInMap [{m}, {k1}, {k2}]: no such entry") from None

    def _if(self, arg: list[Any]) -> Any:
        return self.eval(arg[1] if self.condition(arg[0]) else arg[2])

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, local = arg[0], {k: self.eval(v) for k, v in arg[1].items()}
        else:
            text, local = arg, {}

        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in local:
                return str(local[name])
            if "." in name:
                res, att = name.split(".", 1)
                return str(self.physical(res, att))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}!][^}]*)\}", one, text)


# ---- the emulator ----------------------------------------------------------------------------

class Emulator:
    def __init__(self, endpoint: str, region: str, prefix: str, template_path: Path,
                 params: dict[str, str]) -> None:
        self.endpoint = endpoint
        self.region = region
        self.prefix = prefix
        self.names = names(prefix)
        self.template = load_template(template_path)
        self.resources: dict[str, Any] = self.template["Resources"]
        self.queue_urls: dict[str, str] = {}
        self.secret_arn: str | None = None
        self.ev = Evaluator(self.template, params, region, EMULATOR_ACCOUNT, prefix, self.physical)
        cfg = BotoConfig(retries={"max_attempts": 3, "mode": "standard"},
                         s3={"addressing_style": "path"})
        session = boto3.session.Session(
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            aws_session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region_name=region)
        self.sqs = session.client("sqs", endpoint_url=endpoint, config=cfg)
        self.ddb = session.client("dynamodb", endpoint_url=endpoint, config=cfg)
        self.s3 = session.client("s3", endpoint_url=endpoint, config=cfg)
        self.sm = session.client("secretsmanager", endpoint_url=endpoint, config=cfg)

    # -- which resources, and what Ref / GetAtt of them are locally

    def logical_ids(self, rtype: str) -> list[str]:
        ids = [k for k, v in self.resources.items() if v.get("Type") == rtype]
        missing = [k for k in ids if k not in LOCAL_NAMES]
        if missing:
            raise ProvisionError(
                f"template.yaml has {rtype} {', '.join(missing)} that infra/local_aws.py does not "
                "know: add it to LOCAL_NAMES")
        return ids

    def physical(self, logical: str, attribute: str | None) -> Any:
        if logical not in self.resources:
            raise ProvisionError(f"template.yaml: no resource {logical}")
        rtype = self.resources[logical]["Type"]
        if rtype not in PROVISIONED_TYPES:
            raise ProvisionError(f"{logical} ({rtype}) does not exist on the emulator")
        name = self.names[logical]
        if rtype == "AWS::SQS::Queue":
            arn = f"arn:aws:sqs:{self.region}:{EMULATOR_ACCOUNT}:{name}"
            if attribute == "Arn":
                return arn
            if attribute == "QueueName":
                return name
            if attribute in (None, "QueueUrl"):
                if logical not in self.queue_urls:
                    self.queue_urls[logical] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
                return self.queue_urls[logical]
        elif rtype == "AWS::DynamoDB::Table":
            if attribute is None:
                return name
            if attribute == "Arn":
                return f"arn:aws:dynamodb:{self.region}:{EMULATOR_ACCOUNT}:table/{name}"
        elif rtype == "AWS::S3::Bucket":
            if attribute is None:
                return name
            if attribute == "Arn":
                return f"arn:aws:s3:::{name}"
        elif rtype == "AWS::SecretsManager::Secret":
            if attribute is None:
                if self.secret_arn is None:
                    self.secret_arn = self.sm.describe_secret(SecretId=name)["ARN"]
                return self.secret_arn
        raise ProvisionError(f"!GetAtt {logical}.{attribute}: not supported locally")

    def properties(self, logical: str) -> dict[str, Any]:
        return self.ev.eval(self.resources[logical].get("Properties", {}))

    def active(self, logical: str) -> bool:
        cond = self.resources[logical].get("Condition")
        return cond is None or self.ev.condition(cond)

    # -- provision

    def provision(self, secret_values: dict[str, str]) -> dict[str, str]:
        for logical in self.logical_ids("AWS::SQS::Queue"):
            self.ensure_queue(logical, set())
        for logical in self.logical_ids("AWS::DynamoDB::Table"):
            self.ensure_table(logical)
        for logical in self.logical_ids("AWS::S3::Bucket"):
            self.ensure_bucket(logical)
        for logical in self.logical_ids("AWS::SecretsManager::Secret"):
            if self.active(logical):
                self.ensure_secret(logical, secret_values)
        self.ensure_bucket_policies()
        return self.environment()

    def environment(self) -> dict[str, str]:
        """The functions' environment (template Globals) as the emulator's resources give it."""
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": self.region}
        if "AWS_ACCESS_KEY_ID" not in os.environ:
            env["AWS_ACCESS_KEY_ID"] = "testing"
            env["AWS_SECRET_ACCESS_KEY"] = "testing"
        globals_env = (self.template.get("Globals", {}).get("Function", {})
                       .get("Environment", {}).get("Variables", {}))
        for k, v in self.ev.eval(globals_env).items():
            env[k] = str(v)
        return env

    QUEUE_ATTRIBUTES = {
        "VisibilityTimeout", "MessageRetentionPeriod", "MaximumMessageSize", "DelaySeconds",
        "ReceiveMessageWaitTimeSeconds", "SqsManagedSseEnabled", "RedrivePolicy",
        "RedriveAllowPolicy", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds",
    }

    def ensure_queue(self, logical: str, visiting: set[str]) -> None:
        if logical in self.queue_urls:
            return
        if logical in visiting:
            raise ProvisionError(f"queues refer to each other in a cycle through {logical}")
        visiting.add(logical)
        raw = self.resources[logical].get("Properties", {})
        # A redrive target is made first, so that its ARN exists when this queue names it.
        target = raw.get("RedrivePolicy", {}).get("deadLetterTargetArn")
        if isinstance(target, dict) and "Fn::GetAtt" in target:
            dlq = target["Fn::GetAtt"]
            self.ensure_queue(dlq[0] if isinstance(dlq, list) else dlq.split(".")[0], visiting)
        props = self.properties(logical)
        attrs: dict[str, str] = {}
        for key, value in props.items():
            if key in ("QueueName", "Tags", "FifoQueue", "ContentBasedDeduplication"):
                continue
            if key not in self.QUEUE_ATTRIBUTES:
                log(f"{logical}: property {key} is not provisioned on the emulator")
                continue
            if key in ("RedrivePolicy", "RedriveAllowPolicy"):
                if "maxReceiveCount" in value:
                    value = {**value, "maxReceiveCount": int(value["maxReceiveCount"])}
                attrs[key] = json.dumps(value, separators=(",", ":"))
            elif isinstance(value, bool):
                attrs[key] = "true" if value else "false"
            else:
                attrs[key] = str(value)
        name = self.names[logical]
        try:
            url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
            self.sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
        except ClientError as e:
            if not _is(e, "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                raise
            url = self.sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        self.queue_urls[logical] = url
        visiting.discard(logical)

    def table_spec(self, logical: str) -> dict[str, Any]:
        """The table as CreateTable wants it (a subset of the CloudFormation properties)."""
        p = self.properties(logical)
        spec: dict[str, Any] = {
            "TableName": self.names[logical],
            "AttributeDefinitions": p["AttributeDefinitions"],
            "KeySchema": p["KeySchema"],
            "BillingMode": p.get("BillingMode", "PROVISIONED"),
        }
        if spec["BillingMode"] == "PROVISIONED":
            spec["ProvisionedThroughput"] = p["ProvisionedThroughput"]
        gsis = []
        for g in p.get("GlobalSecondaryIndexes", []):
            gsi = {"IndexName": g["IndexName"], "KeySchema": g["KeySchema"],
                   "Projection": g["Projection"]}
            if "ProvisionedThroughput" in g:
                gsi["ProvisionedThroughput"] = g["ProvisionedThroughput"]
            gsis.append(gsi)
        if gsis:
            spec["GlobalSecondaryIndexes"] = gsis
        if p.get("LocalSecondaryIndexes"):
            spec["LocalSecondaryIndexes"] = p["LocalSecondaryIndexes"]
        sse = p.get("SSESpecification")
        if sse:
            spec["SSESpecification"] = {"Enabled": bool(sse.get("SSEEnabled"))}
            if "SSEType" in sse:
                spec["SSESpecification"]["SSEType"] = sse["SSEType"]
        if p.get("StreamSpecification"):
            spec["StreamSpecification"] = {"StreamEnabled": True, **p["StreamSpecification"]}
        if p.get("Tags"):
            spec["Tags"] = p["Tags"]
        known = {"AttributeDefinitions", "KeySchema", "BillingMode", "ProvisionedThroughput",
                 "GlobalSecondaryIndexes", "LocalSecondaryIndexes", "SSESpecification",
                 "StreamSpecification", "Tags", "TimeToLiveSpecification",
                 "PointInTimeRecoverySpecification", "TableName"}
        for key in sorted(set(p) - known):
            log(f"{logical}: property {key} is not provisioned on the emulator")
        return spec

    def ensure_table(self, logical: str) -> None:
        spec = self.table_spec(logical)
        name = spec["TableName"]
        try:
            existing = self.ddb.describe_table(TableName=name)["Table"]
        except ClientError as e:
            if not _is(e, "ResourceNotFoundException"):
                raise
            self.ddb.create_table(**spec)
            existing = None
        if existing is not None:
            drift = table_drift(spec, existing)
            if drift:
                raise ProvisionError(
                    f"table {name} on the emulator differs from template.yaml ({drift}); "
                    f"run `infra/local_aws.py teardown --prefix {self.prefix}` and provision again")
        self.ddb.get_waiter("table_exists").wait(TableName=name,
                                                 WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
        p = self.properties(logical)
        ttl = p.get("TimeToLiveSpecification")
        if ttl:
            want = bool(ttl.get("Enabled"))
            cur = self.ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            enabled = cur.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
            if enabled != want or (want and cur.get("AttributeName") != ttl["AttributeName"]):
                self.ddb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": want})
        pitr = p.get("PointInTimeRecoverySpecification")
        if pitr:
            self.ddb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={
                    "PointInTimeRecoveryEnabled": bool(pitr.get("PointInTimeRecoveryEnabled"))})

    def ensure_bucket(self, logical: str) -> None:
        name = self.names[logical]
        p = self.properties(logical)
        try:
            if self.region == "us-east-1":
                self.s3.create_bucket(Bucket=name)
            else:
                self.s3.create_bucket(Bucket=name, CreateBucketConfiguration={
                    "LocationConstraint": self.region})
        except ClientError as e:
            if not _is(e, "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        done = {"BucketName", "Tags"}
        steps: list[tuple[str, Callable[[], Any]]] = []
        if "PublicAccessBlockConfiguration" in p:
            steps.append(("PublicAccessBlockConfiguration", lambda: self.s3.put_public_access_block(
                Bucket=name, PublicAccessBlockConfiguration=p["PublicAccessBlockConfiguration"])))
        if "OwnershipControls" in p:
            steps.append(("OwnershipControls", lambda: self.s3.put_bucket_ownership_controls(
                Bucket=name, OwnershipControls=p["OwnershipControls"])))
        if "BucketEncryption" in p:
            rules = [{"ApplyServerSideEncryptionByDefault": r["ServerSideEncryptionByDefault"],
                      **({"BucketKeyEnabled": r["BucketKeyEnabled"]} if "BucketKeyEnabled" in r else {})}
                     for r in p["BucketEncryption"]["ServerSideEncryptionConfiguration"]]
            steps.append(("BucketEncryption", lambda: self.s3.put_bucket_encryption(
                Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})))
        if "LifecycleConfiguration" in p:
            rules_api = [lifecycle_rule(r) for r in p["LifecycleConfiguration"]["Rules"]]
            steps.append(("LifecycleConfiguration", lambda: self.s3.put_bucket_lifecycle_configuration(
                Bucket=name, LifecycleConfiguration={"Rules": rules_api})))
        if "VersioningConfiguration" in p:
            steps.append(("VersioningConfiguration", lambda: self.s3.put_bucket_versioning(
                Bucket=name, VersioningConfiguration=p["VersioningConfiguration"])))
        if p.get("Tags"):
            self._try(logical, "Tags", lambda: self.s3.put_bucket_tagging(
                Bucket=name, Tagging={"TagSet": p["Tags"]}))
        for key, step in steps:
            self._try(logical, key, step)
            done.add(key)
        for key in sorted(set(p) - done):
            log(f"{logical}: property {key} is not provisioned on the emulator")

    def ensure_bucket_policies(self) -> None:
        for logical in self.logical_ids_any("AWS::S3::BucketPolicy"):
            p = self.properties(logical)
            doc = dict(p["PolicyDocument"])
            statements = doc.get("Statement", [])
            if isinstance(statements, dict):
                statements = [statements]
            if self.endpoint.startswith("http://"):
                # moto evaluates bucket policies: a TLS-only deny would refuse every request
                # to a plain-http emulator, so that statement stays on AWS only.
                kept = [s for s in statements if not denies_plain_http(s)]
                if len(kept) != len(statements):
                    log(f"{logical}: TLS-only statement left out (the emulator is plain http)")
                statements = kept
            bucket = p["Bucket"]
            if not statements:
                try:
                    self.s3.delete_bucket_policy(Bucket=bucket)
                except ClientError as e:
                    if not _is(e, "NoSuchBucketPolicy", "NoSuchBucket"):
                        raise
                continue
            doc["Statement"] = statements
            self._try(logical, "PolicyDocument", lambda b=bucket, d=doc: self.s3.put_bucket_policy(
                Bucket=b, Policy=json.dumps(d)))

    def logical_ids_any(self, rtype: str) -> list[str]:
        return [k for k, v in self.resources.items() if v.get("Type") == rtype]

    def _try(self, logical: str, what: str, step: Callable[[], Any]) -> None:
        try:
            step()
        except ClientError as e:
            # The emulator may not implement every bucket setting; the resource still works.
            log(f"{logical}: {what} not applied on the emulator ({_code(e)}: {e})")

    def ensure_secret(self, logical: str, values: dict[str, str]) -> None:
        name = self.names[logical]
        body = json.dumps(values, sort_keys=True)
        try:
            cur = self.sm.get_secret_value(SecretId=name)
            self.secret_arn = cur["ARN"]
            if cur.get("SecretString") != body:
                self.sm.put_secret_value(SecretId=name, SecretString=body)
        except ClientError as e:
            if not _is(e, "ResourceNotFoundException"):
                raise
            self.secret_arn = self.sm.create_secret(
                Name=name, SecretString=body,
                Description="Switchyard settings on the local emulator (development values)")["ARN"]

    # -- teardown

    def teardown(self) -> None:
        for logical in self.logical_ids("AWS::SQS::Queue"):
            try:
                url = self.sqs.get_queue_url(QueueName=self.names[logical])["QueueUrl"]
                self.sqs.delete_queue(QueueUrl=url)
            except ClientError as e:
                if not _is(e, "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                    raise
        for logical in self.logical_ids("AWS::DynamoDB::Table"):
            try:
                self.ddb.delete_table(TableName=self.names[logical])
            except ClientError as e:
                if not _is(e, "ResourceNotFoundException"):
                    raise
        for logical in self.logical_ids("AWS::S3::Bucket"):
            self._delete_bucket(self.names[logical])
        for logical in self.logical_ids("AWS::SecretsManager::Secret"):
            try:
                self.sm.delete_secret(SecretId=self.names[logical], ForceDeleteWithoutRecovery=True)
            except ClientError as e:
                if not _is(e, "ResourceNotFoundException"):
                    raise

    def _delete_bucket(self, name: str) -> None:
        try:
            paginator = self.s3.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=name):
                objs = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                        for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                if objs:
                    self.s3.delete_objects(Bucket=name, Delete={"Objects": objs, "Quiet": True})
            self.s3.delete_bucket(Bucket=name)
        except ClientError as e:
            if not _is(e, "NoSuchBucket", "404"):
                raise


def lifecycle_rule(r: dict[str, Any]) -> dict[str, Any]:
    """One CloudFormation lifecycle rule as PutBucketLifecycleConfiguration wants it."""
    out: dict[str, Any] = {"Status": r.get("Status", "Enabled")}
    if "Id" in r:
        out["ID"] = r["Id"]
    out["Filter"] = {"Prefix": r.get("Prefix", "")}
    if "ExpirationInDays" in r:
        out["Expiration"] = {"Days": int(r["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in r:
        out["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])}
    if "NoncurrentVersionExpirationInDays" in r:
        out["NoncurrentVersionExpiration"] = {"NoncurrentDays": int(r["NoncurrentVersionExpirationInDays"])}
    return out


def denies_plain_http(statement: dict[str, Any]) -> bool:
    """A Deny whose condition is `aws:SecureTransport: false` (the TLS-only pattern)."""
    cond = statement.get("Condition", {}).get("Bool", {})
    return statement.get("Effect") == "Deny" and str(cond.get("aws:SecureTransport")).lower() == "false"


def _index_shape(gsis: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        g["IndexName"]: (
            [(k["AttributeName"], k["KeyType"]) for k in g["KeySchema"]],
            g["Projection"]["ProjectionType"],
            sorted(g["Projection"].get("NonKeyAttributes", [])),
        )
        for g in gsis
    }


def table_drift(spec: dict[str, Any], existing: dict[str, Any]) -> str:
    """What differs between the template's table and the emulator's ('' when nothing)."""
    problems = []
    if [(k["AttributeName"], k["KeyType"]) for k in spec["KeySchema"]] != \
            [(k["AttributeName"], k["KeyType"]) for k in existing["KeySchema"]]:
        problems.append("key schema")
    if {(a["AttributeName"], a["AttributeType"]) for a in spec["AttributeDefinitions"]} != \
            {(a["AttributeName"], a["AttributeType"]) for a in existing["AttributeDefinitions"]}:
        problems.append("attribute definitions")
    want = _index_shape(spec.get("GlobalSecondaryIndexes", []))
    have = _index_shape(existing.get("GlobalSecondaryIndexes", []))
    for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
            problems.append(f"index {name}")
    return ", ".join(problems)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _is(e: ClientError, *codes: str) -> bool:
    return _code(e) in codes


# ---- command line --------------------------------------------------------------------------

def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise ProvisionError(f"{flag} {v!r}: expected NAME=VALUE")
        k, val = v.split("=", 1)
        out[k.strip()] = val
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="local_aws.py",
        description="Provision Switchyard's table, queues, bucket and secret on a local AWS "
                    "emulator, as template.yaml defines them.")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                       help="emulator URL, e.g. the one `infra/moto.sh start` prints "
                            "(default: $AWS_ENDPOINT_URL; required)")
        p.add_argument("--prefix", required=True,
                       help="name prefix: resources are <prefix>-work, <prefix>-table, ...")
        p.add_argument("--region", default=os.environ.get("AWS_REGION")
                       or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        p.add_argument("--template", type=Path, default=TEMPLATE, help=argparse.SUPPRESS)
        p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="override a template parameter (e.g. MaxReceiveCount=3)")

    prov = sub.add_parser("provision", help="create or update the resources; print their environment")
    common(prov)
    prov.add_argument("--json", action="store_true", help="print one JSON object instead of export lines")
    prov.add_argument("--api-keys", default=DEV_API_KEYS,
                      help=f"SWITCHYARD_API_KEYS in the emulator's secret (default {DEV_API_KEYS})")
    prov.add_argument("--webhook-secret", default=DEV_WEBHOOK_SECRET,
                      help="SWITCHYARD_WEBHOOK_SECRET in the secret (default: a fixed dev value)")
    prov.add_argument("--callback-secret", default=DEV_CALLBACK_SECRET,
                      help="SWITCHYARD_CALLBACK_SECRET in the secret (default: a fixed dev value)")
    prov.add_argument("--secret", action="append", default=[], metavar="NAME=VALUE",
                      help="another entry of the secret (OPENAI_API_KEY=..., "
                           "SWITCHYARD_ALLOW_PRIVATE_CALLBACKS=1, ...)")
    down = sub.add_parser("teardown", help="delete the resources (no-op for those already gone)")
    common(down)
    args = ap.parse_args(argv)

    try:
        if not args.endpoint:
            raise ProvisionError("give --endpoint URL (or set AWS_ENDPOINT_URL): this script only "
                                 "provisions a local emulator, never a real account")
        emu = Emulator(args.endpoint.rstrip("/"), args.region, args.prefix, args.template,
                       _pairs(args.param, "--param"))
        if args.command == "teardown":
            emu.teardown()
            log(f"removed the {args.prefix}-* resources from {args.endpoint}")
            return 0
        secret = {
            "SWITCHYARD_API_KEYS": args.api_keys,
            "SWITCHYARD_WEBHOOK_SECRET": args.webhook_secret,
            "SWITCHYARD_CALLBACK_SECRET": args.callback_secret,
            **_pairs(args.secret, "--secret"),
        }
        started = time.monotonic()
        env = emu.provision(secret)
        log(f"provisioned {args.prefix}-* on {args.endpoint} in {time.monotonic() - started:.1f} s")
    except ProvisionError as e:
        log(str(e))
        return 1
    except ClientError as e:
        log(f"the emulator refused: {_code(e)}: {e}")
        return 1
    except Exception as e:  # noqa: BLE001 - connection refused and the like, on one line
        if type(e).__name__ in ("EndpointConnectionError", "ConnectionClosedError"):
            log(f"cannot reach {args.endpoint} ({e}); is the emulator running? infra/moto.sh start")
            return 1
        raise
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        for k, v in env.items():
            print(f"export {k}={shlex.quote(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

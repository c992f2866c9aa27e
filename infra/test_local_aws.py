"""Self-test of infra/local_aws.py and of the invariants of template.yaml it relies on.

    url=$(infra/moto.sh start)
    SWITCHYARD_TEST_AWS_ENDPOINT=$url "${SWITCHYARD_VENV_AWS:-/var/tmp/switchyard-aws-venv}/bin/python" \
        -m unittest discover -s infra -p 'test_local_aws.py' -v
    infra/moto.sh stop

TemplateTest needs no emulator. EmulatorTest provisions against the emulator named by
SWITCHYARD_TEST_AWS_ENDPOINT (the variable the Rust emulator tests use) and FAILS without
it, so a missing emulator is never mistaken for a pass. Each test uses its own prefix and
tears it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unittest
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no infra/__pycache__ in the work tree

import local_aws  # noqa: E402

SCRIPT = HERE / "local_aws.py"
ENDPOINT = os.environ.get("SWITCHYARD_TEST_AWS_ENDPOINT", "")
REGION = "us-east-1"

# The environment every function gets (the brief the template was written to).
FUNCTION_ENV = [
    "SWITCHYARD_TABLE", "SWITCHYARD_BUCKET", "SWITCHYARD_BLOB_PREFIX",
    "SWITCHYARD_WORK_QUEUE_URL", "SWITCHYARD_WORK_DLQ_URL",
    "SWITCHYARD_NOTIFY_QUEUE_URL", "SWITCHYARD_NOTIFY_DLQ_URL",
    "SWITCHYARD_MAX_RECEIVE_COUNT", "SWITCHYARD_SECRET_ID", "RUST_LOG",
]


def offline_evaluator(template, params=None):
    def physical(logical, attribute):
        return f"<{logical}.{attribute or 'Ref'}>"
    return local_aws.Evaluator(template, params or {}, REGION, "123456789012", "t", physical)


class TemplateTest(unittest.TestCase):
    """What template.yaml must keep true, checked on the file itself."""

    @classmethod
    def setUpClass(cls):
        cls.t = local_aws.load_template()
        cls.r = cls.t["Resources"]

    def test_loader_keeps_cloudformation_tags(self):
        props = self.r["WorkQueue"]["Properties"]
        self.assertEqual(props["RedrivePolicy"]["deadLetterTargetArn"],
                         {"Fn::GetAtt": ["WorkDLQ", "Arn"]})
        self.assertEqual(props["RedrivePolicy"]["maxReceiveCount"], {"Ref": "MaxReceiveCount"})
        self.assertIn("Fn::FindInMap", props["VisibilityTimeout"])

    def test_visibility_is_six_times_the_consumer_timeout(self):
        # For every allowed worker timeout, and for the notifier's fixed one.
        spec = self.t["Parameters"]["WorkerTimeout"]
        for timeout in spec["AllowedValues"]:
            ev = offline_evaluator(self.t, {"WorkerTimeout": timeout})
            vis = ev.eval(self.r["WorkQueue"]["Properties"]["VisibilityTimeout"])
            self.assertGreaterEqual(int(vis), 6 * int(timeout), f"WorkerTimeout={timeout}")
        ev = offline_evaluator(self.t)
        notifier_timeout = int(ev.eval(self.r["NotifierFunction"]["Properties"]["Timeout"]))
        self.assertGreaterEqual(int(self.r["NotifyQueue"]["Properties"]["VisibilityTimeout"]),
                                6 * notifier_timeout)

    def test_sqs_functions_report_batch_item_failures(self):
        for fn, queue in [("WorkerFunction", "WorkQueue"), ("NotifierFunction", "NotifyQueue")]:
            events = self.r[fn]["Properties"]["Events"]
            (ev,) = [e for e in events.values() if e["Type"] == "SQS"]
            self.assertEqual(ev["Properties"]["Queue"], {"Fn::GetAtt": [queue, "Arn"]})
            self.assertEqual(ev["Properties"]["FunctionResponseTypes"], ["ReportBatchItemFailures"])

    def test_worker_runs_the_sweep_every_minute(self):
        # The stuck-run sweep (docs/architecture.md, "Recovery"): the worker's only other event,
        # and the permission its heartbeats need.
        events = self.r["WorkerFunction"]["Properties"]["Events"]
        sweep = events["Sweep"]
        self.assertEqual(sweep["Type"], "Schedule")
        self.assertEqual(sweep["Properties"]["Schedule"], "rate(1 minute)")
        self.assertEqual(sorted(e["Type"] for e in events.values()), ["SQS", "Schedule"])
        consume = [st for st in self.r["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                   if isinstance(st, dict) and st.get("Sid") == "ConsumeWork"]
        self.assertIn("sqs:ChangeMessageVisibility", consume[0]["Action"])

    def test_worker_max_concurrency_cannot_go_below_two(self):
        self.assertEqual(self.t["Parameters"]["WorkerMaxConcurrency"]["MinValue"], 2)
        with self.assertRaises(local_aws.ProvisionError):
            offline_evaluator(self.t, {"WorkerMaxConcurrency": "1"})

    def test_every_function_gets_the_environment(self):
        env = self.t["Globals"]["Function"]["Environment"]["Variables"]
        for name in FUNCTION_ENV:
            self.assertIn(name, env)
        # PUBLIC_URL on the worker only: on every function it would be a circular reference
        # (the webhook function's URL depends on the webhook function).
        self.assertNotIn("SWITCHYARD_PUBLIC_URL", env)
        self.assertIn("SWITCHYARD_PUBLIC_URL",
                      self.r["WorkerFunction"]["Properties"]["Environment"]["Variables"])

    def test_functions_build_their_binary(self):
        for fn, binary in [("IntakeFunction", "intake"), ("WorkerFunction", "worker"),
                           ("WebhookFunction", "webhook"), ("NotifierFunction", "notifier")]:
            meta = self.r[fn]["Metadata"]
            self.assertEqual(meta["BuildMethod"], "rust-cargolambda")
            self.assertEqual(meta["BuildProperties"]["Binary"], binary)

    def test_index_projection_is_defined_once(self):
        for gsi in self.r["Table"]["Properties"]["GlobalSecondaryIndexes"]:
            if gsi["IndexName"] == "active":
                # The sweep's sparse index holds keys only: no header update rewrites it.
                self.assertEqual(gsi["Projection"], {"ProjectionType": "KEYS_ONLY"})
                continue
            self.assertEqual(gsi["Projection"]["NonKeyAttributes"],
                             {"Fn::FindInMap": ["TableIndexes", "Projection", "NonKeyAttributes"]})

    def test_every_provisioned_type_has_a_local_name(self):
        for logical, res in self.r.items():
            if res["Type"] in local_aws.PROVISIONED_TYPES:
                self.assertIn(logical, local_aws.LOCAL_NAMES)

    def test_names_and_prefix_rules(self):
        n = local_aws.names("sy-abc")
        self.assertEqual(n["WorkQueue"], "sy-abc-work")
        self.assertEqual(n["WorkDLQ"], "sy-abc-work-dlq")
        self.assertEqual(n["NotifyDLQ"], "sy-abc-notify-dlq")
        for bad in ["", "a", "UPPER", "under_score", "-lead", "trail-"]:
            with self.assertRaises(local_aws.ProvisionError, msg=bad):
                local_aws.names(bad)

    def test_lifecycle_rule_translation(self):
        self.assertEqual(
            local_aws.lifecycle_rule({"Id": "x", "Status": "Enabled", "Prefix": "uploads/",
                                      "ExpirationInDays": "7"}),
            {"ID": "x", "Status": "Enabled", "Filter": {"Prefix": "uploads/"},
             "Expiration": {"Days": 7}})

    def test_conditions_and_optional_items(self):
        ev = offline_evaluator(self.t)
        rules = ev.eval(self.r["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"])
        self.assertEqual([r["Id"] for r in rules],
                         ["abort-incomplete-multipart-uploads", "expire-uploads"])
        ev = offline_evaluator(self.t, {"BlobsExpireDays": "30"})
        rules = ev.eval(self.r["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"])
        self.assertEqual(rules[-1]["Prefix"], "blobs/")
        self.assertEqual(rules[-1]["ExpirationInDays"], "30")
        self.assertFalse(offline_evaluator(self.t).condition("HasBedrock"))
        self.assertTrue(offline_evaluator(self.t, {"BedrockModelArns": "*"}).condition("HasBedrock"))


class CliTest(unittest.TestCase):
    """The command line, where no emulator is needed."""

    def test_refuses_without_endpoint(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        p = subprocess.run([sys.executable, str(SCRIPT), "provision", "--prefix", "sy-none"],
                           capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--endpoint", p.stderr)

    def test_unknown_parameter_is_refused(self):
        p = subprocess.run([sys.executable, str(SCRIPT), "provision", "--endpoint",
                            "http://127.0.0.1:9", "--prefix", "sy-none", "--param", "Nope=1"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn("not a parameter of template.yaml", p.stderr)


class EmulatorTest(unittest.TestCase):
    """local_aws.py against a running emulator (moto)."""

    @classmethod
    def setUpClass(cls):
        if not ENDPOINT:
            raise AssertionError(
                "SWITCHYARD_TEST_AWS_ENDPOINT is not set: start the emulator with "
                "`infra/moto.sh start` and pass its URL (see this file's docstring)")
        import boto3
        kw = dict(endpoint_url=ENDPOINT, region_name=REGION,
                  aws_access_key_id="testing", aws_secret_access_key="testing")
        cls.ddb = boto3.client("dynamodb", **kw)
        cls.sqs = boto3.client("sqs", **kw)
        cls.s3 = boto3.client("s3", **kw)
        cls.sm = boto3.client("secretsmanager", **kw)
        cls.t = local_aws.load_template()

    def setUp(self):
        self.prefix = f"sy-test-{uuid.uuid4().hex[:8]}"
        self.addCleanup(self.run_cli, "teardown")

    def run_cli(self, command, *args, check=True):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        p = subprocess.run(
            [sys.executable, str(SCRIPT), command, "--endpoint", ENDPOINT, "--prefix",
             self.prefix, "--region", REGION, *args],
            capture_output=True, text=True, env=env, timeout=120)
        if check:
            self.assertEqual(p.returncode, 0, p.stderr)
        return p

    def provision_json(self, *args):
        return json.loads(self.run_cli("provision", "--json", *args).stdout)

    def queue_attrs(self, url):
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    def test_table_matches_template(self):
        env = self.provision_json()
        props = self.t["Resources"]["Table"]["Properties"]
        mapped = self.t["Mappings"]["TableIndexes"]["Projection"]["NonKeyAttributes"]
        table = self.ddb.describe_table(TableName=env["SWITCHYARD_TABLE"])["Table"]
        self.assertEqual(table["TableName"], f"{self.prefix}-table")
        self.assertEqual(table["KeySchema"], props["KeySchema"])
        self.assertEqual(
            sorted((a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]),
            sorted((a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]))
        self.assertEqual(table["BillingModeSummary"]["BillingMode"], "PAY_PER_REQUEST")
        got = {g["IndexName"]: g for g in table["GlobalSecondaryIndexes"]}
        want = {g["IndexName"]: g for g in props["GlobalSecondaryIndexes"]}
        self.assertEqual(set(got), {"by_tenant", "all_runs", "active"})
        self.assertEqual(set(got), set(want))
        for name, g in want.items():
            self.assertEqual(got[name]["KeySchema"], g["KeySchema"], name)
            if name == "active":
                self.assertEqual(got[name]["Projection"]["ProjectionType"], "KEYS_ONLY")
                continue
            self.assertEqual(got[name]["Projection"]["ProjectionType"], "INCLUDE", name)
            self.assertEqual(sorted(got[name]["Projection"]["NonKeyAttributes"]), sorted(mapped), name)
        self.assertIn("status", mapped)
        ttl = self.ddb.describe_time_to_live(TableName=env["SWITCHYARD_TABLE"])["TimeToLiveDescription"]
        self.assertEqual(ttl["TimeToLiveStatus"], "ENABLED")
        self.assertEqual(ttl["AttributeName"], props["TimeToLiveSpecification"]["AttributeName"])
        self.assertEqual(ttl["AttributeName"], "ttl")
        pitr = self.ddb.describe_continuous_backups(TableName=env["SWITCHYARD_TABLE"])
        self.assertEqual(pitr["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
                         ["PointInTimeRecoveryStatus"], "ENABLED")

    def test_queues_match_template(self):
        env = self.provision_json()
        params = self.t["Parameters"]
        default_receives = int(params["MaxReceiveCount"]["Default"])
        work_vis = self.t["Mappings"]["WorkerTimeouts"][str(params["WorkerTimeout"]["Default"])][
            "VisibilityTimeout"]
        self.assertEqual(env["SWITCHYARD_MAX_RECEIVE_COUNT"], str(default_receives))
        cases = [
            ("SWITCHYARD_WORK_QUEUE_URL", "SWITCHYARD_WORK_DLQ_URL", "work", work_vis,
             default_receives),
            # The notify queue dead-letters after the notifier's attempt limit (MAX_NOTIFY_ATTEMPTS).
            ("SWITCHYARD_NOTIFY_QUEUE_URL", "SWITCHYARD_NOTIFY_DLQ_URL", "notify",
             self.t["Resources"]["NotifyQueue"]["Properties"]["VisibilityTimeout"], 6),
        ]
        for q, dlq, suffix, vis, receives in cases:
            self.assertTrue(env[q].endswith(f"/{self.prefix}-{suffix}"), env[q])
            self.assertTrue(env[dlq].endswith(f"/{self.prefix}-{suffix}-dlq"), env[dlq])
            a = self.queue_attrs(env[q])
            d = self.queue_attrs(env[dlq])
            redrive = json.loads(a["RedrivePolicy"])
            self.assertEqual(redrive["deadLetterTargetArn"], d["QueueArn"], suffix)
            self.assertEqual(int(redrive["maxReceiveCount"]), receives, suffix)
            self.assertEqual(int(a["VisibilityTimeout"]), int(vis), suffix)
            self.assertEqual(a["MaximumMessageSize"], "262144", suffix)
            self.assertEqual(a["SqsManagedSseEnabled"], "true", suffix)
            self.assertEqual(d["MessageRetentionPeriod"], str(14 * 24 * 3600), suffix)

    def test_provision_is_idempotent_and_applies_overrides(self):
        first = self.run_cli("provision").stdout
        self.assertEqual(self.run_cli("provision").stdout, first)
        env = self.provision_json("--param", "MaxReceiveCount=3", "--param", "WorkerTimeout=60")
        self.assertEqual(env["SWITCHYARD_MAX_RECEIVE_COUNT"], "3")
        a = self.queue_attrs(env["SWITCHYARD_WORK_QUEUE_URL"])
        self.assertEqual(json.loads(a["RedrivePolicy"])["maxReceiveCount"], 3)
        self.assertEqual(a["VisibilityTimeout"], "360")

    def test_export_lines_and_secret(self):
        out = self.run_cli("provision", "--api-keys", "k-1:acme", "--secret", "OPENAI_API_KEY=sk-x").stdout
        env = {}
        for line in out.splitlines():
            self.assertTrue(line.startswith("export "), line)
            k, v = line[len("export "):].split("=", 1)
            env[k] = v.strip("'")
        for name in FUNCTION_ENV + ["AWS_ENDPOINT_URL", "AWS_REGION"]:
            self.assertIn(name, env)
        self.assertEqual(env["SWITCHYARD_BLOB_PREFIX"], "blobs/")
        self.assertEqual(env["AWS_ENDPOINT_URL"], ENDPOINT.rstrip("/"))
        secret = json.loads(self.sm.get_secret_value(SecretId=env["SWITCHYARD_SECRET_ID"])["SecretString"])
        self.assertEqual(secret["SWITCHYARD_API_KEYS"], "k-1:acme")
        self.assertEqual(secret["OPENAI_API_KEY"], "sk-x")
        self.assertTrue(secret["SWITCHYARD_WEBHOOK_SECRET"].startswith("whsec_"))
        self.assertTrue(secret["SWITCHYARD_CALLBACK_SECRET"].startswith("whsec_"))

    def test_bucket_is_usable_and_configured(self):
        env = self.provision_json()
        bucket = env["SWITCHYARD_BUCKET"]
        self.s3.put_object(Bucket=bucket, Key="blobs/abc", Body=b"x")  # plain http works
        self.assertEqual(self.s3.get_object(Bucket=bucket, Key="blobs/abc")["Body"].read(), b"x")
        pab = self.s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        self.assertTrue(all(pab.values()) and len(pab) == 4, pab)
        rules = {r["ID"]: r for r in self.s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
        self.assertEqual(rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"],
                         {"DaysAfterInitiation": 1})
        self.assertEqual(rules["expire-uploads"]["Filter"], {"Prefix": "uploads/"})
        self.assertNotIn("expire-blobs", rules)
        enc = self.s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        self.assertEqual(enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"], "AES256")

    def test_table_drift_is_refused(self):
        name = f"{self.prefix}-table"
        self.ddb.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"},
                                  {"AttributeName": "SK", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"},
                       {"AttributeName": "SK", "KeyType": "RANGE"}])
        p = self.run_cli("provision", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("differs from template.yaml", p.stderr)
        self.assertIn("index by_tenant", p.stderr)

    def test_teardown_removes_everything_and_repeats(self):
        env = self.provision_json()
        self.s3.put_object(Bucket=env["SWITCHYARD_BUCKET"], Key="uploads/u", Body=b"u")
        self.run_cli("teardown")
        self.run_cli("teardown")
        names = self.ddb.list_tables()["TableNames"]
        self.assertNotIn(env["SWITCHYARD_TABLE"], names)
        urls = self.sqs.list_queues(QueueNamePrefix=self.prefix).get("QueueUrls", [])
        self.assertEqual(urls, [])
        buckets = [b["Name"] for b in self.s3.list_buckets()["Buckets"]]
        self.assertNotIn(env["SWITCHYARD_BUCKET"], buckets)


if __name__ == "__main__":
    unittest.main()

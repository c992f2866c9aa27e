#!/usr/bin/env python3
"""A local AWS Lambda Runtime API, and `make bench-aws`'s cold-start figures measured on it.

    python tests/bench/lambda_runtime_api.py --endpoint URL --bin-dir DIR [--runs 10]

The Runtime API part (`RuntimeApi`, standard library only) implements what a custom runtime
such as `lambda_runtime` talks to, on 127.0.0.1:<port>:

    GET  /2018-06-01/runtime/invocation/next              -> the next event, with the headers
         Lambda-Runtime-Aws-Request-Id, -Deadline-Ms, -Invoked-Function-Arn, -Trace-Id
    POST /2018-06-01/runtime/invocation/<id>/response     -> 202
    POST /2018-06-01/runtime/invocation/<id>/error        -> 202
    POST /2018-06-01/runtime/init/error                   -> 202

The measurement (`main`, needs boto3: run it with moto's venv python, infra/moto.sh) provisions
a deployment on the emulator at --endpoint with infra/local_aws.py, starts `intake` on the
Runtime API and creates runs through it (API Gateway v2 events of
events/intake-apigw-v2-post-run.json), then, --runs times: receives 10 of their wake-ups from the
work queue, starts a fresh `worker` process (a cold start) with the function's environment,
and hands it that SQS batch as one invocation. Measured per cold start:

- init: process start -> its first `GET .../invocation/next`;
- first invoke: the event handed over -> the response posted;
- peak RSS of the process over init and the batch (`VmHWM`, read after it answered).

The same for `hello` (crates/lambdas/examples/hello.rs, a hello-world `lambda_runtime`
function that echoes the event) as the baseline. Prints median and p90. Figures, not
assertions. The binaries are whatever --bin-dir holds (make bench-aws: x86_64 release builds;
Lambda runs the arm64 ones, which this machine cannot run).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/2018-06-01/runtime"


class Invocation:
    def __init__(self, event: bytes, deadline_ms: int, arn: str):
        self.id = str(uuid.uuid4())
        self.event = event
        self.deadline_ms = deadline_ms
        self.arn = arn
        self.handed_at: float | None = None
        self.done_at: float | None = None
        self.result: bytes | None = None
        self.error: bytes | None = None
        self.done = threading.Event()


class RuntimeApi:
    """One function's Runtime API: `invoke` queues an event and waits for its answer."""

    def __init__(self, function_name: str = "bench", timeout_s: int = 180):
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.by_id: dict[str, Invocation] = {}
        self.first_next_at: float | None = None
        self.init_error: bytes | None = None
        self.arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.timeout_s = timeout_s
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _answer(self, code: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self):
                if self.path != f"{PREFIX}/invocation/next":
                    return self._answer(404, b'{"errorType":"NotFound"}')
                if api.first_next_at is None:
                    api.first_next_at = time.monotonic()
                inv = api.pending.get()
                api.by_id[inv.id] = inv
                inv.handed_at = time.monotonic()
                self._answer(200, inv.event, {
                    "Lambda-Runtime-Aws-Request-Id": inv.id,
                    "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": inv.arn,
                    "Lambda-Runtime-Trace-Id":
                        f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                })

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.path == f"{PREFIX}/init/error":
                    api.init_error = body
                    return self._answer(202, b'{"status":"OK"}')
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    inv = api.by_id.get(parts[1])
                    if inv is None:
                        return self._answer(400, b'{"errorType":"InvalidRequestID"}')
                    inv.done_at = time.monotonic()
                    if parts[2] == "response":
                        inv.result = body
                    else:
                        inv.error = body
                    self._answer(202, b'{"status":"OK"}')
                    inv.done.set()
                    return
                self._answer(404, b'{"errorType":"NotFound"}')

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # A function stopped while its `next` request waited: expected, not noise.
                if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def invoke(self, event: dict | bytes, wait_s: float = 300) -> Invocation:
        raw = event if isinstance(event, bytes) else json.dumps(event).encode()
        inv = Invocation(raw, int(time.time() * 1000) + self.timeout_s * 1000, self.arn)
        self.pending.put(inv)
        if not inv.done.wait(wait_s):
            raise TimeoutError(f"no answer to invocation {inv.id} in {wait_s} s")
        return inv

    def close(self):
        self.server.shutdown()


def function_env(base: dict[str, str], api: RuntimeApi, name: str, memory_mb: int = 512,
                 timeout_s: int = 180) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"2026/12/03/[$LATEST]{uuid.uuid4().hex}",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(timeout_s),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RUST_LOG": "warn",
    }
    env.update(base)
    return env


class Process:
    """A function process on `api`; `stop` returns its peak RSS in KiB.

    The peak is `VmHWM` of /proc/<pid>/status read just before the process is stopped (after
    its invocation answered): the high-water mark of the exec'd program's own memory.
    `wait4`'s ru_maxrss is not used: Linux carries the forking parent's (this Python's)
    high-water mark across exec into it.
    """

    def __init__(self, binary: Path, env: dict[str, str], log):
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([str(binary)], env=env, stdout=log, stderr=log)

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmHWM for pid {self.proc.pid}")

    def stop(self) -> int:
        peak = self.peak_rss_kib()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return peak


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def provision(endpoint: str, prefix: str, api_key: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "infra/local_aws.py"), "provision", "--endpoint", endpoint,
         "--prefix", prefix, "--json", "--api-keys", f"{api_key}:acme"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def sqs_event(messages: list[dict], queue_arn: str) -> dict:
    records = []
    for m in messages:
        attrs = m.get("Attributes", {})
        records.append({
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": {
                "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
                "SentTimestamp": attrs.get("SentTimestamp", str(int(time.time() * 1000))),
                "SenderId": attrs.get("SenderId", "AIDAEXAMPLE"),
                "ApproximateFirstReceiveTimestamp":
                    attrs.get("ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))),
            },
            "messageAttributes": {},
            "md5OfBody": m.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": "us-east-1",
        })
    return {"Records": records}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="the emulator (moto) URL")
    ap.add_argument("--bin-dir", required=True, type=Path,
                    help="directory with intake, worker and examples/hello")
    ap.add_argument("--runs", type=int, default=10, help="cold starts of each binary")
    ap.add_argument("--batch", type=int, default=10, help="wake-ups per worker batch")
    args = ap.parse_args()

    import boto3  # moto's venv

    bins = {n: args.bin_dir / n for n in ("intake", "worker")}
    bins["hello"] = args.bin_dir / "examples" / "hello"
    for n, p in bins.items():
        if not p.is_file():
            print(f"lambda_runtime_api.py: {p} is missing (build it first)", file=sys.stderr)
            return 2
    prefix = f"sy-init-{uuid.uuid4().hex[:8]}"
    fixture = json.loads((ROOT / "events/intake-apigw-v2-post-run.json").read_text())
    api_key = fixture["headers"]["authorization"].split()[-1]
    env = provision(args.endpoint, prefix, api_key)
    sqs = boto3.client("sqs", endpoint_url=args.endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    work_url = env["SWITCHYARD_WORK_QUEUE_URL"]
    work_arn = sqs.get_queue_attributes(QueueUrl=work_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    log = open(os.environ.get("BENCH_LOG", os.devnull), "ab")

    # Runs to wake up: created through intake (one warm process), args.runs batches' worth.
    intake_api = RuntimeApi("intake", timeout_s=30)
    intake = Process(bins["intake"], function_env(env, intake_api, "intake", timeout_s=30), log)
    for i in range(args.runs * args.batch):
        ev = json.loads(json.dumps(fixture))
        ev["headers"]["idempotency-key"] = f"bench-{prefix}-{i}"
        ev["requestContext"]["requestId"] = uuid.uuid4().hex
        inv = intake_api.invoke(ev, wait_s=60)
        answer = json.loads(inv.result or b"{}")
        if inv.error is not None or answer.get("statusCode") not in (200, 202):
            print(f"intake answered {inv.error or answer}", file=sys.stderr)
            intake.stop()
            return 1
    intake_init = intake_api.first_next_at - intake.started_at
    intake_rss = intake.stop()
    intake_api.close()

    results: dict[str, dict[str, list[float]]] = {}
    for name in ("worker", "hello"):
        r = results.setdefault(name, {"init": [], "invoke": [], "rss": []})
        for _ in range(args.runs):
            if name == "worker":
                msgs: list[dict] = []
                while len(msgs) < args.batch:
                    got = sqs.receive_message(
                        QueueUrl=work_url, MaxNumberOfMessages=args.batch - len(msgs),
                        VisibilityTimeout=1080, AttributeNames=["All"]).get("Messages", [])
                    if not got:
                        break
                    msgs.extend(got)
                if len(msgs) < args.batch:
                    print(f"only {len(msgs)} wake-ups on the work queue", file=sys.stderr)
                    return 1
            else:
                msgs = [{"MessageId": str(uuid.uuid4()), "ReceiptHandle": "r", "Body": "{}"}
                        for _ in range(args.batch)]
            event = sqs_event(msgs, work_arn)
            api = RuntimeApi(name)
            proc = Process(bins[name], function_env(env, api, f"{prefix}-{name}"), log)
            inv = api.invoke(event)
            rss = proc.stop()
            api.close()
            if inv.error is not None or api.init_error is not None:
                print(f"{name}: {inv.error or api.init_error}", file=sys.stderr)
                return 1
            if name == "worker":
                failed = {f["itemIdentifier"]
                          for f in json.loads(inv.result or b"{}").get("batchItemFailures", [])}
                done = [m for m in msgs if m["MessageId"] not in failed]
                for m in done:  # the event source mapping deletes what did not fail
                    sqs.delete_message(QueueUrl=work_url, ReceiptHandle=m["ReceiptHandle"])
                if failed:
                    print(f"worker reported {len(failed)} failed records", file=sys.stderr)
            r["init"].append((api.first_next_at - proc.started_at) * 1000)
            r["invoke"].append((inv.done_at - inv.handed_at) * 1000)
            r["rss"].append(rss / 1024)

    print(f"Cold starts on a local Runtime API ({args.runs} each, binaries in {args.bin_dir}; "
          f"worker batch: {args.batch} wake-ups of support-triage runs, DynamoDB/SQS/S3 on moto "
          f"at {args.endpoint})\n")
    print("| binary | init median / p90 | first invoke median / p90 | peak RSS median / max |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {statistics.median(r['init']):.1f} / {pct(r['init'], 0.9):.1f} ms "
              f"| {statistics.median(r['invoke']):.1f} / {pct(r['invoke'], 0.9):.1f} ms "
              f"| {statistics.median(r['rss']):.1f} / {max(r['rss']):.1f} MiB |")
    w, h = statistics.median(results["worker"]["init"]), statistics.median(results["hello"]["init"])
    print(f"\nworker init / hello init (medians): {w / h:.2f}x (goal <= 2x); "
          f"worker peak RSS {max(results['worker']['rss']):.1f} MiB (goal <= 32 MiB)")
    print(f"intake (one warm process, {args.runs * args.batch} POST /v1/runs): init "
          f"{intake_init * 1000:.1f} ms, peak RSS {intake_rss / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

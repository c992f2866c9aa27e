#!/usr/bin/env python3
"""A local AWS Lambda Runtime API, and `make bench-aws`'s cold-start figures measured on it.

    python tests/bench/lambda_runtime_api.py --endpoint URL --bin-dir DIR [--runs 10]
    python tests/bench/lambda_runtime_api.py --endpoint URL --lambda-dir DIR \
        --runner "qemu-aarch64 -L /usr/aarch64-linux-gnu" [--runs 2]

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
events/intake-apigw-v2-post-run.json), then, --runs times each, starts a fresh process (a cold
start) with the function's environment and hands it one invocation:

- `worker`: 10 of those runs' wake-ups received from the work queue, as one SQS batch;
- `intake`: one `POST /v1/runs` (the fixture, a fresh idempotency key);
- `notifier`: an SQS batch of 10 notifications (events/notifier-sqs-batch.json's record, ten
  message ids; their run does not exist, so the batch is read, checked and acked);
- `webhook`: events/webhook-function-url.json (a provider callback whose example signature
  does not verify against this deployment's secret: the answer must be 401);
- `hello` (crates/lambdas/examples/hello.rs, a hello-world `lambda_runtime` function that
  echoes the event): the baseline.

Measured per cold start: init (process start -> its first `GET .../invocation/next`), first
invoke (the event handed over -> the response posted), peak RSS over init and the invocation
(`VmHWM`, read after it answered), and the function's own `init phases` log line (the SDK
configuration, the settings secret, the wiring: `Deployment::from_env_for`). Prints median and
p90, and the load average. Figures, not assertions — but every run a worker took must have
ended succeeded (read back through a warm intake, `GET /v1/runs/{id}`), or the script fails. The binaries are whatever --bin-dir holds (make bench-aws: x86_64 release builds).

The packages Lambda runs are arm64: `--lambda-dir` takes cargo-lambda's layout
(DIR/<function>/bootstrap, what `sam build` zips) and `--runner` the emulator to start them
with (qemu-user on an x86_64 machine; `make check-arm64`). Run that way, the timings are the
emulator's, not Lambda's: what it shows is that the shipped files start, serve their
invocation against the emulated services and answer without a failed record. A missing hello
package leaves the baseline row and the ratios out.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/2018-06-01/runtime"
FUNCTIONS = ("intake", "worker", "notifier", "webhook")


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
        self.name = function_name
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

    def invoke(self, event: dict | bytes, wait_s: float = 300,
               process: "Process | None" = None) -> Invocation:
        """Hands `event` to the function and waits for its answer; fails early when
        `process` (the function's) exits before answering."""
        raw = event if isinstance(event, bytes) else json.dumps(event).encode()
        inv = Invocation(raw, int(time.time() * 1000) + self.timeout_s * 1000, self.arn)
        self.pending.put(inv)
        until = time.monotonic() + wait_s
        while not inv.done.wait(0.2):
            if process is not None and process.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {process.proc.returncode} before "
                                   f"answering (log: {process.log_path})")
            if time.monotonic() > until:
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
        # The functions' `init phases` line is an info line of switchyard_lambdas.
        "RUST_LOG": "warn,switchyard_lambdas=info",
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

    def __init__(self, binary: Path, env: dict[str, str], log_path: Path,
                 runner: list[str] | None = None):
        self.started_at = time.monotonic()
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([*(runner or []), str(binary)], env=env, stdout=self.log,
                                     stderr=self.log)

    def init_phases(self) -> dict[str, float]:
        """The `init phases` line the function logged (JSON tracing), if any."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"init phases"' in line:
                try:
                    fields = json.loads(line).get("fields", {})
                except json.JSONDecodeError:
                    continue
                return {k: float(v) for k, v in fields.items() if k.endswith("_ms")}
        return {}

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
        self.log.close()
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
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--bin-dir", type=Path,
                       help="directory with intake, worker, notifier, webhook and examples/hello")
    where.add_argument("--lambda-dir", type=Path,
                       help="cargo-lambda's output: <dir>/<function>/bootstrap (hello optional)")
    ap.add_argument("--runner", default="",
                    help="command to start each binary with, e.g. qemu-aarch64 -L <sysroot>")
    ap.add_argument("--runs", type=int, default=10, help="cold starts of each binary")
    ap.add_argument("--batch", type=int, default=10, help="wake-ups per worker batch")
    args = ap.parse_args()

    import boto3  # moto's venv

    runner = shlex.split(args.runner)
    if args.lambda_dir is not None:
        bins = {n: args.lambda_dir / n / "bootstrap" for n in FUNCTIONS}
        hello = args.lambda_dir / "hello" / "bootstrap"
        if hello.is_file():
            bins["hello"] = hello
        bin_dir = args.lambda_dir
    else:
        bins = {n: args.bin_dir / n for n in FUNCTIONS}
        bins["hello"] = args.bin_dir / "examples" / "hello"
        bin_dir = args.bin_dir
    for n, p in bins.items():
        if not p.is_file():
            print(f"lambda_runtime_api.py: {p} is missing (build it first)", file=sys.stderr)
            return 2
    prefix = f"sy-init-{uuid.uuid4().hex[:8]}"
    fixture = json.loads((ROOT / "events/intake-apigw-v2-post-run.json").read_text())
    notification = json.loads((ROOT / "events/notifier-sqs-batch.json").read_text())["Records"][0]
    api_key = fixture["headers"]["authorization"].split()[-1]
    env = provision(args.endpoint, prefix, api_key)
    sqs = boto3.client("sqs", endpoint_url=args.endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    work_url = env["SWITCHYARD_WORK_QUEUE_URL"]
    work_arn = sqs.get_queue_attributes(QueueUrl=work_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    logs = Path(tempfile.mkdtemp(prefix="bench-lambda-"))
    seq = iter(range(1_000_000))

    def post_run() -> dict:
        ev = json.loads(json.dumps(fixture))
        ev["headers"]["idempotency-key"] = f"bench-{prefix}-{next(seq)}"
        ev["requestContext"]["requestId"] = uuid.uuid4().hex
        return ev

    # Runs to wake up: created through intake (one warm process), args.runs batches' worth.
    intake_api = RuntimeApi("intake", timeout_s=30)
    intake = Process(bins["intake"], function_env(env, intake_api, "intake", timeout_s=30),
                     logs / "intake-warm.log", runner)
    for _ in range(args.runs * args.batch):
        inv = intake_api.invoke(post_run(), wait_s=60, process=intake)
        answer = json.loads(inv.result or b"{}")
        if inv.error is not None or answer.get("statusCode") not in (200, 202):
            print(f"intake answered {inv.error or answer}", file=sys.stderr)
            intake.stop()
            return 1
    intake.stop()
    intake_api.close()

    def worker_event() -> dict | None:
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
            return None
        return sqs_event(msgs, work_arn)

    def notifier_event() -> dict:
        records = []
        for _ in range(args.batch):
            r = json.loads(json.dumps(notification))
            r["messageId"] = str(uuid.uuid4())
            records.append(r)
        return {"Records": records}

    def hello_event() -> dict:
        msgs = [{"MessageId": str(uuid.uuid4()), "ReceiptHandle": "r", "Body": "{}"}
                for _ in range(args.batch)]
        return sqs_event(msgs, work_arn)

    handled: list[str] = []  # the runs whose wake-ups a worker took without failing them

    def webhook_event() -> dict:
        return json.loads((ROOT / "events/webhook-function-url.json").read_text())

    events = {"worker": worker_event, "intake": post_run, "notifier": notifier_event,
              "webhook": webhook_event, "hello": hello_event}
    results: dict[str, dict[str, list]] = {}
    for name in [n for n in ("worker", "intake", "notifier", "webhook", "hello") if n in bins]:
        r = results.setdefault(name, {"init": [], "invoke": [], "rss": [], "phases": []})
        for i in range(args.runs):
            event = events[name]()
            if event is None:
                return 1
            api = RuntimeApi(name)
            proc = Process(bins[name], function_env(env, api, f"{prefix}-{name}"),
                           logs / f"{name}-{i}.log", runner)
            try:
                inv = api.invoke(event, process=proc)
            except (RuntimeError, TimeoutError) as e:
                print(f"{name}: {e}", file=sys.stderr)
                proc.stop()
                api.close()
                return 1
            rss = proc.stop()
            api.close()
            if inv.error is not None or api.init_error is not None:
                print(f"{name}: {inv.error or api.init_error}", file=sys.stderr)
                return 1
            answer = json.loads(inv.result or b"{}")
            failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", []) or []}
            if name == "worker":
                done = [rec for rec in event["Records"] if rec["messageId"] not in failed]
                for rec in done:  # the event source mapping deletes what did not fail
                    sqs.delete_message(QueueUrl=work_url, ReceiptHandle=rec["receiptHandle"])
                    handled.append(json.loads(rec["body"])["run_id"])
            if failed and name != "hello":  # every record must pass: no figures otherwise
                print(f"{name} reported {len(failed)} failed records", file=sys.stderr)
                return 1
            # The fixture's example signature does not verify against this deployment's
            # secret: the webhook checks it and refuses (tests/lambda_local.py expects the same).
            if name == "webhook" and answer.get("statusCode") != 401:
                print(f"webhook answered {answer} (expected 401)", file=sys.stderr)
                return 1
            if name == "intake" and answer.get("statusCode") not in (200, 202):
                print(f"intake answered {answer}", file=sys.stderr)
                return 1
            r["init"].append((api.first_next_at - proc.started_at) * 1000)
            r["invoke"].append((inv.done_at - inv.handed_at) * 1000)
            r["rss"].append(rss / 1024)
            r["phases"].append(proc.init_phases())

    # Every run a worker took must have ended succeeded (support-triage on the built-in
    # models): read back through a warm intake, `GET /v1/runs/{id}`.
    listing = json.loads((ROOT / "events/intake-apigw-v2-list-runs.json").read_text())
    check_api = RuntimeApi("intake", timeout_s=30)
    check = Process(bins["intake"], function_env(env, check_api, "intake", timeout_s=30),
                    logs / "intake-check.log", runner)
    statuses: dict[str, int] = {}
    for run_id in handled:
        ev = json.loads(json.dumps(listing))
        ev["rawPath"] = ev["requestContext"]["http"]["path"] = f"/v1/runs/{run_id}"
        ev["rawQueryString"] = ""
        ev.pop("queryStringParameters", None)
        ev["pathParameters"] = {"proxy": f"v1/runs/{run_id}"}
        ev["requestContext"]["requestId"] = uuid.uuid4().hex
        try:
            inv = check_api.invoke(ev, wait_s=60, process=check)
        except (RuntimeError, TimeoutError) as e:
            print(f"intake (read-back): {e}", file=sys.stderr)
            check.stop()
            check_api.close()
            return 1
        answer = json.loads(inv.result or b"{}")
        status = json.loads(answer.get("body") or "{}").get("status", f"HTTP {answer.get('statusCode')}")
        statuses[status] = statuses.get(status, 0) + 1
    check.stop()
    check_api.close()
    expected = args.runs * args.batch if "worker" in bins else 0
    if len(handled) != expected or statuses.get("succeeded", 0) != len(handled):
        print(f"the worker took {len(handled)} of {expected} runs; they ended {statuses}, "
              "not all succeeded", file=sys.stderr)
        return 1

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    started = f"started by `{args.runner}`, timings are the emulator's; " if runner else ""
    print(f"Cold starts on a local Runtime API ({args.runs} each, binaries in {bin_dir}; "
          f"{started}DynamoDB/SQS/S3 on moto at {args.endpoint}; load average {load})\n")
    print(f"The {len(handled)} runs the worker took all ended succeeded (read back through intake).\n")
    print("| binary | invocation | init median / p90 | first invoke median / p90 | "
          "init + first invoke median | peak RSS median / max |")
    print("|---|---|---|---|---|---|")
    what = {"worker": f"SQS batch: {args.batch} wake-ups of support-triage runs",
            "intake": "one POST /v1/runs",
            "notifier": f"SQS batch: {args.batch} notifications (no such run)",
            "webhook": "one POST /hooks/replicate (example signature: 401)",
            "hello": f"SQS batch of {args.batch} (echoed)"}
    for name, r in results.items():
        both = [a + b for a, b in zip(r["init"], r["invoke"])]
        print(f"| {name} | {what[name]} | {statistics.median(r['init']):.1f} / "
              f"{pct(r['init'], 0.9):.1f} ms | {statistics.median(r['invoke']):.1f} / "
              f"{pct(r['invoke'], 0.9):.1f} ms | {statistics.median(both):.1f} ms | "
              f"{statistics.median(r['rss']):.1f} / {max(r['rss']):.1f} MiB |")
    print("\nInit phases (medians, from each function's `init phases` line):\n")
    print("| binary | SDK configuration | settings secret | wiring (clients, providers, workflows) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        ph = [p for p in r["phases"] if p]
        if not ph:
            continue
        med = lambda k: statistics.median(p.get(k, 0.0) for p in ph)  # noqa: E731
        print(f"| {name} | {med('sdk_config_ms'):.1f} ms | {med('settings_ms'):.1f} ms | "
              f"{med('wiring_ms'):.1f} ms |")
    print()
    if "hello" not in results:
        print("no hello package: no baseline, no ratios")
        return 0
    h = statistics.median(results["hello"]["init"])
    for name in ("worker", "intake", "notifier", "webhook"):
        v = statistics.median(results[name]["init"])
        print(f"{name} init / hello init (medians): {v / h:.2f}x (goal <= 2x)")
    print(f"worker peak RSS {max(results['worker']['rss']):.1f} MiB for a batch of "
          f"{args.batch} runs (goal <= 32 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

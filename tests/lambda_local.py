#!/usr/bin/env python3
"""The four Lambda functions on `cargo lambda watch`'s Runtime API, invoked with the events/ fixtures.

    python3 tests/lambda_local.py --endpoint URL [--port 9070] [--keep]

URL is a running AWS emulator (`infra/moto.sh start` prints it; `make test-lambda-local` starts
and stops one; `make test` runs this too). Steps:

1. provision a table, queues, bucket and settings secret under a fresh prefix with
   infra/local_aws.py (the secret holds the fixtures' API key `sy_example_key_0123456789abcdef`,
   and SWITCHYARD_PUBLIC_URL points at the webhook function's URL on cargo lambda's emulator);
2. build the four binaries with cargo (CARGO_TARGET_DIR is honoured, so a warm target makes
   this a no-op), start `cargo lambda watch --only-lambda-apis` (infra/sam.sh installs
   cargo-lambda): the emulated control plane and Runtime API only, which builds and runs
   nothing itself; then start the four built binaries, each polling its own function's
   Runtime API (`AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:<port>/.rt/<function>`) with the
   provisioned environment;
3. `cargo lambda invoke --data-file events/<fixture>.json <function>` for every fixture, and
   checks each answer (see CHECKS below), then follows one run through the functions: the
   worker fixture with the started run's id, the list fixture showing it succeeded;
4. stops the functions and cargo lambda (their process groups) and removes the resources
   (unless --keep).

Why the functions are started here and not by the watch: left to itself, `cargo lambda watch`
builds a function with `cargo run` on its first invocation. On a loaded machine that build
(its own flags, so not the one step 2 made) took minutes while the invoke waited, and one run
in five failed inside cargo lambda (a function got an invocation without a request id).
Started here, every function is running before the first invoke, from the binaries step 2
built.

Exit status 0 when every check passed, 1 otherwise; one line per check on stdout. Python
standard library only; the emulator steps run with the moto venv's python.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EVENTS = REPO / "events"
AWS_PY = Path(os.environ.get("SWITCHYARD_VENV_AWS", "/var/tmp/switchyard-aws-venv")) / "bin/python"
SAM_SH = REPO / "infra/sam.sh"
FIXTURE_KEY = "sy_example_key_0123456789abcdef"
FUNCTIONS = ["intake", "worker", "webhook", "notifier"]


class Failed(Exception):
    pass


def log(msg: str) -> None:
    print(f"lambda_local: {msg}", file=sys.stderr, flush=True)


def provision(endpoint: str, prefix: str, port: int) -> dict[str, str]:
    public = f"http://127.0.0.1:{port}/lambda-url/webhook"
    out = subprocess.run(
        [str(AWS_PY), str(REPO / "infra/local_aws.py"), "provision", "--endpoint", endpoint,
         "--prefix", prefix, "--json", "--api-keys", f"{FIXTURE_KEY}:acme",
         "--secret", f"SWITCHYARD_PUBLIC_URL={public}"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def teardown(endpoint: str, prefix: str) -> None:
    subprocess.run([str(AWS_PY), str(REPO / "infra/local_aws.py"), "teardown", "--endpoint",
                    endpoint, "--prefix", prefix], capture_output=True, text=True)


def wait_port(port: int, proc: subprocess.Popen, logfile: Path, limit_s: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if proc.poll() is not None:
            raise Failed(f"cargo lambda watch exited ({proc.returncode}):\n{logfile.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise Failed(f"cargo lambda watch did not listen on {port} within {limit_s:.0f} s")


def invoke(port: int, function: str, data_file: Path) -> dict:
    cmd = [str(SAM_SH), "lambda", "invoke", "--invoke-address", "127.0.0.1", "--invoke-port",
           str(port), "--data-file", str(data_file), "--output-format", "json", function]
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log(f"invoke {function} < {data_file.name}: {time.monotonic() - t:.1f} s")
    if out.returncode != 0:
        raise Failed(f"{function} < {data_file.name}: cargo lambda invoke exited "
                     f"{out.returncode}: {out.stderr.strip()[-2000:]}")
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError as e:
        raise Failed(f"{function} < {data_file.name}: not JSON ({e}): {out.stdout[:500]}")


def http_answer(resp: dict) -> tuple[int, dict, object]:
    """An API Gateway v2 / function URL answer: status, lower-cased headers, JSON body."""
    headers = {k.lower(): v for k, v in (resp.get("headers") or {}).items()}
    body = resp.get("body") or ""
    try:
        parsed = json.loads(body) if body else None
    except json.JSONDecodeError:
        parsed = body
    return resp.get("statusCode", 0), headers, parsed


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def ok(self, cond: bool, what: str, detail: object = "") -> bool:
        print(f"{'ok  ' if cond else 'FAIL'} {what}" + ("" if cond else f": {detail}"), flush=True)
        if not cond:
            self.failed += 1
        return cond


def run_checks(port: int, tmp: Path) -> int:
    c = Checks()
    fx = lambda name: EVENTS / name  # noqa: E731

    status, _, body = http_answer(invoke(port, "intake", fx("intake-apigw-v2-healthz.json")))
    c.ok(status == 200, "intake < intake-apigw-v2-healthz.json: 200", (status, body))

    status, _, started = http_answer(invoke(port, "intake", fx("intake-apigw-v2-post-run.json")))
    c.ok(status == 202 and isinstance(started, dict) and started.get("run_id"),
         "intake < intake-apigw-v2-post-run.json: 202 with a run_id", (status, started))
    run_id = started.get("run_id") if isinstance(started, dict) else None

    status, headers, again = http_answer(invoke(port, "intake", fx("intake-apigw-v2-post-run.json")))
    c.ok(status == 200 and isinstance(again, dict) and again.get("run_id") == run_id
         and headers.get("idempotent-replayed") == "true",
         "intake < the same event again: 200, same run, Idempotent-Replayed (its Idempotency-Key)",
         (status, headers, again))

    # The fixture's wake-ups name example runs that do not exist here: nothing to do, nothing
    # to retry.
    resp = invoke(port, "worker", fx("worker-sqs-batch.json"))
    c.ok(resp.get("batchItemFailures") == [],
         "worker < worker-sqs-batch.json: no batchItemFailures (its example runs do not exist)",
         resp)

    # The same batch carrying the started run's id: the worker advances it to the end.
    if run_id:
        event = json.loads(fx("worker-sqs-batch.json").read_text())
        for r in event["Records"]:
            body = json.loads(r["body"])
            body["run_id"] = run_id
            r["body"] = json.dumps(body)
        event["Records"] = event["Records"][:1]
        derived = tmp / "worker-this-run.json"
        derived.write_text(json.dumps(event))
        resp = invoke(port, "worker", derived)
        c.ok(resp.get("batchItemFailures") == [],
             "worker < the fixture with the started run's id: no batchItemFailures", resp)

    if run_id:
        # GET /v1/runs/{id}: the list fixture with another path and no query.
        event = json.loads(fx("intake-apigw-v2-list-runs.json").read_text())
        path = f"/v1/runs/{run_id}"
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["pathParameters"] = {"proxy": path.lstrip("/")}
        event["rawQueryString"] = ""
        event.pop("queryStringParameters", None)
        derived = tmp / "intake-get-run.json"
        derived.write_text(json.dumps(event))
        status, _, run = http_answer(invoke(port, "intake", derived))
        c.ok(status == 200 and isinstance(run, dict) and run.get("status") == "succeeded",
             "intake < GET /v1/runs/{id} (derived from the list fixture): the run succeeded",
             (status, run))

    status, _, listed = http_answer(invoke(port, "intake", fx("intake-apigw-v2-list-runs.json")))
    runs = listed.get("runs", []) if isinstance(listed, dict) else []
    c.ok(status == 200 and any(r.get("run_id") == run_id for r in runs),
         "intake < intake-apigw-v2-list-runs.json (status=succeeded): 200, lists the run",
         (status, listed))

    resp = invoke(port, "notifier", fx("notifier-sqs-batch.json"))
    c.ok(resp.get("batchItemFailures") == [],
         "notifier < notifier-sqs-batch.json: no batchItemFailures (no such run: nothing to deliver)",
         resp)

    status, _, body = http_answer(invoke(port, "webhook", fx("webhook-function-url.json")))
    c.ok(status == 401, "webhook < webhook-function-url.json: 401 (its example signature does not verify)",
         (status, body))
    return c.failed


def stop_group(p: subprocess.Popen) -> None:
    """Stops a process started in a session of its own, with its whole group."""
    if p.poll() is not None:
        return
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="AWS emulator URL (infra/moto.sh start)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("LAMBDA_PORT", "9070")),
                    help="cargo lambda watch's invoke port (default $LAMBDA_PORT or 9070)")
    ap.add_argument("--keep", action="store_true", help="leave the resources on the emulator")
    args = ap.parse_args(argv)
    if not AWS_PY.exists():
        log(f"{AWS_PY} is missing: run `infra/moto.sh start` first (it makes the venv)")
        return 2

    prefix = f"sy-ll-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lambda-local-") as tmpdir:
        tmp = Path(tmpdir)
        proc = None
        functions: list[subprocess.Popen] = []
        try:
            env = provision(args.endpoint, prefix, args.port)
            log(f"provisioned {prefix}-* on {args.endpoint}")
            t = time.monotonic()
            subprocess.run(["cargo", "build", "-p", "switchyard-lambdas", "--bins"], cwd=REPO,
                           check=True)
            log(f"built the four functions in {time.monotonic() - t:.0f} s")
            target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
            logfile = tmp / "watch.log"
            with open(logfile, "w") as out:
                proc = subprocess.Popen(
                    [str(SAM_SH), "lambda", "watch", "--only-lambda-apis",
                     "--invoke-address", "127.0.0.1", "--invoke-port", str(args.port)],
                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            wait_port(args.port, proc, logfile, 120)
            log(f"cargo lambda watch listens on 127.0.0.1:{args.port}")
            for name in FUNCTIONS:
                fenv = dict(os.environ)
                fenv.update(env)
                fenv.update({
                    "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{args.port}/.rt/{name}",
                    "AWS_LAMBDA_FUNCTION_NAME": name,
                    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
                    "AWS_LAMBDA_FUNCTION_TIMEOUT": "300",
                    "AWS_LAMBDA_LOG_STREAM_NAME": f"local/{name}",
                })
                flog = open(tmp / f"{name}.log", "w")
                functions.append(subprocess.Popen(
                    [str(target / "debug" / name)], cwd=REPO, env=fenv, stdout=flog,
                    stderr=subprocess.STDOUT, start_new_session=True))
            log("started the four functions on its Runtime API")
            failed = run_checks(args.port, tmp)
        except (Failed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            log(f"error: {e}")
            for name in ["watch"] + FUNCTIONS:
                f = tmp / f"{name}.log"
                if f.exists():
                    log(f"{name}'s log (tail):\n" + f.read_text()[-3000:])
            failed = -1
        finally:
            for p in functions + ([proc] if proc is not None else []):
                stop_group(p)
            if not args.keep:
                teardown(args.endpoint, prefix)
    log(f"{'passed' if failed == 0 else 'FAILED'} in {time.monotonic() - t0:.0f} s")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

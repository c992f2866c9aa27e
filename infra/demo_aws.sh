#!/usr/bin/env bash
# `make demo-aws`: every offline example through `switchyard dev --backend aws` on moto.
#
#   infra/demo_aws.sh SWITCHYARD_BINARY
#
# Starts moto on ${DEMO_MOTO_PORT:-5077} (not 5055, CI's; a port that is already in use is
# refused, since `moto.sh stop` would stop a server someone else started there), starts the binary (built with `--features aws`)
# as `dev --backend aws`, which provisions its table, queues and bucket under a fresh prefix,
# then starts each example from events/inputs/ over the HTTP API (curl-equivalent calls from
# python3's standard library), approves asset-pipeline's gate through
# POST /v1/runs/{id}/approvals/{step}, and prints each run's status and steps. Stops dev
# (SIGTERM: it must exit 0) and moto at the end, also when something fails.
set -euo pipefail

sy="${1:?usage: infra/demo_aws.sh SWITCHYARD_BINARY}"
cd "$(dirname "$0")/.."
export MOTO_PORT="${DEMO_MOTO_PORT:-5077}"
key="sy_demo_key_0123456789abcdef"
log="$(mktemp -t switchyard-demo-aws.XXXXXX)"
dev_pid=""

cleanup() {
  code=$?
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -TERM "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  infra/moto.sh stop || true
  rm -f "$log"
  exit "$code"
}
trap cleanup EXIT INT TERM

# A server already on the port is someone else's (CI's, a test's): stopping it after would
# break them, so pick another port instead.
if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5)' "$MOTO_PORT" 2>/dev/null; then
  echo "demo-aws: 127.0.0.1:$MOTO_PORT is in use; set DEMO_MOTO_PORT to a free port" >&2
  trap - EXIT INT TERM
  rm -f "$log"
  exit 2
fi
url=$(infra/moto.sh start)
echo "=== moto at $url"

# No SWITCHYARD_TABLE etc.: dev provisions under SWITCHYARD_DEV_PREFIX and says so.
env -u SWITCHYARD_TABLE -u SWITCHYARD_BUCKET -u SWITCHYARD_WORK_QUEUE_URL \
    -u SWITCHYARD_WORK_DLQ_URL -u SWITCHYARD_NOTIFY_QUEUE_URL -u SWITCHYARD_NOTIFY_DLQ_URL \
    -u SWITCHYARD_SECRET_ID -u SWITCHYARD_PUBLIC_URL \
    AWS_ENDPOINT_URL="$url" \
    SWITCHYARD_DEV_PREFIX="sy-demo-$(date +%s)" \
    SWITCHYARD_API_KEYS="$key:demo" \
    "$sy" dev --backend aws --addr 127.0.0.1:0 --workflows workflows >"$log" 2>&1 &
dev_pid=$!

base=""
for _ in $(seq 1 300); do
  base=$(sed -n 's/^switchyard dev: serving \(http:[^ ]*\).*/\1/p' "$log" | head -1)
  [ -n "$base" ] && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$log" >&2; echo "demo-aws: dev exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$base" ] || { cat "$log" >&2; echo "demo-aws: dev did not start within 30 s" >&2; exit 1; }
sleep 0.2
echo "=== switchyard dev --backend aws"
sed -n '1,8p' "$log"

python3 - "$base" "$key" <<'PY'
"""Each offline example through the HTTP API; the asset-pipeline gate approved over HTTP."""
import json, sys, time, urllib.request, urllib.error

base, key = sys.argv[1], sys.argv[2]
EXAMPLES = ["support-triage", "knowledge-answer", "product-copy", "document-enrichment",
            "resilient-summary", "classifier-cascade", "moderated-reply", "asset-pipeline"]

def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)

def until(run_id, done):
    t0 = time.monotonic()
    while True:
        _, run = call("GET", f"/v1/runs/{run_id}")
        if done(run):
            return run
        if time.monotonic() - t0 > 120:
            sys.exit(f"demo-aws: run {run_id} stuck at {run.get('status')}: {json.dumps(run)[:800]}")
        time.sleep(0.2)

ended = lambda r: r["status"] in ("succeeded", "failed", "cancelled")
gate = lambda r: ended(r) or any(s["status"] == "waiting" and s["kind"] == "approval" for s in r["steps"])

def show(run):
    print(f"  {run['run_id']}: {run['status']}, cost ${run['cost_usd']:.6f}")
    for s in run["steps"]:
        model = s.get("model") or ""
        print(f"    {s['name']:<18} {s['status']:<10} {model:<28} attempts {s['attempts']}  {s['latency_ms']} ms")

failed = []
for name in EXAMPLES:
    print(f"\n=== {name}")
    with open(f"events/inputs/{name}.json") as f:
        body = {"workflow": name, "input": json.load(f)}
    print(f"$ curl -X POST {base}/v1/runs -d '{{\"workflow\": \"{name}\", \"input\": <events/inputs/{name}.json>}}'")
    status, started = call("POST", "/v1/runs", body)
    if status != 202:
        sys.exit(f"demo-aws: {name}: POST /v1/runs answered {status}: {started}")
    run_id = started["run_id"]
    if name == "asset-pipeline":
        run = until(run_id, gate)
        show(run)
        step = next(s["name"] for s in run["steps"] if s["status"] == "waiting")
        print(f"$ curl -X POST {base}/v1/runs/{run_id}/approvals/{step} -d '{{\"decision\": \"approve\"}}'")
        status, decided = call("POST", f"/v1/runs/{run_id}/approvals/{step}",
                               {"decision": "approve", "comment": "looks good"})
        if status >= 300:
            sys.exit(f"demo-aws: approval answered {status}: {decided}")
    run = until(run_id, ended)
    show(run)
    if run["status"] != "succeeded":
        failed.append(name)
if failed:
    sys.exit(f"demo-aws: did not succeed: {', '.join(failed)}")
print("\nEvery example succeeded on DynamoDB, SQS and S3 (moto).")
PY

echo "=== stopping dev (SIGTERM)"
kill -TERM "$dev_pid"
set +e
wait "$dev_pid"
code=$?
set -e
dev_pid=""
[ "$code" -eq 0 ] || { tail -20 "$log" >&2; echo "demo-aws: dev exited $code after SIGTERM" >&2; exit 1; }
echo "dev stopped (exit 0)"

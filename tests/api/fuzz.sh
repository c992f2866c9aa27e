#!/usr/bin/env bash
# Fuzz the running HTTP API against its own OpenAPI document with schemathesis.
#
#   tests/api/fuzz.sh BASE_URL API_KEY [MAX_EXAMPLES] [-- EXTRA_SCHEMATHESIS_RUN_ARGS...]
#   e.g. tests/api/fuzz.sh http://127.0.0.1:8080 sy_test_key 50
#
# Loads BASE_URL/v1/openapi.json, sends every request with `Authorization: Bearer API_KEY`, and
# fails (exit 1) unless every response is non-5xx and matches the document. The last line of
# stdout is always `schemathesis: N cases, F failures` (from schemathesis' JSON report):
#   N = test cases generated; F = distinct failures + run errors (e.g. schema unreachable or
#   invalid, connection refused) + warnings that are configured to fail (below). F > 0 iff exit != 0.
# Exit: 0 all good; 1 a check, an error or a failing warning; 2 bad usage or no venv.
#
# Settings (schemathesis 4.32.5, see requirements.txt):
#   --checks not_a_server_error,status_code_conformance,content_type_conformance,
#            response_headers_conformance,response_schema_conformance
#       = "no 5xx, and status, Content-Type, declared headers and body all match the document".
#       Left out on purpose:
#       negative_data_rejection, positive_data_acceptance: they judge how strict the validation is
#         (any schema-invalid input must get 4xx / any schema-valid input must get 2xx), which
#         flags e.g. a valid-looking body naming an unknown workflow (404/409/422 is correct
#         there). Negative inputs ARE still sent (mode "all") and must not 5xx and must
#         answer a documented status, so every operation has to document its 4xx answers.
#       missing_required_header, unsupported_method, allow_header_conformance, ignored_auth:
#         these test HTTP/auth strictness, not the document; turn them on with FUZZ_CHECKS.
#         (Undeclared methods such as TRACE are still sent by the coverage phase, so a 5xx on
#         them still fails through not_a_server_error.)
#       use_after_free, ensure_resource_availability, object_level_authorization: need OpenAPI
#         links / the stateful phase to mean anything.
#   --max-examples MAX_EXAMPLES (default 50) per operation and phase; --seed ${FUZZ_SEED:-1}; no
#       example database and no schemathesis cache (both would replay earlier runs' inputs), and
#       --workers 1: the same server state and seed give the same requests.
#   Warnings that fail the run (config below): missing_auth (every answer was 401/403: the key is
#       wrong, and nothing else got tested), method_not_allowed (a documented operation keeps
#       answering 405: the document names a route the server lacks), unresolvable_reference.
#   Network: only BASE_URL. schemathesis takes scheme, host and port from the schema's location
#       and only the path from the document's `servers` (checked: a `servers` entry naming
#       another host is not contacted); proxy variables are unset.
#   --request-timeout 10 s per request, --wait-for-schema 15 s (the server may be starting).
#   Anything after `--` goes to `schemathesis run` as is (e.g. --include-path-regex '^/v1/runs').
# Env: FUZZ_SEED, FUZZ_CHECKS (comma list replacing the checks above), SWITCHYARD_VENV (venv.sh).
# Files: everything (JSON + JUnit reports, schemathesis' crash files) goes into a temp dir, which
# is deleted on success and kept, with its path printed on stderr, on failure.
set -uo pipefail

usage() { echo "usage: $0 BASE_URL API_KEY [MAX_EXAMPLES] [-- schemathesis run args...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
base="${1%/}"
key="$2"
shift 2
max=50
if [ $# -gt 0 ] && [ "$1" != "--" ]; then max="$1"; shift; fi
if [ $# -gt 0 ]; then [ "$1" = "--" ] || usage; shift; fi
case "$max" in '' | *[!0-9]* | 0) echo "fuzz.sh: MAX_EXAMPLES must be a positive integer, got '$max'" >&2; exit 2 ;; esac
case "$base" in http://* | https://*) ;; *) echo "fuzz.sh: BASE_URL must start with http:// or https://" >&2; exit 2 ;; esac
checks="${FUZZ_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance}"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=$("$here/venv.sh" | tail -n1) || { echo "fuzz.sh: tests/api/venv.sh failed" >&2; exit 2; }
[ -x "$venv/bin/schemathesis" ] || { echo "fuzz.sh: no schemathesis in $venv" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-fuzz.XXXXXX")
# The key reaches schemathesis through the environment, not argv or a file.
export SWITCHYARD_FUZZ_AUTH="Bearer $key"
cat > "$work/schemathesis.toml" <<'TOML'
headers = { Authorization = "${SWITCHYARD_FUZZ_AUTH}" }

[warnings]
fail-on = ["missing_auth", "method_not_allowed", "unresolvable_reference"]

[cache]
enabled = false
TOML

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY='*' no_proxy='*'

# Run from the temp dir: schemathesis and hypothesis write .schemathesis/ and .hypothesis/ into
# the working directory, and an explicit --config-file stops it from picking up a stray
# schemathesis.toml from the caller's directory or its parents.
(
  cd "$work" || exit 2
  "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$base/v1/openapi.json" \
    --checks "$checks" \
    --max-examples "$max" \
    --seed "${FUZZ_SEED:-1}" \
    --generation-database none \
    --workers 1 \
    --request-timeout 10 \
    --wait-for-schema 15 \
    --report json,junit \
    --report-json-path "$work/report.json" \
    --report-junit-path "$work/junit.xml" \
    --no-color \
    "$@"
)
rc=$?

summary=$("$venv/bin/python" - "$work/report.json" "$rc" <<'PY'
import json, sys
path, rc = sys.argv[1], int(sys.argv[2])
try:
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
except (OSError, ValueError):
    report = None
if report is None:
    cases, failures = 0, 1  # schemathesis stopped before writing a report: count that as one error
else:
    tc = report.get("test_cases", {})
    failing = {"missing_auth", "method_not_allowed", "unresolvable_reference"}
    fired = sum(1 for name, ops in (report.get("warnings") or {}).items() if name in failing and ops)
    cases = tc.get("generated", 0)
    failures = tc.get("unique_failures", 0) + len(report.get("errors") or []) + fired
if rc != 0 and failures == 0:
    failures = 1  # schemathesis failed for a reason the report does not count
print(f"schemathesis: {cases} cases, {failures} failures")
PY
) || summary="schemathesis: 0 cases, 1 failures"

if [ "$rc" -eq 0 ] && [ "${summary##*, }" = "0 failures" ]; then
  rm -rf "$work"
  echo "$summary"
  exit 0
fi
echo "fuzz.sh: schemathesis exit $rc; reports kept in $work" >&2
echo "$summary"
exit 1

#!/usr/bin/env bash
# What the classifier cascade (workflows/classifier-cascade.yaml) saves on a mixed batch of
# support messages: each message runs on the embedded backend in a fresh data dir, then
# `switchyard stats` prints the escalation rate, which tier answered how often, and the
# saving against always asking the top tier. Prices are the local models' simulated ones.
# Usage: tests/bench/cascade_saving.sh [path/to/switchyard]
set -euo pipefail
cd "$(dirname "$0")/../.."
SY="${1:-target/debug/switchyard}"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
messages=(
  "I was charged twice for the same invoice, please refund the second payment."
  "The app shows an error and crashes when I try to login."
  "Where is my delivery? The tracking page has not changed for a week."
  "My refund for invoice 2291 has not arrived yet."
  "I forgot my password and the login page shows an error."
  "Can I get a receipt for last month's payment?"
  "My parcel never turned up and the courier says it was left at another address."
  "I paid twice and want my money back."
  "The app closes as soon as I open it."
  "Refund the delivery charge, the package came late."
)
for m in "${messages[@]}"; do
  python3 -c 'import json,sys; print(json.dumps({"text": sys.argv[1], "tier": "free"}))' "$m" > "$DIR/in.json"
  "$SY" run workflows/classifier-cascade.yaml --input "$DIR/in.json" --json --data-dir "$DIR" > /dev/null
done
"$SY" stats --workflow classifier-cascade --data-dir "$DIR"

# Switchyard — developer entry points. Everything here works on a fresh machine with the Rust
# toolchain and python3; what else a target needs, it installs.

CARGO ?= cargo
DEMO_DIR ?= .switchyard-demo
SY := target/debug/switchyard
ifdef CARGO_TARGET_DIR
SY := $(CARGO_TARGET_DIR)/debug/switchyard
endif
EXAMPLES := support-triage knowledge-answer product-copy document-enrichment resilient-summary classifier-cascade moderated-reply

.PHONY: all build demo demo-aws test-lambda-local test test-aws test-local-aws sam-validate sam-build local-aws local-aws-down lint fmt check-core check-msrv bench bench-api bench-aws bench-stats check-arm64 clean-demo

all: lint test

build:
	$(CARGO) build -p switchyard-cli

## demo: run every example workflow offline on the embedded backend (SQLite + files).
demo: build
	@rm -rf $(DEMO_DIR)
	@$(SY) validate workflows/*.yaml
	@for wf in $(EXAMPLES); do \
	  echo; echo "=== $$wf"; \
	  $(SY) run workflows/$$wf.yaml --input events/inputs/$$wf.json --data-dir $(DEMO_DIR) || exit 1; \
	done
	@echo; echo "=== classifier-cascade: an unclear message escalates to the dearer tier"
	@$(SY) run workflows/classifier-cascade.yaml --input events/inputs/classifier-cascade-unclear.json --data-dir $(DEMO_DIR)
	@echo; echo "=== classifier-cascade: what the cascade saved against always using the top tier"
	@$(SY) stats --workflow classifier-cascade --data-dir $(DEMO_DIR)
	@echo; echo "=== moderated-reply: a flagged message is refused before any reply is drafted"
	@$(SY) run workflows/moderated-reply.yaml --input events/inputs/moderated-reply-flagged.json --data-dir $(DEMO_DIR)
	@echo; echo "=== asset-pipeline: async job finished by webhook, then a person approves"
	@$(SY) run workflows/asset-pipeline.yaml --input events/inputs/asset-pipeline.json --data-dir $(DEMO_DIR); \
	  code=$$?; [ $$code -eq 3 ] || { echo "expected exit 3 (waiting for approval), got $$code"; exit 1; }
	@run_id=$$($(SY) runs list --json --data-dir $(DEMO_DIR) | python3 -c 'import json,sys; print(next(r["run_id"] for r in json.load(sys.stdin)["runs"] if r["workflow"]=="asset-pipeline"))'); \
	  gate=$$($(SY) runs show $$run_id --json --data-dir $(DEMO_DIR) | python3 -c 'import json,sys; print(next(s["name"] for s in json.load(sys.stdin)["steps"] if s["status"]=="waiting"))'); \
	  echo; echo "$$ switchyard approve $$run_id $$gate --comment 'looks good'"; \
	  $(SY) approve $$run_id $$gate --comment 'looks good' --data-dir $(DEMO_DIR)
	@echo; echo "Runs are kept in $(DEMO_DIR)/: try '$(SY) runs list --data-dir $(DEMO_DIR)'"

## demo-aws: the same examples through `switchyard dev --backend aws` (built with `--features
## aws`) on moto (port DEMO_MOTO_PORT, default 5077; infra/moto.sh installs it): each run is
## started, approved and shown over the HTTP API; dev and moto are stopped after, also on failure.
DEMO_MOTO_PORT ?= 5077
demo-aws:
	$(CARGO) build -p switchyard-cli --features aws
	DEMO_MOTO_PORT=$(DEMO_MOTO_PORT) infra/demo_aws.sh $(SY)

## test-lambda-local: the four functions on `cargo lambda watch --only-lambda-apis`'s Runtime
## API (infra/sam.sh installs cargo-lambda; the functions are the built binaries, started by
## the script, not built by the watch), invoked with every events/ fixture and checked, on moto
## (started and stopped here); tests/lambda_local.py. `make test` runs it too.
test-lambda-local:
	@url=$$(infra/moto.sh start) || exit 1; \
	  python3 tests/lambda_local.py --endpoint $$url; code=$$?; \
	  infra/moto.sh stop; exit $$code

## test: every test of the workspace (unit, property, engine, end-to-end over HTTP, the AWS
## adapters and the four Lambda handlers against moto, which infra/moto.sh installs and starts,
## and stops after; `switchyard dev --backend aws` end to end (`--features aws`, tests/dev_aws.rs),
## and under injected AWS faults with a killed dev (tests/recovery_aws.rs, 40 runs, about a minute);
## infra/local_aws.py's check that provisioning matches template.yaml, the four functions on
## cargo lambda's Runtime API with every events/ fixture: tests/lambda_local.py), then
## `sam validate --lint` (infra/sam.sh installs SAM CLI), then schemathesis against
## `switchyard dev`'s OpenAPI document (tests/api/venv.sh installs it). Chromium and
## chromedriver for the run console's browser test (tests/ui_browser.rs): infra/chromium.sh.
test:
	infra/chromium.sh
	@url=$$(infra/moto.sh start) || exit 1; \
	  SWITCHYARD_TEST_AWS_ENDPOINT=$$url $(CARGO) test --workspace --all-targets \
	  && SWITCHYARD_TEST_AWS_ENDPOINT=$$url $(CARGO) test -p switchyard-cli --features aws --test dev_aws --test recovery_aws \
	  && SWITCHYARD_TEST_AWS_ENDPOINT=$$url $(AWS_PY) -m unittest discover -s infra -p 'test_local_aws.py' \
	  && python3 tests/lambda_local.py --endpoint $$url; \
	  code=$$?; infra/moto.sh stop; exit $$code
	infra/sam.sh validate --lint
	$(CARGO) build -p switchyard-cli
	bash tests/api/fuzz-dev.sh $(SY) 30

## lint: formatting, clippy with warnings as errors, the pure-core dependency rule, and the
## minimum Rust version against the lock.
lint: check-core check-msrv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test-aws: the AWS adapters (crates/aws) against moto: starts it (infra/moto.sh installs it
## into a venv on first use), runs their tests with SWITCHYARD_TEST_AWS_ENDPOINT, stops it
## (also when a test fails). `make test` runs them too; this runs only them.
test-aws:
	@url=$$(infra/moto.sh start) || exit 1; \
	  SWITCHYARD_TEST_AWS_ENDPOINT=$$url $(CARGO) test -p switchyard-aws; code=$$?; \
	  infra/moto.sh stop; exit $$code

## check-core: switchyard-core must not depend on tokio, HTTP or AWS crates.
check-core:
	@bad=$$($(CARGO) tree -p switchyard-core -e normal --prefix none | grep -E '^(tokio|reqwest|hyper|aws-|lambda)' | sort -u); \
	  if [ -n "$$bad" ]; then echo "switchyard-core must stay pure, but depends on:"; echo "$$bad"; exit 1; fi; \
	  echo "switchyard-core is pure (no tokio, HTTP or AWS crates)"

## check-msrv: the workspace's rust-version covers every locked dependency's, and this toolchain.
check-msrv:
	@python3 .ci/check_msrv.py

fmt:
	$(CARGO) fmt --all

## bench: engine overhead figures for both durability settings, then process-level figures
## (fsyncs per step, `switchyard run` time); release build; see docs/benchmarks.md.
SY_RELEASE := $(or $(CARGO_TARGET_DIR),target)/release/switchyard
bench:
	$(CARGO) bench -p switchyard-cli --bench engine
	$(CARGO) bench -p switchyard-cli --bench writes
	$(CARGO) build --release -p switchyard-cli
	python3 tests/bench/process.py $(SY_RELEASE)

## bench-api: load figures for `switchyard dev` over HTTP (accepted starts/s and latency at 32
## clients, completed 5-step runs/s, peak RSS) for both durability settings; release build.
bench-api:
	$(CARGO) build --release -p switchyard-cli
	$(CARGO) bench -p switchyard-cli --bench api -- $(abspath $(SY_RELEASE))

## bench-aws: the AWS backend's figures (issue 9), on moto at its own port (BENCH_MOTO_PORT,
## stopped after, also on failure): per step of each example, DynamoDB write/read request
## units, SQS and S3 requests and orchestration $ per 1M steps (crates/lambdas/benches/aws.rs);
## worker, intake and notifier init, first-invoke time and peak RSS against a hello-world
## function on a local Runtime API (x86_64 release builds: the functions on their own, so the
## example's dev-dependency features are not in them; tests/bench/lambda_runtime_api.py), the
## load average (the webhook cold-started too); the four functions' arm64 release sizes
## (cargo-lambda, tests/bench/lambda_sizes.sh), then check-arm64 (needs apt-get, root or sudo
## the first time). See docs/benchmarks.md.
BENCH_MOTO_PORT ?= 5077
RELEASE_DIR := $(or $(CARGO_TARGET_DIR),target)/release
bench-aws:
	@url=$$(MOTO_PORT=$(BENCH_MOTO_PORT) infra/moto.sh start) || exit 1; \
	  SWITCHYARD_TEST_AWS_ENDPOINT=$$url $(CARGO) bench -p switchyard-lambdas --bench aws \
	  && $(CARGO) build --release -p switchyard-lambdas --bins \
	  && $(CARGO) build --release -p switchyard-lambdas --example hello \
	  && $(AWS_PY) tests/bench/lambda_runtime_api.py --endpoint $$url --bin-dir $(RELEASE_DIR) --runs 10; \
	  code=$$?; MOTO_PORT=$(BENCH_MOTO_PORT) infra/moto.sh stop; [ $$code -eq 0 ] || exit $$code
	tests/bench/lambda_sizes.sh
	$(MAKE) check-arm64

## check-arm64: the arm64 Lambda packages (`cargo lambda build --release --arm64`, what
## `sam build` runs per function), started under qemu-user (infra/qemu-arm64.sh installs it with apt-get) on a local Runtime
## API against moto (port BENCH_MOTO_PORT, stopped after): intake creates runs through API
## Gateway events, the worker runs batches of ten wake-ups, the notifier reads a batch, the
## webhook refuses a badly signed callback; every record must pass and every run the worker
## took must read back succeeded (tests/bench/lambda_runtime_api.py --lambda-dir). Timings
## are qemu's, not Lambda's. The arm64 build takes ~10 min from an empty target directory.
LAMBDA_DIR := $(or $(CARGO_TARGET_DIR),target)/lambda
check-arm64:
	infra/sam.sh lambda build --release --arm64 -p switchyard-lambdas --bins >&2
	@runner=$$(infra/qemu-arm64.sh) || exit 1; \
	  url=$$(MOTO_PORT=$(BENCH_MOTO_PORT) infra/moto.sh start) || exit 1; \
	  $(AWS_PY) tests/bench/lambda_runtime_api.py --endpoint $$url --lambda-dir $(LAMBDA_DIR) \
	    --runner "$$runner" --runs 2; \
	  code=$$?; MOTO_PORT=$(BENCH_MOTO_PORT) infra/moto.sh stop; exit $$code

## bench-stats: how long `stats` takes over 10,000 and 100,000 runs on the embedded backend and
## 10,000 on moto (port BENCH_MOTO_PORT, stopped after, also on failure), seeded by direct store
## writes of each run's aggregates, and the stats items' DynamoDB write units per run
## (crates/aws/benches/stats.rs). See docs/benchmarks.md.
bench-stats:
	@url=$$(MOTO_PORT=$(BENCH_MOTO_PORT) infra/moto.sh start) || exit 1; \
	  SWITCHYARD_TEST_AWS_ENDPOINT=$$url $(CARGO) bench -p switchyard-aws --features meter --bench stats; \
	  code=$$?; MOTO_PORT=$(BENCH_MOTO_PORT) infra/moto.sh stop; exit $$code

clean-demo:
	rm -rf $(DEMO_DIR)

AWS_PY := $(or $(SWITCHYARD_VENV_AWS),/var/tmp/switchyard-aws-venv)/bin/python
LOCAL_AWS_PREFIX ?= sy-dev

## sam-validate: template.yaml through the SAM transform and cfn-lint (infra/sam.sh installs SAM CLI).
sam-validate:
	infra/sam.sh validate --lint

## sam-build: the four Lambda binaries for arm64 (cargo-lambda; installed by infra/sam.sh).
sam-build:
	infra/sam.sh build

## local-aws: start moto, provision template.yaml's table/queues/bucket/secret; eval "$$(make -s local-aws)".
local-aws:
	@url=$$(infra/moto.sh start) || exit 1; \
	  $(AWS_PY) infra/local_aws.py provision --endpoint $$url --prefix $(LOCAL_AWS_PREFIX)

## local-aws-down: remove what local-aws made, stop moto.
local-aws-down:
	@url=$$(infra/moto.sh url); \
	  $(AWS_PY) infra/local_aws.py teardown --endpoint $$url --prefix $(LOCAL_AWS_PREFIX); \
	  infra/moto.sh stop

## test-local-aws: infra/local_aws.py's self-test against moto (starts and stops it).
test-local-aws:
	@url=$$(infra/moto.sh start) || exit 1; \
	  SWITCHYARD_TEST_AWS_ENDPOINT=$$url $(AWS_PY) -m unittest discover -s infra -p 'test_local_aws.py' -v; \
	  code=$$?; infra/moto.sh stop; exit $$code

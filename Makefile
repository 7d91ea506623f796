# Every target works from a fresh clone: `make test` installs what it needs first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock lint test test-fast bench soak demo run clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Exactly the versions and hashes of requirements.lock (pip itself included; `make lock`
	# writes it from pyproject.toml's ranges), then the project alone. torch/torchvision are
	# pinned in pyproject.toml; pip takes them from the local wheel cache.
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Re-pin requirements.lock from pyproject.toml (service and test extras). Pins that still fit
# are kept: LOCK_ARGS=--upgrade for the newest versions, LOCK_ARGS="--upgrade-package flask" for one.
lock: $(STAMP)
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--extra service --extra test --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) \
		-o requirements.lock pyproject.toml

# Layers import downwards only (the contracts are in pyproject.toml; docs/architecture.md).
lint: $(STAMP)
	$(BIN)/lint-imports

# --durations: every run (CI's included) ends with its 30 slowest tests, to keep the suite's time
# in view (the target is well under 40 minutes on 2 cores).
test: lint
	$(BIN)/python -m pytest tests --durations=30 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

# The whole product on this machine: generated data, private Redis, SQLite job store, one CPU
# worker; submits configs/demo.yaml over HTTP and prints where the checkpoint, plots and report are.
demo: $(STAMP)
	@command -v redis-server >/dev/null || { echo "make demo needs redis-server (Debian/Ubuntu: apt-get install redis-server)"; exit 1; }
	$(BIN)/teacher demo

# The local stack for development (Ctrl-C stops it): private Redis, API on :8000, one worker;
# the demo dataset is generated first if it is missing, so the README's curl lines work.
run: $(STAMP)
	@command -v redis-server >/dev/null || { echo "make run needs redis-server (Debian/Ubuntu: apt-get install redis-server)"; exit 1; }
	$(BIN)/teacher make-data --if-missing
	$(BIN)/teacher serve $(SERVE_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# A seeded chaos soak against real processes (gunicorn, two solo workers, reconciler, Redis
# with AOF, SQLite), random faults, then invariant checks and a report (bench/soak.py):
#   make soak ARGS="--minutes 20 --jobs 24 --seed 7"
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(ARGS)

# The whole set-up is `make demo` and `make test`; both bootstrap .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
B ?=

# Debian packages: libgmp-dev builds fastecdsa (a libp2p dependency); prometheus, docker-compose
# iproute2 and chromium (the live viewer runs in it headless) are used by tests and benches, which skip
# with a message naming the package when it is missing.
APT_PACKAGES := libgmp-dev prometheus docker-compose iproute2 chromium

.PHONY: all demo demo-busy test stress-test bench lint sim chaos docs dashboards system-deps clean fuzz

all: test

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "note: missing Debian packages:$$missing (run 'sudo apt-get install$$missing'; tests needing them skip)"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m scheduler.devtools.demo

# pytest-xdist: one worker per core (TEST_WORKERS=0 runs the suite in this process), a test file's tests on one
# worker (--dist loadfile: a module's shared mesh is started once)
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile tests

test: $(STAMP)
	$(PYTEST)

# the whole suite while two busy loops load both cores (a slow, shared CI machine); the loops die with it
stress-test: $(STAMP)
	$(PY) -m scheduler.devtools.stress --busy 2 -- $(PYTEST)

# the demo while two busy loops load both cores
demo-busy: $(STAMP)
	$(PY) -m scheduler.devtools.stress --busy 2 -- $(PY) -m scheduler.devtools.demo

bench: $(STAMP)
	$(PY) -m bench $(B)

sim: $(STAMP)
	$(PY) -m scheduler.devtools.sim

# random and mutated adverts, HELLOs and RPCs at a live 3-node mesh; every node must stay up and answer
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(PY) -m scheduler.devtools.fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

chaos: $(STAMP)
	$(PY) -m scheduler.devtools.chaos $(CHAOS_ARGS)

docs: $(STAMP)
	$(PY) deploy/opskit.py docs

dashboards: $(STAMP)
	$(PY) deploy/grafana/generate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check mesh scheduler worker tests bench deploy
	$(VENV)/bin/mypy
	$(PY) -m scheduler.devtools.layers  # imports one way (core <- node <- cli; client <- cli), no cycles

clean:
	rm -rf $(VENV) build *.egg-info

# Every target creates and uses the project's own virtualenv (.venv): nothing needs
# to be installed by hand.  `make run` starts the demo; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8080
PYTEST_ARGS ?=

.PHONY: run test bench bench-quick bench-peers lint fuzz soak clean venv system-deps test-apps

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,lint]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tunnel demo --listen $(HOST):$(PORT)

# Debian packages the tests use: headless Chromium (browser tests), Apache httpd (the
# side-by-side comparison) and HAProxy (a real PROXY-protocol sender and L4 balancer).
# One `apt-get update`, then only the missing ones; policy-rc.d keeps the packages from
# starting services. Skipped without apt-get; a test whose program is missing skips.
SYSTEM_PACKAGES ?= chromium apache2 haproxy

system-deps:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do \
		command -v $$pkg >/dev/null 2>&1 || [ -x /usr/sbin/$$pkg ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing (Debian) for the tests"; \
		created=; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created=1; \
		fi; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
			|| echo "warning:$$missing could not be installed; the tests that need them will skip"; \
		if [ -n "$$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	fi

# Real applications for tests/e2e/test_real_apps.py that are too heavy for the `test`
# extra (jupyter_server, its kernel and terminals); a failed install only skips the test.
test-apps: $(STAMP)
	@$(PY) -c "import jupyter_server, ipykernel, terminado" 2>/dev/null \
		|| $(PIP) install --quiet jupyter_server ipykernel terminado \
		|| echo "warning: jupyter_server could not be installed; the Jupyter test will skip"

test: $(STAMP) system-deps test-apps
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks (bench/): C load generator and backend built with cc into bench/build/,
# the proxy run as separate processes. `bench` is the full run (3 interleaved rounds) and
# writes bench/results/latest.{json,md,png} (commit latest.json); `bench-quick` is a short run of every scenario
# (bench/build/quick.*) that prints the table and warns about ratios 25% worse than latest.json; `bench-peers` installs nginx, HAProxy and
# Apache httpd from Debian, then runs `bench` with them. Numbers are reported, never asserted.
BENCH_PYTEST := $(PY) -m pytest -c bench/pytest.ini --rootdir bench -p no:cacheprovider bench/
BENCH_ARGS ?=

bench: $(STAMP)
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PIP) install --quiet matplotlib \
		|| echo "warning: matplotlib could not be installed; no chart"
	$(BENCH_PYTEST) --bench-mode full $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BENCH_PYTEST) --bench-mode quick $(BENCH_ARGS)

bench-peers: $(STAMP)
	@if command -v apt-get >/dev/null 2>&1; then \
		created=; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created=1; \
		fi; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy apache2 >/dev/null) \
			|| echo "warning: nginx/haproxy/apache2 could not all be installed; missing peers are skipped"; \
		if [ -n "$$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	else \
		echo "warning: no apt-get: peers that are not installed are skipped"; \
	fi
	$(MAKE) bench

# Long runs kept out of `make test`: the soak scales tests/e2e/test_soak.py; fuzz runs
# the atheris target for the handshake parser for FUZZ_SECONDS, then the hypothesis
# properties once more.
SOAK_TUNNELS ?= 2000
SOAK_SECONDS ?= 120
FUZZ_SECONDS ?= 120

soak: $(STAMP)
	SOAK_TUNNELS=$(SOAK_TUNNELS) SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s -p no:cacheprovider tests/e2e/test_soak.py

fuzz: $(STAMP)
	@$(PY) -c "import atheris" 2>/dev/null || $(PIP) install --quiet atheris
	$(PY) fuzz/fuzz_handshake.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
	$(PY) -m pytest -q -p no:cacheprovider tests/protocol/test_request.py tests/protocol/test_backend.py tests/config/test_parser.py tests/tunnels/test_pump.py -k "any_ or random"

# mypy --strict on the package and ruff on everything (both configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check tunnel tests bench fuzz
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

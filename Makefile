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

.PHONY: run test bench bench-quick bench-peers lint fuzz soak clean venv system-deps

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tunnel demo --listen $(HOST):$(PORT)

# Debian packages the tests use (headless Chromium for the demo page test). Installed
# once; skipped when present or when apt-get is not available (the test then skips).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (Debian) for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "warning: chromium could not be installed; the browser test will skip"; \
	fi

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m compileall -q tunnel tests bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

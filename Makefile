# The two commands of the Quick start: `make up` and `make test`. Everything else they need
# (the virtual environment, the Python packages, Prosody; for the tests also Chromium) is
# installed on the way.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: up test lint bench clean system-deps test-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's packages, as `command:package`: Prosody (the XMPP server the bot talks to) for running
# a herd; for the tests also Chromium and its ChromeDriver (the headless browser of the web tests,
# tests/support/browser.py) and iproute2 (`ip`, for the hosts in network namespaces of
# tests/e2e/test_netns.py).  Only what is missing is installed: with everything there, no
# apt-get runs at all.
RUN_DEPS := prosody:prosody
TEST_DEPS := $(RUN_DEPS) chromium:chromium chromedriver:chromium-driver ip:iproute2

define install_missing
	@missing=""; for dep in $(1); do \
	  command -v "$${dep%%:*}" >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

system-deps:
	$(call install_missing,$(RUN_DEPS))

test-deps:
	$(call install_missing,$(TEST_DEPS))

up: $(STAMP) system-deps
	$(BIN)/herd up

test: $(STAMP) test-deps
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var config/.herd.up.toml

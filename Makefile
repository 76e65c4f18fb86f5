# The two commands of the Quick start: `make up` and `make test`. Everything else they need
# (the virtual environment, the Python packages, Prosody) is installed on the way.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: up test lint bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Prosody (the XMPP server the bot talks to) comes from Debian's packages.
system-deps:
	@command -v prosody >/dev/null 2>&1 || { \
	  echo "installing prosody (Debian package)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody >/dev/null; }

up: $(STAMP) system-deps
	$(BIN)/herd up

test: $(STAMP) system-deps
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var config/.herd.up.toml

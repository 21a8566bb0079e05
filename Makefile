# Two commands for a fresh machine: `make demo` and `make test`.
# Everything they need (the venv, tmux, PostgreSQL, chromium for the dashboard's browser test,
# the Claude Code binary) is installed here.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLAUDE_VERSION := 2.1.328
CLAUDE_PREFIX := .cache/claude-code
CLAUDE_BIN := $(CLAUDE_PREFIX)/node_modules/@anthropic-ai/claude-code-linux-x64/claude
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup bytecode tmux chromium postgresql test demo lint bench soak hooks clean

setup: $(VENV)/.installed bytecode tmux chromium postgresql $(CLAUDE_BIN)

$(VENV)/.installed: pyproject.toml plugins/contrib/orch-guard/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./plugins/contrib/orch-guard
	touch $@

# Every hook is a fresh process. With PYTHONDONTWRITEBYTECODE set, Python would compile the
# editable install's modules again in each one (about 100 ms a hook). Compiling them here
# avoids that. compileall only redoes the files that changed.
bytecode: $(VENV)/.installed
	$(BIN)/python -m compileall -q orch_core plugins

tmux:
	@command -v tmux >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq tmux; }

chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# The server binaries only: the tests start a private cluster of their own (orch_core/testing).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; }

$(CLAUDE_BIN):
	npm install --no-audit --no-fund --prefix $(CLAUDE_PREFIX) \
		@anthropic-ai/claude-code-linux-x64@$(CLAUDE_VERSION)
	test -x $@

test: setup
	ORCH_CLAUDE_BIN=$(abspath $(CLAUDE_BIN)) $(BIN)/pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: setup
	ORCH_CLAUDE_BIN=$(abspath $(CLAUDE_BIN)) $(BIN)/python demo/run_demo.py

bench: setup
	$(BIN)/python bench/hook_latency.py

soak: setup
	ORCH_CLAUDE_BIN=$(abspath $(CLAUDE_BIN)) $(BIN)/python bench/fleet_soak.py

hooks: $(VENV)/.installed
	$(BIN)/orch install --template > hooks/settings.template.json

clean:
	rm -rf $(VENV) .cache

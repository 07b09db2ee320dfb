# Set-up and the two everyday jobs. Only Python 3.10+ is needed; everything goes into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned, so that nothing pulls a multi-GB CUDA build where a CPU
# build is wanted. On a GPU machine: make TORCH_SPEC="torch" (or your CUDA build) setup.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The main job: LoRA on the embedded default model with the sample data, before/after table.
# The run is runs/$(DEMO_NAME) (runs/demo), the name the README's commands use.
DEMO_NAME ?= demo
demo: setup
	@if [ -f runs/$(DEMO_NAME)/affina.json ]; then \
	  echo "runs/$(DEMO_NAME) already holds a finished demo run: use it (affina generate runs/$(DEMO_NAME) --prompt ...)," >&2; \
	  echo "or run another with 'make demo DEMO_NAME=demo2', or remove it first (rm -r runs/$(DEMO_NAME))" >&2; \
	  exit 2; fi
	$(BIN)/affina train -c examples/product_json/run.yaml train.run_name=$(DEMO_NAME)

# Everything CI runs: unit tests on tiny models plus a few slow end-to-end tests.
test: setup
	$(BIN)/python -m pytest -q

# Unit tests only (seconds).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache

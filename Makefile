# The two quick-start commands: `make demo` runs the main job on the embedded defaults,
# `make test` passes the tests. Both install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, and only when missing: on a CPU machine torch==2.13.0 is the local CPU build, so
# nothing pulls CUDA wheels; on a GPU machine a CUDA torch already in the venv is kept.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/hpo demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/train_throughput.py --budget smoke

clean:
	rm -rf mlruns/*.db mlruns/artifacts mlruns/cache reports

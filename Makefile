# The two quick-start commands: `make demo` runs the main job on the embedded defaults,
# `make test` passes the tests. Both install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 first: on a CPU machine it is the local CPU build, so nothing pulls CUDA wheels.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
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

# Two commands on a fresh machine:  make demo   |   make test
# Both create .venv on first use. TORCH pins the CPU build of torch (see README: GPU machines).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/stereodsc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $@

demo: $(BIN)/stereodsc
	$(BIN)/stereodsc demo

test: $(BIN)/stereodsc
	$(BIN)/python -m pytest -q

lint: $(BIN)/stereodsc
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

bench: $(BIN)/stereodsc
	$(BIN)/python benchmarks/bench_entropy.py
	$(BIN)/python benchmarks/bench_rectify.py

clean:
	rm -rf $(VENV) build *.egg-info

# Two commands for a fresh clone: `make run` and `make test` (both create .venv and install first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

# constraints.txt pins this machine's CPU torch wheel; the package itself asks only for ranges (pyproject.toml).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,interop]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/monosem run

# Two pytest-xdist workers: the suite waits on many subprocesses; on 2 cores it takes 5-6 minutes instead of 9.
TEST_WORKERS ?= 2

test: $(STAMP)
	bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_saes.py

clean:
	rm -rf $(VENV) runs .pytest_cache

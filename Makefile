# The two commands of the quickstart: `make demo` and `make test`.
# Both create .venv on first use (Python 3.11) and reuse it afterwards: the install step reruns only
# when pyproject.toml or requirements.lock change.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet
# torch and torchvision go first, pinned to the lock (timm needs a torchvision that matches torch)
TORCH  := $(shell grep -E '^(torch|torchvision)==' requirements.lock)

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -c requirements.lock -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmc data synthetic --config config/test.yaml --out data/synthetic

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf results/test state/test data/synthetic .snakemake

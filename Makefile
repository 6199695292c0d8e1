# The two commands of the quickstart: `make demo` and `make test`.
# Both create .venv on first use (Python 3.11) and reuse it afterwards: the install step reruns only
# when pyproject.toml or requirements.lock change.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet
# the workflow's rules call `mmc`: put the environment's commands first on PATH
RUN    := PATH="$(CURDIR)/$(BIN):$$PATH"
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

# the whole pipeline on config/test.yaml (synthetic data, CPU); its hooks render the HTML report,
# write pipeline_info and version the run folder with DVC (results/test.dvc)
demo: $(STAMP)
	$(RUN) snakemake --configfile config/test.yaml
	@echo "report: results/test/report.html"
	@echo "MLflow: $(BIN)/mlflow ui --backend-store-uri sqlite:///results/test/tracking/mlflow.db (the runs: see the last 'mmc:' line above)"
	@echo "audit:  $(BIN)/mmc provenance results/test/tables/segmentation.csv"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf results/test state/test data/synthetic checkpoints/test .snakemake

# The two commands of the quickstart: `make demo` and `make test`.
# Both create .venv on first use and reuse it afterwards: the install step reruns only when
# pyproject.toml or requirements.lock change.

# The Python .venv is made with: PYTHON if given (make PYTHON=/path/to/python3.11 demo), else the
# first of these on PATH, else python3 if it is one of these versions. requirements.lock was
# resolved and is tested on 3.11; its pins also install on the other versions listed.
PYTHON_VERSIONS := 3.11 3.12 3.13
PYTHON ?= $(firstword $(foreach v,$(PYTHON_VERSIONS),$(shell command -v python$(v) 2>/dev/null)) \
            $(shell python3 -c 'import sys; print(sys.executable if "%d.%d" % sys.version_info[:2] in "$(PYTHON_VERSIONS)".split() else "")' 2>/dev/null))
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet
# the workflow's rules call `mmc`: put the environment's commands first on PATH
RUN    := PATH="$(CURDIR)/$(BIN):$$PATH"
# torch and torchvision go first, pinned to the lock (timm needs a torchvision that matches torch)
TORCH  := $(shell grep -E '^(torch|torchvision)==' requirements.lock)

.PHONY: demo study study-sweep test test-fast lint install clean clean-study

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || { \
	  if [ -z "$(PYTHON)" ]; then \
	    echo "make: no suitable Python: requirements.lock needs Python $(PYTHON_VERSIONS) (3.11 is the tested one)," \
	         "found none of python3.11, python3.12, python3.13 on PATH (python3 is $$(python3 --version 2>&1))." \
	         "Install one, or give it: make PYTHON=/path/to/python3.11 demo" >&2; exit 2; fi; \
	  version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || version="not a Python"; \
	  case " $(PYTHON_VERSIONS) " in *" $$version "*) ;; \
	    *) echo "make: PYTHON=$(PYTHON) is $${version:-not a Python}: requirements.lock needs Python $(PYTHON_VERSIONS)" >&2; exit 2;; esac; \
	  echo "creating $(VENV) with $(PYTHON) (Python $$version)"; $(PYTHON) -m venv $(VENV); }
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

# the CPU study (docs/study.md): the whole pipeline on config/study.yaml (its own scenes, three seeds
# of every experiment, the single-loss ablations, the colour floor); ~40 minutes on 2 free CPU cores
study: $(STAMP)
	$(RUN) snakemake --configfile config/study.yaml
	@echo "report: results/study/report.html; tables: results/study/tables/segmentation.md"

# the sweep that chose the study's [CLS]-distillation settings and loss weights (docs/study.md#sweep):
# short runs of each variant, scored on the selection split; writes results/study_sweep/sweep.md
study-sweep: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/study.py

# Two pytest-xdist workers: the suite is half waiting (process starts, SLURM status polls), so two
# keep both cores busy. tests/conftest.py groups the tests: a module per worker, and the demo
# workflow run with the SLURM tests in one worker, one after another (make test PYTEST_WORKERS=0:
# no workers, in this process).
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup)

test: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST)

# the inner loop: everything but the tests marked slow (whole workflow runs, DDP, SLURM, browser)
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf results/test state/test data/synthetic checkpoints/test .snakemake

clean-study:
	rm -rf results/study results/study_sweep state/study state/study_sweep data_study checkpoints/study checkpoints/study_sweep

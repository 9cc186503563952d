# siamese-sweep — the two commands of the README, and a few helpers.
PYTHON ?= python3
PYTEST = $(PYTHON) -m pytest

.PHONY: demo test test-fast setup setup-test ui lint

demo: setup                 ## the main job: a real sweep on Fashion-MNIST with local MLflow + Optuna stores
	siamese-sweep run quickstart

# pytest-xdist workers, each given whole files (a file's module fixtures start once); much of the suite waits on
# servers and sub-processes, so 2 workers on the 2-core CI machine ran it in 26-33 min against 74 min serially
# (sessions 51-54, Intel Xeon). `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile

test: setup-test            ## every test, slow end-to-end ones included (what CI runs)
	$(PYTEST) -q --durations=25 $(XDIST)

test-fast: setup-test       ## the quick suite (no real-server end-to-end, no browser)
	$(PYTEST) -q -m "not slow" $(XDIST)

lint: setup-test            ## ruff (style, imports, bug patterns) and mypy (types); both configured in pyproject.toml
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

ui:                         ## open the MLflow UI on the local store
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# Two commands run everything: `make pipeline` and `make test` (see README "Quick start").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: pipeline test bytecode lint serve s3-server publish report bench clean-venv

# (Re)install only when the dependency list changes.
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e ".[dev]"
	touch $(STAMP)

## Bytecode for lib/ (0.06 s when current): pip compiles what it installs, but not an editable
## install's sources, and where PYTHONDONTWRITEBYTECODE is set every stage, kernel and test process
## compiled the ccfraud modules it imports from source again.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q lib

## Install into .venv and run the full pipeline (dvc repro) on the default data.
pipeline: $(STAMP) bytecode
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

## Install into .venv and run the test suite: one xdist worker per CPU, tests grouped so the
## pipeline runs once (tests/conftest.py), the 15 slowest printed.
test: $(STAMP) bytecode
	$(BIN)/python -m pytest -n auto --dist loadgroup --durations=15

lint: $(STAMP)
	$(BIN)/ruff check lib tests notebooks benchmarks

## Serve the pipeline's model locally with the Procfile's gunicorn command (on loopback only).
serve: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" PORT=$${PORT:-8000} sh -c "$$(sed -n 's/^web: //p' Procfile | sed 's/0\.0\.0\.0/127.0.0.1/')"

## Run a local SeaweedFS S3 server on 127.0.0.1:8333 (data in .s3-data/).
s3-server: $(STAMP)
	$(BIN)/ccfraud s3-server --dir .s3-data

## Upload the trained model to s3://$$S3_BUCKET/models/<version>/.
publish: $(STAMP)
	$(BIN)/ccfraud publish-model models s3://$${S3_BUCKET:?set S3_BUCKET}/models/

## Write reports/pr_report.md (metrics and params diff against $$BASE, default main).
report: $(STAMP)
	$(BIN)/ccfraud pr-report --base $${BASE:-main}

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/serving.py

clean-venv:
	rm -rf $(VENV)

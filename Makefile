# Two commands do everything on a fresh machine:
#   make quickstart   set up .venv/ and run the pipeline on the built-in long-tailed MNIST
#   make test         set up .venv/ and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-slow benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/raysys run configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q --durations=15

test-slow: $(STAMP)
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium) \
		|| (sudo apt-get update -q && sudo apt-get install -y -q chromium)
	$(BIN)/python -m pip install --quiet -e ".[test,browser,tracking]"
	$(BIN)/python -m pytest -m slow -q --durations=15

benchmark: $(STAMP)
	$(BIN)/python benchmarks/data_plane_scaling.py
	$(BIN)/python benchmarks/synthesis_throughput.py
	$(BIN)/python benchmarks/train_ingest.py
	$(BIN)/python benchmarks/memory_plan.py
	$(BIN)/python benchmarks/stage_digests.py
	$(BIN)/python benchmarks/feature_extraction.py
	$(BIN)/python benchmarks/captioning_throughput.py

clean:
	rm -rf runs/ .pytest_cache

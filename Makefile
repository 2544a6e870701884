# gcrdp — the two commands a new user runs: `make demo` and `make test`.
# Both create .venv and install the pinned dependencies once (a second run reinstalls nothing
# unless requirements.lock or pyproject.toml changed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test bench evidence clean-venv help

help:
	@echo "make demo   # set up .venv and run few-shot retrieval on Twemoji: gap-infonce and gcrdp (0/1/3/5 shots, 3 seeds)"
	@echo "make test   # set up .venv and run the test suite"
	@echo "make bench  # run the benchmarks in benchmarks/"
	@echo "make evidence  # GCRDP ablation + sensitivity on Twemoji (tables of docs/results.md; ~1 h 45 min)"

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gcrdp run --dataset twemoji --methods gap-infonce gcrdp --shots 0 1 3 5 --seeds 0 1 2 --output-dir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_extraction.py
	$(BIN)/python benchmarks/bench_demo.py
	$(BIN)/python benchmarks/bench_gmm.py
	$(BIN)/python benchmarks/bench_train_step.py --repeats 20 --parts

# GCRDP ablations and sensitivity on Twemoji (1/3/5 shots × 5 seeds); tables for docs/results.md
# (about 1 h 45 min on 2 cores: 240 fits; the two studies run side by side, one thread each)
evidence: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/gcrdp run --config configs/ablation.json --output-dir runs/ablation -q & a=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/gcrdp run --config configs/sensitivity.json --output-dir runs/sensitivity -q & s=$$!; \
	wait $$a; ra=$$?; wait $$s; rs=$$?; test $$ra -eq 0 -a $$rs -eq 0
	$(BIN)/python scripts/results_tables.py --merge --name "GCRDP ablation and sensitivity" --reference gcrdp \
	  runs/ablation/results.json runs/sensitivity/results.json

clean-venv:
	rm -rf $(VENV)

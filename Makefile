# gcrdp — the two commands a new user runs: `make demo` and `make test`.
# Both create .venv and install the pinned dependencies once (a second run reinstalls nothing
# unless requirements.lock or pyproject.toml changed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= runs/demo
# FRESH=1: refit every fit of the demo instead of reusing the ones already in $(DEMO_DIR)
FRESH ?=
DEMO_RESUME := $(if $(filter-out 0 no false,$(FRESH)),--no-resume,)
PYTEST_ARGS ?=

.PHONY: demo readme test test-fast lint bench evidence reproduce clean-venv help

help:
	@echo "make demo   # set up .venv and run few-shot retrieval on Twemoji: gap-infonce and gcrdp (0/1/3/5 shots, 3 seeds)"
	@echo "make demo FRESH=1 # the same, refitting every fit instead of reusing those already in runs/demo"
	@echo "make test   # set up .venv and run the test suite"
	@echo "make test-fast # the same on 2 workers without the tests marked slow (long end-to-end, kill-and-resume, torchrun, Dask, browser)"
	@echo "make lint   # ruff and mypy"
	@echo "make readme # copy the last demo's table into README.md (docs/demo/results.json)"
	@echo "make bench  # run the benchmarks in benchmarks/"
	@echo "make reproduce # every baseline and GCRDP on the data available: docs/results.md, docs/figures (~75 min)"
	@echo "make evidence  # GCRDP ablation + sensitivity on Twemoji (tables of docs/gcrdp-study.md; ~1 h 45 min)"

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gcrdp run --dataset twemoji --methods gap-infonce gcrdp --shots 0 1 3 5 --seeds 0 1 2 --jobs 2 --output-dir $(DEMO_DIR) $(DEMO_RESUME)

# The README's demo block from the last `make demo` (kept in docs/demo/results.json; a test
# fails when README.md and that file disagree).
readme: $(STAMP)
	$(BIN)/python scripts/readme_demo.py $(DEMO_DIR)/results.json

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the suite without the tests marked slow (pyproject.toml's `slow` marker; `make test` runs them too)
# on FAST_WORKERS pytest-xdist workers (pinned in requirements.lock; FAST_WORKERS=0: one process),
# each test file on one worker (--dist loadfile: a module's fixtures are built once)
FAST_WORKERS ?= 2
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n $(FAST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff (the rules in pyproject.toml) and mypy (typed modules; the ratchet list in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_eval_scale.py
	$(BIN)/python benchmarks/bench_extraction.py
	$(BIN)/python benchmarks/bench_demo.py
	$(BIN)/python benchmarks/bench_gmm.py
	$(BIN)/python benchmarks/bench_train_step.py --repeats 20 --parts
	$(BIN)/python benchmarks/bench_index_scale.py

# GCRDP ablations and sensitivity on Twemoji (1/3/5 shots × 5 seeds); tables for docs/gcrdp-study.md
# (about 1 h 45 min on 2 cores: 240 fits; the two studies run side by side, one thread each)
evidence: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/gcrdp run --config configs/ablation.json --output-dir runs/ablation -q & a=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/gcrdp run --config configs/sensitivity.json --output-dir runs/sensitivity -q & s=$$!; \
	wait $$a; ra=$$?; wait $$s; rs=$$?; test $$ra -eq 0 -a $$rs -eq 0
	$(BIN)/python scripts/results_tables.py --merge --name "GCRDP ablation and sensitivity" --reference gcrdp \
	  runs/ablation/results.json runs/sensitivity/results.json

# Every baseline and GCRDP, 0/1/3/5 shots × 5 seeds, on Twemoji and (where ../shared/data has
# them) the Wikipedia SIFT/LDA and Pascal DSCMR features; then docs/results.md and docs/figures.
# The grid is resumable: an interrupted `make reproduce` continues; delete runs/reproduce to
# start from nothing. Twemoji and the feature datasets run side by side, one thread each
# (about 75 min on 2 cores; the Twemoji group, with the GCRDP K/θ variants, is the longer).
REPRODUCE_DIR ?= runs/reproduce
reproduce: $(STAMP)
	@OMP_NUM_THREADS=1 $(BIN)/gcrdp experiment configs/reproduce.json --output-dir $(REPRODUCE_DIR) --datasets twemoji -q & a=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/gcrdp experiment configs/reproduce.json --output-dir $(REPRODUCE_DIR) \
	  --datasets wikipedia wikipedia-standard pascal-dscmr-test -q & b=$$!; \
	wait $$a; ra=$$?; wait $$b; rb=$$?; test $$ra -eq 0 -a $$rb -eq 0 || exit 1; \
	test -d $(REPRODUCE_DIR)/model || OMP_NUM_THREADS=2 $(BIN)/gcrdp train --dataset twemoji --method gcrdp --shots 5 \
	  --seed 0 --checkpoint-dir $(REPRODUCE_DIR)/model -q > /dev/null || exit 1; \
	$(BIN)/python benchmarks/bench_train_step.py --repeats 20 --json $(REPRODUCE_DIR)/bench_train_step.json > /dev/null || exit 1; \
	$(BIN)/python scripts/make_results_doc.py $(REPRODUCE_DIR)/runs --out docs/results.md --figures docs/figures \
	  --bench $(REPRODUCE_DIR)/bench_train_step.json --embedding-map $(REPRODUCE_DIR)/model \
	  --methods cca dscmr clip4cmr clip4cmr@contrastive flex-clip gap-infonce gap-infonce@cp gcrdp gcrdp@study
	$(BIN)/python scripts/readme_methods.py

clean-venv:
	rm -rf $(VENV)

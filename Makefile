# video-rnn: one virtual environment, created on first use, pinned by constraints.txt.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,dvc
STAMP  := $(VENV)/.installed
TEST_WORKERS ?= 2

.PHONY: setup demo test bench constraints

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

setup: $(STAMP)  ## create $(VENV) and install the project with $(EXTRAS) extras

demo: setup  ## bundled sample data → index → extract → train → evaluate, via dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/dvc metrics show
	@echo "Demo done: features in data/features/, model in models/, metrics in metrics/."
	@echo "The demo used extract.weights=random (offline). Real features: dvc exp run -S extract.weights=imagenet"
	@echo "In a new shell, run 'source $(VENV)/bin/activate' first: the dvc stages call vrnn."

test: setup  ## lint, then the whole test suite (TEST_WORKERS processes, by test file)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: setup  ## benchmarks (minutes; prints tables)
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_train.py

constraints: setup  ## re-pin constraints.txt from the current environment
	(head -2 constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^video-rnn') > constraints.tmp
	mv constraints.tmp constraints.txt

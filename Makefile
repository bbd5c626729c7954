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

# ---- Docker (docs/docker.md) -------------------------------------------------------------
# `docker build -t vrnn .` is the online build. Offline: `make wheelhouse` on a host with
# network (this host's platform must be the image's: CPython 3.11, Linux x86_64), then
# `make docker-offline BASE=…` builds with no network, pip reading only wheelhouse/.
BASE  ?= python:3.11-slim
IMAGE ?= vrnn

.PHONY: wheelhouse docker-offline docker-smoke

# (the few pins published only as sdists become wheels here, so the image builds none)
wheelhouse: setup  ## download every pinned wheel (constraints.txt; + pip, setuptools, wheel: pip freeze leaves them out) into wheelhouse/
	$(BIN)/python -m pip download --quiet --no-deps --prefer-binary --dest wheelhouse -r constraints.txt pip setuptools wheel
	for sdist in wheelhouse/*.tar.gz; do \
		[ ! -e "$$sdist" ] || $(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir wheelhouse "$$sdist" && rm -f "$$sdist"; \
	done

docker-offline:  ## build $(IMAGE) on $(BASE) from wheelhouse/ only, no network (BASE needs make, git)
	docker build --network none --build-arg BASE=$(BASE) --build-arg PIP_NO_INDEX=1 -t $(IMAGE) .

docker-smoke: docker-offline  ## offline build, then sample-data … predict in containers (tools/docker_smoke.sh)
	sh tools/docker_smoke.sh $(IMAGE)

# Roost — fast.ai lesson 1 models as production model servers.
SHELL := /bin/bash
# The venv needs a Python 3.11: `make setup PYTHON=python3.11` where python3 is another version.
PYTHON ?= python3
PY := .venv/bin/python
ARTIFACTS ?= artifacts
DATA ?=
PORT ?= 3000
GRPC_PORT ?= 8001
TRAIN_ARGS ?=
BENCH_ARGS ?=
RECORD ?=
MODELS := bird segment tabular collab

export BENTOML_DO_NOT_TRACK := True
export KUBECONFIG := /dev/null

.PHONY: setup test test-fast train-all serve bench tools chart-check $(addprefix train-,$(MODELS)) $(addprefix serve-,$(MODELS)) $(addprefix image-,$(MODELS)) $(addprefix bench-,$(MODELS))

setup: .venv/.installed

.venv/.installed: pyproject.toml
	$(PYTHON) -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	# torch + torchvision first, pinned: pip takes them from local disk where they lie there.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip check
	touch $@

$(addprefix train-,$(MODELS)): train-%: setup
	$(PY) -m training $* --out $(ARTIFACTS) $(if $(DATA),--data $(DATA)) $(TRAIN_ARGS)

train-all: $(addprefix train-,$(MODELS))

$(addprefix serve-,$(MODELS)): serve-%: setup
	ROOST_ARTIFACTS=$(ARTIFACTS) ROOST_GRPC_PORT=$(GRPC_PORT) .venv/bin/bentoml serve services.$*:$(shell echo $* | sed "s/./\U&/") --host 127.0.0.1 --port $(PORT)

# Results go to bench-results/ (git-ignored); RECORD=1 also appends them to docs/benchmarks.md.
$(addprefix bench-,$(MODELS)): bench-%: setup
	$(PY) -m tests.bench $* --artifacts $(ARTIFACTS) $(if $(filter 1,$(RECORD)),--record) $(BENCH_ARGS)

bench: $(addprefix bench-,$(MODELS))

tools:
	bash k8s/tools.sh

chart-check: setup tools
	$(PY) -m pytest tests/charts -q -m "not slow"

$(addprefix image-,$(MODELS)): image-%: setup
	# Builds the bento (no container engine needed); containerize needs Docker/podman/buildah.
	.venv/bin/bentoml build -f services/$*.bentofile.yaml .
	@echo "then: bentoml containerize roost-$*:latest  (needs a container engine)"

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

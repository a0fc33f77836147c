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

.PHONY: setup test test-fast train-all serve import bench tools chart-check $(addprefix train-,$(MODELS)) $(addprefix serve-,$(MODELS)) $(addprefix image-,$(MODELS)) $(addprefix bench-,$(MODELS)) chaos \
	base-image images image-train image-test $(addprefix image-gpu-,$(MODELS)) $(addprefix image-fastai-,$(MODELS))

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

# Bring your own learner: `make import LEARNER=export.pkl NAME=pets SAMPLES=photos/` writes a proven bundle
# under $(ARTIFACTS)/NAME/; `make serve MODEL=NAME` serves it (a lesson model's name serves that model).
import: setup
	@test -n "$(LEARNER)" -a -n "$(NAME)" || { echo "usage: make import LEARNER=path/export.pkl NAME=name SAMPLES=folder-or.csv"; exit 2; }
	$(PY) -m training import $(LEARNER) --name $(NAME) --out $(ARTIFACTS) $(if $(SAMPLES),--samples $(SAMPLES))

serve: setup
	@test -n "$(MODEL)" || { echo "usage: make serve MODEL=name (a lesson model or an imported learner)"; exit 2; }
	ROOST_ARTIFACTS=$(ARTIFACTS) ROOST_MODEL=$(MODEL) ROOST_GRPC_PORT=$(GRPC_PORT) .venv/bin/bentoml serve \
		$(if $(filter $(MODEL),$(MODELS)),services.$(MODEL):$(shell echo $(MODEL) | sed "s/./\U&/"),services.imported:Imported) \
		--host 127.0.0.1 --port $(PORT)

# Results go to bench-results/ (git-ignored); RECORD=1 also appends them to docs/benchmarks.md.
$(addprefix bench-,$(MODELS)): bench-%: setup
	$(PY) -m tests.bench $* --artifacts $(ARTIFACTS) $(if $(filter 1,$(RECORD)),--record) $(BENCH_ARGS)

bench: $(addprefix bench-,$(MODELS))

tools:
	bash k8s/tools.sh

chart-check: setup tools
	$(PY) -m pytest tests/charts -q -m "not slow"

# Container images: buildah builds, podman runs (vfs storage, runc; no daemon, no registry needed).
# base-image debootstraps Debian bookworm from apt's mirror (cached); BASE_IMAGE=python:3.11-slim-bookworm
# skips it where a registry is reachable. BUNDLE: a bundle folder to bake in, "" = the newest under
# $(ARTIFACTS)/<model>, "none" = serve a mounted volume. IMAGE_MODELS: the images `make image-test` runs.
BASE_IMAGE ?= localhost/roost-base:bookworm
IMAGE_REPO ?= ghcr.io/roost-ml
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/roost/Chart.yaml)
BUNDLE ?=
IMAGE_MODELS ?= bird
IMAGE_ENV = BASE_IMAGE=$(BASE_IMAGE) IMAGE_REPO=$(IMAGE_REPO) IMAGE_TAG=$(IMAGE_TAG) ARTIFACTS=$(ARTIFACTS) BUNDLE=$(BUNDLE)
BASE_DEP = $(if $(filter localhost/roost-base:%,$(BASE_IMAGE)),base-image)

base-image:
	images/base.sh $(BASE_IMAGE)

$(addprefix image-,$(MODELS)): image-%: $(BASE_DEP)
	$(IMAGE_ENV) images/build.sh serve $*

$(addprefix image-gpu-,$(MODELS)): image-gpu-%: $(BASE_DEP)
	$(IMAGE_ENV) images/build.sh gpu $*

$(addprefix image-fastai-,$(MODELS)): image-fastai-%: $(BASE_DEP)
	$(IMAGE_ENV) images/build.sh fastai $*

image-train: $(BASE_DEP)
	$(IMAGE_ENV) images/build.sh train

images: $(addprefix image-,$(MODELS)) image-train

image-test: setup
	IMAGE_MODELS="$(IMAGE_MODELS)" IMAGE_REPO=$(IMAGE_REPO) IMAGE_TAG=$(IMAGE_TAG) $(PY) -m pytest tests/images -q

# Bad input, overload, SIGTERM, kill -9 and broken bundles against real servers on 127.0.0.1
# (<= 10 min); writes bench-results/reliability-*.md, and docs/reliability.md with RECORD=1.
chaos: setup
	$(PY) -m tests.chaos $(if $(RECORD),--record) $(CHAOS_ARGS)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

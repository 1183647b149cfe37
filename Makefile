# Two commands for a newcomer: `make demo` and `make test`. Both create the virtualenv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STATE ?= $(CURDIR)/.state
DEMO ?= $(CURDIR)/.demo
DEMO_PRODUCTS ?= 800
DEMO_IMAGE_SIZE ?= 64
PYTEST_ARGS ?=
export RAKUTEN_STATE_DIR := $(STATE)
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: venv lint test test-slow test-all demo compile serve bench images push-images smoke-images clean

venv: $(STAMP)

$(STAMP): requirements.lock requirements-vectors.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements-vectors.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy rakuten_mm rakuten_cli pipelines components serving rollout tools devtools
	bash scripts/lint_platform.sh

# `make test` stays under ~15 min on 2 cores: the tests marked slow (whole pipeline runs, trainings on the real
# sample; ~44 tests, ~11 min) run in `make test-slow`, which CI runs after `make test` (.ci/run).
test: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/rakuten data synth $(DEMO)/data --products $(DEMO_PRODUCTS) --seed 0 --image-size $(DEMO_IMAGE_SIZE)
	$(BIN)/rakuten data validate $(DEMO)/data
	$(BIN)/rakuten train $(DEMO)/data --out $(DEMO)/bundle --image-size $(DEMO_IMAGE_SIZE) --image-weights none \
		--epochs-text 8 --epochs-image 10
	$(BIN)/rakuten evaluate $(DEMO)/bundle $(DEMO)/data --split test --report-dir $(DEMO)/report
	$(BIN)/rakuten predict $(DEMO)/bundle $(DEMO)/data --out $(DEMO)/predictions.csv
	$(BIN)/python -m devtools.demo_client --bundle $(DEMO)/bundle --data $(DEMO)/data -n 5
	@echo "bundle: $(DEMO)/bundle  predictions: $(DEMO)/predictions.csv  confusion matrices: $(DEMO)/report"
	@echo "MLflow: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(STATE)/mlflow.db   serve: make serve"

# Regenerates the checked-in pipelines/training.yaml and batch_prediction.yaml; PIPELINE_IMAGE=REF compiles against your
# pushed image.
compile: $(STAMP)
	$(BIN)/rakuten pipeline compile $(if $(PIPELINE_IMAGE),--image $(PIPELINE_IMAGE))
	$(BIN)/rakuten pipeline compile --pipeline batch-prediction $(if $(PIPELINE_IMAGE),--image $(PIPELINE_IMAGE))

# Both images, tagged from the package version: make images [CONTAINER_ENGINE=docker|podman] [IMAGE_REGISTRY=...]
#   [TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu] [BAKE_IMAGENET_WEIGHTS=1] [PYTHON_IMAGE=...]
# Extra engine flags come from BUILD_FLAGS (on this offline machine kind: eval "$$(../shared/tools/container-engine.sh flags)").
# The pipeline image is built FROM the serving image. make push-images pushes both.
IMAGE_REGISTRY ?= registry.example.com/rakuten
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_TAG ?= $(VERSION)
SERVING_REF ?= $(IMAGE_REGISTRY)/rakuten-serving:$(IMAGE_TAG)
PIPELINE_REF ?= $(IMAGE_REGISTRY)/rakuten-pipeline:$(IMAGE_TAG)
# docker when its daemon answers, else podman when installed, else docker (whose error then says what is missing).
CONTAINER_ENGINE ?= $(shell docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && echo docker || \
	{ command -v podman >/dev/null 2>&1 && echo podman; } || echo docker)
BUILD_FLAGS ?=
TORCH_INDEX_URL ?=
BAKE_IMAGENET_WEIGHTS ?= 0
IMAGE_BUILD_ARGS = $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
	$(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL))
images:
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) $(IMAGE_BUILD_ARGS) -f images/serving.Dockerfile -t $(SERVING_REF) .
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) --build-arg SERVING_IMAGE=$(SERVING_REF) \
		--build-arg BAKE_IMAGENET_WEIGHTS=$(BAKE_IMAGENET_WEIGHTS) -f images/pipeline.Dockerfile -t $(PIPELINE_REF) .

push-images:
	$(CONTAINER_ENGINE) push $(SERVING_REF)
	$(CONTAINER_ENGINE) push $(PIPELINE_REF)

# Builds the images, then runs them as the manifests and Kubeflow would (minutes; not part of `make test`): the
# predictor + transformer containers answering V2 JSON/binary and V1 clients, the training pipeline through
# `rakuten pipeline run --runner docker`, image sizes and cold starts. SMOKE_ARGS: see python -m tools.smoke_images -h
SMOKE_ARGS ?=
smoke-images: images $(STAMP)
	$(BIN)/python -m tools.smoke_images --engine $(CONTAINER_ENGINE) --serving-image $(SERVING_REF) \
		--pipeline-image $(PIPELINE_REF) $(SMOKE_ARGS)

SERVE_BUNDLE ?= $(DEMO)/bundle
PREDICTOR_PORT ?= 8080
TRANSFORMER_PORT ?= 8085

# Both servers on 127.0.0.1 over HTTP (the transformer needs no bundle); Ctrl-C stops both.
serve: $(STAMP)
	@test -f $(SERVE_BUNDLE)/manifest.json || { echo "no bundle at $(SERVE_BUNDLE): run 'make demo' or pass SERVE_BUNDLE=DIR"; exit 1; }
	$(BIN)/rakuten serve predictor --model-dir $(SERVE_BUNDLE) --bind-host 127.0.0.1 --http_port $(PREDICTOR_PORT) & \
	pred=$$!; trap 'kill $$pred 2>/dev/null; wait $$pred' EXIT; \
	$(BIN)/rakuten serve transformer --bind-host 127.0.0.1 --http_port $(TRANSFORMER_PORT) \
		--predictor_host 127.0.0.1:$(PREDICTOR_PORT)

bench: $(STAMP)
	$(BIN)/python benchmarks/core_bench.py
	$(BIN)/python benchmarks/pipeline_bench.py --repeat 3
	$(BIN)/python benchmarks/serve_bench.py

clean:
	rm -rf $(DEMO) $(STATE) .pytest_cache .mypy_cache .ruff_cache

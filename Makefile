# sipauth: `make run` starts the service on its embedded defaults; `make test` runs every test.
# Both set up what they need (virtualenv, Python packages, Debian packages when root or sudo).

VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SETUP  := deploy/dev/setup.sh
PYTEST_ARGS ?=

# Commands the tests run for real, and the Debian package that provides each.
TEST_PACKAGES := redis-server:redis-server redis-cli:redis-server

.PHONY: run test lint typecheck proto proto-check sysdeps venv clean

$(STAMP): pyproject.toml clients/python/pyproject.toml $(SETUP)
	$(SETUP) venv $(VENV)
	touch $@

venv: $(STAMP)

sysdeps:
	$(SETUP) packages $(TEST_PACKAGES)

run: $(STAMP)
	$(BIN)/sipauth serve --config examples/sipauth.yaml

proto: $(STAMP)
	$(BIN)/python proto/generate.py

proto-check: $(STAMP)
	$(BIN)/python proto/generate.py --check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy service/sipauth clients/python/sipauth_client

test: $(STAMP) sysdeps proto-check lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

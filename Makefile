# fieldbridge: `make run` serves on the embedded defaults, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck system-deps bench proto clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/fieldbridge db migrate
	$(BIN)/fieldbridge run

system-deps:
	./scripts/system-deps.sh

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy --strict src

# Two workers for the two cores; tests sharing a costly module fixture (the wheel) stay together.
PYTEST_WORKERS ?= 2
test: system-deps install lint typecheck
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=25

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Efento protobuf modules (committed); tests/codecs/efento/test_proto.py fails when they are stale.
EFENTO_PROTO := src/fieldbridge/codecs/efento/proto
proto: install
	$(BIN)/python -m grpc_tools.protoc -Isrc --python_out=src --mypy_out=src \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy $(EFENTO_PROTO)/*.proto

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Everyday entry points. `make test` is what CI runs (through .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard proto/leasenet/v1/*.proto)
# the example service's own .proto, generated beside it (its path is its Python package: no rewriting)
EXAMPLE_PROTOS := $(wildcard examples/*/*.proto)

.PHONY: setup proto proto-check test unit integration chaos docker-test demo bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# reinstall only when the dependencies change
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Generated stubs live in wire/v1/ (the bottom layer) for the proto package leasenet.v1; they are
# committed so that installing leasenet needs no protoc. protoc names modules after the .proto
# path (leasenet/v1/...), so the stubs' imports are made relative and their module names moved.
proto: setup
	rm -rf build/proto && mkdir -p build/proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=build/proto --pyi_out=build/proto --grpc_python_out=build/proto $(PROTOS)
	sed -i -e 's/^from leasenet\.v1 import /from . import /' -e "s/'leasenet\.v1\.\([a-z]*_pb2\)'/'wire.v1.\1'/" build/proto/leasenet/v1/*.py
	cp build/proto/leasenet/v1/*_pb2* wire/v1/
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(EXAMPLE_PROTOS)

proto-check: proto
	git diff --exit-code -- wire/v1 examples || (echo "generated stubs are stale: run make proto" && exit 1)

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests --ignore=tests/docker

unit: setup
	$(PY) -m pytest -q tests/unit tests/contract

integration: setup
	$(PY) -m pytest -q -m integration tests

chaos: setup
	$(PY) -m pytest -q tests/chaos

docker-test: setup
	$(PY) -m pytest -q tests/docker

demo: setup
	$(VENV)/bin/leasenet demo

bench: setup
	$(VENV)/bin/leasenet bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

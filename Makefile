# Everyday entry points. `make test` is what CI runs (through .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard proto/leasenet/v1/*.proto)

.PHONY: setup proto proto-check test unit integration chaos docker-test demo bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# reinstall only when the dependencies change
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Generated stubs live in leasenet/v1/ (package leasenet.v1, matching the proto package);
# they are committed so that installing leasenet needs no protoc.
proto:
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

proto-check: proto
	git diff --exit-code -- leasenet/v1 || (echo "generated stubs are stale: run make proto" && exit 1)

test: setup
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

# The two commands of the README: `make demo` and `make test`. Both do all set-up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JAR := java-cluster/target/matchx-cluster.jar
JAVA_SOURCES := $(shell find java-cluster/src -name '*.java' 2>/dev/null) pom.xml java-cluster/pom.xml
PYTEST_ARGS ?=

.PHONY: setup system-deps venv build demo test test-java test-python test-docker lint bench clean

setup: system-deps venv build

system-deps:
	@bash .ci/system-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

build: $(JAR)

# Tests of the Java shim run in `make test`; the demo only needs the jar.
$(JAR): $(JAVA_SOURCES)
	mvn -q -B -DskipTests package

demo: setup
	$(PY) -m pyengine.demo

test: setup test-java test-python

test-java:
	mvn -q -B package

test-python:
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check pyengine coordinator tests bench

bench: setup
	$(PY) bench/failover_bench.py
	$(PY) bench/idle_cpu.py

clean:
	rm -rf $(VENV) java-cluster/target var

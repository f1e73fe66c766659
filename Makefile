# The two commands of the README: `make demo` and `make test`. Both do all set-up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JAR := java-cluster/target/matchx-cluster.jar
CDS := java-cluster/target/matchx-member.jsa
JAVA_SOURCES := $(shell find java-cluster/src -name '*.java' 2>/dev/null) pom.xml java-cluster/pom.xml
PYTEST_ARGS ?=

.PHONY: setup system-deps venv build engine-native demo test test-java test-python test-docker lint bench bench-deps clean

setup: system-deps venv build

system-deps:
	@bash .ci/system-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,native]'
	touch $@

build: $(JAR) engine-native $(CDS)

# The engine compiled with mypyc (same source; see docs/engine.md). Optional for `make demo`:
# without a C compiler the engine runs as plain Python, so a failed build warns and carries on.
# Under `make test` (MATCHX_REQUIRE_ALL=1) it is required: a failed build stops the run.
engine-native: venv
	@$(PY) -m pyengine.ops.build_engine || { \
	  if [ "$$MATCHX_REQUIRE_ALL" = 1 ]; then \
	    echo "error: missing prerequisite: the compiled engine (mypyc build failed: python -m pyengine.ops.build_engine)" >&2; exit 1; fi; \
	  echo "warning: the compiled engine was not built; the engine runs as plain Python (slower)"; }

# Class data sharing for the member JVM (pyengine/ops/build_cds.py): the classes a member loads,
# mapped instead of loaded at each start. Optional: a member starts without it, only slower.
$(CDS): $(JAR) java-cluster/cds/member.classlist | venv
	@$(PY) -m pyengine.ops.build_cds || \
	  echo "warning: the class data sharing archive was not built; members start without it (slower)"

# Tests of the Java shim run in `make test`; the demo only needs the jar.
$(JAR): $(JAVA_SOURCES)
	mvn -q -B -DskipTests package

demo: setup
	$(PY) -m pyengine.ops.demo

# Everything is required under `make test`: a missing prerequisite (Docker, the compiled engine,
# a kernel setting) fails with one line naming it instead of skipping (tests/prereq.py). The
# variable reaches the prerequisites made for this target (setup -> engine-native) too.
test: export MATCHX_REQUIRE_ALL = 1
test: setup test-java test-python

test-java:
	mvn -q -B package

# The engine's own tests run twice: compiled (when built) and as plain Python.
test-python:
	$(PY) -m pytest $(PYTEST_ARGS)
	MATCHX_PURE_ENGINE=1 $(PY) -m pytest -q tests/unit/test_engine*.py tests/unit/test_service.py

lint: venv
	$(VENV)/bin/ruff check pyengine coordinator tests bench

# the engine bench compares against PyPI engines: the `bench` extra brings them
bench-deps: venv
	$(PY) -m pip install -q -e '.[dev,native,bench]'

bench: setup bench-deps
	$(PY) bench/engine_bench.py
	$(PY) bench/failover_bench.py
	$(PY) bench/idle_cpu.py

clean:
	rm -rf $(VENV) java-cluster/target var
	rm -f pyengine/engine/*.so pyengine/engine/native.stamp

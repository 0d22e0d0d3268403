# sandgate — the two commands a new user needs:  make demo   and   make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: setup engine image demo test test-fast lint bench clean

$(BIN)/sandgate: pyproject.toml requirements.lock
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q platform/sandgate
	@touch $@

## setup: the virtual environment from the lock file, compiled to bytecode (PYTHONDONTWRITEBYTECODE=1 writes none)
setup: $(BIN)/sandgate

## engine: a Docker engine that answers (installs and starts one on Debian as root)
engine:
	@bash sandbox_images/engine.sh

## image: the sandbox image, built offline (cached)
image: setup engine
	$(BIN)/sandgate image build

## demo: the main job end to end on the embedded default (SQLite + local Docker)
demo: image
	$(BIN)/python examples/demo.py

## test: the whole suite against a real Docker engine, a real PostgreSQL and a headless Chromium, in
## TEST_WORKERS parallel processes (most tests wait on the engine; tests/conftest.py keeps a module in one
## process and the modules sharing engine-wide state in one group), printing the 15 slowest tests
TEST_WORKERS ?= 3
test: image
	@bash tests/ensure_postgres.sh
	@bash tests/ensure_browser.sh
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15

## test-fast: the unit tests, which need neither a Docker engine nor PostgreSQL (the engine is pointed nowhere)
test-fast: setup
	DOCKER_HOST=unix:///nonexistent/docker.sock $(BIN)/pytest -q -m "not docker and not postgres" --durations=5 tests/unit

## lint: ruff (style, imports, bugbear, pyupgrade) and mypy (the package), as CI runs them
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

## bench: the benchmarks (ratios against floors measured in the same run)
bench: image
	$(BIN)/python bench/bench_evaluate.py
	$(BIN)/python bench/bench_cli.py

clean:
	rm -rf $(VENV) .sandgate .pytest_cache

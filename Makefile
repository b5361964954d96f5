# Two entry points for a fresh machine (see README.md):
#   make demo   -> creates .venv, installs the package with its example dependencies, runs examples/quickstart.py
#   make test   -> creates .venv, installs the package with its test dependencies, runs ruff and the test suite
# CI (.ci/run) also runs `make test-latest`: a fresh venv on Python 3.12 with the newest jax, numpyro, optax and
# ArviZ (1.x there), running the tests that do not train torch flows.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints-cpu.txt

LATEST_VENV ?= .venv-latest
PYTHON_LATEST ?= $(shell for p in "$$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python python3.12; do \
	"$$p" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null && { command -v "$$p"; break; }; done)
LATEST_TESTS ?= tests/test_flowcommon tests/test_numpyroflows tests/test_pyroflows/diagnostics tests/test_backend_isolation.py

.PHONY: venv install demo test test-latest lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)

install: $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[pyro,numpyro,arviz,examples,test]"
	$(PIP) check

demo: install
	$(PY) examples/quickstart.py

lint: install
	$(VENV)/bin/ruff check pyroflows numpyroflows tests examples benchmarks

test: install lint
	$(PY) -m pytest -q -n 2 --durations=15

test-latest:
	@test -n "$(PYTHON_LATEST)" || { echo "no Python 3.12 found: pass PYTHON_LATEST=/path/to/python3.12"; exit 1; }
	rm -rf $(LATEST_VENV)
	$(PYTHON_LATEST) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -c $(CONSTRAINTS) \
		-e ".[pyro,numpyro,arviz,test]" jax numpyro optax arviz
	$(LATEST_VENV)/bin/python -m pip check
	$(LATEST_VENV)/bin/python -m pip list 2>/dev/null | grep -Ei "^(jax|numpyro|optax|arviz|torch|pyro-ppl|numpy|xarray) "
	$(LATEST_VENV)/bin/python -m pytest -q -n 2 -p no:cacheprovider $(LATEST_TESTS)

bench: install
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[peers]"
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/speed_jax.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) build *.egg-info .pytest_cache .ruff_cache

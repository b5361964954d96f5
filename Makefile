# Two entry points for a fresh machine (see README.md):
#   make demo   -> creates .venv, installs the package with its example dependencies, runs examples/quickstart.py
#   make test   -> creates .venv, installs the package with its test dependencies, runs ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints-cpu.txt

.PHONY: venv install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)

install: $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[pyro,numpyro,arviz,examples,test]"

demo: install
	$(PY) examples/quickstart.py

lint: install
	$(VENV)/bin/ruff check pyroflows numpyroflows tests examples benchmarks

test: install lint
	$(PY) -m pytest -q -n 2 --durations=15

bench: install
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[peers]"
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/speed_jax.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

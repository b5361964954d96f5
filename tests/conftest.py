import os
import sys

# XLA runs at its default optimization level. Level 0 compiled the JAX tests' tiny programs faster (the numpyroflows
# catalogue in 4.5 instead of 6.7 minutes on 2 cores), but it is a configuration few run: jaxlib 0.12.1 miscompiled a
# jitted spline-IAF encoder there (0.68 nats off) and jaxlib 0.10.2 crashed a test worker in XLA compilation in two of
# four full runs, never at the default level.
import pytest

try:  # the second CI cell runs the numpyroflows and diagnostics tests without torch
    import torch
except ImportError:
    torch = None

sys.path.insert(0, os.path.dirname(__file__))

if torch is not None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from torch seed 0 and, where Pyro is loaded, an empty param store (as a user's session does:
    a guide named like one an earlier test trained would otherwise adopt that test's parameters)."""
    if torch is not None:
        torch.manual_seed(0)
    if "pyro" in sys.modules:
        sys.modules["pyro"].clear_param_store()
    yield


@pytest.fixture
def fresh_param_store():
    """An empty Pyro parameter store and a fixed Pyro seed for the test, emptied again afterwards (for the modules
    that train Pyro guides: ``pytestmark = pytest.mark.usefixtures("fresh_param_store")``)."""
    import pyro

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()

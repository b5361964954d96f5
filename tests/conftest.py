import os
import sys

# The JAX tests spend most of their time compiling tiny programs. XLA's CPU backend without LLVM optimization compiles
# them faster, and the tests' arrays are too small for slower code to matter: the numpyroflows catalogue tests took
# 4.5 instead of 6.7 minutes on 2 cores. Set before JAX is first imported; a level the caller chose is left alone, and
# PYROFLOWS_TEST_XLA_DEFAULT=1 keeps XLA's default: jaxlib 0.12.1 miscompiles at level 0 (a jitted spline IAF
# encoder's sample_and_log_prob is 0.68 nats off, right in eager mode and at the default level), so `make test-latest`
# runs the newest releases at the default level.
if ("xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")
        and os.environ.get("PYROFLOWS_TEST_XLA_DEFAULT") != "1"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest  # noqa: E402

try:  # the second CI cell runs the numpyroflows and diagnostics tests without torch
    import torch
except ImportError:
    torch = None

sys.path.insert(0, os.path.dirname(__file__))

if torch is not None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    if torch is not None:
        torch.manual_seed(0)
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

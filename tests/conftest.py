import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
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

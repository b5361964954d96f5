"""Edge inputs to pyroflows' transforms and flows: integer and bool inputs are computed in the flow's dtype (no loss),
float64 data for a float32 flow is refused with both fixes named (as ``torch.nn.Linear`` refuses it, but naming
``flow.double()``), and an empty batch is a batch. The JAX twin is ``tests/test_numpyroflows/test_inputs.py``."""

from __future__ import annotations

import pytest
import torch

from pyroflows import flows
from pyroflows import transforms as T

X = torch.tensor([[1, 2, 0], [0, -1, 3]])
RECIPES = {
    "IAF": lambda: flows.IAF(3, num_transforms=2, hidden_dims=(8,)),  # log_prob and T.inv are the slow direction
    "MAF": lambda: flows.MAF(3, num_transforms=2, hidden_dims=(8,)),  # sampling (T(z)) is
    "NSF": lambda: flows.NSF(3, num_transforms=2, hidden_dims=(8,), count_bins=4),
    "BNAF": lambda: flows.BNAF(3, num_transforms=1, hidden_factor=2),
}


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.float16])
def test_lossless_dtypes_are_computed_in_the_flows_dtype(name, dtype):
    flow = RECIPES[name]()
    x = X.to(dtype)
    exact = x.to(torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(flow().log_prob(x), flow().log_prob(exact))
        t = flow.transform()
        for fn in (t, t.inv):
            torch.testing.assert_close(fn(x), fn(exact))
        layer = flow.transforms[0]
        torch.testing.assert_close(layer(x), layer(exact))


def test_float64_data_for_a_float32_flow_names_both_fixes():
    flow = RECIPES["MAF"]()
    for call in (lambda v: flow().log_prob(v), lambda v: flow.transform()(v), lambda v: flow.transform().inv(v),
                 lambda v: flow.transforms[0].inv(v)):
        with pytest.raises(TypeError, match=r"flow.double\(\).*\.float\(\)"):
            call(X.double())


def test_parameter_free_stacks_take_integers_in_the_default_dtype():
    perm = flows.Flow([T.ReversePermutation(3)])
    out = perm.transform()(X)
    assert out.dtype == torch.get_default_dtype() and torch.equal(out, X.flip(-1).to(out.dtype))


@pytest.mark.parametrize("name", list(RECIPES))
def test_an_empty_batch_is_a_batch(name):
    flow = RECIPES[name]()
    empty = torch.zeros(0, 3)
    with torch.no_grad():
        assert flow().log_prob(empty).shape == (0,)
        assert flow.transform()(empty).shape == (0, 3) and flow.transform().inv(empty).shape == (0, 3)

"""pyroflows objects inside Pyro's own machinery: ``pyro.nn.module.to_pyro_module_`` (Bayesian flows with
``PyroSample`` priors on their parameters) and Pyro's ``ConditionalTransformedDistribution``."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.conditional import ConditionalTransform, ConditionalTransformedDistribution
from pyro.nn.module import PyroSample, to_pyro_module_

from pyroflows import flows
from pyroflows import transforms as T
from pyroflows.flows.core import RECIPES

X, C = torch.randn(4, 3), torch.randn(4, 2)


def _output(module) -> torch.Tensor:
    if isinstance(module, flows.Flow):
        return module(C).log_prob(X)
    return module.condition(C)(X) if module.context_dim else module(X)


@pytest.mark.parametrize("make", [lambda: T.Householder(3, context_dim=2), lambda: T.LULinear(3),
                                  lambda: flows.MAF(3, context_dim=2, num_transforms=2, hidden_dims=(8,))],
                         ids=["Householder", "LULinear", "MAF"])
def test_to_pyro_module_converts_in_place_and_keeps_the_map(make):
    """It raised 'metaclass conflict' (Pyro's ConditionalTransform is an ABC); the registries stay clean."""
    module = make()
    before, name = _output(module), type(module).__name__
    to_pyro_module_(module)
    assert isinstance(module, pyro.nn.PyroModule) and type(module).__name__ == "Pyro" + name
    torch.testing.assert_close(_output(module), before)
    assert not any(k.startswith("Pyro") or k == "result" for k in [*T.TRANSFORMS, *RECIPES])


def test_a_pyro_sample_prior_on_a_flow_parameter_is_drawn_in_the_model():
    layer = T.LULinear(2)
    to_pyro_module_(layer)
    layer.head.shift = PyroSample(dist.Normal(torch.zeros(2), 1.0).to_event(1))
    tr = pyro.poutine.trace(lambda: layer(torch.zeros(1, 2))).get_trace()
    assert tr.nodes["head.shift"]["type"] == "sample"
    assert "head.shift" not in dict(layer.named_parameters())


def test_conditional_transforms_are_pyro_conditional_transforms():
    t = T.Householder(3, context_dim=2)
    assert isinstance(t, ConditionalTransform)
    d = ConditionalTransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [t])
    x = d.condition(torch.randn(2)).sample((5,))
    assert d.condition(torch.randn(2)).log_prob(x).shape == (5,)

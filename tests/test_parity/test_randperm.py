"""``randperm=True`` on the autoregressive recipes (MAF, IAF, NSF), in both packages: a random variable order for
every layer after the first, instead of the order reversed between layers.

The orders themselves (the first layer ascending, then permutations from ``numpy.random.default_rng(i)``, the same in
both packages, so exported parameters mean the same flow), the default unchanged, and the orders restored by saving
and loading. The flows' properties (inverses, log-determinants against autodiff Jacobians, gradients) and the
parity between the packages run in the catalogue and parity tests (``"MAF-randperm"``, ``"NSF-randperm"``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
from catalogue import perturb  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402


def _orders(flow) -> list[tuple[int, ...]]:
    """Each layer's dimensions, first to last in its autoregressive order."""
    if isinstance(flow, torch.nn.Module):
        return [tuple(int(i) for i in t.made.sequence) for t in flow.transforms]
    from numpyroflows.nn.made import made_sequence

    return [tuple(made_sequence(t.input_dim, t.order)) for t in flow.transforms]


@pytest.mark.parametrize("recipe", ["MAF", "IAF", "NSF"])
def test_orders_are_seeded_permutations_and_the_same_in_both_packages(recipe):
    d = 6
    t_orders = _orders(getattr(pyroflows.flows, recipe)(d, num_transforms=4, hidden_dims=(8,), randperm=True))
    j_orders = _orders(getattr(numpyroflows.flows, recipe)(d, num_transforms=4, hidden_dims=(8,), randperm=True))
    assert t_orders == j_orders
    assert t_orders[0] == tuple(range(d))
    for i, order in enumerate(t_orders[1:], start=1):
        assert sorted(order) == list(range(d)) and order == tuple(np.random.default_rng(i).permutation(d).tolist())
    assert len(set(t_orders[1:])) == 3  # a different order in every layer
    default = _orders(getattr(pyroflows.flows, recipe)(d, num_transforms=4, hidden_dims=(8,)))
    assert default == [tuple(range(d)), tuple(range(d))[::-1]] * 2


def test_saved_flows_keep_their_orders(tmp_path):
    flow = pyroflows.flows.MAF(5, num_transforms=3, hidden_dims=(8,), randperm=True)
    perturb(flow)
    pyroflows.save(flow, tmp_path / "f.pt")
    back = pyroflows.load(tmp_path / "f.pt")
    assert _orders(back) == _orders(flow)
    x = torch.randn(7, 5)
    with torch.no_grad():
        torch.testing.assert_close(back().log_prob(x), flow().log_prob(x))

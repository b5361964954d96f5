"""Which way each layer runs its transformer: MAF, coupling and elementwise layers evaluate ``τ`` forward from data to
noise (so an affine density pass is ``z = shift + exp(s)·y``, linear on the data side, and a spline's density pass is
its direct rational formula); IAF layers evaluate ``τ`` forward from noise to data. Checked against the formulas
written out for pyroflows; the parity tests (tests/test_parity/) hold numpyroflows to the same values."""

from __future__ import annotations

import pytest
import torch

from pyroflows.functional import spline as F_rqs
from pyroflows.nn.mlp import params_view
from pyroflows.transforms import AutoregressiveTransform, CouplingTransform, ElementwiseTransform


def _log_scale(r):
    return 5.0 * r / (5.0 + r.abs())


def _perturb(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _affine(v, theta):
    return theta[..., 0] + torch.exp(_log_scale(theta[..., 1])) * v, _log_scale(theta[..., 1])


@pytest.mark.parametrize("orientation", ["maf", "iaf"])
def test_autoregressive_affine_is_linear_on_its_fast_side(orientation):
    t = AutoregressiveTransform(3, "affine", hidden_dims=(8,), orientation=orientation).double()
    _perturb(t)
    v = torch.randn(5, 3, dtype=torch.float64)
    expected, ls = _affine(v, t.made(v))
    # MAF's density pass: noise z = shift(y) + exp(s(y))·y; IAF's sampling pass: data y = shift(x) + exp(s(x))·x;
    # either way the log-determinant of the pass is Σ s
    out, ladj = t.inverse_and_log_det(v) if orientation == "maf" else t.forward_and_log_det(v)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ladj, ls.sum(-1))
    # and the other direction inverts it, with the opposite log-determinant
    back, ladj_back = t.forward_and_log_det(out) if orientation == "maf" else t.inverse_and_log_det(out)
    torch.testing.assert_close(back, v)
    torch.testing.assert_close(ladj_back, -ladj)


def test_coupling_and_elementwise_affine_are_linear_on_the_data_side():
    c = CouplingTransform(4, "affine", hidden_dims=(8,), mask="half").double()
    _perturb(c)
    y = torch.randn(5, 4, dtype=torch.float64)
    z, ladj = c.inverse_and_log_det(y)
    theta = params_view(c.net(y[..., :2]), 2, 2)
    zb, ls = _affine(y[..., 2:], theta)
    torch.testing.assert_close(z, torch.cat([y[..., :2], zb], -1))
    torch.testing.assert_close(ladj, ls.sum(-1))

    e = ElementwiseTransform(3, "affine").double()
    _perturb(e)
    z, ladj = e.inverse_and_log_det(y[..., :3])
    expected, ls = _affine(y[..., :3], e.head(None)["params"])
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(ladj, ls.sum(-1).expand(5))


@pytest.mark.parametrize("orientation", ["maf", "iaf"])
def test_spline_fast_pass_is_the_direct_rational_formula(orientation):
    t = AutoregressiveTransform(3, "spline", hidden_dims=(8,), orientation=orientation, count_bins=4,
                                bound=3.0).double()
    _perturb(t)
    v = torch.randn(5, 3, dtype=torch.float64)
    expected, ld = F_rqs.rqs_forward_reference(v, t.made(v), 3.0)
    out, ladj = t.inverse_and_log_det(v) if orientation == "maf" else t.forward_and_log_det(v)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ladj, ld.sum(-1))

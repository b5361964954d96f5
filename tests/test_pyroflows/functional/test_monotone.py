"""Tests for the monotone B-spline ("bspline") and monotone mixture ("mixture") transformers."""

from __future__ import annotations

import pytest
import torch

from pyroflows.functional import bspline as F_bs
from pyroflows.functional import mixture as F_mix
from pyroflows.transforms.elementwise import ElementwiseTransform
from pyroflows.transforms.transformers import MonotoneBSpline, MonotoneMixture, make_transformer

BOUND = 5.0
TRANSFORMERS = [
    pytest.param(MonotoneBSpline(8, BOUND), id="bspline"),
    pytest.param(MonotoneBSpline(3, 2.0), id="bspline-3"),
    pytest.param(MonotoneBSpline(1, 1.0), id="bspline-1"),
    pytest.param(MonotoneMixture(8), id="mixture"),
    pytest.param(MonotoneMixture(1), id="mixture-1"),
]


def _points(dtype=torch.float64) -> torch.Tensor:
    """Inside, at the knots/bounds, just outside and far outside (±1e3·bound)."""
    far = 1e3 * BOUND
    pts = [torch.linspace(-1.5 * BOUND, 1.5 * BOUND, 301, dtype=torch.float64)]
    pts.append(torch.linspace(-BOUND, BOUND, 9, dtype=torch.float64))  # the knots for count_bins = 8
    pts.append(torch.tensor([-far, -far / 7, -BOUND - 1e-9, BOUND + 1e-9, far / 3, far], dtype=torch.float64))
    return torch.cat(pts).to(dtype)


def _raw(t, n: int, scale: float = 1.5, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, t.num_params, generator=g, dtype=torch.float64)).to(dtype)


def test_num_params_and_registry():
    assert MonotoneBSpline(8, 5.0).num_params == 10
    assert MonotoneMixture(8).num_params == 25
    t = make_transformer({"name": "bspline", "count_bins": 4, "bound": 3.0})
    assert isinstance(t, MonotoneBSpline) and t.kwargs() == {"count_bins": 4, "bound": 3.0}
    m = make_transformer("mixture", count_bins=5, bound=3.0)  # bound is ignored by the mixture
    assert isinstance(m, MonotoneMixture) and m.kwargs() == {"count_bins": 5}
    assert make_transformer(m.spec()) == m
    assert torch.equal(t.identity_params(), torch.zeros(6))
    with pytest.raises(ValueError):
        MonotoneBSpline(0)
    with pytest.raises(ValueError):
        MonotoneBSpline(4, -1.0)
    with pytest.raises(ValueError):
        MonotoneMixture(0)


@pytest.mark.parametrize("t", TRANSFORMERS)
def test_round_trip_float64(t):
    x = _points()
    p = _raw(t, x.numel())
    y, ld = t.forward(x, p)
    x2, ild = t.inverse(y, p)
    assert (x2 - x).abs().max() < 1e-9
    assert (ld + ild).abs().max() < 1e-9
    # fresh data through the inverse first
    y = _points() * 1.3 + 0.1
    x3, _ = t.inverse(y, p)
    y3, _ = t.forward(x3, p)
    assert ((y3 - y).abs() / (1 + y.abs())).max() < 1e-10


@pytest.mark.parametrize("t", TRANSFORMERS)
def test_round_trip_float32(t):
    x = _points(torch.float32)
    p = _raw(t, x.numel(), dtype=torch.float32)
    y, ld = t.forward(x, p)
    x2, ild = t.inverse(y, p)
    assert y.dtype == x2.dtype == ld.dtype == torch.float32
    assert ((x2 - x).abs() / (1 + x.abs())).max() < 1e-4
    assert (ld + ild).abs().max() < 1e-4


@pytest.mark.parametrize("t", TRANSFORMERS)
def test_log_derivative_matches_autograd(t):
    x = _points().requires_grad_()
    p = _raw(t, x.numel(), seed=1)
    y, ld = t.forward(x, p)
    (dy,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(ld, dy.log(), atol=1e-6, rtol=0)
    yy = y.detach().requires_grad_()
    x2, ild = t.inverse(yy, p)
    (dx,) = torch.autograd.grad(x2.sum(), yy)
    assert torch.allclose(ild, dx.log(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", TRANSFORMERS)
def test_strictly_increasing_on_random_params(t):
    x = torch.linspace(-3 * BOUND, 3 * BOUND, 4001, dtype=torch.float64)
    for seed in range(5):
        p = _raw(t, 1, scale=3.0, seed=seed)[0]  # one map, many points
        y, ld = t.forward(x, p)
        assert (y[1:] > y[:-1]).all()
        assert torch.isfinite(ld).all()


@pytest.mark.parametrize("t", TRANSFORMERS)
def test_gradients_finite_far_outside(t):
    far = 1e3 * BOUND
    x = torch.tensor([-far, -far / 2, far / 2, far], dtype=torch.float64, requires_grad=True)
    p = _raw(t, 4, scale=3.0, seed=2).requires_grad_()
    y, ld = t.forward(x, p)
    gx, gp = torch.autograd.grad((y + ld).sum(), (x, p))
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    assert torch.isfinite(gx).all() and torch.isfinite(gp).all()
    yy = y.detach().requires_grad_()
    x2, ild = t.inverse(yy, p)
    gy, gp = torch.autograd.grad((x2 + ild).sum(), (yy, p))
    assert torch.isfinite(x2).all() and torch.isfinite(gy).all() and torch.isfinite(gp).all()


@pytest.mark.parametrize("t", TRANSFORMERS)
def test_gradients_reach_every_parameter(t):
    x = torch.linspace(-BOUND, BOUND, 200, dtype=torch.float64)
    for p in (_raw(t, 1, seed=3)[0], t.identity_params().double()):
        p = p.clone().requires_grad_()
        y, ld = t.forward(x, p)
        (g,) = torch.autograd.grad((y * torch.cos(x) + ld).sum(), p)
        assert (g.abs() > 0).all(), g


@pytest.mark.parametrize("t", TRANSFORMERS)
def test_inverse_parameter_gradients(t):
    """Implicit-function gradients of the (numerical or closed-form) inverse, vs finite differences."""
    y = torch.tensor([-7.0, -1.0, 0.3, 2.0, 40.0], dtype=torch.float64)
    p = _raw(t, 5, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: t.inverse(y, q), (p,), eps=1e-6, atol=1e-5)


def test_identity_at_raw_zeros():
    x = _points()
    t = MonotoneBSpline(8, BOUND)
    y, ld = t.forward(x, t.identity_params().double())
    assert torch.allclose(y, x, atol=1e-12, rtol=1e-14) and ld.abs().max() < 1e-12
    m = MonotoneMixture(8)
    y, ld = m.forward(x, m.identity_params().double())
    assert ((y - x) >= 0).all() and ((y - x) <= 0.1 + 1e-12).all()
    assert (ld >= 0).all() and (ld < 0.03).all()


def test_bspline_is_c1_and_tangent_tails():
    t = MonotoneBSpline(4, 2.0)
    p = _raw(t, 1, scale=2.0, seed=5)[0]
    h = 1e-7
    for knot in torch.linspace(-2.0, 2.0, 5, dtype=torch.float64):
        xs = torch.stack([knot - h, knot, knot + h])
        y, ld = t.forward(xs, p)
        assert (y[2] - y[0]).abs() < 1e-5  # continuous
        assert (ld[2] - ld[0]).abs() < 1e-5  # derivative continuous
    # linear beyond the bound: constant slope
    _, ld = t.forward(torch.tensor([2.5, 30.0, 3e3], dtype=torch.float64), p)
    assert torch.allclose(ld, ld[:1].expand(3))


def test_bspline_coefficients_increasing_and_knot_values():
    p = torch.randn(6, 12, dtype=torch.float64) * 3
    c = F_bs.bspline_coefficients(p, 4.0)
    assert (c[..., 1:] > c[..., :-1]).all()
    v, s = F_bs.bspline_knots(p, 4.0)
    knots = torch.linspace(-4.0, 4.0, 11, dtype=torch.float64)
    y, ld = F_bs.bspline_forward(knots.expand(6, 11), p.unsqueeze(-2), 4.0)
    assert torch.allclose(y, v) and torch.allclose(ld, s.log())


def test_mixture_matches_formula():
    k = 3
    p = torch.randn(k * 3 + 1, dtype=torch.float64)
    a, w, b, s = F_mix.mixture_params(p)
    assert a > 0 and (w >= 0).all() and (s > 0).all()
    x = torch.linspace(-4, 4, 17, dtype=torch.float64)
    ref = a * x + (w * torch.sigmoid((x[:, None] - b) / s)).sum(-1)
    y, _ = MonotoneMixture(k).forward(x, p)
    assert torch.allclose(y, ref)


@pytest.mark.parametrize("t", TRANSFORMERS)
def test_params_broadcast(t):
    """Per-dimension params (D, P) against a batch (N, D), and batch params against one x."""
    x = torch.randn(7, 3, dtype=torch.float64) * 4
    p = _raw(t, 3, seed=6)
    y, ld = t.forward(x, p)
    assert y.shape == ld.shape == (7, 3)
    x2, ild = t.inverse(y, p)
    assert (x2 - x).abs().max() < 1e-9 and ild.shape == (7, 3)
    y1, _ = t.forward(x[:1], p.expand(7, 3, -1))
    assert y1.shape == (7, 3)


@pytest.mark.parametrize("name", ["bspline", "mixture"])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_elementwise_integration(name, context_dim):
    torch.manual_seed(0)
    flow = ElementwiseTransform(3, name, context_dim=context_dim, hidden_dims=(16,), count_bins=6).double()
    with torch.no_grad():
        for prm in flow.parameters():
            prm.add_(0.5 * torch.randn_like(prm))
    x = torch.randn(11, 3, dtype=torch.float64) * 3
    x[0] = torch.tensor([5e3, -5e3, 0.0])
    ctx = torch.randn(11, context_dim, dtype=torch.float64) if context_dim else None
    y, ld = flow.forward_and_log_det(x, ctx)
    x2, ild = flow.inverse_and_log_det(y, ctx)
    assert ld.shape == (11,)
    assert (x2 - x).abs().max() < 1e-9 and (ld + ild).abs().max() < 1e-9
    c0 = ctx[1:2] if ctx is not None else None
    jac = torch.autograd.functional.jacobian(lambda v: flow.forward_and_log_det(v, c0)[0], x[1:2])
    assert torch.allclose(torch.linalg.slogdet(jac.reshape(3, 3))[1], ld[1], atol=1e-6)
    if context_dim:
        y_other, _ = flow.forward_and_log_det(x, ctx + 1.0)
        assert (y_other - y).abs().max() > 1e-6

"""Fused spline kernel vs its autograd reference and finite differences; affine kernels vs finite differences."""

from __future__ import annotations

import functools

import pytest
import torch

from pyroflows.functional import spline as S


def _inputs(n: int = 40, k: int = 6, bound: float = 3.0, seed: int = 0, param_batch: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.5
    x[:4] *= 30  # far outside the bound
    x[4] = bound  # exactly on the bound
    x[5] = -bound
    shape = (n, 3, 3 * k - 1) if param_batch else (3, 3 * k - 1)
    p = torch.randn(*shape, generator=g, dtype=torch.float64) * 1.5
    return x, p


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("param_batch", [True, False])
def test_fused_matches_reference_values_and_gradients(direction, param_batch):
    x, p = _inputs(param_batch=param_batch)
    # parameters shared across the batch take the reference path in rqs_forward / rqs_inverse (knots once, gathered);
    # the kernel itself (which expands them) is checked directly
    assert S._shared(x, p) == (not param_batch)
    fused = functools.partial(S._fused, inverse=direction == "inverse")
    ref = S.rqs_forward_reference if direction == "forward" else S.rqs_inverse_reference
    xa, pa = x.clone().requires_grad_(), p.clone().requires_grad_()
    xb, pb = x.clone().requires_grad_(), p.clone().requires_grad_()
    out_a, l_a = fused(xa, pa, 3.0)
    out_b, l_b = ref(xb, pb, 3.0)
    torch.testing.assert_close(out_a, out_b, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(l_a, l_b, atol=1e-12, rtol=1e-12)
    # gradients: rows 4-5 sit exactly on the bound, where the reference's clamp of ξ (a rounding hair above 1) zeroes
    # the input gradient while the fused kernel returns the one-sided derivative; move them inside for this part
    x[4:6] = 0.7
    xa, pa = x.clone().requires_grad_(), p.clone().requires_grad_()
    xb, pb = x.clone().requires_grad_(), p.clone().requires_grad_()
    out_a, l_a = fused(xa, pa, 3.0)
    out_b, l_b = ref(xb, pb, 3.0)
    g = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(out_a.shape, generator=g, dtype=x.dtype), torch.randn(l_a.shape, generator=g, dtype=x.dtype)
    ((out_a * w1).sum() + (l_a * w2).sum()).backward()
    ((out_b * w1).sum() + (l_b * w2).sum()).backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(pa.grad, pb.grad, atol=1e-9, rtol=1e-9)
    assert torch.isfinite(xa.grad).all() and torch.isfinite(pa.grad).all()


@pytest.mark.parametrize("fn", [S.rqs_forward, S.rqs_inverse])
def test_fused_gradcheck(fn):
    x, p = _inputs(n=8, k=4)
    x[:4] /= 30
    x[4:6] = 0.5  # finite differences must not straddle the kink of the log-derivative at the bound
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, 3.0), (x.requires_grad_(), p.requires_grad_()))


def test_shared_parameters_take_the_reference_path():
    """An elementwise layer's parameters (one set per dimension) give the same values and gradients by either path
    (the shared one computes the knots once), and rqs_forward / rqs_inverse route them there."""
    x, p = _inputs(n=64, param_batch=False)
    x[4:6] = 0.7  # off the bound (see above)
    full = p.expand(x.shape + p.shape[-1:])
    assert S._shared(x, p) and not S._shared(x, full)
    for fn in (S.rqs_forward, S.rqs_inverse):
        pa, pb = p.clone().requires_grad_(), p.clone().requires_grad_()
        out_a, l_a = fn(x, pa, 3.0)
        out_b, l_b = fn(x, pb.expand_as(full), 3.0)
        torch.testing.assert_close(out_a, out_b, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(l_a, l_b, atol=1e-12, rtol=1e-12)
        (out_a.sum() + l_a.square().sum()).backward()
        (out_b.sum() + l_b.square().sum()).backward()
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-10, rtol=1e-10)


def test_reference_supports_second_derivatives_in_the_input():
    x, p = _inputs(n=6)
    try:
        S.use_fused_kernel(False)
        xr = x.clone().requires_grad_()
        y, _ = S.rqs_forward(xr, p, 3.0)
        (g,) = torch.autograd.grad(y.sum(), xr, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), xr)
        assert torch.isfinite(h).all()
    finally:
        S.use_fused_kernel(True)


def test_identity_at_zero_params_and_inverse_round_trip():
    x = torch.linspace(-10, 10, 101, dtype=torch.float64)
    y, ladj = S.rqs_forward(x, torch.zeros(101, 3 * 8 - 1, dtype=torch.float64), 5.0)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(x), atol=1e-12, rtol=0)
    _, p = _inputs(n=101, k=8)
    y, ladj = S.rqs_forward(x[:, None].expand(101, 3), p, 5.0)
    x2, ladj2 = S.rqs_inverse(y, p, 5.0)
    torch.testing.assert_close(x2, x[:, None].expand(101, 3), atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj2, ladj, atol=1e-9, rtol=0)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("param_batch", [True, False])
def test_affine_gradcheck_and_closed_form(inverse, param_batch):
    from pyroflows.functional import affine as A

    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64) * 3
    p = torch.randn(*((7, 3, 2) if param_batch else (3, 2)), generator=g, dtype=torch.float64)
    fn = A.affine_inverse if inverse else A.affine_forward
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b), (x.requires_grad_(), p.requires_grad_()))
    # against the closed form
    out, ladj = fn(x, p)
    r = p[..., 1]
    log_scale = 5 * r / (5 + r.abs())  # the soft clamp into (-5, 5), written out
    expected = (x - p[..., 0]) * torch.exp(-log_scale) if inverse else p[..., 0] + torch.exp(log_scale) * x
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ladj, log_scale.expand_as(out))
    assert float(A.affine_log_scale(torch.tensor(1e6, dtype=torch.float64))) == pytest.approx(5.0, abs=1e-4)

"""One parametrized suite over the whole catalogue: shapes, exact inverses, log-determinants, normalisation,
gradients, context, save/load, errors."""

from __future__ import annotations

import math

import pytest
import torch
from catalogue import CATALOGUE, CONDITIONAL, NAMES, build, context_dims, grid_2d, to_support

import pyroflows
from pyroflows import flows

#: every (entry, context_dim) pair the catalogue supports: context_dim 2 only for entries that take a context
WITH_CONTEXT = [(n, c) for n in NAMES for c in context_dims(n)]


def _ctx(c: int, *batch: int, dtype=torch.float64) -> torch.Tensor | None:
    return torch.randn(*batch, c, dtype=dtype) if c else None


def _data(name: str, *shape: int, dtype=torch.float64) -> torch.Tensor:
    """Data-side points (standard normal, mapped into the entry's support)."""
    return to_support(name, torch.randn(*shape, dtype=dtype))


# ------------------------------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("name", NAMES)
def test_takes_context_is_what_the_flow_does(name):
    flow = build(name, 3, 2)  # (test_context_changes_the_output checks that the context is used)
    assert flow.context_dim == (2 if CATALOGUE[name].takes_context else 0)
    if not CATALOGUE[name].takes_context:
        with pytest.raises(ValueError, match="context_dim=0"):
            flow(torch.ones(2))


# ------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name,context_dim", WITH_CONTEXT)
def test_shapes(name, context_dim):
    flow = build(name, 3, context_dim)
    for batch in [(), (4,), (2, 3)]:
        ctx = _ctx(context_dim, *batch)
        d = flow(ctx) if context_dim else flow().expand(batch)
        assert d.batch_shape == torch.Size(batch) and d.event_shape == torch.Size([3])
        x = d.sample((5,))
        assert x.shape == (5, *batch, 3)
        lp = d.log_prob(x)
        assert lp.shape == (5, *batch) and torch.isfinite(lp).all()
        xs, lps = d.rsample_and_log_prob((2,))
        assert xs.shape == (2, *batch, 3) and lps.shape == (2, *batch)
        torch.testing.assert_close(lps, d.log_prob(xs), atol=1e-8, rtol=1e-8)


# ------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name,context_dim", WITH_CONTEXT)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_round_trip_both_ways(name, dtype, tol, context_dim):
    # float32: realistic (moderately perturbed) parameters; float64: harsh ones. At scale 0.3 the deep random nets
    # reach condition numbers ~1e5, which float64 absorbs (errors ~1e-11) and float32 cannot.
    flow = build(name, 3, context_dim, dtype=dtype, scale=0.1 if dtype == torch.float32 else 0.3)
    T = flow.transform(_ctx(context_dim, 64, dtype=dtype))
    # far outside the spline bounds (3.0): ~10x in float32 (deep random nets amplify rounding), ~50x in float64; not
    # on the base side of a flow onto a bounded support, whose squashing layer saturates there (to_support keeps the
    # data side strictly inside)
    far = 5.0 if dtype == torch.float32 else 20.0
    x = torch.randn(64, 3, dtype=dtype) * 2
    x[:8] *= 1.0 if CATALOGUE[name].support else far
    y = T(x)
    torch.testing.assert_close(T.inv(y), x, atol=tol * 10, rtol=tol)
    # fresh data-side points, never produced by the forward pass (no cache can help)
    u = torch.randn(64, 3, dtype=dtype) * 2
    u[:8] *= far
    y_fresh = to_support(name, u)
    torch.testing.assert_close(T(T.inv(y_fresh)), y_fresh, atol=tol * 10, rtol=tol)


# ------------------------------------------------------------------------------------------------- log-determinants
@pytest.mark.parametrize("name,context_dim", WITH_CONTEXT)
def test_log_det_matches_autograd_jacobian(name, context_dim):
    flow = build(name, 3, context_dim)
    ctx = _ctx(context_dim)
    T = flow.transform(ctx)
    for i in range(3):
        x = torch.randn(3, dtype=torch.float64) * (1 + 2 * i)
        y, ladj = T.forward_and_log_det(x)
        jac = torch.autograd.functional.jacobian(lambda v: T(v), x)
        assert abs(ladj.item() - torch.linalg.slogdet(jac)[1].item()) < 1e-6
        xi, ladj_inv = T.inverse_and_log_det(y)
        jac_inv = torch.autograd.functional.jacobian(lambda v: T.inv(v), y)
        assert abs(ladj_inv.item() - torch.linalg.slogdet(jac_inv)[1].item()) < 1e-6
        assert abs(T.log_abs_det_jacobian(x, y).item() - ladj.item()) < 1e-9


# ------------------------------------------------------------------------------------------------- normalisation
def _integrate_2d(name: str, log_prob, n: int = 500) -> float:
    pts, w = (torch.as_tensor(a) for a in grid_2d(name, n))  # the support (all of R^2: y = 3 tan(u) per axis)
    with torch.no_grad():
        return (log_prob(pts).exp() * w).sum().item()


@pytest.mark.parametrize("name", NAMES)
def test_2d_density_integrates_to_one(name):
    flow = build(name, 2, 0, scale=0.15)
    assert abs(_integrate_2d(name, flow().log_prob) - 1.0) < 1e-2


@pytest.mark.parametrize("name", ["NSF", "MAF", "Planar", "BNAF", "Sigmoid-Tanh"])
def test_2d_conditional_density_integrates_to_one(name):
    flow = build(name, 2, 2, scale=0.15)
    assert abs(_integrate_2d(name, flow(torch.randn(2, dtype=torch.float64)).log_prob) - 1.0) < 1e-2


# ------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name,context_dim", WITH_CONTEXT)
def test_rsample_gradients_reach_every_parameter(name, context_dim):
    flow = build(name, 3, context_dim)
    x, lp = flow(_ctx(context_dim, 16)).rsample_and_log_prob((8,))
    (x.square().sum() + lp.sum()).backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"zero gradient for {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_gradients_reach_every_parameter(name):
    flow = build(name, 3, 0)
    flow().log_prob(_data(name, 16, 3)).sum().backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", CONDITIONAL)
def test_context_changes_the_output(name):
    flow = build(name, 3, 2)
    z = torch.randn(4, 3, dtype=torch.float64)
    c1, c2 = torch.randn(2, 2, dtype=torch.float64)
    y1, y2 = flow.transform(c1)(z), flow.transform(c2)(z)
    assert (y1 - y2).abs().max() > 1e-6
    x = to_support(name, z)
    lp1, lp2 = flow(c1).log_prob(x), flow(c2).log_prob(x)
    assert (lp1 - lp2).abs().max() > 1e-6


def test_context_changes_the_output_at_initialisation():
    flow = flows.NSF(3, 2, num_transforms=2, hidden_dims=(16, 16))
    z = torch.randn(4, 3)
    assert (flow.transform(torch.ones(2))(z) - flow.transform(-torch.ones(2))(z)).abs().max() > 1e-7


# ------------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    flow = build(name, 3, max(context_dims(name)))
    path = tmp_path / "flow.pt"
    pyroflows.save(flow, path)
    loaded = pyroflows.load(path)
    assert type(loaded) is type(flow)
    ctx = _ctx(flow.context_dim, 10)
    x = _data(name, 10, 3)
    torch.testing.assert_close(loaded(ctx).log_prob(x), flow(ctx).log_prob(x), atol=0, rtol=0)
    z = torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(loaded.transform(ctx)(z), flow.transform(ctx)(z), atol=0, rtol=0)


def test_load_never_unpickles_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "pyroflows", "config": "{}", "state": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        pyroflows.load(path)


def test_load_refuses_an_older_file_format(tmp_path):
    import json

    flow = flows.MAF(3, num_transforms=1, hidden_dims=(8,))
    path = tmp_path / "old.pt"
    state = {k: v.detach() for k, v in flow.state_dict().items()}
    torch.save({"format": "pyroflows", "version": 1, "config": json.dumps(flow.config()), "state": state}, path)
    with pytest.raises(ValueError, match="format version 1.*Refit the flow"):
        pyroflows.load(path)


# ------------------------------------------------------------------------------------------------- errors
def test_clear_errors():
    flow = flows.NSF(3, 2, num_transforms=1, hidden_dims=(8, 8))
    ctx = torch.randn(2)
    with pytest.raises(ValueError, match="input_dim=3"):
        flow(ctx).log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match="context_dim=2"):
        flow(torch.randn(5, 3))
    with pytest.raises(ValueError, match="needs a context"):
        flow()
    with pytest.raises(ValueError, match="NaN"):
        flow(ctx).log_prob(torch.tensor([[0.0, math.nan, 1.0]]))
    with pytest.raises(ValueError, match="needs a context"):
        flow.transforms[0](torch.randn(3))
    with pytest.raises(ValueError, match="context_dim=0"):
        flows.MAF(3, num_transforms=1)(torch.randn(2))
    with pytest.raises(ValueError, match="transformer"):
        flows.MAF(3, transformer="cubic")
    with pytest.raises(ValueError, match="input_dim >= 2"):
        flows.RealNVP(1)


def test_validation_can_be_disabled():
    flow = flows.MAF(2, num_transforms=1, hidden_dims=(8, 8))
    x = torch.tensor([[math.nan, 0.0]])
    try:
        pyroflows.set_validation(False)
        assert torch.isnan(flow().log_prob(x)).all()
    finally:
        pyroflows.set_validation(True)


# ------------------------------------------------------------------------------------------------- own-sample reuse
@pytest.mark.parametrize("name", ["IAF", "MAF", "Planar"])
def test_log_prob_of_own_sample_is_reused_once_and_exact(name):
    flow = build(name, 3, 0)
    d = flow()
    x = d.rsample((6,))
    inverse_calls = []
    for t in flow.transforms:
        orig = t._inverse_ld
        t._inverse_ld = lambda y, c, _orig=orig: (inverse_calls.append(1), _orig(y, c))[1]
    lp_reused = d.log_prob(x)  # the density from the sampling pass, no inverse
    assert not inverse_calls
    lp_fresh = d.log_prob(x)  # one-shot: the second call runs the exact inverse
    assert inverse_calls
    torch.testing.assert_close(lp_reused, lp_fresh, atol=1e-9, rtol=1e-9)
    # a modified (in place) or different tensor is never served from the sampling pass
    y = d.rsample((6,))
    inverse_calls.clear()
    d.log_prob(y.clone())
    assert inverse_calls
    z = d.sample((4,))
    z.add_(0.5)
    inverse_calls.clear()
    torch.testing.assert_close(d.log_prob(z), flow().log_prob(z.clone()), atol=1e-9, rtol=1e-9)
    assert inverse_calls


@pytest.mark.parametrize("name", ["NSF", "MAF-bspline", "Elementwise-spline", "Coupling-spline"])
def test_one_input_scored_under_a_batch_of_contexts(name):
    flow = build(name, 3, 2)
    x = torch.randn(3, dtype=torch.float64)
    ctx = torch.randn(5, 2, dtype=torch.float64)
    lp = flow(ctx).log_prob(x)
    assert lp.shape == (5,)
    torch.testing.assert_close(lp, torch.stack([flow(c).log_prob(x) for c in ctx]), atol=1e-10, rtol=1e-10)

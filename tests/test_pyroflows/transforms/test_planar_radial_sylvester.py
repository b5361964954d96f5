"""Planar, radial and Sylvester flows: exact inverses of fresh data, log-dets, constraints, gradients, context."""

from __future__ import annotations

import json

import pytest
import torch
from pyro.distributions.transforms import Planar, Radial

from pyroflows.functional.planar import planar_constrain, planar_forward, planar_inverse
from pyroflows.functional.radial import radial_alpha_beta, radial_forward, radial_inverse
from pyroflows.functional.sylvester import (
    householder_product,
    orthonormal_columns,
    sylvester_diag,
    sylvester_forward,
    sylvester_inverse,
    upper_triangular,
)
from pyroflows.transforms.base import from_config
from pyroflows.transforms.planar import PlanarTransform
from pyroflows.transforms.radial import RadialTransform
from pyroflows.transforms.sylvester import SylvesterTransform

D, C = 4, 3

FACTORIES = {
    "planar": lambda c: PlanarTransform(D, c, hidden_dims=(16,)),
    "radial": lambda c: RadialTransform(D, c, hidden_dims=(16,)),
    "sylvester_hh": lambda c: SylvesterTransform(D, c, hidden_dims=(16,)),
    "sylvester_hh2_m3": lambda c: SylvesterTransform(D, c, hidden_dims=(16,), num_ortho=3, num_householder=2),
    "sylvester_orth": lambda c: SylvesterTransform(D, c, hidden_dims=(16,), q_type="orthogonal"),
    "sylvester_orth_m2": lambda c: SylvesterTransform(D, c, hidden_dims=(16,), q_type="orthogonal", num_ortho=2),
}
CASES = [(name, c) for name in FACTORIES for c in (0, C)]
IDS = [f"{n}-ctx{c}" for n, c in CASES]


def make(name: str, context_dim: int, seed: int = 0, scale: float = 0.5, dtype=torch.float64):
    """A transform with randomly perturbed parameters (far from its initialisation)."""
    torch.manual_seed(seed)
    t = FACTORIES[name](context_dim).to(dtype)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(scale * torch.randn_like(p))
    return t


def ctx(t, shape=(), dtype=torch.float64, seed=1):
    if not t.context_dim:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape + (t.context_dim,), generator=g, dtype=dtype)


@pytest.mark.parametrize("name,c", CASES, ids=IDS)
def test_round_trip_fresh_float64(name, c):
    for seed in range(3):
        t = make(name, c, seed=seed)
        context = ctx(t, (6,), seed=seed)
        x = 2 * torch.randn(6, D, dtype=torch.float64)
        y, ld = t.forward_and_log_det(x, context)
        x_back, ild = t.inverse_and_log_det(y, context)
        assert (x_back - x).abs().max() < 1e-9
        assert (ld + ild).abs().max() < 1e-9
        # fresh data on the y side (never produced by forward): no cache can help
        y_new = 3 * torch.randn(5, 6, D, dtype=torch.float64)
        x_new, ild_new = t.inverse_and_log_det(y_new, context)
        y_again, ld_again = t.forward_and_log_det(x_new, context)
        assert (y_again - y_new).abs().max() < 1e-9
        assert (ld_again + ild_new).abs().max() < 1e-9


@pytest.mark.parametrize("name,c", CASES, ids=IDS)
def test_round_trip_float32(name, c):
    t = make(name, c, dtype=torch.float32)
    context = ctx(t, (20,), dtype=torch.float32)
    y = 2 * torch.randn(20, D)
    x, ild = t.inverse_and_log_det(y, context)
    y2, ld = t.forward_and_log_det(x, context)
    assert x.dtype == torch.float32 and ld.dtype == torch.float32
    assert (y2 - y).abs().max() < 1e-4
    assert (ld + ild).abs().max() < 1e-4


@pytest.mark.parametrize("name,c", CASES, ids=IDS)
def test_log_det_matches_autograd_jacobian(name, c):
    t = make(name, c, seed=3)
    context = ctx(t)
    for i in range(3):
        x = 1.5 * torch.randn(D, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: t.forward_and_log_det(v, context)[0], x)
        ld = t.forward_and_log_det(x, context)[1]
        assert abs(ld - torch.linalg.slogdet(jac)[1]) < 1e-6
        y = 1.5 * torch.randn(D, dtype=torch.float64)
        ijac = torch.autograd.functional.jacobian(lambda v: t.inverse_and_log_det(v, context)[0], y)
        ild = t.inverse_and_log_det(y, context)[1]
        assert abs(ild - torch.linalg.slogdet(ijac)[1]) < 1e-6, i


@pytest.mark.parametrize("name", list(FACTORIES))
def test_context_broadcasts_and_changes_output(name):
    t = make(name, C, scale=0.3)
    x = torch.randn(7, 5, D, dtype=torch.float64)
    context = torch.randn(5, C, dtype=torch.float64)
    y, ld = t.forward_and_log_det(x, context)
    assert y.shape == (7, 5, D) and ld.shape == (7, 5)
    y1, ld1 = t.forward_and_log_det(x[:, 2], context[2])
    assert torch.allclose(y[:, 2], y1, atol=1e-12) and torch.allclose(ld[:, 2], ld1, atol=1e-12)
    xi, ildi = t.inverse_and_log_det(x, context)
    assert xi.shape == (7, 5, D) and ildi.shape == (7, 5)
    assert torch.allclose(xi[:, 2], t.inverse_and_log_det(x[:, 2], context[2])[0], atol=1e-10)
    # a context batch shape that only broadcasts against the input's
    out = t.forward_and_log_det(x[0, :4], torch.randn(3, 1, C, dtype=torch.float64))[0]
    assert out.shape == (3, 4, D)
    # context changes the output, in both directions
    other = context + 1.0
    assert (t.forward_and_log_det(x, other)[0] - y).abs().max() > 1e-4
    assert (t.inverse_and_log_det(x, other)[0] - xi).abs().max() > 1e-4


@pytest.mark.parametrize("name,c", CASES, ids=IDS)
def test_far_inputs_finite(name, c):
    t = make(name, c)
    context = ctx(t, (8,))
    for sign in (1.0, -1.0):
        x = (sign * 1e3 * torch.randn(8, D, dtype=torch.float64)).requires_grad_()
        for fn in (t.forward_and_log_det, t.inverse_and_log_det):
            out, ld = fn(x, context)
            assert torch.isfinite(out).all() and torch.isfinite(ld).all()
            grads = torch.autograd.grad(out.sum() + ld.sum(), [x, *t.parameters()], allow_unused=True)
            assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name,c", CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, c):
    t = make(name, c)
    context = ctx(t, (8,))
    for fn in (t.forward_and_log_det, t.inverse_and_log_det):
        out, ld = fn(torch.randn(8, D, dtype=torch.float64), context)
        grads = torch.autograd.grad((out**2).sum() + ld.sum(), list(t.parameters()))
        for (pname, _), g in zip(t.named_parameters(), grads):
            assert torch.isfinite(g).all() and g.abs().sum() > 0, pname


def test_planar_constraint_holds_for_random_raw_params():
    torch.manual_seed(0)
    for scale in (0.01, 1.0, 10.0, 100.0):
        u = scale * torch.randn(500, D, dtype=torch.float64)
        w = scale * torch.randn(500, D, dtype=torch.float64)
        u_hat, wu_hat, one_plus = planar_constrain(u, w)
        assert ((w * u_hat).sum(-1) >= -1 - 1e-9).all()
        assert torch.allclose((w * u_hat).sum(-1), wu_hat, atol=1e-8 * scale**2)
        assert (wu_hat >= -1).all() and (one_plus >= 0).all()
    t = make("planar", C)
    context = 3 * torch.randn(50, C, dtype=torch.float64)
    u_hat, w = t.u_hat(context), t.head(context)["w"]
    assert u_hat.shape == (50, D) and ((w * u_hat).sum(-1) >= -1 - 1e-9).all()


def test_radial_constraint_holds_for_random_raw_params():
    torch.manual_seed(0)
    raw_a, raw_b = 10 * torch.randn(2, 1000, dtype=torch.float64)
    alpha, beta, s = radial_alpha_beta(raw_a, raw_b)
    assert (alpha > 0).all() and (beta >= -alpha).all() and torch.allclose(alpha + beta, s)


def test_sylvester_constraints_and_orthonormal_q():
    torch.manual_seed(0)
    p = sylvester_diag(5 * torch.randn(1000, dtype=torch.float64)) * sylvester_diag(5 * torch.randn(1000))
    assert (p > -1).all()
    v = torch.randn(3, 5, D, dtype=torch.float64)
    q = householder_product(v)
    explicit = torch.eye(D, dtype=torch.float64).expand(3, D, D)
    for k in range(5):
        vk = v[:, k]
        h = torch.eye(D, dtype=torch.float64) - 2 * vk[:, :, None] * vk[:, None, :] / (vk * vk).sum(-1)[:, None, None]
        explicit = explicit @ h
    assert torch.allclose(q, explicit, atol=1e-12)
    assert torch.allclose(q.mT @ q, torch.eye(D, dtype=torch.float64), atol=1e-12)
    a = torch.randn(3, D, 2, dtype=torch.float64)
    qo = orthonormal_columns(a)
    assert torch.allclose(qo.mT @ qo, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(qo @ (qo.mT @ a), a, atol=1e-12)  # same column span
    t = make("sylvester_hh", 0)
    _, r, rt, _ = t._params(None)
    assert torch.equal(r, torch.triu(r)) and torch.equal(rt, torch.triu(rt))
    assert (torch.diagonal(r) * torch.diagonal(rt) > -1).all()


def test_sylvester_complement_passes_unchanged():
    t = make("sylvester_orth_m2", 0)
    q = t._params(None)[0]
    x = torch.randn(10, D, dtype=torch.float64)
    y = t.forward_and_log_det(x)[0]
    proj = torch.eye(D, dtype=torch.float64) - q @ q.mT
    assert torch.allclose(y @ proj, x @ proj, atol=1e-12)


def test_inverse_gradients_match_finite_differences():
    torch.manual_seed(0)
    opts = dict(eps=1e-6, atol=1e-6, rtol=1e-5)
    y = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    pl = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: planar_inverse(*a), (y, *pl, b), **opts)
    x0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ra, rb = torch.tensor([0.2, -0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: radial_inverse(*a), (y, x0, ra, rb), **opts)
    idx = torch.triu_indices(3, 3, 1)
    idx = idx[0] * 3 + idx[1]

    def sylv(y, v, rd, ru, rtd, rtu, bb):
        q = householder_product(v)
        r = upper_triangular(sylvester_diag(rd), ru, idx)
        rt = upper_triangular(sylvester_diag(rtd), rtu, idx)
        return sylvester_inverse(y, q, r, rt, bb)

    args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in [(3, 3), (3,), (3,), (3,), (3,), (3,)]]
    assert torch.autograd.gradcheck(sylv, (y, *args), **opts)
    # the forward kernels too
    assert torch.autograd.gradcheck(lambda *a: planar_forward(*a), (y, *pl, b), **opts)
    assert torch.autograd.gradcheck(lambda *a: radial_forward(*a), (y, x0, ra, rb), **opts)
    qq = householder_product(args[0])
    rr = upper_triangular(sylvester_diag(args[1]), args[2], idx)
    assert torch.autograd.gradcheck(lambda *a: sylvester_forward(a[0], qq, rr, rr, a[1]), (y, args[-1]), **opts)
    q = orthonormal_columns(torch.randn(3, 2, dtype=torch.float64))
    r = torch.triu(torch.randn(2, 2, dtype=torch.float64)) * 0.5
    bb = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda yy, b2: sylvester_inverse(yy, q, r, 0.7 * r, b2), (y, bb), **opts)


def test_matches_pyro_forward():
    torch.manual_seed(0)
    pyro_planar = Planar(D).double()
    u, w, b = pyro_planar.u, pyro_planar.w, pyro_planar.bias
    x = torch.randn(10, D, dtype=torch.float64)
    y, ld = planar_forward(x, u, w, b[0])
    y_ref = pyro_planar(x)
    assert torch.allclose(y, y_ref, atol=1e-12)
    assert torch.allclose(ld, pyro_planar.log_abs_det_jacobian(x, y_ref), atol=1e-10)
    pyro_radial = Radial(D).double()
    y, ld = radial_forward(x, pyro_radial.x0, pyro_radial.alpha_prime[0], pyro_radial.beta_prime[0])
    y_ref = pyro_radial(x)
    assert torch.allclose(y, y_ref, atol=1e-12)
    assert torch.allclose(ld, pyro_radial.log_abs_det_jacobian(x, y_ref), atol=1e-10)


@pytest.mark.parametrize("name,c", CASES, ids=IDS)
def test_config_round_trip(name, c):
    t = FACTORIES[name](c)
    cfg = json.loads(json.dumps(t.config()))
    t2 = from_config(cfg)
    t2.load_state_dict(t.state_dict())
    x = torch.randn(5, D)
    context = ctx(t, (5,), dtype=torch.float32)
    assert torch.allclose(t.forward_and_log_det(x, context)[0], t2.forward_and_log_det(x, context)[0])


def test_sylvester_rejects_bad_arguments():
    with pytest.raises(ValueError):
        SylvesterTransform(3, q_type="cayley")
    with pytest.raises(ValueError):
        SylvesterTransform(3, num_ortho=4)
    with pytest.raises(ValueError):
        SylvesterTransform(3, q_type="orthogonal", num_householder=2)


def test_planar_starts_at_the_identity_and_trains_away_from_it():
    torch.manual_seed(0)
    t = PlanarTransform(5)
    x = torch.randn(50, 5)
    y, ladj = t.forward_and_log_det(x)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros(50), atol=1e-6, rtol=0)
    assert float(planar_constrain(t.head.u, t.head.w)[0].abs().max()) < 1e-6
    # u gets a gradient at the identity (w and b follow once û is non-zero)
    (t.forward_and_log_det(x)[0] ** 3).sum().backward()
    assert float(t.head.u.grad.abs().max()) > 1e-3
    amortized = PlanarTransform(5, context_dim=3, hidden_dims=())
    y, _ = amortized.forward_and_log_det(x, torch.randn(50, 3))
    assert float((y - x).abs().max()) < 0.05  # the context head's output weights are within ±1e-3 of zero

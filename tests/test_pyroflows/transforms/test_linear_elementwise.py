"""Linear bijections (DiagonalAffine, LULinear, Permutation, Householder, ActNorm) and fixed elementwise
nonlinearities (LeakyReLU, Sigmoid, Tanh)."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows import _checks
from pyroflows.flows.core import Flow
from pyroflows.transforms.base import from_config
from pyroflows.transforms.elementwise import LeakyReLU, Sigmoid, Tanh
from pyroflows.transforms.linear import (
    ActNorm,
    DiagonalAffine,
    Householder,
    LULinear,
    Permutation,
    RandomPermutation,
    ReversePermutation,
)

D, C = 4, 3

# name -> (factory, context_dim, kind of y-domain)
CASES = {
    "diag": (lambda: DiagonalAffine(D), 0, "real"),
    "diag_ctx": (lambda: DiagonalAffine(D, C, hidden_dims=(16,)), C, "real"),
    "lu": (lambda: LULinear(D, seed=3), 0, "real"),
    "lu_ctx": (lambda: LULinear(D, C, hidden_dims=(16,)), C, "real"),
    "householder": (lambda: Householder(D, count=3), 0, "real"),
    "householder_ctx": (lambda: Householder(D, C, hidden_dims=(16,)), C, "real"),
    "actnorm": (lambda: ActNorm(D), 0, "real"),
    "actnorm_ctx": (lambda: ActNorm(D, C, hidden_dims=(16,)), C, "real"),
    "perm": (lambda: Permutation(D, [2, 0, 3, 1]), 0, "real"),
    "reverse": (lambda: ReversePermutation(D), 0, "real"),
    "random": (lambda: RandomPermutation(D, seed=5), 0, "real"),
    "leaky": (lambda: LeakyReLU(D, init_slope=0.3), 0, "real"),
    "leaky_ctx": (lambda: LeakyReLU(D, C, hidden_dims=(16,)), C, "real"),
    "sigmoid": (lambda: Sigmoid(D), 0, "unit"),
    "tanh": (lambda: Tanh(D), 0, "sym"),
}


def build(name: str, dtype=torch.float64, perturb: float = 0.3):
    """The transform with non-trivial parameters (so identity-like bugs are caught)."""
    torch.manual_seed(0)
    factory, cdim, kind = CASES[name]
    t = factory()
    if isinstance(t, ActNorm):
        t.forward_and_log_det(torch.randn(64, D), ctx_for(cdim, (64,), torch.float32))  # data-dependent init first
    with torch.no_grad():
        for p in t.parameters():
            p.add_(perturb * torch.randn_like(p))
    return t.to(dtype), cdim, kind


def sample_y(kind: str, shape, dtype=torch.float64):
    if kind == "unit":
        return torch.rand(shape, dtype=dtype) * 0.98 + 0.01
    if kind == "sym":
        return torch.rand(shape, dtype=dtype) * 1.96 - 0.98
    return 2.0 * torch.randn(shape, dtype=dtype)


def ctx_for(cdim: int, shape, dtype=torch.float64):
    return torch.randn(*shape, cdim, dtype=dtype) if cdim else None


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_float64_fresh_data(name):
    t, cdim, kind = build(name)
    g = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(7, 5, D, dtype=torch.float64, generator=g)
    c = ctx_for(cdim, (5,))
    y, ld = t.forward_and_log_det(x, c)
    assert y.shape == x.shape and ld.shape == (7, 5)
    x2, ld_inv = t.inverse_and_log_det(y, c)
    assert (x2 - x).abs().max() < 1e-9
    assert (ld + ld_inv).abs().max() < 1e-9
    # fresh data on the output side
    y = sample_y(kind, (7, 5, D))
    x, ld_inv = t.inverse_and_log_det(y, c)
    y2, ld = t.forward_and_log_det(x, c)
    assert (y2 - y).abs().max() < 1e-9
    assert (ld + ld_inv).abs().max() < 1e-9


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_float32(name):
    t, cdim, kind = build(name, torch.float32)
    x = torch.randn(50, D)
    c = ctx_for(cdim, (50,), torch.float32)
    y, ld = t.forward_and_log_det(x, c)
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    x2, _ = t.inverse_and_log_det(y, c)
    assert (x2 - x).abs().max() < 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_log_det_matches_autograd_jacobian(name):
    t, cdim, kind = build(name)
    for i in range(3):
        x = 1.5 * torch.randn(D, dtype=torch.float64)
        c = ctx_for(cdim, ())
        jac = torch.autograd.functional.jacobian(lambda v, c=c: t.forward_and_log_det(v, c)[0], x)
        ld = t.forward_and_log_det(x, c)[1]
        assert torch.allclose(ld, torch.linalg.slogdet(jac)[1], atol=1e-6), (i, ld, jac)
        y = sample_y(kind, (D,))
        jac = torch.autograd.functional.jacobian(lambda v, c=c: t.inverse_and_log_det(v, c)[0], y)
        ld = t.inverse_and_log_det(y, c)[1]
        assert torch.allclose(ld, torch.linalg.slogdet(jac)[1], atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_far_inputs_finite_values_and_gradients(name):
    for dtype in (torch.float32, torch.float64):
        t, cdim, kind = build(name, dtype)
        x = (1e3 * torch.randn(20, D, dtype=dtype)).requires_grad_()
        c = ctx_for(cdim, (20,), dtype)
        y, ld = t.forward_and_log_det(x, c)
        assert torch.isfinite(y).all() and torch.isfinite(ld).all()
        (y.sum() + ld.sum()).backward()
        assert torch.isfinite(x.grad).all()
        for p in t.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        x2, ld2 = t.inverse_and_log_det(y.detach(), c)
        assert torch.isfinite(x2).all() and torch.isfinite(ld2).all()
        if kind == "real":
            yfar = (1e3 * torch.randn(20, D, dtype=dtype)).requires_grad_()
            xf, ldf = t.inverse_and_log_det(yfar, c)
            (xf.sum() + ldf.sum()).backward()
            assert torch.isfinite(xf).all() and torch.isfinite(yfar.grad).all()


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][1] == 0 and list(build(n)[0].parameters())]
                         + [n for n in CASES if CASES[n][1]])
def test_gradients_reach_every_parameter(name):
    t, cdim, _ = build(name)
    x = torch.randn(64, D, dtype=torch.float64)
    c = ctx_for(cdim, (64,))
    y, ld = t.forward_and_log_det(x, c)
    (y.pow(2).sum() + ld.sum()).backward()
    for pname, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][1]])
def test_context_changes_output_at_init(name):
    torch.manual_seed(0)
    t = CASES[name][0]().double()
    if isinstance(t, ActNorm):
        t.initialized.fill_(1)
    x = -torch.rand(10, D, dtype=torch.float64)  # negative, so LeakyReLU's slope matters
    c1, c2 = torch.randn(10, C, dtype=torch.float64), torch.randn(10, C, dtype=torch.float64)
    y1, y2 = t.forward_and_log_det(x, c1)[0], t.forward_and_log_det(x, c2)[0]
    assert not torch.equal(y1, y2)
    with pytest.raises(ValueError, match="needs a context"):
        t.forward_and_log_det(x)


def test_identity_initialisation():
    x = torch.randn(9, D)
    assert torch.allclose(DiagonalAffine(D)(x), x, atol=1e-6)
    assert torch.allclose(DiagonalAffine(D, C).forward_and_log_det(x, torch.randn(9, C))[0], x, atol=0.05)
    lu = LULinear(D, seed=1)
    y, ld = lu.forward_and_log_det(x)
    assert torch.allclose(y, x[..., lu.perm], atol=1e-6) and ld.abs().max() < 1e-6
    leaky = LeakyReLU(D, init_slope=0.25)
    assert torch.allclose(leaky.slope(), torch.full((D,), 0.25))
    assert torch.allclose(leaky(-x.abs()), -0.25 * x.abs(), atol=1e-6)
    # Householder starts as a random orthogonal map
    h = Householder(D, count=2)
    w = torch.autograd.functional.jacobian(lambda v: h(v), torch.randn(D))
    assert torch.allclose(w @ w.T, torch.eye(D), atol=1e-5) and not torch.allclose(w, torch.eye(D))


def test_lu_batched_with_context_matches_dense_matrices():
    torch.manual_seed(0)
    t = LULinear(D, C, hidden_dims=(16,)).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    c = torch.randn(6, C, dtype=torch.float64)
    w = t.weight(c)
    assert w.shape == (6, D, D)
    b = t.head(c)["shift"]
    x = torch.randn(3, 6, D, dtype=torch.float64)  # batch (3, 6) against context batch (6,)
    y, ld = t.forward_and_log_det(x, c)
    assert torch.allclose(y, torch.einsum("bij,nbj->nbi", w, x) + b, atol=1e-12)
    assert torch.allclose(ld, torch.linalg.slogdet(w)[1].expand(3, 6), atol=1e-10)
    # every matrix is genuinely different, so the batched solves must pick the right one
    assert (w[0] - w[1]).abs().max() > 1e-3
    y_fresh = torch.randn(3, 6, D, dtype=torch.float64)
    x_inv, ld_inv = t.inverse_and_log_det(y_fresh, c)
    expected = torch.linalg.solve(w, (y_fresh - b).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(x_inv, expected, atol=1e-10)
    assert torch.allclose(ld_inv, -ld, atol=1e-10)
    # a single context for a whole batch, and a conditioned torch Transform
    y1 = t.condition(c[0]).inverse_and_log_det(y_fresh[:, 0])[0]
    assert torch.allclose(y1, x_inv[:, 0], atol=1e-10)


def test_lu_structure():
    from pyroflows.functional.linear import lu_factors

    t = LULinear(5, seed=2)
    with torch.no_grad():
        t.head.packed.normal_()
        t.head.raw_diag.normal_(std=3.0)
    lower, upper, log_diag = lu_factors(t.head.packed, t.head.raw_diag)
    assert torch.equal(lower, lower.tril()) and torch.equal(torch.diagonal(lower), torch.ones(5))
    assert torch.equal(upper, upper.triu()) and (torch.diagonal(upper) > 1e-3).all()
    p = torch.zeros(5, 5)
    p[torch.arange(5), t.perm] = 1.0  # (P z)_i = z_perm[i]
    assert torch.allclose(t.weight(), p @ lower @ upper, atol=1e-6)
    assert torch.allclose(log_diag.sum(), torch.linalg.slogdet(t.weight())[1], atol=1e-5)
    assert torch.equal(LULinear(5, seed=2).perm, t.perm) and not torch.equal(LULinear(5, seed=3).perm, t.perm)


def test_diagonal_affine_starts_at_the_given_loc_and_scale(tmp_path):
    loc, scale = torch.tensor([1.0, 0.0, -1.0, 0.5]), torch.tensor([2.0, 1.0, 0.05, 3.0])
    t = DiagonalAffine(D, loc=loc.tolist(), scale=scale.tolist())
    assert t.head.raw_scale[1].item() == 0.0  # a scale of exactly 1 is a raw value of exactly 0
    x = torch.randn(9, D)
    y, ld = t.forward_and_log_det(x)
    torch.testing.assert_close(y, loc + scale * x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ld, torch.log(scale).sum().expand(9), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(t.inverse_and_log_det(y)[0], x, atol=1e-5, rtol=1e-5)
    # numbers broadcast; the defaults are the identity with raw parameters exactly zero
    torch.testing.assert_close(DiagonalAffine(D, loc=2.0, scale=3.0)(x), 2.0 + 3.0 * x)
    assert all(torch.equal(p, torch.zeros(D)) for p in DiagonalAffine(D).parameters())
    # with a context the start is the network's output bias: the map starts near loc + scale x
    c = DiagonalAffine(D, C, hidden_dims=(16,), loc=loc.tolist(), scale=scale.tolist())
    torch.testing.assert_close(c.forward_and_log_det(x, torch.randn(9, C))[0], loc + scale * x, atol=0.05, rtol=0.05)
    pyroflows.save(Flow([t]), tmp_path / "affine.pt")
    torch.testing.assert_close(pyroflows.load(tmp_path / "affine.pt").transforms[0].forward_and_log_det(x)[0], y)


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": 1e-4}, "above its floor"), ({"scale": [1.0, -2.0, 1.0, 1.0]}, "floor"),
    ({"loc": [0.0, 1.0]}, f"a number or {D} numbers"), ({"loc": float("nan")}, "finite"),
    ({"scale": [[1.0]] * D}, "shape"),
])
def test_diagonal_affine_bad_start_names_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiagonalAffine(D, **kwargs)


@pytest.mark.parametrize("permutation, expected", [("identity", [0, 1, 2, 3, 4]), ([3, 0, 4, 1, 2], [3, 0, 4, 1, 2])])
def test_lu_permutation_argument(permutation, expected, tmp_path):
    """``permutation="identity"`` gives ``W = L U`` (the identity map at the start); a list is ``P`` itself; either
    way the weight, the map, its inverse and the log-determinant agree, and a saved flow keeps ``P``."""
    torch.manual_seed(0)
    t = LULinear(5, permutation=permutation).double()
    assert t.perm.tolist() == expected and t.inv_perm.tolist() == torch.argsort(torch.tensor(expected)).tolist()
    x = torch.randn(7, 5, dtype=torch.float64)
    y, ld = t.forward_and_log_det(x)
    assert torch.allclose(y, x[..., expected], atol=1e-12) and ld.abs().max() < 1e-12
    with torch.no_grad():
        t.head.packed.normal_()
        t.head.raw_diag.normal_()
        t.head.shift.normal_()
    from pyroflows.functional.linear import lu_factors

    w, b = t.weight(), t.head.shift
    lower, upper, _ = lu_factors(t.head.packed, t.head.raw_diag)
    p = torch.zeros(5, 5, dtype=torch.float64)
    p[torch.arange(5), torch.tensor(expected)] = 1.0  # row i of W is row expected[i] of L U
    assert torch.allclose(w, p @ lower @ upper, atol=1e-12)
    y, ld = t.forward_and_log_det(x)
    assert torch.allclose(y, x @ w.T + b, atol=1e-12)
    assert torch.allclose(ld, torch.linalg.slogdet(w)[1].expand(7), atol=1e-10)
    assert torch.allclose(t.inverse_and_log_det(y)[0], x, atol=1e-10)
    pyroflows.save(Flow([t]), tmp_path / "lu.pt")
    back = pyroflows.load(tmp_path / "lu.pt").double()
    assert back.transforms[0].perm.tolist() == expected
    assert torch.allclose(back.transforms[0].weight(), w, atol=0)


@pytest.mark.parametrize("bad", ["reverse", [0, 1, 1, 2, 3], [0, 1, 2], [0, 1, 2, 3, 5]])
def test_lu_bad_permutation_names_the_choices(bad):
    with pytest.raises(ValueError, match="identity" if isinstance(bad, str) else "exactly once"):
        LULinear(5, permutation=bad)


def test_actnorm_standardises_first_batch_forward_and_is_stable_after():
    t = ActNorm(D).double()
    assert int(t.initialized) == 0
    x = 3.0 + torch.tensor([0.5, 2.0, 7.0, 1.0], dtype=torch.float64) * torch.randn(500, D, dtype=torch.float64)
    y, ld = t.forward_and_log_det(x)
    assert int(t.initialized) == 1
    assert y.mean(0).abs().max() < 1e-10
    assert (y.std(0, correction=0) - 1).abs().max() < 1e-10
    assert torch.allclose(ld, -torch.log(x.std(0, correction=0)).sum().expand(500))
    state = {k: v.clone() for k, v in t.state_dict().items()}
    y2, _ = t.forward_and_log_det(10.0 * x - 4.0)  # a different batch does not re-initialise
    assert not torch.allclose(y2.mean(0), torch.zeros(D, dtype=torch.float64), atol=1e-3)
    assert all(torch.equal(state[k], v) for k, v in t.state_dict().items())
    assert torch.allclose(t.inverse_and_log_det(y)[0], x, atol=1e-10)


def test_actnorm_standardises_first_batch_inverse():
    t = ActNorm(D).double()
    y = -2.0 + 4.0 * torch.randn(300, D, dtype=torch.float64)
    x, ld = t.inverse_and_log_det(y)
    assert x.mean(0).abs().max() < 1e-10
    assert (x.std(0, correction=0) - 1).abs().max() < 1e-10
    assert torch.allclose(t.forward_and_log_det(x)[0], y, atol=1e-10)
    x_again, _ = t.inverse_and_log_det(y + 100.0)
    assert (x_again - x).mean() > 1.0  # parameters stayed fixed


def test_actnorm_batch_shapes_single_sample_and_context():
    t = ActNorm(D).double()
    x = torch.randn(4, 25, D, dtype=torch.float64) * 3
    y, _ = t.forward_and_log_det(x)  # statistics over all batch dimensions
    assert y.reshape(-1, D).mean(0).abs().max() < 1e-10
    one = ActNorm(D).double()
    v = torch.randn(1, D, dtype=torch.float64)
    assert torch.isfinite(one.forward_and_log_det(v)[0]).all()
    assert torch.allclose(one.forward_and_log_det(v)[0], torch.zeros(1, D, dtype=torch.float64), atol=1e-12)
    tc = ActNorm(D, C, hidden_dims=(16,)).double()
    y, _ = tc.forward_and_log_det(5.0 + 3.0 * torch.randn(400, D, dtype=torch.float64),
                                  torch.randn(400, C, dtype=torch.float64))
    assert int(tc.initialized) == 1
    assert y.mean(0).abs().max() < 0.1 and (y.std(0) - 1).abs().max() < 0.1


def test_actnorm_save_load_keeps_initialisation():
    t = ActNorm(D).double()
    x = 2.0 + 5.0 * torch.randn(200, D, dtype=torch.float64)
    t(x)
    t2 = from_config(t.config()).double()
    assert int(t2.initialized) == 0
    t2(torch.randn(5, D, dtype=torch.float64))  # would initialise itself from this batch ...
    t2.load_state_dict(t.state_dict())  # ... but loading restores both the flag and the fitted values
    assert int(t2.initialized) == 1
    fresh = torch.randn(7, D, dtype=torch.float64)
    assert torch.allclose(t2(fresh), t(fresh))
    t2.reset_initialization()
    t2(fresh)
    assert not torch.allclose(t2(fresh), t(fresh))


def test_permutations():
    x = torch.arange(10.0).reshape(2, 5)
    t = Permutation(5, [4, 0, 1, 3, 2])
    y, ld = t.forward_and_log_det(x)
    assert torch.equal(y[0], torch.tensor([4.0, 0.0, 1.0, 3.0, 2.0])) and torch.equal(ld, torch.zeros(2))
    assert torch.equal(t.inverse_and_log_det(y)[0], x)
    assert torch.equal(ReversePermutation(5)(x), x.flip(-1))
    assert torch.equal(Permutation(5)(x), x.flip(-1))
    r = RandomPermutation(5, seed=7)
    assert torch.equal(r.perm, Permutation(5, kind="random", seed=7).perm)
    assert torch.equal(r.inverse_and_log_det(r(x))[0], x)
    assert torch.equal(torch.sort(r.perm).values, torch.arange(5))
    assert list(t.parameters()) == [] and t.context_dim == 0
    for bad in ([0, 1, 2, 3], [0, 0, 1, 2, 3], [0, 1, 2, 3, 5]):
        with pytest.raises(ValueError, match="exactly once"):
            Permutation(5, bad)
    with pytest.raises(ValueError, match="reverse"):
        Permutation(5, kind="sorted")
    # save/load through the recorded constructor arguments
    for p in (t, ReversePermutation(5), r):
        q = from_config(p.config())
        assert type(q) is type(p) and torch.equal(q.perm, p.perm)
    assert ReversePermutation(5).config() == {"type": "ReversePermutation", "kwargs": {"input_dim": 5}}


@pytest.mark.parametrize("name", list(CASES))
def test_config_round_trip(name):
    t, cdim, kind = build(name)
    q = from_config(t.config()).double()
    q.load_state_dict(t.state_dict())
    x = torch.randn(6, D, dtype=torch.float64)
    c = ctx_for(cdim, (6,))
    assert torch.equal(q.forward_and_log_det(x, c)[0], t.forward_and_log_det(x, c)[0])


def test_sigmoid_tanh_out_of_range_inverse_errors():
    s, th = Sigmoid(3), Tanh(3)
    for t, bad in ((s, [0.5, 1.0, 0.2]), (s, [-0.1, 0.5, 0.5]), (s, [0.0, 0.5, 0.5]), (th, [0.0, 1.0, 0.5]),
                   (th, [-1.5, 0.0, 0.0])):
        with pytest.raises(ValueError, match="strictly inside.*rescale the data"):
            t.inverse_and_log_det(torch.tensor([bad]))
    assert _checks.validation_enabled()
    _checks.set_validation(False)
    try:
        x, ld = s.inverse_and_log_det(torch.tensor([[0.0, 1.0, 2.0]]))
        assert torch.isfinite(x).all() and torch.isfinite(ld).all()
        x, ld = th.inverse_and_log_det(torch.tensor([[-1.0, 1.0, 2.0]]))
        assert torch.isfinite(x).all() and torch.isfinite(ld).all()
    finally:
        _checks.set_validation(True)


def test_sigmoid_tanh_values_and_far_outputs():
    x = torch.tensor([[-1e3, -30.0, 0.0, 30.0, 1e3]])
    for t, ref, lo, hi in ((Sigmoid(5), torch.sigmoid, 0.0, 1.0), (Tanh(5), torch.tanh, -1.0, 1.0)):
        for dtype in (torch.float32, torch.float64):
            y, ld = t.forward_and_log_det(x.to(dtype))
            assert ((y > lo) & (y < hi)).all()  # far outputs stay strictly inside, so they invert
            assert torch.allclose(y, ref(x.to(dtype)), atol=1e-6)
            back, ld_inv = t.inverse_and_log_det(y)
            assert torch.isfinite(back).all() and torch.isfinite(ld).all() and torch.isfinite(ld_inv).all()
    assert Sigmoid(2).codomain.check(torch.tensor([0.3, 0.9])).item()
    assert not Tanh(2).codomain.check(torch.tensor([0.3, 1.5])).item()
    assert Sigmoid(2).context_dim == 0 and list(Tanh(2).parameters()) == []
    # stable log-det far out: log σ'(-1000) = -1000, log tanh'(±1000) ≈ 2 log 2 - 2000
    _, ld = Sigmoid(1).forward_and_log_det(torch.tensor([[-1e3]]))
    assert torch.allclose(ld, torch.tensor([-1e3]))
    _, ld = Tanh(1).forward_and_log_det(torch.tensor([[1e3], [-1e3]], dtype=torch.float64))
    assert torch.allclose(ld, torch.full((2,), 2 * torch.log(torch.tensor(2.0)).item() - 2e3, dtype=torch.float64))


def test_leaky_relu_slope_validation_and_branches():
    with pytest.raises(ValueError, match="init_slope"):
        LeakyReLU(2, init_slope=0.0)
    t = LeakyReLU(2, init_slope=0.5)
    y, ld = t.forward_and_log_det(torch.tensor([[1.0, -2.0], [-1.0, -1.0], [3.0, 4.0]]))
    assert torch.allclose(y, torch.tensor([[1.0, -1.0], [-0.5, -0.5], [3.0, 4.0]]), atol=1e-6)
    l05 = torch.log(torch.tensor(0.5))
    assert torch.allclose(ld, torch.stack([l05, 2 * l05, torch.tensor(0.0)]), atol=1e-6)


def test_usable_in_pyro_distributions():
    base = dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1)
    flow = dist.TransformedDistribution(base, [LULinear(D), Householder(D), ActNorm(D), Sigmoid(D)])
    s = flow.rsample((20,))
    assert s.shape == (20, D) and torch.isfinite(flow.log_prob(s)).all()
    t = DiagonalAffine(D, C, hidden_dims=(8,))
    cond = dist.ConditionalTransformedDistribution(base, [t]).condition(torch.randn(C))
    assert torch.isfinite(cond.log_prob(cond.sample((5,)))).all()


def test_seeded_permutations_follow_the_default_device():
    """Seeded permutations are drawn on the CPU (a CPU generator) and then follow the default device, so building
    under torch.set_default_device("cuda") works; "meta" stands in for a non-CPU device here."""
    ref = RandomPermutation(5, seed=3).perm.clone()
    try:
        torch.set_default_device("meta")
        for t in (LULinear(5, seed=3), RandomPermutation(5, seed=3)):
            assert t.perm.device.type == "meta"
    finally:
        torch.set_default_device("cpu")
    assert torch.equal(RandomPermutation(5, seed=3).perm, ref)

"""Tests of the block neural autoregressive flow and its numerical inverse of fresh data."""

from __future__ import annotations

import itertools

import pytest
import torch

from pyroflows.functional import bnaf as F_bnaf
from pyroflows.transforms.base import from_config
from pyroflows.transforms.bnaf import BlockNAFTransform

VARIANTS = list(itertools.product([None, "normal", "gated"], ["tanh", "leaky_tanh"], [0, 2]))
IDS = [f"{r}-{a}-ctx{c}" for r, a, c in VARIANTS]


def make(residual=None, activation="tanh", context_dim=0, dim=3, seed=0, **kw) -> BlockNAFTransform:
    torch.manual_seed(seed)
    t = BlockNAFTransform(dim, context_dim=context_dim, hidden_factor=3, activation=activation, residual=residual,
                          **kw).double()
    with torch.no_grad():  # move away from the initialisation: non-trivial biases, scales and gate
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return t


def ctx_for(t: BlockNAFTransform, *batch: int) -> torch.Tensor | None:
    return torch.randn(*batch, t.context_dim, dtype=torch.float64) if t.context_dim else None


def jac(fn, v: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(fn, v)


@pytest.mark.parametrize("residual,activation,context_dim", VARIANTS, ids=IDS)
def test_autoregressive_structure_and_log_det(residual, activation, context_dim):
    t = make(residual, activation, context_dim)
    x = 1.5 * torch.randn(4, 3, dtype=torch.float64)
    c = ctx_for(t, 4)
    y, ld = t.forward_and_log_det(x, c)
    for n in range(4):
        cn = None if c is None else c[n]
        j = jac(lambda v, cn=cn: t.forward_and_log_det(v, cn)[0], x[n])
        assert torch.all(j.triu(1) == 0), "y_i must not depend on x_{>i}"
        assert torch.all(j.diagonal() > 0)
        torch.testing.assert_close(ld[n], torch.linalg.slogdet(j)[1], rtol=0, atol=1e-6)
        # the functional dense Jacobian (used by the inverse's Newton step) agrees with autograd
        layers = t._layers()
        jf = F_bnaf.bnaf_jacobian(x[n], layers, activation, residual, t.gate, t._context_shift(cn))
        torch.testing.assert_close(jf, j, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("residual,activation,context_dim", VARIANTS, ids=IDS)
def test_inverse_log_det_matches_autograd(residual, activation, context_dim):
    t = make(residual, activation, context_dim, seed=1)
    y = 2.0 * torch.randn(3, 3, dtype=torch.float64)
    c = ctx_for(t, 3)
    x, ild = t.inverse_and_log_det(y, c)
    _, fld = t.forward_and_log_det(x, c)
    torch.testing.assert_close(ild, -fld, rtol=0, atol=1e-10)
    for n in range(3):
        cn = None if c is None else c[n]
        j = jac(lambda v, cn=cn: t.inverse_and_log_det(v, cn)[0], y[n])
        assert torch.all(j.triu(1).abs() < 1e-12)
        torch.testing.assert_close(ild[n], torch.linalg.slogdet(j)[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("residual,activation,context_dim", VARIANTS, ids=IDS)
def test_round_trip_fresh_data_float64(residual, activation, context_dim):
    t = make(residual, activation, context_dim, seed=2)
    x = 2.0 * torch.randn(50, 3, dtype=torch.float64)
    c = ctx_for(t, 50)
    y, _ = t.forward_and_log_det(x, c)
    x2, _ = t.inverse_and_log_det(y.clone(), c)
    assert (x2 - x).abs().max() < 1e-9
    # fresh y never produced by the forward, including values outside the tanh network's range
    y = 4.0 * torch.randn(50, 3, dtype=torch.float64)
    x3, _ = t.inverse_and_log_det(y, c)
    y3, _ = t.forward_and_log_det(x3, c)
    assert (y3 - y).abs().max() < 1e-9


@pytest.mark.parametrize("residual", [None, "normal", "gated"])
def test_round_trip_float32(residual):
    t = make(residual, context_dim=2, seed=3).float()
    x = torch.randn(64, 3)
    c = torch.randn(64, 2)
    y, ld = t.forward_and_log_det(x, c)
    x2, ild = t.inverse_and_log_det(y, c)
    assert x2.dtype == torch.float32 and ild.dtype == torch.float32
    assert (x2 - x).abs().max() < 1e-4
    assert (ld + ild).abs().max() < 1e-3


def test_context_broadcasting_and_batch_shapes():
    t = make("gated", context_dim=2, seed=4)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64)
    y, ld = t.forward_and_log_det(x, c)
    assert y.shape == (5, 4, 3) and ld.shape == (5, 4)
    y_ref, ld_ref = t.forward_and_log_det(x, c.expand(5, 4, 2))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)
    x2, ild = t.inverse_and_log_det(y, c)
    assert x2.shape == (5, 4, 3) and ild.shape == (5, 4)
    assert (x2 - x).abs().max() < 1e-9
    # a context with a larger batch than the input: the output takes the broadcast shape
    y1, ld1 = t.forward_and_log_det(x[0, 0], c)
    assert y1.shape == (4, 3) and ld1.shape == (4,)
    x1, _ = t.inverse_and_log_det(y1[0], c)
    assert x1.shape == (4, 3)
    # unconditional, unbatched
    u = make(dim=2)
    xs = torch.randn(2, dtype=torch.float64)
    ys, lds = u.forward_and_log_det(xs)
    assert ys.shape == (2,) and lds.shape == ()
    assert (u.inverse_and_log_det(ys)[0] - xs).abs().max() < 1e-9


def test_context_changes_output():
    t = make(context_dim=2, seed=5)
    x = torch.randn(6, 3, dtype=torch.float64)
    y1, ld1 = t.forward_and_log_det(x, torch.zeros(6, 2, dtype=torch.float64))
    y2, ld2 = t.forward_and_log_det(x, torch.ones(6, 2, dtype=torch.float64))
    assert (y1 - y2).abs().min() > 1e-6
    assert (ld1 - ld2).abs().min() > 1e-8
    # fresh init also reacts to the context
    torch.manual_seed(0)
    t0 = BlockNAFTransform(3, context_dim=2)
    z = torch.randn(6, 3)
    diff = t0.forward_and_log_det(z, torch.zeros(6, 2))[0] - t0.forward_and_log_det(z, torch.ones(6, 2))[0]
    assert diff.abs().min() > 1e-5


@pytest.mark.parametrize("residual", [None, "normal", "gated"])
@pytest.mark.parametrize("activation", ["tanh", "leaky_tanh"])
def test_far_out_inputs_finite(residual, activation):
    t = make(residual, activation, context_dim=2, seed=6)
    x = (1e3 * torch.randn(8, 3, dtype=torch.float64)).requires_grad_()
    c = torch.randn(8, 2, dtype=torch.float64)
    y, ld = t.forward_and_log_det(x, c)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    (y.sum() + ld.sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in t.parameters())
    t.zero_grad()
    yf = (1e3 * torch.randn(8, 3, dtype=torch.float64)).requires_grad_()
    xi, ild = t.inverse_and_log_det(yf, c)
    assert torch.isfinite(xi).all() and torch.isfinite(ild).all()
    (xi.sum() + ild.sum()).backward()
    assert torch.isfinite(yf.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in t.parameters())
    # float32 as well
    t32 = t.float()
    y32, ld32 = t32.forward_and_log_det(1e3 * torch.randn(8, 3), c.float())
    assert torch.isfinite(y32).all() and torch.isfinite(ld32).all()


@pytest.mark.parametrize("residual", [None, "normal", "gated"])
def test_gradients_reach_every_parameter(residual):
    t = make(residual, context_dim=2, seed=7)
    x = torch.randn(16, 3, dtype=torch.float64)
    c = torch.randn(16, 2, dtype=torch.float64)
    y, ld = t.forward_and_log_det(x, c)
    (y.pow(2).sum() + ld.sum()).backward()
    for name, p in t.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    t.zero_grad()
    xi, ild = t.inverse_and_log_det(y.detach(), c)
    (xi.pow(2).sum() + ild.sum()).backward()
    for name, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("residual", [None, "gated"])
def test_inverse_parameter_gradients_match_finite_differences(residual):
    # catches a Newton polish that ignores the off-diagonal (triangular) coupling
    t = make(residual, context_dim=2, seed=8)
    y = 1.5 * torch.randn(5, 3, dtype=torch.float64)
    c = torch.randn(5, 2, dtype=torch.float64).requires_grad_()

    def loss() -> torch.Tensor:
        x, ild = t.inverse_and_log_det(y, c)
        return (x * torch.arange(1.0, 4.0, dtype=torch.float64)).sum() + ild.sum()

    loss().backward()
    params = dict(t.named_parameters())
    checks = [("raw_weights.0", (2, 0)), ("raw_weights.1", (7, 2)), ("biases.0", 4), ("log_scales.2", 1),
              ("biases.2", 0), ("context_layer.weight", (3, 1))]
    if residual == "gated":
        checks.append(("gate", 1))
    eps = 1e-6
    with torch.no_grad():
        for name, idx in checks:
            p = params[name]
            p[idx] += eps
            up = loss()
            p[idx] -= 2 * eps
            down = loss()
            p[idx] += eps
            fd = (up - down) / (2 * eps)
            torch.testing.assert_close(p.grad[idx], fd, rtol=1e-5, atol=1e-7, msg=name)
        cg = c.grad.clone()
        c[1, 0] += eps
        up = loss()
        c[1, 0] -= 2 * eps
        down = loss()
        c[1, 0] += eps
        torch.testing.assert_close(cg[1, 0], (up - down) / (2 * eps), rtol=1e-5, atol=1e-7)


def test_masked_block_weight_structure():
    diag, lower = F_bnaf.block_masks(3, 2, 4)
    raw = torch.randn(6, 12, dtype=torch.float64)
    log_scale = torch.randn(6, dtype=torch.float64)
    w, log_diag = F_bnaf.masked_block_weight(raw, log_scale, diag, lower, 3)
    blocks = w.reshape(3, 2, 3, 4)
    for i in range(3):
        assert torch.all(blocks[i, :, i] > 0)
        torch.testing.assert_close(blocks[i, :, i].log(), log_diag[i])
        assert torch.all(blocks[i, :, i + 1:] == 0)
    torch.testing.assert_close(w.norm(dim=-1), log_scale.exp())


def test_training_is_stable_and_learns():
    # reverse-KL fit of a correlated, shifted Gaussian: loss decreases and stays finite
    torch.manual_seed(0)
    t = BlockNAFTransform(2, hidden_factor=4, residual="gated")
    target = torch.distributions.MultivariateNormal(torch.tensor([1.0, -1.0]),
                                                    torch.tensor([[1.0, 0.8], [0.8, 1.0]]))
    base = torch.distributions.Normal(0.0, 1.0)
    opt = torch.optim.Adam(t.parameters(), lr=3e-2)

    def kl() -> torch.Tensor:
        z = torch.randn(256, 2)
        y, ld = t.forward_and_log_det(z)
        return (base.log_prob(z).sum(-1) - ld - target.log_prob(y)).mean()

    start = kl().item()
    for _ in range(200):
        opt.zero_grad()
        loss = kl()
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    assert kl().item() < start - 1.0
    assert kl().item() < 0.1


def test_config_dtype_and_validation():
    t = BlockNAFTransform(3, context_dim=2, hidden_factor=2, num_layers=1, activation="leaky_tanh",
                          residual="normal")
    cfg = t.config()
    assert cfg["type"] == "BlockNAFTransform"
    assert cfg["kwargs"] == {"input_dim": 3, "context_dim": 2, "hidden_factor": 2, "num_layers": 1,
                             "activation": "leaky_tanh", "residual": "normal", "orientation": "iaf"}
    t2 = from_config(cfg)
    assert isinstance(t2, BlockNAFTransform) and len(t2.raw_weights) == 2
    t2.load_state_dict(t.state_dict())
    x, c = torch.randn(4, 3), torch.randn(4, 2)
    torch.testing.assert_close(t2.forward_and_log_det(x, c)[0], t.forward_and_log_det(x, c)[0])
    td = t.double()
    assert td.forward_and_log_det(x.double(), c.double())[0].dtype == torch.float64
    for bad in [dict(hidden_factor=0), dict(num_layers=0), dict(activation="relu"), dict(residual="skip")]:
        with pytest.raises(ValueError):
            BlockNAFTransform(3, **bad)
    with pytest.raises(ValueError):
        t.forward_and_log_det(x.double())  # missing context

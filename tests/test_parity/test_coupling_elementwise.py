"""Coupling, elementwise and fixed-nonlinearity transforms: pyroflows and numpyroflows compute the same maps from the
same parameters (exported from one, imported into the other), in float64, to 1e-9: each conditioner with every
transformer and mask, Sigmoid and Tanh over their whole range, broadcast contexts. (Whole flows, LeakyReLU among them,
are compared entry by entry in tests/test_parity/test_catalogue.py over the catalogue.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from numpyroflows.flows.core import Flow as JFlow  # noqa: E402
from numpyroflows.transforms import coupling as jc  # noqa: E402
from numpyroflows.transforms import elementwise as je  # noqa: E402
from pyroflows.flows.core import Flow as TFlow  # noqa: E402
from pyroflows.transforms import coupling as tc  # noqa: E402
from pyroflows.transforms import elementwise as te  # noqa: E402

H = (8, 8)
D = 5
TRANSFORMERS = ["affine", "additive", "spline", "bspline", "mixture"]


def _pair(make_t, make_j, scale: float = 0.3):
    torch.manual_seed(0)
    tflow = TFlow([make_t()]).double()
    with torch.no_grad():
        for p in tflow.parameters():  # away from the identity-near initialisation
            p.add_(scale * torch.randn_like(p))
    jflow = numpyroflows.import_params(JFlow([make_j()]), pyroflows.export_params(tflow))
    assert set(jflow.params) == set(pyroflows.export_params(tflow))
    return tflow, jflow


def _all(f, x, c, directions, log_prob):
    out = {d: getattr(f.transform(c), f"{d}_and_log_det")(x) for d in directions}
    if log_prob:
        out["log_prob"] = f(c).log_prob(x)
    return out


#: jitted (one compilation per flow structure and input shape) rather than op by op: faster, and it tests jit
_ALL = jax.jit(_all, static_argnums=(3, 4))
_JITTED = {
    "forward_and_log_det": jax.jit(lambda f, x, c: f.transform(c).forward_and_log_det(x)),
    "inverse_and_log_det": jax.jit(lambda f, x, c: f.transform(c).inverse_and_log_det(x)),
}


def _compare(tflow, jflow, x: np.ndarray, ctx: np.ndarray | None, directions=("forward", "inverse"),
             log_prob: bool = True) -> None:
    tctx = None if ctx is None else torch.as_tensor(ctx)
    jctx = None if ctx is None else jnp.asarray(ctx)
    out = _ALL(jflow, jnp.asarray(x), jctx, tuple(directions), log_prob)
    for direction in directions:
        yt, ldt = getattr(tflow.transform(tctx), f"{direction}_and_log_det")(torch.as_tensor(x))
        yj, ldj = out[direction]
        assert yj.shape == tuple(yt.shape) and ldj.shape == tuple(ldt.shape)
        np.testing.assert_allclose(np.asarray(yj), yt.detach().numpy(), atol=1e-9, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(ldj), ldt.detach().numpy(), atol=1e-9, rtol=1e-9)
    if log_prob:
        lp_t = tflow(tctx).log_prob(torch.as_tensor(x)).detach().numpy()
        np.testing.assert_allclose(np.asarray(out["log_prob"]), lp_t, atol=1e-9, rtol=1e-9)


def _data(n: int = 12, context_dim: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)) * 2
    x[:2] *= 5  # beyond the spline bound (tails)
    ctx = rng.normal(size=(n, context_dim)) if context_dim else None
    return x, ctx


@pytest.mark.parametrize("mask", ["half", "alternating", "random", [1, 0, 0, 1, 1]])
def test_same_masks(mask):
    for seed, parity in ((0, 0), (3, 1)):
        m_t = tc.coupling_mask(D, mask, parity, seed).tolist()
        assert list(jc.coupling_mask(D, mask, parity, seed)) == m_t
        t = tc.CouplingTransform(D, mask=mask, parity=parity, seed=seed, hidden_dims=H)
        j = jc.CouplingTransform(D, mask=mask, parity=parity, seed=seed, hidden_dims=H)
        assert list(j.idx_a) == t.idx_a.tolist() and list(j.idx_b) == t.idx_b.tolist()
        assert list(j.unperm) == t.unperm.tolist()


@pytest.mark.parametrize("transformer", TRANSFORMERS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_coupling_parity(transformer, context_dim):
    kw = dict(transformer=transformer, context_dim=context_dim, hidden_dims=H, mask="random", parity=1, seed=2,
              count_bins=5, bound=3.0)
    tflow, jflow = _pair(lambda: tc.CouplingTransform(D, **kw), lambda: jc.CouplingTransform(D, **kw))
    x, ctx = _data(context_dim=context_dim)
    _compare(tflow, jflow, x, ctx)


@pytest.mark.parametrize("transformer", TRANSFORMERS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_elementwise_parity(transformer, context_dim):
    kw = dict(transformer=transformer, context_dim=context_dim, hidden_dims=H, count_bins=5, bound=3.0)
    tflow, jflow = _pair(lambda: te.ElementwiseTransform(D, **kw), lambda: je.ElementwiseTransform(D, **kw))
    x, ctx = _data(context_dim=context_dim)
    _compare(tflow, jflow, x, ctx)


def test_context_broadcasts():
    """One context for a batch of inputs, and a batch of contexts for one input, as in pyroflows."""
    kw = dict(transformer="spline", context_dim=2, hidden_dims=H, count_bins=5, bound=3.0)
    tflow, jflow = _pair(lambda: tc.CouplingTransform(D, **kw), lambda: jc.CouplingTransform(D, **kw))
    x, ctx = _data(n=6, context_dim=2)
    _compare(tflow, jflow, x, ctx[:1], log_prob=False)
    kw["transformer"] = "affine"  # (pyroflows' spline kernel does not broadcast the input up to the parameters)
    tflow, jflow = _pair(lambda: tc.CouplingTransform(D, **kw), lambda: jc.CouplingTransform(D, **kw))
    _compare(tflow, jflow, x[:1], ctx, log_prob=False)
    kw["transformer"] = "spline"
    tflow, jflow = _pair(lambda: te.ElementwiseTransform(D, **kw), lambda: je.ElementwiseTransform(D, **kw))
    _compare(tflow, jflow, x.reshape(2, 3, D), ctx[:3], log_prob=False)


def test_sigmoid_and_tanh_parity():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, D)) * 3
    for name in ("Sigmoid", "Tanh"):
        tflow, jflow = _pair(lambda n=name: getattr(te, n)(D), lambda n=name: getattr(je, n)(D))
        _compare(tflow, jflow, x, None, directions=("forward",), log_prob=False)
        y = 1 / (1 + np.exp(-x)) if name == "Sigmoid" else np.tanh(x)
        _compare(tflow, jflow, y * 0.999 + (0.0005 if name == "Sigmoid" else 0.0), None, directions=("inverse",),
                 log_prob=False)
    with pytest.raises(ValueError, match="strictly inside"):
        je.Sigmoid(D).inverse_and_log_det(jnp.full((D,), 1.5))
    with pytest.raises(ValueError, match="strictly inside"):
        je.Tanh(D).inverse_and_log_det(jnp.full((D,), -1.0))


def test_initial_values_match():
    """Parameter names, shapes and deterministic initial values (identity bias, raw slopes) equal pyroflows'."""
    for kw in (dict(transformer="mixture", count_bins=3), dict(transformer="affine", context_dim=2)):
        t = tc.CouplingTransform(D, hidden_dims=H, **kw)
        j = jc.CouplingTransform(D, hidden_dims=H, **kw)
        sd = t.state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == {k: v.shape for k, v in j.params.items()}
        np.testing.assert_array_equal(np.asarray(j.params["net.layers.1.bias"]), sd["net.layers.1.bias"].numpy())
    for t, j in ((te.ElementwiseTransform(D, "bspline", count_bins=4), je.ElementwiseTransform(D, "bspline",
                                                                                               count_bins=4)),
                 (te.LeakyReLU(D, init_slope=0.2), je.LeakyReLU(D, init_slope=0.2)),
                 (te.LeakyReLU(D, 2, H), je.LeakyReLU(D, 2, H))):
        sd = t.state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == {k: v.shape for k, v in j.params.items()}
    np.testing.assert_allclose(np.asarray(je.LeakyReLU(D, init_slope=0.2).slope()), 0.2, rtol=1e-6)


def test_jit_grad_float32_and_config():
    parts = [jc.CouplingTransform(D, "bspline", 2, H, mask="alternating", parity=1, key=jax.random.PRNGKey(1),
                                  dtype=jnp.float32), je.LeakyReLU(D, 2, H, dtype=jnp.float32)]  # float32 under x64
    flow = JFlow(parts)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(7, D)), jnp.float32)
    c = jnp.asarray(np.random.default_rng(3).normal(size=(7, 2)), jnp.float32)

    @jax.jit
    def loss(f):
        return -f(c).log_prob(x).mean()

    value, grads = jax.value_and_grad(loss)(flow)
    assert value.dtype == jnp.float32 and bool(jnp.isfinite(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.params.values())
    z, _ = _JITTED["inverse_and_log_det"](flow, x, c)
    back, _ = _JITTED["forward_and_log_det"](flow, z, c)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-4)
    for p in parts + [jc.CouplingTransform(D, "mixture", mask="random", seed=4, hidden_dims=H),
                      je.ElementwiseTransform(D, "spline", count_bins=4), je.Sigmoid(D), je.Tanh(D)]:
        rebuilt = numpyroflows.transforms.from_config(p.config())
        assert rebuilt.config() == p.config() and set(rebuilt.params) == set(p.params)
        assert getattr(rebuilt, "mask", None) == getattr(p, "mask", None)

"""numpyroflows.transforms.linear / .bnaf compute what pyroflows computes: same parameters (exported from pyroflows,
imported into numpyroflows) and same inputs give the same log-densities, maps and log-determinants (float64), with and
without a context, for every BNAF residual and orientation, and with broadcast contexts; seeded permutations, starting
values, ActNorm's data-dependent initialisation and configurations are the same. (The linear transforms in whole flows,
with parameters back to pyroflows, are compared over the catalogue in tests/test_parity/test_catalogue.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from catalogue import build_pair, perturb  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from numpyroflows.flows.core import Flow as JFlow  # noqa: E402
from numpyroflows.transforms import bnaf as jbnaf  # noqa: E402
from numpyroflows.transforms import linear as jlin  # noqa: E402
from pyroflows.flows.core import Flow as TFlow  # noqa: E402
from pyroflows.transforms import bnaf as tbnaf  # noqa: E402
from pyroflows.transforms import linear as tlin  # noqa: E402

H = (8,)
D = 3
TOL = {"atol": 1e-9, "rtol": 1e-9}

# name -> factory(linear module, bnaf module, context_dim) -> list of transforms. The linear transforms, and BNAF's
# default (gated) residual, are compared in whole catalogue flows (tests/test_parity/test_catalogue.py); here every
# residual, both orientations in one flow (one compilation), leaky_tanh in one of them.
CASES = {}
for _res, _act in ((None, "tanh"), ("normal", "leaky_tanh"), ("gated", "tanh")):
    CASES[f"BNAF-{_res}"] = lambda L, B, c, r=_res, a=_act: [B.BlockNAFTransform(D, c, 2, 1, a, r, "iaf"),
                                                             L.ReversePermutation(D),
                                                             B.BlockNAFTransform(D, c, 2, 1, a, r, "maf")]

PARAMS = [(n, c) for n in CASES for c in (0, 2)]


def _pair(name: str, context_dim: int):
    torch.manual_seed(0)
    tflow = perturb(TFlow(CASES[name](tlin, tbnaf, context_dim)).double())  # away from the identity-near start
    jflow = numpyroflows.import_params(JFlow(CASES[name](jlin, jbnaf, context_dim)), pyroflows.export_params(tflow))
    return tflow, jflow


def _data(context_dim: int, batch=(16,), ctx_batch=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=batch + (D,)) * 2
    x.reshape(-1, D)[:2] *= 5
    ctx = rng.normal(size=(ctx_batch or batch) + (context_dim,)) if context_dim else None
    return x, ctx


@jax.jit
def _jax_side(flow, x, ctx):
    T = flow.transform(ctx)
    return flow(ctx).log_prob(x), T.forward_and_log_det(x), T.inverse_and_log_det(x)


def _compare(tflow, jflow, x, ctx) -> float:
    """Largest absolute difference over log_prob, forward/inverse maps and log-dets (asserted within TOL)."""
    tctx = None if ctx is None else torch.as_tensor(ctx)
    with torch.no_grad():
        tx = torch.as_tensor(x)
        want = [tflow(tctx).log_prob(tx), *tflow.transform(tctx).forward_and_log_det(tx),
                *tflow.transform(tctx).inverse_and_log_det(tx)]
    lp, (y, ld), (xi, ild) = _jax_side(jflow, jnp.asarray(x), None if ctx is None else jnp.asarray(ctx))
    worst = 0.0
    for got, ref in zip([lp, y, ld, xi, ild], want):
        np.testing.assert_allclose(np.asarray(got), ref.numpy(), **TOL)
        worst = max(worst, float(np.abs(np.asarray(got) - ref.numpy()).max()))
    return worst


@pytest.mark.parametrize("name,context_dim", PARAMS)
def test_same_parameters_same_densities_and_maps(name, context_dim):
    tflow, jflow = _pair(name, context_dim)
    assert set(jflow.params) == set(tflow.state_dict())
    _compare(tflow, jflow, *_data(context_dim))


@pytest.mark.parametrize("name", ["LULinear", "ActNorm", "Householder", "BNAF-gated"])
def test_context_broadcasting(name):
    """x of batch shape (4, 5) against a context of batch shape (5,), as pyroflows broadcasts them (catalogue flows,
    and a BNAF of this file)."""
    tflow, jflow = _pair(name, 2) if name in CASES else build_pair(name, 2)
    _compare(tflow, jflow, *_data(2, batch=(4, 5), ctx_batch=(5,)))


@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**32 - 1])
@pytest.mark.parametrize("d", [1, 2, 5, 17])
def test_random_permutations_are_pyroflows_own(seed, d):
    """Without importing anything, RandomPermutation and LULinear draw the very permutation pyroflows draws."""
    t, j = tlin.RandomPermutation(d, seed=seed), jlin.RandomPermutation(d, seed=seed)
    np.testing.assert_array_equal(np.asarray(j.params["perm"]).astype(int), t.perm.numpy())
    np.testing.assert_array_equal(np.asarray(j.params["inv_perm"]).astype(int), t.inv_perm.numpy())
    tl, jl = tlin.LULinear(d, seed=seed), jlin.LULinear(d, seed=seed)
    np.testing.assert_array_equal(np.asarray(jl.params["perm"]).astype(int), tl.perm.numpy())
    np.testing.assert_array_equal(np.asarray(jl.params["inv_perm"]).astype(int), tl.inv_perm.numpy())
    given = np.random.default_rng(seed).permutation(d).tolist()
    for permutation in ("identity", given):
        tl, jl = tlin.LULinear(d, permutation=permutation), jlin.LULinear(d, permutation=permutation)
        np.testing.assert_array_equal(np.asarray(jl.params["perm"]).astype(int), tl.perm.numpy())
        np.testing.assert_array_equal(np.asarray(jl.params["inv_perm"]).astype(int), tl.inv_perm.numpy())
    with pytest.raises(ValueError, match="exactly once"):
        jlin.LULinear(d, permutation=[d] * d)
    with pytest.raises(ValueError, match="identity"):
        jlin.LULinear(d, permutation="reverse")


@pytest.mark.parametrize("loc, scale", [(0.0, 1.0), ([0.5, -1.0, 2.0], [0.3, 1.0, 4.0]), (1.5, 1e-2)])
def test_diagonal_affine_start_is_pyroflows_own(loc, scale):
    t = tlin.DiagonalAffine(D, loc=loc, scale=scale)
    j = jlin.DiagonalAffine(D, loc=loc, scale=scale)
    for name in ("shift", "raw_scale"):
        np.testing.assert_allclose(np.asarray(j.params[f"head.{name}"]), getattr(t.head, name).detach().numpy(),
                                   rtol=1e-6, atol=1e-7)
    for kwargs in ({"scale": 1e-3}, {"loc": [1.0, 2.0]}, {"loc": np.inf}):
        with pytest.raises(ValueError, match="DiagonalAffine's"):
            jlin.DiagonalAffine(D, **kwargs)


@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_actnorm_initialize_matches_pyroflows_first_call(context_dim, direction):
    torch.manual_seed(0)
    t = tlin.ActNorm(D, context_dim, H).double()
    j = numpyroflows.import_params(JFlow([jlin.ActNorm(D, context_dim, H)]),
                                   pyroflows.export_params(TFlow([t]))).transforms[0]
    assert float(j.params["initialized"]) == 0.0
    x, ctx = _data(context_dim, batch=(64,))
    x = 3.0 + 2.0 * x
    x[:, 1] = 4.0  # zero spread: scale stays 1
    tctx = None if ctx is None else torch.as_tensor(ctx)
    jctx = None if ctx is None else jnp.asarray(ctx)
    with torch.no_grad():
        fn = t.forward_and_log_det if direction == "forward" else t.inverse_and_log_det
        yt, ldt = fn(torch.as_tensor(x), tctx)
    j2 = jax.jit(lambda a, v: a.initialize(v, direction))(j, jnp.asarray(x))
    fn = j2.forward_and_log_det if direction == "forward" else j2.inverse_and_log_det
    yj, ldj = fn(jnp.asarray(x), jctx)
    np.testing.assert_allclose(np.asarray(yj), yt.numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(ldj), ldt.numpy(), **TOL)
    state = {k: v.numpy() for k, v in t.state_dict().items()}
    assert set(state) == set(j2.params)
    for k, v in state.items():
        np.testing.assert_allclose(np.asarray(j2.params[k]), v, **TOL)
    # initialised layers are left alone (as in pyroflows), until reset
    j3 = j2.initialize(jnp.asarray(x) * 10.0, direction)
    assert all(bool(jnp.all(j3.params[k] == j2.params[k])) for k in j2.params)
    assert float(j2.reset_initialization().params["initialized"]) == 0.0


def test_initialize_flow_matches_pyroflows_first_log_prob():
    torch.manual_seed(0)
    tflow = TFlow([tlin.ActNorm(D), tlin.LULinear(D, seed=2), tlin.ActNorm(D)]).double()
    jflow = numpyroflows.import_params(JFlow([jlin.ActNorm(D), jlin.LULinear(D, seed=2), jlin.ActNorm(D)]),
                                       pyroflows.export_params(tflow))
    x = 1.0 + 3.0 * _data(0, batch=(50,))[0]
    with torch.no_grad():
        tflow().log_prob(torch.as_tensor(x))  # pyroflows initialises its ActNorms here
    jflow = jlin.initialize_flow(jflow, jnp.asarray(x))
    for k, v in tflow.state_dict().items():
        np.testing.assert_allclose(np.asarray(jflow.params[k]), v.numpy(), **TOL)
    _compare(tflow, jflow, x, None)


def test_jit_grad_float32_and_integer_buffers():
    """A flow with permutations and ActNorm differentiates as a whole (buffers are float leaves with zero gradient),
    in float32 too; imported integer buffers are converted."""
    tflow, jflow = _pair("BNAF-gated", 0)
    assert all(jnp.issubdtype(v.dtype, jnp.floating) for v in jflow.params.values())
    flow = JFlow([jlin.ActNorm(D), jlin.RandomPermutation(D, seed=1), jlin.LULinear(D),
                  jbnaf.BlockNAFTransform(D, hidden_factor=2, residual="gated", orientation="maf"),
                  jlin.Householder(D), jlin.DiagonalAffine(D)])
    x = jnp.asarray(_data(0)[0], jnp.float32)
    flow32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), flow)
    lp, grads = jax.jit(jax.value_and_grad(lambda f: f().log_prob(x).mean()))(flow32)
    assert lp.dtype == jnp.float32 and bool(jnp.isfinite(lp))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.params.values())
    assert float(jnp.abs(grads.params["transforms.1.perm"]).max()) == 0.0


def test_config_round_trip():
    from numpyroflows.transforms.base import from_config

    for t in [jlin.RandomPermutation(4, seed=3), jlin.ReversePermutation(4), jlin.Permutation(3, [2, 0, 1]),
              jlin.LULinear(4, 2, H, seed=5), jbnaf.BlockNAFTransform(4, 2, 2, 1, residual="gated", orientation="maf"),
              jlin.ActNorm(4), jlin.Householder(4, count=3)]:
        t2 = from_config(t.config())
        assert type(t2) is type(t) and set(t2.params) == set(t.params)
        if "perm" in t.params:
            np.testing.assert_array_equal(np.asarray(t2.params["perm"]), np.asarray(t.params["perm"]))

"""pyroflows and numpyroflows compute the same flows: every catalogue entry (tests/catalogue.py), built in pyroflows
with perturbed parameters, exported and imported into its numpyroflows build, gives the same log-densities, forward and
inverse values and log-determinants (float64, 1e-9) on the same inputs, with a context and without, and its parameters
go back to pyroflows unchanged. (Transform-level parity of single classes and their options lives in
tests/test_parity/test_coupling_elementwise.py, tests/test_parity/test_linear_bnaf.py and
tests/test_parity/test_planar_radial_sylvester.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from catalogue import CATALOGUE, NAMES, build_pair, context_dims, jax_backend, to_support, torch_backend  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from numpyroflows import flows as jflows  # noqa: E402

TOL = {"atol": 1e-9, "rtol": 1e-9}
PAIRS = [(n, c) for n in NAMES for c in context_dims(n)]


def _inputs(name: str, context_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Base-side ``x`` and data-side ``y`` (3 rows 10x further out: beyond the spline bounds; the base side of a flow
    onto a bounded support stays moderate, where its squashing layer is invertible in floating point) and a
    context."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=(16, 3)) * 2
    u[:3] *= 10
    x = rng.normal(size=(16, 3)) if CATALOGUE[name].support else u
    ctx = rng.normal(size=(16, context_dim)) if context_dim else None
    return x, to_support(name, u), ctx


@jax.jit
def _jax_side(flow, x, y, ctx):
    t = flow.transform(ctx)
    return {"log_prob": flow(ctx).log_prob(y), "forward": t.forward_and_log_det(x), "inverse": t.inverse_and_log_det(y),
            "round_trip": t(t.inv(y))}


@torch.no_grad()
def _torch_side(flow, x, y, ctx):
    t = flow.transform(ctx)
    out = {"log_prob": flow(ctx).log_prob(y), "forward": t.forward_and_log_det(x), "inverse": t.inverse_and_log_det(y)}
    return jax.tree_util.tree_map(lambda a: a.numpy(), out)


@pytest.mark.parametrize("name,context_dim", PAIRS)
def test_same_parameters_same_densities_and_maps(name, context_dim, subtests):
    tflow, jflow = build_pair(name, context_dim)
    assert set(jflow.params) == set(pyroflows.export_params(tflow))
    x, y, ctx = _inputs(name, context_dim)
    want = _torch_side(tflow, *(None if a is None else torch.as_tensor(a) for a in (x, y, ctx)))
    got = _jax_side(jflow, *(None if a is None else jnp.asarray(a) for a in (x, y, ctx)))
    for what in ("log_prob", "forward", "inverse"):
        with subtests.test(what):
            for g, w in zip(jax.tree_util.tree_leaves(got[what]), jax.tree_util.tree_leaves(want[what])):
                assert g.shape == w.shape
                np.testing.assert_allclose(np.asarray(g), w, **TOL)
    with subtests.test("numpyroflows' exact inverse of fresh data"):
        np.testing.assert_allclose(np.asarray(got["round_trip"]), y, atol=1e-10)
    with subtests.test("parameters back to pyroflows"):
        back = torch_backend().build(CATALOGUE[name], 3, context_dim, seed=1).double()
        pyroflows.import_params(back, numpyroflows.export_params(jflow))
        for k, v in tflow.state_dict().items():  # buffers (perm, inv_perm, initialized) included
            assert back.state_dict()[k].dtype == v.dtype, k
            torch.testing.assert_close(back.state_dict()[k], v, atol=0, rtol=0)


def test_jit_grad_and_numpyro_module():
    import numpyro
    from numpyro import handlers

    jflow = jflows.NSF(3, num_transforms=2, hidden_dims=(8, 8), key=jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 3)))

    @jax.jit
    def loss(flow):
        return -flow().log_prob(x).mean()

    grads = jax.grad(loss)(jflow)
    assert set(grads.params) == set(jflow.params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.params.values())

    def model():
        flow = numpyroflows.module("flow", jflow)
        numpyro.sample("x", flow(), obs=x)

    trace = handlers.trace(handlers.seed(model, 0)).get_trace()
    names = {k for k, v in trace.items() if v["type"] == "param"}
    assert names == {f"flow${k}" for k in jflow.params}


def test_numpyroflows_load_refuses_an_older_file_format(tmp_path):
    import json

    _, jflow = build_pair("MAF", 0)
    path = tmp_path / "old.npz"
    meta = json.dumps({"format": "numpyroflows", "version": 1, "config": jflow.config()})
    np.savez(path, __meta__=np.array(meta), **{f"param:{k}": np.asarray(v) for k, v in jflow.params.items()})
    with pytest.raises(ValueError, match="format version 1.*Refit the flow"):
        numpyroflows.load(path)


def test_custom_base_distribution_matches_pyroflows():
    import numpyro.distributions as ndist
    import pyro.distributions as pdist

    loc, scale = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 1.5])
    tflow, _ = build_pair("MAF", 0)
    tflow.base = pdist.Normal(torch.as_tensor(loc), torch.as_tensor(scale)).to_event(1)
    jbase = ndist.Normal(jnp.asarray(loc), jnp.asarray(scale)).to_event(1)
    jflow = numpyroflows.import_params(jflows.Flow(jax_backend().build(CATALOGUE["MAF"], 3, 0).transforms, base=jbase),
                                       pyroflows.export_params(tflow))
    x = np.random.default_rng(4).normal(size=(7, 3))
    np.testing.assert_allclose(np.asarray(jflow().log_prob(jnp.asarray(x))),
                               tflow().log_prob(torch.as_tensor(x)).detach().numpy(), atol=1e-9, rtol=1e-9)
    xs, lp = jflow().sample_and_log_prob(jax.random.PRNGKey(0), (5,))
    np.testing.assert_allclose(np.asarray(lp), np.asarray(jflow().log_prob(xs)), atol=1e-9)
    with pytest.raises(ValueError, match="custom base"):
        jflow.config()

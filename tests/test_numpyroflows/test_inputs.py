"""Edge inputs to numpyroflows (the torch twin is ``tests/test_pyroflows/test_inputs.py``). Inputs of any dtype are
computed in the flow's precision: integer, bool and low-precision floats are promoted before any pass, so an
autoregressive flow's slow direction (which writes into an array shaped like its input) no longer truncates its outputs
to the input's dtype. An empty batch is a batch."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
import jax.numpy as jnp  # noqa: E402

from numpyroflows import flows as F  # noqa: E402

X = np.array([[1, 2, 0], [0, -1, 3]])
F32 = {"dtype": jnp.float32}  # float32 flows, with x64 on (as in the whole suite) or off
RECIPES = {
    "IAF": lambda k: F.IAF(3, num_transforms=2, hidden_dims=(8,), key=k, **F32),  # log_prob is the slow direction
    "MAF": lambda k: F.MAF(3, num_transforms=2, hidden_dims=(8,), key=k, **F32),  # sampling (T(z)) is
    "NSF": lambda k: F.NSF(3, num_transforms=2, hidden_dims=(8,), count_bins=4, key=k, **F32),
}


def _perturbed(name: str):
    flow = RECIPES[name](jax.random.PRNGKey(0))
    leaves, treedef = jax.tree.flatten(flow)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    moved = [leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, moved)


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.bfloat16, jnp.float16])
def test_every_direction_computes_in_the_flows_precision(name, dtype):
    flow = _perturbed(name)
    x = jnp.asarray(X, dtype=dtype)
    exact = jnp.asarray(x, dtype=jnp.float32)  # the same values, as float32
    assert flow().log_prob(x).dtype == jnp.float32
    np.testing.assert_allclose(flow().log_prob(x), flow().log_prob(exact), rtol=1e-6)
    t = flow.transform()
    for fn in (t, t.inv):
        out = fn(x)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, fn(exact), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("orientation", ["maf", "iaf"])
def test_bnaf_takes_an_empty_batch(orientation):
    """A batch of zero points gives zero densities and zero outputs (it divided by zero reshaping the Jacobian)."""
    flow = F.BNAF(3, num_transforms=1, hidden_factor=2, orientation=orientation, key=jax.random.PRNGKey(0))
    empty = np.zeros((0, 3), np.float32)
    assert flow().log_prob(empty).shape == (0,)
    assert flow.transform()(empty).shape == (0, 3) and flow.transform().inv(empty).shape == (0, 3)

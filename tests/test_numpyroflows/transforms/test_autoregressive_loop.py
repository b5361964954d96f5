"""numpyroflows' autoregressive slow direction: the ``lax.scan`` loop over the dimensions (taken for large batches on
an accelerator) computes what the unrolled loop computes.

The slow direction (a MAF's sampling/forward map, an IAF's density/inverse map) determines one dimension per pass.
:mod:`numpyroflows.transforms.autoregressive` unrolls that loop under ``jit``, except from
:data:`~numpyroflows.transforms.autoregressive.SCAN_MIN_BATCH` points on a non-CPU backend, where a ``lax.scan`` was
faster on an H100. CI has no GPU, so both loops are forced here on the CPU and compared in float64: values,
log-determinants and gradients with respect to every parameter, for every transformer, both orientations, a random
order and a broadcast context.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
import jax.numpy as jnp  # noqa: E402

from numpyroflows.transforms import autoregressive as AR  # noqa: E402
from numpyroflows.transforms.transformers import TRANSFORMERS  # noqa: E402

D = 4


def _transform(transformer: str, orientation: str, context_dim: int) -> AR.AutoregressiveTransform:
    t = AR.AutoregressiveTransform(D, transformer, context_dim, hidden_dims=(12, 12), orientation=orientation,
                                   order=(2, 0, 3, 1), count_bins=5, bound=3.0, key=jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), len(t.params))
    return t.with_params({k: jnp.asarray(v, jnp.float64) + 0.3 * jax.random.normal(kk, v.shape, jnp.float64)
                          for kk, (k, v) in zip(keys, t.params.items())})


def _slow_direction(t: AR.AutoregressiveTransform, params: dict, y: jax.Array, ctx):
    t = t.with_params(params)
    return t._sequential(t.params, y, ctx)


#: every transformer with a context (the broadcast case), and the context-free path once per orientation
CASES = [(t, o, 3) for t in sorted(TRANSFORMERS) for o in ("maf", "iaf")] + [("affine", o, 0) for o in ("maf", "iaf")]


@pytest.mark.parametrize("transformer,orientation,context_dim", CASES)
def test_scan_loop_equals_unrolled_loop(monkeypatch, transformer, orientation, context_dim):
    with jax.enable_x64(True):
        t = _transform(transformer, orientation, context_dim)
        rng = np.random.default_rng(2)
        y = jnp.asarray(rng.normal(size=(5, 1, D)) * 2)  # broadcast against the context's batch (5, 2)
        ctx = jnp.asarray(rng.normal(size=(5, 2, context_dim))) if context_dim else None

        def run(params):
            out, ld = _slow_direction(t, params, y, ctx)
            return jnp.sum(out * jnp.cos(out)) + jnp.sum(ld), (out, ld)

        results = {}
        for scan in (False, True):
            monkeypatch.setattr(AR, "_scan_the_dimensions", lambda batch, scan=scan: scan)
            grads, (out, ld) = jax.jit(jax.grad(run, has_aux=True))(t.params)
            results[scan] = out, ld, grads
        batch = (5, 2) if context_dim else (5, 1)
        assert results[True][0].shape == batch + (D,) and results[True][1].shape == batch
        for a, b in zip(jax.tree_util.tree_leaves(results[True]), jax.tree_util.tree_leaves(results[False])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
        # and the loop really is the slow direction's inverse: the fast direction maps the result back
        fast = t._one_pass(t.params, results[True][0], ctx)[0]
        np.testing.assert_allclose(np.asarray(fast), np.asarray(jnp.broadcast_to(y, fast.shape)), rtol=1e-9,
                                   atol=1e-9)


def test_scan_is_chosen_for_large_batches_off_the_cpu(monkeypatch):
    assert not AR._scan_the_dimensions((2**20,)) or jax.default_backend() != "cpu"  # never on the CPU backend
    monkeypatch.setattr(AR.jax, "default_backend", lambda: "gpu")
    assert AR._scan_the_dimensions((AR.SCAN_MIN_BATCH,)) and AR._scan_the_dimensions((2**10, 2**6))
    assert not AR._scan_the_dimensions((AR.SCAN_MIN_BATCH - 1,)) and not AR._scan_the_dimensions(())
    monkeypatch.setattr(AR.jax, "default_backend", lambda: "cpu")
    assert not AR._scan_the_dimensions((2**20,))

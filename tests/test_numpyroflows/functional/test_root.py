"""numpyroflows.functional.root: bracketed bisection under jit/vmap and implicit-function gradients."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from numpyroflows.functional.root import bisect_increasing, newton_polish  # noqa: E402


def _cubic(a):
    return lambda x: x**3 + a * x


def test_bisection_solves_far_outside_the_initial_bracket_under_jit():
    a = jnp.array([0.5, 2.0, 3.0])
    target = jnp.array([1e3, -20.0, 0.1])
    x = jax.jit(lambda t: bisect_increasing(_cubic(a), t, jnp.zeros(3), jnp.ones(3)))(target)
    assert jnp.max(jnp.abs(_cubic(a)(x) - target)) < 1e-8


def test_polished_root_has_implicit_function_gradients():
    def solve(a, t):
        x = bisect_increasing(_cubic(a), t, jnp.zeros_like(t), jnp.ones_like(t))
        return newton_polish(lambda v: (_cubic(a)(v), 3 * v**2 + a), x, t)

    a, t = jnp.array(1.5), jnp.array(4.0)
    x = solve(a, t)
    dx_dt, dx_da = jax.grad(solve, argnums=1)(a, t), jax.grad(solve, argnums=0)(a, t)
    fprime = 3 * x**2 + a
    assert jnp.allclose(dx_dt, 1 / fprime, rtol=1e-10)
    assert jnp.allclose(dx_da, -x / fprime, rtol=1e-10)
    batched = jax.vmap(solve, in_axes=(None, 0))(a, jnp.array([4.0, -3.0]))
    assert jnp.allclose(batched[0], x)


def test_an_unreachable_target_comes_back_nan_not_a_wrong_number():
    """tanh never reaches 2: the solve cannot bracket a root and says so with NaN (it returned 3.7e19)."""
    x = bisect_increasing(jnp.tanh, jnp.array([2.0, 0.5]), jnp.array([-1.0, -1.0]), jnp.array([1.0, 1.0]))
    assert bool(jnp.isnan(x[0])) and float(x[1]) == pytest.approx(float(jnp.arctanh(0.5)), abs=1e-5)

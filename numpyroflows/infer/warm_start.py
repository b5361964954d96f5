"""The warm start of :class:`~numpyroflows.infer.AutoFlowGuide`: the mode of ``log p(u)`` by L-BFGS (one compiled
loop) and the Hessian there, both in float64 (under ``jax.enable_x64``) whatever the model's dtype, and the Monte Carlo
ELBO that compares starting flows. The stopping rule, tolerances and seeds are those of pyroflows' warm start
(shared through :mod:`flowcommon.guide`), so both packages place a guide alike.

The algebra that turns the Hessian into the guide's layers is backend-free (:mod:`flowcommon.guide`).

References: Liu & Nocedal (1989), "On the limited memory BFGS method for large scale optimization"; MacKay (2003),
"Information Theory, Inference, and Learning Algorithms", ch. 27 (Laplace's method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers

from flowcommon import guide as common

from .._dtype import is_buffer
from ..flows.core import Flow

Array = jax.Array


@dataclass
class Mode:
    """What :func:`find_mode` found: the best point ``loc`` (NumPy float64), ``-log p`` there, the search's outcome,
    and for ``"laplace"`` the lower Cholesky factor of ``H⁻¹`` (NumPy float64; ``None`` where it fell back to
    ``"map"``)."""

    loc: np.ndarray
    value: float
    iterations: int
    converged: bool
    message: str
    method: str
    factor: np.ndarray | None
    floored: int


def minimize_lbfgs(fn: Callable[[Array], Array], u0: Array, num_steps: int
                   ) -> tuple[Array, Array, Array, Array, Array]:
    """Minimise ``fn`` from ``u0`` with optax's L-BFGS (zoom line search, strong Wolfe), keeping the best point (the
    lowest value; of equal values, the one with the smaller gradient).

    One ``while_loop`` (jit-able); stops when max |∇fn| <= ``GTOL``, when ``fn`` no longer decreases (the best value
    not improved by ``FTOL_EPS`` machine epsilons, relative, in ``PATIENCE`` iterations), after ``num_steps``
    iterations, or when a new iterate's value or gradient is not finite (the line search itself steps back from
    non-finite trial points). Returns ``(best u, fn(best u), its gradient, iterations, exit code)``, exit codes as in
    :mod:`flowcommon.guide`."""
    opt = optax.lbfgs(memory_size=common.LBFGS_HISTORY, linesearch=optax.scale_by_zoom_linesearch(
        max_linesearch_steps=common.LINE_SEARCH_EVALS, initial_guess_strategy="one"))
    value_and_grad = optax.value_and_grad_from_state(fn)
    eps = jnp.finfo(u0.dtype).eps

    def cond(carry: tuple) -> Array:
        return (carry[2] < num_steps) & (carry[7] == common.RUNNING)

    def body(carry: tuple) -> tuple:
        u, state, it, best_u, best_v, best_g, stalls, _ = carry
        v, g = value_and_grad(u, state=state)
        updates, state = opt.update(g, state, u, value=v, grad=g, value_fn=fn)
        u = optax.apply_updates(u, updates)
        v_new = optax.tree_utils.tree_get(state, "value")
        g_new = optax.tree_utils.tree_get(state, "grad")
        finite = jnp.isfinite(v_new) & jnp.all(jnp.isfinite(g_new)) & jnp.all(jnp.isfinite(u))
        progress = finite & (v_new < best_v - common.FTOL_EPS * eps * (1 + jnp.abs(best_v)))
        flatter = jnp.max(jnp.abs(g_new)) < jnp.max(jnp.abs(best_g))
        better = finite & ((v_new < best_v) | ((v_new == best_v) & flatter))  # ties: the smaller gradient
        best_u, best_v = jnp.where(better, u, best_u), jnp.where(better, v_new, best_v)
        best_g = jnp.where(better, g_new, best_g)
        stalls = jnp.where(progress, 0, stalls + 1)
        code = jnp.where(~finite, common.NOT_FINITE, jnp.where(
            jnp.max(jnp.abs(g_new)) <= common.GTOL, common.GRAD_SMALL,
            jnp.where(stalls >= common.PATIENCE, common.NO_DECREASE, common.RUNNING)))
        return u, state, it + 1, best_u, best_v, best_g, stalls, code

    v0, g0 = jax.value_and_grad(fn)(u0)
    code0 = jnp.where(jnp.max(jnp.abs(g0)) <= common.GTOL, common.GRAD_SMALL, common.RUNNING)
    carry = (u0, opt.init(u0), jnp.asarray(0), u0, v0, g0, jnp.asarray(0), code0)
    _, _, it, best_u, best_v, best_g, _, code = jax.lax.while_loop(cond, body, carry)
    return best_u, best_v, best_g, it, code


def _is_flat(fn: Callable[[Array], Array], u0: Array) -> bool:
    """Whether ``fn`` is constant: the same value and a zero gradient at ``u0`` and at ``u0 + 1`` (a probe: JAX does
    not tell whether a result depends on an input)."""
    (v0, g0), (v1, g1) = (jax.value_and_grad(fn)(u) for u in (u0, u0 + 1.0))
    return bool(v0 == v1) and not bool(jnp.any(g0 != 0)) and not bool(jnp.any(g1 != 0))


def neg_log_density(potential: Callable, unpack: Callable) -> Callable[[Array], Array]:
    """``u -> -log p(u)``: NumPyro's potential energy (``potential``, of a dict of unconstrained values) of the
    unpacked latent vector (``unpack``: the guide's ``_unpack_latent``)."""

    def fn(u: Array) -> Array:
        with handlers.block():  # invisible to the handlers around the guide (SVI.init's trace and seed)
            return potential(unpack(u))

    return fn


def find_mode(fn: Callable[[Array], Array], u0: Array, method: str, num_steps: int, init_scale: float) -> Mode:
    """The mode of ``log p = -fn`` from ``u0``, in float64 (``jax.enable_x64``: the model's own arrays follow JAX's
    type promotion), and for ``method="laplace"`` the factor of ``H⁻¹`` at it (``jax.hessian``;
    :func:`flowcommon.guide.laplace_outcome`, which falls back to ``"map"`` where it must). A ``ValueError`` where
    ``log p`` does not depend on ``u``."""
    with jax.enable_x64(True):
        start = jnp.asarray(np.asarray(u0, np.float64))
        loc, value, grad, iterations, code = jax.jit(lambda u: minimize_lbfgs(fn, u, num_steps))(start)
        iterations, code = int(iterations), int(code)
        if code == common.GRAD_SMALL and iterations == 0 and _is_flat(fn, start):
            raise common.FlatDensityError(common.FLAT_DENSITY_MESSAGE)
        loc64, value = np.asarray(loc, np.float64), float(value)
        rel = common.relative_gradient(np.asarray(grad), loc64, value)
        converged, message = common.describe_search(code, iterations, num_steps, value, rel,
                                                    "log p(u) or its gradient at the new point")
        factor, floored = None, 0
        if method == "laplace":
            hess = np.asarray(jax.jit(jax.hessian(fn))(loc), np.float64)
            factor, floored, message = common.laplace_outcome(hess, init_scale, message)
            method = "laplace" if factor is not None else "map"
    return Mode(loc64, value, iterations, converged, message, method, factor, floored)


def start_elbo(flow: Flow, fn: Callable[[Array], Array]) -> float:
    """Monte Carlo ELBO ``E_q[log p(u) - log q(u)]`` of a starting flow from ``START_ELBO_DRAWS`` draws under the
    fixed key ``SEED`` (the same draws for every flow compared); ``nan`` where it is not finite."""
    u, log_q = flow().sample_and_log_prob(jax.random.PRNGKey(common.SEED), (common.START_ELBO_DRAWS,))
    value = float(jnp.mean(-jax.vmap(fn)(u) - log_q))
    return value if np.isfinite(value) else float("nan")


def base_draws(flow: Flow, n: int, latent_dim: int) -> Array:
    """``n`` base draws of ``flow`` under the fixed key ``SEED``: standard normal in the flow's parameter dtype, or
    from its custom base (as pyroflows' ``base_draws``)."""
    key = jax.random.PRNGKey(common.SEED)
    if flow.base is not None:
        return flow.base.sample(key, (n,))
    dtypes = [v.dtype for k, v in flow.params.items() if jnp.issubdtype(v.dtype, jnp.floating) and not is_buffer(k)]
    return jax.random.normal(key, (n, latent_dim), jnp.result_type(*dtypes) if dtypes else jnp.result_type(float))

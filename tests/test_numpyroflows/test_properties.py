"""Property-based tests (hypothesis) of numpyroflows far outside the spline bound: the JAX twin of
tests/test_pyroflows/test_properties.py.

The failure written against is the classic one of spline flows: the map is fine far outside ``[-bound, bound]``
(identity or linear tails) but its *gradient* is NaN there, because the tail branch is picked with ``where`` after the
interior formula was evaluated on out-of-range values (``0 · inf = NaN`` in the backward pass of a square root, a log
or a division): FlowJAX issue #239 ("NaN gradients for rational quadratic spline outside the interval") and nflows
issue #23. In JAX the trap is sharper than in torch, because ``jnp.where`` differentiates both branches.

Transformer kernels (:mod:`numpyroflows.functional` ``spline``, ``bspline``, ``mixture``), float64 and float32, raw
parameters anywhere in ``[-20, 20]`` and inputs up to ``1e3 × bound`` including the bounds, the knots and their
floating-point neighbours:

* forward and inverse values and log-derivatives are finite, and both round trips hold to a tolerance set by the
  conditioning of the map at that point;
* gradients of the values and log-derivatives with respect to inputs and raw parameters are finite;
* in float64 the autodiff derivative of the map equals ``exp(log-derivative)`` (a wrong gradient that is finite).

Whole flows of the catalogue (tests/catalogue.py), one per recipe and elementwise transformer (MAF, NSF, IAF-spline,
Coupling-spline, Coupling-mixture, RealNVP, NICE, BNAF, Planar, Radial, Sylvester, Elementwise with each of affine,
spline and bspline), 2-D, float64 and float32, parameters
randomly perturbed (Gaussian noise of a drawn scale up to 3 added to every leaf of ``flow.params``, then
``flow.with_params``) and inputs up to ``±1e4`` (more than ``1e3 × bound``): samples ``T(z)`` and their ``log q``
(the forward pass), ``log_prob(x)`` (the inverse pass) are finite, and so are their gradients with respect to every
parameter and to the inputs. (Much larger perturbations reach genuine overflow: at scale 30 BNAF's weights are
``exp(70)`` and its float32 Jacobian overflows.)

Precision: ``jax.enable_x64`` is used as a context manager inside each test, so this file neither needs nor leaves a
global x64 setting (float32 really runs with x64 off, as users see it). Compile time: one jitted function per
(kernel or recipe, dtype), fed arrays of fixed shapes (hypothesis varies only the values), so each compiles once.
All hypothesis runs are derandomized with bounded ``max_examples`` and no deadline.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
import jax.numpy as jnp  # noqa: E402
from catalogue import CATALOGUE, jax_backend, perturb_jax  # noqa: E402

from numpyroflows.functional import bspline as F_bs  # noqa: E402
from numpyroflows.functional import mixture as F_mix  # noqa: E402
from numpyroflows.functional import spline as F_rqs  # noqa: E402
from numpyroflows.functional.root import default_tol  # noqa: E402

BOUND = 3.0
FAR = 1e3 * BOUND  # kernels: inputs up to 1e3 x the spline bound
FAR_FLOW = 1e4  # whole flows: up to 1e4 (also > 1e3 x bound for the spline flows)
RAW = 20.0  # kernels: raw parameters drawn from [-RAW, RAW]
DTYPES = ("float64", "float32")

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _precision(dtype: str):
    """x64 on for float64 and off for float32, restored on exit (no global setting leaks to other test files)."""
    return jax.enable_x64(dtype == "float64")


def test_precision_context_restores_the_x64_setting():
    before = jax.config.read("jax_enable_x64")
    for dtype in DTYPES:
        with _precision(dtype):
            assert jnp.zeros(1).dtype == np.dtype(dtype)
        assert jax.config.read("jax_enable_x64") == before


def _finite(a) -> bool:
    return bool(np.all(np.isfinite(np.asarray(a))))


def _where_bad(a, *named) -> str:
    """The inputs at the first non-finite entry of ``a`` (for the failure message)."""
    bad = ~np.isfinite(np.asarray(a))
    i = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return ", ".join(f"{k}={np.asarray(v)[i]!r}" for k, v in named) + f" (index {i})"


# ============================================================================================ transformer kernels
KERNELS = {
    "spline": (lambda x, p: F_rqs.rqs_forward(x, p, BOUND), lambda y, p: F_rqs.rqs_inverse(y, p, BOUND),
               F_rqs.num_params(5)),
    "bspline": (lambda x, p: F_bs.bspline_forward(x, p, BOUND), lambda y, p: F_bs.bspline_inverse(y, p, BOUND),
                F_bs.num_params(5)),
    "mixture": (F_mix.mixture_forward, F_mix.mixture_inverse, F_mix.num_params(3)),
}
P_MAX = max(k[2] for k in KERNELS.values())
N_COLS, N_ROWS = 4, 6  # parameter rows (one map per column) and inputs per column: fixed shapes, one compile
# Round-trip tolerance, in units of eps · (1 + |x| + (1 + |y|) / τ'(x)), as in tests/test_pyroflows/test_properties.py:
# the RQ spline works with bin-local ratios up to ~1e3 (minimum bin size and derivative 1e-3), the others stay within a
# few units.
ROUND_TRIP_UNITS = {"spline": 1e3, "bspline": 64.0, "mixture": 64.0}

# An input element is a plain value, or a reference to a knot of the map ("knot", index, nudge), resolved once the
# parameters are known: the knot itself (nudge 0) or its floating-point neighbour below (-1) / above (+1).
_SPECIAL = [-FAR, -BOUND, 0.0, BOUND, FAR, -BOUND * (1 + 1e-7), BOUND * (1 + 1e-7), -BOUND * (1 - 1e-7),
            BOUND * (1 - 1e-7), 1e-30, -1e-30]
_VALUE = st.one_of(
    st.floats(-FAR, FAR, allow_nan=False, allow_infinity=False),
    st.floats(-3 * BOUND, 3 * BOUND, allow_nan=False, allow_infinity=False),
    st.sampled_from(_SPECIAL),
)
_ELEMENT = st.one_of(_VALUE, st.tuples(st.just("knot"), st.integers(0, 16), st.sampled_from([-1, 0, 1])))
_RAW = st.one_of(st.floats(-RAW, RAW, allow_nan=False, allow_infinity=False), st.sampled_from([-RAW, 0.0, RAW]))
_ROWS = st.lists(st.lists(_RAW, min_size=P_MAX, max_size=P_MAX), min_size=N_COLS, max_size=N_COLS)
_TABLE = st.lists(st.lists(_ELEMENT, min_size=N_COLS, max_size=N_COLS), min_size=N_ROWS, max_size=N_ROWS)


def _knot_table(name: str, params: jax.Array, side: int) -> np.ndarray:
    """``(N_COLS, k)`` knots of each column's map on the input side (0) or the output side (1)."""
    if name == "spline":
        kx, ky, _ = F_rqs.spline_knots(params, BOUND)
        return np.asarray(kx if side == 0 else ky)
    if name == "bspline":
        v, _ = F_bs.bspline_knots(params, BOUND)
        k = params.shape[-1] - 2
        grid = np.broadcast_to(np.arange(k + 1) * (2 * BOUND / k) - BOUND, v.shape).astype(v.dtype)
        return grid if side == 0 else np.asarray(v)
    _, _, centers, _ = F_mix.mixture_params(params)  # the inflection points of the sigmoids
    return np.asarray(centers if side == 0 else F_mix.mixture_forward(centers, params[:, None, :])[0])


def _resolve(name: str, table: list, params: jax.Array, side: int, dtype: str) -> np.ndarray:
    knots = _knot_table(name, params, side).astype(dtype)
    out = np.empty((N_ROWS, N_COLS), dtype=dtype)
    for i, row in enumerate(table):
        for j, e in enumerate(row):
            if isinstance(e, tuple):
                _, idx, nudge = e
                v = knots[j, idx % knots.shape[1]]
                out[i, j] = np.nextafter(v, np.asarray(math.copysign(math.inf, nudge), dtype)) if nudge else v
            else:
                out[i, j] = e
    return out


@functools.partial(jax.jit, static_argnums=0)
def _kernel_battery(name: str, x: jax.Array, y: jax.Array, params: jax.Array) -> dict:
    """Values, round trips and the vjp of each output w.r.t. (input, params), for inputs ``x`` and fresh ``y``."""
    fwd, inv, _ = KERNELS[name]
    ones, zeros = jnp.ones_like(x), jnp.zeros_like(x)
    out = {}
    (out["y"], out["ld"]), pull = jax.vjp(fwd, x, params)
    out["dy/dx"], out["dy/dp"] = pull((ones, zeros))
    out["dld/dx"], out["dld/dp"] = pull((zeros, ones))
    out["x_back"], out["ld_back"] = inv(out["y"], params)
    (out["x_inv"], out["ild"]), pull = jax.vjp(inv, y, params)  # ild: the forward log-derivative at x_inv
    out["dx/dy"], out["dx/dp"] = pull((ones, zeros))
    out["dild/dy"], out["dild/dp"] = pull((zeros, ones))
    out["y_back"], _ = fwd(out["x_inv"], params)
    return out


def _kernel_case(name: str, dtype: str, rows: list, table: list) -> tuple[np.ndarray, np.ndarray, dict]:
    p = KERNELS[name][2]
    params = jnp.asarray(np.asarray([r[:p] for r in rows], dtype=dtype))
    x, y = _resolve(name, table, params, 0, dtype), _resolve(name, table, params, 1, dtype)
    out = {k: np.asarray(v) for k, v in _kernel_battery(name, jnp.asarray(x), jnp.asarray(y), params).items()}
    for k, v in out.items():
        assert v.dtype == np.dtype(dtype), f"{name}: {k} is {v.dtype}, expected {dtype}"
    return x, y, out


# Regression examples (rows cut to each kernel's parameter count), after tests/test_pyroflows/test_properties.py: a
# small derivative at an interior knot with the inverse just below that knot's ordinate; a steep B-spline slope next to
# a flat last one with y above the last knot value; the RQ inverse at exactly y = +bound; and a flat RQ bin with a steep
# right derivative just below the knot (where the textbook root cancels).
def _pad(row: list[float]) -> list[float]:
    return list(row) + [0.0] * (P_MAX - len(row))


_CASES = [
    ([_pad([0.0] * 6 + [3.0] + [0.0] * 4 + [-8.0, 0.0, 0.0])], [[("knot", 2, -1)]]),
    ([_pad([19.94723892211914, 4.026679039001465, -14.034411430358887, -4.234523296356201, 14.536144256591797,
            -15.55323314666748, 12.381037712097168])], [[30.466886520385742]]),
    ([_pad([2.75, -3.0, -1.25, -0.25, 2.5, 1.0, 0.0, 0.25, 0.75, -1.5, -1.0, 2.0, 1.5, -0.25])], [[BOUND]]),
    ([_pad([-17.453968048095703, -14.68716812133789, 20.0, 3.186579704284668, 13.224949836730957,
            -7.634930610656738, 20.0, -6.048219203948975, 20.0, 4.202267169952393, -12.638105392456055,
            -5.830611705780029, 16.7997989654541, 18.289308547973633])], [[("knot", 3, -1)]]),
    ([_pad([-RAW] * P_MAX), _pad([RAW] * P_MAX), _pad([0.0] * P_MAX), _pad([RAW, -RAW] * P_MAX)],
     [[-FAR, FAR, BOUND, -BOUND]]),
]


def _tile(case: tuple) -> tuple[list, list]:
    """A small case repeated to the fixed shapes (N_COLS parameter rows, N_ROWS x N_COLS inputs)."""
    rows, table = case
    rows = [rows[j % len(rows)] for j in range(N_COLS)]
    table = [[table[i % len(table)][j % len(table[0])] for j in range(N_COLS)] for i in range(N_ROWS)]
    return rows, table


def _with_cases(test):
    for case in _CASES:
        rows, table = _tile(case)
        test = example(rows=rows, table=table)(test)
    return test


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(KERNELS))
@SETTINGS
@given(rows=_ROWS, table=_TABLE)
@_with_cases
def test_kernel_values_and_gradients_finite(name, dtype, rows, table):
    with _precision(dtype):
        x, y_fresh, out = _kernel_case(name, dtype, rows, table)
    for k in ("y", "ld", "dy/dx", "dld/dx", "x_back", "ld_back"):
        assert _finite(out[k]), f"{name} forward: {k} not finite at " + _where_bad(out[k], ("x", x))
    for k in ("x_inv", "ild", "dx/dy", "dild/dy", "y_back"):
        assert _finite(out[k]), f"{name} inverse: {k} not finite at " + _where_bad(out[k], ("y", y_fresh))
    for k in ("dy/dp", "dld/dp", "dx/dp", "dild/dp"):
        assert _finite(out[k]), f"{name}: {k} not finite (x={x.tolist()}, y={y_fresh.tolist()})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(KERNELS))
@SETTINGS
@given(rows=_ROWS, table=_TABLE)
@_with_cases
def test_kernel_round_trips(name, dtype, rows, table):
    with _precision(dtype):
        x, y_fresh, out = _kernel_case(name, dtype, rows, table)
    eps, units = float(np.finfo(dtype).eps), ROUND_TRIP_UNITS[name]
    y, ld = out["y"].astype(np.float64), out["ld"].astype(np.float64)
    tol = units * eps * (1 + np.abs(x) + (1 + np.abs(y)) * np.exp(-ld))
    err = np.abs(out["x_back"] - x) / tol
    assert err.max() <= 1, f"{name}: x -> y -> x off by {err.max():.3g} x tolerance at " + _where_bad(
        np.where(err == err.max(), np.inf, 0.0), ("x", x), ("x_back", out["x_back"]))
    x3, ld3 = out["x_inv"].astype(np.float64), out["ild"].astype(np.float64)
    tol = units * eps * (1 + np.abs(y_fresh) + np.exp(ld3) * (1 + np.abs(x3)))
    err = np.abs(out["y_back"] - y_fresh) / tol
    assert err.max() <= 1, f"{name}: y -> x -> y off by {err.max():.3g} x tolerance at " + _where_bad(
        np.where(err == err.max(), np.inf, 0.0), ("y", y_fresh), ("y_back", out["y_back"]))


# The autodiff derivative must equal exp(log-derivative): the check a wrong-but-finite gradient fails (a wrong
# formula, or jnp.clip's half gradient at a clamp's end, is off by O(1)). The two sides are different formulas for the
# same number; in log space they differ by
# * the slope of log τ' times the rounding shift of the point: for the forward map at x, δx = eps (1 + |x|); for the
#   inverse at y, the solution carries eps (1 + |x|) + eps (1 + |y|) / τ'(x), plus the mixture's bisection tolerance
#   (its derivative is taken at the bracketed root, its value after a Newton step). The slope d log τ'/dx is the vjp
#   of the log-derivative already computed (finite, by the first test), and the allowance ROUND_TRIP_UNITS times this.
#   It dominates one ulp below a knot at the flat end of a steep RQ bin (knot derivative 2.6e-3, bin slope 135):
#   1.2e-6 apart in float64 (found by hypothesis);
# * cancellation inside the formulas, about eps · ratio² for a ratio of bin-local slopes (the RQ quotient rule at
#   d / s = 150 in the middle of a bin: 6e-12 apart; JAX's sigmoid derivative σ(1 - σ) in a saturated mixture
#   component): a floor of DERIV_FLOOR, far below any wrong formula.
# float64 only: in float32 the closed-form roots' autodiff derivative is lost outright next to a steep-to-flat knot
# (B-spline with raw increments [0, 15, -7, ...], y one ulp below the third knot value: autodiff dx/dy = 0.13 where
# 1/τ'(x) = 390), because it goes through sqrt(b² + 4ar) whose two terms cancel below float32's rounding of b²
# (eps · (s_j / τ')² ≫ 1). The values are right, only that gradient is not; pyroflows' kernels share the formulas
# (tests/test_pyroflows/test_properties.py checks float64 only, for this reason).
DERIV_FLOOR = 1e-9


@pytest.mark.parametrize("name", list(KERNELS))
@SETTINGS
@given(rows=_ROWS, table=_TABLE)
@_with_cases
def test_kernel_autodiff_derivative_equals_exp_log_derivative(name, rows, table):
    with _precision("float64"):
        x, y, out = _kernel_case(name, "float64", rows, table)
    eps, units = float(np.finfo(np.float64).eps), ROUND_TRIP_UNITS[name]
    root_tol = default_tol(np.float64) if name == "mixture" else 0.0
    # an elementwise map: the vjp with a cotangent of ones is the derivative of each output w.r.t. its own input
    err = np.abs(np.log(out["dy/dx"]) - out["ld"])
    tol = DERIV_FLOOR + units * eps * np.abs(out["dld/dx"]) * (1 + np.abs(x))
    assert np.all(err <= tol), f"{name} forward: dy/dx != exp(ld), off by {np.max(err / tol):.3g} x tolerance at " \
        + _where_bad(np.where(err / tol == np.max(err / tol), np.inf, 0.0), ("x", x), ("dy/dx", out["dy/dx"]),
                     ("exp(ld)", np.exp(out["ld"])))
    x_inv, ild = out["x_inv"], out["ild"]
    dx = eps * (1 + np.abs(x_inv)) + eps * (1 + np.abs(y)) * np.exp(-ild) + root_tol * (1 + np.abs(x_inv))
    err = np.abs(np.log(out["dx/dy"]) + ild)
    tol = DERIV_FLOOR + units * np.abs(out["dild/dy"]) * np.exp(ild) * dx  # |d log τ'/dx| = |d ild/dy| · τ'
    assert np.all(err <= tol), f"{name} inverse: dx/dy != exp(-ld), off by {np.max(err / tol):.3g} x tolerance at " \
        + _where_bad(np.where(err / tol == np.max(err / tol), np.inf, 0.0), ("y", y), ("dx/dy", out["dx/dy"]),
                     ("exp(-ld)", np.exp(-ild)))


# ============================================================================================ whole flows
DIM = 2
N_POINTS = 4

#: catalogue entries, one per recipe and elementwise transformer (2-D, unconditional)
FLOWS = ["MAF", "NSF", "IAF-spline", "Coupling-spline", "Coupling-mixture", "RealNVP", "NICE", "BNAF", "Planar",
         "Radial", "Sylvester", "Elementwise-affine", "Elementwise-spline", "Elementwise-bspline"]


@functools.cache
def _base(name: str):
    """The entry's flow with its initial parameters in float64 (built once, with x64 on)."""
    with _precision("float64"):
        return jax_backend().build(CATALOGUE[name], DIM, 0)


def _perturbed(name: str, dtype: str, scale: float, seed: int):
    """The entry with ``scale ·`` standard normal noise added to every parameter (not the buffers), in ``dtype``."""
    return perturb_jax(_base(name), scale, seed, dtype)


@jax.jit
def _flow_battery(flow, z: jax.Array, x: jax.Array) -> dict:
    """Forward (sampling) and inverse (density) passes with their gradients w.r.t. the flow and the inputs.

    The variational path returns samples ``y = T(z)`` and ``log q(y) = log N(z) - log|det ∂T/∂z|``; one backward pass
    with a cotangent of ones on both gives the gradient of ``Σ y + Σ log q``, which is finite exactly when neither
    part has an infinite or NaN gradient (``inf + finite = inf``, ``NaN + anything = NaN``, ``inf - inf = NaN``).
    """
    out = {}

    def sample_and_log_q(f, z):
        y, ld = f.transform().forward_and_log_det(z)
        return y, -0.5 * jnp.sum(z * z, -1) - 0.5 * DIM * math.log(2 * math.pi) - ld

    (out["y"], out["log_q"]), pull = jax.vjp(sample_and_log_q, flow, z)
    out["d(y + log_q)/dparams"], out["d(y + log_q)/dz"] = pull((jnp.ones_like(out["y"]),
                                                                 jnp.ones_like(out["log_q"])))

    def log_p(f, x):  # the density path: the inverse pass (log_prob is finite only if T⁻¹(x) and its log-det are)
        lp = f().log_prob(x)
        return jnp.sum(lp), lp

    (_, out["log_prob"]), (out["dlog_prob/dparams"], out["dlog_prob/dx"]) = jax.value_and_grad(
        log_p, argnums=(0, 1), has_aux=True)(flow, x)
    return out


_FLOW_SPECIAL = [-FAR_FLOW, FAR_FLOW, -FAR, FAR, -BOUND, BOUND, 0.0, BOUND * (1 + 1e-7), -BOUND * (1 - 1e-7)]
_FLOW_VALUE = st.one_of(
    st.floats(-FAR_FLOW, FAR_FLOW, allow_nan=False, allow_infinity=False),
    st.floats(-3 * BOUND, 3 * BOUND, allow_nan=False, allow_infinity=False),
    st.sampled_from(_FLOW_SPECIAL),
)
_POINTS = st.lists(_FLOW_VALUE, min_size=N_POINTS * DIM, max_size=N_POINTS * DIM)
_SCALE = st.one_of(st.sampled_from([0.0, 0.3, 1.0, 3.0]), st.floats(0.0, 3.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FLOWS)
@SETTINGS
@given(scale=_SCALE, seed=st.integers(0, 2**32 - 1), z=_POINTS, x=_POINTS)
@example(scale=3.0, seed=0, z=[FAR_FLOW, -FAR_FLOW, FAR, BOUND] * DIM, x=[-FAR_FLOW, FAR_FLOW, -FAR, -BOUND] * DIM)
@example(scale=0.0, seed=0, z=[BOUND, -BOUND, 0.0, FAR] * DIM, x=[BOUND, -BOUND, 0.0, -FAR] * DIM)
def test_flow_values_and_gradients_finite(name, dtype, scale, seed, z, x):
    with _precision(dtype):
        flow = _perturbed(name, dtype, scale, seed)
        z = jnp.asarray(np.asarray(z, dtype=dtype).reshape(N_POINTS, DIM))
        x = jnp.asarray(np.asarray(x, dtype=dtype).reshape(N_POINTS, DIM))
        out = _flow_battery(flow, z, x)
    where = f"{name} ({dtype}, perturbation scale {scale}, seed {seed})"
    z, x = np.asarray(z).tolist(), np.asarray(x).tolist()
    for k in ("y", "log_q", "d(y + log_q)/dz"):
        assert _finite(out[k]), f"{where}: {k} not finite at z = {z}"
    for k in ("log_prob", "dlog_prob/dx"):
        assert _finite(out[k]), f"{where}: {k} not finite at x = {x}"
    assert out["log_prob"].shape == (N_POINTS,) and out["log_prob"].dtype == np.dtype(dtype)
    for k in ("d(y + log_q)/dparams", "dlog_prob/dparams"):
        grads = out[k].params
        assert set(grads) == set(flow.params)
        bad = sorted(p for p, g in grads.items() if not _finite(g))
        assert not bad, f"{where}: {k} not finite for {bad} at z = {z}, x = {x}"

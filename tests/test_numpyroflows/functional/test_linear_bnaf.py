"""numpyroflows.functional.linear / .bnaf: float64 parity with the torch kernels, exact inverses, jit and vmap."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from numpyroflows.functional import bnaf as jb  # noqa: E402
from numpyroflows.functional import linear as jl  # noqa: E402
from pyroflows.functional import bnaf as tb  # noqa: E402
from pyroflows.functional import linear as tl  # noqa: E402

# atol 1e-9: an entry of O(1e-10) that cancels in the LU round trip differs by 1.6e-10 between torch and JAX 0.12
VAL = {"rtol": 1e-10, "atol": 1e-9}
SOLVE = {"rtol": 1e-8, "atol": 1e-9}
GRAD = {"rtol": 1e-8, "atol": 1e-8}


def close(jax_value, torch_value, tol) -> None:
    np.testing.assert_allclose(np.asarray(jax_value), torch_value.detach().numpy(), **tol)


def tgrads(fn, args: list[np.ndarray]) -> list[torch.Tensor]:
    """Torch autograd of a scalar function w.r.t. every argument (float64 leaves)."""
    leaves = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in args]
    grads = torch.autograd.grad(fn(*leaves), leaves, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for a, g in zip(leaves, grads)]


def jgrads(fn, args: list[np.ndarray]) -> tuple:
    """``jax.grad`` w.r.t. every argument, compiled (one compilation is cheaper than many eager primitives)."""
    return jax.jit(jax.grad(fn, argnums=tuple(range(len(args)))))(*[jnp.asarray(a) for a in args])


def weights(shape, seed) -> np.ndarray:
    """A fixed random cotangent so that every output entry enters the gradient check."""
    return np.random.default_rng(seed).normal(size=shape)


# =================================================================================================== linear

D = 4
PERM = np.array([2, 0, 3, 1])
INV_PERM = np.argsort(PERM)
_rng = np.random.default_rng(0)
PACKED = 1.5 * _rng.normal(size=(D, D))
RAW_DIAG = np.array([0.3, -2.0, 25.0, -8.0])  # includes softplus far above torch's threshold and far below
SHIFT = _rng.normal(size=D)
X_LIN = np.concatenate([1.5 * _rng.normal(size=(5, D)), [[1e3, -1e3, 0.0, 1e-300]]])


def roundtrip_tol(x: np.ndarray) -> dict:
    """inverse(forward(x)) = x up to roundoff relative to the largest entry (U is ill-conditioned on purpose)."""
    return {"rtol": 1e-9, "atol": 1e-10 * max(1.0, np.abs(x).max())}


def _lu_roundtrip(lib, x, packed, raw_diag, shift, perm, inv_perm):
    lower, upper, log_diag = lib.lu_factors(packed, raw_diag)
    y, ld = lib.lu_forward(x, lower, upper, log_diag, perm, shift)
    x2, ild = lib.lu_inverse(y, lower, upper, log_diag, inv_perm, shift)
    return lower, upper, log_diag, y, ld, x2, ild


@pytest.mark.parametrize("batched", [False, True], ids=["shared", "batched"])
def test_lu_parity_values_and_gradients(batched):
    if batched:  # factors from a context: batch (3,), broadcast against x of shape (2, 3, D)
        rng = np.random.default_rng(1)
        packed = PACKED + 0.3 * rng.normal(size=(3, D, D))
        raw_diag, shift = RAW_DIAG + rng.normal(size=(3, D)), SHIFT + rng.normal(size=(3, D))
        x = 1.5 * rng.normal(size=(2, 3, D))
    else:
        packed, raw_diag, shift, x = PACKED, RAW_DIAG, SHIFT, X_LIN
    tp, tip = torch.tensor(PERM), torch.tensor(INV_PERM)
    args = [x, packed, raw_diag, shift]
    t_out = _lu_roundtrip(tl, *map(torch.tensor, args), tp, tip)
    j_out = jax.jit(_lu_roundtrip, static_argnums=0)(jl, *map(jnp.asarray, args), PERM, INV_PERM)
    for a, b in zip(j_out, t_out):
        close(a, b, VAL)
    np.testing.assert_allclose(np.asarray(j_out[5]), x, **roundtrip_tol(x))  # exact inverse in JAX
    # gradients w.r.t. inputs and every parameter, through forward and inverse
    out_shape = np.broadcast_shapes(x.shape, shift.shape)
    cy, cx = weights(out_shape, 1), weights(out_shape, 2)

    def loss(lib, perm, inv_perm, tensor):
        def fn(x, packed, raw_diag, shift):
            lower, upper, log_diag = lib.lu_factors(packed, raw_diag)
            y, ld = lib.lu_forward(x, lower, upper, log_diag, perm, shift)
            x2, ild = lib.lu_inverse(x, lower, upper, log_diag, inv_perm, shift)  # x read as a y
            return (y * tensor(cy)).sum() + (x2 * tensor(cx)).sum() + 0.7 * ld.sum() - 0.3 * ild.sum()
        return fn

    j_loss = loss(jl, jnp.asarray(PERM), jnp.asarray(INV_PERM), jnp.asarray)
    for g_t, g_j in zip(tgrads(loss(tl, tp, tip, torch.tensor), args), jgrads(j_loss, args)):
        close(g_j, g_t, GRAD)


def test_lu_jit_vmap():
    @jax.jit
    def run(packed, raw_diag, shift, x):
        lower, upper, log_diag = jl.lu_factors(packed, raw_diag)
        shared = (lower, upper, log_diag)
        y, ld = jl.lu_forward(x, *shared, PERM, shift)
        over_x = (0, None, None, None, None, None)
        yv, ldv = jax.vmap(jl.lu_forward, in_axes=over_x)(x, *shared, PERM, shift)
        xv, _ = jax.vmap(jl.lu_inverse, in_axes=over_x)(y, *shared, INV_PERM, shift)
        # vmap over the factors too (the batched path), against a broadcast batch of factors
        two = jnp.stack([packed, 0.5 * packed])
        fac = jax.vmap(jl.lu_factors, in_axes=(0, None))(two, raw_diag)
        yb, _ = jax.vmap(jl.lu_forward, in_axes=(None, 0, 0, 0, None, None))(x, *fac, PERM, shift)
        xb, _ = jl.lu_inverse(yb, *(f[:, None] for f in fac), INV_PERM, shift)
        return y, ld, yv, ldv, xv, xb

    y, ld, yv, ldv, xv, xb = run(*map(jnp.asarray, (PACKED, RAW_DIAG, SHIFT, X_LIN)))
    np.testing.assert_allclose(yv, y, rtol=1e-12)
    np.testing.assert_allclose(ldv, ld, rtol=1e-12)
    np.testing.assert_allclose(xv, X_LIN, **roundtrip_tol(X_LIN))
    np.testing.assert_allclose(xb, np.broadcast_to(X_LIN, xb.shape), **roundtrip_tol(X_LIN))


@pytest.mark.parametrize("batched", [False, True], ids=["shared", "batched"])
def test_householder_parity(batched):
    rng = np.random.default_rng(2)
    vectors = 1.5 * rng.normal(size=(3, 4, D) if batched else (3, D))
    vectors[..., 1, :] = 0.0  # a zero vector: the norm clamp keeps it finite (and the reflection trivial)
    x = 1.5 * rng.normal(size=(2, 3, D)) if batched else X_LIN
    for name in ("householder_forward", "householder_inverse"):
        t_fn, j_fn = getattr(tl, name), getattr(jl, name)
        y_t, ld_t = t_fn(torch.tensor(x), torch.tensor(vectors))
        y_j, ld_j = jax.jit(j_fn)(jnp.asarray(x), jnp.asarray(vectors))
        close(y_j, y_t, VAL)
        close(ld_j, ld_t, VAL)
        c = weights(y_t.shape, 3)
        for g_t, g_j in zip(tgrads(lambda a, v, f=t_fn, c=c: (f(a, v)[0] * torch.tensor(c)).sum(), [x, vectors]),
                            jgrads(lambda a, v, f=j_fn, c=c: (f(a, v)[0] * c).sum(), [x, vectors])):
            close(g_j, g_t, GRAD)
    roundtrip = jax.jit(lambda a, v: jl.householder_inverse(jl.householder_forward(a, v)[0], v)[0])
    np.testing.assert_allclose(roundtrip(jnp.asarray(x), jnp.asarray(vectors)), x, **roundtrip_tol(x))


def test_leaky_relu_parity():
    x = np.concatenate([X_LIN, [[0.0, -0.0, -1e300, 1e300]]])
    slope = np.array([0.3, 1.7, 1e-3, 5.0])
    for name in ("leaky_relu_forward", "leaky_relu_inverse"):
        t_fn, j_fn = getattr(tl, name), getattr(jl, name)
        out_t = t_fn(torch.tensor(x), torch.tensor(slope))
        out_j = jax.jit(j_fn)(jnp.asarray(x), jnp.asarray(slope))
        for a, b in zip(out_j, out_t):
            close(a, b, VAL)
        xs = x[:-1]  # finite gradients need finite products
        c = weights(xs.shape, 4)
        for g_t, g_j in zip(
            tgrads(lambda a, s, f=t_fn, c=c: (f(a, s)[0] * torch.tensor(c)).sum() + f(a, s)[1].sum(), [xs, slope]),
            jgrads(lambda a, s, f=j_fn, c=c: (f(a, s)[0] * c).sum() + f(a, s)[1].sum(), [xs, slope]),
        ):
            close(g_j, g_t, GRAD)

    @jax.jit
    def run(a, s):
        y, _ = jl.leaky_relu_forward(a, s)
        return y, jl.leaky_relu_inverse(y, s)[0], jax.vmap(jl.leaky_relu_forward, in_axes=(0, None))(a, s)[0]

    y, x_back, y_vmapped = run(jnp.asarray(X_LIN), jnp.asarray(slope))
    np.testing.assert_allclose(x_back, X_LIN, rtol=1e-12)
    np.testing.assert_allclose(y_vmapped, y)


X_SQUASH = np.array([[0.0, 0.3, -2.0, 7.5], [19.9, 20.0, 20.5, -20.5], [40.0, -40.0, 800.0, -800.0]])
Y_UNIT = np.array([[0.5, 1e-3, 0.999, 0.0], [1.0, 1.5, -0.2, 1e-320]])
Y_SYM = np.array([[0.0, 0.3, -0.999, 1.0], [-1.0, 1.5, -2.0, 1 - 1e-15]])


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_sigmoid_tanh_parity(kind):
    y_in = Y_UNIT if kind == "sigmoid" else Y_SYM
    for name, inp in ((f"{kind}_forward", X_SQUASH), (f"{kind}_inverse", y_in)):
        t_fn, j_fn = getattr(tl, name), getattr(jl, name)
        out_t, out_j = t_fn(torch.tensor(inp)), jax.jit(j_fn)(jnp.asarray(inp))
        for a, b in zip(out_j, out_t):
            close(a, b, VAL)
        c = weights(inp.shape, 5)
        (g_t,) = tgrads(lambda a, f=t_fn, c=c: (f(a)[0] * torch.tensor(c)).sum() + f(a)[1].sum(), [inp])
        (g_j,) = jgrads(lambda a, f=j_fn, c=c: (f(a)[0] * c).sum() + f(a)[1].sum(), [inp])
        close(g_j, g_t, GRAD)
        # float32: values and gradients finite far outside
        inp32 = jnp.asarray(inp, jnp.float32) * 3
        out32, g32 = jax.jit(lambda a, f=j_fn: (f(a), jax.grad(lambda v, f=f: f(v)[0].sum() + f(v)[1].sum())(a)))(inp32)
        assert out32[0].dtype == jnp.float32
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in (*out32, g32))
    fwd, inv = getattr(jl, f"{kind}_forward"), getattr(jl, f"{kind}_inverse")
    x_back, ld, ld_vmapped = jax.jit(lambda a: (inv(fwd(a[0])[0])[0], fwd(a)[1], jax.vmap(fwd)(a)[1]))(
        jnp.asarray(X_SQUASH))
    np.testing.assert_allclose(x_back, X_SQUASH[0], rtol=1e-10, atol=1e-10)  # 1 - σ(7.5) loses ~4 digits
    np.testing.assert_allclose(ld_vmapped, ld)


# =================================================================================================== BNAF

BD, HID = 3, 3  # dimension, hidden units per dimension
SIZES = [(HID, 1), (HID, HID), (1, HID)]  # (a_out, a_in) per layer
# every residual and every activation, with and without a context (the code paths are independent; each variant
# costs one XLA compilation of forward + inverse + gradients, so the full product would be slow)
VARIANTS = [(None, "leaky_tanh", True), ("normal", "tanh", False), ("gated", "tanh", True)]
IDS = [f"{r}-{a}-{'ctx' if c else 'noctx'}" for r, a, c in VARIANTS]


def bnaf_params(seed: int, context: bool) -> dict[str, np.ndarray]:
    """Raw parameters (the entries above the diagonal blocks are random too: they must be ignored)."""
    rng = np.random.default_rng(seed)
    p = {}
    for idx, (a_out, a_in) in enumerate(SIZES):
        p[f"raw{idx}"] = 1.5 * rng.normal(size=(BD * a_out, BD * a_in))
        p[f"scale{idx}"] = 0.5 * rng.normal(size=BD * a_out)
        p[f"bias{idx}"] = 0.7 * rng.normal(size=BD * a_out)
    p["gate"] = 1.5 * rng.normal(size=BD)
    if context:
        p["ctx"] = rng.normal(size=(4, BD * HID))
    return p


def bnaf_layers(lib, p: dict) -> list:
    layers = []
    for idx, (a_out, a_in) in enumerate(SIZES):
        diag, lower = lib.block_masks(BD, a_out, a_in)
        w, log_diag = lib.masked_block_weight(p[f"raw{idx}"], p[f"scale{idx}"], diag, lower, BD)
        layers.append((w, log_diag, p[f"bias{idx}"]))
    return layers


def bnaf_call(lib, kernel: str, v, p: dict, act: str, residual):
    kw = {"act": act, "residual": residual, "gate": p["gate"] if residual == "gated" else None,
          "context_shift": p.get("ctx")}
    return getattr(lib, kernel)(v, bnaf_layers(lib, p), **kw)


def as_torch(p):
    return {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}


def as_jax(p):
    return {k: jnp.asarray(v) for k, v in p.items()}


def test_bnaf_masks_weights_and_activations():
    for a_out, a_in in SIZES + [(2, 4)]:
        for m_t, m_j in zip(tb.block_masks(BD, a_out, a_in), jb.block_masks(BD, a_out, a_in)):
            assert np.array_equal(np.asarray(m_j), m_t.numpy())
    p = bnaf_params(0, False)
    p["raw0"][0, 0] = 60.0  # a huge diagonal entry (exp), a huge lower one (must not poison the gradient)
    p["raw1"][HID, 0] = 800.0
    for (wt, ldt, _), (wj, ldj, _) in zip(bnaf_layers(tb, as_torch(p)), jax.jit(lambda q: bnaf_layers(jb, q))(p)):
        close(wj, wt, VAL)
        close(ldj, ldt, VAL)
    u = np.array([0.0, 0.5, -3.0, 10.0, -25.0, 400.0, -1e4])
    for name in jb.ACTIVATIONS:
        for a, b in zip(jax.jit(jb.activation, static_argnums=1)(jnp.asarray(u), name), tb.activation(
                torch.tensor(u), name)):
            close(a, b, VAL)
        (g_t,) = tgrads(lambda v, n=name: tb.activation(v, n)[1].sum() + tb.activation(v, n)[0].sum(), [u])
        (g_j,) = jgrads(lambda v, n=name: jb.activation(v, n)[1].sum() + jb.activation(v, n)[0].sum(), [u])
        close(g_j, g_t, GRAD)
    names = sorted(p)
    (c0, c1) = weights((BD * HID, BD), 6), weights((BD * HID, BD * HID), 7)

    def wloss(lib, tensor):
        def fn(*vals):
            q = dict(zip(names, vals))
            lays = bnaf_layers(lib, q)
            return sum((w * tensor(c)).sum() + 0.5 * ld.sum() for (w, ld, _), c in zip(lays[:2], (c0, c1)))
        return fn

    for g_t, g_j in zip(tgrads(wloss(tb, torch.tensor), [p[k] for k in names]),
                        jgrads(wloss(jb, jnp.asarray), [p[k] for k in names])):
        assert np.all(np.isfinite(np.asarray(g_j)))
        close(g_j, g_t, GRAD)
    with pytest.raises(ValueError):
        jb.activation(jnp.zeros(2), "relu")


@pytest.mark.parametrize("residual,act,context", VARIANTS, ids=IDS)
def test_bnaf_forward_jacobian_inverse_parity(residual, act, context):
    p = bnaf_params(1, context)
    names = sorted(p)
    x = np.concatenate([1.5 * np.random.default_rng(2).normal(size=(3, BD)), [[40.0, -25.0, 0.0]]])
    y_in = np.concatenate([2.0 * np.random.default_rng(3).normal(size=(3, BD)), [[-30.0, 50.0, 0.0]]])
    cx, cy = weights(x.shape, 8), weights(x.shape, 9)

    def loss(lib, tensor):
        """Forward and inverse of fresh data, reduced with fixed weights; the outputs ride along."""
        def fn(v, w, *vals):
            q = dict(zip(names, vals))
            y, ld = bnaf_call(lib, "bnaf_forward", v, q, act, residual)
            xi, ild = bnaf_call(lib, "bnaf_inverse", w, q, act, residual)
            value = (y * tensor(cy)).sum() + 0.7 * ld.sum() + (xi * tensor(cx)).sum() - 0.4 * ild.sum()
            return value, (y, ld, xi, ild, bnaf_call(lib, "bnaf_jacobian", v, q, act, residual))
        return fn

    @jax.jit
    def jax_side(*args):  # one compilation per variant: values, gradients, autodiff Jacobian, round trip
        grads, outs = jax.grad(loss(jb, jnp.asarray), argnums=tuple(range(len(args))), has_aux=True)(*args)
        q = dict(zip(names, args[2:]))

        def row_map(v, c):
            return bnaf_call(jb, "bnaf_forward", v, {**q, "ctx": c} if context else q, act, residual)[0]

        jac_ad = jax.vmap(jax.jacfwd(row_map), in_axes=(0, 0 if context else None))(args[0], q.get("ctx"))
        back = bnaf_call(jb, "bnaf_forward", outs[2], q, act, residual)
        return grads, outs, jac_ad, back

    args = [x, y_in] + [p[k] for k in names]
    g_js, outs_j, jac_ad, (y_back, fld) = jax_side(*map(jnp.asarray, args))
    leaves = [torch.tensor(a, requires_grad=True) for a in args]
    value_t, outs_t = loss(tb, torch.tensor)(*leaves)
    g_ts = torch.autograd.grad(value_t, leaves, allow_unused=True)
    # values: forward, log-derivatives and dense Jacobian to 1e-10; the solver's inverse to 1e-8
    for a, b, tol in zip(outs_j, outs_t, [VAL, VAL, SOLVE, SOLVE, VAL]):
        close(a, b, tol)
    np.testing.assert_allclose(outs_j[4], jac_ad, rtol=1e-10, atol=1e-12)  # dense Jacobian = autodiff
    np.testing.assert_allclose(y_back, y_in, rtol=1e-10, atol=1e-10)  # exact inverse of fresh data
    np.testing.assert_allclose(outs_j[3], -fld, rtol=1e-12, atol=1e-12)
    # gradients w.r.t. the inputs and every parameter, through the forward and the inverse
    for name, g_t, g_j in zip(["x", "y"] + names, g_ts, g_js):
        if name == "gate" and residual != "gated":
            assert g_t is None and not np.any(np.asarray(g_j))
            continue
        close(g_j, g_t, GRAD)


def test_bnaf_inverse_vmap_float32_and_checks():
    p = bnaf_params(4, True)
    pj = as_jax(p)
    y = jnp.asarray(np.random.default_rng(5).normal(size=(4, BD)) * 3)

    def inv(v, ctx):
        return bnaf_call(jb, "bnaf_inverse", v, {**pj, "ctx": ctx}, "leaky_tanh", "gated")

    @jax.jit
    def batched_two_ways(y0, ctx):  # a context batch broadcasts against a single y, and vmap agrees
        x, ld = inv(y0, ctx)
        y_back = bnaf_call(jb, "bnaf_forward", x, {**pj, "ctx": ctx}, "leaky_tanh", "gated")[0]
        return (x, ld), jax.vmap(inv, in_axes=(None, 0))(y0, ctx), y_back

    (x_batched, ld_batched), (x_vmapped, ld_vmapped), y_back = batched_two_ways(y[0], pj["ctx"])
    assert x_batched.shape == (4, BD)
    np.testing.assert_allclose(x_vmapped, x_batched, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ld_vmapped, ld_batched, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y_back, np.broadcast_to(y[0], y_back.shape), rtol=1e-10, atol=1e-10)
    # float32: finite values and gradients far outside, inverse to float32 accuracy
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    p32["ctx"] = p32["ctx"][:2]
    far = jnp.asarray([[1e4, -1e4, 3.0], [0.5, -0.5, 0.0]], jnp.float32)

    @jax.jit
    def float32_all(v, q):
        forwards = [bnaf_call(jb, "bnaf_forward", v, q, "tanh", r) for r in jb.RESIDUALS]
        y32 = forwards[0][0]  # no residual: the flattest map (slope LEAK far out), the hardest inverse

        def total(w, r):
            out = bnaf_call(jb, "bnaf_inverse", w, r, "tanh", None)
            return sum(o.sum() for o in out), out

        g, inverse = jax.grad(total, argnums=(0, 1), has_aux=True)(y32, q)
        return forwards, inverse, g

    forwards, (x32, ild32), g = float32_all(far, p32)
    assert x32.dtype == jnp.float32
    for leaf in jax.tree_util.tree_leaves((forwards, x32, ild32, g)):
        assert leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf)))
    np.testing.assert_allclose(x32[1], far[1], atol=1e-4)
    for bad in ({"residual": "gated"}, {"residual": "skip"}, {"act": "relu"}):  # checked before any computation
        with pytest.raises(ValueError):
            jb.bnaf_forward(y, [], **bad)
        with pytest.raises(ValueError):
            jb.bnaf_inverse(y, [], **bad)

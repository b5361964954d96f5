"""The floating type of a flow's parameters, in both packages.

numpyroflows: every catalogue entry built with ``dtype=jnp.float64`` (under x64) holds only float64 leaves and is the
float32 build cast with ``astype`` wherever the initial values are float32 numbers (random draws are made in float32
whatever the dtype; values computed from them, in the dtype, differ by float32 rounding); ``dtype=None`` is JAX's
default (float64 here, and bit for bit the float32 build with x64 off); ``astype`` round trips, keeps the buffers'
integer values, is pure and jit-able, and refuses what it cannot do. Both packages: a float64 ``DiagonalAffine`` starts
exactly at its ``loc``/``scale`` (1e-15) whatever torch's default dtype, and ``fit(standardize=True)`` of a float64 flow
returns a float64 flow whose data-space affine holds the float64 standardisation exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from catalogue import CATALOGUE, NAMES, JaxBackend, context_dims, jax_backend, to_support  # noqa: E402
from scipy import stats  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from numpyroflows.functional.affine import affine_scale as j_affine_scale  # noqa: E402
from pyroflows.functional.affine import affine_scale as t_affine_scale  # noqa: E402

PAIRS = [(n, c) for n in NAMES for c in context_dims(n)]
F32_ULP2 = 2 * float(np.finfo(np.float32).eps)  # two float32 roundings: a value computed in float32 vs in float64
BUFFERS = ("perm", "inv_perm", "initialized")


class DtypeBackend(JaxBackend):
    """The JAX backend building every transform of an entry with ``dtype=`` (the catalogue passes ``b.key(...)`` to
    every constructor, the dtype rides along)."""

    def __init__(self, dtype) -> None:
        super().__init__(numpyroflows)
        self.dtype = dtype

    def key(self, seed: int, i: int = 0) -> dict:
        return {**super().key(seed, i), "dtype": self.dtype}


def _build(name: str, context_dim: int, dtype=None):
    backend = jax_backend() if dtype is None else DtypeBackend(dtype)
    return backend.build(CATALOGUE[name], 3, context_dim, 0)


def _floating_leaves(flow) -> list:
    return [leaf for leaf in jax.tree.leaves(flow) if jnp.issubdtype(leaf.dtype, jnp.floating)]


def _np(params: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in params.items()}


# ====================================================================================================== numpyroflows
@pytest.mark.parametrize(("name", "context_dim"), PAIRS)
def test_float64_build_is_the_float32_build_cast(name, context_dim):
    f64, f32 = _build(name, context_dim, jnp.float64), _build(name, context_dim, jnp.float32)
    assert _floating_leaves(f64) and all(leaf.dtype == jnp.float64 for leaf in _floating_leaves(f64))
    assert all(leaf.dtype == jnp.float32 for leaf in _floating_leaves(f32))
    p64, cast = _np(f64.params), _np(f32.astype(jnp.float64).params)
    assert p64.keys() == cast.keys()
    for k, a in p64.items():
        b = cast[k]
        assert b.dtype == np.float64 and a.shape == b.shape, k
        exact = a.astype(np.float32).astype(np.float64) == a  # float32 numbers: the draws, zeros, the buffers
        np.testing.assert_array_equal(a[exact], b[exact], err_msg=k)
        np.testing.assert_allclose(a, b, rtol=F32_ULP2, atol=1e-30, err_msg=k)
    # dtype=None is JAX's default: float64 under x64, and with x64 off the float32 build, bit for bit
    default = _np(_build(name, context_dim).params)
    assert all(v.dtype == np.float64 and np.array_equal(v, p64[k]) for k, v in default.items())
    with jax.enable_x64(False):
        off = _np(_build(name, context_dim).params)
    assert off.keys() == cast.keys()
    for k, v in _np(f32.params).items():
        assert off[k].dtype == np.float32 and np.array_equal(off[k], v), k


@pytest.mark.parametrize("name", NAMES)
def test_astype_round_trip_keeps_buffers_and_is_pure(name):
    context_dim = context_dims(name)[-1]
    f32 = _build(name, context_dim, jnp.float32)
    before = _np(f32.params)
    back = f32.astype(jnp.float64).astype(jnp.float32)
    assert type(back) is type(f32) and back.config() == f32.config()
    for k, v in _np(back.params).items():
        assert v.dtype == np.float32 and np.array_equal(v, before[k]), k
    assert all(np.array_equal(np.asarray(v), before[k]) for k, v in f32.params.items())  # f32 itself unchanged
    jitted = jax.jit(lambda f: f.astype(jnp.float64))(f32)
    assert all(np.array_equal(np.asarray(v), np.asarray(before[k], np.float64)) and v.dtype == jnp.float64
               for k, v in jitted.params.items())
    # float64 -> float32 rounds each value once; float16 keeps the buffers in float32, their integers exact
    f64 = _build(name, context_dim, jnp.float64)
    for k, v in _np(f64.astype(jnp.float32).params).items():
        assert v.dtype == np.float32 and np.array_equal(v, np.asarray(f64.params[k]).astype(np.float32)), k
    for k, v in _np(f32.astype(jnp.float16).params).items():
        buffer = k.rsplit(".", 1)[-1] in BUFFERS
        assert v.dtype == (np.float32 if buffer else np.float16), k
        if buffer:
            np.testing.assert_array_equal(v, before[k])


def test_a_cast_flow_computes_in_its_dtype_and_saves_it(tmp_path):
    name = "LULinear"
    flow = _build(name, 2, jnp.float32).astype(jnp.float64)
    x = jnp.asarray(to_support(name, np.random.default_rng(0).normal(size=(5, 3))), jnp.float32)
    ctx = jnp.ones((5, 2), jnp.float32)
    lp = flow(ctx).log_prob(x)
    assert lp.dtype == jnp.float64  # float32 inputs promoted to the parameters' float64
    for layer in flow.transforms:  # each transform casts alone too
        assert all(v.dtype == jnp.float64 for v in layer.astype(jnp.float64).params.values())
    path = tmp_path / "flow.npz"
    numpyroflows.save(flow, path)
    loaded = numpyroflows.load(path)  # the file keeps each array's type; the configuration holds no dtype
    assert "dtype" not in str(loaded.config())
    assert all(v.dtype == jnp.float64 for v in loaded.params.values())
    np.testing.assert_array_equal(np.asarray(loaded(ctx).log_prob(x)), np.asarray(lp))


def test_dtype_errors_name_the_fix():
    with pytest.raises(ValueError, match="floating dtype"):
        numpyroflows.flows.MAF(3, dtype=jnp.int32)
    with pytest.raises(ValueError, match="floating dtype"):
        numpyroflows.transforms.Permutation(3, dtype="not a dtype")
    flow = numpyroflows.flows.NSF(3, num_transforms=1, hidden_dims=(4,), dtype=jnp.float32)
    with pytest.raises(ValueError, match="floating dtype"):
        flow.astype(jnp.complex64)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"jax_enable_x64.*dtype=jnp.float32"):
            numpyroflows.flows.MAF(3, dtype=jnp.float64)
        with pytest.raises(ValueError, match="jax_enable_x64"):
            flow.astype(jnp.float64)


# ====================================================================================================== both packages
LOC = [0.1, -1e8 / 3, 2.5e-7]
SCALE = [0.3, 1e-3 * (1 + 1e-4), 7e5 / 3]


def _exact(shift, scale) -> None:
    np.testing.assert_allclose(np.asarray(shift, np.float64), LOC, rtol=1e-15, atol=0)
    np.testing.assert_allclose(np.asarray(scale, np.float64), SCALE, rtol=1e-15, atol=0)


def test_float64_diagonal_affine_starts_exactly_in_both_packages():
    j = numpyroflows.transforms.DiagonalAffine(3, loc=LOC, scale=SCALE, dtype=jnp.float64)
    _exact(j.params["head.shift"], j_affine_scale(j.params["head.raw_scale"]))
    # with a context (no hidden layer) the output bias holds the start
    jc = numpyroflows.transforms.DiagonalAffine(3, 2, (), loc=LOC, scale=SCALE, dtype=jnp.float64)
    bias = jc.params["head.net.context_layer.bias"]
    _exact(bias[:3], j_affine_scale(bias[3:]))
    assert all(v.dtype == jnp.float64 for v in jc.params.values())

    assert torch.get_default_dtype() == torch.float32
    t = pyroflows.transforms.DiagonalAffine(3, loc=LOC, scale=SCALE, dtype=torch.float64)
    assert torch.get_default_dtype() == torch.float32  # no global state touched
    with torch.no_grad():
        _exact(t.head.shift.numpy(), t_affine_scale(t.head.raw_scale).numpy())
        tc = pyroflows.transforms.DiagonalAffine(3, 2, (), loc=LOC, scale=SCALE, dtype=torch.float64)
        tbias = tc.head.net.context_layer.bias
        _exact(tbias[:3].numpy(), t_affine_scale(tbias[3:]).numpy())
        assert all(p.dtype == torch.float64 for p in tc.parameters())
        # the same start in both packages, and what .double() of a float32 build would have kept
        np.testing.assert_allclose(t.head.raw_scale.numpy(), np.asarray(j.params["head.raw_scale"]), rtol=1e-15)
        rounded = pyroflows.transforms.DiagonalAffine(3, loc=LOC, scale=SCALE).double()
        assert np.abs(rounded.head.shift.numpy() / LOC - 1).max() > 1e-10
    assert "dtype" not in str(t.config()) and t.config() == pyroflows.transforms.DiagonalAffine(
        3, loc=LOC, scale=SCALE).config()


def _data() -> np.ndarray:
    return np.random.default_rng(0).normal([1e6 / 3, -2.0], [0.7, 3e-3], size=(400, 2))


def _check_fit_result(shift, scale, log_prob, x) -> None:
    """The returned data-space affine is the float64 standardisation itself (the optimizer did not move the trained
    affine off the identity), and the flow's density that of N(mean, sd) to float64 rounding."""
    mean, sd = x.mean(0), x.std(0)
    np.testing.assert_allclose(shift, mean, rtol=1e-15, atol=0)
    np.testing.assert_allclose(scale, sd, rtol=1e-15, atol=0)
    np.testing.assert_allclose(log_prob, stats.norm(mean, sd).logpdf(x).sum(1), rtol=1e-12)


def test_fit_standardize_keeps_a_float64_flow_exact_in_both_packages():
    x = _data()
    kw = {"standardize": True, "validation_fraction": 0, "max_steps": 2, "progress": False}
    jflow, _ = numpyroflows.fit(numpyroflows.Flow([numpyroflows.transforms.DiagonalAffine(2, dtype=jnp.float64)]),
                                x, optimizer=optax.sgd(0.0), **kw)
    assert all(v.dtype == jnp.float64 for v in jflow.params.values())
    p = jflow.params
    _check_fit_result(np.asarray(p["transforms.1.head.shift"]),
                      np.asarray(j_affine_scale(p["transforms.1.head.raw_scale"])),
                      np.asarray(jflow().log_prob(jnp.asarray(x))), x)

    tflow, _ = pyroflows.fit(pyroflows.Flow([pyroflows.transforms.DiagonalAffine(2)]).double(), x,
                             optimizer=lambda groups: torch.optim.SGD(groups, lr=0.0), **kw)
    assert all(p.dtype == torch.float64 for p in tflow.parameters())
    affine = tflow.transforms[-1]
    with torch.no_grad():
        _check_fit_result(affine.head.shift.numpy(), t_affine_scale(affine.head.raw_scale).numpy(),
                          tflow().log_prob(torch.as_tensor(x)).numpy(), x)
    assert float(affine.head.shift.detach()[0]) == float(p["transforms.1.head.shift"][0])  # one standardisation

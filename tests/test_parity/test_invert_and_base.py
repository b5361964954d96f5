"""``transforms.Invert`` and trainable base distributions (``flows.DiagonalNormal``, ``flows.TrainableBase``), in both
packages side by side and across them.

Invert: it is its transform's inverse with the log-determinants swapped, ``Invert(Invert(t))`` is ``t``, the context
passes through, its parameters sit under ``transform.`` (the same names in both packages), it saves and loads nested,
data-dependent initialisation runs in the other direction, and ``load`` checks the wrapped configuration before
building. The catalogue entry ``"Invert"`` (tests/catalogue.py) runs it through the property suites (round trips,
log-dets against autodiff, density integrals, gradients, save/load, parity, export).

Trainable base: its parameters are the flow's (``base.loc``, ``base.raw_scale`` in both packages), exchanged by
``export_params``/``import_params``, saved and loaded with the flow (a recipe's too), trained by ``fit`` and
registered by ``pyro.module``/``numpyroflows.module``; fixed bases keep working and refuse to be saved with a message
naming the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from catalogue import SPLINE, H, perturb, perturb_jax  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from flowcommon.config import BASE_SIZES, MAX_NESTING  # noqa: E402
from numpyroflows import flows as JF  # noqa: E402
from numpyroflows import transforms as JT  # noqa: E402
from pyroflows import flows as TF  # noqa: E402
from pyroflows import transforms as TT  # noqa: E402

TOL = {"atol": 1e-9, "rtol": 1e-9}
D, C = 3, 2


def _key(i: int):
    return jax.random.PRNGKey(i)


def _rows(seed: int, n: int, d: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) * 1.5


#: transforms to invert, built the same way in both packages: a fast-both-ways one, a density-fast autoregressive
#: layer (sampling-fast once inverted), a sampling-fast one with a numerical inverse, and a squashing one
INNER = {
    "LULinear": lambda T, c, k: T.LULinear(D, c, H, **k),
    "MAF-layer": lambda T, c, k: T.AutoregressiveTransform(D, "spline", c, H, **SPLINE, **k),
    "Planar": lambda T, c, k: T.PlanarTransform(D, c, H, **k),
    "Tanh": lambda T, c, k: T.Tanh(D, **k),
}


def _pair(name: str, context_dim: int, wrap: int = 1):
    """The inner transform wrapped ``wrap`` times in ``Invert``, as a one-layer flow in both packages with the same
    perturbed float64 parameters (exported from torch)."""
    torch.manual_seed(0)
    t = INNER[name](TT, context_dim, {})
    j = INNER[name](JT, context_dim, {"key": _key(0)})
    for _ in range(wrap):
        t, j = TT.Invert(t), JT.Invert(j)
    tflow = perturb(TF.Flow([t]).double(), 0.3)
    jflow = numpyroflows.import_params(JF.Flow([j]), pyroflows.export_params(tflow))
    return tflow, jflow


def _points(name: str) -> np.ndarray:
    """Points inside the domain of every direction used (Tanh's inverse needs ``|y| < 1``)."""
    x = _rows(1, 6, D)
    return np.tanh(x) * 0.9 if name == "Tanh" else x


# ------------------------------------------------------------------------------------------------- Invert
@pytest.mark.parametrize("name,context_dim", [(n, c) for n in INNER for c in (0, C) if not (n == "Tanh" and c)])
def test_invert_is_the_inverse_with_log_dets_swapped_in_both_packages(name, context_dim):
    tflow, jflow = _pair(name, context_dim)
    x = _points(name)
    ctx = _rows(2, 6, context_dim) if context_dim else None
    tctx = None if ctx is None else torch.as_tensor(ctx)
    # torch: Invert(t) forward is t's inverse pass, its inverse t's forward pass, log-dets as they come
    inv, inner = tflow.transforms[0], tflow.transforms[0].transform
    with torch.no_grad():
        tx = torch.as_tensor(x)
        y, ld = inv.forward_and_log_det(tx, tctx)
        y_ref, ld_ref = inner.inverse_and_log_det(tx, tctx)
        torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
        torch.testing.assert_close(ld, ld_ref, atol=0, rtol=0)
        back, ld_back = inv.inverse_and_log_det(y, tctx)
        torch.testing.assert_close(back, tx, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(ld_back, -ld, atol=1e-8, rtol=1e-8)
        bound = inv.condition(tctx) if context_dim else inv
        torch.testing.assert_close(bound.log_abs_det_jacobian(tx, y), ld, atol=1e-8, rtol=1e-8)
    # JAX: the same identities, and the same numbers as torch
    out = _jax_invert_side(jflow, jnp.asarray(x), None if ctx is None else jnp.asarray(ctx))
    np.testing.assert_array_equal(out["y"], out["y_ref"])
    np.testing.assert_array_equal(out["ld"], out["ld_ref"])
    np.testing.assert_allclose(out["back"], x, atol=1e-8)
    np.testing.assert_allclose(out["ld_back"], -out["ld"], atol=1e-8)
    np.testing.assert_allclose(out["y"], y.numpy(), **TOL)
    np.testing.assert_allclose(out["ld"], ld.numpy(), **TOL)
    with torch.no_grad():
        t_lp = tflow(tctx).log_prob(tx).numpy()
    np.testing.assert_allclose(out["log_prob"], t_lp, **TOL)
    jinv = jflow.transforms[0]
    assert inv.input_dim == jinv.input_dim == D and inv.context_dim == jinv.context_dim == context_dim


@jax.jit
def _jax_invert_side(flow, x, ctx):
    inv = flow.transforms[0]
    out = {}
    out["y"], out["ld"] = inv.forward_and_log_det(x, ctx)
    out["y_ref"], out["ld_ref"] = inv.transform.inverse_and_log_det(x, ctx)
    out["back"], out["ld_back"] = inv.inverse_and_log_det(out["y"], ctx)
    out["log_prob"] = flow(ctx).log_prob(x)
    return out


def test_invert_twice_is_the_transform_itself():
    tflow, jflow = _pair("MAF-layer", C, wrap=2)
    x, ctx = _rows(3, 5, D), _rows(4, 5, C)
    with torch.no_grad():
        a = tflow.transforms[0].forward_and_log_det(torch.as_tensor(x), torch.as_tensor(ctx))
        b = tflow.transforms[0].transform.transform.forward_and_log_det(torch.as_tensor(x), torch.as_tensor(ctx))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    ja = jax.jit(lambda t, v, c: t.forward_and_log_det(v, c))(jflow.transforms[0], jnp.asarray(x), jnp.asarray(ctx))
    np.testing.assert_allclose(np.asarray(ja[0]), a[0].numpy(), **TOL)
    assert sorted(jflow.params) == sorted(pyroflows.export_params(tflow))
    assert all(k.startswith("transforms.0.transform.transform.") for k in jflow.params)


def test_parameter_names_nest_under_transform_and_match_across_packages():
    torch.manual_seed(0)
    inner = TT.LULinear(D, C, H)
    names = {f"transform.{k}" for k in inner.state_dict()}
    t = TT.Invert(inner)
    assert set(t.state_dict()) == names
    assert t.transform is inner and set(map(id, t.parameters())) == set(map(id, inner.parameters()))  # shared
    j = JT.Invert(JT.LULinear(D, C, H, key=_key(0)))
    assert set(j.params) == names
    # with_params reaches the wrapped transform; a wrong name is refused naming it
    j2 = j.with_params({k: v + 1.0 for k, v in j.params.items()})
    np.testing.assert_allclose(np.asarray(j2.transform.params["head.net.layers.0.bias"]),
                               np.asarray(j.transform.params["head.net.layers.0.bias"]) + 1.0)
    with pytest.raises(ValueError, match="missing.*transform.perm"):
        j.with_params({k: v for k, v in j.params.items() if k != "transform.perm"})


def test_invert_is_a_pytree_that_jits_and_differentiates():
    tflow, jflow = _pair("MAF-layer", C)
    x, ctx = jnp.asarray(_rows(5, 4, D)), jnp.asarray(_rows(6, 4, C))
    leaves = jax.tree_util.tree_leaves(jflow)
    assert len(leaves) == len(jflow.params)
    lp, grads = jax.jit(jax.value_and_grad(lambda f: f(ctx).log_prob(x).sum()))(jflow)
    with torch.no_grad():
        t_lp = tflow(torch.as_tensor(np.array(ctx))).log_prob(torch.as_tensor(np.array(x))).sum()
    np.testing.assert_allclose(float(lp), float(t_lp), **TOL)
    grads = grads.params
    assert set(grads) == set(jflow.params)
    assert all(bool(jnp.any(g != 0)) for k, g in grads.items() if k.rsplit(".", 1)[-1] != "perm")


def test_invert_rejects_what_is_not_a_transform():
    with pytest.raises(TypeError, match="Invert takes a pyroflows transform"):
        TT.Invert(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Invert takes a numpyroflows transform"):
        JT.Invert(JF.MAF(2, key=_key(0)))


def test_invert_of_a_conditional_transform_checks_its_context():
    tflow, jflow = _pair("LULinear", C)
    with pytest.raises(ValueError, match="context"):
        tflow.transforms[0].forward_and_log_det(torch.zeros(2, D, dtype=torch.float64), torch.zeros(2, C + 1))
    with pytest.raises(ValueError, match="context"):
        jflow.transforms[0].forward_and_log_det(jnp.zeros((2, D)), jnp.zeros((2, C + 1)))


def test_invert_initialises_a_wrapped_actnorm_in_the_other_direction():
    x = _rows(7, 256, D) * np.array([0.5, 2.0, 3.0]) + np.array([1.0, -2.0, 0.5])
    tflow = TF.Flow([TT.Invert(TT.ActNorm(D)), TT.DiagonalAffine(D)]).double()
    assert tflow.requires_initialization
    tflow.initialize(torch.as_tensor(x))
    assert not tflow.requires_initialization
    with torch.no_grad():
        z, _ = tflow.transform().inverse_and_log_det(torch.as_tensor(x))
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-8)  # the inverse pass standardises its batch
    np.testing.assert_allclose(z.std(0, correction=0).numpy(), 1.0, atol=1e-8)
    jflow = JF.Flow([JT.Invert(JT.ActNorm(D, key=_key(0))), JT.DiagonalAffine(D, key=_key(1))])
    assert jflow.requires_initialization
    jflow = jflow.initialize(jnp.asarray(x))
    assert not jflow.requires_initialization
    theirs = pyroflows.export_params(tflow)
    for k, v in numpyroflows.export_params(jflow).items():
        np.testing.assert_allclose(v, theirs[k], atol=1e-10, err_msg=k)


def test_invert_saves_and_loads_nested_with_the_same_configuration(tmp_path):
    tflow, jflow = _pair("MAF-layer", C, wrap=2)
    config = tflow.config()
    assert config == jflow.config()
    assert config["transforms"][0]["type"] == "Invert"
    assert config["transforms"][0]["kwargs"]["transform"]["type"] == "Invert"
    assert config["transforms"][0]["kwargs"]["transform"]["kwargs"]["transform"]["type"] == "AutoregressiveTransform"
    x, ctx = _rows(8, 5, D), _rows(9, 5, C)
    pyroflows.save(tflow, tmp_path / "f.pt")
    back = pyroflows.load(tmp_path / "f.pt")
    with torch.no_grad():
        torch.testing.assert_close(back(torch.as_tensor(ctx)).log_prob(torch.as_tensor(x)),
                                   tflow(torch.as_tensor(ctx)).log_prob(torch.as_tensor(x)), atol=0, rtol=0)
    numpyroflows.save(jflow, tmp_path / "f.npz")
    jback = numpyroflows.load(tmp_path / "f.npz")
    log_prob = jax.jit(lambda f, c, v: f(c).log_prob(v))
    np.testing.assert_array_equal(np.asarray(log_prob(jback, jnp.asarray(ctx), jnp.asarray(x))),
                                  np.asarray(log_prob(jflow, jnp.asarray(ctx), jnp.asarray(x))))


def _rewrite_npz(path, config) -> None:
    with np.load(path, allow_pickle=False) as blob:
        arrays = {k: blob[k] for k in blob.files if k != "__meta__"}
        meta = json.loads(str(blob["__meta__"]))
    meta["config"] = config
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)


def test_load_checks_the_wrapped_configuration_before_building(tmp_path, monkeypatch):
    _, jflow = _pair("MAF-layer", 0)
    path = tmp_path / "f.npz"
    numpyroflows.save(jflow, path)

    def never(config, key=None):
        raise AssertionError("load built a flow")

    monkeypatch.setattr(numpyroflows.io, "flow_from_config", never)
    config = jflow.config()
    config["transforms"][0]["kwargs"]["transform"]["kwargs"]["hidden_dims"] = [10**6, 10**6]
    _rewrite_npz(path, config)
    with pytest.raises(ValueError, match=r"transform 0, Invert\(AutoregressiveTransform\(input_dim=3.*needs at least"):
        numpyroflows.load(path)
    deep = {"type": "Tanh", "kwargs": {"input_dim": D}}
    for _ in range(MAX_NESTING + 1):
        deep = {"type": "Invert", "kwargs": {"transform": deep}}
    _rewrite_npz(path, {"type": "Flow", "transforms": [deep]})
    with pytest.raises(ValueError, match=f"more than {MAX_NESTING} deep"):
        numpyroflows.load(path)
    _rewrite_npz(path, {"type": "Flow", "transforms": [{"type": "Invert", "kwargs": {"transform": 3}}]})
    with pytest.raises(ValueError, match="transform wrapped by transform 0 .*not a dict with a 'type'"):
        numpyroflows.load(path)


# ------------------------------------------------------------------------------------------------- trainable base
def _base_pair(loc=0.0, scale=1.0):
    """An unconditional two-layer flow on a DiagonalNormal base in both packages, the same float64 parameters."""
    torch.manual_seed(0)
    tflow = TF.Flow([TT.LULinear(D), TT.ReversePermutation(D)], base=TF.DiagonalNormal(D, loc, scale))
    tflow = perturb(tflow.double(), 0.3)
    jflow = JF.Flow([JT.LULinear(D, key=_key(0)), JT.ReversePermutation(D)], base=JF.DiagonalNormal(D, loc, scale))
    return tflow, numpyroflows.import_params(jflow, pyroflows.export_params(tflow))


@jax.jit
def _jax_base_side(flow, x, key):
    xs, lp = flow().sample_and_log_prob(key, (5,))
    value, grads = jax.value_and_grad(lambda f: f().log_prob(x).sum())(flow)
    return {"log_prob": flow().log_prob(x), "own": lp, "own_again": flow().log_prob(xs), "grads": grads.params}


def test_diagonal_normal_is_the_normal_it_names_in_both_packages():
    loc, scale = [1.0, -2.0, 0.5], [2.0, 0.5, 1.0]
    tb, jb = TF.DiagonalNormal(D, loc, scale, dtype=torch.float64), JF.DiagonalNormal(D, loc, scale)
    np.testing.assert_array_equal(tb.raw_scale.detach().numpy()[2], 0.0)  # a scale of exactly 1: raw 0
    np.testing.assert_allclose(tb.scale.detach().numpy(), scale, atol=1e-12)
    z = _rows(10, 7, D)
    expected = np.sum(-0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi), -1)
    np.testing.assert_allclose(tb.log_prob(torch.as_tensor(z)).detach().numpy(), expected, **TOL)
    np.testing.assert_allclose(np.asarray(jb.log_prob(jnp.asarray(z))), expected, **TOL)
    np.testing.assert_allclose(np.asarray(jb.distribution().log_prob(jnp.asarray(z))), expected, **TOL)
    draws = jb.sample(_key(1), (20000,))
    assert draws.shape == (20000, D)
    np.testing.assert_allclose(np.asarray(draws.mean(0)), loc, atol=0.05)
    np.testing.assert_allclose(np.asarray(draws.std(0)), scale, rtol=0.03)
    assert tb.rsample((4, 2)).shape == (4, 2, D) and tb.rsample((4,)).requires_grad
    with pytest.raises(ValueError, match="DiagonalNormal's scale must be above its floor"):
        TF.DiagonalNormal(D, scale=0.0)
    with pytest.raises(ValueError, match=r"DiagonalNormal's loc must be a number or 3 numbers"):
        JF.DiagonalNormal(D, loc=[1.0, 2.0])


def test_base_parameters_are_the_flows_with_the_same_names_in_both_packages():
    tflow, jflow = _base_pair([0.5, -1.0, 2.0], [1.5, 0.7, 1.0])
    names = {k for k in pyroflows.export_params(tflow) if k.startswith("base.")}
    assert names == {"base.loc", "base.raw_scale"} == {k for k in jflow.params if k.startswith("base.")}
    assert {id(p) for p in tflow.base.parameters()} <= {id(p) for p in tflow.parameters()}
    x = _rows(11, 9, D)
    with torch.no_grad():
        t_lp = tflow().log_prob(torch.as_tensor(x)).numpy()
    out = _jax_base_side(jflow, jnp.asarray(x), _key(2))
    np.testing.assert_allclose(out["log_prob"], t_lp, **TOL)
    np.testing.assert_allclose(out["own"], out["own_again"], atol=1e-9)
    # a JAX gradient reaches the base; the pytree's leaves are the flow's parameters
    assert bool(jnp.all(out["grads"]["base.loc"] != 0)) and bool(jnp.all(out["grads"]["base.raw_scale"] != 0))
    assert len(jax.tree_util.tree_leaves(jflow)) == len(jflow.params)
    # and back: numpyroflows parameters into pyroflows
    moved = perturb_jax(jflow, 0.2, seed=3)
    pyroflows.import_params(tflow, numpyroflows.export_params(moved))
    np.testing.assert_allclose(tflow.base.loc.detach().numpy(), np.asarray(moved.params["base.loc"]), atol=0)
    with torch.no_grad():
        t_lp = tflow().log_prob(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(_jax_base_side(moved, jnp.asarray(x), _key(2))["log_prob"], t_lp, **TOL)


def test_a_flow_with_a_trainable_base_saves_and_loads(tmp_path):
    tflow, jflow = _base_pair([0.5, -1.0, 2.0], [1.5, 0.7, 1.0])
    config = tflow.config()
    assert config["base"] == {"type": "DiagonalNormal", "kwargs": {"input_dim": D, "loc": [0.5, -1.0, 2.0],
                                                                   "scale": [1.5, 0.7, 1.0]}}
    assert config == jflow.config()
    x = _rows(12, 6, D)
    pyroflows.save(tflow, tmp_path / "f.pt")
    back = pyroflows.load(tmp_path / "f.pt")
    assert isinstance(back.base, TF.DiagonalNormal)
    with torch.no_grad():
        torch.testing.assert_close(back().log_prob(torch.as_tensor(x)), tflow().log_prob(torch.as_tensor(x)),
                                   atol=0, rtol=0)
    numpyroflows.save(jflow, tmp_path / "f.npz")
    jback = numpyroflows.load(tmp_path / "f.npz")
    assert isinstance(jback.base, JF.DiagonalNormal)
    np.testing.assert_array_equal(np.asarray(jback().log_prob(jnp.asarray(x))),
                                  np.asarray(jflow().log_prob(jnp.asarray(x))))


def test_a_recipe_given_a_trainable_base_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    flow = TF.MAF(D, num_transforms=2, hidden_dims=H)
    flow.base = TF.DiagonalNormal(D, loc=1.0)
    assert "base.loc" in flow.state_dict()
    assert flow.config()["type"] == "MAF" and flow.config()["base"]["type"] == "DiagonalNormal"
    pyroflows.save(flow, tmp_path / "maf.pt")
    back = pyroflows.load(tmp_path / "maf.pt")
    assert type(back) is TF.MAF and isinstance(back.base, TF.DiagonalNormal)
    x = torch.randn(4, D)
    with torch.no_grad():
        torch.testing.assert_close(back().log_prob(x), flow().log_prob(x), atol=0, rtol=0)


def test_the_base_size_is_checked_before_building(tmp_path):
    _, jflow = _base_pair()
    path = tmp_path / "f.npz"
    numpyroflows.save(jflow, path)
    config = jflow.config()
    config["base"]["kwargs"]["input_dim"] = 10**9
    _rewrite_npz(path, config)
    with pytest.raises(ValueError, match=r"the base, DiagonalNormal\(input_dim=1000000000\).*under 'base\.'"):
        numpyroflows.load(path)


def test_every_built_in_base_has_a_size_rule_and_both_packages_have_the_same_bases():
    assert set(TF.BASES) == set(JF.BASES)
    for pkg in (pyroflows, numpyroflows):
        built_in = {n for n, cls in pkg.flows.BASES.items() if cls.__module__.startswith(f"{pkg.__name__}.")}
        assert built_in - set(BASE_SIZES) == set(), f"{pkg.__name__}: add a base size rule to flowcommon.config"


def test_fit_trains_the_base_in_both_packages():
    """Data ``N(loc, diag(scale²))`` behind a fixed permutation: only the base has parameters, and maximum
    likelihood puts its loc and scale at the data's (permuted back)."""
    rng = np.random.default_rng(0)
    loc, scale = np.array([2.0, -1.0]), np.array([0.5, 3.0])
    x = (loc + scale * rng.normal(size=(2000, 2))).astype(np.float64)
    want_loc, want_scale = loc[::-1], scale[::-1]  # x = reverse(z)
    settings = {"max_steps": 600, "lr": 0.05, "batch_size": 256, "progress": False, "validation_fraction": 0.0}
    tflow = TF.Flow([TT.ReversePermutation(2)], base=TF.DiagonalNormal(2)).double()
    tflow, _ = pyroflows.fit(tflow, x, **settings)
    np.testing.assert_allclose(tflow.base.loc.detach().numpy(), want_loc, atol=0.1)
    np.testing.assert_allclose(tflow.base.scale.detach().numpy(), want_scale, rtol=0.05)
    jflow = JF.Flow([JT.ReversePermutation(2)], base=JF.DiagonalNormal(2))
    jflow, _ = numpyroflows.fit(jflow, x, **settings)
    np.testing.assert_allclose(np.asarray(jflow.base.params["loc"]), want_loc, atol=0.1)
    np.testing.assert_allclose(np.asarray(JF.bases.affine_scale(jflow.base.params["raw_scale"])), want_scale,
                               rtol=0.05)


def test_pyro_and_numpyro_register_the_base(fresh_param_store):
    import numpyro
    import pyro

    tflow, jflow = _base_pair()
    pyro.module("flow", tflow)
    assert {"flow$$$base.loc", "flow$$$base.raw_scale"} <= set(pyro.get_param_store().keys())
    with numpyro.handlers.trace() as tr, numpyro.handlers.seed(rng_seed=0):
        numpyroflows.module("flow", jflow)
    assert {"flow$base.loc", "flow$base.raw_scale"} <= set(tr)


def test_a_module_base_that_is_not_ours_works_but_is_not_saved():
    class Shifted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shift = torch.nn.Parameter(torch.ones(D))

        def forward(self):
            return torch.distributions.Independent(torch.distributions.Normal(self.shift, 1.0), 1)

    flow = TF.Flow([TT.DiagonalAffine(D)], base=Shifted())
    x = torch.randn(5, D)
    expected = torch.distributions.Normal(torch.ones(D), 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(flow().log_prob(x), expected)
    assert "base.shift" in flow.state_dict()
    assert flow().rsample((3,)).shape == (3, D)
    with pytest.raises(ValueError, match=r"custom base distribution \(Shifted\) cannot be saved.*TrainableBase"):
        flow.config()


def test_fixed_bases_keep_working_and_name_the_fix_when_saved():
    import numpyro.distributions as ndist

    fixed = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(D), 2.0), 1)
    tflow = TF.Flow([TT.DiagonalAffine(D)], base=fixed)
    x = torch.randn(4, D)
    torch.testing.assert_close(tflow().log_prob(x), torch.distributions.Normal(0.0, 2.0).log_prob(x).sum(-1))
    with pytest.raises(ValueError, match=r"custom base distribution \(Independent\) cannot be saved.*DiagonalNormal"):
        tflow.config()
    jflow = JF.Flow([JT.DiagonalAffine(D, key=_key(0))], base=ndist.Normal(jnp.zeros(D), 2.0).to_event(1))
    assert not any(k.startswith("base.") for k in jflow.params)
    with pytest.raises(ValueError, match=r"custom base distribution \(Independent\) cannot be saved.*DiagonalNormal"):
        jflow.config()
    with pytest.raises(ValueError, match=r"base must have event_shape \(3,\), got \(2,\)"):
        TF.Flow([TT.DiagonalAffine(D)], base=TF.DiagonalNormal(2))
    with pytest.raises(ValueError, match=r"base must have event_shape \(3,\), got \(2,\)"):
        JF.Flow([JT.DiagonalAffine(D, key=_key(0))], base=JF.DiagonalNormal(2))
    with pytest.raises(TypeError, match="base must be a torch Distribution or an nn.Module"):
        TF.Flow([TT.DiagonalAffine(D)], base=torch.nn.Linear(2, 2))


def test_autoflowguide_trains_a_callable_flows_trainable_base(fresh_param_store):
    import numpyro
    import numpyro.distributions as ndist
    import pyro
    import pyro.distributions as pdist

    def pmodel():
        pyro.sample("a", pdist.Normal(1.0, 2.0))
        pyro.sample("b", pdist.Normal(-1.0, 0.5))

    guide = pyroflows.AutoFlowGuide(
        pmodel, lambda d: TF.Flow(TF.MAF(d, num_transforms=1, hidden_dims=(8,)).transforms, base=TF.DiagonalNormal(d)))
    svi = pyro.infer.SVI(pmodel, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    svi.step()
    store = pyro.get_param_store()
    assert {"AutoFlowGuide.flow$$$base.loc", "AutoFlowGuide.flow$$$base.raw_scale"} <= set(store.keys())
    start = store["AutoFlowGuide.flow$$$base.loc"].detach().clone()
    svi.step()
    assert not torch.equal(store["AutoFlowGuide.flow$$$base.loc"].detach(), start)
    assert isinstance(guide.get_base_dist(), torch.distributions.Distribution)

    def nmodel():
        numpyro.sample("a", ndist.Normal(1.0, 2.0))
        numpyro.sample("b", ndist.Normal(-1.0, 0.5))

    jguide = numpyroflows.AutoFlowGuide(
        nmodel, lambda d: JF.Flow(JF.MAF(d, num_transforms=1, hidden_dims=(8,)).transforms, base=JF.DiagonalNormal(d)))
    svi = numpyro.infer.SVI(nmodel, jguide, numpyro.optim.Adam(0.01), numpyro.infer.Trace_ELBO())
    state = svi.init(_key(0))
    before = svi.get_params(state)["auto_flow$base.loc"]
    after = svi.get_params(svi.update(state)[0])["auto_flow$base.loc"]
    assert not np.array_equal(np.asarray(before), np.asarray(after))
    assert isinstance(jguide.get_base_dist(), ndist.Distribution)

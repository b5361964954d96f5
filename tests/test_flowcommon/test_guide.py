"""``flowcommon.guide``, the backend-free half of both ``AutoFlowGuide`` classes: the flow table both packages resolve,
the default width rule (linear cost in the latent size), the argument checks and their messages, the stopping test of
the mode search (``converged`` only at a stationary point), and the Laplace algebra against dense linear algebra."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from flowcommon import guide as common


@pytest.mark.parametrize("package", ["pyroflows", "numpyroflows"])
def test_each_package_resolves_the_one_flow_table(package):
    pytest.importorskip("torch" if package == "pyroflows" else "jax")
    pkg = importlib.import_module(f"{package}.infer")
    recipes = importlib.import_module(f"{package}.flows.recipes")
    assert list(pkg.FLOWS) == list(common.FLOW_RECIPES)
    for name, (recipe, fixed) in pkg.FLOWS.items():
        assert recipe is getattr(recipes, common.FLOW_RECIPES[name][0]) and fixed == common.FLOW_RECIPES[name][1]
    assert pkg.AutoFlowGuide.laplace_max_dim == common.LAPLACE_MAX_DIM


def test_default_hidden_dims_keep_small_models_and_cap_large_ones():
    assert common.default_hidden_dims(1) == common.default_hidden_dims(8) == (32, 32)
    assert common.default_hidden_dims(12) == (48, 48) and common.default_hidden_dims(64) == (256, 256)
    assert common.default_hidden_dims(65) == common.default_hidden_dims(2000) == (256, 256)

    def made_size(d, h, p=2):  # [W_1, b_1, W_2, b_2, W_3, b_3] of a MADE with two hidden layers of h units
        return d * h + h + h * h + h + h * p * d + p * d

    # linear in D above the cap: doubling D doubles the parameters (to within the constant H² term)
    sizes = [made_size(d, common.default_hidden_dims(d)[0]) for d in (1000, 2000, 4000)]
    assert sizes[2] - sizes[1] == 2 * (sizes[1] - sizes[0])
    # the default IAF (three MADEs) at D = 2000: 4.8M parameters, where 4 D units per layer gave 336M
    assert 3 * made_size(2000, 256) == 4_818_144 and 3 * made_size(2000, 4 * 2000) == 336_060_000


def test_argument_checks_name_the_fix():
    assert common.check_init_scale(0.5, 1e-3) == 0.5
    for bad in (0.0, True, "0.1", 1e-3):
        with pytest.raises(ValueError, match=r"init_scale must be a number > 0.001"):
            common.check_init_scale(bad, 1e-3)
    with pytest.raises(ValueError, match="num_transforms must be a positive integer"):
        common.check_positive_int(0, "num_transforms")
    common.check_warm_start(None, option=True)
    with pytest.raises(ValueError, match=r"warm_start must be 'auto', 'laplace', 'map' or None"):
        common.check_warm_start("mode", option=True)
    with pytest.raises(ValueError, match=r"num_steps must be a non-negative integer"):
        common.check_warm_start("map", -1)
    with pytest.raises(ValueError, match=r"D = 5 > laplace_max_dim = 4: use method='map'"):
        common.check_laplace_size(5, 4)


def test_messages_spell_each_ppl():
    msg = common.subsampled_site_message("z", "data", 5, 40, "numpyro", ["data", "outer"])
    assert "numpyro.handlers.block(model, expose=['z', 'data', 'outer'])" in msg
    assert "numpyro.handlers.block(model, hide=['z'])" in msg
    assert "poutine.block(model, expose=['z'])" in common.subsampled_site_message("z", "data", 5, 40, "pyro")
    assert "poutine.block(model, hide=['k'])" in common.discrete_site_message("k", "Bernoulli", "pyro")
    assert "every numpyro.sample" in common.no_latent_message("numpyro")


def test_converged_means_stationary():
    """A search that stops because -log p no longer decreases is converged only where the gradient, scaled to the
    sizes of u and f (Dennis & Schnabel), is small: a float32 search stuck at u = -4e5 with gradient 0.7 and
    f = 3e5 is not."""
    stuck = common.relative_gradient(np.array([0.7, 1e-3]), np.array([-4e5, 8.6]), 3e5)
    assert stuck > 0.5
    assert common.describe_search(common.NO_DECREASE, 30, 1000, 3e5, stuck) == (False, pytest.approx(
        "stopped after 30 iterations: no further decrease, but the relative gradient 0.933 is above 6.1e-06, so the "
        "point is not a mode"))
    at_mode = common.relative_gradient(np.array([1e-9, -2e-9]), np.array([1.05, 0.08]), 91.8)
    assert common.describe_search(common.NO_DECREASE, 74, 1000, 91.8, at_mode)[0]
    assert common.describe_search(common.GRAD_SMALL, 0, 1000, 1.0, 0.0)[1] == (
        "the starting point is already a stationary point")
    assert common.describe_search(common.RUNNING, 1000, 1000, 1.0, 0.0) == (
        False, "stopped after num_steps=1000 iterations")
    with pytest.warns(RuntimeWarning, match=r"not finite at a point the search tried \(NaN\).*init_to_value"):
        assert not common.describe_search(common.NOT_FINITE, 3, 1000, 1.0, 0.0, "NaN")[0]


def test_laplace_factor_is_the_lower_cholesky_factor_of_the_inverse():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    h = a @ a.T + 0.1 * np.eye(6)
    c, floored = common.laplace_factor(h, 0.1)
    assert floored == 0 and np.array_equal(c, np.tril(c)) and np.all(np.diag(c) > 0)
    np.testing.assert_allclose(c @ c.T, np.linalg.inv(h), rtol=1e-9, atol=1e-12)
    # an indefinite Hessian: its non-positive eigenvalue is raised to 1 / init_scale²
    h = np.diag([4.0, -1.0, 0.0])
    c, floored = common.laplace_factor(h, 0.5)
    assert floored == 2
    np.testing.assert_allclose(c @ c.T, np.diag([0.25, 0.25, 0.25]), atol=1e-12)
    with pytest.warns(RuntimeWarning, match=r"2 eigenvalue\(s\) that are not clearly positive"):
        factor, n, message = common.laplace_outcome(h, 0.5, "converged")
    assert n == 2 and message.startswith("converged; 2 eigenvalue(s)")
    with pytest.warns(RuntimeWarning, match="is not finite: fell back to method='map'"):
        assert common.laplace_outcome(np.array([[np.nan]]), 0.5, "")[0] is None


def test_auto_is_laplace_where_the_hessian_fits_else_map():
    assert common.DEFAULT_WARM_START == "auto"
    assert common.resolve_warm_start("auto", 3, 2000) == "laplace"
    assert common.resolve_warm_start("auto", 2000, 2000) == "laplace"
    assert common.resolve_warm_start("auto", 2001, 2000) == "map"
    assert common.resolve_warm_start("map", 3, 2000) == "map"
    common.check_warm_start("auto", option=True)
    common.check_warm_start("auto", 10)
    with pytest.raises(ValueError, match="'auto', 'laplace', 'map' or None"):
        common.check_warm_start("lbfgs", option=True)


def test_keep_warm_start_only_a_clean_mode_or_a_better_start():
    assert common.keep_warm_start("laplace", True, 0, -20.0, -5.0, "m") == (True, "m")
    assert common.keep_warm_start("map", True, 0, -4.0, -5.0, "m") == (True, "m")
    with pytest.warns(RuntimeWarning, match="keeps its default start"):
        keep, message = common.keep_warm_start("map", True, 0, -20.0, -5.0, "m")
    assert not keep and message.startswith("m; the warm start's ELBO (-20) is below")
    with pytest.warns(RuntimeWarning, match="keeps its default start"):
        assert not common.keep_warm_start("laplace", True, 0, float("nan"), -5.0, "m")[0]

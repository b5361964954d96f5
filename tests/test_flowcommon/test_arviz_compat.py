"""flowcommon.arviz_compat: the same PSIS and the same containers under ArviZ 0.x and 1.x (whichever is installed;
CI runs this file on both). Known answers: log weights of generalized-Pareto ratios with shape k give k̂ near k."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("arviz", reason="the diagnostics need ArviZ (installed by `make test`)")
import xarray as xr  # noqa: E402

from flowcommon import arviz_compat  # noqa: E402
from flowcommon.diagnostics import psis  # noqa: E402


def _pareto_log_ratios(shape: float, num: int, seed: int = 0) -> np.ndarray:
    """log of ratios r = U^-k, U uniform: a Pareto tail, P(r > t) = t^(-1/k), whose shape is k."""
    return -shape * np.log(np.random.default_rng(seed).uniform(size=num))


@pytest.mark.parametrize("shape", [0.3, 0.8])
def test_psis_recovers_a_known_tail_shape(shape):
    khats = [arviz_compat.psislw(_pareto_log_ratios(shape, 4000, seed))[1] for seed in range(5)]
    assert abs(np.mean(khats) - shape) < 0.1, khats


def test_psis_weights_are_normalised_and_keep_the_order():
    lw = np.random.default_rng(1).normal(scale=2.0, size=1000)
    smoothed, khat = arviz_compat.psislw(lw)
    assert math.isclose(np.exp(smoothed).sum(), 1.0, rel_tol=1e-10)
    assert np.all(np.diff(smoothed[np.argsort(lw)]) >= -1e-12)  # smoothing only replaces the tail by its quantiles
    body = lw < np.quantile(lw, 0.5)
    assert np.allclose(smoothed[body] - lw[body], smoothed[body][0] - lw[body][0])  # the body is only renormalised
    assert 0.0 < khat < 2.0


def test_light_tails_are_good_and_heavy_tails_unreliable():
    assert psis(np.random.default_rng(2).normal(scale=0.1, size=2000))[0] < 0.5
    assert psis(_pareto_log_ratios(1.2, 2000))[0] > 0.7


def test_container_matches_the_installed_major():
    ds = xr.Dataset({"mu": (("chain", "draw"), np.zeros((2, 30)))}, coords={"chain": [0, 1], "draw": np.arange(30)})
    data = arviz_compat.inference_data({"posterior": ds}, {"psis_khat": 0.3})
    assert arviz_compat.group_names(data) == ["posterior"]
    assert data.attrs["psis_khat"] == 0.3 and data.posterior["mu"].shape == (2, 30)
    expected = "InferenceData" if arviz_compat.major() == 0 else "DataTree"
    assert type(data).__name__ == expected
    draws = arviz_compat.from_draws({"mu": np.ones((1, 40))})
    assert draws.posterior["mu"].shape == (1, 40)


def test_importing_arviz_through_the_library_shows_no_future_warning():
    """ArviZ 0.x warns on import that it is being refactored; a user of the diagnostics must not see that."""
    script = "from flowcommon import arviz_compat; arviz_compat.arviz(); print('ok')"
    result = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", script], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]

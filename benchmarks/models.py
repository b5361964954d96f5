"""Posteriors with known answers, written as Pyro and NumPyro models, for ``posteriors.py``.

Four posteriordb posteriors (Magnusson et al. 2024, arXiv:2407.04967; BSD-3, see
``data/posteriordb/LICENCE_posteriordb_BSD3.md``), each translated from its ``model.stan`` (same priors, same
constraints; Stan's implicit flat priors become ``ImproperUniform``), scored against the Stan NUTS reference mean and
sd of every scalar (``reference_summary.csv``); and two targets with exact moments (``../shared/data/toy2d``): Neal's
funnel in 10-D and the banana.

Every posterior gives ``pyro_model()`` and ``numpyro_model()`` (no arguments: data are bound in), and ``reference``:
``{name: (mean, sd)}`` with Stan's names (``theta[1]``, ``beta[2]``, ...), which :func:`flatten_draws` produces from
a dict of draws keyed by site.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "posteriordb"
#: the posteriordb reference draws (not shipped here: 4 MB of JSON); used for the noise floor when present
SHARED_DRAWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "posteriordb"


@dataclass
class Posterior:
    name: str
    dim: int
    pyro_model: Callable[[], None]
    numpyro_model: Callable[[], None]
    reference: dict[str, tuple[float, float]]  # scalar name -> (mean, sd)
    #: ``exact(rng, n)``: ``n`` independent posterior draws keyed like ``reference`` (for the noise floor of the
    #: scores), or ``None`` where none are at hand
    exact: Callable[[np.random.Generator, int], dict[str, np.ndarray]] | None = None


def _reference(folder: str) -> dict[str, tuple[float, float]]:
    with open(DATA / folder / "reference_summary.csv") as f:
        return {row["param"]: (float(row["mean"]), float(row["sd"])) for row in csv.DictReader(f)}


def _bootstrap(folder: str) -> Callable[[np.random.Generator, int], dict[str, np.ndarray]] | None:
    """Draws with replacement from posteriordb's reference draws (10 chains x 1000 thinned NUTS draws, near
    independent), where the file is at hand."""
    path = SHARED_DRAWS / folder / "reference_draws.json"
    if not path.exists():
        return None
    chains = json.loads(path.read_text())
    pooled = {k: np.concatenate([np.asarray(c[k], dtype=float) for c in chains]) for k in chains[0]}
    size = len(next(iter(pooled.values())))

    def exact(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        idx = rng.integers(0, size, n)
        return {k: v[idx] for k, v in pooled.items()}

    return exact


def _data(folder: str) -> dict:
    return json.loads((DATA / folder / "data.json").read_text())


def _pyro_flat(support, event_shape: tuple = ()):
    """Stan's implicit flat prior as a Pyro ``ImproperUniform`` whose ``sample`` returns the point that maps to zero
    in unconstrained space: Pyro's init strategies (``init_to_feasible``, ``init_to_median``) call ``sample``, which
    ``ImproperUniform`` refuses. (NumPyro's init strategies handle ``ImproperUniform`` themselves.)"""
    import pyro.distributions as dist
    import torch
    from torch.distributions import biject_to

    class Flat(dist.ImproperUniform):
        def sample(self, sample_shape=()):
            return biject_to(self.support)(torch.zeros(self.shape(torch.Size(sample_shape))))

    return Flat(support, (), event_shape)


def _pyro_vector(value):
    """A vector-valued global site ``(..., K)`` with the singleton dim of the plates in front of its event dim.

    Pyro's autoguides hand such a site back as ``(S, 1, K)`` under some vectorized plates and ``(S, K)`` under others
    (e.g. AutoNormal inside ``Predictive(parallel=True)``); the model needs ``(S, 1, K)`` so that ``S`` stays left of
    the data plate."""
    if value.dim() >= 2 and value.shape[-2] != 1:
        value = value.unsqueeze(-2)
    return value


def flatten_draws(draws: dict[str, np.ndarray], names: set[str] | None = None) -> dict[str, np.ndarray]:
    """``{site: (S, *shape)}`` -> ``{"site" or "site[i]" (1-based, Stan's naming): (S,)}``, keeping ``names`` only."""
    out = {}
    for site, v in draws.items():
        flat = np.asarray(v).reshape(len(v), -1)  # Pyro's Predictive pads scalars with plate dims: (S, 1, ...)
        if flat.shape[1] == 1:
            out[site] = flat[:, 0]
        else:
            for i in range(flat.shape[1]):
                out[f"{site}[{i + 1}]"] = flat[:, i]
    return out if names is None else {k: v for k, v in out.items() if k in names}


# ------------------------------------------------------------------------------------------------ the models


def eight_schools() -> Posterior:
    folder = "eight_schools-eight_schools_noncentered"
    d = _data(folder)
    y, sigma = np.asarray(d["y"], float), np.asarray(d["sigma"], float)

    def pyro_model():
        import pyro
        import pyro.distributions as dist
        import torch

        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("school", len(y)):
            theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
            theta = pyro.deterministic("theta", mu + tau * theta_trans)
            pyro.sample("y", dist.Normal(theta, torch.as_tensor(sigma, dtype=theta.dtype)),
                        obs=torch.as_tensor(y, dtype=theta.dtype))

    def numpyro_model():
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        with numpyro.plate("school", len(y)):
            theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
            theta = numpyro.deterministic("theta", mu + tau * theta_trans)
            numpyro.sample("y", dist.Normal(theta, jnp.asarray(sigma)), obs=jnp.asarray(y))

    return Posterior("eight_schools_noncentered", 10, pyro_model, numpyro_model, _reference(folder),
                     _bootstrap(folder))


def kidiq() -> Posterior:
    folder = "kidiq-kidscore_momiq"
    d = _data(folder)
    kid, mom = np.asarray(d["kid_score"], float), np.asarray(d["mom_iq"], float)

    def pyro_model():
        import pyro
        import pyro.distributions as dist
        import torch
        from torch.distributions import constraints

        beta = pyro.sample("beta", _pyro_flat(constraints.real, (2,)))
        sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
        with pyro.plate("N", len(kid)):
            b = _pyro_vector(beta)
            mean = b[..., 0] + b[..., 1] * torch.as_tensor(mom, dtype=beta.dtype)
            pyro.sample("kid_score", dist.Normal(mean, sigma), obs=torch.as_tensor(kid, dtype=beta.dtype))

    def numpyro_model():
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.distributions import constraints

        beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
        with numpyro.plate("N", len(kid)):
            mean = beta[..., 0] + beta[..., 1] * jnp.asarray(mom)
            numpyro.sample("kid_score", dist.Normal(mean, sigma), obs=jnp.asarray(kid))

    return Posterior("kidiq_momiq", 3, pyro_model, numpyro_model, _reference(folder),
                     _bootstrap(folder))


def earnings() -> Posterior:
    folder = "earnings-logearn_interaction"
    d = _data(folder)
    log_earn = np.log(np.asarray(d["earn"], float))
    height, male = np.asarray(d["height"], float), np.asarray(d["male"], float)
    design = np.stack([np.ones_like(height), height, male, height * male], -1)  # (N, 4)

    def pyro_model():
        import pyro
        import pyro.distributions as dist
        import torch
        from torch.distributions import constraints

        beta = pyro.sample("beta", _pyro_flat(constraints.real, (4,)))
        sigma = pyro.sample("sigma", _pyro_flat(constraints.positive))
        with pyro.plate("N", len(log_earn)):
            mean = (_pyro_vector(beta) * torch.as_tensor(design, dtype=beta.dtype)).sum(-1)
            pyro.sample("log_earn", dist.Normal(mean, sigma),
                        obs=torch.as_tensor(log_earn, dtype=beta.dtype))

    def numpyro_model():
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.distributions import constraints

        beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
        sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
        with numpyro.plate("N", len(log_earn)):
            mean = jnp.sum(beta * jnp.asarray(design), -1)
            numpyro.sample("log_earn", dist.Normal(mean, sigma), obs=jnp.asarray(log_earn))

    return Posterior("earnings_interaction", 5, pyro_model, numpyro_model, _reference(folder),
                     _bootstrap(folder))


def garch() -> Posterior:
    """GARCH(1,1). Stan's ``beta1 in (0, 1 - alpha1)`` with a flat prior is written ``beta1 = (1 - alpha1) u``,
    ``u ~ Uniform(0, 1)``, plus the factor ``log(1 - alpha1)`` that makes the prior flat in ``beta1`` again (Pyro's
    autoguides fix each site's support at initialisation, so a support that depends on another site must be
    reparametrised)."""
    folder = "garch-garch11"
    d = _data(folder)
    y, sigma1 = np.asarray(d["y"], float), float(d["sigma1"])

    t = len(y) - 1
    # lag[j, s] = j - s on and below the diagonal (s <= j), else 0; below[j, s] = 1 there, else 0
    lag = np.tril(np.arange(t)[:, None] - np.arange(t)[None, :]).astype(float)
    below = np.tril(np.ones((t, t)))

    def variance(mu, alpha0, alpha1, beta1, y, xp):
        """sigma_t² for t = 2..T: the linear recursion ``v_t = alpha0 + alpha1 (y_{t-1} - mu)² + beta1 v_{t-1}``,
        ``v_1 = sigma1²``, unrolled as ``v_{j+2} = beta1^{j+1} sigma1² + Σ_{s<=j} beta1^{j-s} (alpha0 + alpha1
        (y_{s+1} - mu)²)`` (0-based j, s) so that both backends stay vectorised over draws."""
        drive = alpha0 + alpha1 * (y[:-1] - mu) ** 2  # (..., T-1)
        log_b = xp.log(beta1)[..., None]
        weights = xp.exp(log_b * xp.asarray(lag, dtype=drive.dtype)) * xp.asarray(below, dtype=drive.dtype)
        carried = xp.exp(xp.log(beta1) * xp.asarray(np.arange(1, t + 1), dtype=drive.dtype)) * sigma1**2
        return (weights * drive[..., None, :]).sum(-1) + carried

    def pyro_model():
        import pyro
        import pyro.distributions as dist
        import torch
        from torch.distributions import constraints

        yt = torch.as_tensor(y)
        mu = pyro.sample("mu", _pyro_flat(constraints.real))
        alpha0 = pyro.sample("alpha0", _pyro_flat(constraints.positive))
        alpha1 = pyro.sample("alpha1", dist.Uniform(0.0, 1.0))
        u = pyro.sample("beta1_unit", dist.Uniform(0.0, 1.0))
        beta1 = pyro.deterministic("beta1", (1 - alpha1) * u)
        pyro.factor("beta1_flat_prior", torch.log1p(-alpha1))
        var = variance(mu, alpha0, alpha1, beta1, yt.to(mu.dtype), torch)
        scale = torch.cat([torch.full_like(var[..., :1], sigma1), var.sqrt()], -1)
        with pyro.plate("T", len(y)):
            pyro.sample("y", dist.Normal(mu, scale), obs=yt.to(mu.dtype))

    def numpyro_model():
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.distributions import constraints

        yj = jnp.asarray(y)
        mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
        alpha0 = numpyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
        alpha1 = numpyro.sample("alpha1", dist.Uniform(0.0, 1.0))
        u = numpyro.sample("beta1_unit", dist.Uniform(0.0, 1.0))
        beta1 = numpyro.deterministic("beta1", (1 - alpha1) * u)
        numpyro.factor("beta1_flat_prior", jnp.log1p(-alpha1))
        var = variance(mu, alpha0, alpha1, beta1, yj, jnp)
        scale = jnp.concatenate([jnp.full_like(var[..., :1], sigma1), jnp.sqrt(var)], -1)
        with numpyro.plate("T", len(y)):
            numpyro.sample("y", dist.Normal(mu, scale), obs=yj)

    return Posterior("garch11", 4, pyro_model, numpyro_model, _reference(folder),
                     _bootstrap(folder))


def funnel(dim: int = 10) -> Posterior:
    """Neal's funnel: ``v ~ N(0, 3²)``, ``x_i ~ N(0, e^v)``; exact moments: mean 0, sd(v) = 3, sd(x_i) = e^{9/4}."""

    def pyro_model():
        import pyro
        import pyro.distributions as dist

        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        with pyro.plate("i", dim - 1):
            # no [..., None]: with vectorized particles v is (P, 1), the batch dim left of the plate
            pyro.sample("x", dist.Normal(0.0, (v / 2).exp()))

    def numpyro_model():
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        v = numpyro.sample("v", dist.Normal(0.0, 3.0))
        with numpyro.plate("i", dim - 1):
            numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)))

    def exact(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        v = rng.normal(0.0, 3.0, n)
        x = rng.normal(0.0, 1.0, (dim - 1, n)) * np.exp(v / 2)
        return {"v": v, **{f"x[{i + 1}]": x[i] for i in range(dim - 1)}}

    ref = {"v": (0.0, 3.0), **{f"x[{i + 1}]": (0.0, math.exp(2.25)) for i in range(dim - 1)}}
    return Posterior(f"funnel{dim}", dim, pyro_model, numpyro_model, ref, exact)


def banana() -> Posterior:
    """``x0 ~ N(0, 10²)``, ``x1 ~ N(0.03 (x0² - 100), 1)``: mean 0, sd(x0) = 10, sd(x1) = √19."""

    def pyro_model():
        import pyro
        import pyro.distributions as dist

        x0 = pyro.sample("x0", dist.Normal(0.0, 10.0))
        pyro.sample("x1", dist.Normal(0.03 * (x0**2 - 100), 1.0))

    def numpyro_model():
        import numpyro
        import numpyro.distributions as dist

        x0 = numpyro.sample("x0", dist.Normal(0.0, 10.0))
        numpyro.sample("x1", dist.Normal(0.03 * (x0**2 - 100), 1.0))

    def exact(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        x0 = rng.normal(0.0, 10.0, n)
        return {"x0": x0, "x1": rng.normal(0.03 * (x0**2 - 100), 1.0)}

    return Posterior("banana", 2, pyro_model, numpyro_model, {"x0": (0.0, 10.0), "x1": (0.0, math.sqrt(19.0))},
                     exact)


POSTERIORS: dict[str, Callable[[], Posterior]] = {
    "eight_schools": eight_schools, "kidiq": kidiq, "earnings": earnings, "garch": garch, "funnel": funnel,
    "banana": banana,
}

"""Two-dimensional test problems shared by the examples: toy data sets and unnormalized energies.

Data sets (``sample(name, n, seed)``) are the toy densities popularised by FFJORD (Grathwohl et al. 2019) and used
across the flow literature: ``moons``, ``8gaussians``, ``checkerboard``, ``pinwheel``, ``2spirals``, ``rings``. Each
generator takes a sample size and a ``numpy.random.Generator`` and returns a ``float32`` array of shape ``(n, 2)``;
all live roughly in ``[-4, 4]^2``.

Energies are 2-D targets for variational inference, evaluated on any batch shape ``(..., 2)``.
:func:`banana_log_prob` (torch) is normalized (its exact moments are in :data:`BANANA_MOMENTS`). :data:`ENERGIES` holds
the four energies ``U1``-``U4`` of Rezende & Mohamed (2015), written once for torch, JAX and numpy, with reference log
normalizers in :data:`ENERGY_LOG_Z`.

Example:
    >>> x = sample("8gaussians", 1000, seed=0)
    >>> x.shape, x.dtype
    ((1000, 2), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Array = np.ndarray


# ------------------------------------------------------------------------------------------------------- data sets
def moons(n: int, rng: np.random.Generator) -> Array:
    """Two interleaved half circles with Gaussian noise of sd 0.1, scaled by 2 and shifted by ``(-1, -0.2)``."""
    n_outer = n // 2
    t = rng.uniform(0.0, math.pi, size=n)
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where((np.arange(n) < n_outer)[:, None], outer, inner)
    x = x + 0.1 * rng.standard_normal((n, 2))
    return (2.0 * x + np.array([-1.0, -0.2])).astype(np.float32)


def eight_gaussians(n: int, rng: np.random.Generator) -> Array:
    """A ring of 8 Gaussians: centres ``4 (cos kπ/4, sin kπ/4)``, sd 0.5, everything divided by 1.414."""
    k = rng.integers(0, 8, size=n)
    centres = 4.0 * np.stack([np.cos(k * math.pi / 4), np.sin(k * math.pi / 4)], axis=1)
    x = centres + 0.5 * rng.standard_normal((n, 2))
    return (x / 1.414).astype(np.float32)


def checkerboard(n: int, rng: np.random.Generator) -> Array:
    """A 4x4 checkerboard on ``[-4, 4]^2`` with mass on 8 of its squares, uniform inside each."""
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.uniform(0.0, 1.0, size=n) - 2.0 * rng.integers(0, 2, size=n) + np.mod(np.floor(x1), 2)
    return (2.0 * np.stack([x1, x2], axis=1)).astype(np.float32)


def pinwheel(n: int, rng: np.random.Generator, arms: int = 5) -> Array:
    """A pinwheel of ``arms`` curved arms: radial sd 0.3 around 1, tangential sd 0.1, each point rotated by its arm's
    angle plus ``0.25 exp(r)``, then scaled by 2."""
    arm = rng.integers(0, arms, size=n)
    r = 1.0 + 0.3 * rng.standard_normal(n)
    t = 0.1 * rng.standard_normal(n)
    angle = 2.0 * math.pi * arm / arms + 0.25 * np.exp(r)
    c, s = np.cos(angle), np.sin(angle)
    x = np.stack([c * r - s * t, s * r + c * t], axis=1)
    return (2.0 * x).astype(np.float32)


def two_spirals(n: int, rng: np.random.Generator) -> Array:
    """Two interleaved spirals: ``u = sqrt(U) 3π``, points ``±(-u cos u + U'/2, u sin u + U''/2) / 3`` plus noise of
    sd 0.1."""
    u = np.sqrt(rng.uniform(0.0, 1.0, size=n)) * 3.0 * math.pi
    x = np.stack([-u * np.cos(u) + 0.5 * rng.uniform(size=n), u * np.sin(u) + 0.5 * rng.uniform(size=n)], axis=1)
    sign = np.where(rng.integers(0, 2, size=n) == 0, 1.0, -1.0)[:, None]
    x = sign * x / 3.0 + 0.1 * rng.standard_normal((n, 2))
    return x.astype(np.float32)


def rings(n: int, rng: np.random.Generator) -> Array:
    """Four concentric circles of radius 1, 0.75, 0.5 and 0.25 (equal mass), scaled by 3, plus noise of sd 0.08."""
    radius = np.array([1.0, 0.75, 0.5, 0.25])[rng.integers(0, 4, size=n)]
    t = rng.uniform(0.0, 2.0 * math.pi, size=n)
    x = 3.0 * radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return (x + 0.08 * rng.standard_normal((n, 2))).astype(np.float32)


DATASETS: dict[str, Callable[[int, np.random.Generator], Array]] = {
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "2spirals": two_spirals,
    "rings": rings,
}


def sample(name: str, n: int, seed: int | np.random.Generator = 0) -> Array:
    """``n`` points of the toy data set ``name`` (one of :data:`DATASETS`), reproducible from ``seed``."""
    try:
        gen = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}") from None
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return gen(n, rng)


# ------------------------------------------------------------------------------------------------------- energies
#: Exact moments of the banana: mean and standard deviation of each coordinate.
BANANA_MOMENTS = {"mean": (0.0, 0.0), "sd": (10.0, math.sqrt(19.0))}


def banana_log_prob(z: torch.Tensor, curvature: float = 0.03) -> torch.Tensor:
    """Normalized log-density of the banana ``z0 ~ N(0, 10²)``, ``z1 | z0 ~ N(curvature (z0² - 100), 1)``.

    With the default curvature 0.03 the moments are exact: both means 0, ``sd(z0) = 10``,
    ``sd(z1) = sqrt(0.03² · 2 · 10⁴ + 1) = sqrt(19)``. ``z`` has shape ``(..., 2)``; the result ``(...)``.
    """
    z0, z1 = z[..., 0], z[..., 1]
    lp0 = -0.5 * (z0 / 10.0) ** 2 - math.log(10.0)
    lp1 = -0.5 * (z1 - curvature * (z0**2 - 100.0)) ** 2
    return lp0 + lp1 - math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------------------------- exact densities
def eight_gaussians_log_prob(x: Array) -> Array:
    """Exact log-density of :func:`eight_gaussians` (an equal-weight mixture of 8 isotropic Gaussians)."""
    k = np.arange(8)
    centres = 4.0 * np.stack([np.cos(k * math.pi / 4), np.sin(k * math.pi / 4)], axis=1) / 1.414
    sd = 0.5 / 1.414
    sq = ((np.asarray(x, dtype=np.float64)[:, None, :] - centres) ** 2).sum(-1)
    comp = -0.5 * sq / sd**2 - math.log(2.0 * math.pi * sd**2) - math.log(8.0)
    m = comp.max(1, keepdims=True)
    return (m + np.log(np.exp(comp - m).sum(1, keepdims=True)))[:, 0]


def checkerboard_log_prob(x: Array) -> Array:
    """Exact log-density of :func:`checkerboard`: ``log(1/32)`` on its 8 squares of side 2, ``-inf`` elsewhere."""
    x = np.asarray(x, dtype=np.float64)
    inside = (np.abs(x) <= 4.0).all(1)
    cell = np.floor(x / 2.0).astype(int)
    on = ((cell[:, 0] + cell[:, 1]) % 2 == 0) & inside
    return np.where(on, -math.log(32.0), -np.inf)


#: Exact log-densities for the data sets that have one in closed form.
LOG_PROBS: dict[str, Callable[[Array], Array]] = {
    "8gaussians": eight_gaussians_log_prob,
    "checkerboard": checkerboard_log_prob,
}


# ------------------------------------------------------------------------------------- Rezende-Mohamed energies
def _namespace(z):
    """The array module of ``z``: ``torch`` for tensors, ``jax.numpy`` for JAX arrays, ``numpy`` otherwise."""
    if isinstance(z, torch.Tensor):
        return torch
    if type(z).__module__.startswith("jax"):
        import jax.numpy as jnp

        return jnp
    return np


def _w1(z0, xp):
    return xp.sin(0.5 * math.pi * z0)


def _w2(z0, xp):
    return 3.0 * xp.exp(-0.5 * ((z0 - 1.0) / 0.6) ** 2)


def _w3(z0, xp):
    return 3.0 / (1.0 + xp.exp(-(z0 - 1.0) / 0.3))  # 3 sigmoid((z0 - 1) / 0.3)


def energy_u1(z, xp=None):
    """Rezende & Mohamed's ``U1``: a ring of radius 2 cut into two arcs,
    ``((|z| - 2)/0.4)²/2 - log[exp(-((z0 - 2)/0.6)²/2) + exp(-((z0 + 2)/0.6)²/2)]``; normalizable on the plane."""
    xp = xp or _namespace(z)
    z0, z1 = z[..., 0], z[..., 1]
    radius = xp.sqrt(z0 * z0 + z1 * z1)
    arcs = xp.logaddexp(-0.5 * ((z0 - 2.0) / 0.6) ** 2, -0.5 * ((z0 + 2.0) / 0.6) ** 2)
    return 0.5 * ((radius - 2.0) / 0.4) ** 2 - arcs


def energy_u2(z, xp=None):
    """Rezende & Mohamed's ``U2``: a sine wave, ``((z1 - w1(z0))/0.4)²/2`` with ``w1 = sin(π z0 / 2)``."""
    xp = xp or _namespace(z)
    return 0.5 * ((z[..., 1] - _w1(z[..., 0], xp)) / 0.4) ** 2


def energy_u3(z, xp=None):
    """Rezende & Mohamed's ``U3``: a sine wave and a bump below it,
    ``-log[exp(-((z1 - w1)/0.35)²/2) + exp(-((z1 - w1 + w2)/0.35)²/2)]``, ``w2 = 3 exp(-((z0 - 1)/0.6)²/2)``."""
    xp = xp or _namespace(z)
    z0, z1 = z[..., 0], z[..., 1]
    a = z1 - _w1(z0, xp)
    return -xp.logaddexp(-0.5 * (a / 0.35) ** 2, -0.5 * ((a + _w2(z0, xp)) / 0.35) ** 2)


def energy_u4(z, xp=None):
    """Rezende & Mohamed's ``U4``: a sine wave and a step below it,
    ``-log[exp(-((z1 - w1)/0.4)²/2) + exp(-((z1 - w1 + w3)/0.35)²/2)]``, ``w3 = 3 sigmoid((z0 - 1)/0.3)``."""
    xp = xp or _namespace(z)
    z0, z1 = z[..., 0], z[..., 1]
    a = z1 - _w1(z0, xp)
    return -xp.logaddexp(-0.5 * (a / 0.4) ** 2, -0.5 * ((a + _w3(z0, xp)) / 0.35) ** 2)


#: The four 2-D energies of Rezende & Mohamed (2015, Table 1), ``p(z) ∝ exp(-U(z))``. Each takes ``z`` of shape
#: ``(..., 2)`` as a torch tensor, a JAX array or a numpy array (the array module is inferred, or pass ``xp=``) and
#: returns ``U(z)`` of shape ``(...)`` in the same library, differentiable in torch and JAX.
ENERGIES: dict[str, Callable] = {"U1": energy_u1, "U2": energy_u2, "U3": energy_u3, "U4": energy_u4}

#: Half-width of the box ``[-4, 4]²`` on which :data:`ENERGY_LOG_Z` is defined for U2-U4.
ENERGY_BOX = 4.0

#: Reference ``log Z = log ∫ exp(-U(z)) dz``. U1 is normalizable on the plane (the value is the integral over
#: ``[-8, 8]²``, which equals the one over ``[-4, 4]²`` to 1e-8); U2-U4 are not (``exp(-U)`` does not decay along
#: ``z0``), so their ``log Z`` is over the box ``[-ENERGY_BOX, ENERGY_BOX]² = [-4, 4]²``. Source: the project's shared
#: data ``toy2d/rezende_U1_U4_logZ.json`` (copied here; nothing reads it at run time), computed there by a grid sum,
#: not a closed form: ``exp(-U)`` summed over ``linspace(-a, a, 8000 a + 1)²`` times ``0.002²``. That grid includes
#: both edges, so for U2-U4, whose mass reaches the edges of the box, it counts half a row too much on each side:
#: the midpoint sum :func:`energy_log_z` gives values 2.5e-4 (U2, U3) and 3.4e-4 (U4) nats lower, and the same U1 to
#: 1e-8. Gaps ``log Z - ELBO`` computed with these constants are therefore too large by at most 3.4e-4 nats.
ENERGY_LOG_Z: dict[str, float] = {
    "U1": 1.8775016261094883,  # plane ([-8, 8]^2)
    "U2": 2.0823393117653346,  # box [-4, 4]^2
    "U3": 2.6419550996150036,  # box [-4, 4]^2
    "U4": 2.6849045481182756,  # box [-4, 4]^2
}

#: Where :data:`ENERGY_LOG_Z` integrates: ``None`` for the whole plane, else the box half-width.
ENERGY_DOMAIN: dict[str, float | None] = {"U1": None, "U2": ENERGY_BOX, "U3": ENERGY_BOX, "U4": ENERGY_BOX}


def energy_log_z(name: str, half_width: float = ENERGY_BOX, spacing: float = 0.002) -> float:
    """``log ∫ exp(-U(z)) dz`` over ``[-half_width, half_width]²`` by a midpoint sum on a grid (numpy, float64)."""
    u = ENERGIES[name]
    centres = np.arange(-half_width + spacing / 2, half_width, spacing)
    total = []
    for chunk in np.array_split(centres, max(1, len(centres) // 500)):  # rows of the grid, in chunks of memory
        z = np.stack(np.meshgrid(centres, chunk, indexing="xy"), -1)
        neg = -u(z, np)
        m = neg.max()
        total.append(m + np.log(np.exp(neg - m).sum()))
    total = np.asarray(total)
    m = total.max()
    return float(m + np.log(np.exp(total - m).sum()) + 2.0 * math.log(spacing))

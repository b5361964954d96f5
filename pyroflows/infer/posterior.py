"""PSIS-corrected posterior draws from a Pyro autoguide: the :class:`PosteriorDraws` mixin.

A guide q only approximates the posterior p(θ | data). Importance weights w_s = p(θ_s, data) / q(θ_s) at guide draws
θ_s ~ q correct for the difference: resampling the draws with probabilities proportional to w_s
(sampling-importance-resampling) gives draws closer to the posterior. Raw weights are noisy when q is narrower than
the posterior, so they are first Pareto-smoothed (PSIS: Vehtari, Simpson, Gelman, Yao, Gabry 2024, "Pareto smoothed
importance sampling", JMLR 25(72)); the fitted Pareto shape k̂ says whether the result can be trusted (< 0.7: yes).
The weights, k̂ and the resampling are those of :func:`pyroflows.diagnostics.vi_diagnostics`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from flowcommon.diagnostics import VIDiagnostics, check_resample_count, resample_indices, warn_if_unrepairable

from ..diagnostics.arviz import (
    _evaluate,
    _is_flow_guide,
    _is_latent,
    _max_plate_nesting,
    _per_draw_value,
    _uniforms,
    _with_draws_plate,
)


def _guide_draws(guide: Callable, args: tuple, kwargs: dict, num: int) -> dict[str, torch.Tensor]:
    """``num`` independent draws of the guide's latent sites (auxiliary sites left out), site name -> tensor of
    shape (num, *site shape): all at once inside an outer plate left of the guide's plates, else one at a time."""
    with torch.no_grad():
        one = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))  # also sets up a lazy guide
        sites = {name: site for name, site in one.nodes.items()
                 if _is_latent(site) and not site["infer"].get("is_auxiliary")}
        nest = _max_plate_nesting(one)
        try:
            tr = poutine.trace(_with_draws_plate(guide, num, nest)).get_trace(*args, **kwargs)
            return {name: _per_draw_value(tr.nodes[name]["value"], num, nest, tuple(site["value"].shape),
                                          [site["fn"].event_dim]) for name, site in sites.items()}
        except Exception as err:  # a guide that does not vectorise: draw one at a time
            msg = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(f"the guide could not be drawn {num} times at once ({type(err).__name__}: {msg}); drawing "
                          "one draw at a time (slower)", stacklevel=3)
            traces = [poutine.trace(guide).get_trace(*args, **kwargs) for _ in range(num)]
            return {name: torch.stack([tr.nodes[name]["value"].reshape(site["value"].shape) for tr in traces])
                    for name, site in sites.items()}


def _device(guide: Any) -> torch.device:
    param = next(iter(guide.parameters()), None) if hasattr(guide, "parameters") else None
    return torch.device("cpu") if param is None else param.device


class PosteriorDraws:
    """Mixin for Pyro ``AutoGuide`` subclasses: ``sample_posterior(*args, num_samples=..., psis=...)`` returns guide
    draws of every latent site, PSIS-resampled towards the posterior with ``psis=True``.

    Put it first among the bases, ``class Guide(PosteriorDraws, AutoNormal)``.

    Attributes:
        last_psis: the :class:`~flowcommon.diagnostics.VIDiagnostics` (``khat``, ``ess``, ``verdict``, the log
            weights, ...) of the last ``sample_posterior(..., psis=True)`` call; None before the first.

    Example:
        >>> class Guide(PosteriorDraws, AutoMultivariateNormal): ...            # doctest: +SKIP
        >>> guide = Guide(model)                                                # doctest: +SKIP
        >>> ...  # fit with SVI
        >>> draws = guide.sample_posterior(data, num_samples=4000, psis=True)   # doctest: +SKIP
        >>> guide.last_psis.khat                                                # doctest: +SKIP
    """

    last_psis: VIDiagnostics | None = None

    def sample_posterior(self, *args: Any, num_samples: int = 1000, psis: bool = False,
                         **kwargs: Any) -> dict[str, torch.Tensor]:
        """Draws of the model's latent sites (constrained space), site name -> tensor of shape
        (num_samples, *site shape): the guide's own draws (``psis=False``) or PSIS-resampled ones (``psis=True``).
        Deterministic and observed sites: pass the result to ``pyro.infer.Predictive(model, posterior_samples=...)``.

        With ``psis=True``: draws θ_s ~ q, s = 1..S with S = ``num_samples``, replays the model (``self.model``) on
        each and takes log w_s = log p(θ_s, data) - log q(θ_s); PSIS smooths the largest weights (a generalised Pareto
        fit whose shape is k̂) and normalises them to w̃_s; then S indices are drawn with replacement, index s with
        probability w̃_s (multinomial). Sound when k̂ < 0.7; above that a ``UserWarning`` says the draws are not
        reliable and what to try. Fewer than 25 draws raise ``ValueError``, fewer than 100 warn (k̂ unreliable). The
        diagnostics are kept in :attr:`last_psis`. The model must not subsample. Randomness comes from torch's
        global generator (``pyro.set_rng_seed`` makes it reproducible); no gradients are recorded.

        Args:
            *args: the model's arguments, as for SVI.
            num_samples: S, the number of draws returned (at least 25 with ``psis=True``, 1000 or more advised).
            psis: resample with the PSIS-smoothed importance weights.
            **kwargs: the model's keyword arguments.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
        if not psis:
            return _guide_draws(self, args, kwargs, num_samples)
        check_resample_count(num_samples, f"num_samples={num_samples}")
        record = _evaluate(self, self.model, args, kwargs, num_samples, predictive=False)
        summary = VIDiagnostics.from_log_weights(record.log_weights, flow_guide=_is_flow_guide(self))
        self.last_psis = summary
        warn_if_unrepairable(summary)
        idx = resample_indices(summary.smoothed_log_weights, _uniforms(num_samples))
        device = _device(self)
        return {name: torch.as_tensor(value[idx], device=device) for name, value in record.values.items()
                if record.sites[name].kind == "latent"}

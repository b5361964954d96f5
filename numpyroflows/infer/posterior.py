"""PSIS-corrected posterior draws from a NumPyro autoguide: the :class:`PosteriorDraws` mixin.

A guide q only approximates the posterior p(θ | data). Importance weights w_s = p(θ_s, data) / q(θ_s) at guide draws
θ_s ~ q correct for the difference: resampling the draws with probabilities proportional to w_s
(sampling-importance-resampling) gives draws closer to the posterior. Raw weights are noisy when q is narrower than
the posterior, so they are first Pareto-smoothed (PSIS: Vehtari, Simpson, Gelman, Yao, Gabry 2024, "Pareto smoothed
importance sampling", JMLR 25(72)); the fitted Pareto shape k̂ says whether the result can be trusted (< 0.7: yes).
The weights, k̂ and the resampling are those of :func:`numpyroflows.diagnostics.vi_diagnostics`.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from flowcommon.diagnostics import VIDiagnostics, check_resample_count, resample_indices, warn_if_unrepairable

from ..diagnostics.arviz import _evaluate, _is_flow_guide, _uniforms


class PosteriorDraws:
    """Mixin for NumPyro ``AutoGuide`` subclasses: ``sample_posterior(..., psis=True)`` returns PSIS-resampled draws.

    Put it first among the bases, ``class Guide(PosteriorDraws, AutoNormal)``, so that its ``sample_posterior``
    wraps the guide's own.

    Attributes:
        last_psis: the :class:`~flowcommon.diagnostics.VIDiagnostics` (``khat``, ``ess``, ``verdict``, the log
            weights, ...) of the last ``sample_posterior(..., psis=True)`` call; None before the first.

    Example:
        >>> class Guide(PosteriorDraws, AutoMultivariateNormal): ...                       # doctest: +SKIP
        >>> guide = Guide(model)                                                           # doctest: +SKIP
        >>> ...  # fit with SVI
        >>> draws = guide.sample_posterior(key, svi_result.params, data, sample_shape=(4000,),
        ...                                psis=True)                                      # doctest: +SKIP
        >>> guide.last_psis.khat                                                           # doctest: +SKIP
    """

    last_psis: VIDiagnostics | None = None

    def sample_posterior(self, rng_key: Any, params: dict, *args: Any, sample_shape: tuple[int, ...] = (),
                         psis: bool = False, **kwargs: Any) -> dict[str, jnp.ndarray]:
        """Draws of the model's latent (and deterministic) sites, site name -> array of shape
        ``sample_shape + site shape``, from the guide (``psis=False``: NumPyro's ``sample_posterior``, unchanged) or
        PSIS-resampled towards the posterior (``psis=True``).

        With ``psis=True``: draws θ_s ~ q, s = 1..S with S = prod(sample_shape), replays the model (``self.model``)
        on each and takes log w_s = log p(θ_s, data) - log q(θ_s); PSIS smooths the largest weights (a generalised
        Pareto fit whose shape is k̂) and normalises them to w̃_s; then S indices are drawn with replacement, index s
        with probability w̃_s (multinomial). Sound when k̂ < 0.7; above that a ``UserWarning`` says the draws are not
        reliable and what to try. Fewer than 25 draws raise ``ValueError``, fewer than 100 warn (k̂ unreliable).
        The diagnostics are kept in :attr:`last_psis`. Not jittable (PSIS runs in numpy).

        Args:
            rng_key: a ``jax.random.PRNGKey``; it seeds the guide draws, the model and the resampling.
            params: the fitted parameters (``svi_result.params``: constrained values).
            *args: the model's arguments.
            sample_shape: the leading shape of every returned array (with ``psis=True`` at least 25 draws in all,
                1000 or more advised).
            psis: resample with the PSIS-smoothed importance weights.
            **kwargs: the model's keyword arguments.
        """
        if not psis:
            return super().sample_posterior(rng_key, params, *args, sample_shape=sample_shape, **kwargs)
        sample_shape = tuple(sample_shape)
        num = math.prod(sample_shape)
        check_resample_count(num, f"sample_shape={sample_shape}")
        record, key_rest = _evaluate(self, self.model, args, kwargs, params, rng_key, num, predictive=False)
        summary = VIDiagnostics.from_log_weights(record.log_weights, flow_guide=_is_flow_guide(self))
        self.last_psis = summary
        warn_if_unrepairable(summary)
        idx = resample_indices(summary.smoothed_log_weights, _uniforms(key_rest, num))
        return {name: jnp.reshape(jnp.asarray(value[idx]), sample_shape + value.shape[1:])
                for name, value in record.values.items()}

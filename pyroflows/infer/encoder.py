"""``FlowEncoder``: an amortized posterior ``q(z | x)`` for variational autoencoders, a flow on top of a diagonal
Gaussian whose mean and scale a network computes from ``x``.

Mirrors :mod:`numpyroflows.infer.encoder` (same names, arguments, defaults and parameter names).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from flowcommon.guide import recipe_arguments

from .._checks import validation_enabled
from ..flows import recipes
from ..flows.core import Flow, FlowDistribution
from ..functional.affine import MIN_SCALE
from ..transforms.linear import DiagonalAffine

Tensor = torch.Tensor

#: name -> (recipe, fixed keyword arguments); ``None`` for the Gaussian alone. An encoder samples and scores its own
#: samples, so the autoregressive entries take the sampling-fast (IAF) orientation except ``"maf"`` (sampling in
#: ``latent_dim`` passes per layer, offered for comparison). Planar, radial and Sylvester layers get every parameter
#: from the features (amortized, as in the VAE experiments of their papers).
ENCODER_FLOWS: dict[str, tuple[type[Flow] | None, dict[str, Any]]] = {
    "diagonal": (None, {}),
    "iaf": (recipes.IAF, {"transformer": "affine"}),
    "spline_iaf": (recipes.IAF, {"transformer": "spline"}),
    "maf": (recipes.MAF, {"transformer": "affine"}),
    "planar": (recipes.Planar, {}),
    "radial": (recipes.Radial, {}),
    "sylvester": (recipes.Sylvester, {}),
}
#: ``num_transforms=None``: two autoregressive layers (the depth of Kingma et al.'s MNIST IAF), the recipes' own
#: defaults for the others.
_DEFAULT_NUM_TRANSFORMS = {"iaf": 2, "spline_iaf": 2, "maf": 2, "planar": 8, "radial": 8, "sylvester": 4}
#: ``hidden_dims=None``: MADE conditioners get two layers of ``max(64, 4 * latent_dim)`` units; planar, radial and
#: Sylvester parameters are linear in the features (``()``), as in Rezende & Mohamed (2015) and van den Berg et al.
#: (2018).
_AUTOREGRESSIVE = {"iaf", "spline_iaf", "maf"}
_DEFAULT_HIDDEN_MIN = 64
_DEFAULT_HIDDEN_PER_DIM = 4
_SET_BY_ENCODER = {"input_dim", "context_dim"}


class FlowEncoder(nn.Module):
    """An amortized variational posterior ``q(z | x)``: a flow, conditioned on features ``h = net(x)``, on top of a
    diagonal Gaussian whose mean and scale are linear in ``h`` (Kingma et al. 2016).

    ``z = T_K ∘ … ∘ T_1(μ(h) + σ(h) ⊙ ε; h)``, ``ε ~ N(0, I)``, with ``(μ, log-scale) = W h + b`` (``σ = 1e-3 +
    softplus``) and flow layers ``T_k`` whose parameters are computed from ``h`` (the context). The whole chain is one
    :class:`~pyroflows.flows.Flow` (``encoder.flow``): its first layer is a
    :class:`~pyroflows.transforms.linear.DiagonalAffine` with a single linear layer from ``h``, so ``encoder(x)`` is a
    :class:`~pyroflows.flows.FlowDistribution` with ``batch_shape = h.shape[:-1]`` and ``event_shape = (latent_dim,)``
    that scores its own ``rsample`` from the forward pass (an IAF encoder costs one pass per ELBO step).

    Flows (``flow=``): ``"diagonal"`` (the Gaussian alone), ``"iaf"`` (affine IAF, the default), ``"spline_iaf"``
    (rational-quadratic spline IAF), ``"maf"`` (allowed, samples in ``latent_dim`` passes), ``"planar"``,
    ``"radial"``, ``"sylvester"`` (every parameter linear in ``h``), or a callable ``(latent_dim, context_dim) ->
    Flow`` returning a pyroflows flow with ``input_dim = latent_dim``, ``context_dim`` equal to it or 0 and the
    standard normal base.

    Defaults (``None``): ``num_transforms`` 2 for the autoregressive flows, 8 planar/radial, 4 Sylvester;
    ``hidden_dims`` ``(max(64, 4 latent_dim),) * 2`` for the MADE conditioners, ``()`` (linear in ``h``) for
    planar/radial/Sylvester. Initialisation: the flows start at (autoregressive, planar) or near (radial, Sylvester:
    their recipes' random start) the identity; the mean head has PyTorch's default linear initialisation (so
    ``q`` depends on ``x`` from the start), the scale head starts at ``σ = init_scale`` for every ``x`` (1 by default:
    ``q`` starts as wide as a standard normal prior, KL ≈ ``|μ|²/2``, which trains well for VAEs).

    Args:
        net: any ``nn.Module`` (or callable) mapping ``x`` of shape ``(..., *x_shape)`` to features of shape
            ``(..., feature_dim)``; e.g. :class:`FeatureMLP` or an ``nn.Sequential``. It is a submodule, so its
            parameters train with the encoder (``pyro.module("encoder", encoder)``).
        latent_dim: size of ``z``.
        flow: a name from :data:`ENCODER_FLOWS` or a callable (see above).
        feature_dim: size of ``net``'s output; ``None`` reads ``net.out_features`` (``FeatureMLP``, ``nn.Linear``)
            and otherwise raises: pass it.
        num_transforms: number of flow layers (named flows).
        hidden_dims: hidden widths of the flow's conditioners (named flows).
        init_scale: initial ``σ`` of the Gaussian (> 1e-3).
        **flow_kwargs: further arguments of the recipe (``count_bins``, ``bound``, ``activation``, ``num_ortho``, ...).

    Example:
        >>> encoder = FlowEncoder(FeatureMLP(784, (300, 300)), latent_dim=32, flow="iaf")
        >>> def guide(x):
        ...     pyro.module("encoder", encoder)
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", encoder(x))

    Parameters (``state_dict``): ``net.*``, ``flow.transforms.0.head.net.context_layer.{weight,bias}`` (the
    Gaussian: rows ``:latent_dim`` the mean, the rest the raw scale), ``flow.transforms.{k}.*`` (the flow layers).

    References: Kingma et al. (2016), "Improved Variational Inference with Inverse Autoregressive Flow"; Rezende &
    Mohamed (2015), "Variational Inference with Normalizing Flows"; van den Berg et al. (2018), "Sylvester Normalizing
    Flows for Variational Inference".
    """

    def __init__(
        self,
        net: nn.Module | Callable[[Tensor], Tensor],
        latent_dim: int,
        flow: str | Callable[[int, int], Flow] = "iaf",
        *,
        feature_dim: int | None = None,
        num_transforms: int | None = None,
        hidden_dims: Sequence[int] | None = None,
        init_scale: float = 1.0,
        **flow_kwargs: Any,
    ) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be an nn.Module (or a callable) mapping x to features, got {type(net).__name__}")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if feature_dim is None:
            feature_dim = getattr(net, "out_features", None)
            if not isinstance(feature_dim, int):
                raise TypeError(f"cannot read the feature size of {type(net).__name__} (it has no integer "
                                "`out_features`): pass feature_dim=<size of net(x)'s last axis>")
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}")
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > MIN_SCALE:
            raise ValueError(f"init_scale must be a number > {MIN_SCALE} (the floor of the scale), got {init_scale!r}")
        self.net = net
        self.latent_dim, self.feature_dim = latent_dim, feature_dim
        self.flow_name = flow if isinstance(flow, str) else getattr(flow, "__name__", type(flow).__name__)
        layers = _flow_layers(flow, latent_dim, feature_dim, num_transforms, hidden_dims, flow_kwargs)
        gaussian = DiagonalAffine(latent_dim, feature_dim, hidden_dims=(), scale=float(init_scale))
        _init_mean_rows(gaussian, latent_dim, feature_dim)
        self.flow = Flow([gaussian, *layers])
        self._in_features = getattr(net, "in_features", None)

    # -------------------------------------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """``h = net(x)``, with the checks of :meth:`forward`."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FlowEncoder: x must be a torch.Tensor, got {type(x).__name__}")
        if isinstance(self._in_features, int) and (x.dim() == 0 or x.shape[-1] != self._in_features):
            raise ValueError(f"FlowEncoder: x has shape {tuple(x.shape)} but the encoder's net takes "
                             f"{self._in_features} features: pass x of shape (..., {self._in_features})")
        if validation_enabled() and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError("FlowEncoder: x contains NaN or inf values: clean or impute the data first (or call "
                             "pyroflows.set_validation(False) to skip this check)")
        try:
            h = self.net(x)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise ValueError(f"FlowEncoder: net(x) failed for x of shape {tuple(x.shape)}: {err}. Check that x has "
                             "the shape the net takes") from err
        if not isinstance(h, torch.Tensor) or h.dim() == 0 or h.shape[-1] != self.feature_dim:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"FlowEncoder: net(x) returned {shape}, but the encoder was built with feature_dim="
                             f"{self.feature_dim}: build it with feature_dim equal to the size of net(x)'s last axis")
        return h

    def forward(self, x: Tensor) -> FlowDistribution:
        """``q(z | x)``: a :class:`~pyroflows.flows.FlowDistribution` with ``batch_shape = net(x).shape[:-1]`` and
        ``event_shape = (latent_dim,)``."""
        return self.flow(self.features(x))

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, feature_dim={self.feature_dim}, flow={self.flow_name!r}"


def _flow_layers(flow: str | Callable, latent_dim: int, feature_dim: int, num_transforms: int | None,
                 hidden_dims: Sequence[int] | None, flow_kwargs: dict[str, Any]) -> list:
    """The flow layers after the Gaussian (conditional on the features) for a named flow or a callable."""
    if num_transforms is not None and (isinstance(num_transforms, bool) or not isinstance(num_transforms, int)
                                       or num_transforms < 1):
        raise ValueError(f"num_transforms must be a positive integer, got {num_transforms!r}")
    if not isinstance(flow, str):
        if not callable(flow):
            raise TypeError(f"flow must be a name ({', '.join(ENCODER_FLOWS)}) or a callable (latent_dim, "
                            f"context_dim) -> Flow, got {flow!r}")
        given = sorted(flow_kwargs) + [n for n, v in (("num_transforms", num_transforms),
                                                      ("hidden_dims", hidden_dims)) if v is not None]
        if given:
            raise TypeError(f"{given} apply to named flows only; with a callable `flow`, build the flow with them "
                            "inside the callable")
        built = flow(latent_dim, feature_dim)
        if not isinstance(built, Flow):
            raise TypeError(f"the `flow` callable must return a pyroflows Flow, got {type(built).__name__}")
        if built.input_dim != latent_dim or built.context_dim not in (0, feature_dim):
            raise ValueError(f"the `flow` callable returned a flow with input_dim={built.input_dim}, context_dim="
                             f"{built.context_dim}; the encoder needs input_dim={latent_dim} and context_dim="
                             f"{feature_dim} (or 0)")
        if built.base is not None:
            raise ValueError("the `flow` callable returned a flow with a custom base; the encoder's flow starts from "
                             "its Gaussian layer on a standard normal: build the flow without `base`")
        return list(built.transforms)
    if flow not in ENCODER_FLOWS:
        raise ValueError(f"unknown flow {flow!r}: use one of {', '.join(repr(n) for n in ENCODER_FLOWS)}, or a "
                         "callable (latent_dim, context_dim) -> Flow")
    recipe, fixed = ENCODER_FLOWS[flow]
    if recipe is None:
        given = sorted(flow_kwargs) + (["hidden_dims"] if hidden_dims is not None else [])
        if given or (num_transforms is not None):
            raise TypeError(f"flow 'diagonal' has no flow layers, so it takes no {given or ['num_transforms']}")
        return []
    accepted = recipe_arguments(recipe) - _SET_BY_ENCODER - {"num_transforms", "hidden_dims"} - set(fixed)
    reserved = sorted(set(flow_kwargs) & (_SET_BY_ENCODER | set(fixed)))
    if reserved:
        raise TypeError(f"FlowEncoder sets {reserved} itself for flow {flow!r} (input_dim = latent_dim, context_dim "
                        "= feature_dim); remove them from the arguments")
    unknown = sorted(set(flow_kwargs) - accepted)
    if unknown:
        raise TypeError(f"flow {flow!r} ({recipe.__name__}) takes no argument(s) {unknown}; it accepts "
                        f"{sorted(accepted | {'num_transforms', 'hidden_dims'})}")
    if hidden_dims is None:
        width = max(_DEFAULT_HIDDEN_MIN, _DEFAULT_HIDDEN_PER_DIM * latent_dim)
        hidden_dims = (width, width) if flow in _AUTOREGRESSIVE else ()
    n = _DEFAULT_NUM_TRANSFORMS[flow] if num_transforms is None else num_transforms
    built = recipe(latent_dim, feature_dim, num_transforms=n, hidden_dims=tuple(int(h) for h in hidden_dims),
                   **fixed, **flow_kwargs)
    return list(built.transforms)


@torch.no_grad()
def _init_mean_rows(gaussian: DiagonalAffine, latent_dim: int, feature_dim: int) -> None:
    """The weights of the mean rows of the Gaussian's linear head: ``nn.Linear``'s default, uniform in
    ``±1/sqrt(feature_dim)``, so that ``q`` depends on ``x`` from the start (the constructor gave the biases: mean 0,
    scale ``init_scale``; the scale rows keep their near-zero weights)."""
    bound = 1.0 / math.sqrt(feature_dim)
    gaussian.head.net.context_layer.weight[:latent_dim].uniform_(-bound, bound)

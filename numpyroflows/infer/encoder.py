"""``FlowEncoder``: an amortized posterior ``q(z | x)`` for variational autoencoders in NumPyro, a flow on top of a
diagonal Gaussian whose mean and scale a network computes from ``x``.

The encoder is a JAX pytree whose leaves are its parameters (the feature network's and the flow's);
``numpyroflows.module("encoder", encoder)`` registers them with ``numpyro.param`` inside a guide. Names, arguments,
defaults and parameter names are those of pyroflows' ``FlowEncoder`` (plus a PRNG ``key``), so a trained encoder moves
between the packages by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowcommon.guide import recipe_arguments

from .._checks import _all_finite
from ..flows import recipes
from ..flows.core import Flow, FlowDistribution
from ..functional.affine import MIN_SCALE
from ..transforms.base import default_key
from ..transforms.linear import DiagonalAffine

Array = jax.Array

#: name -> (recipe, fixed keyword arguments) of the encoder's named flows (``None``: the Gaussian alone).
ENCODER_FLOWS: dict[str, tuple[type[Flow] | None, dict[str, Any]]] = {
    "diagonal": (None, {}),
    "iaf": (recipes.IAF, {"transformer": "affine"}),
    "spline_iaf": (recipes.IAF, {"transformer": "spline"}),
    "maf": (recipes.MAF, {"transformer": "affine"}),
    "planar": (recipes.Planar, {}),
    "radial": (recipes.Radial, {}),
    "sylvester": (recipes.Sylvester, {}),
}
_DEFAULT_NUM_TRANSFORMS = {"iaf": 2, "spline_iaf": 2, "maf": 2, "planar": 8, "radial": 8, "sylvester": 4}
_AUTOREGRESSIVE = {"iaf", "spline_iaf", "maf"}
_DEFAULT_HIDDEN_MIN = 64
_DEFAULT_HIDDEN_PER_DIM = 4
_SET_BY_ENCODER = {"input_dim", "context_dim", "key"}


# --------------------------------------------------------------------------------------------------- encoder
def _is_param(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(leaf.dtype, jnp.inexact)


def _leaf_name(path: tuple) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    return f"net.{name}" if name else "net"


@jax.tree_util.register_pytree_node_class
class FlowEncoder:
    """An amortized variational posterior ``q(z | x)``: a flow, conditioned on features ``h = net(x)``, on top of a
    diagonal Gaussian whose mean and scale are linear in ``h`` (Kingma et al. 2016).

    ``z = T_K ∘ … ∘ T_1(μ(h) + σ(h) ⊙ ε; h)``, ``ε ~ N(0, I)``, with ``(μ, log-scale) = W h + b`` (``σ = 1e-3 +
    softplus``) and flow layers ``T_k`` whose parameters are computed from ``h``. The chain is one numpyroflows
    :class:`~numpyroflows.flows.Flow` (``encoder.flow``) whose first layer is a
    :class:`~numpyroflows.transforms.DiagonalAffine` with a single linear layer from ``h``; ``encoder(x)`` is a
    :class:`~numpyroflows.flows.FlowDistribution` with ``batch_shape = h.shape[:-1]``, ``event_shape =
    (latent_dim,)``, whose draws inside a guide carry their log-density to NumPyro's ELBO (one forward pass per step).

    The feature network ``net`` is either

    * a callable pytree ``net(x) -> h`` whose floating-point array leaves are its parameters: :class:`FeatureMLP`, an
      Equinox module (its layers take one example, so batch it: ``equinox.filter_vmap(equinox.nn.MLP(...,
      final_activation=jax.nn.relu))`` is again a module; Equinox is not needed otherwise), or any registered pytree
      with ``__call__``; a plain function is a network without parameters;
    * or a pair ``(apply_fn, params)`` with ``apply_fn(params, x) -> h`` and ``params`` any pytree of arrays: Flax
      ``(model.apply, variables)``, ``jax.example_libraries.stax`` ``(apply_fn, params)``, Haiku
      ``(hk.without_apply_rng(f).apply, params)``.

    Either way its parameters are part of :attr:`params` (named ``"net.<path>"``), so
    ``numpyroflows.module("encoder", encoder)`` registers them with NumPyro and SVI trains them with the flow.

    Flows: ``"diagonal"`` (the Gaussian alone), ``"iaf"`` (default), ``"spline_iaf"``, ``"maf"``, ``"planar"``,
    ``"radial"``, ``"sylvester"``, or a callable ``(latent_dim, context_dim) -> Flow``. Defaults: ``num_transforms``
    2 autoregressive / 8 planar, radial / 4 Sylvester; MADE widths ``max(64, 4 latent_dim)`` twice; planar, radial and
    Sylvester parameters linear in ``h``. Initialisation: the mean head as ``torch.nn.Linear`` (uniform in
    ``±1/sqrt(feature_dim)``), the scale head's bias at ``init_scale`` and its weights near zero, so that
    ``σ ≈ init_scale`` for every ``x`` at the start. These are pyroflows' choices too.

    Args:
        net: the feature network (see above).
        latent_dim: size of ``z``.
        flow: a name from :data:`ENCODER_FLOWS` or a callable ``(latent_dim, context_dim) -> Flow`` (a numpyroflows
            flow with ``input_dim = latent_dim``, ``context_dim`` equal to it or 0, standard normal base).
        feature_dim: size of ``net``'s output; ``None`` reads ``net.out_features`` (:class:`FeatureMLP`) and
            otherwise raises: pass it.
        num_transforms: number of flow layers (named flows).
        hidden_dims: hidden widths of the flow's conditioners (named flows).
        init_scale: initial ``σ`` of the Gaussian (> 1e-3).
        key: PRNG key of the initial parameters of the head and the flow (``PRNGKey(0)`` if None).
        **flow_kwargs: further arguments of the recipe (``count_bins``, ``bound``, ``activation``, ...).

    Example:
        >>> encoder = FlowEncoder(FeatureMLP(784, (300, 300)), latent_dim=32, flow="iaf", key=jax.random.PRNGKey(0))
        >>> def guide(x):
        ...     enc = numpyroflows.module("encoder", encoder)
        ...     with numpyro.plate("data", x.shape[0]):
        ...         numpyro.sample("z", enc(x))

    Parameters (:attr:`params`, names as in pyroflows' ``state_dict``): ``net.*``,
    ``flow.transforms.0.head.net.context_layer.{weight,bias}`` (the Gaussian: rows ``:latent_dim`` the mean, the rest
    the raw scale), ``flow.transforms.{k}.*`` (the flow layers).

    References: Kingma et al. (2016), "Improved Variational Inference with Inverse Autoregressive Flow"; Rezende &
    Mohamed (2015), "Variational Inference with Normalizing Flows"; van den Berg et al. (2018), "Sylvester Normalizing
    Flows for Variational Inference".
    """

    def __init__(
        self,
        net: Callable[[Array], Array] | tuple[Callable[[Any, Array], Array], Any],
        latent_dim: int,
        flow: str | Callable[[int, int], Flow] = "iaf",
        *,
        feature_dim: int | None = None,
        num_transforms: int | None = None,
        hidden_dims: Sequence[int] | None = None,
        init_scale: float = 1.0,
        key: Array | None = None,
        **flow_kwargs: Any,
    ) -> None:
        if isinstance(net, tuple) and len(net) == 2 and callable(net[0]) and not callable(net):
            apply_fn, tree = net
        elif callable(net):
            apply_fn, tree = None, net
        else:
            raise TypeError(f"net must be a callable pytree net(x) -> features (e.g. FeatureMLP, an Equinox module) "
                            f"or a pair (apply_fn, params) with apply_fn(params, x) -> features, got "
                            f"{type(net).__name__}")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if feature_dim is None:
            feature_dim = getattr(tree, "out_features", None) if apply_fn is None else None
            if not isinstance(feature_dim, int):
                raise TypeError(f"cannot read the feature size of {type(net).__name__} (it has no integer "
                                "`out_features`): pass feature_dim=<size of the features' last axis>")
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}")
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > MIN_SCALE:
            raise ValueError(f"init_scale must be a number > {MIN_SCALE} (the floor of the scale), got {init_scale!r}")
        # fold_in: the default key (PRNGKey(0)) is also FeatureMLP's, whose split would otherwise hand the mean head
        # the very keys of the network's layers
        k_head, k_flow = jax.random.split(jax.random.fold_in(default_key(key), 1))
        layers = _flow_layers(flow, latent_dim, feature_dim, num_transforms, hidden_dims, flow_kwargs, k_flow)
        gaussian = _init_gaussian(latent_dim, feature_dim, float(init_scale), k_head)
        self.flow = Flow([gaussian, *layers])
        self.latent_dim, self.feature_dim = latent_dim, feature_dim
        self.flow_name = flow if isinstance(flow, str) else getattr(flow, "__name__", type(flow).__name__)
        self._apply = apply_fn
        self._in_features = getattr(tree, "in_features", None) if apply_fn is None else None
        # the network as a tree: floating-point array leaves are parameters, other arrays ride along as leaves,
        # anything else (activations, flags) is static
        path_leaves, self._treedef = jax.tree_util.tree_flatten_with_path(tree)
        kinds, names, params, arrays, static = [], [], [], [], []
        for path, leaf in path_leaves:
            if _is_param(leaf):
                kinds.append("p")
                names.append(_leaf_name(path))
                params.append(jnp.asarray(leaf))
            elif isinstance(leaf, (jax.Array, np.ndarray)):
                kinds.append("a")
                arrays.append(leaf)
            else:
                kinds.append("s")
                static.append(leaf)
        if len(set(names)) != len(names):
            raise ValueError("the network's parameter paths are not unique; wrap its parameters in a dict")
        self._kinds, self._names, self._static = tuple(kinds), tuple(names), tuple(static)
        self._net_params, self._net_arrays = tuple(params), tuple(arrays)

    # ------------------------------------------------------------------------------------------------- parameters
    @property
    def params(self) -> dict[str, Array]:
        """All parameters: ``"net.<path>"`` (the network's floating-point leaves) and ``"flow.<name>"`` (as
        :attr:`numpyroflows.flows.Flow.params`), named like pyroflows' ``state_dict``."""
        out = dict(zip(self._names, self._net_params))
        out.update({f"flow.{k}": v for k, v in self.flow.params.items()})
        return out

    def with_params(self, params: dict[str, Array]) -> FlowEncoder:
        """The same encoder with other parameter values (names as in :attr:`params`)."""
        expected = set(self.params)
        missing, unexpected = sorted(expected - set(params)), sorted(set(params) - expected)
        if missing or unexpected:
            raise ValueError(f"parameter names do not match this encoder: missing {missing}, unexpected {unexpected}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._net_params = tuple(params[n] for n in self._names)
        new.flow = self.flow.with_params({k[len("flow."):]: v for k, v in params.items() if k.startswith("flow.")})
        return new

    @property
    def net(self) -> Any:
        """The feature network with the current parameters (the callable pytree, or the pair ``(apply_fn, params)``)."""
        params, arrays, static = iter(self._net_params), iter(self._net_arrays), iter(self._static)
        leaves = [next(params) if k == "p" else next(arrays) if k == "a" else next(static) for k in self._kinds]
        tree = jax.tree_util.tree_unflatten(self._treedef, leaves)
        return tree if self._apply is None else (self._apply, tree)

    # ------------------------------------------------------------------------------------------------- q(z | x)
    def features(self, x: Array) -> Array:
        """``h = net(x)``, with the checks of :meth:`__call__`."""
        shape = jnp.shape(x)
        if isinstance(self._in_features, int) and (len(shape) == 0 or shape[-1] != self._in_features):
            raise ValueError(f"FlowEncoder: x has shape {tuple(shape)} but the encoder's net takes "
                             f"{self._in_features} features: pass x of shape (..., {self._in_features})")
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact) and not _all_finite(x):
            raise ValueError("FlowEncoder: x contains NaN or inf values: clean or impute the data first (or call "
                             "numpyroflows.set_validation(False) to skip this check)")
        net = self.net
        try:
            h = net(x) if self._apply is None else net[0](net[1], x)
        except (TypeError, ValueError, IndexError) as err:
            raise ValueError(f"FlowEncoder: net(x) failed for x of shape {tuple(shape)}: {err}. Check that x has the "
                             "shape the net takes") from err
        hshape = jnp.shape(h)
        if len(hshape) == 0 or hshape[-1] != self.feature_dim:
            raise ValueError(f"FlowEncoder: net(x) returned shape {tuple(hshape)}, but the encoder was built with "
                             f"feature_dim={self.feature_dim}: build it with feature_dim equal to the size of the "
                             "features' last axis")
        return h

    def __call__(self, x: Array) -> FlowDistribution:
        """``q(z | x)``: a :class:`~numpyroflows.flows.FlowDistribution` with ``batch_shape = net(x).shape[:-1]`` and
        ``event_shape = (latent_dim,)``."""
        return self.flow(self.features(x))

    # ------------------------------------------------------------------------------------------------- pytree
    def tree_flatten(self):
        static = tuple(sorted((k, v) for k, v in self.__dict__.items()
                              if k not in ("flow", "_net_params", "_net_arrays")))
        return (self._net_params, self._net_arrays, self.flow), static

    @classmethod
    def tree_unflatten(cls, static, children):
        new = object.__new__(cls)
        new.__dict__.update(dict(static))
        new._net_params, new._net_arrays, new.flow = children
        return new

    def __repr__(self) -> str:
        return f"FlowEncoder(latent_dim={self.latent_dim}, feature_dim={self.feature_dim}, flow={self.flow_name!r})"


def _flow_layers(flow: str | Callable, latent_dim: int, feature_dim: int, num_transforms: int | None,
                 hidden_dims: Sequence[int] | None, flow_kwargs: dict[str, Any], key: Array) -> list:
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
            raise TypeError(f"the `flow` callable must return a numpyroflows Flow, got {type(built).__name__}")
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
                        "= feature_dim, the PRNG key from key=); remove them from the arguments")
    unknown = sorted(set(flow_kwargs) - accepted)
    if unknown:
        raise TypeError(f"flow {flow!r} ({recipe.__name__}) takes no argument(s) {unknown}; it accepts "
                        f"{sorted(accepted | {'num_transforms', 'hidden_dims'})}")
    if hidden_dims is None:
        width = max(_DEFAULT_HIDDEN_MIN, _DEFAULT_HIDDEN_PER_DIM * latent_dim)
        hidden_dims = (width, width) if flow in _AUTOREGRESSIVE else ()
    n = _DEFAULT_NUM_TRANSFORMS[flow] if num_transforms is None else num_transforms
    built = recipe(latent_dim, feature_dim, num_transforms=n, hidden_dims=tuple(int(h) for h in hidden_dims),
                   **fixed, **flow_kwargs, key=key)
    return list(built.transforms)


def _init_gaussian(latent_dim: int, feature_dim: int, init_scale: float, key: Array) -> DiagonalAffine:
    """The Gaussian layer: a :class:`DiagonalAffine` whose head is one linear layer from the features, built at mean 0
    and scale ``init_scale`` (the biases); the weights of its mean rows are then drawn like ``torch.nn.Linear``'s
    (uniform in ``±1/sqrt(feature_dim)``), the scale rows keep their near-zero weights."""
    k_affine, k_mean = jax.random.split(key)
    gaussian = DiagonalAffine(latent_dim, feature_dim, hidden_dims=(), scale=init_scale, key=k_affine)
    w = gaussian.params["head.net.context_layer.weight"]
    bound = 1.0 / math.sqrt(feature_dim)
    w = w.at[:latent_dim].set(jax.random.uniform(k_mean, (latent_dim, feature_dim), w.dtype, -bound, bound))
    return gaussian.with_params({**gaussian.params, "head.net.context_layer.weight": w})

"""Plain multilayer perceptrons with an optional context input, as pure functions on parameter dicts, in JAX.

:func:`mlp_init` draws the parameters (a flat ``{name: array}`` dict) from a PRNG key, :func:`mlp_apply` evaluates the
network ``y = W_L σ(… σ(W_1 x + C c + b_1) …) + b_L`` and :func:`mlp_zero_output` returns a copy whose output
weights are zero. Hidden and input layers start as ``torch.nn.Linear`` does (:func:`linear_init`); output layers that
produce transform parameters start small (:data:`OUTPUT_INIT`, :func:`output_init_bound`). Also the activation
registry and the parameter-major output layout of conditioners: an output ``(..., P·D)`` with unit ``p·D + i`` holding
parameter ``p`` of dimension ``i`` becomes per-dimension parameters ``(..., D, P)`` (:func:`params_view`).

Parameter names, shapes and initial distributions are those of ``pyroflows.nn.MLP``, so parameters move between the
packages by name.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .._dtype import float_dtype, uniform

Array = jax.Array

ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu, "tanh": jnp.tanh, "gelu": lambda x: jax.nn.gelu(x, False),
               "silu": jax.nn.silu}

#: default half-width of the uniform initialisation of output layers that produce transform parameters: small, so
#: that every flow starts near the identity (as in MAF/NSF reference code) but context still changes the output.
OUTPUT_INIT = 1e-3


def output_init_bound(output_init: float | str, fan_in: int) -> float:
    """Half-width ``a`` of the uniform start ``U(-a, a)`` of an output layer's weights.

    ``output_init`` is either the half-width itself (a number ``>= 0``; the flows' default ``1e-3`` starts every layer
    within about ``1e-3`` of the identity) or ``"fan_in"`` for ``a = 1/sqrt(fan_in)``, the start of
    :func:`linear_init` (that of ``torch.nn.Linear``, and of zuko's and FlowJAX's conditioners). Anything else raises
    a ``ValueError``.

    Which to choose: a guide (:class:`~numpyroflows.infer.AutoFlowGuide`) or a VAE encoder should start at its base
    distribution, so keep the small default. For density estimation by maximum likelihood neither start wins
    everywhere: ``"fan_in"`` trains the hidden layers from the first step (with output weights near zero their
    gradient starts over 100 times smaller), which can help affine autoregressive flows, while spline flows fit
    better from the identity start.
    """
    if isinstance(output_init, str):
        if output_init == "fan_in":
            return 1.0 / math.sqrt(max(int(fan_in), 1))
        raise ValueError(f"output_init must be a number >= 0 or 'fan_in', got {output_init!r}")
    bound = float(output_init)
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"output_init must be a finite number >= 0 (a half-width) or 'fan_in', got {output_init!r}")
    return bound


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def linear_init(key: Array, in_features: int, out_features: int, dtype=None) -> tuple[Array, Array]:
    """``(W (out, in), b (out,))`` drawn like ``torch.nn.Linear``: uniform in ``±1/sqrt(in_features)``, drawn in
    float32 and stored in ``dtype`` (``None``: JAX's default floating type; the rule of
    :mod:`numpyroflows.transforms.base`)."""
    dtype = float_dtype(dtype)
    kw, kb = jax.random.split(key)
    bound = 1.0 / max(in_features, 1) ** 0.5
    w = uniform(kw, (out_features, in_features), dtype, -bound, bound)
    b = uniform(kb, (out_features,), dtype, -bound, bound)
    return w, b


def params_view(out: Array, num_params: int, num_dims: int) -> Array:
    """``(..., P·D)`` parameter-major network output (unit ``p·D + i`` is parameter ``p`` of dimension ``i``) ->
    ``(..., D, P)`` per-dimension parameters, so that transformers index it as ``params[..., i, p]``."""
    return jnp.swapaxes(out.reshape(out.shape[:-1] + (num_params, num_dims)), -1, -2)


def mlp_init(key: Array, in_features: int, out_features: int, hidden_dims=(64, 64), context_dim: int = 0,
             output_bias: Array | None = None, dtype=None,
             output_init: float | str | None = None) -> dict[str, Array]:
    """Initial parameters ``{name: array}`` of an MLP ``y = W_L σ(… σ(W_1 x + C c + b_1) …) + b_L`` whose first layer
    also reads a context ``c``.

    Names: ``input_layer.*`` (when ``in_features > 0``), ``context_layer.weight`` (and ``.bias`` for a context-only
    network, ``in_features = 0``), ``layers.{i}.*`` for the layers after the first; without hidden layers the first
    layer is the output layer. Weights are ``(out, in)``, as :func:`mlp_apply` reads them.

    Args:
        key: PRNG key of every draw.
        in_features: size of ``x`` (0 for a context-only network).
        out_features: size of the output.
        hidden_dims: widths of the hidden layers.
        context_dim: size of the context (0 for none).
        output_bias: initial value of the output bias, ``(out_features,)``; the output weights then start uniform in
            ``±output_init`` so the network starts near this constant.
        dtype: floating dtype of every array (``None``: JAX's default; the rule of
            :mod:`numpyroflows.transforms.base`).
        output_init: half-width of the uniform start of the output weights, or ``"fan_in"`` for
            ``±1/sqrt(fan_in)`` (:func:`output_init_bound`). ``None`` (default): ``OUTPUT_INIT = 1e-3`` when
            ``output_bias`` is given, else :func:`linear_init`'s start of weights and bias.

    The names, shapes and initial distributions are those of ``pyroflows.nn.MLP``, so parameters move between the
    packages by name.
    """
    if in_features == 0 and context_dim == 0:
        raise ValueError("MLP needs in_features > 0 or context_dim > 0")
    dtype = float_dtype(dtype)
    hidden_dims = tuple(int(h) for h in hidden_dims)
    widths = (hidden_dims[0] if hidden_dims else out_features,) + hidden_dims[1:] + (
        (out_features,) if hidden_dims else ())
    keys = jax.random.split(key, len(widths) + 2)
    p: dict[str, Array] = {}
    if in_features > 0:
        p["input_layer.weight"], p["input_layer.bias"] = linear_init(keys[0], in_features, widths[0], dtype)
    if context_dim > 0:
        w, b = linear_init(keys[1], context_dim, widths[0], dtype)
        p["context_layer.weight"] = w
        if in_features == 0:
            p["context_layer.bias"] = b
    for i, (a, b_) in enumerate(zip(widths[:-1], widths[1:])):
        p[f"layers.{i}.weight"], p[f"layers.{i}.bias"] = linear_init(keys[i + 2], a, b_, dtype)
    if output_bias is not None or output_init is not None:
        if output_init is None:
            output_init = OUTPUT_INIT
        if hidden_dims:
            last = f"layers.{len(widths) - 2}"
        else:
            last = "input_layer" if in_features > 0 else "context_layer"
        if output_bias is not None and f"{last}.bias" not in p:
            raise ValueError("output_bias needs a biased output layer")
        shape = p[f"{last}.weight"].shape
        a = output_init_bound(output_init, shape[1])
        p[f"{last}.weight"] = uniform(keys[-1], shape, dtype, -a, a)
        if output_bias is not None:
            p[f"{last}.bias"] = jnp.asarray(output_bias, dtype)
        if not hidden_dims and in_features > 0 and context_dim > 0:  # the context also feeds the output directly
            a = output_init_bound(output_init, context_dim)
            p["context_layer.weight"] = uniform(keys[1], p["context_layer.weight"].shape, dtype, -a, a)
    return p


def mlp_zero_output(params: dict[str, Array], prefix: str = "") -> dict[str, Array]:
    """The MLP's parameters (those of :func:`mlp_init`, under ``prefix``) with the weights of its output layer set to
    zero (a new dict): it then computes its output bias for every input and context (without hidden layers, the
    input and context weights are the output layer). As Glow's zero-initialised last layers (Kingma & Dhariwal 2018),
    training then moves these weights first."""
    names = {k[len(prefix):] for k in params if k.startswith(prefix)}
    i = 0
    while f"layers.{i}.weight" in names:
        i += 1
    zeroed = [f"layers.{i - 1}.weight"] if i else [n for n in ("input_layer.weight", "context_layer.weight")
                                                    if n in names]
    return {**params, **{f"{prefix}{n}": jnp.zeros_like(params[f"{prefix}{n}"]) for n in zeroed}}


def mlp_apply(params: dict[str, Array], x: Array | None = None, context: Array | None = None,
              activation: str = "relu") -> Array:
    """Evaluate the MLP of :func:`mlp_init`: ``y = W_L σ(… σ(W_1 x + C c + b_1) …) + b_L``, shape ``(..., out)``.

    ``x`` is ``(..., in_features)`` (``None`` for a context-only network) and ``context`` ``(..., context_dim)``
    (``None`` without one); the context enters through its own weight matrix and broadcasts against the batch shape of
    ``x``, so one context serves a batch of samples without copies. ``activation`` names the hidden nonlinearity
    (a key of :data:`ACTIVATIONS`). Pure: jit-, vmap- and grad-compatible in ``params``, ``x`` and ``context``.
    """
    act = get_activation(activation)
    h = None
    if "input_layer.weight" in params:
        h = x @ params["input_layer.weight"].T + params["input_layer.bias"]
    if "context_layer.weight" in params:
        hc = context @ params["context_layer.weight"].T
        if "context_layer.bias" in params:
            hc = hc + params["context_layer.bias"]
        h = hc if h is None else h + hc
    i = 0
    while f"layers.{i}.weight" in params:
        h = act(h) @ params[f"layers.{i}.weight"].T + params[f"layers.{i}.bias"]
        i += 1
    return h

"""Feature networks in JAX: maps from observations to the feature vector (the context) that amortized flows condition
on.

:class:`FeatureMLP` is the default feature network of :class:`~numpyroflows.infer.FlowEncoder` (VAE encoders), a
callable pytree of its parameters; any callable pytree (an Equinox module) or ``(apply_fn, params)`` pair serves as
well. Names, arguments and parameter names are those of ``pyroflows.nn.features``, so a trained feature network moves
between the packages by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from .mlp import get_activation, linear_init

Array = jax.Array


@jax.tree_util.register_pytree_with_keys_class
class FeatureMLP:
    """A feature network for :class:`~numpyroflows.infer.FlowEncoder`: ``h = σ(W_L … σ(W_1 x + b_1) … + b_L)``, an
    MLP whose every layer, the last included, is followed by the activation; a callable pytree of its parameters
    (like an Equinox module).

    Args:
        in_features: size of ``x`` (its last axis).
        hidden_dims: widths of the layers; the last one is the feature size (``out_features``).
        activation: one of ``relu``, ``elu``, ``tanh``, ``gelu``, ``silu``.
        key: PRNG key of the initial weights (drawn like ``torch.nn.Linear``; ``PRNGKey(0)`` if None).
        dtype: floating type of the weights (``None``: JAX's default; the rule of
            :mod:`numpyroflows.transforms.base`).

    Example:
        >>> net = FeatureMLP(784, (300, 300), key=jax.random.PRNGKey(0))
        >>> net(jnp.ones((5, 784))).shape
        (5, 300)

    Parameters (``net.params``): ``layers.{i}.weight`` (``(out, in)``) and ``layers.{i}.bias``, the leaves of the
    pytree, so ``jax.grad`` and optax update them directly; the names are those of ``pyroflows.nn.FeatureMLP``.
    """

    def __init__(self, in_features: int, hidden_dims: Sequence[int] = (300, 300), activation: str = "relu", *,
                 key: Array | None = None, dtype=None) -> None:
        widths = (int(in_features),) + tuple(int(h) for h in hidden_dims)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"FeatureMLP needs in_features >= 1 and at least one hidden width >= 1, got "
                             f"in_features={in_features}, hidden_dims={tuple(hidden_dims)}")
        get_activation(activation)
        self.in_features, self.out_features, self.activation = widths[0], widths[-1], activation
        keys = jax.random.split(jax.random.PRNGKey(0) if key is None else key, len(widths) - 1)
        self.params: dict[str, Array] = {}
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            self.params[f"layers.{i}.weight"], self.params[f"layers.{i}.bias"] = linear_init(keys[i], a, b, dtype)

    def __call__(self, x: Array) -> Array:
        act = get_activation(self.activation)
        i = 0
        while f"layers.{i}.weight" in self.params:
            x = act(x @ self.params[f"layers.{i}.weight"].T + self.params[f"layers.{i}.bias"])
            i += 1
        return x

    def tree_flatten_with_keys(self):
        names = tuple(self.params)
        children = tuple((jax.tree_util.DictKey(k), self.params[k]) for k in names)
        return children, (names, self.in_features, self.out_features, self.activation)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        names, new = aux[0], object.__new__(cls)
        new.in_features, new.out_features, new.activation = aux[1:]
        new.params = dict(zip(names, leaves))
        return new

    def __repr__(self) -> str:
        return f"FeatureMLP(in_features={self.in_features}, out_features={self.out_features}, " \
               f"activation={self.activation!r})"


__all__ = ["FeatureMLP"]

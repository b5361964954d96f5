"""Bijections with parameters in JAX: NumPyro ``Transform`` pytrees with ``forward_and_log_det``,
``inverse_and_log_det`` (exact on fresh data) and ``condition(context)``."""

from .autoregressive import AutoregressiveTransform, InverseAutoregressiveTransform, MaskedAutoregressiveTransform
from .base import TRANSFORMS, ConditionedTransform, FlowChain, FlowTransform, from_config
from .coupling import CouplingTransform, coupling_mask
from .elementwise import ElementwiseTransform, LeakyReLU, Sigmoid, Tanh
from .planar import PlanarTransform
from .radial import RadialTransform
from .sylvester import SylvesterTransform
from .transformers import (
    TRANSFORMERS,
    Additive,
    Affine,
    MonotoneBSpline,
    MonotoneMixture,
    RQSpline,
    Transformer,
    make_transformer,
)

__all__ = [
    "TRANSFORMERS", "TRANSFORMS", "Additive", "Affine", "AutoregressiveTransform", "ConditionedTransform",
    "CouplingTransform", "ElementwiseTransform", "FlowChain", "FlowTransform", "InverseAutoregressiveTransform",
    "LeakyReLU", "MaskedAutoregressiveTransform", "MonotoneBSpline", "MonotoneMixture", "PlanarTransform",
    "RQSpline", "RadialTransform", "Sigmoid", "SylvesterTransform", "Tanh", "Transformer", "coupling_mask",
    "from_config", "make_transformer",
]

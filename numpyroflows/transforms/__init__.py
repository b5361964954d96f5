"""Bijections with parameters in JAX: NumPyro ``Transform`` pytrees with ``forward_and_log_det``,
``inverse_and_log_det`` (exact on fresh data) and ``condition(context)``.

Names: a transform that is the layer of a recipe ends in ``Transform`` (``AutoregressiveTransform`` of ``MAF``/``IAF``,
``CouplingTransform``, ``ElementwiseTransform``, ``BlockNAFTransform``, ``PlanarTransform``, ``RadialTransform``,
``SylvesterTransform``), so that ``transforms.PlanarTransform`` is never confused with the recipe ``flows.Planar``;
every other transform is named by its map (``LULinear``, ``Householder``, ``ActNorm``, ``DiagonalAffine``,
``LowerCholeskyAffine``, ``Permutation``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``), and ``Invert(t)`` is any transform
``t`` turned around."""

from .autoregressive import AutoregressiveTransform, InverseAutoregressiveTransform, MaskedAutoregressiveTransform
from .base import TRANSFORMS, ConditionedTransform, FlowChain, FlowTransform, from_config
from .bnaf import BlockNAFTransform
from .coupling import CouplingTransform, coupling_mask
from .elementwise import ElementwiseTransform, LeakyReLU, Sigmoid, Tanh
from .invert import Invert
from .linear import (
    ActNorm,
    DiagonalAffine,
    Householder,
    LowerCholeskyAffine,
    LULinear,
    Permutation,
    RandomPermutation,
    ReversePermutation,
    initialize_flow,
)
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
    "TRANSFORMERS", "TRANSFORMS", "ActNorm", "Additive", "Affine", "AutoregressiveTransform", "BlockNAFTransform",
    "ConditionedTransform", "CouplingTransform", "DiagonalAffine", "ElementwiseTransform", "FlowChain",
    "FlowTransform", "Householder", "Invert", "InverseAutoregressiveTransform", "LULinear", "LeakyReLU",
    "LowerCholeskyAffine",
    "MaskedAutoregressiveTransform", "MonotoneBSpline", "MonotoneMixture", "Permutation", "PlanarTransform",
    "RQSpline", "RadialTransform", "RandomPermutation", "ReversePermutation", "Sigmoid", "SylvesterTransform", "Tanh",
    "Transformer", "coupling_mask", "from_config", "initialize_flow", "make_transformer",
]

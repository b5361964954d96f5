"""Conditioners: masked (MADE) and plain MLPs with context inputs, and parameter heads; feature networks."""

from .features import FeatureMLP
from .made import MADE, input_degrees
from .mlp import MLP, get_activation
from .params import ParamHead

__all__ = ["MADE", "FeatureMLP", "MLP", "ParamHead", "get_activation", "input_degrees"]

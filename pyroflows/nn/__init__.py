"""Conditioners: masked (MADE) and plain MLPs with context inputs, and parameter heads."""

from .made import MADE, input_degrees
from .mlp import MLP, get_activation
from .params import ParamHead

__all__ = ["MADE", "MLP", "ParamHead", "get_activation", "input_degrees"]

"""Conditioners in JAX: MADE and MLPs with context inputs, with pyroflows' parameter layout; feature networks."""

from .features import FeatureMLP
from .made import input_degrees, made_apply, made_hidden, made_init, made_masks, made_output
from .mlp import ACTIVATIONS, get_activation, linear_init, mlp_apply, mlp_init, params_view
from .params import param_head_apply, param_head_init

__all__ = ["ACTIVATIONS", "FeatureMLP", "get_activation", "input_degrees", "linear_init", "made_apply", "made_hidden",
           "made_init", "made_masks", "made_output", "mlp_apply", "mlp_init", "param_head_apply", "param_head_init",
           "params_view"]

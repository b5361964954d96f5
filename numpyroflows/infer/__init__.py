"""Inference with flows: ``AutoFlowGuide``, a normalizing-flow autoguide for NumPyro models,
``FlowEncoder``, an amortized flow posterior ``q(z | x)`` for variational autoencoders;
``fit``, maximum-likelihood density estimation."""

from .autoguide import FLOWS, AutoFlowGuide, WarmStart
from .encoder import ENCODER_FLOWS, FeatureMLP, FlowEncoder
from .fit import FitHistory, fit

__all__ = ["ENCODER_FLOWS", "FLOWS", "AutoFlowGuide", "FeatureMLP", "FitHistory", "FlowEncoder", "WarmStart", "fit"]

"""Inference with flows: ``AutoFlowGuide``, a normalizing-flow autoguide for NumPyro models,
``FlowEncoder``, an amortized flow posterior ``q(z | x)`` for variational autoencoders;
``fit``, maximum-likelihood density estimation."""

from ..nn.features import FeatureMLP  # lives in nn; re-exported here, where it was first
from .autoguide import FLOWS, AutoFlowGuide, WarmStart
from .encoder import ENCODER_FLOWS, FlowEncoder
from .fit import FitHistory, fit

__all__ = ["ENCODER_FLOWS", "FLOWS", "AutoFlowGuide", "FeatureMLP", "FitHistory", "FlowEncoder", "WarmStart", "fit"]

"""Inference with flows: ``AutoFlowGuide``, a normalizing-flow autoguide for Pyro models,
``FlowEncoder``, an amortized flow posterior ``q(z | x)`` for variational autoencoders;
``fit``, maximum-likelihood density estimation; ``run_svi``, NumPyro's ``SVI.run`` for a Pyro ``SVI``."""

from ..nn.features import FeatureMLP  # lives in nn; re-exported here, where it was first
from .autoguide import FLOWS, AutoFlowGuide, WarmStart
from .encoder import ENCODER_FLOWS, FlowEncoder
from .fit import FitHistory, fit
from .run_svi import SVIRunResult, run_svi

__all__ = ["ENCODER_FLOWS", "FLOWS", "AutoFlowGuide", "FeatureMLP", "FitHistory", "FlowEncoder", "SVIRunResult",
           "WarmStart", "fit", "run_svi"]

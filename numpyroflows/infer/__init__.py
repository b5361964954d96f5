"""Inference with flows: ``AutoFlowGuide``, a normalizing-flow autoguide for NumPyro models."""

from .autoguide import FLOWS, AutoFlowGuide

__all__ = ["FLOWS", "AutoFlowGuide"]

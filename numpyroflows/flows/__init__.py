"""Flow recipes in JAX (so far ``MAF``, ``IAF``, ``NSF``) and ``Flow`` for a custom stack."""

from .core import Flow, FlowDistribution
from .recipes import IAF, MAF, NSF

__all__ = ["IAF", "MAF", "NSF", "Flow", "FlowDistribution"]

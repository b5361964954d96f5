"""Flow recipes in JAX, with pyroflows' names and arguments: ``MAF``, ``IAF``, ``NSF``, ``Coupling``, ``RealNVP``,
``NICE``, ``BNAF``, ``Planar``, ``Radial``, ``Sylvester``, ``Elementwise``, and ``Flow`` for a custom stack."""

from .core import Flow, FlowDistribution
from .recipes import BNAF, IAF, MAF, NICE, NSF, Coupling, Elementwise, Planar, Radial, RealNVP, Sylvester

__all__ = ["BNAF", "IAF", "MAF", "NICE", "NSF", "Coupling", "Elementwise", "Flow", "FlowDistribution", "Planar",
           "Radial", "RealNVP", "Sylvester"]

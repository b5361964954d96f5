"""Flow recipes: ``MAF``, ``IAF``, ``NSF``, ``Coupling``, ``RealNVP``, ``NICE``, ``BNAF``, ``Planar``, ``Radial``,
``Sylvester``, ``Elementwise``, and ``Flow`` for a custom stack; trainable base distributions (``DiagonalNormal``,
``TrainableBase`` for one's own) for ``Flow(transforms, base=...)``."""

from .bases import BASES, DiagonalNormal, TrainableBase
from .core import Flow, FlowDistribution
from .recipes import BNAF, IAF, MAF, NICE, NSF, Coupling, Elementwise, Planar, Radial, RealNVP, Sylvester

__all__ = ["BASES", "BNAF", "IAF", "MAF", "NICE", "NSF", "Coupling", "DiagonalNormal", "Elementwise", "Flow",
           "FlowDistribution", "Planar", "Radial", "RealNVP", "Sylvester", "TrainableBase"]

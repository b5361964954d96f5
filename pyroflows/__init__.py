"""pyroflows: normalizing flows for Pyro.

Flows are Pyro ``TransformModule``\\ s whose inverse works on fresh data, stacked into recipes (``flows.MAF``,
``flows.NSF``, ...) that return Pyro distributions::

    from pyroflows import flows
    flow = flows.NSF(input_dim=5)
    d = flow()                      # a pyro TorchDistribution
    d.log_prob(x); d.rsample((n,)); d.rsample_and_log_prob((n,))
"""

from . import flows, functional, nn, transforms
from ._checks import set_validation
from .flows import Flow, FlowDistribution
from .io import export_params, import_params, load, save

__version__ = "0.1.0"

__all__ = ["Flow", "FlowDistribution", "export_params", "flows", "functional", "import_params", "load", "nn",
           "save", "set_validation", "transforms"]

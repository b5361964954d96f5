"""numpyroflows: normalizing flows for NumPyro (JAX), the mirror of :mod:`pyroflows`.

Work in progress (issue 3): the functional kernels of the whole catalogue, the transform base, MADE and the
autoregressive recipes ``MAF``/``IAF``/``NSF`` exist, with parity tests against pyroflows; the other transforms and
recipes follow.
"""

from . import flows, functional, nn, transforms
from ._checks import set_validation
from .flows import Flow, FlowDistribution
from .io import export_params, import_params, module

__version__ = "0.1.0"

__all__ = ["Flow", "FlowDistribution", "export_params", "flows", "functional", "import_params", "module", "nn",
           "set_validation", "transforms"]

"""numpyroflows: normalizing flows for NumPyro (JAX), the mirror of :mod:`pyroflows`.

The whole pyroflows catalogue (kernels, transforms, recipes) exists under the same names, with parity tests against
pyroflows; the JAX test suite of its own, the SVI integration and the benchmarks are still to come (issue 3).
"""

from . import flows, functional, nn, transforms
from ._checks import set_validation
from .flows import Flow, FlowDistribution
from .io import export_params, import_params, load, module, save

__version__ = "0.1.0"

__all__ = ["Flow", "FlowDistribution", "export_params", "flows", "functional", "import_params", "load", "module",
           "nn", "save", "set_validation", "transforms"]

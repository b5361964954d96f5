"""pyroflows: normalizing flows for Pyro.

Flows are Pyro ``TransformModule``\\ s whose inverse works on fresh data, stacked into recipes (``flows.MAF``,
``flows.NSF``, ...) that return Pyro distributions::

    from pyroflows import flows
    flow = flows.NSF(input_dim=5)
    d = flow()                      # a pyro TorchDistribution
    d.log_prob(x); d.rsample((n,)); d.rsample_and_log_prob((n,))

and a drop-in autoguide with ArviZ diagnostics::

    guide = pyroflows.AutoFlowGuide(model)          # instead of AutoNormal(model)
    pyroflows.vi_diagnostics(guide, model, *args)   # PSIS k̂, ELBO, IW-ELBO, verdict
    pyroflows.to_inference_data(guide, model, *args)  # an arviz.InferenceData
"""

from . import diagnostics, flows, functional, infer, nn, transforms
from ._checks import set_validation
from .diagnostics import to_inference_data, vi_diagnostics
from .flows import Flow, FlowDistribution
from .infer import AutoFlowGuide, FitHistory, FlowEncoder, SVIRunResult, fit, run_svi
from .io import export_params, import_params, load, save

__version__ = "0.1.0"

__all__ = ["AutoFlowGuide", "FitHistory", "Flow", "FlowDistribution", "FlowEncoder", "SVIRunResult", "diagnostics",
           "export_params", "fit", "flows", "functional", "import_params", "infer", "load", "nn", "run_svi", "save",
           "set_validation", "to_inference_data", "transforms", "vi_diagnostics"]

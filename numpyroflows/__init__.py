"""numpyroflows: normalizing flows for NumPyro (JAX): pure kernels, transforms, named flows, guides and diagnostics.

The catalogue: pure math kernels (:mod:`numpyroflows.functional`), conditioners (:mod:`numpyroflows.nn`), bijections
(:mod:`numpyroflows.transforms`: autoregressive, coupling, elementwise, linear, planar, radial, Sylvester, BNAF) and
named flows (:mod:`numpyroflows.flows`: MAF, IAF, NSF, RealNVP, NICE, BNAF, ...); the same catalogue exists in
pyroflows (PyTorch + Pyro) under the same names and parameter layout, with parity tests between the two. Flows are
pytrees of their parameters; ``numpyroflows.module("flow", flow)`` registers one inside a NumPyro model or guide;
``AutoFlowGuide(model)`` is a drop-in autoguide; :func:`fit` trains a flow by maximum likelihood; ``vi_diagnostics`` /
``to_inference_data`` give PSIS k̂ and an ArviZ ``InferenceData`` for any guide::

    from numpyroflows import flows
    flow = flows.NSF(input_dim=5, key=jax.random.key(0))
    d = flow()                      # a NumPyro Distribution
    d.log_prob(x); d.sample(key, (n,)); d.sample_and_log_prob(key, (n,))
"""

from . import diagnostics, flows, functional, infer, nn, transforms
from ._checks import set_validation
from .diagnostics import to_inference_data, vi_diagnostics
from .flows import Flow, FlowDistribution
from .infer import AutoFlowGuide, FitHistory, FlowEncoder, fit
from .infer.module import module
from .io import export_params, import_params, load, save

__version__ = "0.1.0"

__all__ = ["AutoFlowGuide", "FitHistory", "Flow", "FlowDistribution", "FlowEncoder", "diagnostics", "export_params",
           "fit", "flows", "functional", "import_params", "infer", "load", "module", "nn", "save", "set_validation",
           "to_inference_data", "transforms", "vi_diagnostics"]

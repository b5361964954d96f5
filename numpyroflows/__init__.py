"""numpyroflows: normalizing flows for NumPyro (JAX).

The JAX/NumPyro mirror of :mod:`pyroflows` (same names, arguments and parameter layout) is being built; this package
is a placeholder until then and exposes only its version.
"""

__version__ = "0.1.0"

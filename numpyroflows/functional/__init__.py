"""Pure math kernels (no parameters, no state), in JAX: forward, inverse and log-derivatives of every transformer and
the scalar solves of planar, Sylvester and block neural flows. The same formulas, constants and parameter layouts as
:mod:`pyroflows.functional`; ``tests/test_numpyroflows/functional/`` check that the two agree to float64 precision."""

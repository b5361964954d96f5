"""Pure math kernels (no parameters, no state): forward, inverse and log-determinants of every transformer and the
scalar solves of planar, Sylvester and block neural flows."""

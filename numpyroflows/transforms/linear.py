"""Linear bijections in JAX: diagonal affine, LU-decomposed linear, fixed permutations, Householder reflections,
ActNorm.

Each one (except :class:`Permutation`) holds its raw parameters in a parameter head
(:func:`~numpyroflows.nn.params.param_head_init`), so with ``context_dim > 0`` they are produced from the context by a
small MLP (a conditional linear layer). Parameter names are dotted (``"head.shift"``, ``"head.net.layers.0.weight"``,
...) and are those of pyroflows' ``state_dict``, so parameters move between the packages name for name.

Buffers. Three integer-valued arrays are configuration or state rather than trainable weights: the permutations
``"perm"``/``"inv_perm"`` (:class:`Permutation`, :class:`LULinear`) and ActNorm's flag ``"initialized"``. They are kept
in ``params`` (pyroflows keeps them as persistent buffers in its ``state_dict``, under the same names), but stored as
*floating-point* arrays holding integer values (so that ``jax.grad`` of a loss with respect to a whole flow works: JAX
refuses integer leaves), in the flow's dtype but at least float32; their gradients are zero and the permutations are
rounded back to integers where they are used. Imported integer arrays are converted (to the type the buffer has) on
:meth:`~numpyroflows.transforms.FlowTransform.with_params`; pyroflows casts them back to ``long`` on import. Do not
apply weight decay to them (optimizers with zero gradients leave them unchanged).

Random permutations are drawn from an integer ``seed`` (not a PRNG key), so they are the same on every machine and in
both packages: ``torch.randperm`` with a CPU generator seeded with ``seed``, reproduced exactly in NumPy (the same
Mersenne twister and Fisher–Yates swaps, :func:`torch_randperm`), so that no torch is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flowcommon.starts import cholesky_start

from .._dtype import BUFFERS, buffer_dtype, float_dtype, normal
from ..functional import affine as F_aff
from ..functional import linear as F_lin
from ..functional.affine import affine_scale
from ..nn.params import head_params, param_head_init
from .base import FlowTransform, default_key

Array = jax.Array

#: names of the buffers (integer-valued, stored as floats; see the module docstring)
_BUFFERS = BUFFERS


def torch_randperm(n: int, seed: int) -> np.ndarray:
    """``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` (CPU generator), in NumPy.

    torch draws from a 32-bit Mersenne twister seeded like ``init_genrand(seed)`` and swaps ``r[i]`` with
    ``r[i + u % (n - i)]`` for ``i = 0 … n-2``; NumPy's MT19937 with legacy seeding gives the same raw stream. Seeds
    outside ``[0, 2³²)`` fall back to torch itself (imported lazily).
    """
    n, seed = int(n), int(seed)
    if not 0 <= seed < 2**32:
        import torch

        return torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu").numpy()
    bits = np.random.MT19937()
    bits._legacy_seeding(seed)
    r = np.arange(n, dtype=np.int64)
    for i in range(n - 1):
        z = i + int(bits.random_raw()) % (n - i)
        r[i], r[z] = r[z], r[i]
    return r


def _index(p: Array) -> Array:
    """A permutation stored as floats -> integer indices (no gradient, robust to tiny drift)."""
    return jnp.round(lax.stop_gradient(p)).astype(jnp.int32)


class _LinearBase(FlowTransform):
    """Shared plumbing: the parameter head under ``head.`` and float storage of integer buffers."""

    def _head(self, params: dict, context: Array | None) -> dict[str, Array]:
        return head_params(params, dict(self._shape_items), context)

    def with_params(self, params: dict[str, Array]) -> FlowTransform:
        new = super().with_params(params)
        for k in _BUFFERS:
            if k in new.params and not jnp.issubdtype(new.params[k].dtype, jnp.floating):
                new.params[k] = jnp.asarray(new.params[k], dtype=self.params[k].dtype)
        return new


def _head_params(key: Array | None, init: dict[str, Any], context_dim: int, hidden_dims: Sequence[int],
                 dtype: Any) -> dict:
    return {f"head.{k}": v for k, v in param_head_init(default_key(key), init, context_dim, hidden_dims,
                                                       dtype).items()}


def _buffers(perm: np.ndarray, dtype: Any) -> dict[str, Array]:
    """The buffers ``perm`` and ``inv_perm`` of a permutation, in :func:`~numpyroflows._dtype.buffer_dtype`."""
    return {"perm": jnp.asarray(perm, buffer_dtype(dtype)),
            "inv_perm": jnp.asarray(np.argsort(perm), buffer_dtype(dtype))}


def _affine_start(d: int, loc: Any, scale: Any) -> tuple[np.ndarray, np.ndarray]:
    """Starting ``(shift, raw_scale)`` of a ``DiagonalAffine`` (float64 NumPy, shape ``(d,)``) for ``loc`` and
    ``scale`` (numbers or ``d`` numbers); a ``ValueError`` naming the fix for other shapes, non-finite values or scales
    at or below the floor (the same messages as pyroflows). The raw scale is
    :func:`~numpyroflows.functional.affine.affine_scale_inverse` computed in float64 (exactly 0 for a scale of
    exactly 1)."""
    values = {}
    for name, v in (("loc", loc), ("scale", scale)):
        a = np.asarray(v, dtype=np.float64)
        if a.ndim > 1 or a.size not in (1, d):
            raise ValueError(f"DiagonalAffine's {name} must be a number or {d} numbers (input_dim={d}), "
                             f"got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"DiagonalAffine's {name} must be finite, got {a.tolist()}")
        values[name] = np.broadcast_to(a.reshape(-1), (d,)).copy()
    s = values["scale"]
    if not np.all(s > F_aff.MIN_SCALE):
        raise ValueError(f"DiagonalAffine's scale must be above its floor {F_aff.MIN_SCALE:g}, got {s.tolist()}; "
                         "rescale the data or the model")
    y = s - F_aff.MIN_SCALE
    raw = np.where(s == 1.0, 0.0, y + np.log(-np.expm1(-y)) - F_aff._SCALE_SHIFT)
    return values["loc"], raw


class DiagonalAffine(_LinearBase):
    """Elementwise affine map with one learnable shift and positive scale per dimension.

    ``y = shift + scale ⊙ x`` with ``scale = affine_scale(raw_scale)`` (``1e-3 + softplus``, ``raw_scale = 0`` gives
    1); ``log|det| = Σ log scale``. Starts at ``shift = loc``, ``scale = scale``: the identity by default.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.
        loc: starting shift, a number or ``D`` numbers (with a context: the network's output bias).
        scale: starting scale, a number or ``D`` numbers, each above the floor ``1e-3``.
        key: PRNG key of the context network (unused without a context).
        dtype: floating type of the parameters (``None``: JAX's default); the start, computed in float64, is rounded
            to it once, so a float64 affine starts exactly at ``loc`` and ``scale``. See "Precision" in
            :mod:`numpyroflows.transforms.base`.

    Parameters: ``head.shift``, ``head.raw_scale`` (or ``head.net.*`` with a context), as in
    ``pyroflows.transforms.DiagonalAffine``.

    Example:
        >>> t = DiagonalAffine(3, loc=[1.0, 0.0, -1.0], scale=2.0)
        >>> y, ladj = t.forward_and_log_det(jnp.zeros((1, 3)))

    Reference: Dinh et al. (2017), "Density estimation using Real NVP" (the affine map, here unconditioned).
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64),
                 loc: float | Sequence[float] = 0.0, scale: float | Sequence[float] = 1.0, *,
                 key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, context_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        d = self.input_dim
        self._shape_items = (("shift", (d,)), ("raw_scale", (d,)))
        shift, raw_scale = _affine_start(d, loc, scale)  # float64 NumPy, rounded once to dtype
        self.params = _head_params(key, {"shift": shift, "raw_scale": raw_scale}, context_dim, self.hidden_dims,
                                   float_dtype(dtype))

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        p = self._head(params, context)
        scale = affine_scale(p["raw_scale"])
        y = p["shift"] + scale * x
        return y, jnp.broadcast_to(jnp.log(scale).sum(-1), y.shape[:-1])

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        p = self._head(params, context)
        scale = affine_scale(p["raw_scale"])
        x = (y - p["shift"]) / scale
        return x, jnp.broadcast_to(-jnp.log(scale).sum(-1), x.shape[:-1])


def _make_permutation(d: int, permutation: Sequence[int] | str, seed: int, kinds: tuple[str, ...],
                      where: str) -> np.ndarray:
    """The permutation of ``0..d-1`` that ``permutation`` gives (int64 NumPy): a list of ``0..d-1`` itself, or one of
    ``kinds``: ``"random"`` (drawn from ``seed`` by :func:`torch_randperm`, so the same on every machine and the one
    pyroflows draws), ``"reverse"`` or ``"identity"``; a ``ValueError`` naming the choices otherwise (``where`` names
    the argument in the message)."""
    if isinstance(permutation, str):
        if permutation not in kinds:
            raise ValueError(f"{where} must be one of {kinds} or a list of 0..{d - 1}, got {permutation!r}")
        if permutation == "random":
            return torch_randperm(d, seed)
        return np.arange(d - 1, -1, -1) if permutation == "reverse" else np.arange(d)
    perm = np.asarray([int(i) for i in permutation], dtype=np.int64)
    if perm.shape != (d,) or not np.array_equal(np.sort(perm), np.arange(d)):
        raise ValueError(
            f"permutation must list each of 0..{d - 1} exactly once (input_dim={d}), got {list(permutation)}"
        )
    return perm


class LULinear(_LinearBase):
    """Invertible linear layer ``y = W x + b`` with ``W = P L U`` (LU-decomposed, as Glow's 1x1 convolutions).

    ``P`` is a fixed permutation (by default drawn at random from ``seed``), ``L`` is unit lower triangular and ``U``
    upper triangular with diagonal ``1e-3 + softplus(raw)`` (raw 0 gives 1), so ``log|det W| = Σ log diag(U)`` costs
    O(D) and the inverse is two triangular solves. ``L`` and ``U`` start at the identity (``W = P``). With a context
    each batch element gets its own matrix and the solves are batched.

    Without pivoting (``P = I``) not every invertible matrix has an LU factorization, but every one has some ``P``
    that makes ``P⁻¹ W`` factorizable; a random ``P`` also mixes the coordinates from the first step (Glow fixes ``P``
    from the LU decomposition of a random rotation). ``permutation="identity"`` gives ``W = L U``, which starts at
    the identity map (the warm start of ``AutoFlowGuide`` uses it to place ``W`` at a Cholesky factor).

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.
        seed: seed of the random permutation (an integer; the permutation is the one pyroflows draws from it).
        permutation: ``None`` or ``"random"`` (default: drawn from ``seed``), ``"identity"``, or ``P`` itself as a
            list of ``0..D-1`` (row ``i`` of ``W`` is row ``permutation[i]`` of ``L U``).
        key: PRNG key of the context network (unused without a context).
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``perm``, ``inv_perm`` (buffers, see the module docstring), ``head.shift``, ``head.packed``,
    ``head.raw_diag`` (or ``head.net.*``), as in ``pyroflows.transforms.LULinear``.

    Reference: Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions".
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64), seed: int = 0,
                 permutation: Sequence[int] | str | None = None, *, key: Array | None = None,
                 dtype: Any = None) -> None:
        super().__init__(input_dim, context_dim)
        d, dtype = self.input_dim, float_dtype(dtype)
        self.hidden_dims, self.seed = tuple(int(h) for h in hidden_dims), int(seed)
        perm = _make_permutation(d, "random" if permutation is None else permutation, self.seed,
                                 ("random", "identity"), "LULinear's permutation")
        self._shape_items = (("shift", (d,)), ("packed", (d, d)), ("raw_diag", (d,)))
        init = {"shift": np.zeros(d), "packed": np.zeros((d, d)), "raw_diag": np.zeros(d)}
        self.params = {**_buffers(perm, dtype), **_head_params(key, init, context_dim, self.hidden_dims, dtype)}

    def _factors(self, params: dict, context: Array | None):
        p = self._head(params, context)
        lower, upper, log_diag = F_lin.lu_factors(p["packed"], p["raw_diag"])
        return lower, upper, log_diag, p["shift"]

    def weight(self, context: Array | None = None) -> Array:
        """The matrix ``W = P L U`` (``(D, D)``, or batched with a context)."""
        lower, upper, _, _ = self._factors(self.params, context)
        return (lower @ upper)[..., _index(self.params["perm"]), :]

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        lower, upper, log_diag, shift = self._factors(params, context)
        return F_lin.lu_forward(x, lower, upper, log_diag, _index(params["perm"]), shift)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        lower, upper, log_diag, shift = self._factors(params, context)
        if lower.ndim > 2:  # one matrix per context: batched solves need equal batch shapes
            batch = jnp.broadcast_shapes(y.shape[:-1], lower.shape[:-2])
            d = self.input_dim
            y = jnp.broadcast_to(y, batch + (d,))
            lower, upper = jnp.broadcast_to(lower, batch + (d, d)), jnp.broadcast_to(upper, batch + (d, d))
        return F_lin.lu_inverse(y, lower, upper, log_diag, _index(params["inv_perm"]), shift)


class Permutation(_LinearBase):
    """A fixed permutation of the coordinates, ``y = x[..., perm]``; ``log|det| = 0``.

    Args:
        input_dim: D.
        permutation: the permutation as a list of ``0..D-1`` (overrides ``kind``).
        kind: ``"reverse"`` or ``"random"`` (drawn from ``seed``, exactly as pyroflows draws it), used when
            ``permutation`` is None.
        seed: seed of the random permutation.
        key: accepted for a uniform constructor signature, and unused.
        dtype: floating type of the flow (``None``: JAX's default); the buffers are stored in it, but at least in
            float32 (see "Precision" in :mod:`numpyroflows.transforms.base`).

    Parameters: the buffers ``perm`` and ``inv_perm`` only (floats holding integers, see the module docstring; no
    gradient).

    Example:
        >>> t = Permutation(3, [2, 0, 1])
        >>> t.forward_and_log_det(jnp.array([[10.0, 11.0, 12.0]]))[0]
        Array([[12., 10., 11.]], dtype=float32)

    Reference: Dinh et al. (2015), "NICE: Non-linear Independent Components Estimation" (alternating coupling
    partitions); Papamakarios et al. (2017), "Masked Autoregressive Flow" (reversed orders between layers).
    """

    def __init__(self, input_dim: int, permutation: Sequence[int] | None = None, kind: str = "reverse",
                 seed: int = 0, *, key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, 0)
        d = self.input_dim
        perm = _make_permutation(d, kind if permutation is None else permutation, seed, ("reverse", "random"),
                                 "Permutation's kind")
        self.perm = tuple(int(i) for i in perm)  # static copy, for display; the math uses params["perm"]
        self.params = _buffers(perm, float_dtype(dtype))

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return x[..., _index(params["perm"])], jnp.zeros(x.shape[:-1], x.dtype)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return y[..., _index(params["inv_perm"])], jnp.zeros(y.shape[:-1], y.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_dim={self.input_dim}, perm={list(self.perm)})"


class ReversePermutation(Permutation):
    """Reverse the order of the coordinates: ``y = x[..., ::-1]`` (a :class:`Permutation`)."""

    def __init__(self, input_dim: int, *, key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, None, "reverse", dtype=dtype)


class RandomPermutation(Permutation):
    """A fixed random permutation of the coordinates drawn from the integer ``seed`` (a :class:`Permutation`); the
    same seed gives the same permutation on every machine, and in pyroflows."""

    def __init__(self, input_dim: int, seed: int = 0, *, key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, None, "random", seed, dtype=dtype)


class LowerCholeskyAffine(_LinearBase):
    """A fixed affine map ``y = loc + L x`` with ``L`` lower triangular, positive diagonal; ``log|det| = Σ log L_ii``.

    It carries ``N(0, I)`` to ``N(loc, L Lᵀ)``, and is not trained: its values are held in ``params`` (``"loc"``,
    ``"scale_tril"``, the names of pyroflows' buffers) but enter the map through ``lax.stop_gradient``, so their
    gradients are zero and an optimizer leaves them where they are. It starts at the identity; :meth:`with_values`
    places it, e.g. at a Laplace approximation (mode, Cholesky factor of ``H⁻¹``) so that the layers before it work in
    whitened coordinates (``AutoFlowGuide`` does this: a learning rate then means a step in units of the posterior's
    scale). The inverse is one triangular solve. The same math as NumPyro's ``LowerCholeskyAffine`` transform.

    Args:
        input_dim: D.
        key: accepted for a uniform constructor signature, and unused.
        dtype: floating type of the values (``None``: JAX's default).

    Example:
        >>> t = LowerCholeskyAffine(2).with_values([1.0, 2.0], [[2.0, 0.0], [1.0, 0.5]])
        >>> t(jnp.zeros((1, 2)))
        Array([[1., 2.]], dtype=float32)
    """

    fixed_params = ("loc", "scale_tril")

    def __init__(self, input_dim: int, *, key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, 0)
        d, dtype = self.input_dim, float_dtype(dtype)
        self.params = {"loc": jnp.zeros(d, dtype), "scale_tril": jnp.eye(d, dtype=dtype)}

    def with_values(self, loc: Any, scale_tril: Any) -> LowerCholeskyAffine:
        """A copy at ``loc`` (``D`` numbers) and ``scale_tril`` (``D x D``, lower triangular, positive diagonal),
        in this transform's dtype."""
        loc, tril = cholesky_start(self.input_dim, loc, scale_tril)
        dtype = self.params["loc"].dtype
        return self.with_params({"loc": jnp.asarray(loc, dtype), "scale_tril": jnp.asarray(tril, dtype)})

    def _values(self, params: dict) -> tuple[Array, Array]:
        return lax.stop_gradient(params["loc"]), lax.stop_gradient(params["scale_tril"])

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return F_lin.cholesky_affine_forward(x, *self._values(params))

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return F_lin.cholesky_affine_inverse(y, *self._values(params))


class Householder(_LinearBase):
    """Orthogonal map made of ``count`` Householder reflections; volume preserving.

    ``y = H_K ⋯ H_1 x`` with ``H_k = I - 2 v_k v_kᵀ / ‖v_k‖²``; ``|det| = 1``; the inverse applies the reflections in
    reverse order. The vectors start standard normal (drawn from ``key``): a random orthogonal map.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free vectors).
        hidden_dims: hidden widths of the context network.
        count: number of reflections K.
        key: PRNG key of the initial vectors and of the context network.
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``head.vectors`` ``(count, D)`` (or ``head.net.*``), as in ``pyroflows.transforms.Householder``.

    Reference: Tomczak & Welling (2016), "Improving Variational Auto-Encoders using Householder Flow".
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64), count: int = 2,
                 *, key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, context_dim)
        dtype = float_dtype(dtype)
        if int(count) < 1:
            raise ValueError(f"count must be a positive number of reflections, got {count}")
        self.count, self.hidden_dims = int(count), tuple(int(h) for h in hidden_dims)
        k_vec, k_net = jax.random.split(default_key(key))
        self._shape_items = (("vectors", (self.count, self.input_dim)),)
        init = {"vectors": normal(k_vec, (self.count, self.input_dim), dtype)}
        self.params = _head_params(k_net, init, context_dim, self.hidden_dims, dtype)

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return F_lin.householder_forward(x, self._head(params, context)["vectors"])

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return F_lin.householder_inverse(y, self._head(params, context)["vectors"])


class ActNorm(_LinearBase):
    """Activation normalisation: ``y = loc + scale ⊙ x``, ``scale = exp(log_scale)``, ``log|det| = Σ log_scale``.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.
        key: PRNG key of the context network (unused without a context).
        dtype: floating type of the parameters (``None``: JAX's default; the flag is stored in it but at least in
            float32, see "Precision" in :mod:`numpyroflows.transforms.base`).

    Parameters: ``head.loc``, ``head.log_scale`` (or ``head.net.*``) and the flag ``initialized`` (0/1, stored as a
    float; see the module docstring). The names are those of ``pyroflows.transforms.ActNorm``, so an initialised
    pyroflows ActNorm imports with its fitted values and flag.

    Data-dependent initialisation is *explicit*, since a pure function cannot change its own parameters on the first
    call: :meth:`initialize` returns a new transform whose first call on that batch gives zero mean and unit variance
    per dimension, and :meth:`numpyroflows.flows.Flow.initialize` does it for every ActNorm of a flow (``fit`` calls
    it before the first step). The forward and inverse maps always use the stored parameters, whatever the flag; an
    uninitialised layer without a context is the identity.

    Reference: Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions".
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64), *,
                 key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, context_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        d, dtype = self.input_dim, float_dtype(dtype)
        self._shape_items = (("loc", (d,)), ("log_scale", (d,)))
        self.params = {"initialized": jnp.zeros((), buffer_dtype(dtype)),
                       **_head_params(key, {"loc": np.zeros(d), "log_scale": np.zeros(d)}, context_dim,
                                      self.hidden_dims, dtype)}

    def _bias_name(self) -> str:
        """Name of the context network's output bias (which holds ``[loc, log_scale]``)."""
        last = max((int(k.split(".")[3]) for k in self.params if k.startswith("head.net.layers.")), default=None)
        return "head.net.context_layer.bias" if last is None else f"head.net.layers.{last}.bias"

    @property
    def requires_initialization(self) -> bool:
        """True while the flag ``initialized`` is 0 (a concrete value: call it outside ``jax.jit``)."""
        return float(self.params["initialized"]) < 0.5

    def initialize(self, v: Array, direction: str = "forward") -> ActNorm:
        """This layer initialised from a batch, so that its pass in ``direction`` maps ``v`` to zero mean and unit
        variance per dimension.

        ``direction="forward"`` (``v`` is an input ``x``): ``scale = 1/std(x)``, ``loc = -mean(x)/std(x)``;
        ``"inverse"`` (``v`` is an output ``y``): ``loc = mean(y)``, ``scale = std(y)``. Statistics over all batch
        dimensions (no gradient); dimensions with zero or non-finite spread keep ``scale = 1``. With a context the
        output bias of the context network is set. A layer whose flag ``initialized`` is already 1 is returned
        unchanged (see :meth:`reset_initialization`). Jit-able; returns a new transform (the values are those of
        pyroflows' ActNorm after its first call on the same batch).
        """
        if direction not in ("forward", "inverse"):
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
        v = lax.stop_gradient(jnp.asarray(v))
        flat = v.reshape(-1, self.input_dim)
        mean = flat.mean(0)
        std = flat.std(0)
        std = jnp.where((std > 0) & jnp.isfinite(std), std, jnp.ones_like(std))
        if direction == "forward":
            loc, log_scale = -mean / std, -jnp.log(std)
        else:
            loc, log_scale = mean, jnp.log(std)
        done = self.params["initialized"] > 0.5
        params = dict(self.params)
        if self.context_dim == 0:
            new = {"head.loc": loc, "head.log_scale": log_scale}
        else:
            name = self._bias_name()
            stats = jnp.concatenate([loc, log_scale]).astype(params[name].dtype)
            new = {name: params[name].at[: 2 * self.input_dim].set(stats)}
        for k, val in new.items():
            params[k] = jnp.where(done, params[k], val.astype(params[k].dtype))
        params["initialized"] = jnp.ones_like(params["initialized"])
        return self.with_params(params)

    def reset_initialization(self) -> ActNorm:
        """A copy with the flag ``initialized`` at 0 (the next :meth:`initialize` sets ``loc``/``scale`` again)."""
        return self.with_params({**self.params, "initialized": jnp.zeros_like(self.params["initialized"])})

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        p = self._head(params, context)
        y = p["loc"] + jnp.exp(p["log_scale"]) * x
        return y, jnp.broadcast_to(p["log_scale"].sum(-1), y.shape[:-1])

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        p = self._head(params, context)
        x = (y - p["loc"]) * jnp.exp(-p["log_scale"])
        return x, jnp.broadcast_to(-p["log_scale"].sum(-1), x.shape[:-1])


def initialize_flow(flow: Any, x: Array, context: Array | None = None) -> Any:
    """``flow.initialize(x, context)`` (:meth:`numpyroflows.flows.Flow.initialize`), kept for code written before
    the flow owned its data-dependent initialisation. Returns a new flow."""
    return flow.initialize(x, context)

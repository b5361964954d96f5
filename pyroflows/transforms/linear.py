"""Linear bijections: diagonal affine, LU-decomposed linear, fixed permutations, Householder reflections, ActNorm.

Each one (except :class:`Permutation`) holds its raw parameters in a :class:`~pyroflows.nn.params.ParamHead`, so with
``context_dim > 0`` they are produced from the context by a small MLP (a conditional linear layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from flowcommon.starts import cholesky_start

from ..functional import linear as F_lin
from ..functional.affine import MIN_SCALE, affine_scale, scale_shift
from ..nn.params import ParamHead
from .base import FlowTransform

Tensor = torch.Tensor


def _make_permutation(d: int, permutation: Sequence[int] | str, seed: int, kinds: tuple[str, ...],
                      where: str) -> Tensor:
    """The permutation of ``0..d-1`` that ``permutation`` gives, on the default device: a list of ``0..d-1`` itself,
    or one of ``kinds``: ``"random"`` (drawn from ``seed`` with a CPU generator, so the same on every machine),
    ``"reverse"`` or ``"identity"``; a ``ValueError`` naming the choices otherwise."""
    if isinstance(permutation, str):
        if permutation not in kinds:
            raise ValueError(f"{where} must be one of {kinds} or a list of 0..{d - 1}, got {permutation!r}")
        if permutation == "random":
            perm = torch.randperm(d, generator=torch.Generator().manual_seed(int(seed)), device="cpu")
        else:
            perm = torch.arange(d - 1, -1, -1) if permutation == "reverse" else torch.arange(d)
    else:
        perm = torch.as_tensor([int(i) for i in permutation], dtype=torch.long)
        if perm.shape != (d,) or not torch.equal(torch.sort(perm).values.cpu(), torch.arange(d, device="cpu")):
            raise ValueError(
                f"permutation must list each of 0..{d - 1} exactly once (input_dim={d}), got {list(permutation)}"
            )
    return perm.to(torch.empty(0).device)  # placed on the default device like every other tensor built here


def _affine_start(d: int, loc: Any, scale: Any) -> tuple[Tensor, Tensor]:
    """Starting ``(shift, raw_scale)`` of a ``DiagonalAffine`` (float64, shape ``(d,)``) for ``loc`` and ``scale``
    (numbers or ``d`` numbers); a ``ValueError`` naming the fix for other shapes, non-finite values or scales at or
    below the floor. The raw scale is the inverse of :func:`~pyroflows.functional.affine.affine_scale` in float64,
    without :func:`~pyroflows.functional.affine.affine_scale_inverse`'s clamp (which would move a scale within 1e-6
    of the floor; the scales here are checked to be above it), the computation of numpyroflows; a scale of exactly 1
    gives a raw value of exactly 0."""
    values = {}
    for name, v in (("loc", loc), ("scale", scale)):
        t = torch.as_tensor(v, dtype=torch.float64)
        if t.ndim > 1 or t.numel() not in (1, d):
            raise ValueError(f"DiagonalAffine's {name} must be a number or {d} numbers (input_dim={d}), "
                             f"got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"DiagonalAffine's {name} must be finite, got {t.tolist()}")
        values[name] = t.reshape(-1).expand(d).clone()
    s = values["scale"]
    if not bool((s > MIN_SCALE).all()):
        raise ValueError(f"DiagonalAffine's scale must be above its floor {MIN_SCALE:g}, got {s.tolist()}; "
                         "rescale the data or the model")
    y = s - MIN_SCALE
    raw = torch.where(s == 1.0, torch.zeros_like(s), y + torch.log(-torch.expm1(-y)) - scale_shift(MIN_SCALE))
    return values["loc"], raw


class DiagonalAffine(FlowTransform):
    """Elementwise affine map with one learnable shift and positive scale per dimension.

    ``y = shift + scale ⊙ x`` with ``scale = affine_scale(raw_scale)`` (``1e-3 + softplus``, ``raw_scale = 0`` gives
    1); ``log|det| = Σ log scale``. Starts at ``shift = loc``, ``scale = scale``: the identity by default.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.
        loc: starting shift, a number or ``D`` numbers (with a context: the network's output bias).
        scale: starting scale, a number or ``D`` numbers, each above the floor ``1e-3``.
        dtype: floating type of the parameters (``None``: torch's default dtype), as ``torch.nn.Linear``'s. The start
            is computed in float64 and converted once, so ``dtype=torch.float64`` starts exactly at ``loc`` and
            ``scale`` whatever the default dtype (building in float32 and calling ``.double()`` keeps only the float32
            rounding of the start).

    Example:
        >>> t = DiagonalAffine(3, loc=[1.0, 0.0, -1.0], scale=2.0)
        >>> t(torch.zeros(1, 3))
        tensor([[ 1.,  0., -1.]], grad_fn=<AddBackward0>)

    Reference: Dinh et al. (2017), "Density estimation using Real NVP" (the affine map, here unconditioned).
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        loc: float | Sequence[float] = 0.0,
        scale: float | Sequence[float] = 1.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_dim, context_dim)
        shift, raw_scale = _affine_start(self.input_dim, loc, scale)  # float64, converted once to dtype
        self.head = ParamHead({"shift": shift, "raw_scale": raw_scale}, context_dim, hidden_dims, dtype=dtype)

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        p = self.head(context)
        scale = affine_scale(p["raw_scale"])
        y = p["shift"] + scale * x
        return y, torch.broadcast_to(torch.log(scale).sum(-1), y.shape[:-1])

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        p = self.head(context)
        scale = affine_scale(p["raw_scale"])
        x = (y - p["shift"]) / scale
        return x, torch.broadcast_to(-torch.log(scale).sum(-1), x.shape[:-1])


class LULinear(FlowTransform):
    """Invertible linear layer ``y = W x + b`` with ``W = P L U`` (LU-decomposed, as Glow's 1x1 convolutions).

    ``P`` is a fixed permutation (a buffer; by default drawn at random from ``seed``), ``L`` is unit lower triangular
    and ``U`` upper triangular with diagonal ``1e-3 + softplus(raw)`` (raw 0 gives 1), so ``log|det W| = Σ log diag(U)``
    costs O(D) and the inverse is two triangular solves. ``L`` and ``U`` start at the identity (``W = P``). With a
    context each batch element gets its own matrix and the solves are batched.

    Without pivoting (``P = I``) not every invertible matrix has an LU factorization, but every one has some ``P``
    that makes ``P⁻¹ W`` factorizable; a random ``P`` also mixes the coordinates from the first step (Glow fixes ``P``
    from the LU decomposition of a random rotation). ``permutation="identity"`` gives ``W = L U``, which starts at
    the identity map (the warm start of ``AutoFlowGuide`` uses it to place ``W`` at a Cholesky factor).

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.
        seed: seed of the random permutation.
        permutation: ``None`` or ``"random"`` (default: drawn from ``seed``), ``"identity"``, or ``P`` itself as a
            list of ``0..D-1`` (row ``i`` of ``W`` is row ``permutation[i]`` of ``L U``).

    Example:
        >>> t = LULinear(4)
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 4))
        >>> x, _ = t.inverse_and_log_det(y)

    Reference: Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions".
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        seed: int = 0,
        permutation: Sequence[int] | str | None = None,
    ) -> None:
        super().__init__(input_dim, context_dim)
        d = self.input_dim
        perm = _make_permutation(d, "random" if permutation is None else permutation, seed, ("random", "identity"),
                                 "LULinear's permutation")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))
        init = {"shift": torch.zeros(d), "packed": torch.zeros(d, d), "raw_diag": torch.zeros(d)}
        self.head = ParamHead(init, context_dim, hidden_dims)

    def _factors(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = self.head(context)
        lower, upper, log_diag = F_lin.lu_factors(p["packed"], p["raw_diag"])
        return lower, upper, log_diag, p["shift"]

    def weight(self, context: Tensor | None = None) -> Tensor:
        """The matrix ``W = P L U`` (``(D, D)``, or batched with a context)."""
        lower, upper, _, _ = self._factors(context)
        return (lower @ upper)[..., self.perm, :]

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        lower, upper, log_diag, shift = self._factors(context)
        return F_lin.lu_forward(x, lower, upper, log_diag, self.perm, shift)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        lower, upper, log_diag, shift = self._factors(context)
        return F_lin.lu_inverse(y, lower, upper, log_diag, self.inv_perm, shift)


class Permutation(FlowTransform):
    """A fixed permutation of the coordinates, ``y = x[..., perm]``; no parameters, ``log|det| = 0``.

    Args:
        input_dim: D.
        permutation: the permutation as a list of ``0..D-1`` (overrides ``kind``).
        kind: ``"reverse"`` or ``"random"`` (drawn from ``seed``), used when ``permutation`` is None.
        seed: seed of the random permutation.

    Example:
        >>> t = Permutation(3, [2, 0, 1])
        >>> t.forward_and_log_det(torch.tensor([[10.0, 11.0, 12.0]]))[0]
        tensor([[12., 10., 11.]])

    Reference: Dinh et al. (2015), "NICE: Non-linear Independent Components Estimation" (alternating coupling
    partitions); Papamakarios et al. (2017), "Masked Autoregressive Flow" (reversed orders between layers).
    """

    def __init__(
        self, input_dim: int, permutation: Sequence[int] | None = None, kind: str = "reverse", seed: int = 0
    ) -> None:
        super().__init__(input_dim, 0)
        d = self.input_dim
        perm = _make_permutation(d, kind if permutation is None else permutation, seed, ("reverse", "random"),
                                 "Permutation's kind")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x[..., self.perm], x.new_zeros(x.shape[:-1])

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return y[..., self.inv_perm], y.new_zeros(y.shape[:-1])

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, perm={self.perm.tolist()}"


class ReversePermutation(Permutation):
    """Reverse the order of the coordinates: ``y = x[..., ::-1]`` (a :class:`Permutation`).

    Example:
        >>> ReversePermutation(3).forward_and_log_det(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def __init__(self, input_dim: int) -> None:
        super().__init__(input_dim, None, "reverse")


class RandomPermutation(Permutation):
    """A fixed random permutation of the coordinates drawn from ``seed`` (a :class:`Permutation`).

    Example:
        >>> t = RandomPermutation(5, seed=1)
    """

    def __init__(self, input_dim: int, seed: int = 0) -> None:
        super().__init__(input_dim, None, "random", seed)


class LowerCholeskyAffine(FlowTransform):
    """A fixed affine map ``y = loc + L x`` with ``L`` lower triangular, positive diagonal; ``log|det| = Σ log L_ii``.

    It carries ``N(0, I)`` to ``N(loc, L Lᵀ)``, and is not trained: ``loc`` and ``scale_tril`` are buffers (in the
    ``state_dict``, not among the parameters). It starts at the identity; :meth:`with_values` places it, e.g. at a
    Laplace approximation (mode, Cholesky factor of ``H⁻¹``) so that the layers before it work in whitened coordinates
    (``AutoFlowGuide`` does this: a learning rate then means a step in units of the posterior's scale). The inverse
    is one triangular solve. The same math as Pyro's and NumPyro's ``LowerCholeskyAffine`` transforms.

    Args:
        input_dim: D.
        dtype: floating type of the buffers (``None``: torch's default dtype).

    Example:
        >>> t = LowerCholeskyAffine(2).with_values([1.0, 2.0], [[2.0, 0.0], [1.0, 0.5]])
        >>> t(torch.zeros(1, 2))
        tensor([[1., 2.]])
    """

    def __init__(self, input_dim: int, dtype: torch.dtype | None = None) -> None:
        super().__init__(input_dim, 0)
        d, dtype = self.input_dim, dtype or torch.get_default_dtype()
        self.register_buffer("loc", torch.zeros(d, dtype=dtype))
        self.register_buffer("scale_tril", torch.eye(d, dtype=dtype))

    def with_values(self, loc: Any, scale_tril: Any) -> LowerCholeskyAffine:
        """A new transform at ``loc`` (``D`` numbers) and ``scale_tril`` (``D x D``, lower triangular, positive
        diagonal), with this one's dtype and device."""
        loc, tril = cholesky_start(self.input_dim, torch.as_tensor(loc).detach().cpu(),
                                     torch.as_tensor(scale_tril).detach().cpu())
        new = LowerCholeskyAffine(self.input_dim, dtype=self.loc.dtype).to(self.loc.device)
        new.loc.copy_(torch.from_numpy(loc))
        new.scale_tril.copy_(torch.from_numpy(tril))
        return new

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F_lin.cholesky_affine_forward(x, self.loc, self.scale_tril)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F_lin.cholesky_affine_inverse(y, self.loc, self.scale_tril)


class Householder(FlowTransform):
    """Orthogonal map made of ``count`` Householder reflections; volume preserving.

    ``y = H_K ⋯ H_1 x`` with ``H_k = I - 2 v_k v_kᵀ / ‖v_k‖²``; ``|det| = 1``, and the inverse applies the same
    reflections in reverse order. The vectors ``v_k`` start random (a random orthogonal map).

    Args:
        input_dim: D.
        context_dim: size of the context (0: free vectors).
        hidden_dims: hidden widths of the context network.
        count: number of reflections K.

    Example:
        >>> t = Householder(4, count=3)
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 4))   # ladj == 0

    Reference: Tomczak & Welling (2016), "Improving Variational Auto-Encoders using Householder Flow".
    """

    def __init__(
        self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64), count: int = 2
    ) -> None:
        super().__init__(input_dim, context_dim)
        if int(count) < 1:
            raise ValueError(f"count must be a positive number of reflections, got {count}")
        self.count = int(count)
        self.head = ParamHead({"vectors": torch.randn(self.count, self.input_dim)}, context_dim, hidden_dims)

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F_lin.householder_forward(x, self.head(context)["vectors"])

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F_lin.householder_inverse(y, self.head(context)["vectors"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, count={self.count}"


class ActNorm(FlowTransform):
    """Activation normalisation: ``y = loc + scale ⊙ x`` with data-dependent initialisation.

    ``scale = exp(log_scale)``; ``log|det| = Σ log_scale``. The first call in either direction while the layer is
    not initialised sets ``loc`` and ``scale`` (:meth:`initialize`: detached batch statistics over all batch dimensions)
    so that the output of that very call has zero mean and unit variance per dimension: forward ``scale = 1/std(x)``,
    ``loc = -mean(x)/std(x)``; inverse ``loc = mean(y)``, ``scale = std(y)``. Dimensions with zero spread (e.g. a
    single sample) keep ``scale = 1``. With a context, the output bias of the context network is set (the network
    output then starts close to these values).

    State: the persistent buffer ``initialized`` (0/1) is the one intentional piece of state in pyroflows. It is part
    of the ``state_dict``, so loading a saved flow keeps it (and the fitted ``loc``/``scale``); the initialisation
    then does not run again. Call :meth:`reset_initialization` to rerun it on the next call.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.

    Example:
        >>> t = ActNorm(3)
        >>> y, _ = t.forward_and_log_det(5.0 + 2.0 * torch.randn(100, 3))   # y is standardised per dimension

    Reference: Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions".
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64)) -> None:
        super().__init__(input_dim, context_dim)
        zeros = torch.zeros(self.input_dim)
        self.head = ParamHead({"loc": zeros, "log_scale": zeros.clone()}, context_dim, hidden_dims)
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.long))
        self._init_seen = False  # host-side cache of `initialized == 1`, avoids a device sync per call

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._init_seen = False

    def reset_initialization(self) -> None:
        """Mark the layer uninitialised: the next call sets ``loc``/``scale`` from its batch again."""
        self.initialized.zero_()
        self._init_seen = False

    @property
    def requires_initialization(self) -> bool:
        """True until the layer has set ``loc``/``scale`` from data (its flag ``initialized`` is 0)."""
        return not (self._init_seen or bool(self.initialized))

    @torch.no_grad()
    def initialize(self, v: Tensor, direction: str = "forward") -> ActNorm:
        """Set ``loc`` and ``scale`` from a batch so that this very batch comes out with zero mean and unit variance
        per dimension: ``direction="forward"`` (``v`` is an input ``x``): ``scale = 1/std(x)``,
        ``loc = -mean(x)/std(x)``; ``"inverse"`` (``v`` is an output ``y``): ``loc = mean(y)``, ``scale = std(y)``.
        Statistics over all batch dimensions, without gradient; dimensions with zero or non-finite spread keep
        ``scale = 1``. With a context the output bias of the context network is set. A layer already initialised is
        left as it is (see :meth:`reset_initialization`). Returns the layer (changed in place)."""
        if direction not in ("forward", "inverse"):
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
        if not self.requires_initialization:
            self._init_seen = True
            return self
        flat = v.detach().reshape(-1, self.input_dim)
        mean = flat.mean(0)
        std = flat.std(0, correction=0)
        std = torch.where((std > 0) & torch.isfinite(std), std, torch.ones_like(std))
        if direction == "forward":
            loc, log_scale = -mean / std, -torch.log(std)
        else:
            loc, log_scale = mean, torch.log(std)
        self.head.set_value("loc", loc)
        self.head.set_value("log_scale", log_scale)
        self.initialized.fill_(1)
        self._init_seen = True
        return self

    def _maybe_initialize(self, v: Tensor, forward: bool) -> None:
        if not self._init_seen:  # the host-side flag: no device sync once initialised
            self.initialize(v, "forward" if forward else "inverse")

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        self._maybe_initialize(x, forward=True)
        p = self.head(context)
        y = p["loc"] + torch.exp(p["log_scale"]) * x
        return y, torch.broadcast_to(p["log_scale"].sum(-1), y.shape[:-1])

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        self._maybe_initialize(y, forward=False)
        p = self.head(context)
        x = (y - p["loc"]) * torch.exp(-p["log_scale"])
        return x, torch.broadcast_to(-p["log_scale"].sum(-1), x.shape[:-1])

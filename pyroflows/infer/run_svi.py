"""``run_svi``: NumPyro's ``SVI.run`` for Pyro, a training loop over ``pyro.infer.SVI.step`` with a progress bar, the
per-step losses and a guard against non-finite losses.

``run_svi(svi, *args, num_steps=n, **kwargs)`` returns ``SVIRunResult(params, state, losses)``, the fields of
:data:`numpyro.infer.svi.SVIRunResult` in its order, so the same script reads ``result.params`` and ``result.losses``
whichever backend trained it.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from typing import Any, NamedTuple

import pyro
import torch
from pyro.params.param_store import ParamStoreDict

Tensor = torch.Tensor
Loss = float | tuple[float, ...]

_FIX = ("lower the learning rate, clip the gradients (pyro.optim.ClippedAdam({'lr': ..., 'clip_norm': 10.0})), or "
        "check the model (a scale that can reach 0, an exp that overflows, data outside a distribution's support)")


class SVIRunResult(NamedTuple):
    """What :func:`run_svi` returns, in the field order of NumPyro's ``SVIRunResult``.

    Attributes:
        params: ``{name: constrained value}`` of every parameter in Pyro's parameter store after the run (detached
            clones; the store is global, so this holds the parameters of other models in it too).
        state: the optimizer's state, a deep copy of ``svi.optim.get_state()`` (``{param name: optimizer state
            dict}``, accepted by ``optim.set_state``); ``None`` when ``svi`` has no Pyro optimizer. After a stop on a
            non-finite loss it holds that step's update (the parameters do not).
        losses: float64 tensor of the loss of every step run, shape ``(steps run,)`` (``(num_steps,)`` unless the
            run stopped early; ``(steps run, k)`` for losses that are ``k``-tuples, e.g. ``ReweightedWakeSleep``).
    """

    params: dict[str, Tensor]
    state: dict[str, Any] | None
    losses: Tensor


class _Snapshot:
    """The parameter store's unconstrained values before a step, copied into buffers kept from step to step."""

    def __init__(self) -> None:
        self.values: dict[str, Tensor] = {}
        self.ready = False  # False while a copy is under way (a half-taken snapshot is never restored)

    def take(self, store: ParamStoreDict) -> None:
        self.ready = False
        live = dict(store.named_parameters())
        for name in [name for name in self.values if name not in live]:
            del self.values[name]
        with torch.no_grad():
            for name, value in live.items():
                buf = self.values.get(name)
                if buf is None or buf.shape != value.shape or buf.dtype != value.dtype or buf.device != value.device:
                    self.values[name] = value.detach().clone()
                else:
                    buf.copy_(value)
        self.ready = True

    def restore(self, store: ParamStoreDict) -> None:
        """Write the values back into the store's tensors in place, so guides and modules holding them see them."""
        if not self.ready:
            return
        live = dict(store.named_parameters())
        with torch.no_grad():
            for name, buf in self.values.items():
                value = live.get(name)
                if value is not None and value.shape == buf.shape:
                    value.copy_(buf)


def _check_arguments(svi: Any, num_steps: Any) -> None:
    if not callable(getattr(svi, "step", None)):
        raise TypeError(f"run_svi takes a pyro.infer.SVI (e.g. SVI(model, guide, pyro.optim.Adam({{'lr': 0.01}}), "
                        f"Trace_ELBO())), or any object with a .step(*args, **kwargs) method; got "
                        f"{type(svi).__name__}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int (the number of svi.step calls), got {num_steps!r}")


def _as_loss(loss: Any) -> Loss:
    """``svi.step``'s return (a float, or a tuple for losses such as ``ReweightedWakeSleep``) as float(s)."""
    return tuple(float(x) for x in loss) if isinstance(loss, tuple) else float(loss)


def _is_finite(loss: Loss) -> bool:
    return all(math.isfinite(x) for x in (loss if isinstance(loss, tuple) else (loss,)))


def _shown(loss: Loss) -> float:
    return loss[0] if isinstance(loss, tuple) else loss


def _non_finite(step: int, loss: Loss, losses: list[Loss], snapshot: _Snapshot, store: ParamStoreDict) -> str:
    """Restore the parameters from before ``step``; raise at the first step, else return the warning's text."""
    restored = snapshot.ready and bool(snapshot.values)
    snapshot.restore(store)
    if step == 1:
        where = ("their current values (restored)" if restored else "their starting point (the guide's initial values; "
                 "nothing was trained)")
        raise ValueError(f"run_svi: the loss of the first step is {loss}: the model and guide give a non-finite loss "
                         f"at {where}. Check the priors and the data (a value outside a distribution's support, a zero "
                         f"scale; pyro.enable_validation(True) names the site) and the guide's initial values (e.g. "
                         f"AutoNormal(model, init_loc_fn=pyro.infer.autoguide.init_to_median, init_scale=0.01)); "
                         f"if they are sound, {_FIX}")
    return (f"the loss of step {step} is {loss} (non-finite): stopped, and the parameters are those before step {step} "
            f"(after step {step - 1}, loss {_shown(losses[-1]):.6g}); losses holds the {step - 1} finite losses. To "
            f"train on, {_FIX}. The optimizer's state (e.g. Adam's moments) took step {step}'s gradients and may hold "
            f"non-finite values: build a new optimizer and SVI before continuing.")


def _train(svi: Any, args: tuple, kwargs: dict, num_steps: int, progress: bool, store: ParamStoreDict,
           losses: list[Loss]) -> str | None:
    """The loop: appends each finite loss to ``losses``; returns a warning's text when it stopped early."""
    from tqdm.auto import trange

    snapshot = _Snapshot()
    batch = max(num_steps // 20, 1)
    step = 0
    with trange(1, num_steps + 1, disable=not progress, desc="SVI", unit="step") as bar:
        try:
            for step in bar:
                snapshot.take(store)  # empty before a first step that creates the guide's parameters
                loss = _as_loss(svi.step(*args, **kwargs))
                if not _is_finite(loss):
                    return _non_finite(step, loss, losses, snapshot, store)
                losses.append(loss)
                if step % batch == 0:
                    avg = sum(_shown(x) for x in losses[step - batch:]) / batch
                    bar.set_postfix_str(f"init loss: {_shown(losses[0]):.4f}, avg. loss [{step - batch + 1}-{step}]: "
                                        f"{avg:.4f}", refresh=False)
        except KeyboardInterrupt:
            if len(losses) < step:  # interrupted inside step `step`: undo whatever part of its update was applied
                snapshot.restore(store)
            return (f"interrupted (KeyboardInterrupt) at step {step}: returning the {len(losses)} steps completed, "
                    f"with the parameters after step {len(losses)}")
    return None


def run_svi(svi: Any, *args: Any, num_steps: int, progress: bool = True, **kwargs: Any) -> SVIRunResult:
    """Run ``svi.step(*args, **kwargs)`` ``num_steps`` times and return the parameters and the losses: NumPyro's
    ``SVI.run`` for Pyro.

    The result matches :meth:`numpyro.infer.SVI.run`'s ``SVIRunResult(params, state, losses)``: ``params`` the
    constrained parameter values, ``state`` the optimizer's state, ``losses`` the loss of every step, shape
    ``(num_steps,)``. The progress bar shows, as NumPyro's does, the first loss and the mean loss of the last
    ``num_steps // 20`` steps.

    Args:
        svi: a :class:`pyro.infer.SVI` (or any object with a ``step(*args, **kwargs)`` method returning the loss).
        *args, **kwargs: passed to every ``svi.step`` call, hence to the model and guide.
        num_steps: the number of steps (keyword-only, since ``*args`` go to the model).
        progress: show a tqdm bar (on stderr); ``False`` prints nothing.

    Returns:
        :class:`SVIRunResult` ``(params, state, losses)``; see its fields.

    A non-finite loss stops the run: Pyro's ``step`` has applied that step's update by the time it returns the loss,
    so the parameter store's values from before the step (copied before each step) are written back in place, a
    ``RuntimeWarning`` names the step, and ``losses`` ends at the last finite loss. A non-finite first loss raises a
    ``ValueError`` (the model and guide fail at their starting point). ``KeyboardInterrupt`` (Ctrl-C) stops the run
    with a warning and returns the steps completed, undoing a step it cut short.

    There is no ``stable_update`` (NumPyro's: skip a non-finite step and go on): here the optimizer has already taken
    that step's gradients into its state (Adam's moments), which a skip would not undo, so the run stops instead.
    Unlike ``numpyro``'s ``run`` there is no ``rng_key`` (Pyro's global seed applies: ``pyro.set_rng_seed``) and no
    ``init_state``: a second call goes on from the parameters and optimizer state the first one left.

    Example:
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
        >>> result = run_svi(svi, data, num_steps=2000)
        >>> result.losses.shape, result.params["AutoNormal.locs.mu"]
        >>> plt.plot(result.losses)
    """
    _check_arguments(svi, num_steps)
    store = pyro.get_param_store()
    losses: list[Loss] = []
    message = _train(svi, args, kwargs, int(num_steps), progress, store, losses)
    if message is not None:
        warnings.warn(f"pyroflows.run_svi: {message}", RuntimeWarning, stacklevel=2)
    with torch.no_grad():
        params = {name: value.detach().clone() for name, value in store.items()}
    get_state = getattr(getattr(svi, "optim", None), "get_state", None)
    state = copy.deepcopy(get_state()) if callable(get_state) else None
    return SVIRunResult(params, state, torch.tensor(losses, dtype=torch.float64))

"""Saving and loading flows without unpickling code, and exporting parameters as NumPy arrays.

A saved flow is one file written with ``torch.save`` holding only plain data: the flow's configuration as a JSON
string and its ``state_dict`` (tensors). :func:`load` reads it back with ``torch.load(weights_only=True)``, checks it
before building anything (:mod:`flowcommon.config`: the configuration's sizes against the stored tensors, then every
tensor's name, shape and dtype kind against the flow the configuration builds), rebuilds the flow and loads the
tensors, so the loaded flow gives identical outputs. :mod:`numpyroflows.io` mirrors this module.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from flowcommon.config import (
    ArraySpec,
    archive_kind,
    check_arrays,
    check_config_size,
    check_format_version,
    decode_config,
    other_package_error,
)

from .flows import core
from .flows.bases import base_from_config
from .flows.core import RECIPES, Flow
from .transforms.base import from_config
from .transforms.transformers import make_transformer, revive_transformers

FORMAT = "pyroflows"
FORMAT_VERSION = 2
#: Version 2: affine transformers use a soft-clamped ``exp`` scale, and MAF, coupling and elementwise
#: layers evaluate their transformer data to noise; a version-1 file's parameters would mean another flow.


def flow_from_config(config: dict) -> Flow:
    """Build a flow (fresh parameters) from :meth:`Flow.config`, with its trainable base if it has one."""
    kind = config.get("type")
    base = base_from_config(config["base"]) if config.get("base") is not None else None
    if kind == "Flow":
        return Flow([from_config(t) for t in config["transforms"]], base=base)
    try:
        cls = RECIPES[kind]
    except KeyError:
        raise ValueError(f"unknown flow type {kind!r} in saved configuration; known: {sorted(RECIPES)}") from None
    flow = cls(**{k: revive_transformers(v) for k, v in config["kwargs"].items()})
    if base is not None:
        core._check_base(base, flow.input_dim)
        flow.base = base
    return flow


def save(flow: Flow, path: str | os.PathLike) -> None:
    """Write ``flow`` (configuration and parameters) to ``path``; read it back with :func:`load`."""
    state = {k: v.detach().cpu() for k, v in flow.state_dict().items()}
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "config": json.dumps(flow.config()), "state": state},
               os.fspath(path))


def load(path: str | os.PathLike, map_location: str | torch.device | None = None) -> Flow:
    """Read a flow written by :func:`save`, checking the file before building anything.

    Never unpickles code (``torch.load(weights_only=True)``). Before the flow is built, its configuration's sizes are
    checked against the stored tensors (a configuration claiming more parameters than the file holds is refused at
    once: nothing is built); before any value is loaded, every tensor's name, shape and dtype kind must be exactly
    the built flow's. ``map_location`` moves the loaded flow (e.g. ``"cuda"``).

    Raises:
        ValueError: not a pyroflows file (a numpyroflows file names :func:`numpyroflows.load`), another format
            version, or a configuration and tensors that do not belong together (naming the parameter, the expected
            and the found shape).
    """
    path = os.fspath(path)
    config, state = _read(path)
    check_config_size(config, _stored_values(state), path, _transformer_params)
    flow = _build(config, path)
    check_arrays(_specs(flow.state_dict()), _specs(state), path)
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    if floats:
        flow.to(floats[0])
    flow.load_state_dict(state)
    if map_location is not None:
        flow.to(map_location)
    return flow


def export_params(flow: Flow) -> dict[str, np.ndarray]:
    """The flow's parameters and persistent buffers as NumPy arrays, keyed by their ``state_dict`` names."""
    return {k: v.detach().cpu().numpy().copy() for k, v in flow.state_dict().items()}


def import_params(flow: Flow, params: dict[str, np.ndarray]) -> Flow:
    """Load arrays produced by :func:`export_params` (or :func:`numpyroflows.export_params`) into ``flow`` (in place;
    returns it). Names and shapes must match exactly; values are cast to each parameter's dtype.

    Raises:
        ValueError: naming the missing, unexpected or wrongly shaped parameters.
    """
    current = flow.state_dict()
    check_arrays({k: (tuple(v.shape), "") for k, v in current.items()},
                 {k: (np.shape(v), "") for k, v in params.items()}, "import_params", kinds=False)
    flow.load_state_dict({k: torch.as_tensor(np.array(v)).to(current[k]) for k, v in params.items()})
    return flow


# ------------------------------------------------------------------------------------------------- load's checks
def _read(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The configuration and tensors of a pyroflows file, checked to be what :func:`save` writes (nothing built)."""
    kind = archive_kind(path)
    if kind == "numpyroflows":
        raise other_package_error(path, kind)
    if kind != "torch":
        raise ValueError(f"{path} is not a pyroflows file (write one with pyroflows.save)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pyroflows file (write one with pyroflows.save)")
    check_format_version(blob.get("version"), FORMAT_VERSION, path)
    config = decode_config(blob.get("config"), path)
    state = blob.get("state")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: its 'state' is not a dict of named tensors (write the file with pyroflows.save)")
    return config, state


def _build(config: dict, path: str) -> Flow:
    """:func:`flow_from_config`, with the file named in the error of a configuration that builds no flow."""
    try:
        return flow_from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its flow configuration does not build a flow: {e}") from e


def _transformer_params(transformer: Any, count_bins: Any, bound: Any) -> int:
    """Raw parameters of a transformer named in a configuration (the size rule of :mod:`flowcommon.config`)."""
    return make_transformer(revive_transformers(transformer), count_bins=count_bins, bound=bound).num_params


def _kind(dtype: torch.dtype) -> str:
    """NumPy's dtype kind character of a torch dtype (``"f"``, ``"i"``, ``"u"``, ``"b"``, ``"c"``)."""
    if dtype == torch.bool:
        return "b"
    if dtype.is_complex:
        return "c"
    if dtype.is_floating_point:
        return "f"
    return "i" if dtype.is_signed else "u"


def _specs(state: dict[str, torch.Tensor]) -> dict[str, ArraySpec]:
    return {k: (tuple(v.shape), _kind(v.dtype)) for k, v in state.items()}


def _stored_values(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Values each tensor brings from the file, counted once per storage: an expanded tensor or views of one
    storage cannot claim more values than the file holds."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        storage = v.untyped_storage()
        ptr = storage.data_ptr()
        out[k] = 0 if ptr in seen else storage.nbytes() // max(v.element_size(), 1)
        if storage.nbytes():
            seen.add(ptr)
    return out

"""Saving and loading flows without unpickling code, and exporting parameters as NumPy arrays.

A saved flow is one file written with ``torch.save`` holding only plain data: the flow's configuration as a JSON
string and its ``state_dict`` (tensors). :func:`load` reads it back with ``torch.load(weights_only=True)``, rebuilds
the flow from the configuration and loads the tensors, so the loaded flow gives identical outputs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from .flows.core import RECIPES, Flow
from .transforms.base import from_config
from .transforms.transformers import make_transformer

FORMAT = "pyroflows"
FORMAT_VERSION = 2
#: Version 2: affine transformers use a soft-clamped ``exp`` scale, and MAF, coupling and elementwise
#: layers evaluate their transformer data to noise; a version-1 file's parameters would mean another flow.


def _check_version(version: Any, path: Any) -> None:
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in file format version {version}, this release reads version {FORMAT_VERSION}: the "
            "affine transformer and the direction of MAF, coupling and elementwise layers changed in version 2, so "
            "its parameters would describe another flow. Refit the flow, or load it with the release that wrote it."
        )


def _revive(value: Any) -> Any:
    if isinstance(value, dict) and "__transformer__" in value:
        return make_transformer(value["__transformer__"])
    if isinstance(value, list):
        return [_revive(v) for v in value]
    return value


def flow_from_config(config: dict) -> Flow:
    """Build a flow (fresh parameters) from :meth:`Flow.config`."""
    kind = config.get("type")
    if kind == "Flow":
        return Flow([from_config(t) for t in config["transforms"]])
    try:
        cls = RECIPES[kind]
    except KeyError:
        raise ValueError(f"unknown flow type {kind!r} in saved configuration; known: {sorted(RECIPES)}") from None
    return cls(**{k: _revive(v) for k, v in config["kwargs"].items()})


def save(flow: Flow, path: str | os.PathLike) -> None:
    """Write ``flow`` (configuration and parameters) to ``path``; read it back with :func:`load`."""
    state = {k: v.detach().cpu() for k, v in flow.state_dict().items()}
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "config": json.dumps(flow.config()), "state": state},
               os.fspath(path))


def load(path: str | os.PathLike, map_location: str | torch.device | None = None) -> Flow:
    """Read a flow written by :func:`save`. Never unpickles code (``torch.load(weights_only=True)``)."""
    blob = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pyroflows file (write one with pyroflows.save)")
    _check_version(blob.get("version"), path)
    flow = flow_from_config(json.loads(blob["config"]))
    state = blob["state"]
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
    """Load arrays produced by :func:`export_params` into ``flow`` (in place; returns it)."""
    current = flow.state_dict()
    missing = sorted(set(current) - set(params))
    unexpected = sorted(set(params) - set(current))
    if missing or unexpected:
        raise ValueError(f"parameter names do not match this flow: missing {missing}, unexpected {unexpected}")
    flow.load_state_dict({k: torch.as_tensor(np.array(v)).to(current[k]) for k, v in params.items()})
    return flow

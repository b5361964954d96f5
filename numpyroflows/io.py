"""Parameters in and out of numpyroflows flows, in the layout shared with pyroflows, and NumPyro registration."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import numpyro

from .flows.core import Flow


def export_params(flow: Flow) -> dict[str, np.ndarray]:
    """The flow's parameters as NumPy arrays, keyed like pyroflows' ``state_dict`` (``pyroflows.import_params`` takes
    them)."""
    return {k: np.asarray(v) for k, v in flow.params.items()}


def import_params(flow: Flow, params: dict[str, np.ndarray]) -> Flow:
    """``flow`` with the given parameters (e.g. from ``pyroflows.export_params``), keeping their dtype; returns a new
    flow (JAX values are immutable), unlike pyroflows' in-place version. Names must match exactly."""
    return flow.with_params({k: jnp.asarray(v) for k, v in params.items()})


def module(name: str, flow: Flow) -> Flow:
    """Register the flow's parameters with NumPyro (``numpyro.param("name$key", value)``) and return the flow with
    the values NumPyro holds: call it inside a model or guide, like ``pyro.module``."""
    return flow.with_params({k: numpyro.param(f"{name}${k}", v) for k, v in flow.params.items()})


FORMAT = "numpyroflows"
FORMAT_VERSION = 2
#: Version 2: affine transformers use a soft-clamped ``exp`` scale, and MAF, coupling and elementwise
#: layers evaluate their transformer data to noise; a version-1 file's parameters would mean another flow.


def flow_from_config(config: dict, key=None) -> Flow:
    """Build a flow (fresh parameters from ``key``) from :meth:`Flow.config`."""
    from .flows.core import RECIPES
    from .transforms.base import from_config
    from .transforms.transformers import make_transformer

    def revive(v):
        if isinstance(v, dict) and "__transformer__" in v:
            return make_transformer(v["__transformer__"])
        if isinstance(v, list):
            return [revive(a) for a in v]
        return v

    kind = config.get("type")
    if kind == "Flow":
        return Flow([from_config(t, key) for t in config["transforms"]])
    try:
        cls = RECIPES[kind]
    except KeyError:
        raise ValueError(f"unknown flow type {kind!r} in saved configuration; known: {sorted(RECIPES)}") from None
    return cls(**{k: revive(v) for k, v in config["kwargs"].items()}, key=key)


def save(flow: Flow, path) -> None:
    """Write ``flow`` (configuration as JSON, parameters as arrays) to an ``.npz`` file; read it with :func:`load`."""
    arrays = {f"param:{k}": np.asarray(v) for k, v in flow.params.items()}
    meta = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "config": flow.config()})
    np.savez(path, __meta__=np.array(meta), **arrays)


def load(path) -> Flow:
    """Read a flow written by :func:`save` (``np.load(allow_pickle=False)``: never unpickles code)."""
    with np.load(path, allow_pickle=False) as blob:
        meta = json.loads(str(blob["__meta__"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a numpyroflows file (write one with numpyroflows.save)")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} was written in file format version {meta.get('version')}, this release reads version "
                f"{FORMAT_VERSION}: the affine transformer and the direction of MAF, coupling and elementwise layers "
                "changed in version 2, so its parameters would describe another flow. Refit the flow, or load it with "
                "the release that wrote it."
            )
        params = {k[len("param:"):]: blob[k] for k in blob.files if k.startswith("param:")}
    return import_params(flow_from_config(meta["config"]), params)

"""Saving and loading flows without unpickling code, and parameters in and out in the layout shared with pyroflows.

A saved flow is one uncompressed ``.npz`` archive: the configuration as JSON (``__meta__``) and one array per
parameter (``param:<name>``). :func:`load` reads it with ``np.load(allow_pickle=False)`` and checks it before building
anything (:mod:`flowcommon.config`): the configuration's sizes against the stored arrays, read from the arrays'
headers alone, then every array's name, shape and dtype kind against the flow the configuration builds, and only then
reads the values, so the loaded flow gives identical outputs. The checks and their messages are pyroflows' (both
packages use :mod:`flowcommon.config`); a file of the other package is recognised and refused with a message naming
the right ``load``. NumPyro registration, :func:`numpyroflows.module`, lives in :mod:`numpyroflows.infer.module`.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowcommon.config import (
    ArraySpec,
    archive_kind,
    check_arrays,
    check_config_size,
    check_format_version,
    decode_config,
    num_values,
    other_package_error,
)

from .flows.bases import base_from_config
from .flows.core import RECIPES, Flow
from .infer.module import module  # noqa: F401  (re-exported: numpyroflows.infer.autoguide imports it from here)
from .transforms.base import from_config
from .transforms.transformers import make_transformer, revive_transformers

FORMAT = "numpyroflows"
FORMAT_VERSION = 2
#: Version 2: affine transformers use a soft-clamped ``exp`` scale, and MAF, coupling and elementwise
#: layers evaluate their transformer data to noise; a version-1 file's parameters would mean another flow.

_PARAM = "param:"
_META = "__meta__"


def flow_from_config(config: dict, key=None) -> Flow:
    """Build a flow (fresh parameters from ``key``) from :meth:`Flow.config`, with its trainable base if it has
    one."""
    kind = config.get("type")
    base = base_from_config(config["base"], key) if config.get("base") is not None else None
    if kind == "Flow":
        return Flow([from_config(t, key) for t in config["transforms"]], base=base)
    try:
        cls = RECIPES[kind]
    except KeyError:
        raise ValueError(f"unknown flow type {kind!r} in saved configuration; known: {sorted(RECIPES)}") from None
    flow = cls(**{k: revive_transformers(v) for k, v in config["kwargs"].items()}, key=key)
    if base is None:
        return flow
    # a recipe's constructor takes no base: the recipe's flow with this one (as Flow(...) checks it)
    Flow(flow.transforms, base=base)
    new = object.__new__(type(flow))
    new.__dict__.update(flow.__dict__)
    new.base = base
    return new


def save(flow: Flow, path: str | os.PathLike) -> None:
    """Write ``flow`` (configuration as JSON, parameters as arrays) to an ``.npz`` file; read it with :func:`load`."""
    arrays = {f"{_PARAM}{k}": np.asarray(v) for k, v in flow.params.items()}
    meta = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "config": flow.config()})
    np.savez(path, **{_META: np.array(meta)}, **arrays)


def load(path: str | os.PathLike) -> Flow:
    """Read a flow written by :func:`save`, checking the file before building anything.

    Never unpickles code (``np.load(allow_pickle=False)``). Before the flow is built, its configuration's sizes are
    checked against the stored arrays (a configuration claiming more parameters than the file holds is refused at
    once: nothing is built); before any value is read, every array's name, shape and dtype kind must be exactly the
    built flow's. A float64 file loaded while JAX's 64-bit mode is off warns (its values become float32).

    Raises:
        ValueError: not a numpyroflows file (a pyroflows file names :func:`pyroflows.load`), another format version,
            or a configuration and arrays that do not belong together (naming the parameter, the expected and the
            found shape).
    """
    path = os.fspath(path)
    config, specs = _read(path)
    check_config_size(config, {k: num_values(shape) for k, (shape, _) in specs.items()}, path, _transformer_params)
    flow = _build(config, path)
    check_arrays(_specs(flow.params), {k: (shape, dtype.kind) for k, (shape, dtype) in specs.items()}, path)
    _warn_if_downcast({k: dtype for k, (_, dtype) in specs.items()}, path)
    with np.load(path, allow_pickle=False) as blob:
        return flow.with_params({k: jnp.asarray(blob[_PARAM + k]) for k in specs})


def export_params(flow: Flow) -> dict[str, np.ndarray]:
    """The flow's parameters as NumPy arrays, keyed like pyroflows' ``state_dict`` (``pyroflows.import_params`` takes
    them)."""
    return {k: np.asarray(v) for k, v in flow.params.items()}


def import_params(flow: Flow, params: Mapping[str, np.ndarray]) -> Flow:
    """``flow`` with the given parameters (e.g. from ``pyroflows.export_params``), keeping their dtype; returns a new
    flow (JAX values are immutable), unlike pyroflows' in-place version. Names and shapes must match exactly (no
    broadcasting); float64 arrays warn while JAX's 64-bit mode is off (they become float32).

    Raises:
        ValueError: naming the missing, unexpected or wrongly shaped parameters.
    """
    check_arrays({k: (tuple(v.shape), "") for k, v in flow.params.items()},
                 {k: (np.shape(v), "") for k, v in params.items()}, "import_params", kinds=False)
    _warn_if_downcast({k: np.asarray(v).dtype for k, v in params.items()}, "import_params")
    return flow.with_params({k: jnp.asarray(v) for k, v in params.items()})


# ------------------------------------------------------------------------------------------------- load's checks
def _read(path: str) -> tuple[dict, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """The configuration of a numpyroflows file and each parameter's shape and dtype, read from the arrays' headers
    and checked to be what :func:`save` writes (no parameter value read, nothing built)."""
    kind = archive_kind(path)
    if kind == "torch":
        raise other_package_error(path, kind)
    if kind != "numpyroflows":
        raise ValueError(f"{path} is not a numpyroflows file (write one with numpyroflows.save)")
    specs = _npz_specs(path)
    meta_shape, meta_dtype = specs.pop(_META)
    if meta_shape != () or meta_dtype.kind != "U":
        raise ValueError(f"{path}: its {_META} entry is not a JSON string (write the file with numpyroflows.save)")
    unknown = sorted(k for k in specs if not k.startswith(_PARAM))
    if unknown:
        raise ValueError(f"{path}: unexpected entries {unknown[:5]} (write the file with numpyroflows.save)")
    with np.load(path, allow_pickle=False) as blob:
        meta = _decode_meta(str(blob[_META]), path)
    check_format_version(meta.get("version"), FORMAT_VERSION, path)
    return decode_config(meta.get("config"), path), {k[len(_PARAM):]: v for k, v in specs.items()}


def _decode_meta(text: str, path: str) -> dict:
    """The ``__meta__`` record of a numpyroflows file: JSON with ``"format": "numpyroflows"``."""
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: its {_META} entry is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a numpyroflows file (write one with numpyroflows.save)")
    return meta


def _build(config: dict, path: str) -> Flow:
    """:func:`flow_from_config`, with the file named in the error of a configuration that builds no flow."""
    try:
        return flow_from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its flow configuration does not build a flow: {e}") from e


def _transformer_params(transformer: Any, count_bins: Any, bound: Any) -> int:
    """Raw parameters of a transformer named in a configuration (the size rule of :mod:`flowcommon.config`)."""
    return make_transformer(revive_transformers(transformer), count_bins=count_bins, bound=bound).num_params


def _specs(params: Mapping[str, Any]) -> dict[str, ArraySpec]:
    return {k: (tuple(v.shape), np.dtype(v.dtype).kind) for k, v in params.items()}


def _npz_specs(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of an ``.npz`` archive, from the ``.npy`` headers alone: NumPy allocates an
    array as its header declares before reading its data, so each header must first agree with the bytes its member
    holds (the archive is uncompressed: :func:`flowcommon.config.archive_kind` checked that)."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            with archive.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise ValueError(f".npy format version {version}")
                except ValueError as e:
                    raise ValueError(f"{path}: entry {name!r} is not a plain .npy array ({e})") from None
                header = f.tell()
            if dtype.hasobject:
                raise ValueError(f"{path}: entry {name!r} holds Python objects (loading never unpickles)")
            if header + num_values(shape) * dtype.itemsize != info.file_size:
                raise ValueError(f"{path}: entry {name!r} declares shape {shape} of {dtype} but holds "
                                 f"{info.file_size - header} bytes of data (a damaged or edited file)")
            out[name] = (tuple(shape), dtype)
    return out


def _warn_if_downcast(dtypes: Mapping[str, np.dtype], where: str) -> None:
    """Warn when float64 values are about to become float32 because JAX's 64-bit mode is off."""
    if jax.config.read("jax_enable_x64"):
        return
    wide = sorted(k for k, d in dtypes.items() if np.dtype(d) == np.float64)
    if wide:
        names = ", ".join(repr(k) for k in wide[:3]) + (", ..." if len(wide) > 3 else "")
        warnings.warn(
            f"{where}: {len(wide)} float64 parameter(s) ({names}) while JAX's 64-bit mode is off: they become float32 "
            "(rounded to about 7 digits) and the flow computes in float32. To keep float64, call "
            'jax.config.update("jax_enable_x64", True) first.', UserWarning, stacklevel=3)

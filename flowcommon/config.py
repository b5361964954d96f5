"""Saved flows checked before anything is built: shared by ``pyroflows.load`` and ``numpyroflows.load``.

A saved flow is a JSON configuration plus named arrays, and the two packages share both (same configuration names,
same parameter names and shapes), so the checks live here once, in the standard library only (never torch or JAX).

Why before building: the configuration is a few bytes of JSON, and building what it describes can take gigabytes
(``input_dim=10**9``, ``hidden_dims=[10**6]``) or minutes (``num_transforms=10**7``). The stored arrays bound what an
honest configuration may claim, since every parameter of a flow is stored. So a load runs, in order:

1. :func:`archive_kind`: which package wrote the file (both write zip archives), from its directory alone, refusing
   compressed or overlapping members (a small file that would expand to a large one);
2. :func:`decode_config`: the JSON has the structure of a flow configuration;
3. :func:`check_config_size`: the configuration's *smallest* parameter count, computed from its sizes alone
   (:func:`min_param_count`: the weights of every dense layer and the values of every parameter head, multiplied
   out, no arrays), must not exceed the values the file holds (with a small slack, :data:`SIZE_SLACK`);
4. only then the flow is built (now at most a few times the file's size) and :func:`check_arrays` compares every
   stored array's name, shape and kind of dtype with the built flow's before a single value is loaded.

Why a lower bound of the count rather than exact shapes or an abstract build: a count needs only each layer's sizes
(a MADE over ``D`` inputs with hidden widths ``h`` holds at least ``D h_1 + h_1 h_2 + h_2 D P`` weights), not the
parameter names and layouts, which stay with the code that builds flows, and the exact comparison is then made
against what that code builds. Building on torch's ``meta`` device or under ``jax.eval_shape`` skips only the
parameters' memory: constructors also do work that is not parameters (MADE masks and permutations in NumPy, a Python
loop per layer and per permutation entry), which neither avoids. The bound is close to the true count (biases are
left out: the catalogue's flows hold 1.1 to 1.7 times their bound), so a configuration that passes builds a small
multiple of what the file holds at most.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: ``(shape, kind)`` of one array: its shape and NumPy's dtype kind character (``"f"`` float, ``"i"`` signed
#: integer, ``"u"`` unsigned, ``"b"`` bool, ``"c"`` complex).
ArraySpec = tuple[tuple[int, ...], str]

#: ``num_params(transformer, count_bins, bound)``: the raw parameter count of a transformer given as a configuration
#: value (a name or ``{"__transformer__": spec}``); each package passes its own ``make_transformer``'s answer.
NumParams = Callable[[Any, Any, Any], int]

_KIND_NAMES = {"f": "floating-point", "i": "integer", "u": "unsigned integer", "b": "boolean", "c": "complex"}
#: configuration keys that size a flow, shown in error messages
_SIZE_KEYS = ("input_dim", "context_dim", "num_transforms", "hidden_dims", "transformer", "count_bins",
              "hidden_factor", "num_layers", "count", "num_ortho", "num_householder")


# ------------------------------------------------------------------------------------------------- which file
def archive_kind(path: str) -> str | None:
    """What wrote ``path``, from its zip directory alone: ``"numpyroflows"`` (``np.savez`` with a ``__meta__``
    member), ``"torch"`` (``torch.save``: a ``data.pkl`` member), ``"zip"`` (another archive), or ``None`` if it is
    not a zip archive.

    Both packages write uncompressed archives; a compressed member, or members that together claim more bytes than
    the file has (overlapping entries), could make a small file expand while it is read, so either is refused.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a compressed or overlapping archive.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return None
    with archive:
        infos = archive.infolist()
    size = os.path.getsize(path)
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{path}: member {info.filename!r} is compressed; pyroflows.save and numpyroflows.save "
                             "write uncompressed archives, so this file was written some other way")
        if info.header_offset + info.compress_size > size:
            raise ValueError(f"{path}: member {info.filename!r} extends past the end of the file (a damaged file)")
    if sum(info.compress_size for info in infos) > size:
        raise ValueError(f"{path}: its members claim more bytes than the file has (overlapping entries); "
                         "not a file written by pyroflows.save or numpyroflows.save")
    names = [info.filename for info in infos]
    if "__meta__.npy" in names:
        return "numpyroflows"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    return "zip"


def other_package_error(path: str, written_by: str) -> ValueError:
    """The error for a file of the other package: which ``load`` reads it, and how parameters move across.

    ``written_by`` is ``"numpyroflows"`` (met by ``pyroflows.load``) or ``"torch"`` (met by ``numpyroflows.load``).
    """
    if written_by == "numpyroflows":
        return ValueError(
            f"{path} is a numpyroflows file (written by numpyroflows.save), not a pyroflows file: read it with "
            "numpyroflows.load. To use its parameters in pyroflows, build the same flow in pyroflows and call "
            "pyroflows.import_params(flow, numpyroflows.export_params(numpyroflows.load(path))): both packages use "
            "the same parameter names and shapes.")
    return ValueError(
        f"{path} is a PyTorch file (written by torch.save, as pyroflows.save does), not a numpyroflows file: read it "
        "with pyroflows.load. To use its parameters in numpyroflows, build the same flow in numpyroflows and call "
        "numpyroflows.import_params(flow, pyroflows.export_params(pyroflows.load(path))): both packages use the same "
        "parameter names and shapes.")


# ------------------------------------------------------------------------------------------------- configuration
def check_format_version(version: Any, expected: int, path: str) -> None:
    """Refuse a file written in another format version than ``expected`` (both packages are at version 2).

    Version 2: affine transformers use a soft-clamped ``exp`` scale, and MAF, coupling and elementwise layers
    evaluate their transformer data to noise, so a version-1 file's parameters would describe another flow.
    """
    if version != expected:
        raise ValueError(
            f"{path} was written in file format version {version}, this release reads version {expected}: the "
            "affine transformer and the direction of MAF, coupling and elementwise layers changed in version 2, so "
            "its parameters would describe another flow. Refit the flow, or load it with the release that wrote it."
        )


#: transforms whose configuration holds another transform's under ``kwargs["transform"]`` (``Invert``)
WRAPPERS = ("Invert",)
#: how deep wrapped transforms may nest in a saved configuration (``Invert(Invert(...))``)
MAX_NESTING = 32


def decode_config(text: Any, path: str) -> dict:
    """The flow configuration stored in ``path``: ``text`` (JSON, or the decoded object) checked to have the
    structure :meth:`Flow.config` writes, ``{"type": recipe, "kwargs": {...}}`` or
    ``{"type": "Flow", "transforms": [{"type": transform, "kwargs": {...}}, ...]}``, either with an optional
    ``"base": {"type": base, "kwargs": {...}}`` (a trainable base distribution). A wrapper transform
    (:data:`WRAPPERS`: ``{"type": "Invert", "kwargs": {"transform": {...}}}``) holds the configuration of the
    transform it wraps, checked the same way, at most :data:`MAX_NESTING` deep.

    Raises:
        ValueError: not JSON, or not that structure (the message says what is wrong).
    """
    try:
        config = json.loads(text) if isinstance(text, (str, bytes)) else text
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: its flow configuration is not valid JSON ({e})") from None

    def layer(value: Any, where: str, depth: int = 0) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            raise ValueError(f"{path}: {where} of its flow configuration is not a dict with a 'type' name")
        kwargs = value.get("kwargs")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError(f"{path}: {where} of its flow configuration ({value['type']}) has no 'kwargs' dict")
        if value["type"] in WRAPPERS:
            if depth >= MAX_NESTING:
                raise ValueError(f"{path}: its flow configuration nests wrapped transforms ({value['type']}) more "
                                 f"than {MAX_NESTING} deep")
            layer(kwargs.get("transform"), f"the transform wrapped by {where}" if depth == 0 else where, depth + 1)

    if isinstance(config, dict) and "base" in config:
        layer(config["base"], "the base")
    if isinstance(config, dict) and config.get("type") == "Flow":
        transforms = config.get("transforms")
        if not isinstance(transforms, list) or not transforms:
            raise ValueError(f"{path}: its flow configuration (type 'Flow') has no list of transforms")
        for i, t in enumerate(transforms):
            layer(t, f"transform {i}")
    else:
        layer(config, "the top level")
    return config


def _describe(kind: str, kwargs: Mapping[str, Any]) -> str:
    """``"MAF(input_dim=3, hidden_dims=[64, 64], ...)"``: the sizes of a configuration entry, for messages."""
    inner = kwargs.get("transform")
    if kind in WRAPPERS and isinstance(inner, dict) and isinstance(inner.get("kwargs"), dict):
        return f"{kind}({_describe(str(inner.get('type')), inner['kwargs'])})"
    parts = []
    for k in _SIZE_KEYS:
        if k in kwargs:
            text = json.dumps(kwargs[k])
            parts.append(f"{k}={text if len(text) <= 40 else text[:37] + '...'}")
    return f"{kind}({', '.join(parts)})"


class _Sizes:
    """A configuration entry's keyword arguments read as sizes, the way the constructors read them (``int(v)``).

    An argument missing from the configuration counts as its smallest legal value, so that the count stays a lower
    bound whatever default the constructor fills in.
    """

    def __init__(self, kind: str, kwargs: Mapping[str, Any], num_params: NumParams, path: str) -> None:
        self.kind, self.kwargs, self.num_params, self.path = kind, kwargs, num_params, path

    def _error(self, name: str, value: Any) -> ValueError:
        return ValueError(f"{self.path}: {name}={value!r} in its flow configuration ({self.kind}) is not an integer")

    def int(self, name: str, smallest: int = 0) -> int:
        value = self.kwargs.get(name)
        if value is None:
            return smallest
        try:
            return max(int(value), 0)
        except (TypeError, ValueError, OverflowError):
            raise self._error(name, value) from None

    def ints(self, name: str) -> tuple[int, ...]:
        """A list of sizes (``hidden_dims``); missing: one hidden unit (the smallest network)."""
        value = self.kwargs.get(name)
        if value is None:
            return (1,)
        try:
            return tuple(max(int(v), 0) for v in value)
        except (TypeError, ValueError, OverflowError):
            raise self._error(name, value) from None

    def transformer(self, default: str) -> int:
        """Raw parameters per dimension of the entry's transformer (``default`` when none is named)."""
        value = self.kwargs.get("transformer", default)
        try:
            return max(int(self.num_params(value, self.kwargs.get("count_bins"), self.kwargs.get("bound"))), 1)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{self.path}: transformer {value!r} in its flow configuration ({self.kind}) is not "
                             f"valid: {e}") from None


def _dense(widths: Sequence[int], context_dim: int = 0) -> int:
    """Weights of a dense network through ``widths`` (biases left out), plus the context's weights into its first
    layer: a lower bound of an MLP's or a MADE's parameter count (a MADE stores its masked weights in full)."""
    n = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return n + context_dim * widths[1] if len(widths) > 1 else n


def _head(s: _Sizes, n: int) -> int:
    """A parameter head of ``n`` values: free values, or with a context an MLP producing them from the context."""
    context = s.int("context_dim")
    return n if context == 0 else _dense((0, *s.ints("hidden_dims"), n), context)


def _autoregressive(s: _Sizes, transformer: str = "affine") -> int:
    d = s.int("input_dim", 1)
    return _dense((d, *s.ints("hidden_dims"), d * s.transformer(transformer)), s.int("context_dim"))


def _coupling_sides(s: _Sizes, parity: int) -> tuple[int, int]:
    """Sizes ``(|A|, |B|)`` of the conditioning and transformed sets (``coupling_mask``'s rule)."""
    d = s.int("input_dim", 2)
    mask = s.kwargs.get("mask", "half")
    if isinstance(mask, str):
        a = (d + 1) // 2 if mask in ("half", "alternating", "random") else 1
    elif isinstance(mask, list):
        a = sum(1 for v in mask if v)
    else:
        a = 1
    a = min(max(a, 1), max(d - 1, 1))
    return (d - a, a) if parity % 2 else (a, d - a)


def _coupling(s: _Sizes, transformer: str = "affine", parity: int | None = None) -> int:
    a, b = _coupling_sides(s, s.int("parity") if parity is None else parity)
    return _dense((a, *s.ints("hidden_dims"), b * s.transformer(transformer)), s.int("context_dim"))


def _elementwise(s: _Sizes, transformer: str = "spline") -> int:
    return _head(s, s.int("input_dim", 1) * s.transformer(transformer))


def _bnaf(s: _Sizes) -> int:
    d, factor, layers = s.int("input_dim", 1), s.int("hidden_factor", 1), s.int("num_layers", 1)
    blocks = (1, *([factor] * layers), 1)
    return d * d * sum(a * b for a, b in zip(blocks[:-1], blocks[1:])) + s.int("context_dim") * d * factor


def _sylvester(s: _Sizes) -> int:
    d = s.int("input_dim", 1)
    m = d if s.kwargs.get("num_ortho") is None else s.int("num_ortho", 1)
    k = d if s.kwargs.get("num_householder") is None else s.int("num_householder", 1)
    q = d * m if s.kwargs.get("q_type") == "orthogonal" else k * d
    return _head(s, q + m * m + 2 * m)


def _dim(s: _Sizes) -> int:
    return s.int("input_dim", 1)


#: transform name -> the smallest number of values its configuration stores (names as in both packages)
LAYER_SIZES: dict[str, Callable[[_Sizes], int]] = {
    "AutoregressiveTransform": _autoregressive,
    "MaskedAutoregressiveTransform": _autoregressive,
    "InverseAutoregressiveTransform": _autoregressive,
    "CouplingTransform": _coupling,
    "ElementwiseTransform": _elementwise,
    "BlockNAFTransform": _bnaf,
    "PlanarTransform": lambda s: _head(s, 2 * _dim(s) + 1),
    "RadialTransform": lambda s: _head(s, _dim(s) + 2),
    "SylvesterTransform": _sylvester,
    "DiagonalAffine": lambda s: _head(s, 2 * _dim(s)),
    "LULinear": lambda s: _head(s, _dim(s) ** 2 + 2 * _dim(s)) + 2 * _dim(s),
    "LowerCholeskyAffine": lambda s: _dim(s) ** 2 + _dim(s),
    "Householder": lambda s: _head(s, s.int("count", 1) * _dim(s)),
    "ActNorm": lambda s: _head(s, 2 * _dim(s)) + 1,
    "LeakyReLU": lambda s: _head(s, _dim(s)),
    "Permutation": lambda s: 2 * _dim(s),
    "ReversePermutation": lambda s: 2 * _dim(s),
    "RandomPermutation": lambda s: 2 * _dim(s),
    "Sigmoid": lambda s: 0,
    "Tanh": lambda s: 0,
    "Invert": lambda s: _wrapped(s),
}

#: trainable base distribution name -> the smallest number of values its configuration stores
BASE_SIZES: dict[str, Callable[[_Sizes], int]] = {
    "DiagonalNormal": lambda s: 2 * _dim(s),
}


def _wrapped(s: _Sizes) -> int:
    """The count of the transform a wrapper (``Invert``) holds: that transform's own rule (:func:`decode_config`
    checked its structure and nesting)."""
    inner = s.kwargs.get("transform")
    if not isinstance(inner, dict) or not isinstance(inner.get("kwargs"), dict):
        raise ValueError(f"{s.path}: {s.kind} in its flow configuration holds no transform configuration")
    return min_param_count(str(inner.get("type")), inner["kwargs"], s.num_params, s.path)


#: recipe name -> the smallest number of values one of its ``num_transforms`` layers stores (layer ``i``'s parity
#: passed for the coupling recipes, whose masks alternate); extra layers (NICE's final scaling, BNAF's
#: permutations) are left out of the bound
RECIPE_SIZES: dict[str, Callable[[_Sizes, int], int]] = {
    "MAF": lambda s, i: _autoregressive(s),
    "IAF": lambda s, i: _autoregressive(s),
    "NSF": lambda s, i: _autoregressive(s),
    "Coupling": lambda s, i: _coupling(s, parity=i),
    "RealNVP": lambda s, i: _coupling(s, parity=i),
    "NICE": lambda s, i: _coupling(s, parity=i),
    "Elementwise": lambda s, i: _elementwise(s),
    "BNAF": lambda s, i: _bnaf(s),
    "Planar": lambda s, i: _head(s, 2 * _dim(s) + 1),
    "Radial": lambda s, i: _head(s, _dim(s) + 2),
    "Sylvester": lambda s, i: _sylvester(s),
}
#: the transformer a recipe fixes (its configuration names none)
_RECIPE_TRANSFORMERS = {"NSF": "spline", "RealNVP": "affine", "NICE": "additive"}


def min_param_count(kind: str, kwargs: Mapping[str, Any], num_params: NumParams, path: str = "<config>") -> int:
    """The smallest number of stored values a recipe or transform configured by ``kwargs`` has (0 for a type this
    table does not know, e.g. a user's own transform), without building anything."""
    if kind in _RECIPE_TRANSFORMERS:
        kwargs = {**kwargs, "transformer": _RECIPE_TRANSFORMERS[kind]}
    s = _Sizes(kind, kwargs, num_params, path)
    if kind in RECIPE_SIZES:
        n = s.int("num_transforms", 1)
        per_layer = RECIPE_SIZES[kind]
        return per_layer(s, 0) * ((n + 1) // 2) + per_layer(s, 1) * (n // 2)
    rule = LAYER_SIZES.get(kind)
    return rule(s) if rule is not None else 0


def min_base_count(config: Mapping[str, Any], num_params: NumParams, path: str = "<config>") -> int:
    """The smallest number of stored values of a flow configuration's trainable base (``config["base"]``; 0 without
    one, or for a base type :data:`BASE_SIZES` does not know, e.g. a user's own)."""
    base = config.get("base")
    if not isinstance(base, dict):
        return 0
    rule = BASE_SIZES.get(base.get("type"))
    return rule(_Sizes(str(base["type"]), base.get("kwargs", {}), num_params, path)) if rule is not None else 0


#: How much a configuration may need beyond what its file holds and still be built: up to ``SIZE_SLACK`` times the
#: stored values, or ``SMALL_FLOW`` values whatever the file holds. A file whose arrays differ a little from its
#: configuration (a parameter of another shape) is then built and refused by :func:`check_arrays`, whose message
#: names the parameter; a configuration claiming more is refused unbuilt, so a load never builds more than this.
SIZE_SLACK = 4
SMALL_FLOW = 2**16


def check_config_size(config: dict, stored: Mapping[str, int], path: str, num_params: NumParams) -> None:
    """Refuse, before anything is built, a configuration that needs far more parameter values than the file holds
    (more than :data:`SIZE_SLACK` times as many, and more than :data:`SMALL_FLOW`).

    Args:
        config: from :func:`decode_config`.
        stored: number of values each stored array brings, by parameter name (``"transforms.0.made.flat"``), counted
            from what the file actually holds (a view or a broadcast array does not count its repeats).
        path: the file, for messages.
        num_params: the package's transformer size (see :data:`NumParams`).

    Raises:
        ValueError: naming the configuration's sizes, the count they need and what the file holds (for a stack of
            transforms, the layer whose configuration is furthest from its stored values).
    """
    have = sum(stored.values())
    base = min_base_count(config, num_params, path)
    if base > max(SIZE_SLACK * have, SMALL_FLOW):
        raise _size_error(path, f"the base, {_describe(config['base']['type'], config['base']['kwargs'])}", base,
                          sum(n for k, n in stored.items() if k.startswith("base.")), " under 'base.'")
    if config["type"] != "Flow":
        need = min_param_count(config["type"], config["kwargs"], num_params, path) + base
        if need > max(SIZE_SLACK * have, SMALL_FLOW):
            raise _size_error(path, _describe(config["type"], config["kwargs"]), need, have, "")
        return
    per_layer: dict[str, int] = {}
    for name, n in stored.items():
        head, _, rest = name.partition(".")
        if head == "transforms":
            index = rest.partition(".")[0]
            per_layer[index] = per_layer.get(index, 0) + n
    needs = [min_param_count(t["type"], t["kwargs"], num_params, path) for t in config["transforms"]]
    if sum(needs) + base > max(SIZE_SLACK * have, SMALL_FLOW):
        i = max(range(len(needs)), key=lambda j: needs[j] - per_layer.get(str(j), 0))
        t = config["transforms"][i]
        raise _size_error(path, f"transform {i}, {_describe(t['type'], t['kwargs'])}", needs[i],
                          per_layer.get(str(i), 0), f" under 'transforms.{i}.'")


def _size_error(path: str, what: str, need: int, have: int, where: str) -> ValueError:
    return ValueError(
        f"{path}: its flow configuration ({what}) needs at least {need:,} parameter values, but the file holds "
        f"{have:,}{where}. The configuration does not describe the stored parameters (a damaged or edited file); "
        "nothing was built.")


# ------------------------------------------------------------------------------------------------- arrays
def check_arrays(expected: Mapping[str, ArraySpec], found: Mapping[str, ArraySpec], path: str, *,
                 kinds: bool = True) -> None:
    """Refuse stored arrays that are not exactly the flow's: the same names, the same shapes (no broadcasting) and,
    with ``kinds``, the same kind of dtype (floating-point, integer, ...; the precision may differ).

    ``expected`` comes from the flow the configuration builds, ``found`` from the file (or the arrays handed to
    ``import_params``; that crosses the packages, whose integer buffers differ in kind, so it passes
    ``kinds=False``).

    Raises:
        ValueError: naming each parameter that differs, with the expected and the found shape or kind.
    """
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: parameter names do not match the flow's: missing {_some(missing)}, unexpected "
                         f"{_some(unexpected)}")
    problems = []
    for name, (shape, kind) in expected.items():
        got_shape, got_kind = found[name]
        if tuple(got_shape) != tuple(shape):
            problems.append(f"{name!r} should have shape {tuple(shape)}, found shape {tuple(got_shape)}")
        elif kinds and got_kind != kind:
            problems.append(f"{name!r} should hold {_KIND_NAMES.get(kind, kind)} values, found "
                            f"{_KIND_NAMES.get(got_kind, repr(got_kind))} values")
    if problems:
        raise ValueError(f"{path}: parameter {_some(problems, quote=False)} (the arrays do not belong to this flow; "
                         "nothing was loaded)")


def _some(items: Sequence[str], quote: bool = True, limit: int = 5) -> str:
    shown = [repr(i) if quote else i for i in items[:limit]]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ("[" + ", ".join(shown) + "]" if quote else "; ".join(shown)) + more


def num_values(shape: Sequence[int]) -> int:
    """Number of values of an array of ``shape``."""
    return math.prod(int(n) for n in shape)

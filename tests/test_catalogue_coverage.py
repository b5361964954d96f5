"""The catalogue (tests/catalogue.py) covers both packages: every registered transform class
(``transforms.TRANSFORMS``), transformer (``transforms.TRANSFORMERS``), recipe (``flows.core.RECIPES``) and guide flow
(``infer.FLOWS``) of pyroflows and of numpyroflows appears in some catalogue flow.

What an entry exercises is read off the flows it builds (the class of every transform in them, each transform's
transformer, the recipe, and the guide flows whose recipe and fixed arguments the flow's recorded configuration
matches), never from names typed into the catalogue; the tests that plant an unregistered-in-the-catalogue name, or
remove an entry, check that a gap is really reported."""

from __future__ import annotations

import functools

import pytest
from catalogue import CATALOGUE, jax_backend, torch_backend

#: registered classes that no flow can contain, per package: numpyroflows' private base class of its linear transforms
#: (registered in TRANSFORMS by ``FlowTransform.__init_subclass__``, as every subclass is; never instantiated itself).
EXEMPT = {"torch": set(), "jax": {"_LinearBase"}}
BACKENDS = ["torch", "jax"]


def _backend(name: str):
    if name == "torch":
        pytest.importorskip("torch", reason="pyroflows needs torch")
        return torch_backend()
    pytest.importorskip("jax", reason="numpyroflows needs JAX")
    return jax_backend()


def registries(backend) -> dict[str, set[str]]:
    """What the package registers, read at call time (so that a name planted by a test is seen)."""
    pkg = backend.pkg
    return {"transforms": set(pkg.transforms.TRANSFORMS), "transformers": set(pkg.transforms.TRANSFORMERS),
            "recipes": set(pkg.flows.core.RECIPES), "guide flows": set(pkg.infer.FLOWS)}


def _transforms(backend, flow) -> list:
    """Every transform in a built flow (pyroflows: every FlowTransform module, nested ones included)."""
    if backend.name == "torch":
        return [m for m in flow.modules() if isinstance(m, backend.T.FlowTransform)]
    return list(flow.transforms)


@functools.cache
def exercised_by(backend_name: str, entry_name: str) -> dict[str, frozenset[str]]:
    """The registered names an entry's flow exercises in one package (its 3-D build, with a context if it takes one)."""
    backend = _backend(backend_name)
    entry = CATALOGUE[entry_name]
    flow = backend.build(entry, 3, 2 if entry.takes_context else 0)
    parts = _transforms(backend, flow)
    kwargs = flow.config().get("kwargs", {})
    guide_flows = {g for g, (recipe, fixed) in backend.pkg.infer.FLOWS.items()
                   if type(flow) is recipe and all(kwargs.get(k) == v for k, v in fixed.items())}
    return {"transforms": frozenset(type(t).__name__ for t in parts),
            "transformers": frozenset(t.transformer.name for t in parts if hasattr(t, "transformer")),
            "recipes": frozenset({type(flow).__name__}), "guide flows": frozenset(guide_flows)}


def coverage_gaps(backend_name: str, entries=tuple(CATALOGUE)) -> dict[str, list[str]]:
    """Registered names that none of ``entries`` exercises, by kind (kinds without a gap left out)."""
    backend = _backend(backend_name)
    gaps = {}
    for kind, registered in registries(backend).items():
        found = set().union(*(exercised_by(backend_name, e)[kind] for e in entries))
        exempt = EXEMPT[backend_name] if kind == "transforms" else set()
        missing = sorted(registered - found - exempt)
        if missing:
            gaps[kind] = missing
    return gaps


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_catalogue_exercises_everything_registered(backend_name):
    gaps = coverage_gaps(backend_name)
    assert not gaps, f"registered in {_backend(backend_name).pkg.__name__} but in no catalogue flow: {gaps}"


@pytest.mark.parametrize("backend_name", [b for b in BACKENDS if EXEMPT[b]])
def test_exemptions_are_registered_and_never_built(backend_name):
    """An exemption for a name that is no longer registered, or that a catalogue flow builds after all, is stale."""
    registered = registries(_backend(backend_name))["transforms"]
    built = set().union(*(exercised_by(backend_name, e)["transforms"] for e in CATALOGUE))
    assert EXEMPT[backend_name] <= registered
    assert not EXEMPT[backend_name] & built


# ------------------------------------------------------------------------------------------------- planted gaps
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_planted_registrations_are_reported(backend_name, monkeypatch):
    pkg = _backend(backend_name).pkg
    # (not a FlowTransform subclass: defining one would register it for good)
    monkeypatch.setitem(pkg.transforms.TRANSFORMS, "PlantedTransform", type("PlantedTransform", (), {}))
    monkeypatch.setitem(pkg.transforms.TRANSFORMERS, "planted", object)
    monkeypatch.setitem(pkg.flows.core.RECIPES, "PlantedRecipe", pkg.flows.Flow)
    # a guide flow no entry builds: a registered recipe with a fixed argument no entry gives it
    monkeypatch.setitem(pkg.infer.FLOWS, "planted_maf", (pkg.flows.MAF, {"transformer": "planted"}))
    assert coverage_gaps(backend_name) == {"transforms": ["PlantedTransform"], "transformers": ["planted"],
                                           "recipes": ["PlantedRecipe"], "guide flows": ["planted_maf"]}


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("removed,gaps", [
    ("Autoregressive-classes", {"transforms": ["InverseAutoregressiveTransform", "MaskedAutoregressiveTransform"]}),
    ("Sigmoid-Tanh", {"transforms": ["Sigmoid", "Tanh"]}),
    ("BNAF-iaf-normal", {"guide flows": ["bnaf"]}),
    ("IAF-spline", {"guide flows": ["spline_iaf"]}),
    ("Radial", {"transforms": ["RadialTransform"], "recipes": ["Radial"], "guide flows": ["radial"]}),
])
def test_a_removed_entry_is_reported(backend_name, removed, gaps):
    assert coverage_gaps(backend_name, tuple(n for n in CATALOGUE if n != removed)) == gaps

"""``pyroflows.load`` checks a file before it builds anything (issue 18, sections 3 and 4).

Each test writes a file the way ``pyroflows.save`` does, with one thing changed (a configuration claiming huge
sizes, a tensor of another shape or dtype kind, a view claiming more values than it stores), or a numpyroflows file,
and checks the error. ``tests/test_numpyroflows/test_io.py`` is the mirror for ``numpyroflows.load``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

import pyroflows
import pyroflows.io
from pyroflows import flows, transforms

#: the configurations of a crafted file: a 2-layer MAF's, with one size blown up (each would take gigabytes or
#: minutes to build)
HUGE = {
    "input_dim": {"input_dim": 10**9},
    "hidden_dims": {"hidden_dims": [10**6, 10**6]},
    "num_transforms": {"num_transforms": 10**7},
    "count_bins": {"transformer": "spline", "count_bins": 10**8},
}


def _write(path, config: dict, state: dict) -> None:
    """A file laid out as ``pyroflows.save`` writes it, with any configuration and tensors."""
    torch.save({"format": "pyroflows", "version": pyroflows.io.FORMAT_VERSION, "config": json.dumps(config),
                "state": state}, path)


def _saved(flow) -> tuple[dict, dict]:
    return flow.config(), {k: v.detach().clone() for k, v in flow.state_dict().items()}


@pytest.fixture
def never_builds(monkeypatch):
    """Fail the test if load gets as far as building the flow."""
    def build(config):
        raise AssertionError(f"load built a flow from {config}")

    monkeypatch.setattr(pyroflows.io, "flow_from_config", build)


@pytest.mark.parametrize("change", list(HUGE))
def test_crafted_sizes_fail_fast_without_building(change, tmp_path, never_builds):
    config, state = _saved(flows.MAF(3, num_transforms=2, hidden_dims=(8, 8)))
    config["kwargs"].update(HUGE[change])
    path = tmp_path / "crafted.pt"
    _write(path, config, state)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"needs at least [\d,]+ parameter values, but the file holds 316\b"):
        pyroflows.load(path)
    assert time.perf_counter() - start < 1.0


def test_crafted_layer_of_a_stack_is_named(tmp_path, never_builds):
    config, state = _saved(flows.Flow([transforms.DiagonalAffine(3), transforms.ReversePermutation(3)]))
    config["transforms"][0]["kwargs"]["input_dim"] = 10**9
    _write(tmp_path / "crafted.pt", config, state)
    with pytest.raises(ValueError, match=r"transform 0, DiagonalAffine\(input_dim=1000000000.*under 'transforms\.0\.'"):
        pyroflows.load(tmp_path / "crafted.pt")


def test_expanded_tensors_count_what_the_file_stores(tmp_path, never_builds):
    """Tensors of the configured shapes that are views of one stored value (``expand``) do not pass for 10**8
    values each."""
    d = 10**8
    config, _ = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    config["transforms"][0]["kwargs"]["input_dim"] = d
    one = torch.zeros(1)
    _write(tmp_path / "views.pt", config, {"transforms.0.head.shift": one.expand(d),
                                           "transforms.0.head.raw_scale": one.expand(d)})
    assert (tmp_path / "views.pt").stat().st_size < 10_000
    with pytest.raises(ValueError, match=r"needs at least 200,000,000 parameter values, but the file holds 1 "):
        pyroflows.load(tmp_path / "views.pt")


def test_wrong_shape_is_refused_naming_the_parameter(tmp_path):
    config, state = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    state["transforms.0.head.raw_scale"] = torch.zeros(1)  # broadcastable, and wrong
    _write(tmp_path / "shape.pt", config, state)
    with pytest.raises(ValueError, match=r"'transforms\.0\.head\.raw_scale' should have shape \(3,\), found shape "
                                         r"\(1,\)"):
        pyroflows.load(tmp_path / "shape.pt")


def test_wrong_dtype_kind_is_refused_naming_the_parameter(tmp_path):
    config, state = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    state["transforms.0.head.raw_scale"] = torch.zeros(3, dtype=torch.long)
    _write(tmp_path / "kind.pt", config, state)
    with pytest.raises(ValueError, match=r"'transforms\.0\.head\.raw_scale' should hold floating-point values, "
                                         "found integer values"):
        pyroflows.load(tmp_path / "kind.pt")


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    config, state = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    state["transforms.0.head.scale"] = state.pop("transforms.0.head.raw_scale")
    _write(tmp_path / "names.pt", config, state)
    with pytest.raises(ValueError, match=r"missing \['transforms\.0\.head\.raw_scale'\], unexpected "
                                         r"\['transforms\.0\.head\.scale'\]"):
        pyroflows.load(tmp_path / "names.pt")


def test_a_numpyroflows_file_names_numpyroflows_load(tmp_path):
    import jax

    import numpyroflows

    numpyroflows.save(numpyroflows.flows.MAF(3, num_transforms=1, hidden_dims=(8,), key=jax.random.PRNGKey(0)),
                      tmp_path / "flow.npz")
    with pytest.raises(ValueError, match=r"numpyroflows file .* read it with numpyroflows\.load.*"
                                         r"pyroflows\.import_params\(flow, numpyroflows\.export_params"):
        pyroflows.load(tmp_path / "flow.npz")


@pytest.mark.parametrize("config", ["{not json", json.dumps([1, 2]), json.dumps({"type": "MAF"}),
                                    json.dumps({"type": "Flow", "transforms": []})])
def test_a_malformed_configuration_is_refused(config, tmp_path):
    _, state = _saved(flows.MAF(3, num_transforms=1, hidden_dims=(8,)))
    torch.save({"format": "pyroflows", "version": pyroflows.io.FORMAT_VERSION, "config": config, "state": state},
               tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="configuration"):
        pyroflows.load(tmp_path / "bad.pt")


def test_a_file_of_another_kind_is_refused(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a pyroflows file"):
        pyroflows.load(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pyroflows file"):
        pyroflows.load(tmp_path / "other.pt")


def test_round_trip_still_exact(tmp_path):
    """The checks let an honest file through: a context-conditioned NSF comes back identical."""
    flow = flows.NSF(3, 2, num_transforms=2, hidden_dims=(8, 8), count_bins=4).double()
    pyroflows.save(flow, tmp_path / "nsf.pt")
    back = pyroflows.load(tmp_path / "nsf.pt")
    x, ctx = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(back(ctx).log_prob(x), flow(ctx).log_prob(x), atol=0, rtol=0)


def test_import_params_refuses_a_wrong_shape():
    flow = flows.Flow([transforms.DiagonalAffine(3)])
    params = pyroflows.export_params(flow)
    params["transforms.0.head.raw_scale"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"import_params: parameter 'transforms\.0\.head\.raw_scale' should have "
                                         r"shape \(3,\), found shape \(1,\)"):
        pyroflows.import_params(flow, params)

"""``numpyroflows.load`` checks a file before it builds anything (issue 18, sections 3 and 4); the mirror of
``tests/test_pyroflows/test_io.py``, plus what only JAX has: float64 files while 64-bit mode is off, and
``numpyroflows.module`` in its own module.

Each test writes a file the way ``numpyroflows.save`` does, with one thing changed (a configuration claiming huge
sizes, an array of another shape or dtype kind, a header claiming more values than it stores), or a pyroflows file,
and checks the error.
"""

from __future__ import annotations

import io
import json
import time
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyroflows
import numpyroflows.io
from numpyroflows import flows, transforms

#: the configurations of a crafted file: a 2-layer MAF's, with one size blown up (each would take gigabytes or
#: minutes to build)
HUGE = {
    "input_dim": {"input_dim": 10**9},
    "hidden_dims": {"hidden_dims": [10**6, 10**6]},
    "num_transforms": {"num_transforms": 10**7},
    "count_bins": {"transformer": "spline", "count_bins": 10**8},
}
KEY = jax.random.PRNGKey(0)


def _write(path, config: dict, params: dict) -> None:
    """A file laid out as ``numpyroflows.save`` writes it, with any configuration and arrays."""
    meta = json.dumps({"format": "numpyroflows", "version": numpyroflows.io.FORMAT_VERSION, "config": config})
    np.savez(path, __meta__=np.array(meta), **{f"param:{k}": v for k, v in params.items()})


def _saved(flow) -> tuple[dict, dict]:
    return flow.config(), {k: np.asarray(v) for k, v in flow.params.items()}


@pytest.fixture
def never_builds(monkeypatch):
    """Fail the test if load gets as far as building the flow."""
    def build(config, key=None):
        raise AssertionError(f"load built a flow from {config}")

    monkeypatch.setattr(numpyroflows.io, "flow_from_config", build)


@pytest.mark.parametrize("change", list(HUGE))
def test_crafted_sizes_fail_fast_without_building(change, tmp_path, never_builds):
    config, params = _saved(flows.MAF(3, num_transforms=2, hidden_dims=(8, 8), key=KEY))
    config["kwargs"].update(HUGE[change])
    path = tmp_path / "crafted.npz"
    _write(path, config, params)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"needs at least [\d,]+ parameter values, but the file holds 316\b"):
        numpyroflows.load(path)
    assert time.perf_counter() - start < 1.0


def test_crafted_layer_of_a_stack_is_named(tmp_path, never_builds):
    config, params = _saved(flows.Flow([transforms.DiagonalAffine(3), transforms.ReversePermutation(3)]))
    config["transforms"][0]["kwargs"]["input_dim"] = 10**9
    _write(tmp_path / "crafted.npz", config, params)
    with pytest.raises(ValueError, match=r"transform 0, DiagonalAffine\(input_dim=1000000000.*under 'transforms\.0\.'"):
        numpyroflows.load(tmp_path / "crafted.npz")


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def test_headers_claiming_more_than_the_file_stores_are_refused(tmp_path, never_builds):
    """An array whose header declares 10**8 values over 12 bytes of data is refused before NumPy allocates for it."""
    config, params = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    meta = json.dumps({"format": "numpyroflows", "version": numpyroflows.io.FORMAT_VERSION, "config": config})
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**8,)})
    with zipfile.ZipFile(tmp_path / "header.npz", "w") as archive:  # uncompressed, sizes consistent
        archive.writestr("__meta__.npy", _npy(np.array(meta)))
        archive.writestr("param:transforms.0.head.shift.npy", header.getvalue() + bytes(12))
        archive.writestr("param:transforms.0.head.raw_scale.npy", _npy(params["transforms.0.head.raw_scale"]))
    with pytest.raises(ValueError, match=r"declares shape \(100000000,\) of float32 but holds 12 bytes"):
        numpyroflows.load(tmp_path / "header.npz")


def test_wrong_shape_is_refused_naming_the_parameter(tmp_path):
    config, params = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    params["transforms.0.head.raw_scale"] = np.zeros(1, np.float32)  # broadcastable, and wrong
    _write(tmp_path / "shape.npz", config, params)
    with pytest.raises(ValueError, match=r"'transforms\.0\.head\.raw_scale' should have shape \(3,\), found shape "
                                         r"\(1,\)"):
        numpyroflows.load(tmp_path / "shape.npz")


def test_wrong_dtype_kind_is_refused_naming_the_parameter(tmp_path):
    config, params = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    params["transforms.0.head.raw_scale"] = np.zeros(3, np.int64)
    _write(tmp_path / "kind.npz", config, params)
    with pytest.raises(ValueError, match=r"'transforms\.0\.head\.raw_scale' should hold floating-point values, "
                                         "found integer values"):
        numpyroflows.load(tmp_path / "kind.npz")


def test_missing_and_unexpected_arrays_are_named(tmp_path):
    config, params = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    params["transforms.0.head.scale"] = params.pop("transforms.0.head.raw_scale")
    _write(tmp_path / "names.npz", config, params)
    with pytest.raises(ValueError, match=r"missing \['transforms\.0\.head\.raw_scale'\], unexpected "
                                         r"\['transforms\.0\.head\.scale'\]"):
        numpyroflows.load(tmp_path / "names.npz")


def test_a_pyroflows_file_names_pyroflows_load(tmp_path):
    pyroflows = pytest.importorskip("pyroflows")
    pyroflows.save(pyroflows.flows.MAF(3, num_transforms=1, hidden_dims=(8,)), tmp_path / "flow.pt")
    with pytest.raises(ValueError, match=r"PyTorch file .* read it with pyroflows\.load.*"
                                         r"numpyroflows\.import_params\(flow, pyroflows\.export_params"):
        numpyroflows.load(tmp_path / "flow.pt")


@pytest.mark.parametrize("config", ["{not json", [1, 2], {"type": "MAF"}, {"type": "Flow", "transforms": []}])
def test_a_malformed_configuration_is_refused(config, tmp_path):
    _, params = _saved(flows.MAF(3, num_transforms=1, hidden_dims=(8,), key=KEY))
    meta = {"format": "numpyroflows", "version": numpyroflows.io.FORMAT_VERSION, "config": config}
    np.savez(tmp_path / "bad.npz", __meta__=np.array(json.dumps(meta)), **{f"param:{k}": v for k, v in params.items()})
    with pytest.raises(ValueError, match="configuration"):
        numpyroflows.load(tmp_path / "bad.npz")


def test_a_file_of_another_kind_is_refused(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a numpyroflows file"):
        numpyroflows.load(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a numpyroflows file"):
        numpyroflows.load(tmp_path / "other.npz")


def test_a_compressed_or_pickled_file_is_refused(tmp_path):
    flow = flows.Flow([transforms.DiagonalAffine(3)])
    config, params = _saved(flow)
    meta = np.array(json.dumps({"format": "numpyroflows", "version": numpyroflows.io.FORMAT_VERSION,
                                "config": config}))
    np.savez_compressed(tmp_path / "zipped.npz", __meta__=meta, **{f"param:{k}": v for k, v in params.items()})
    with pytest.raises(ValueError, match="compressed"):
        numpyroflows.load(tmp_path / "zipped.npz")
    params["transforms.0.head.shift"] = np.array([0.0, 0.0, 0.0], dtype=object)
    _write(tmp_path / "objects.npz", config, params)
    with pytest.raises(ValueError, match="Python objects"):
        numpyroflows.load(tmp_path / "objects.npz")


def test_round_trip_still_exact(tmp_path):
    """The checks let an honest file through: a context-conditioned NSF comes back identical."""
    flow = flows.NSF(3, 2, num_transforms=2, hidden_dims=(8, 8), count_bins=4, key=KEY)
    numpyroflows.save(flow, tmp_path / "nsf.npz")
    back = numpyroflows.load(tmp_path / "nsf.npz")
    x, ctx = jax.random.normal(KEY, (5, 3)), jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    log_prob = jax.jit(lambda f: f(ctx).log_prob(x))  # one compilation serves both: the same pytree structure
    np.testing.assert_array_equal(log_prob(back), log_prob(flow))


def test_import_params_refuses_a_wrong_shape():
    flow = flows.Flow([transforms.DiagonalAffine(3)])
    params = numpyroflows.export_params(flow)
    params["transforms.0.head.raw_scale"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"import_params: parameter 'transforms\.0\.head\.raw_scale' should have "
                                         r"shape \(3,\), found shape \(1,\)"):
        numpyroflows.import_params(flow, params)


# ------------------------------------------------------------------------------------------------- float64 files
def _float64_file(path) -> None:
    config, params = _saved(flows.Flow([transforms.DiagonalAffine(3)]))
    _write(path, config, {k: v.astype(np.float64) + 0.1 for k, v in params.items()})


def test_a_float64_file_warns_while_x64_is_off(tmp_path):
    _float64_file(tmp_path / "f64.npz")
    with jax.enable_x64(False), pytest.warns(UserWarning, match=r'jax\.config\.update\("jax_enable_x64", True\)'):
        flow = numpyroflows.load(tmp_path / "f64.npz")
    assert all(v.dtype == jnp.float32 for v in flow.params.values())


def test_a_float64_file_loads_quietly_in_float64_with_x64(tmp_path):
    _float64_file(tmp_path / "f64.npz")
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        flow = numpyroflows.load(tmp_path / "f64.npz")
        assert all(v.dtype == jnp.float64 for v in flow.params.values())


def test_import_params_of_float64_warns_while_x64_is_off():
    flow = flows.Flow([transforms.DiagonalAffine(3)])
    params = {k: np.asarray(v, np.float64) for k, v in flow.params.items()}
    with jax.enable_x64(False), pytest.warns(UserWarning, match="jax_enable_x64"):
        numpyroflows.import_params(flow, params)


# ------------------------------------------------------------------------------------------------- registration
def test_module_lives_in_its_own_module_and_registers_every_parameter():
    import numpyro
    from numpyro import handlers

    from numpyroflows.infer.module import module

    assert numpyroflows.module is module
    flow = flows.MAF(2, num_transforms=1, hidden_dims=(4,), key=KEY)

    def model():
        numpyro.sample("x", module("flow", flow)(), obs=jnp.zeros(2))

    trace = handlers.trace(handlers.seed(model, 0)).get_trace()
    assert {k for k, v in trace.items() if v["type"] == "param"} == {f"flow${k}" for k in flow.params}

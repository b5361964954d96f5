"""The size model that ``load`` checks a configuration with before building (:mod:`flowcommon.config`).

The smallest parameter count a configuration implies must be a true lower bound for every flow both packages build
(or an honest file would be refused) and close to the true count (or a crafted configuration could build much more
than its file holds), and every built-in transform and recipe needs a rule (a new one without a rule would be built
unchecked).
"""

from __future__ import annotations

import pytest
from catalogue import CATALOGUE, NAMES, context_dims, jax_backend, torch_backend

from flowcommon.config import (
    LAYER_SIZES,
    RECIPE_SIZES,
    archive_kind,
    check_arrays,
    decode_config,
    min_param_count,
)


def _min_count(config: dict, num_params) -> int:
    if config["type"] == "Flow":
        return sum(min_param_count(t["type"], t["kwargs"], num_params) for t in config["transforms"])
    return min_param_count(config["type"], config["kwargs"], num_params)


@pytest.mark.parametrize("name", NAMES)
def test_the_bound_holds_and_is_close_for_every_flow_of_both_packages(name):
    import numpyroflows.io
    import pyroflows.io

    def torch_sizes(flow):
        return {k: v.numel() for k, v in flow.state_dict().items()}

    def jax_sizes(flow):
        return {k: v.size for k, v in flow.params.items()}

    for backend, num_params, stored in [(torch_backend(), pyroflows.io._transformer_params, torch_sizes),
                                        (jax_backend(), numpyroflows.io._transformer_params, jax_sizes)]:
        for context_dim in context_dims(name):
            flow = backend.build(CATALOGUE[name], 3, context_dim)
            need, have = _min_count(flow.config(), num_params), sum(stored(flow).values())
            assert need <= have <= 2 * need, (backend.name, context_dim, need, have)


def test_every_built_in_transform_and_recipe_has_a_size_rule():
    import numpyroflows
    import pyroflows

    for pkg in (pyroflows, numpyroflows):
        for registry, rules in ((pkg.transforms.base.TRANSFORMS, LAYER_SIZES), (pkg.flows.core.RECIPES, RECIPE_SIZES)):
            built_in = {n for n, cls in registry.items()
                        if cls.__module__.startswith(f"{pkg.__name__}.") and not n.startswith("_")}
            assert built_in - set(rules) == set(), f"{pkg.__name__}: add a size rule to flowcommon.config"


def test_the_bound_multiplies_the_sizes_out():
    def num_params(transformer, count_bins, bound):
        return 2 if transformer == "affine" else 3 * int(count_bins) - 1

    maf = {"input_dim": 10, "hidden_dims": [64, 32], "transformer": "affine", "num_transforms": 3}
    assert min_param_count("MAF", maf, num_params) == 3 * (10 * 64 + 64 * 32 + 32 * 20)
    assert min_param_count("NSF", {**maf, "count_bins": 8, "context_dim": 4}, num_params) == 3 * (
        10 * 64 + 64 * 32 + 32 * 10 * 23 + 4 * 64)
    # a missing size counts as its smallest value (one hidden unit, one layer), whatever the constructor's default
    assert min_param_count("MAF", {"input_dim": 10}, num_params) == 10 + 20
    assert min_param_count("MyOwnTransform", {"input_dim": 10**9}, num_params) == 0  # unknown: built unchecked
    with pytest.raises(ValueError, match="hidden_dims=.*is not an integer"):
        min_param_count("MAF", {"input_dim": 3, "hidden_dims": ["wide"]}, num_params)
    with pytest.raises(ValueError, match="transformer 'nope'.* is not valid"):
        min_param_count("MAF", {"input_dim": 3, "transformer": "nope"}, num_params)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('"MAF"', "top level .* not a dict"),
    ('{"type": "MAF", "kwargs": [3]}', "no 'kwargs' dict"),
    ('{"type": "Flow", "transforms": [{"type": "Tanh", "kwargs": {}}, 3]}', "transform 1 .* not a dict"),
])
def test_decode_config_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        decode_config(text, "f.pt")


def test_check_arrays_names_every_difference():
    expected = {f"p{i}": ((3,), "f") for i in range(8)}
    found = {f"p{i}": ((3,), "f") if i < 2 else ((1,), "f") for i in range(8)}
    with pytest.raises(ValueError, match=r"'p2' should have shape \(3,\), found shape \(1,\); .* and 1 more"):
        check_arrays(expected, found, "f.npz")
    check_arrays(expected, {**expected, "p0": ((3,), "i")}, "f.npz", kinds=False)


def test_archive_kind(tmp_path):
    (tmp_path / "plain.txt").write_text("not a zip")
    assert archive_kind(str(tmp_path / "plain.txt")) is None
    with pytest.raises(FileNotFoundError):
        archive_kind(str(tmp_path / "missing.npz"))

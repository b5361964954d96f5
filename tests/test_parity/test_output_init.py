"""``output_init``: the start of the conditioners' output weights, in both packages.

The default (``1e-3``) starts every MADE/MLP-conditioned flow at its base distribution, which guides and encoders rely
on; ``"fan_in"`` (``±1/sqrt(fan_in)``, as ``torch.nn.Linear``, zuko and FlowJAX) is the random start, an option for
density estimation. Checked here: the weights' scale, the identity start, the gradient that reaches the hidden layers,
errors, saving, and that both packages lay out and scale the parameters the same way.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
import jax.numpy as jnp  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from numpyroflows import flows as jflows  # noqa: E402
from numpyroflows.nn.made import made_init, made_masks  # noqa: E402
from numpyroflows.nn.mlp import mlp_init  # noqa: E402
from pyroflows import flows as tflows  # noqa: E402
from pyroflows.nn import MADE, MLP  # noqa: E402

D, H = 3, (32, 48)  # the output layer's fan-in is 48
RECIPES = {
    "MAF": lambda pkg, **kw: pkg.MAF(D, num_transforms=3, hidden_dims=H, **kw),
    "IAF": lambda pkg, **kw: pkg.IAF(D, num_transforms=3, hidden_dims=H, **kw),
    "NSF": lambda pkg, **kw: pkg.NSF(D, num_transforms=3, hidden_dims=H, count_bins=4, **kw),
    "RealNVP": lambda pkg, **kw: pkg.RealNVP(D, num_transforms=3, hidden_dims=H, **kw),
    "Coupling-spline": lambda pkg, **kw: pkg.Coupling(D, 0, 3, H, transformer="spline", count_bins=4, **kw),
    "NICE": lambda pkg, **kw: pkg.NICE(D, num_transforms=3, hidden_dims=H, **kw),
}


def _torch_flow(name, seed=0, **kw):
    torch.manual_seed(seed)
    return RECIPES[name](tflows, **kw)


def _jax_flow(name, seed=0, **kw):
    return RECIPES[name](jflows, key=jax.random.PRNGKey(seed), **kw)


def _output_layers(params: dict, flow) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of every conditioner's output layer, from pyroflows-layout parameters (names as in
    ``state_dict``): MADE's are the last two blocks of ``made.flat``, the coupling MLP's are ``net.layers.{-1}``."""
    out = []
    for i, t in enumerate(flow.transforms):
        pre = f"transforms.{i}."
        if f"{pre}made.flat" in params:
            flat = np.asarray(params[f"{pre}made.flat"])
            _, shapes = made_masks(D, t.transformer.num_params, H, "ascending")
            o, k = shapes[-1]
            out.append((flat[-(o * k + o):-o].reshape(o, k), flat[-o:]))
        elif f"{pre}net.layers.{len(H) - 1}.weight" in params:
            out.append((np.asarray(params[f"{pre}net.layers.{len(H) - 1}.weight"]),
                        np.asarray(params[f"{pre}net.layers.{len(H) - 1}.bias"])))
    assert out, "no conditioner found"
    return out


def _identity_bias(t) -> np.ndarray:
    b = np.asarray(t.transformer.identity_params(), dtype=np.float64)
    return np.repeat(b, D if hasattr(t, "made") else t.num_b)


def _both(name, **kw):
    tf = _torch_flow(name, **kw)
    jf = _jax_flow(name, **kw)
    return [(tf, pyroflows.export_params(tf)), (jf, numpyroflows.export_params(jf))]


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("output_init, bound", [(None, 1e-3), (0.05, 0.05), ("fan_in", 1 / math.sqrt(H[-1]))])
def test_output_weights_start_uniform_in_the_bound_and_the_bias_at_the_identity(name, output_init, bound):
    kw = {} if output_init is None else {"output_init": output_init}
    for flow, params in _both(name, **kw):
        layers = _output_layers(params, flow)
        w = np.concatenate([w.ravel() for w, _ in layers])
        assert np.abs(w).max() <= bound * (1 + 1e-6)
        assert np.abs(w).max() > 0.9 * bound  # thousands of draws come close to the edge
        np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.1)  # std of U(-a, a)
        for (_, b), t in zip(layers, [t for t in flow.transforms if hasattr(t, "made") or hasattr(t, "num_b")]):
            np.testing.assert_allclose(b, _identity_bias(t), rtol=1e-6)


@pytest.mark.parametrize("name", list(RECIPES))
def test_default_starts_at_the_identity_and_fan_in_does_not(name):
    x = np.random.default_rng(0).uniform(-2, 2, size=(256, D))
    for pkg, make, arr in (("torch", _torch_flow, torch.as_tensor), ("jax", _jax_flow, jnp.asarray)):
        moved = {}
        for init in (1e-3, "fan_in"):
            flow = make(name, output_init=init)
            xa = arr(x.astype(np.float32))
            y, ladj = flow.transform().forward_and_log_det(xa)
            moved[init] = (np.abs(np.asarray(y.tolist()) - x).max(), np.abs(np.asarray(ladj.tolist())).max())
        assert moved[1e-3][0] < 0.05 and moved[1e-3][1] < 0.05, (pkg, moved)
        assert moved["fan_in"][0] > 0.1, (pkg, moved)  # a random map: the hidden layers matter from the start
        if name != "NICE":  # NICE's coupling layers preserve volume whatever their weights
            assert moved["fan_in"][1] > 0.1, (pkg, moved)


def _first_layer_grad_torch(init):
    flow = _torch_flow("MAF", output_init=init)
    x = torch.randn(512, D, generator=torch.Generator().manual_seed(1)) * 2 + 1
    (-flow().log_prob(x).mean()).backward()
    t = flow.transforms[0]
    return t.made.flat.grad[: H[0] * D].norm().item()  # W_1, the first block of made.flat


def _first_layer_grad_jax(init):
    flow = _jax_flow("MAF", output_init=init)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(512, D)) * 2 + 1, jnp.float32)
    grads = jax.grad(lambda f: -f().log_prob(x).mean())(flow)
    return float(jnp.linalg.norm(grads.transforms[0].params["made.flat"][: H[0] * D]))


@pytest.mark.parametrize("grad", [_first_layer_grad_torch, _first_layer_grad_jax], ids=["torch", "jax"])
def test_fan_in_start_trains_the_hidden_layers_from_the_first_step(grad):
    # with output weights ~1e-3 the gradient reaching the first layer is ~1e-3 times smaller: the reason for "fan_in"
    assert grad("fan_in") > 20 * grad(1e-3)


@pytest.mark.parametrize("bad", ["xavier", -0.1, float("nan"), float("inf")])
def test_bad_output_init_names_the_choices(bad):
    with pytest.raises(ValueError, match="fan_in"):
        tflows.MAF(D, output_init=bad)
    with pytest.raises(ValueError, match="fan_in"):
        jflows.MAF(D, output_init=bad)
    with pytest.raises(ValueError, match="fan_in"):
        tflows.RealNVP(D, output_init=bad)
    with pytest.raises(ValueError, match="fan_in"):
        jflows.RealNVP(D, output_init=bad)


def test_zero_output_init_is_the_exact_identity():
    x = torch.randn(64, D)
    y, ladj = _torch_flow("MAF", output_init=0.0).transform().forward_and_log_det(x)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ladj, torch.zeros(64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["MAF", "RealNVP"])
def test_output_init_is_saved_with_the_flow(name, tmp_path):
    tf = _torch_flow(name, output_init="fan_in")
    assert tf.config()["kwargs"]["output_init"] == "fan_in"
    pyroflows.save(tf, tmp_path / "t.pt")
    back = pyroflows.load(tmp_path / "t.pt")
    assert back.config() == tf.config()
    x = torch.randn(8, D)
    torch.testing.assert_close(back().log_prob(x), tf().log_prob(x))
    jf = _jax_flow(name, output_init="fan_in")
    assert jf.config()["kwargs"]["output_init"] == "fan_in"
    numpyroflows.save(jf, tmp_path / "j.npz")
    jback = numpyroflows.load(tmp_path / "j.npz")
    assert jback.config() == jf.config()
    xj = jnp.asarray(x.numpy())
    np.testing.assert_allclose(np.asarray(jback().log_prob(xj)), np.asarray(jf().log_prob(xj)), rtol=1e-6)


def test_same_layout_and_values_across_packages_with_the_fan_in_start():
    """Same parameter names and shapes; a fan-in start exported from pyroflows gives numpyroflows the same flow."""
    tf, jf = _torch_flow("MAF", output_init="fan_in"), _jax_flow("MAF", output_init="fan_in")
    tp, jp = pyroflows.export_params(tf), numpyroflows.export_params(jf)
    assert {k: tuple(v.shape) for k, v in tp.items()} == {k: tuple(np.shape(v)) for k, v in jp.items()}
    moved = numpyroflows.import_params(_jax_flow("MAF", output_init="fan_in"), tp)
    x = np.random.default_rng(2).normal(size=(16, D)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(moved().log_prob(jnp.asarray(x))),
                               tf().log_prob(torch.as_tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_network_level_arguments():
    """MADE/MLP: ``output_init=None`` keeps ``nn.Linear``'s start without an ``output_bias`` (a VAE decoder) and
    means ``1e-3`` with one; an explicit ``output_init`` applies either way, in both packages."""
    torch.manual_seed(0)
    assert MLP(4, 200, (64,)).layers[-1].weight.abs().max() > 0.1  # U(±1/8)
    assert MLP(4, 200, (64,), output_bias=torch.zeros(200)).layers[-1].weight.abs().max() <= 1e-3
    assert MLP(4, 200, (64,), output_init=0.01).layers[-1].weight.abs().max() <= 0.01
    assert MLP(4, 200, (), context_dim=3, output_init=0.01).context_layer.weight.abs().max() <= 0.01
    made = MADE(D, 2, (64,), output_init="fan_in")
    assert made.layers()[-1][0].abs().max() <= 1 / 8
    key = jax.random.PRNGKey(0)
    assert float(jnp.abs(mlp_init(key, 4, 200, (64,))["layers.0.weight"]).max()) > 0.1
    assert float(jnp.abs(mlp_init(key, 4, 200, (64,), output_bias=jnp.zeros(200))["layers.0.weight"]).max()) <= 1e-3
    assert float(jnp.abs(mlp_init(key, 4, 200, (64,), output_init=0.01)["layers.0.weight"]).max()) <= 0.01
    flat = made_init(key, D, 2, (64,), output_init="fan_in")["flat"]
    assert float(jnp.abs(flat[-(2 * D * 64 + 2 * D):-2 * D]).max()) <= 1 / 8

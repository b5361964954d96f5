"""numpyroflows.FlowEncoder: an amortized flow posterior q(z | x) for VAEs in NumPyro.

Shapes, exact densities, the diagonal case against a Normal, dependence on x, gradients, the network types (callable
pytree, (apply_fn, params) pair, plain function, Equinox module), SVI under jit on a conjugate model with a known
posterior, one forward pass per ELBO evaluation for an IAF, parity with pyroflows, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO  # noqa: E402

import numpyroflows  # noqa: E402
from numpyroflows import flows  # noqa: E402
from numpyroflows.functional.affine import affine_scale  # noqa: E402
from numpyroflows.infer import ENCODER_FLOWS, FeatureMLP, FlowEncoder  # noqa: E402
from numpyroflows.nn.mlp import mlp_apply, mlp_init  # noqa: E402
from numpyroflows.transforms.autoregressive import AutoregressiveTransform  # noqa: E402

NAMES = list(ENCODER_FLOWS)
X_DIM, LATENT = 6, 3
KEY = jax.random.PRNGKey(0)


def _extra(name: str) -> dict:
    if name == "diagonal":
        return {}
    if name == "sylvester":
        return {"num_transforms": 2, "hidden_dims": ()}
    return {"num_transforms": 2, "hidden_dims": (8, 8)}


def _encoder(name: str, **kw) -> FlowEncoder:
    net = FeatureMLP(X_DIM, (10,), activation="tanh", key=jax.random.PRNGKey(1))
    return FlowEncoder(net, LATENT, name, key=KEY, **{**_extra(name), **kw})


def _perturbed(enc: FlowEncoder, scale: float = 0.2, seed: int = 1) -> FlowEncoder:
    """The encoder with every parameter moved away from its (near-identity) start, in float64."""
    params = enc.params
    keys = jax.random.split(jax.random.PRNGKey(seed), len(params))
    return enc.with_params({k: jnp.asarray(v, jnp.float64) + scale * jax.random.normal(kk, v.shape, jnp.float64)
                            for kk, (k, v) in zip(keys, params.items())})


def _x(n: int = 16, seed: int = 2) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (n, X_DIM), jnp.float64)


def test_flow_names_are_the_documented_ones():
    assert NAMES == ["diagonal", "iaf", "spline_iaf", "maf", "planar", "radial", "sylvester"]
    assert numpyroflows.FlowEncoder is FlowEncoder


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_batch_shapes(name):
    enc = _encoder(name)
    x = jax.random.normal(KEY, (4, 5, X_DIM))

    def draw_and_score(e, x):
        d = e(x)
        assert isinstance(d, numpyroflows.FlowDistribution)  # checked while tracing
        assert d.batch_shape == (4, 5) and d.event_shape == (LATENT,)
        z, lp = d.sample_and_log_prob(KEY, (2,))
        return z, lp, e(x).log_prob(z)

    z, lp, lp_inv = jax.eval_shape(draw_and_score, enc, x)  # shapes by tracing alone (no compilation)
    assert z.shape == (2, 4, 5, LATENT) and lp.shape == lp_inv.shape == (2, 4, 5)
    assert len(enc.flow.transforms) == (1 if name == "diagonal" else 3)


@jax.jit
def _checks(enc: FlowEncoder, x: jax.Array, key: jax.Array) -> dict:
    """Everything the per-flow tests below look at, in one compiled program per flow (the encoder is a jit argument,
    so this also checks that it passes through ``jax.jit`` as a pytree)."""
    z, lp_forward = enc(x).sample_and_log_prob(key, (3,))

    def loss(params):
        zz, log_q = enc.with_params(params)(x).sample_and_log_prob(key)
        return log_q.sum() + (zz ** 2).sum()

    return {"z": z, "lp_forward": lp_forward, "lp_inverse": enc(x).log_prob(z),
            "lp_flipped_x": enc(x[::-1]).log_prob(z), "grads": jax.grad(loss)(enc.params)}


_CACHE: dict[str, tuple[FlowEncoder, dict]] = {}


def _checked(name: str) -> tuple[FlowEncoder, dict]:
    if name not in _CACHE:
        enc = _perturbed(_encoder(name))
        _CACHE[name] = enc, _checks(enc, _x(), KEY)
    return _CACHE[name]


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_of_own_sample_equals_log_prob_via_inverse(name):
    _, r = _checked(name)
    np.testing.assert_allclose(r["lp_forward"], r["lp_inverse"], atol=1e-7, rtol=0)
    assert float(jnp.abs(r["lp_forward"] - r["lp_forward"].mean()).max()) > 1e-2  # not a constant


@pytest.mark.parametrize("name", NAMES)
def test_changing_x_changes_q(name):
    _, r = _checked(name)
    assert float(jnp.median(jnp.abs(r["lp_inverse"] - r["lp_flipped_x"]))) > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_net_gaussian_head_and_flow(name):
    enc, r = _checked(name)
    grads = r["grads"]
    assert set(grads) == set(enc.params)
    groups = {"net.": "net", "flow.transforms.0.": "gaussian head"}
    groups.update({f"flow.transforms.{i}.": f"flow layer {i}" for i in range(1, len(enc.flow.transforms))})
    for prefix, what in groups.items():
        g = [v for k, v in grads.items() if k.startswith(prefix)]
        assert g and sum(float(jnp.abs(v).sum()) for v in g) > 0, what


def test_diagonal_is_a_normal_with_mean_and_scale_linear_in_the_features():
    enc = _encoder("diagonal", init_scale=0.5)
    x = _x(7)
    h = enc.features(x)
    w, b = enc.params["flow.transforms.0.head.net.context_layer.weight"], enc.params[
        "flow.transforms.0.head.net.context_layer.bias"]
    out = h @ w.T + b
    loc, scale = out[:, :LATENT], affine_scale(out[:, LATENT:])
    z = jax.random.normal(KEY, (5, 7, LATENT), jnp.float64)
    expected = dist.Normal(loc, scale).log_prob(z).sum(-1)
    np.testing.assert_allclose(enc(x).log_prob(z), expected, atol=1e-5)
    np.testing.assert_allclose(scale, 0.5, atol=0.02)
    assert float(loc.std(0).min()) > 1e-3


def test_parameter_names_match_pyroflows_state_dict():
    enc = _encoder("iaf")
    names = list(enc.params)
    assert names[:4] == ["net.layers.0.weight", "net.layers.0.bias", "flow.transforms.0.head.net.context_layer.weight",
                         "flow.transforms.0.head.net.context_layer.bias"]
    assert enc.params["flow.transforms.0.head.net.context_layer.weight"].shape == (2 * LATENT, 10)


@pytest.mark.parametrize("name", ["diagonal", "iaf", "planar"])
def test_same_log_density_as_pyroflows_with_the_same_parameters(name):
    torch = pytest.importorskip("torch", reason="parity needs pyroflows (torch)")
    import pyroflows

    torch.manual_seed(0)
    tenc = pyroflows.FlowEncoder(pyroflows.infer.FeatureMLP(X_DIM, (10,), activation="tanh"), LATENT, name,
                                 **_extra(name)).double()
    with torch.no_grad():
        for p in tenc.parameters():
            p.add_(0.2 * torch.randn_like(p))
    jenc = _encoder(name)
    jenc = jenc.with_params({k: jnp.asarray(v.numpy()) for k, v in tenc.state_dict().items()})
    x = np.array(_x(5))  # writable copies for torch.from_numpy
    z = np.array(jax.random.normal(KEY, (4, 5, LATENT), jnp.float64))
    expected = tenc(torch.from_numpy(x)).log_prob(torch.from_numpy(z)).detach().numpy()
    np.testing.assert_allclose(np.asarray(jenc(jnp.asarray(x)).log_prob(jnp.asarray(z))), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- network types
def _stax_like_pair():
    params = {"dense": {"w": jax.random.normal(KEY, (X_DIM, 5)) * 0.3, "b": jnp.zeros(5)}}
    return (lambda p, x: jnp.tanh(x @ p["dense"]["w"] + p["dense"]["b"])), params


def test_network_types_callable_pytree_pair_and_plain_function():
    pair = FlowEncoder(_stax_like_pair(), LATENT, "iaf", feature_dim=5, num_transforms=1, hidden_dims=(8,), key=KEY)
    assert sorted(k for k in pair.params if k.startswith("net.")) == ["net.dense.b", "net.dense.w"]
    assert jax.eval_shape(lambda e, x: e(x).sample(KEY), pair, _x(3)).shape == (3, LATENT)
    apply_fn, params = pair.net
    assert callable(apply_fn) and set(params["dense"]) == {"b", "w"}
    plain = FlowEncoder(lambda x: x[..., :4] ** 2, LATENT, "planar", feature_dim=4, num_transforms=1, key=KEY)
    assert not any(k.startswith("net") for k in plain.params)
    assert jax.eval_shape(lambda e, x: e(x).sample(KEY), plain, _x(3)).shape == (3, LATENT)
    mlp = FlowEncoder((mlp_apply, mlp_init(KEY, X_DIM, 7, (9,))), LATENT, "diagonal", feature_dim=7)
    assert "net.layers.0.weight" in mlp.params
    assert jax.eval_shape(lambda e, x: e(x).sample(KEY), mlp, _x(2)).shape == (2, LATENT)


def test_equinox_module_as_net():
    eqx = pytest.importorskip("equinox", reason="optional: Equinox networks are supported, not required")
    mlp = eqx.nn.MLP(X_DIM, 5, width_size=8, depth=1, final_activation=jax.nn.relu, key=KEY)
    net = eqx.filter_vmap(mlp)  # Equinox layers take one example: filter_vmap gives a batched module (a pytree)
    enc = FlowEncoder(net, LATENT, "iaf", feature_dim=5, num_transforms=1, hidden_dims=(8,), key=KEY)
    names = [k for k in enc.params if k.startswith("net.")]
    assert names == ["net._fun.layers.0.weight", "net._fun.layers.0.bias", "net._fun.layers.1.weight",
                     "net._fun.layers.1.bias"]
    x = _x(4)
    assert enc(x).batch_shape == (4,)
    np.testing.assert_allclose(enc.features(x), jax.vmap(mlp)(x), atol=1e-6)
    grads = jax.grad(lambda p: enc.with_params(p)(x).log_prob(jnp.ones(LATENT)).sum())(enc.params)
    assert all(float(jnp.abs(grads[k]).sum()) > 0 for k in names)


# ---------------------------------------------------------------------------------------------- SVI
S = 0.5  # z ~ N(0, 1), x | z ~ N(z, S²): q(z | x) = N(x / (1 + S²), S² / (1 + S²))
POST_SLOPE, POST_SD = 1.0 / (1.0 + S * S), math.sqrt(S * S / (1.0 + S * S))


def _conjugate_model(x):
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(1), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(z, S).to_event(1), obs=x)


@pytest.mark.parametrize("name, elbo", [("diagonal", Trace_ELBO), ("iaf", Trace_ELBO), ("iaf", TraceMeanField_ELBO)])
def test_conjugate_model_posterior_is_learned_by_jitted_svi(name, elbo):
    """With the identity as feature net, the encoder can represent the exact posterior of every x; SVI must find it."""
    extra = {} if name == "diagonal" else {"num_transforms": 1, "hidden_dims": (8, 8)}
    encoder = FlowEncoder(lambda x: x, 1, name, feature_dim=1, key=KEY, **extra)

    def guide(x):
        enc = numpyroflows.module("encoder", encoder)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", enc(x))

    x = jax.random.normal(jax.random.PRNGKey(3), (256, 1)) * math.sqrt(1 + S * S)
    schedule = numpyro.optim.optax_to_numpyro(__import__("optax").adam(
        __import__("optax").exponential_decay(0.03, 800, 0.1)))
    svi = SVI(_conjugate_model, guide, schedule, elbo(num_particles=4))
    result = svi.run(jax.random.PRNGKey(4), 800, x, progress_bar=False)  # one jit-compiled loop
    trained = encoder.with_params({k: result.params[f"encoder${k}"] for k in encoder.params})
    grid = jnp.linspace(-2.0, 2.0, 5)[:, None]
    draws = trained(grid).sample(jax.random.PRNGKey(5), (4000,))[..., 0]
    np.testing.assert_allclose(draws.mean(0), POST_SLOPE * grid[:, 0], atol=0.06)
    np.testing.assert_allclose(draws.std(0), POST_SD, atol=0.04)


def test_feature_net_parameters_train_under_svi():
    encoder = _encoder("diagonal")
    decoder = mlp_init(KEY, LATENT, X_DIM, ())

    def model(x):
        dec = numpyro.param("decoder", decoder)
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            numpyro.sample("x", dist.Normal(mlp_apply(dec, z), 1.0).to_event(1), obs=x)

    def guide(x):
        enc = numpyroflows.module("encoder", encoder)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", enc(x))

    svi = SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
    result = svi.run(KEY, 5, _x(32), progress_bar=False)
    assert {f"encoder${k}" for k in encoder.params} <= set(result.params)
    moved = float(jnp.abs(result.params["encoder$net.layers.0.weight"] - encoder.params["net.layers.0.weight"]).max())
    assert moved > 1e-3


def test_iaf_encoder_costs_one_forward_pass_per_elbo_evaluation(monkeypatch):
    encoder = _encoder("iaf")
    calls = {"forward": 0, "inverse": 0}
    fwd, inv = AutoregressiveTransform._forward_ld, AutoregressiveTransform._inverse_ld

    def count(kind, fn):
        def wrapped(self, *a):
            calls[kind] += 1
            return fn(self, *a)
        return wrapped

    monkeypatch.setattr(AutoregressiveTransform, "_forward_ld", count("forward", fwd))
    monkeypatch.setattr(AutoregressiveTransform, "_inverse_ld", count("inverse", inv))

    def model(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            numpyro.sample("x", dist.Normal(z.sum(-1, keepdims=True), 1.0).to_event(1), obs=x[:, :1])

    def guide(x):
        enc = numpyroflows.module("encoder", encoder)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", enc(x))

    params = {f"encoder${k}": v for k, v in encoder.params.items()}
    # traced once without compiling: every pass the loss makes is counted
    loss = jax.eval_shape(lambda p: Trace_ELBO().loss(KEY, p, model, guide, _x(8)), params)
    assert loss.shape == ()
    assert calls == {"forward": 2, "inverse": 0}


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_flow_name_lists_the_names():
    with pytest.raises(ValueError, match="'diagonal', 'iaf', 'spline_iaf', 'maf', 'planar', 'radial', 'sylvester'"):
        FlowEncoder(FeatureMLP(X_DIM, (4,)), LATENT, "nvp")


def test_argument_errors_name_the_fix():
    net = FeatureMLP(X_DIM, (4,))
    with pytest.raises(TypeError, match="pass feature_dim="):
        FlowEncoder(_stax_like_pair(), LATENT)
    with pytest.raises(TypeError, match="takes no argument"):
        FlowEncoder(net, LATENT, "planar", count_bins=4)
    with pytest.raises(TypeError, match="sets \\['input_dim'\\] itself"):
        FlowEncoder(net, LATENT, "iaf", input_dim=3)
    with pytest.raises(TypeError, match="no flow layers"):
        FlowEncoder(net, LATENT, "diagonal", num_transforms=2)
    with pytest.raises(ValueError, match="init_scale"):
        FlowEncoder(net, LATENT, init_scale=0.0)
    with pytest.raises(ValueError, match="context_dim=4 \\(or 0\\)"):
        FlowEncoder(net, LATENT, lambda d, c: flows.IAF(d, c + 1, num_transforms=1))
    with pytest.raises(TypeError, match="callable pytree"):
        FlowEncoder(42, LATENT)
    with pytest.raises(ValueError, match="missing"):
        _encoder("iaf").with_params({})


def test_input_errors_name_the_fix():
    enc = _encoder("iaf")
    with pytest.raises(ValueError, match=f"takes {X_DIM} features"):
        enc(jnp.ones((3, X_DIM + 1)))
    with pytest.raises(ValueError, match="NaN"):
        enc(jnp.ones((3, X_DIM)).at[1, 2].set(jnp.nan))
    wrong_size = FlowEncoder(lambda x: x[..., :5], LATENT, "diagonal", feature_dim=4)
    with pytest.raises(ValueError, match="feature_dim=4"):
        wrong_size(jnp.ones((3, X_DIM)))
    pair = FlowEncoder(_stax_like_pair(), LATENT, "diagonal", feature_dim=5)
    with pytest.raises(ValueError, match="net\\(x\\) failed"):
        pair(jnp.ones((3, X_DIM + 2)))


def test_encoder_is_a_pytree_whose_leaves_are_its_parameters():
    enc, r = _checked("iaf")
    leaves = jax.tree_util.tree_leaves(enc)
    assert len(leaves) == len(enc.params)
    rebuilt = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(enc), leaves)
    assert repr(rebuilt) == repr(enc) and rebuilt.params.keys() == enc.params.keys()
    # the compiled program took the encoder as an argument and agrees with it called eagerly
    np.testing.assert_allclose(r["lp_inverse"][0, :2], enc(_x()[:2]).log_prob(r["z"][0, :2]), atol=1e-8)

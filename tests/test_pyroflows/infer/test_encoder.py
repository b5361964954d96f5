"""pyroflows.FlowEncoder: an amortized flow posterior q(z | x) for VAEs in Pyro.

Shapes, exact densities, the diagonal case against a Normal, dependence on x, gradients, one forward pass per ELBO
step for an IAF, a conjugate model with a known posterior learned by SVI, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

import pyroflows
from pyroflows import flows
from pyroflows.flows import core as flow_core
from pyroflows.functional.affine import affine_scale
from pyroflows.infer import ENCODER_FLOWS, FeatureMLP, FlowEncoder
from pyroflows.transforms.autoregressive import AutoregressiveTransform

pytestmark = pytest.mark.usefixtures("fresh_param_store")

NAMES = list(ENCODER_FLOWS)
X_DIM, LATENT = 6, 3
SMALL = {"num_transforms": 2, "hidden_dims": (8, 8)}


def _encoder(name: str, dtype: torch.dtype = torch.float32, **kw) -> FlowEncoder:
    extra = {} if name == "diagonal" else SMALL
    if name == "sylvester":
        extra = {"num_transforms": 2, "hidden_dims": ()}
    enc = FlowEncoder(FeatureMLP(X_DIM, (10,), activation="tanh"), LATENT, name, **{**extra, **kw})
    return enc.to(dtype)


@torch.no_grad()
def _perturb(module: nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    """Move every parameter away from its (near-identity) start so that the flows do something."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_flow_names_are_the_documented_ones():
    assert NAMES == ["diagonal", "iaf", "spline_iaf", "maf", "planar", "radial", "sylvester"]
    assert pyroflows.FlowEncoder is FlowEncoder


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_batch_shapes(name):
    enc = _encoder(name)
    x = torch.randn(4, 5, X_DIM)
    d = enc(x)
    assert isinstance(d, pyroflows.FlowDistribution)
    assert d.batch_shape == (4, 5) and d.event_shape == (LATENT,)
    z = d.rsample((2,))
    assert z.shape == (2, 4, 5, LATENT)
    assert d.log_prob(z).shape == (2, 4, 5)
    z1, lp1 = enc(x[0]).rsample_and_log_prob()
    assert z1.shape == (5, LATENT) and lp1.shape == (5,)
    assert enc.flow.transforms[0].context_dim == enc.feature_dim == 10
    assert len(enc.flow.transforms) == (1 if name == "diagonal" else 3)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_of_own_sample_equals_log_prob_via_inverse(name):
    torch.manual_seed(0)
    enc = _encoder(name, torch.float64)
    _perturb(enc.flow, 0.2)
    x = torch.randn(16, X_DIM, dtype=torch.float64)
    z, lp_forward = enc(x).rsample_and_log_prob((3,))
    lp_inverse = enc(x).log_prob(z.detach().clone())  # a fresh tensor: goes through the exact inverse
    assert torch.allclose(lp_forward, lp_inverse, atol=1e-7, rtol=0), (lp_forward - lp_inverse).abs().max()
    # and the inverse really returns the base noise: the draw is reproducible from it
    chain = enc.flow.transform(enc.features(x))
    assert torch.allclose(chain(chain.inv(z)), z, atol=1e-8)


def test_diagonal_is_a_normal_with_mean_and_scale_linear_in_the_features():
    enc = _encoder("diagonal", torch.float64, init_scale=0.5)
    x = torch.randn(7, X_DIM, dtype=torch.float64)
    h = enc.features(x)
    layer = enc.flow.transforms[0].head.net.context_layer
    out = h @ layer.weight.T + layer.bias
    loc, scale = out[:, :LATENT], affine_scale(out[:, LATENT:])
    z = torch.randn(5, 7, LATENT, dtype=torch.float64)
    expected = dist.Normal(loc, scale).log_prob(z).sum(-1)
    assert torch.allclose(enc(x).log_prob(z), expected, atol=1e-10)
    # the documented start: sd = init_scale for every x, and the mean depends on x
    assert torch.allclose(scale, torch.full_like(scale, 0.5), atol=0.02)
    assert loc.std(0).min() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_changing_x_changes_q(name):
    enc = _encoder(name, torch.float64)
    _perturb(enc.flow, 0.2)
    x = torch.randn(2, X_DIM, dtype=torch.float64)
    z = torch.randn(2, LATENT, dtype=torch.float64)
    lp_a = enc(x).log_prob(z)
    lp_b = enc(x.flip(0)).log_prob(z)
    assert (lp_a - lp_b).abs().min() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_net_gaussian_head_and_flow(name):
    enc = _encoder(name)
    x = torch.randn(8, X_DIM)
    z, log_q = enc(x).rsample_and_log_prob()
    (log_q.sum() + (z ** 2).sum()).backward()
    groups = {"net": enc.net, "gaussian head": enc.flow.transforms[0]}
    groups.update({f"flow layer {i}": t for i, t in enumerate(enc.flow.transforms[1:], 1)})
    for what, module in groups.items():
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None for g in grads), what
        assert sum(float(g.abs().sum()) for g in grads) > 0, what


def test_state_dict_names_match_the_documented_layout():
    enc = _encoder("iaf")
    names = list(enc.state_dict())
    assert names[:4] == ["net.layers.0.weight", "net.layers.0.bias", "flow.transforms.0.head.net.context_layer.weight",
                         "flow.transforms.0.head.net.context_layer.bias"]
    assert enc.state_dict()["flow.transforms.0.head.net.context_layer.weight"].shape == (2 * LATENT, 10)
    assert all(n.startswith(("net.", "flow.transforms.")) for n in names)


def test_callable_flow_and_any_module_as_net():
    net = nn.Sequential(nn.Linear(X_DIM, 12), nn.ELU())
    enc = FlowEncoder(net, LATENT, lambda d, c: flows.Planar(d, c, num_transforms=2, hidden_dims=()), feature_dim=12)
    assert [type(t).__name__ for t in enc.flow.transforms] == ["DiagonalAffine", "PlanarTransform", "PlanarTransform"]
    # an unconditional flow after the Gaussian is allowed too
    enc0 = FlowEncoder(net, LATENT, lambda d, c: flows.IAF(d, 0, num_transforms=1), feature_dim=12)
    assert enc0(torch.randn(3, X_DIM)).batch_shape == (3,)


def test_iaf_encoder_costs_one_forward_pass_per_elbo_step(monkeypatch):
    enc = _encoder("iaf")
    decoder = nn.Linear(LATENT, X_DIM)
    calls = {"forward": 0, "inverse": 0}
    fwd, inv = AutoregressiveTransform._forward_ld, AutoregressiveTransform._inverse_ld

    def count_forward(self, *a):
        calls["forward"] += 1
        return fwd(self, *a)

    def count_inverse(self, *a):
        calls["inverse"] += 1
        return inv(self, *a)

    monkeypatch.setattr(AutoregressiveTransform, "_forward_ld", count_forward)
    monkeypatch.setattr(AutoregressiveTransform, "_inverse_ld", count_inverse)
    chain_inverse = flow_core.chain_inverse
    monkeypatch.setattr(flow_core, "chain_inverse", lambda *a: (calls.__setitem__("inverse", calls["inverse"] + 1),
                                                                chain_inverse(*a))[1])

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", enc(x))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(3):
        svi.step(torch.randn(16, X_DIM))
    assert calls == {"forward": 3 * 2, "inverse": 0}


# ---------------------------------------------------------------------------------------------- known answer
S = 0.5  # z ~ N(0, 1), x | z ~ N(z, S²): q(z | x) = N(x / (1 + S²), S² / (1 + S²))
POST_SLOPE, POST_SD = 1.0 / (1.0 + S * S), math.sqrt(S * S / (1.0 + S * S))


def _conjugate_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, S).to_event(1), obs=x)


@pytest.mark.parametrize("name, elbo", [("diagonal", Trace_ELBO), ("iaf", Trace_ELBO), ("iaf", TraceMeanField_ELBO)])
def test_conjugate_model_posterior_is_learned_inside_a_plate(name, elbo):
    """With the identity as feature net, the encoder can represent the exact posterior of every x; SVI must find it."""
    torch.manual_seed(0)
    extra = {} if name == "diagonal" else {"num_transforms": 1, "hidden_dims": (8, 8)}
    enc = FlowEncoder(nn.Identity(), 1, name, feature_dim=1, **extra)

    def guide(x):
        pyro.module("encoder", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", enc(x))

    x = torch.randn(256, 1) * math.sqrt(1 + S * S)  # draws from the marginal of x
    optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.1 ** (1 / 800)})
    svi = SVI(_conjugate_model, guide, optim, elbo(num_particles=4, vectorize_particles=True))
    for _ in range(800):
        svi.step(x)
    grid = torch.linspace(-2.0, 2.0, 5)[:, None]
    with torch.no_grad():
        draws = enc(grid).sample((4000,))[..., 0]
    assert torch.allclose(draws.mean(0), POST_SLOPE * grid[:, 0], atol=0.06), draws.mean(0)
    assert torch.allclose(draws.std(0), torch.full((5,), POST_SD), atol=0.04), draws.std(0)


# ---------------------------------------------------------------------------------------------- errors and devices
def test_unknown_flow_name_lists_the_names():
    with pytest.raises(ValueError, match="'diagonal', 'iaf', 'spline_iaf', 'maf', 'planar', 'radial', 'sylvester'"):
        FlowEncoder(FeatureMLP(X_DIM, (4,)), LATENT, "nvp")


def test_argument_errors_name_the_fix():
    net = FeatureMLP(X_DIM, (4,))
    with pytest.raises(TypeError, match="pass feature_dim="):
        FlowEncoder(nn.Sequential(nn.Linear(X_DIM, 4), nn.ReLU()), LATENT)
    with pytest.raises(TypeError, match="takes no argument"):
        FlowEncoder(net, LATENT, "planar", count_bins=4)
    with pytest.raises(TypeError, match="sets \\['context_dim'\\] itself"):
        FlowEncoder(net, LATENT, "iaf", context_dim=3)
    with pytest.raises(TypeError, match="no flow layers"):
        FlowEncoder(net, LATENT, "diagonal", num_transforms=2)
    with pytest.raises(ValueError, match="init_scale"):
        FlowEncoder(net, LATENT, init_scale=0.0)
    with pytest.raises(ValueError, match="context_dim=4 \\(or 0\\)"):
        FlowEncoder(net, LATENT, lambda d, c: flows.IAF(d, c + 1, num_transforms=1))
    with pytest.raises(TypeError, match="named flows only"):
        FlowEncoder(net, LATENT, lambda d, c: flows.IAF(d, c), num_transforms=3)


def test_input_errors_name_the_fix():
    enc = _encoder("iaf")
    with pytest.raises(ValueError, match=f"takes {X_DIM} features"):
        enc(torch.randn(3, X_DIM + 1))
    bad = torch.randn(3, X_DIM)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        enc(bad)
    wrong_size = FlowEncoder(nn.Linear(X_DIM, 5), LATENT, "diagonal", feature_dim=4)
    with pytest.raises(ValueError, match="feature_dim=4"):
        wrong_size(torch.randn(3, X_DIM))
    seq = FlowEncoder(nn.Sequential(nn.Linear(X_DIM, 4)), LATENT, "diagonal", feature_dim=4)
    with pytest.raises(ValueError, match="net\\(x\\) failed"):
        seq(torch.randn(3, X_DIM + 2))


def test_follows_dtype_of_to():
    enc = _encoder("spline_iaf").to(torch.float64)
    z, lp = enc(torch.randn(3, X_DIM, dtype=torch.float64)).rsample_and_log_prob()
    assert z.dtype == lp.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["iaf", "planar"])
def test_moves_to_cuda(name):
    enc = _encoder(name).to("cuda")
    z, lp = enc(torch.randn(3, X_DIM, device="cuda")).rsample_and_log_prob()
    assert z.device.type == lp.device.type == "cuda"


def test_vae_example_runs_with_a_tiny_budget():
    """examples/vae_mnist.py end to end (training, test ELBO, importance-weighted bound, pictures) on 200 images."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[3] / "examples" / "vae_mnist.py"
    spec = importlib.util.spec_from_file_location("vae_mnist_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    train, test, _ = example.load_mnist()
    assert train.shape == (5000, 784) and test.shape == (10000, 784)
    try:
        r = example.run_pyro("iaf", train[::25], example.binarize_fixed(test[:200]), epochs=1, warmup=1, iw_k=8,
                             iw_n=20)
    finally:
        pyroflows.set_validation(True)  # the example switches the input checks off
    assert r["samples"].shape == r["recon"].shape == (10, 784)
    for key in ("elbo", "train_elbo", "elbo_iw_subset", "log_px"):
        assert math.isfinite(r[key]) and -800 < r[key] < 0, key
    assert r["log_px"] >= r["elbo_iw_subset"] - 5.0  # the k=8 bound is at least about the ELBO
    # the KL warm-up (Rezende & Mohamed 2015): 0.01 + t/T per step, capped at 1; none with warmup=0
    np.testing.assert_allclose(example.kl_weights(0, 4, 2), [0.01, 0.135, 0.26, 0.385], rtol=1e-6)
    np.testing.assert_allclose(example.kl_weights(1, 4, 2), [0.51, 0.635, 0.76, 0.885], rtol=1e-6)
    np.testing.assert_array_equal(example.kl_weights(2, 4, 2), np.ones(4))
    np.testing.assert_array_equal(example.kl_weights(0, 4, 0), np.ones(4))
    # the report: one seed gives the paired difference over images, several give mean ± se over seeds
    shifted = {**r, "log_px": r["log_px"] - 1.0, "iw": r["iw"] - 1.0}
    one = example.table({"diagonal": [r], "iaf": [shifted]}, "pyro", 200, 1, 1, 8, 20, [0])
    assert "| iaf |" in one and "+1.00 ± 0.00 |" in one
    two = example.table({"diagonal": [r, r], "iaf": [shifted, {**r, "log_px": r["log_px"] - 3.0}]}, "pyro", 200,
                        1, 1, 8, 20, [0, 1])
    assert "+2.00 ± 1.00 |" in two and "mean ± standard error over seeds" in two

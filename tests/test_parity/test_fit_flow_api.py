"""What fit relies on, owned by the flows themselves (issue 18, sections 3 and 4), in both packages: ``Flow.initialize``
runs every data-dependent initialisation; ``log_prob`` takes what a Pyro/NumPyro user passes (lossless dtypes converted,
lossy ones and mismatched context batches refused naming the fix; lists in JAX, torch tensors refused naming
``.numpy()``); one decoder of saved transformer specs; ``FeatureMLP`` at home in ``nn``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import pyroflows as pf
from pyroflows.transforms import ActNorm, AutoregressiveTransform, DiagonalAffine

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
import jax.numpy as jnp  # noqa: E402

import numpyroflows as nf  # noqa: E402

X = np.random.default_rng(0).normal([3.0, -1.0], [2.0, 0.5], size=(400, 2))


# ============================================================================================ Flow.initialize
def test_flow_initialize_is_what_the_first_log_prob_does():
    torch.manual_seed(0)
    flow = pf.Flow([ActNorm(2), AutoregressiveTransform(2, hidden_dims=(8,)), ActNorm(2)])
    twin = copy.deepcopy(flow)
    x = torch.as_tensor(X, dtype=torch.float32)
    assert flow.requires_initialization
    assert flow.initialize(x) is flow and not flow.requires_initialization
    with torch.no_grad():
        twin().log_prob(x)  # initialises as a side effect
    for k, v in twin.state_dict().items():
        torch.testing.assert_close(flow.state_dict()[k], v, rtol=0, atol=0)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    flow.initialize(10 * x)  # already initialised: nothing changes
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())
    assert not pf.Flow([DiagonalAffine(2)]).requires_initialization
    pf.Flow([DiagonalAffine(2)]).initialize(x)  # nothing to initialise: fine


def test_numpyroflows_flow_initialize_is_pure_jittable_and_matches_pyroflows():
    torch.manual_seed(0)
    tflow = pf.Flow([ActNorm(2), AutoregressiveTransform(2, hidden_dims=(8,)), ActNorm(2)]).double()
    with jax.enable_x64(True):
        jflow = nf.Flow([nf.transforms.ActNorm(2), nf.transforms.AutoregressiveTransform(2, hidden_dims=(8,)),
                         nf.transforms.ActNorm(2)])
        jflow = nf.import_params(jflow, pf.export_params(tflow))
        assert jflow.requires_initialization
        out = jflow.initialize(X.tolist())  # lists are data
        jitted = jax.jit(lambda f, v: f.initialize(v))(jflow, jnp.asarray(X))
        assert not out.requires_initialization and jflow.requires_initialization  # a new flow; the old one unchanged
        tflow.initialize(torch.as_tensor(X))
        expected = pf.export_params(tflow)
        for k, v in nf.export_params(out).items():
            np.testing.assert_allclose(v, expected[k], rtol=1e-12, atol=1e-12, err_msg=k)
            np.testing.assert_allclose(np.asarray(jitted.params[k]), v, rtol=1e-12, atol=1e-12, err_msg=k)
        alias = nf.transforms.initialize_flow(jflow, jnp.asarray(X))  # kept for old code: the same
        assert all(np.array_equal(np.asarray(alias.params[k]), np.asarray(out.params[k])) for k in out.params)


# ============================================================================================ log_prob inputs (torch)
def test_log_prob_converts_lossless_dtypes_and_names_the_fix_for_lossy_ones():
    """Before: any dtype other than the flow's gave torch's bare ``mat1 and mat2 must have the same dtype``."""
    torch.manual_seed(0)
    flow = pf.flows.MAF(2, num_transforms=1, hidden_dims=(8,))
    counts = torch.tensor([[1, 2], [3, 0]])
    with torch.no_grad():
        torch.testing.assert_close(flow().log_prob(counts), flow().log_prob(counts.float()))  # int64: promoted
        with pytest.raises(TypeError, match=r"value is torch.float64 but the flow computes in torch.float32: call "
                                            r"flow.double\(\) .*or pass value.float\(\)"):
            flow().log_prob(counts.double())
    cflow = pf.flows.MAF(2, context_dim=1, num_transforms=1, hidden_dims=(8,))
    with pytest.raises(TypeError, match=r"context is torch.float64 .*context.float\(\)"):
        cflow(torch.zeros(2, 1, dtype=torch.float64))
    with torch.no_grad():
        assert cflow(torch.zeros(2, 1, dtype=torch.long)).log_prob(counts).shape == (2,)


def test_context_batch_that_does_not_match_the_data_names_both_shapes():
    """Before: a raw broadcast error from inside the conditioner (log_prob) or from ``Tensor.expand`` (a plate)."""
    import pyro

    torch.manual_seed(0)
    flow = pf.flows.MAF(2, context_dim=1, num_transforms=1, hidden_dims=(8,))
    d = flow(torch.zeros(5, 1))
    with pytest.raises(ValueError, match=r"value has batch shape \(7,\) \(shape \(7, 2\)\) but the context has batch "
                                         r"shape \(5,\) \(shape \(5, 1\)\).*a context of shape \(7, 1\)"):
        d.log_prob(torch.zeros(7, 2))
    assert d.log_prob(torch.zeros(3, 5, 2)).shape == (3, 5) and d.rsample((3,)).shape == (3, 5, 2)

    with pytest.raises(ValueError, match=r"cannot expand the distribution to batch shape \(7,\): its context has "
                                         r"batch shape \(5,\).*a context of shape \(7, 1\)"):
        d.expand((7,)).rsample()

    def model():  # inside a plate Pyro names the mismatch itself
        with pyro.plate("data", 7):
            pyro.sample("x", flow(torch.zeros(5, 1)))

    with pytest.raises(ValueError, match=r"Shape mismatch inside plate\('data'\)"):
        model()


# ============================================================================================ log_prob inputs (JAX)
def test_numpyroflows_log_prob_takes_lists_and_names_numpy_for_torch_tensors():
    """Before: ``isfinite requires ndarray`` for a list, a JAX interpretation error for a torch tensor."""
    flow = nf.flows.MAF(2, num_transforms=1, hidden_dims=(8,), key=jax.random.PRNGKey(0))
    lp = flow().log_prob(jnp.asarray(X[:3], jnp.float32))
    np.testing.assert_allclose(flow().log_prob(X[:3].tolist()), lp, rtol=1e-6)
    with pytest.raises(TypeError, match=r"value is a torch tensor.*value.detach\(\).cpu\(\).numpy\(\)"):
        flow().log_prob(torch.as_tensor(X[:3]))
    cflow = nf.flows.MAF(2, context_dim=1, num_transforms=1, hidden_dims=(8,), key=jax.random.PRNGKey(0))
    assert cflow([[0.0], [1.0], [2.0]]).log_prob(X[:3].tolist()).shape == (3,)
    with pytest.raises(TypeError, match=r"context is a torch tensor.*\.numpy\(\)"):
        cflow(torch.zeros(3, 1))


# ================================================================================== one decoder, FeatureMLP's home
def test_one_decoder_of_saved_transformer_specs_per_package():
    from numpyroflows.transforms import transformers as jtr
    from pyroflows.transforms import transformers as ttr

    saved = [{"__transformer__": {"name": "affine", "scale": "softplus"}}, {"__transformer__": "spline"}, 3]
    for tr in (ttr, jtr):
        affine, spline, three = tr.revive_transformers(saved)
        assert affine == tr.make_transformer("affine", scale="softplus") and spline.name == "spline" and three == 3
    t = pf.transforms.AutoregressiveTransform(2, {"name": "affine", "scale": "softplus"})
    assert pf.transforms.from_config(t.config()).transformer == t.transformer


def test_feature_mlp_lives_in_nn_and_is_still_exported_by_infer():
    assert pf.nn.FeatureMLP is pf.infer.FeatureMLP
    assert nf.nn.FeatureMLP is nf.infer.FeatureMLP


def test_standardisation_composes_with_the_trained_affine_in_float64():
    from flowcommon.fit import _standardize_stats

    x = np.random.default_rng(0).normal([1e6, -3.0], [2.0, 0.01], size=(1000, 2))
    std = _standardize_stats(x, False, np.finfo(np.float64).eps, 1e-3)
    np.testing.assert_allclose(std.apply(x).mean(0), 0.0, atol=1e-9)
    assert std.log_det == pytest.approx(np.log(x.std(0)).sum(), rel=1e-12)
    loc, scale = std.compose(np.array([0.5, 0.0]), np.array([2.0, 1.0]), 1e-3)
    np.testing.assert_allclose(loc, x.mean(0) + x.std(0) * [0.5, 0.0], rtol=1e-15)
    np.testing.assert_allclose(scale, x.std(0) * [2.0, 1.0], rtol=1e-15)
    with pytest.warns(RuntimeWarning, match=r"column\(s\) \[1\] fell to the floor 0.001"):
        _, scale = std.compose(np.zeros(2), np.array([1.0, 0.05]), 1e-3)  # 0.01 * 0.05 is below the floor
    assert scale[1] > 1e-3

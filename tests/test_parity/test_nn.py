"""The conditioners (MADE, MLP) in both packages. They zero their own output layer (what ``AutoFlowGuide``'s
exact-identity start needs, without the guide reading their parameter layout): afterwards a MADE or an MLP computes
its output bias for every input and context, and the two packages zero the same entries. A MADE needs a hidden
layer."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pyroflows.nn import MADE, MLP  # noqa: E402


def test_torch_made_zero_output_computes_its_output_bias():
    made = MADE(4, 3, hidden_dims=(8, 6), context_dim=2, output_bias=torch.tensor([0.5, -1.0, 2.0]))
    assert made.zero_output_() is made
    out = made(torch.randn(5, 4), torch.randn(5, 2))
    expected = torch.tensor([0.5, -1.0, 2.0]).expand(5, 4, 3)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    (w, b), *_ = reversed(made.layers())
    assert not w.any() and made.flat.requires_grad


@pytest.mark.parametrize("hidden_dims, context_dim", [((8,), 0), ((8, 8), 3), ((), 3), ((), 0)])
def test_torch_mlp_zero_output_computes_its_output_bias(hidden_dims, context_dim):
    net = MLP(4, 5, hidden_dims, context_dim=context_dim, output_bias=torch.arange(5.0))
    net.zero_output_()
    context = torch.randn(7, context_dim) if context_dim else None
    torch.testing.assert_close(net(torch.randn(7, 4), context), torch.arange(5.0).expand(7, 5), atol=0, rtol=0)


def test_jax_conditioners_zero_the_same_entries_as_torch():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp

    from numpyroflows.nn.made import made_apply, made_init, made_zero_output
    from numpyroflows.nn.mlp import mlp_apply, mlp_init, mlp_zero_output

    key = jax.random.PRNGKey(0)
    params = {f"made.{k}": v for k, v in made_init(key, 4, 3, (8, 6), 2, output_bias=jnp.array([0.5, -1.0, 2.0]))
              .items()}
    params["other"] = jnp.ones(2)
    zeroed = made_zero_output(params, input_dim=4, num_params=3, hidden_dims=(8, 6), prefix="made.")
    assert zeroed["other"] is params["other"] and params["made.flat"] is not zeroed["made.flat"]
    out = made_apply({k[5:]: v for k, v in zeroed.items() if k.startswith("made.")}, jnp.ones((5, 4)),
                     jnp.ones((5, 2)), input_dim=4, num_params=3, hidden_dims=(8, 6))
    np.testing.assert_array_equal(np.asarray(out), np.broadcast_to([0.5, -1.0, 2.0], (5, 4, 3)))
    torch_made = MADE(4, 3, hidden_dims=(8, 6), context_dim=2)
    with torch.no_grad():
        torch_made.flat.fill_(1.0)
    changed = np.flatnonzero(np.asarray(zeroed["made.flat"]) != np.asarray(params["made.flat"]))
    torch_zeroed = np.flatnonzero(torch_made.zero_output_().flat.detach().numpy() == 0.0)
    assert set(changed) <= set(torch_zeroed)
    assert torch_zeroed.size == 4 * 3 * 6

    for hidden in ((8,), ()):
        net = mlp_init(key, 4, 5, hidden, 3, output_bias=jnp.arange(5.0))
        out = mlp_apply(mlp_zero_output(net), jnp.ones((7, 4)), jnp.ones((7, 3)))
        np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(np.arange(5.0), (7, 5)))


def test_made_without_a_hidden_layer_is_refused_in_both_packages():
    """pyroflows refused it; numpyroflows built it and failed later with a dot_general shape error."""
    with pytest.raises(ValueError, match="at least one hidden layer"):
        MADE(3, 2, hidden_dims=())
    jax = pytest.importorskip("jax")
    from numpyroflows.nn import made_init

    with pytest.raises(ValueError, match="at least one hidden layer"):
        made_init(jax.random.PRNGKey(0), 3, 2, ())

"""ResidualBlock and the layer registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ssmjax.nn as snn
from ssmjax.nn.blocks import ACTIVATIONS, NORMS, ResidualBlock
from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

D = 6


def make_block(activation="half_glu2", norm="batch", prenorm=True, dropout=0.0, seed=0):
    return ResidualBlock(
        "s5",
        D,
        norm=norm,
        prenorm=prenorm,
        activation=activation,
        dropout=dropout,
        layer_kwargs={"d_state": 8, "implementation": "associative"},
        rngs=nnx.Rngs(seed),
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("norm", NORMS)
def test_shapes_and_gradients(key, activation, norm):
    block = make_block(activation, norm)
    x = jax.random.normal(key, (2, 17, D))
    grads = nnx.grad(lambda b: jnp.mean(b(x) ** 2))(block)
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    assert block(x).shape == x.shape


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_step_equals_full_sequence_in_eval_mode(key, prenorm, norm):
    block = make_block(norm=norm, prenorm=prenorm)
    x = jax.random.normal(key, (2, 12, D))
    block(x)  # one train-mode call moves the BatchNorm running statistics off their init
    block.eval()
    y = block(x)
    state, ys = block.init_state(2), []
    for t in range(12):
        y_t, state = block.step(x[:, t], state)
        ys.append(y_t)
    assert_allclose(jnp.stack(ys, 1), y, n=12)


def test_masked_batch_equals_each_sequence_in_eval_mode(key):
    block = make_block(activation="full_glu")
    x = jax.random.normal(key, (2, 15, D))
    mask = jnp.arange(15)[None] < jnp.array([[15], [9]])
    block(x, mask)
    block.eval()
    y = block(x, mask)
    assert_allclose(y[1, :9], block(x[1:, :9])[0], n=15)
    assert jnp.all(y[1, 9:] == 0)


def test_batchnorm_statistics_ignore_padding(key):
    """Train-mode BatchNorm over a padded batch uses only the real tokens."""
    x = jax.random.normal(key, (2, 10, D))
    mask = jnp.arange(10)[None] < jnp.array([[10], [4]])
    padded = x.at[1, 4:].set(1e3)  # huge values in the padding must not matter
    a, b = make_block(seed=1), make_block(seed=1)
    assert_allclose(a(padded, mask), b(x, mask), n=10)


def test_dropout_is_tied_over_time(key):
    block = make_block(activation="gelu", norm="none", dropout=0.5)
    block.layer = _Identity()
    x = jnp.ones((3, 20, D))
    y = block(x) - x  # = dropout(gelu(x))
    kept = np.asarray(y != 0)
    assert kept.any() and not kept.all()
    assert np.all(kept == kept[:, :1, :]), "one mask per (sequence, feature), shared over time"
    block.eval()
    assert_allclose(block(x) - x, jax.nn.gelu(x))


class _Identity(nnx.Module):
    def __call__(self, x, mask=None, *, state=None, return_state=False):
        return x


def test_registry():
    assert snn.get_layer("S5") is snn.S5
    assert {"s5", "lru"} <= set(snn.list_layers())
    with pytest.raises(ValueError, match="unknown layer"):
        snn.get_layer("transformer")


def test_bad_block_config():
    with pytest.raises(ValueError, match="norm must be"):
        make_block(norm="group")
    with pytest.raises(ValueError, match="activation must be"):
        make_block(activation="relu")

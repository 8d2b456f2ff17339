"""Every layer's modes agree: full sequence == step by step == chunks with carried state,
padded batches with a mask == each sequence alone, and gradients reach every parameter."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_cases import D_MODEL, LAYERS, apply, build

from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

LENGTHS = [1, 33, 512]


def random_input(key, batch, length, dtype=jnp.float32):
    return jax.random.normal(key, (batch, length, D_MODEL)).astype(dtype)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("length", LENGTHS)
def test_full_equals_step_and_chunks(key, name, length):
    # The full sequence runs the parallel (associative) form; steps are the recurrence.
    layer = build(name, implementation="associative")
    x = random_input(key, 2, length)
    y_full, final = apply(layer, x, return_state=True)
    assert y_full.shape == x.shape and y_full.dtype == x.dtype

    @nnx.jit
    def run_steps(layer, x, state):
        def body(state, x_t):
            y_t, state = layer.step(x_t, state)
            return state, y_t

        state, ys = jax.lax.scan(body, state, jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(ys, 0, 1), state

    ys, state = run_steps(layer, x, layer.init_state(2))
    assert_allclose(ys, y_full, n=length)
    assert_allclose(state, final, n=length)

    cuts = sorted({0, length // 3, (2 * length) // 3 + 1, length})
    state, pieces = layer.init_state(2), []
    for lo, hi in itertools.pairwise(cuts):
        if hi > lo:
            y, state = apply(layer, x[:, lo:hi], state=state, return_state=True)
            pieces.append(y)
    assert_allclose(jnp.concatenate(pieces, 1), y_full, n=length)
    assert_allclose(state, final, n=length)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("implementation", ["sequential", "associative", "chunked"])
def test_padded_batch_equals_each_sequence_alone(key, name, bidirectional, implementation):
    layer = build(name, bidirectional=bidirectional, implementation=implementation)
    lengths = [37, 20, 1]
    total = 41
    x = random_input(key, len(lengths), total)  # padding holds random values, not zeros
    mask = jnp.arange(total)[None, :] < jnp.asarray(lengths)[:, None]
    y = apply(layer, x, mask)
    for i, n in enumerate(lengths):
        alone = apply(layer, x[i : i + 1, :n])
        assert_allclose(y[i, :n], alone[0], n=total, err_msg=f"sequence {i}")
        assert jnp.all(y[i, n:] == 0)
    if not bidirectional:
        _, state = apply(layer, x, mask, return_state=True)
        for i, n in enumerate(lengths):
            _, alone = apply(layer, x[i : i + 1, :n], return_state=True)
            assert_allclose(state[i], alone[0], n=total)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_implementations_agree(key, name, bidirectional):
    x = random_input(key, 2, 65)
    ref = apply(build(name, bidirectional, "sequential"), x)
    for impl in ("associative", "chunked"):
        assert_allclose(apply(build(name, bidirectional, impl), x), ref, n=65, err_msg=impl)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_reach_every_parameter(key, name, dtype):
    layer = build(name, bidirectional=True, implementation="associative")
    x = random_input(key, 2, 33, dtype)

    def loss(layer):
        return jnp.mean(layer(x).astype(jnp.float32) ** 2)

    grads = nnx.jit(nnx.grad(loss))(layer)
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param)):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name", LAYERS)
def test_bad_inputs_raise_clear_errors(name):
    layer = build(name)
    with pytest.raises(ValueError, match="x must have shape"):
        layer(jnp.ones((2, 5, D_MODEL + 1)))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(jnp.ones((2, 5, D_MODEL)), mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="state must have shape"):
        layer(jnp.ones((2, 5, D_MODEL)), state=jnp.zeros((3, 1), jnp.complex64))
    bidir = build(name, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        bidir.init_state(2)
    with pytest.raises(ValueError, match="bidirectional"):
        bidir.step(jnp.ones((2, D_MODEL)), layer.init_state(2))

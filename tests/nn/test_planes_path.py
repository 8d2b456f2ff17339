"""The diagonal layers' planes path (taken when the Pallas kernel is tried first; here the
kernel runs in interpret mode) equals their complex path with the sequential reference:
outputs, final states, masks, both directions and the gradients of every parameter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_cases import D_MODEL, build

import ssmjax.nn as snn
from ssmjax.ops.scan import pallas_first
from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")


def _build(name, bidirectional, implementation):
    if name == "s4d_scan":  # S4D's full-sequence recurrence (its default is the FFT conv)
        return snn.S4D(
            D_MODEL,
            8,
            mode="scan",
            bidirectional=bidirectional,
            implementation=implementation,
            rngs=nnx.Rngs(0),
        )
    return build(name, bidirectional, implementation)


def test_pallas_first():
    assert pallas_first("pallas") and pallas_first(["pallas", "associative"])
    assert not pallas_first("associative") and not pallas_first(["chunked", "pallas"])
    assert pallas_first(None) == (jax.default_backend() == "gpu")


@pytest.mark.parametrize(
    ("name", "bidirectional"),
    [("s5", True), ("s5_bilinear", False), ("lru", True), ("s4d_scan", False)],
)
def test_planes_path_equals_sequential(key, name, bidirectional):
    length = 13
    kx, ks = jax.random.split(key)
    x = jax.random.normal(kx, (3, length, D_MODEL))
    mask = jnp.arange(length)[None, :] < jnp.asarray([13, 8, 3])[:, None]
    planes = _build(name, bidirectional, "pallas")
    ref = _build(name, bidirectional, "sequential")

    assert_allclose(planes(x, mask=mask), ref(x, mask=mask), n=length)
    if not bidirectional:
        state = ref.init_state(3) + jax.lax.complex(
            *jax.random.normal(ks, (2, 3, *ref.state_shape()))
        )
        y, last = planes(x, state=state, return_state=True)
        y_ref, last_ref = ref(x, state=state, return_state=True)
        assert_allclose(y, y_ref, n=length)
        assert_allclose(last, last_ref, n=length)

    def loss(layer):
        return jnp.mean(layer(x, mask=mask) ** 2)

    g = nnx.state(nnx.grad(loss)(planes), nnx.Param)
    g_ref = nnx.state(nnx.grad(loss)(ref), nnx.Param)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(g), jax.tree_util.tree_leaves(g_ref), strict=True
    ):
        assert np.any(np.asarray(a) != 0), path
        assert_allclose(a, b, n=length, kind="grad", err_msg=jax.tree_util.keystr(path))

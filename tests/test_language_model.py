"""LanguageModel: cached generation equals recomputing the full sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssmjax.models import LanguageModel

pytestmark = pytest.mark.usefixtures("fast_compile")  # (compile-bound tiny models)

LAYERS = {
    "mamba": {"d_state": 4, "expand": 2},
    "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8},
    "gla": {"num_heads": 2},
    "s5": {"d_state": 8},
}


@pytest.mark.parametrize("layer", LAYERS)
def test_generate_with_cache_equals_recomputation(layer):
    lm = LanguageModel(
        layer=layer,
        vocab_size=17,
        d_model=16,
        n_layers=2,
        layer_kwargs=LAYERS[layer],
        rngs=nnx.Rngs(0),
    )
    prompt = jax.random.randint(jax.random.key(1), (2, 5), 0, 17)
    generated = lm.generate(prompt, max_new_tokens=32)
    assert generated.shape == (2, 37)
    # Recompute the whole (causal) sequence for every new token. One fixed-length buffer
    # keeps it to one compilation: logits at position t only see tokens <= t.
    forward = nnx.jit(lambda m, t: m(t))
    seq = jnp.zeros((2, 37), prompt.dtype).at[:, :5].set(prompt)
    for t in range(5, 37):
        nxt = jnp.argmax(forward(lm, seq)[:, t - 1], axis=-1).astype(seq.dtype)
        seq = seq.at[:, t].set(nxt)
    np.testing.assert_array_equal(generated, seq)


def test_sampling_and_errors():
    lm = LanguageModel(
        layer="mamba",
        vocab_size=11,
        d_model=8,
        n_layers=1,
        layer_kwargs={"d_state": 4},
        rngs=nnx.Rngs(0),
    )
    prompt = jnp.ones((1, 3), jnp.int32)
    a = lm.generate(prompt, 8, temperature=1.0, key=jax.random.key(0))
    b = lm.generate(prompt, 8, temperature=1.0, key=jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert int(a.max()) < 11
    with pytest.raises(ValueError, match="needs a key"):
        lm.generate(prompt, 2, temperature=1.0)
    with pytest.raises(ValueError, match="causal"):
        LanguageModel(
            layer="mamba",
            vocab_size=11,
            d_model=8,
            n_layers=1,
            layer_kwargs={"bidirectional": True},
            rngs=nnx.Rngs(0),
        )


def test_output_projection_rescaled():
    kw = dict(layer="mamba", vocab_size=11, d_model=8, layer_kwargs={"d_state": 4})
    one = LanguageModel(n_layers=1, rngs=nnx.Rngs(0), **kw)
    four = LanguageModel(n_layers=4, rngs=nnx.Rngs(0), **kw)
    w1 = one.blocks[0].mixer.out_proj.kernel[...]
    w4 = four.blocks[0].mixer.out_proj.kernel[...]
    np.testing.assert_allclose(w4 * 2.0, w1, rtol=1e-6)

"""A causal language model over any registered layer, with cached O(1)-per-token generation."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssmjax.nn._base import get_layer

__all__ = ["LanguageModel"]


class _Block(nnx.Module):
    """``x + mixer(RMSNorm(x))`` with the residual stream kept in float32."""

    def __init__(self, layer: str, d_model: int, layer_kwargs: dict, dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.norm = nnx.RMSNorm(d_model, epsilon=1e-5, rngs=rngs)
        self.mixer = get_layer(layer)(d_model, **layer_kwargs, rngs=rngs)

    def __call__(self, x, mask, state, return_state):
        h = self.norm(x).astype(self.dtype)
        out = self.mixer(h, mask, state=state, return_state=return_state)
        y, state = out if return_state else (out, None)
        return x + y.astype(jnp.float32), state

    def step(self, x_t, state):
        y, state = self.mixer.step(self.norm(x_t).astype(self.dtype), state)
        return x_t + y.astype(jnp.float32), state


class LanguageModel(nnx.Module):
    r"""Embedding -> ``n_layers`` pre-RMSNorm residual blocks of any layer -> RMSNorm -> tied head.

    As Mamba's ``MambaLMHeadModel``: residual stream in float32, embeddings ~ N(0, 0.02),
    the head tied to the embedding, and GPT-2-style rescaling of each block's output
    projection (``out_proj``/``o_proj``) by ``1/sqrt(n_layers)``. Layers must be causal
    (``bidirectional=False``). ``generate`` prefills the prompt with one full-sequence call
    that returns the state, then decodes with ``step`` inside one jitted loop.

    Args:
      layer: registered layer name (``"mamba"``, ``"mamba2"``, ``"gla"``, ``"s5"``...).
      vocab_size: number of tokens.
      d_model: width.
      n_layers: number of blocks.
      layer_kwargs: keyword arguments of the layer.
      dtype: activation dtype inside the blocks (the residual stream stays float32).
      rngs: ``nnx.Rngs``.

    >>> import jax.numpy as jnp
    >>> lm = LanguageModel(layer="mamba", vocab_size=32, d_model=16, n_layers=2,
    ...                    layer_kwargs={"d_state": 4}, rngs=nnx.Rngs(0))
    >>> lm(jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 32)
    >>> lm.generate(jnp.zeros((2, 3), jnp.int32), max_new_tokens=4).shape
    (2, 7)
    """

    def __init__(
        self,
        *,
        layer: str,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        layer_kwargs: dict[str, Any] | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        layer_kwargs = dict(layer_kwargs or {})
        if layer_kwargs.get("bidirectional"):
            raise ValueError("LanguageModel: layers must be causal (bidirectional=False)")
        self.vocab_size, self.n_layers = vocab_size, n_layers
        self.embed = nnx.Embed(
            vocab_size, d_model, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
        )
        self.blocks = nnx.List(
            [_Block(layer, d_model, layer_kwargs, dtype, rngs) for _ in range(n_layers)]
        )
        for block in self.blocks:
            for name in ("out_proj", "o_proj"):
                proj = getattr(block.mixer, name, None)
                if proj is not None:
                    proj.kernel[...] = proj.kernel[...] / np.sqrt(n_layers)
        self.norm_f = nnx.RMSNorm(d_model, epsilon=1e-5, rngs=rngs)

    def _head(self, x):
        return self.embed.attend(self.norm_f(x)).astype(jnp.float32)

    def __call__(self, tokens, mask=None, *, state=None, return_state: bool = False):
        """``tokens``: ``(b, l)`` int. Returns logits ``(b, l, vocab)`` (and the states)."""
        x = self.embed(tokens).astype(jnp.float32)
        states = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, mask, None if state is None else state[i], return_state)
            states.append(s)
        logits = self._head(x)
        return (logits, states) if return_state else logits

    def init_state(self, batch_size: int) -> list:
        """Zero states of every block."""
        return [block.mixer.init_state(batch_size) for block in self.blocks]

    def step(self, token_t, state):
        """One token ``(b,)`` -> logits ``(b, vocab)`` and the new states."""
        x = self.embed(token_t).astype(jnp.float32)
        new = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new.append(s)
        return self._head(x), new

    def generate(
        self,
        prompt: jax.Array,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Continues ``prompt`` (``(b, l)`` int, ``l >= 1``) by ``max_new_tokens`` tokens.

        Greedy when ``temperature == 0``, else sampled with ``key``. The prompt is processed
        in one parallel call; each new token costs one O(1) ``step`` in a jitted loop.

        Returns:
          ``(b, l + max_new_tokens)`` tokens.
        """
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be (batch, length >= 1); got {prompt.shape}")
        if temperature > 0 and key is None:
            raise ValueError("sampling (temperature > 0) needs a key")
        key = jax.random.key(0) if key is None else key
        graphdef, params = nnx.split(self)
        return _generate(graphdef, params, prompt, key, max_new_tokens, float(temperature))


def _pick(logits, key, temperature):
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _generate(graphdef, params, prompt, key, max_new_tokens, temperature):
    model = nnx.merge(graphdef, params)
    logits, state = model(prompt, return_state=True)
    key, sub = jax.random.split(key)
    first = _pick(logits[:, -1], sub, temperature)

    def body(carry, _):
        token, state, key = carry
        logits, state = model.step(token, state)
        key, sub = jax.random.split(key)
        nxt = _pick(logits, sub, temperature)
        return (nxt, state, key), token

    _, tokens = jax.lax.scan(body, (first, state, key), None, length=max_new_tokens)
    return jnp.concatenate([prompt, jnp.moveaxis(tokens, 0, 1).astype(prompt.dtype)], axis=1)

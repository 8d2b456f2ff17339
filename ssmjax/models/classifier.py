"""Sequence classifiers for LRA and sequential-image tasks."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssmjax.nn.blocks import ResidualBlock

__all__ = ["RetrievalClassifier", "SequenceClassifier", "masked_pool"]


def masked_pool(x: jax.Array, mask: jax.Array | None, mode: str) -> jax.Array:
    """Pools ``x: (b, l, d)`` over real tokens: ``"mean"`` or ``"last"`` (last real token).

    >>> x = jnp.arange(6.0).reshape(1, 3, 2)
    >>> masked_pool(x, jnp.array([[True, True, False]]), "mean")
    Array([[1., 2.]], dtype=float32)
    """
    if mode == "mean":
        if mask is None:
            return jnp.mean(x, axis=1)
        m = mask[..., None].astype(x.dtype)
        return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    if mode == "last":
        if mask is None:
            return x[:, -1]
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"pooling must be 'mean' or 'last'; got {mode!r}")


class _Encoder(nnx.Module):
    """Token embedding or dense input projection, then a stack of residual blocks."""

    def __init__(
        self,
        *,
        layer: str,
        d_model: int,
        n_layers: int,
        vocab_size: int | None,
        d_input: int | None,
        norm: str,
        prenorm: bool,
        activation: str,
        dropout: float,
        bn_momentum: float,
        layer_kwargs: dict[str, Any] | None,
        rngs: nnx.Rngs,
    ):
        if (vocab_size is None) == (d_input is None):
            raise ValueError("give exactly one of vocab_size (tokens) or d_input (features)")
        if vocab_size is not None:
            self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
        else:
            self.embed = nnx.Linear(d_input, d_model, rngs=rngs)
        self.tokens = vocab_size is not None
        self.blocks = nnx.List(
            [
                ResidualBlock(
                    layer,
                    d_model,
                    norm=norm,
                    prenorm=prenorm,
                    activation=activation,
                    dropout=dropout,
                    bn_momentum=bn_momentum,
                    layer_kwargs=layer_kwargs,
                    rngs=rngs,
                )
                for _ in range(n_layers)
            ]
        )

    def __call__(self, inputs, mask):
        x = self.embed(inputs) if self.tokens else self.embed(inputs.astype(jnp.float32))
        for block in self.blocks:
            x = block(x, mask)
        return x


class SequenceClassifier(nnx.Module):
    r"""Encoder (embedding or dense) -> ``n_layers`` residual SSM blocks -> pool -> linear.

    The model of the S4/S5/LRU LRA and sequential-image experiments, for any registered
    layer (``"s4"``, ``"s4d"``, ``"s5"``, ``"lru"``, ``"mamba"``, ...).

    Args:
      layer: registered layer name.
      d_model: model width ``H``.
      n_layers: number of residual blocks.
      num_classes: output classes.
      vocab_size: token vocabulary (token inputs ``(b, l)`` int), or None.
      d_input: input channels (inputs ``(b, l, d_input)`` float), or None.
      pooling: ``"mean"`` (masked) or ``"last"``.
      norm: block norm (``"batch"``, ``"layer"``, ``"rms"``, ``"none"``).
      prenorm: pre- or post-norm blocks.
      activation: block output variant (see :data:`ssmjax.nn.blocks.ACTIVATIONS`).
      dropout: dropout rate inside the blocks.
      bn_momentum: BatchNorm momentum.
      layer_kwargs: keyword arguments of the layer (``d_state``, ``bidirectional``...).
      rngs: ``nnx.Rngs`` with ``params`` and ``dropout`` streams.

    >>> import jax.numpy as jnp
    >>> model = SequenceClassifier(layer="s5", d_model=8, n_layers=2, num_classes=10,
    ...                            d_input=1, layer_kwargs={"d_state": 8}, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((4, 40, 1))).shape
    (4, 10)
    """

    def __init__(
        self,
        *,
        layer: str,
        d_model: int,
        n_layers: int,
        num_classes: int,
        vocab_size: int | None = None,
        d_input: int | None = None,
        pooling: str = "mean",
        norm: str = "batch",
        prenorm: bool = True,
        activation: str = "half_glu2",
        dropout: float = 0.0,
        bn_momentum: float = 0.9,
        layer_kwargs: dict[str, Any] | None = None,
        rngs: nnx.Rngs,
    ):
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last'; got {pooling!r}")
        self.pooling = pooling
        self.encoder = _Encoder(
            layer=layer,
            d_model=d_model,
            n_layers=n_layers,
            vocab_size=vocab_size,
            d_input=d_input,
            norm=norm,
            prenorm=prenorm,
            activation=activation,
            dropout=dropout,
            bn_momentum=bn_momentum,
            layer_kwargs=layer_kwargs,
            rngs=rngs,
        )
        self.decoder = nnx.Linear(d_model, num_classes, rngs=rngs)

    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``inputs``: ``(b, l)`` tokens or ``(b, l, d_input)``; ``mask``: ``(b, l)``.

        Returns:
          logits ``(b, num_classes)`` float32.
        """
        x = self.encoder(inputs, mask)
        return self.decoder(masked_pool(x, mask, self.pooling).astype(jnp.float32))


class RetrievalClassifier(nnx.Module):
    r"""Dual encoder for LRA Retrieval: one shared encoder over both documents, then an MLP
    on ``[a, b, a - b, a * b]`` of the two mean-pooled encodings (the S5/LRA head).

    Inputs are pairs ``(b, 2, l)`` of token sequences with a mask ``(b, 2, l)``. Other
    arguments as :class:`SequenceClassifier`.

    >>> import jax.numpy as jnp
    >>> model = RetrievalClassifier(layer="s5", d_model=8, n_layers=1, num_classes=2,
    ...                             vocab_size=16, layer_kwargs={"d_state": 8},
    ...                             rngs=nnx.Rngs(0))
    >>> model(jnp.ones((3, 2, 12), jnp.int32)).shape
    (3, 2)
    """

    def __init__(
        self,
        *,
        layer: str,
        d_model: int,
        n_layers: int,
        num_classes: int = 2,
        vocab_size: int,
        norm: str = "batch",
        prenorm: bool = True,
        activation: str = "half_glu1",
        dropout: float = 0.0,
        bn_momentum: float = 0.9,
        layer_kwargs: dict[str, Any] | None = None,
        rngs: nnx.Rngs,
    ):
        self.encoder = _Encoder(
            layer=layer,
            d_model=d_model,
            n_layers=n_layers,
            vocab_size=vocab_size,
            d_input=None,
            norm=norm,
            prenorm=prenorm,
            activation=activation,
            dropout=dropout,
            bn_momentum=bn_momentum,
            layer_kwargs=layer_kwargs,
            rngs=rngs,
        )
        self.hidden = nnx.Linear(4 * d_model, d_model, rngs=rngs)
        self.out = nnx.Linear(d_model, num_classes, rngs=rngs)

    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``inputs``: ``(b, 2, l)`` tokens; ``mask``: ``(b, 2, l)``. Returns ``(b, classes)``."""
        b, two, length = inputs.shape
        if two != 2:
            raise ValueError(f"RetrievalClassifier: inputs must be (b, 2, l); got {inputs.shape}")
        flat_mask = None if mask is None else mask.reshape(2 * b, length)
        # Both documents go through the encoder as one batch (one BatchNorm statistic).
        x = self.encoder(inputs.reshape(2 * b, length), flat_mask)
        pooled = masked_pool(x, flat_mask, "mean").reshape(b, 2, -1).astype(jnp.float32)
        a, c = pooled[:, 0], pooled[:, 1]
        features = jnp.concatenate([a, c, a - c, a * c], axis=-1)
        return self.out(jax.nn.gelu(self.hidden(features)))

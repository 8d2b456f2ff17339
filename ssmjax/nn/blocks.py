"""The residual block of the LRA models (S4, S5, LRU): norm -> SSM -> output gate -> residual."""

from typing import Any

import jax
from flax import nnx

from ssmjax.nn._base import apply_mask, get_layer

__all__ = ["ACTIVATIONS", "NORMS", "ResidualBlock"]

#: Output variants after the sequence layer (``y`` its output, ``g = GELU(y)``):
#: ``"gelu"``: g; ``"glu"`` (S4): ``GLU(Linear_{H->2H}(g))``; ``"full_glu"`` (S5, LRU):
#: ``W1 g * sigmoid(W2 g)``; ``"half_glu1"`` (S5): ``g * sigmoid(W g)``; ``"half_glu2"`` (S5):
#: ``y * sigmoid(W g)``; ``"none"``: y.
ACTIVATIONS = ("gelu", "glu", "full_glu", "half_glu1", "half_glu2", "none")
NORMS = ("batch", "layer", "rms", "none")


class ResidualBlock(nnx.Module):
    r"""``x + dropout(out(layer(norm(x))))`` (prenorm) or ``norm(x + ...)`` (postnorm).

    The block the S4, S5 and LRU papers use on LRA: BatchNorm (or LayerNorm/RMSNorm) before
    or after the residual, any registered sequence layer, GELU and one of the GLU output
    variants of :data:`ACTIVATIONS`, and dropout *tied over time* (one mask per sequence
    and feature, broadcast along the length, S4's ``tie_dropout``).

    Masks: BatchNorm statistics are taken over real tokens only, the sequence layer skips
    padded steps, and outputs at padded positions are zero — so a padded batch gives the
    unpadded outputs on real tokens (in eval mode; in train mode BatchNorm couples the batch
    by design).

    Args:
      layer: a registered layer name (``"s5"``, ``"s4"``...) or a layer instance.
      d_model: features ``H``.
      norm: ``"batch"``, ``"layer"``, ``"rms"`` or ``"none"``.
      prenorm: normalise the block input (True) or the residual sum (False).
      activation: output variant, see :data:`ACTIVATIONS`.
      dropout: dropout rate.
      tie_dropout: share the dropout mask over time.
      bn_momentum: BatchNorm running-average momentum.
      layer_kwargs: keyword arguments for the layer when ``layer`` is a name.
      rngs: ``nnx.Rngs`` with ``params`` (and ``dropout`` when ``dropout > 0``) streams.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> block = ResidualBlock("s5", 8, layer_kwargs={"d_state": 8}, rngs=nnx.Rngs(0))
    >>> block(jnp.ones((2, 16, 8))).shape
    (2, 16, 8)
    """

    def __init__(
        self,
        layer: str | nnx.Module,
        d_model: int,
        *,
        norm: str = "batch",
        prenorm: bool = True,
        activation: str = "half_glu2",
        dropout: float = 0.0,
        tie_dropout: bool = True,
        bn_momentum: float = 0.9,
        layer_kwargs: dict[str, Any] | None = None,
        rngs: nnx.Rngs,
    ):
        if norm not in NORMS:
            raise ValueError(f"ResidualBlock: norm must be one of {NORMS}; got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"ResidualBlock: activation must be one of {ACTIVATIONS}; got {activation!r}"
            )
        if isinstance(layer, str):
            layer = get_layer(layer)(d_model, **(layer_kwargs or {}), rngs=rngs)
        elif layer_kwargs:
            raise ValueError("ResidualBlock: layer_kwargs only apply when layer is a name")
        self.layer = layer
        self.d_model, self.prenorm, self.activation = d_model, prenorm, activation
        self.norm_kind = norm
        if norm == "batch":
            self.norm = nnx.BatchNorm(d_model, momentum=bn_momentum, rngs=rngs)
        elif norm == "layer":
            self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        elif norm == "rms":
            self.norm = nnx.RMSNorm(d_model, rngs=rngs)
        else:
            self.norm = None
        n_out = {
            "glu": 2 * d_model,
            "full_glu": d_model,
            "half_glu1": d_model,
            "half_glu2": d_model,
        }.get(activation)
        self.out1 = nnx.Linear(d_model, n_out, rngs=rngs) if n_out else None
        self.out2 = nnx.Linear(d_model, d_model, rngs=rngs) if activation == "full_glu" else None
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1,) if tie_dropout else (), rngs=rngs)

    def _norm(self, x, mask):
        if self.norm is None:
            return x
        if self.norm_kind == "batch":
            m = None if mask is None else mask[..., None]
            return self.norm(x, mask=m)
        return self.norm(x)

    def _output(self, y):
        act = self.activation
        if act == "none":
            return y
        g = jax.nn.gelu(y)
        if act == "gelu":
            return self.dropout(g)
        if act == "glu":
            return self.dropout(jax.nn.glu(self.out1(self.dropout(g)), axis=-1))
        if act == "full_glu":
            g = self.dropout(g)
            return self.dropout(self.out1(g) * jax.nn.sigmoid(self.out2(g)))
        if act == "half_glu1":
            g = self.dropout(g)
            return self.dropout(g * jax.nn.sigmoid(self.out1(g)))
        # half_glu2
        return self.dropout(y * jax.nn.sigmoid(self.out1(self.dropout(g))))

    def __call__(self, x, mask=None, *, state=None, return_state: bool = False):
        """Applies the block.

        Args:
          x: ``(b, l, d_model)``.
          mask: optional ``(b, l)`` bool, True at real tokens.
          state: optional state of the inner layer (streaming).
          return_state: also return the inner layer's final state.

        Returns:
          ``(b, l, d_model)`` (and the state when ``return_state``).
        """
        skip = x
        h = self._norm(x, mask) if self.prenorm else x
        out = self.layer(h, mask, state=state, return_state=return_state)
        y, new_state = out if return_state else (out, None)
        y = self._output(y)
        x = skip + y.astype(skip.dtype)
        if not self.prenorm:
            x = self._norm(x, mask)
        x = apply_mask(x, mask)
        return (x, new_state) if return_state else x

    def init_state(self, batch_size: int):
        """The inner layer's zero state."""
        return self.layer.init_state(batch_size)

    def step(self, x_t: jax.Array, state):
        """One token (``(b, d_model)``) through the block; BatchNorm uses running statistics."""
        h = self._norm_token(x_t) if self.prenorm else x_t
        y, state = self.layer.step(h, state)
        x = x_t + self._output(y[:, None])[:, 0].astype(x_t.dtype)
        if not self.prenorm:
            x = self._norm_token(x)
        return x, state

    def _norm_token(self, x):
        if self.norm is None:
            return x
        if self.norm_kind == "batch":
            return self.norm(x[:, None], use_running_average=True)[:, 0]
        return self.norm(x[:, None])[:, 0]

"""What the selective (input-dependent) layers Mamba, Mamba-2 and GLA share.

* :class:`SelectiveState` — the recurrent state: a short-convolution cache and the SSM state.
* :class:`SelectiveLayer` — the one layer interface (full sequence with mask, state in and
  out, ``init_state``, ``step``, bidirectional) around four methods a layer supplies:
  ``_project_in`` (position-wise, shared by both directions), ``_mix`` (one direction over a
  sequence), ``_mix_step`` (one direction, one token) and ``_project_out``.
* Padding helpers: per-sequence reversal, the conv cache after each sequence's last real
  token, and the suffix-padding check.
* Building blocks: PyTorch-default linear layers applied in the activation dtype, the
  Mamba ``dt`` bias init, and the (grouped) gated RMSNorm.

Masks are *suffix padding* for these layers (``mask`` True on a prefix of each row, the
LRA/LM convention): the short causal convolution sees zeros at padded positions, which is
what the unpadded sequence sees only when the padding comes after its last real token.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssmjax.nn._base import apply_mask, check_has_state, check_sequence
from ssmjax.ops.conv1d import causal_conv1d

__all__ = [
    "ReverseParams",
    "SelectiveLayer",
    "SelectiveState",
    "check_dt_range",
    "check_suffix_padding",
    "conv_init",
    "dense",
    "dt_bias_init",
    "expand_to_rank",
    "gated_rms_norm",
    "lengths_from_mask",
    "linear",
    "reverse_sequences",
    "short_conv",
    "torch_default_init",
]


class SelectiveState(NamedTuple):
    """Recurrent state of a Mamba, Mamba-2 or GLA layer (a pytree, float32).

    Attributes:
      conv: the last ``d_conv - 1`` inputs of the short causal convolution, oldest first,
        ``(b, d_conv - 1, conv_channels)``; ``None`` for a layer without one (GLA's default).
      ssm: the recurrent state: Mamba ``(b, d_inner, d_state)``, Mamba-2
        ``(b, nheads, headdim, d_state)``, GLA ``(b, num_heads, head_k_dim, head_v_dim)``.
    """

    conv: jax.Array | None
    ssm: jax.Array


# -- padding ------------------------------------------------------------------------------


def lengths_from_mask(mask: jax.Array | None) -> jax.Array | None:
    """``(b, l)`` bool mask (suffix padding) -> ``(b,)`` int32 lengths."""
    return None if mask is None else jnp.sum(mask, axis=1, dtype=jnp.int32)


def check_suffix_padding(layer: str, mask: jax.Array) -> None:
    """Raises ``ValueError`` when a concrete mask is not True on a prefix of each row.

    Traced masks (inside ``jit``) cannot be checked; they must be suffix padding too.
    """
    if isinstance(mask, jax.core.Tracer):
        return
    m = np.asarray(mask, bool)
    prefix = np.arange(m.shape[1])[None, :] < m.sum(axis=1)[:, None]
    if not np.array_equal(m, prefix):
        raise ValueError(
            f"{layer}: mask must be suffix padding (True on a prefix of each row, then "
            "False); a convolution and a reverse scan cannot skip interior padding"
        )


def _gather_time(x: jax.Array, idx: jax.Array) -> jax.Array:
    """``out[i, t] = x[i, idx[i, t]]`` for ``x`` ``(b, l, ...)`` and ``idx`` ``(b, t)``."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def reverse_sequences(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Reverses each sequence of ``x`` ``(b, l, ...)`` within its own length.

    Position ``t < n`` of a row of length ``n`` receives position ``n - 1 - t``; padded
    positions stay where they are, so suffix padding stays suffix padding and the reverse
    scan starts at each sequence's last real token. The map is its own inverse. Without
    ``lengths`` it is a plain flip of the time axis.

    >>> import jax.numpy as jnp
    >>> x = jnp.arange(8).reshape(2, 4)[..., None]
    >>> reverse_sequences(x, jnp.array([4, 2]))[..., 0]
    Array([[3, 2, 1, 0],
           [5, 4, 6, 7]], dtype=int32)
    """
    if lengths is None:
        return jnp.flip(x, axis=1)
    t = jnp.arange(x.shape[1], dtype=jnp.int32)[None, :]
    n = lengths[:, None]
    return _gather_time(x, jnp.where(t < n, n - 1 - t, t))


def short_conv(
    x: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None,
    cache: jax.Array | None,
    lengths: jax.Array | None,
    return_cache: bool,
):
    """Causal depthwise conv + SiLU over ``x`` ``(b, l, c)`` (zeros at padded positions).

    Returns ``(y, new_cache)``: ``y`` in ``x.dtype``; ``new_cache`` ``(b, w-1, c)`` float32
    holds the last ``w - 1`` inputs up to each sequence's last real token (``lengths``), or
    ``None`` when not ``return_cache``.
    """
    w = weight.shape[0]
    if cache is not None:
        cache = cache.astype(x.dtype)
    y = causal_conv1d(x, weight, bias, activation="silu", cache=cache)
    if not return_cache:
        return y, None
    b, length, c = x.shape
    if cache is None:
        cache = jnp.zeros((b, w - 1, c), x.dtype)
    xp = jnp.concatenate([cache, x], axis=1)  # position s of x is row s + w - 1 of xp
    n = jnp.full((b,), length, jnp.int32) if lengths is None else lengths
    idx = n[:, None] + jnp.arange(w - 1, dtype=jnp.int32)[None, :]
    return y, _gather_time(xp, idx).astype(jnp.float32)


# -- building blocks ------------------------------------------------------------------------


def expand_to_rank(v: jax.Array, ndim: int) -> jax.Array:
    """Prepends unit axes so ``v`` broadcasts at rank ``ndim`` (rank promotion is strict)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


#: PyTorch's default ``nn.Linear``/``nn.Conv1d`` weight init, ``U[-1/sqrt(fan_in), +]``.
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear(
    d_in: int, d_out: int, *, use_bias: bool = False, kernel_init=None, rngs: nnx.Rngs
) -> nnx.Linear:
    """``nnx.Linear`` with PyTorch's default weight init and zero bias (as mamba_ssm/fla)."""
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=use_bias,
        kernel_init=kernel_init or torch_default_init,
        bias_init=nnx.initializers.zeros_init(),
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def dense(layer: nnx.Linear, x: jax.Array) -> jax.Array:
    """Applies ``layer`` in the activation dtype (fp32 params cast down, AMP style)."""
    y = jnp.dot(x, layer.kernel[...].astype(x.dtype))
    if layer.bias is not None:
        y = y + expand_to_rank(layer.bias[...].astype(x.dtype), y.ndim)
    return y


def conv_init(key: jax.Array, width: int, channels: int, fan_in: int | None = None) -> jax.Array:
    """PyTorch's default depthwise ``Conv1d`` init, ``U[-1/sqrt(fan_in), +]``, as ``(w, c)``.

    ``fan_in`` is the filter width (the default); weight and bias use the same bound.
    """
    bound = 1.0 / math.sqrt(fan_in or width)
    return jax.random.uniform(key, (width, channels), jnp.float32, -bound, bound)


def dt_bias_init(
    key: jax.Array, shape, dt_min: float, dt_max: float, dt_init_floor: float
) -> jax.Array:
    """Mamba's ``dt`` bias: ``softplus^{-1}(dt)``, ``dt ~ logU[dt_min, dt_max]``, ``>= floor``.

    ``inv_dt = dt + log(-expm1(-dt))``, so that ``softplus(inv_dt) = dt``.
    """
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_init_floor)
    return dt + jnp.log(-jnp.expm1(-dt))


def check_dt_range(layer: str, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"{layer}: need 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")
    if dt_init_floor <= 0:
        raise ValueError(f"{layer}: dt_init_floor must be positive; got {dt_init_floor}")


def gated_rms_norm(
    y: jax.Array,
    gate: jax.Array | None,
    weight: jax.Array,
    group_size: int,
    eps: float,
    norm_before_gate: bool,
) -> jax.Array:
    """RMSNorm over groups of ``group_size`` channels, gated by ``silu(gate)``.

    ``norm_before_gate=False`` (Mamba-2's ``RMSNormGated``): ``norm(y * silu(gate))``;
    ``True`` (fla's fused gated norm, GLA): ``norm(y) * silu(gate)``. ``weight`` has
    ``y.shape[-1]`` entries (one per channel) or ``group_size`` (shared by the groups).
    Computed in float32; returns float32.
    """
    y = y.astype(jnp.float32)
    silu = None if gate is None else jax.nn.silu(gate.astype(jnp.float32))
    if silu is not None and not norm_before_gate:
        y = y * silu
    shape = y.shape
    yg = y.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    yg = yg * jax.lax.rsqrt(jnp.mean(jnp.square(yg), axis=-1, keepdims=True) + eps)
    w = expand_to_rank(weight.astype(jnp.float32).reshape(-1, group_size), yg.ndim)
    y = (yg * w).reshape(shape)
    if silu is not None and norm_before_gate:
        y = y * silu
    return y


# -- the one layer interface ------------------------------------------------------------------


class ReverseParams(nnx.Module):
    """Holds the parameters of the reverse direction of a bidirectional layer (``.reverse``)."""


class SelectiveLayer(nnx.Module):
    """Base class of Mamba, Mamba-2 and GLA; see the module docstring.

    A subclass sets ``d_model``, ``bidirectional``, ``implementation`` and ``reverse``
    (a module with the reverse direction's parameters under the same names as the forward
    direction's on the layer itself, or ``None``) and implements:

    * ``_project_in(x) -> dict`` of ``(b, l, ·)`` arrays shared by both directions;
    * ``_mask_inputs(inputs, mask) -> inputs`` zeroing what must be zero at padded steps;
    * ``_mix(p, inputs, mask, lengths, state, return_state) -> (y, state | None)`` for one
      direction with parameters ``p`` (``self`` or ``self.reverse``), padded steps being
      identity steps of the recurrence;
    * ``_mix_step(inputs_t, state) -> (y_t, state)`` for the forward direction;
    * ``_project_out(y, inputs) -> (b, l, d_model)``;
    * ``_state_shapes(batch_size) -> (conv_shape | None, ssm_shape)``.
    """

    d_model: int
    bidirectional: bool
    implementation: str | None
    reverse: nnx.Module | None

    def _check_state(self, name: str, state, batch_size: int) -> SelectiveState:
        conv_shape, ssm_shape = self._state_shapes(batch_size)
        if not isinstance(state, tuple) or len(state) != 2:
            raise ValueError(
                f"{name}: state must be a SelectiveState(conv, ssm) from init_state or "
                f"return_state=True; got {type(state).__name__}"
            )
        state = SelectiveState(*state)
        conv = None if state.conv is None else tuple(state.conv.shape)
        if conv != conv_shape or tuple(state.ssm.shape) != ssm_shape:
            raise ValueError(
                f"{name}: state must have shape (conv={conv_shape}, ssm={ssm_shape}); got "
                f"(conv={conv}, ssm={tuple(state.ssm.shape)})"
            )
        return state

    def _no_state(self, name: str, what: str) -> None:
        check_has_state(name, self.bidirectional, what)

    def init_state(self, batch_size: int) -> SelectiveState:
        """Zero state (start of a sequence): a :class:`SelectiveState`, float32.

        Raises:
          ValueError: for a bidirectional layer (it has no recurrent state).
        """
        self._no_state(type(self).__name__, "init_state")
        conv_shape, ssm_shape = self._state_shapes(batch_size)
        conv = None if conv_shape is None else jnp.zeros(conv_shape, jnp.float32)
        return SelectiveState(conv, jnp.zeros(ssm_shape, jnp.float32))

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        state: SelectiveState | None = None,
        return_state: bool = False,
    ):
        """Applies the layer to a sequence.

        Args:
          x: ``(b, l, d_model)`` input, fp32 or bf16 (projections run in ``x.dtype``, the
            recurrence in fp32).
          mask: optional ``(b, l)`` bool, True at real tokens, **suffix padding** (True on a
            prefix of each row). Padded steps are identity steps of the recurrence, the
            short convolution sees zeros there, and outputs there are zero.
          state: optional :class:`SelectiveState` to continue from (unidirectional only).
          return_state: also return the state after each sequence's last real token.

        Returns:
          ``y`` of shape ``(b, l, d_model)`` in ``x.dtype``, or ``(y, state)`` when
          ``return_state``.
        """
        name = type(self).__name__
        check_sequence(name, x, self.d_model, mask)
        if state is not None or return_state:
            self._no_state(name, "take or return a state")
        if state is not None:
            state = self._check_state(name, state, x.shape[0])
        if mask is not None:
            mask = jnp.asarray(mask, bool)
            check_suffix_padding(name, mask)
        lengths = lengths_from_mask(mask)
        inputs = self._project_in(x)
        if mask is not None:
            inputs = self._mask_inputs(inputs, mask)
        y, new_state = self._mix(self, inputs, mask, lengths, state, return_state)
        if self.bidirectional:
            rev = {k: reverse_sequences(v, lengths) for k, v in inputs.items()}
            y_rev, _ = self._mix(self.reverse, rev, mask, lengths, None, False)
            y = y + reverse_sequences(y_rev, lengths)
        y = apply_mask(self._project_out(y, inputs), mask).astype(x.dtype)
        return (y, new_state) if return_state else y

    def step(self, x_t: jax.Array, state: SelectiveState):
        """One recurrent step, O(1) in the sequence length.

        Args:
          x_t: ``(b, d_model)`` input at one time step.
          state: :class:`SelectiveState` from :meth:`init_state` or a previous call.

        Returns:
          ``(y_t, state)``: ``(b, d_model)`` output in ``x_t.dtype`` and the new state.
        """
        name = type(self).__name__
        self._no_state(name, "step")
        if x_t.ndim != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(
                f"{name}: x_t must have shape (batch, {self.d_model}); got {x_t.shape}"
            )
        state = self._check_state(name, state, x_t.shape[0])
        inputs = {k: v[:, 0] for k, v in self._project_in(x_t[:, None]).items()}
        y, state = self._mix_step(inputs, state)
        y = self._project_out(y[:, None], {k: v[:, None] for k, v in inputs.items()})
        return y[:, 0].astype(x_t.dtype), state

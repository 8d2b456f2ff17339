"""Mamba (Mamba-1): the selective SSM block of Gu & Dao (2023), ``mamba_simple.py`` semantics."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ssmjax.nn._base import SSMParam, SSMStepParam, register_layer
from ssmjax.nn._selective import (
    ReverseParams,
    SelectiveLayer,
    SelectiveState,
    check_dt_range,
    conv_init,
    dense,
    dt_bias_init,
    expand_to_rank,
    linear,
    short_conv,
)
from ssmjax.ops.conv1d import causal_conv1d_step
from ssmjax.ops.selective_scan import selective_scan

__all__ = ["Mamba"]


@register_layer("mamba")
class Mamba(SelectiveLayer):
    r"""Mamba-1 mixer: ``in_proj -> conv + SiLU -> selective scan (gated by SiLU(z)) -> out_proj``.

    Faithful to ``mamba_ssm/modules/mamba_simple.py``, with ``E = expand * d_model``:

    * ``in_proj``: ``d_model -> 2E`` (``x``, ``z``; no bias);
    * depthwise causal conv of width ``d_conv`` over ``x`` (with bias) and SiLU;
    * ``x_proj``: ``E -> dt_rank + 2 d_state`` (``dt``, ``B``, ``C``; no bias);
    * ``dt_proj``: ``dt_rank -> E``, ``dt = softplus(dt_proj(dt) + dt_bias)``;
    * :func:`ssmjax.ops.selective_scan` with ``A = -exp(A_log)`` ``(E, d_state)``:
      ``h_t = exp(dt A) h_{t-1} + dt B_t x_t``, ``y_t = C_t h_t + D x_t``, ``y *= silu(z)``;
    * ``out_proj``: ``E -> d_model`` (no bias).

    Init as mamba_ssm: ``A_log = log(1..d_state)`` per channel (S4D-Real), ``D = 1``,
    ``dt_bias = softplus^{-1}(dt)`` with ``dt ~ logU[dt_min, dt_max]`` floored at
    ``dt_init_floor``, ``dt_proj.kernel ~ U[-dt_rank^{-1/2} dt_scale, +]``; other weights
    PyTorch's default ``U[-1/sqrt(fan_in), +]``. ``A_log``, ``D`` and ``dt_bias`` are
    :class:`~ssmjax.nn.SSMParam` (mamba_ssm's ``_no_weight_decay``; ``dt_bias`` as its
    subtype :class:`~ssmjax.nn.SSMStepParam`, ``D`` not a ``SkipParam`` since Mamba does not
    decay it). mamba_ssm's model-level ``out_proj`` rescaling by ``1/sqrt(n_layer)`` is left
    to the model.

    Masks are suffix padding (True on a prefix of each row): padded steps get ``dt = 0``
    (``exp(0 A) = 1``, ``dt B x = 0``: identity steps) and the convolution sees zeros there.

    ``bidirectional=True`` (Caduceus-style weight tying): ``in_proj`` and ``out_proj`` are
    shared; the reverse direction has its own conv, ``x_proj``, ``dt_proj``, ``dt_bias``,
    ``A_log`` and ``D`` (under ``reverse.*``) and runs on each sequence reversed within its
    own length; the two gated scan outputs are summed before ``out_proj``. A bidirectional
    layer has no state or ``step``.

    State: :class:`~ssmjax.nn.SelectiveState` with ``conv`` ``(b, d_conv - 1, E)`` and
    ``ssm`` ``(b, E, d_state)``, float32.

    Parameter count (``d = d_model``, ``E``, ``N = d_state``, ``R = dt_rank``,
    ``W = d_conv``, ``k = 2 if bidirectional else 1``): ``3dE + k·E(W + 2R + 3N + 3)``
    (``E(W+1)`` conv, ``E(R+2N)`` x_proj, ``E(R+1)`` dt_proj, ``EN`` A_log, ``E`` D) —
    e.g. 3,770,880 for ``d_model=768``, as each layer of mamba-130m.

    Args:
      d_model: input/output features.
      d_state: ``N``, state size per channel.
      d_conv: width of the causal convolution.
      expand: ``E = expand * d_model``.
      dt_rank: rank of the ``dt`` projection; ``"auto"`` is ``ceil(d_model / 16)``.
      dt_min: smallest initial ``dt``.
      dt_max: largest initial ``dt``.
      dt_init_floor: lower bound on the initial ``dt``.
      dt_scale: scale of the ``dt_proj`` kernel init.
      conv_bias: give the convolution a bias.
      bias: give ``in_proj`` and ``out_proj`` biases.
      bidirectional: add a reverse-time mixer (see above).
      implementation: passed to :func:`ssmjax.ops.selective_scan` (``"sequential"``,
        ``"associative"``, ``"chunked"`` or ``None`` for automatic).
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = Mamba(d_model=8, d_state=4, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 10, 8))
    >>> layer(x).shape
    (2, 10, 8)
    >>> y, state = layer(x, return_state=True)
    >>> state.conv.shape, state.ssm.shape
    ((2, 3, 16), (2, 16, 4))
    >>> y_t, state = layer.step(x[:, 0], layer.init_state(2))
    >>> y_t.shape
    (2, 8)
    >>> sum(p.size for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))  # 3*8*16 + 16*(4+2+12+3)
    720
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        *,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: bool = False,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        for name, v in {
            "d_model": d_model,
            "d_state": d_state,
            "d_conv": d_conv,
            "expand": expand,
            "dt_rank": dt_rank,
        }.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Mamba: {name} must be a positive int; got {v!r}")
        check_dt_range("Mamba", dt_min, dt_max, dt_init_floor)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner, self.dt_rank = expand * d_model, dt_rank
        self.bidirectional, self.implementation = bidirectional, implementation
        e = self.d_inner
        self.in_proj = linear(d_model, 2 * e, use_bias=bias, rngs=rngs)
        self._init_direction(self, rngs, conv_bias, dt_min, dt_max, dt_init_floor, dt_scale)
        self.reverse = ReverseParams() if bidirectional else None
        if bidirectional:
            self._init_direction(
                self.reverse, rngs, conv_bias, dt_min, dt_max, dt_init_floor, dt_scale
            )
        self.out_proj = linear(e, d_model, use_bias=bias, rngs=rngs)

    def _init_direction(self, p, rngs, conv_bias, dt_min, dt_max, dt_init_floor, dt_scale):
        """Creates one direction's parameters on ``p`` (the layer, or ``self.reverse``)."""
        e, n, r, w = self.d_inner, self.d_state, self.dt_rank, self.d_conv
        p.conv_weight = nnx.Param(conv_init(rngs.params(), w, e))
        p.conv_bias = nnx.Param(conv_init(rngs.params(), 1, e, fan_in=w)[0]) if conv_bias else None
        p.x_proj = linear(e, r + 2 * n, rngs=rngs)
        bound = r**-0.5 * dt_scale
        dt_init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
        p.dt_proj = linear(r, e, kernel_init=dt_init, rngs=rngs)
        p.dt_bias = SSMStepParam(dt_bias_init(rngs.params(), (e,), dt_min, dt_max, dt_init_floor))
        a = jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32)[None, :], (e, n))
        p.A_log = SSMParam(jnp.log(a))
        p.D = SSMParam(jnp.ones((e,), jnp.float32))

    def _state_shapes(self, batch_size):
        e = self.d_inner
        return (batch_size, self.d_conv - 1, e), (batch_size, e, self.d_state)

    def _project_in(self, x):
        xs, z = jnp.split(dense(self.in_proj, x), 2, axis=-1)
        return {"x": xs, "z": z}

    def _mask_inputs(self, inputs, mask):
        m = mask[..., None]
        return {**inputs, "x": jnp.where(m, inputs["x"], jnp.zeros((), inputs["x"].dtype))}

    def _ssm_inputs(self, p, xc):
        """``(dt_raw, B, C)`` from the conv output: ``x_proj`` then ``dt_proj`` (no bias)."""
        n, r = self.d_state, self.dt_rank
        x_dbl = dense(p.x_proj, xc)
        dt, B, C = jnp.split(x_dbl, [r, r + n], axis=-1)
        return dense(p.dt_proj, dt), B, C

    def _mix(self, p, inputs, mask, lengths, state, return_state):
        cache = None if state is None else state.conv
        h0 = None if state is None else state.ssm
        xc, new_cache = short_conv(
            inputs["x"], p.conv_weight[...], _value(p.conv_bias), cache, lengths, return_state
        )
        dt, B, C = self._ssm_inputs(p, xc)
        A = -jnp.exp(p.A_log[...])
        if mask is None:
            dt_args = {"dt_bias": p.dt_bias[...], "dt_softplus": True}
        else:  # dt = 0 at padded steps: identity steps of the recurrence
            dt = jax.nn.softplus(dt.astype(jnp.float32) + expand_to_rank(p.dt_bias[...], 3))
            dt = jnp.where(mask[..., None], dt, jnp.zeros((), dt.dtype))
            dt_args = {}
        out = selective_scan(
            xc,
            dt,
            A,
            B,
            C,
            D=p.D[...],
            z=inputs["z"],
            **dt_args,
            h0=h0,
            return_final_state=return_state,
            implementation=self.implementation,
        )
        if return_state:
            y, h = out
            return y, SelectiveState(new_cache, h.astype(jnp.float32))
        return out, None

    def _mix_step(self, inputs, state):
        x_t = inputs["x"]
        xc, cache = causal_conv1d_step(
            x_t, self.conv_weight[...], _value(self.conv_bias), state.conv, activation="silu"
        )
        dt, B, C = self._ssm_inputs(self, xc)
        f32 = jnp.float32
        dt = jax.nn.softplus(dt.astype(f32) + self.dt_bias[...][None])  # (b, E)
        A = -jnp.exp(self.A_log[...])
        xf = xc.astype(f32)
        h = jnp.exp(dt[..., None] * A[None]) * state.ssm
        h = h + (dt * xf)[..., None] * B.astype(f32)[:, None, :]
        y = jnp.sum(h * C.astype(f32)[:, None, :], axis=-1) + self.D[...][None] * xf
        y = y * jax.nn.silu(inputs["z"].astype(f32))
        return y.astype(x_t.dtype), SelectiveState(cache.astype(f32), h)

    def _project_out(self, y, inputs):
        return dense(self.out_proj, y)


def _value(param):
    return None if param is None else param[...]

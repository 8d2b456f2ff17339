"""Mamba-2: the SSD block of Dao & Gu (2024), ``mamba_ssm/modules/mamba2.py`` semantics."""

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
    gated_rms_norm,
    linear,
    short_conv,
)
from ssmjax.ops.conv1d import causal_conv1d_step
from ssmjax.ops.ssd import ssd

__all__ = ["Mamba2"]


@register_layer("mamba2")
class Mamba2(SelectiveLayer):
    r"""Mamba-2 mixer: ``in_proj -> conv + SiLU -> SSD -> gated RMSNorm -> out_proj``.

    Faithful to ``mamba_ssm/modules/mamba2.py`` (defaults ``rmsnorm=True``,
    ``norm_before_gate=False``, ``D_has_hdim=False``, ``dt_limit=(0, inf)``), with
    ``E = expand * d_model`` channels in ``H = E / headdim`` heads and ``G = ngroups``:

    * fused ``in_proj``: ``d_model -> [z (E), x (E), B (G·N), C (G·N), dt (H)]``, no bias;
    * depthwise causal conv of width ``d_conv`` (with bias) and SiLU over ``(x, B, C)``;
    * ``dt = softplus(dt + dt_bias)`` per head, scalar ``A = -exp(A_log)`` per head;
    * :func:`ssmjax.ops.ssd`: ``h_t = exp(dt A) h_{t-1} + dt x_t ⊗ B_t``,
      ``y_t = h_t C_t + D x_t`` (``D`` per head);
    * gated RMSNorm ``y = RMSNorm(y * silu(z))`` over groups of ``E / G`` channels
      (``eps = 1e-5``, weight init 1), then ``out_proj``: ``E -> d_model`` (no bias).

    Init as mamba_ssm: ``A_log = log(U[A_init_range])``, ``dt_bias = softplus^{-1}(dt)``
    with ``dt ~ logU[dt_min, dt_max]`` floored at ``dt_init_floor``, ``D = 1``; other
    weights PyTorch's default ``U[-1/sqrt(fan_in), +]``. ``A_log``, ``D`` and ``dt_bias``
    are :class:`~ssmjax.nn.SSMParam` (mamba_ssm's ``_no_weight_decay``; ``dt_bias`` as its
    subtype :class:`~ssmjax.nn.SSMStepParam`, ``D`` not a ``SkipParam`` since Mamba-2 does
    not decay it).

    Masks are suffix padding (True on a prefix of each row): padded steps get ``dt = 0``
    (identity steps of the recurrence) and the convolution sees zeros there.

    ``bidirectional=True`` (Caduceus-style weight tying): ``in_proj``, the norm and
    ``out_proj`` are shared; the reverse direction has its own conv, ``dt_bias``, ``A_log``
    and ``D`` (under ``reverse.*``) and runs on each sequence reversed within its own
    length; the two SSD outputs are summed before the gated norm. No state or ``step``.

    State: :class:`~ssmjax.nn.SelectiveState` with ``conv`` ``(b, d_conv - 1, E + 2GN)``
    and ``ssm`` ``(b, H, headdim, N)``, float32.

    Parameter count (``d = d_model``, ``E``, ``H``, ``G``, ``N = d_state``, ``W = d_conv``,
    ``k = 2 if bidirectional else 1``): ``d(2E + 2GN + H) + Ed + E + k·[(W + 1)(E + 2GN) +
    3H]`` (in_proj, out_proj, norm; conv weight and bias, dt_bias, A_log, D).

    Args:
      d_model: input/output features.
      d_state: ``N``, state size per head.
      d_conv: width of the causal convolution.
      expand: ``E = expand * d_model``.
      headdim: channels per head (``E`` must be a multiple).
      ngroups: number of ``B``/``C`` groups (must divide the number of heads).
      chunk_size: chunk length of :func:`ssmjax.ops.ssd`'s ``"chunked"`` form.
      A_init_range: ``A`` is drawn from ``U[A_init_range]`` (positive; ``A_log = log A``).
      dt_min: smallest initial ``dt``.
      dt_max: largest initial ``dt``.
      dt_init_floor: lower bound on the initial ``dt``.
      norm_eps: epsilon of the gated RMSNorm.
      conv_bias: give the convolution a bias.
      bias: give ``in_proj`` and ``out_proj`` biases.
      bidirectional: add a reverse-time mixer (see above).
      implementation: passed to :func:`ssmjax.ops.ssd` (``"sequential"``, ``"chunked"`` or
        ``None`` for automatic).
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = Mamba2(d_model=8, d_state=8, headdim=4, chunk_size=16, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 10, 8))
    >>> layer(x).shape
    (2, 10, 8)
    >>> y, state = layer(x, return_state=True)
    >>> state.conv.shape, state.ssm.shape
    ((2, 3, 32), (2, 4, 4, 8))
    >>> y_t, state = layer.step(x[:, 0], layer.init_state(2))
    >>> y_t.shape
    (2, 8)
    >>> sum(p.size for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))  # 8*52+128+16+172
    732
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        *,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        norm_eps: float = 1e-5,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: bool = False,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        for name, v in {
            "d_model": d_model,
            "d_state": d_state,
            "d_conv": d_conv,
            "expand": expand,
            "headdim": headdim,
            "ngroups": ngroups,
            "chunk_size": chunk_size,
        }.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Mamba2: {name} must be a positive int; got {v!r}")
        e = expand * d_model
        if e % headdim:
            raise ValueError(
                f"Mamba2: d_inner = expand * d_model = {e} must be a multiple of headdim={headdim}"
            )
        nheads = e // headdim
        if nheads % ngroups:
            raise ValueError(
                f"Mamba2: the number of heads ({nheads} = d_inner / headdim) must be a "
                f"multiple of ngroups={ngroups}"
            )
        a_lo, a_hi = A_init_range
        if not 0 < a_lo <= a_hi:
            raise ValueError(f"Mamba2: need 0 < A_init_range[0] <= [1]; got {A_init_range}")
        check_dt_range("Mamba2", dt_min, dt_max, dt_init_floor)
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, e
        self.headdim, self.nheads, self.ngroups = headdim, nheads, ngroups
        self.chunk_size, self.norm_eps = chunk_size, norm_eps
        self.bidirectional, self.implementation = bidirectional, implementation
        self.conv_dim = e + 2 * ngroups * d_state
        self.in_proj = linear(d_model, e + self.conv_dim + nheads, use_bias=bias, rngs=rngs)
        init = (rngs, conv_bias, A_init_range, dt_min, dt_max, dt_init_floor)
        self._init_direction(self, *init)
        self.reverse = ReverseParams() if bidirectional else None
        if bidirectional:
            self._init_direction(self.reverse, *init)
        self.norm_weight = nnx.Param(jnp.ones((e,), jnp.float32))
        self.out_proj = linear(e, d_model, use_bias=bias, rngs=rngs)

    def _init_direction(self, p, rngs, conv_bias, A_init_range, dt_min, dt_max, dt_init_floor):
        """Creates one direction's parameters on ``p`` (the layer, or ``self.reverse``)."""
        w, c, h = self.d_conv, self.conv_dim, self.nheads
        p.conv_weight = nnx.Param(conv_init(rngs.params(), w, c))
        p.conv_bias = nnx.Param(conv_init(rngs.params(), 1, c, fan_in=w)[0]) if conv_bias else None
        p.dt_bias = SSMStepParam(dt_bias_init(rngs.params(), (h,), dt_min, dt_max, dt_init_floor))
        a = jax.random.uniform(rngs.params(), (h,), jnp.float32, *A_init_range)
        p.A_log = SSMParam(jnp.log(a))
        p.D = SSMParam(jnp.ones((h,), jnp.float32))

    def _state_shapes(self, batch_size):
        return (batch_size, self.d_conv - 1, self.conv_dim), (
            batch_size,
            self.nheads,
            self.headdim,
            self.d_state,
        )

    def _project_in(self, x):
        e = self.d_inner
        z, xbc, dt = jnp.split(dense(self.in_proj, x), [e, e + self.conv_dim], axis=-1)
        return {"z": z, "xbc": xbc, "dt": dt}

    def _mask_inputs(self, inputs, mask):
        xbc = inputs["xbc"]
        return {**inputs, "xbc": jnp.where(mask[..., None], xbc, jnp.zeros((), xbc.dtype))}

    def _split_xbc(self, xbc):
        """``(..., E + 2GN)`` -> ``x (..., H, P)``, ``B``, ``C`` ``(..., G, N)``."""
        e, gn = self.d_inner, self.ngroups * self.d_state
        xs, B, C = jnp.split(xbc, [e, e + gn], axis=-1)
        lead = xbc.shape[:-1]
        return (
            xs.reshape(*lead, self.nheads, self.headdim),
            B.reshape(*lead, self.ngroups, self.d_state),
            C.reshape(*lead, self.ngroups, self.d_state),
        )

    def _mix(self, p, inputs, mask, lengths, state, return_state):
        cache = None if state is None else state.conv
        h0 = None if state is None else state.ssm
        conv_bias = None if p.conv_bias is None else p.conv_bias[...]
        xbc, new_cache = short_conv(
            inputs["xbc"], p.conv_weight[...], conv_bias, cache, lengths, return_state
        )
        xs, B, C = self._split_xbc(xbc)
        dt = jax.nn.softplus(inputs["dt"].astype(jnp.float32) + expand_to_rank(p.dt_bias[...], 3))
        if mask is not None:  # dt = 0 at padded steps: identity steps of the recurrence
            dt = jnp.where(mask[..., None], dt, jnp.zeros((), dt.dtype))
        out = ssd(
            xs,
            dt,
            -jnp.exp(p.A_log[...]),
            B,
            C,
            p.D[...],
            chunk_size=self.chunk_size,
            h0=h0,
            return_final_state=return_state,
            implementation=self.implementation,
        )
        y, h = out if return_state else (out, None)
        y = y.reshape(*y.shape[:2], self.d_inner)
        if return_state:
            return y, SelectiveState(new_cache, h.astype(jnp.float32))
        return y, None

    def _mix_step(self, inputs, state):
        xbc_t = inputs["xbc"]
        conv_bias = None if self.conv_bias is None else self.conv_bias[...]
        xbc, cache = causal_conv1d_step(
            xbc_t, self.conv_weight[...], conv_bias, state.conv, activation="silu"
        )
        xs, B, C = self._split_xbc(xbc)  # (b, H, P), (b, G, N), (b, G, N)
        f32 = jnp.float32
        dt = jax.nn.softplus(inputs["dt"].astype(f32) + self.dt_bias[...][None])  # (b, H)
        r = self.nheads // self.ngroups
        B = jnp.repeat(B.astype(f32), r, axis=1)  # (b, H, N)
        C = jnp.repeat(C.astype(f32), r, axis=1)
        xf = xs.astype(f32)
        decay = jnp.exp(dt * -jnp.exp(self.A_log[...])[None])  # (b, H)
        h = decay[..., None, None] * state.ssm + (dt[..., None] * xf)[..., None] * B[:, :, None]
        y = jnp.sum(h * C[:, :, None], axis=-1) + self.D[...][None, :, None] * xf
        y = y.reshape(y.shape[0], self.d_inner).astype(xbc_t.dtype)
        return y, SelectiveState(cache.astype(f32), h)

    def _project_out(self, y, inputs):
        group = self.d_inner // self.ngroups
        y = gated_rms_norm(y, inputs["z"], self.norm_weight[...], group, self.norm_eps, False)
        return dense(self.out_proj, y.astype(inputs["z"].dtype))

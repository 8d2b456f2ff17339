"""GLA: gated linear attention (Yang et al., ICML 2024), ``fla/layers/gla.py`` semantics."""

import jax
import jax.numpy as jnp
from flax import nnx

from ssmjax.nn._base import register_layer
from ssmjax.nn._selective import (
    ReverseParams,
    SelectiveLayer,
    SelectiveState,
    conv_init,
    dense,
    gated_rms_norm,
    linear,
    short_conv,
)
from ssmjax.ops.conv1d import causal_conv1d_step
from ssmjax.ops.gla import gla

__all__ = ["GLA"]


@register_layer("gla")
class GLA(SelectiveLayer):
    r"""Gated linear attention: ``S_t = diag(α_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t/√dk``.

    Faithful to flash-linear-attention's ``GatedLinearAttention`` layer with its defaults,
    with ``K = int(d_model * expand_k)`` key and ``V = int(d_model * expand_v)`` value
    channels in ``num_heads`` heads (``dk = K / heads``, ``dv = V / heads``):

    * ``q_proj``, ``k_proj``: ``d_model -> K``; ``v_proj``: ``d_model -> V`` (no bias);
      optionally (``use_short_conv``) a depthwise causal conv of width ``conv_size`` + SiLU
      on each of ``q``, ``k``, ``v`` (one conv over their concatenation, no bias);
    * gate ``gk = Linear(d_model -> 16, no bias) ∘ Linear(16 -> K, bias)`` (``gk_proj_a``,
      ``gk_proj_b``), ``log α = logsigmoid(gk) / gate_logit_normalizer`` (optionally clamped
      from below by ``clamp_min``);
    * :func:`ssmjax.ops.gla` with ``scale = dk^{-1/2}``, state ``(dk, dv)`` per head;
    * per-head RMSNorm of ``o`` (weight ``(dv,)`` shared by the heads, ``eps = norm_eps``)
      times ``swish(g_proj(x))`` (``g_proj``: ``d_model -> V``, no bias; fla's fused gated
      norm), or the plain norm without ``use_output_gate``; ``o_proj``: ``V -> d_model``.

    Init: weights PyTorch's default ``U[-1/sqrt(fan_in), +]``, the gate bias zero, the norm
    weight one. (fla's model-level ``_init_weights`` redraws linear weights from
    ``N(0, 0.02)``; that belongs to the model.) GLA has no parameter of the SSMParam kind:
    the decay is produced by ordinary projections.

    Masks are suffix padding (True on a prefix of each row): padded steps get ``log α = 0``
    and ``k = 0`` (identity steps of the recurrence); the short conv sees zeros there.

    ``bidirectional=True`` (weight tying as in Caduceus): the ``q``/``k``/``v``/``g``
    projections, the norm and ``o_proj`` are shared; the reverse direction has its own gate
    projections (and short conv) under ``reverse.*`` and runs on each sequence reversed
    within its own length; the two attention outputs are summed before the gated norm. A
    bidirectional layer has no state or ``step``.

    State: :class:`~ssmjax.nn.SelectiveState` with ``conv`` ``(b, conv_size - 1, 2K + V)``
    (``None`` without ``use_short_conv``) and ``ssm`` ``(b, num_heads, dk, dv)``, float32.

    Parameter count (``d = d_model``, ``K``, ``V``, ``r = gate_low_rank_dim``, ``W =
    conv_size``, ``k = 2 if bidirectional else 1``): ``2dK + 2dV + dV·[use_output_gate] +
    dv + k·(dr + rK + K + W(2K + V)·[use_short_conv])``.

    Args:
      d_model: input/output features.
      num_heads: number of heads.
      expand_k: ``K = int(d_model * expand_k)``.
      expand_v: ``V = int(d_model * expand_v)``.
      gate_low_rank_dim: ``r``, inner width of the gate projection.
      gate_logit_normalizer: ``log α = logsigmoid(gk) / gate_logit_normalizer``.
      clamp_min: optional lower bound on ``log α``.
      use_output_gate: gate the normalised output with ``swish(g_proj(x))``.
      use_short_conv: causal conv + SiLU on ``q``, ``k``, ``v``.
      conv_size: width of the short conv.
      norm_eps: epsilon of the RMSNorm.
      chunk_size: chunk length of :func:`ssmjax.ops.gla`'s ``"chunked"`` form.
      bidirectional: add a reverse-time mixer (see above).
      implementation: passed to :func:`ssmjax.ops.gla` (``"sequential"``, ``"parallel"``,
        ``"chunked"`` or ``None`` for automatic).
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = GLA(d_model=8, num_heads=2, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 10, 8))
    >>> layer(x).shape
    (2, 10, 8)
    >>> y, state = layer(x, return_state=True)
    >>> state.conv is None, state.ssm.shape
    (True, (2, 2, 2, 4))
    >>> y_t, state = layer.step(x[:, 0], layer.init_state(2))
    >>> y_t.shape
    (2, 8)
    >>> sum(p.size for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))  # 64+192+4+196
    456
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        *,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        clamp_min: float | None = None,
        use_output_gate: bool = True,
        use_short_conv: bool = False,
        conv_size: int = 4,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
        bidirectional: bool = False,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        for name, v in {
            "d_model": d_model,
            "num_heads": num_heads,
            "conv_size": conv_size,
            "gate_low_rank_dim": gate_low_rank_dim,
            "chunk_size": chunk_size,
        }.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GLA: {name} must be a positive int; got {v!r}")
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        for name, dim in (("key", key_dim), ("value", value_dim)):
            if dim < 1 or dim % num_heads:
                raise ValueError(
                    f"GLA: the {name} dim ({dim} = int(d_model * expand_"
                    f"{name[0]})) must be a positive multiple of num_heads={num_heads}"
                )
        if gate_logit_normalizer <= 0:
            raise ValueError(
                f"GLA: gate_logit_normalizer must be positive; got {gate_logit_normalizer}"
            )
        self.d_model, self.num_heads = d_model, num_heads
        self.key_dim, self.value_dim = key_dim, value_dim
        self.head_k_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
        self.gate_low_rank_dim, self.gate_logit_normalizer = (
            gate_low_rank_dim,
            gate_logit_normalizer,
        )
        self.clamp_min, self.use_output_gate = clamp_min, use_output_gate
        self.use_short_conv, self.conv_size = use_short_conv, conv_size
        self.norm_eps, self.chunk_size = norm_eps, chunk_size
        self.bidirectional, self.implementation = bidirectional, implementation

        self.q_proj = linear(d_model, key_dim, rngs=rngs)
        self.k_proj = linear(d_model, key_dim, rngs=rngs)
        self.v_proj = linear(d_model, value_dim, rngs=rngs)
        self.g_proj = linear(d_model, value_dim, rngs=rngs) if use_output_gate else None
        self._init_direction(self, rngs)
        self.reverse = ReverseParams() if bidirectional else None
        if bidirectional:
            self._init_direction(self.reverse, rngs)
        self.norm_weight = nnx.Param(jnp.ones((self.head_v_dim,), jnp.float32))
        self.o_proj = linear(value_dim, d_model, rngs=rngs)

    def _init_direction(self, p, rngs):
        """Creates one direction's parameters on ``p`` (the layer, or ``self.reverse``)."""
        r, k = self.gate_low_rank_dim, self.key_dim
        p.gk_proj_a = linear(self.d_model, r, rngs=rngs)
        p.gk_proj_b = linear(r, k, use_bias=True, rngs=rngs)
        p.conv_weight = (
            nnx.Param(conv_init(rngs.params(), self.conv_size, 2 * k + self.value_dim))
            if self.use_short_conv
            else None
        )

    def _state_shapes(self, batch_size):
        conv = None
        if self.use_short_conv:
            conv = (batch_size, self.conv_size - 1, 2 * self.key_dim + self.value_dim)
        return conv, (batch_size, self.num_heads, self.head_k_dim, self.head_v_dim)

    def _project_in(self, x):
        qkv = jnp.concatenate(
            [dense(self.q_proj, x), dense(self.k_proj, x), dense(self.v_proj, x)], -1
        )
        inputs = {"qkv": qkv, "x": x}
        if self.use_output_gate:
            inputs["g"] = dense(self.g_proj, x)
        return inputs

    def _mask_inputs(self, inputs, mask):
        m = mask[..., None]
        zero = jnp.zeros((), inputs["qkv"].dtype)
        return {**inputs, "qkv": jnp.where(m, inputs["qkv"], zero)}

    def _heads(self, qkv, x, p):
        """``(q, k, v, log α)`` split into heads, ``(..., h, d)``; ``log α`` in float32."""
        kd, h = self.key_dim, self.num_heads
        q, k, v = jnp.split(qkv, [kd, 2 * kd], axis=-1)
        gk = dense(p.gk_proj_b, dense(p.gk_proj_a, x))
        log_a = jax.nn.log_sigmoid(gk.astype(jnp.float32)) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            log_a = jnp.maximum(log_a, self.clamp_min)
        split = lambda a: a.reshape(*a.shape[:-1], h, a.shape[-1] // h)
        return split(q), split(k), split(v), split(log_a)

    def _mix(self, p, inputs, mask, lengths, state, return_state):
        qkv = inputs["qkv"]
        new_cache = None
        if self.use_short_conv:
            cache = None if state is None else state.conv
            qkv, new_cache = short_conv(qkv, p.conv_weight[...], None, cache, lengths, return_state)
        q, k, v, log_a = self._heads(qkv, inputs["x"], p)
        if mask is not None:  # log α = 0 and k = 0 at padded steps: identity steps
            m = mask[..., None, None]
            log_a = jnp.where(m, log_a, jnp.zeros((), log_a.dtype))
            k = jnp.where(m, k, jnp.zeros((), k.dtype))
        out = gla(
            q,
            k,
            v,
            log_a,
            scale=self.head_k_dim**-0.5,
            h0=None if state is None else state.ssm,
            return_final_state=return_state,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
        )
        o, s = out if return_state else (out, None)
        o = o.reshape(*o.shape[:2], self.value_dim)
        if return_state:
            return o, SelectiveState(new_cache, s.astype(jnp.float32))
        return o, None

    def _mix_step(self, inputs, state):
        qkv, cache = inputs["qkv"], None
        if self.use_short_conv:
            qkv, cache = causal_conv1d_step(
                qkv, self.conv_weight[...], None, state.conv, activation="silu"
            )
            cache = cache.astype(jnp.float32)
        q, k, v, log_a = (a.astype(jnp.float32) for a in self._heads(qkv, inputs["x"], self))
        s = jnp.exp(log_a)[..., None] * state.ssm + k[..., None] * v[..., None, :]
        o = jnp.sum((q * self.head_k_dim**-0.5)[..., None] * s, axis=-2)  # exact fp32
        o = o.reshape(o.shape[0], self.value_dim).astype(inputs["qkv"].dtype)
        return o, SelectiveState(cache, s)

    def _project_out(self, o, inputs):
        gate = inputs.get("g")
        o = gated_rms_norm(o, gate, self.norm_weight[...], self.head_v_dim, self.norm_eps, True)
        return dense(self.o_proj, o.astype(inputs["qkv"].dtype))

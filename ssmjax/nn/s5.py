"""S5: a MIMO diagonal SSM with block-diagonal HiPPO-N init (Smith, Warrington, Linderman 2023)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssmjax.nn._base import (
    SkipParam,
    SSMInputParam,
    SSMOutputParam,
    SSMParam,
    SSMStepParam,
    register_layer,
)
from ssmjax.nn._diagonal import DiagonalSSM
from ssmjax.ops.discretize import discretize_bilinear, discretize_zoh
from ssmjax.ops.hippo import s5_init

__all__ = ["S5"]

_C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")


def _complex_param(value: jax.Array) -> jax.Array:
    """Stores a complex matrix as a trailing (real, imag) axis, as S5 does."""
    return jnp.stack([jnp.real(value), jnp.imag(value)], axis=-1).astype(jnp.float32)


@register_layer("s5")
class S5(DiagonalSSM):
    r"""S5 layer: ``h_t = Lambda_bar h_{t-1} + B_bar u_t``, ``y_t = Re(C h_t) + D u_t``.

    Faithful to lindermanlab/S5: ``Lambda`` from the HiPPO-N (normal part of HiPPO-LegS)
    eigendecomposition of one block of size ``d_state / blocks``, tiled over ``blocks``
    blocks; ``B = V^{-1} B_0`` with ``B_0`` LeCun-normal; ``C = C_0 V`` (or complex normal);
    one timescale per state, ``log dt ~ U[log dt_min, log dt_max]``; ZOH (default) or
    bilinear discretisation; ``D ~ N(0, 1)``. With ``conj_sym`` (default) only one
    eigenvalue of each conjugate pair is kept (``d_state/2`` complex states) and the output
    is ``2 Re(C h)``. The recurrence runs through :func:`ssmjax.ops.linear_recurrence`.

    Parameters of type :class:`~ssmjax.nn.SSMParam` (own learning rate, no weight decay in
    S5's ``standard`` optimizer setting): ``Lambda_re``, ``Lambda_im``, ``B``, ``log_step``.
    ``C`` and ``D`` are ordinary ``nnx.Param``.

    Parameter count (``P = d_state/2`` with conj_sym, ``H = d_model``):
    ``2P + 2PH + 2PH·(2 if bidirectional else 1) + H + P`` — e.g. S5's LRA ListOps layer
    (H=128, ``ssm_size_base``=16, blocks=8, bidirectional): 8·2 + 2048 + 4096 + 128 + 8 =
    6296, as in the reference implementation.

    Args:
      d_model: ``H``, input/output features.
      d_state: ``P`` before conjugate halving (S5's ``ssm_size_base``), divisible by
        ``2 * blocks`` when ``conj_sym``.
      blocks: number of HiPPO blocks ``J``.
      conj_sym: keep one eigenvalue per conjugate pair.
      c_init: ``"trunc_standard_normal"`` (S5 default: each row of ``C_0`` LeCun-normal,
        then ``C_0 V``), ``"lecun_normal"`` (``C_0 V``) or ``"complex_normal"``
        (``N(0, 1/2)`` real and imaginary parts, no ``V``).
      discretization: ``"zoh"`` or ``"bilinear"``.
      dt_min: smallest initial timescale.
      dt_max: largest initial timescale.
      clip_eigs: clip ``Re Lambda <= -1e-4`` in the forward pass (stable at any length).
      step_rescale: multiplies every ``dt`` (zero-shot change of sampling rate).
      bidirectional: add a reverse-time scan with its own ``C`` (S5's bidirectional mode;
        padded batches are handled exactly, see ``mask``).
      implementation: passed to :func:`ssmjax.ops.linear_recurrence`.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = S5(d_model=8, d_state=16, blocks=2, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 10, 8))
    >>> layer(x).shape
    (2, 10, 8)
    >>> y, state = layer(x, return_state=True)
    >>> state.shape, state.dtype
    ((2, 8), dtype('complex64'))
    >>> y_t, state = layer.step(x[:, 0], layer.init_state(2))
    >>> y_t.shape
    (2, 8)
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        blocks: int = 1,
        conj_sym: bool = True,
        c_init: str = "trunc_standard_normal",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        clip_eigs: bool = False,
        step_rescale: float = 1.0,
        bidirectional: bool = False,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        if d_state % blocks:
            raise ValueError(f"S5: d_state={d_state} must be divisible by blocks={blocks}")
        block_size = d_state // blocks
        if conj_sym and block_size % 2:
            raise ValueError(f"S5: with conj_sym the block size ({block_size}) must be even")
        if c_init not in _C_INITS:
            raise ValueError(f"S5: c_init must be one of {_C_INITS}; got {c_init!r}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(
                f"S5: discretization must be 'zoh' or 'bilinear'; got {discretization!r}"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S5: need 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")
        self.d_model, self.d_state, self.blocks = d_model, d_state, blocks
        self.conj_sym, self.discretization, self.c_init = conj_sym, discretization, c_init
        self.clip_eigs, self.step_rescale = clip_eigs, step_rescale
        self.bidirectional, self.implementation = bidirectional, implementation

        Lambda, V, Vinv = s5_init(block_size, blocks, conj_sym=conj_sym)
        p = Lambda.shape[0]
        self.Lambda_re = SSMParam(jnp.asarray(Lambda.real, jnp.float32))
        self.Lambda_im = SSMParam(jnp.asarray(Lambda.imag, jnp.float32))
        lecun = nnx.initializers.lecun_normal()
        b0 = np.asarray(lecun(rngs.params(), (d_state, d_model)), np.float64)
        self.B = SSMInputParam(_complex_param(jnp.asarray(Vinv @ b0)))
        self.C = SSMOutputParam(
            jnp.concatenate(
                [self._init_c(rngs, V) for _ in range(2 if bidirectional else 1)], axis=1
            )
        )
        self.D = SkipParam(jax.random.normal(rngs.params(), (d_model,)))
        self.log_step = SSMStepParam(
            jax.random.uniform(rngs.params(), (p,), minval=np.log(dt_min), maxval=np.log(dt_max))
        )

    def _init_c(self, rngs: nnx.Rngs, V: np.ndarray) -> jax.Array:
        h, p_full = self.d_model, V.shape[0]
        if self.c_init == "complex_normal":
            c = jax.random.normal(rngs.params(), (h, V.shape[1], 2)) * np.sqrt(0.5)
            return c.astype(jnp.float32)
        if self.c_init == "lecun_normal":
            c0 = nnx.initializers.lecun_normal()(rngs.params(), (h, p_full, 2))
        else:  # trunc_standard_normal: each row drawn on its own, LeCun-normal over P
            keys = jax.random.split(rngs.params(), h)
            init = nnx.initializers.lecun_normal()
            c0 = jnp.concatenate([init(k, (1, p_full, 2)) for k in keys], axis=0)
        c0 = np.asarray(c0[..., 0], np.float64) + 1j * np.asarray(c0[..., 1], np.float64)
        return _complex_param(jnp.asarray(c0 @ V))

    def state_shape(self) -> tuple[int, ...]:
        return (self.Lambda_re.shape[0],)

    def discretize(self):
        re = self.Lambda_re[...]
        if self.clip_eigs:
            re = jnp.minimum(re, -1e-4)
        lam = jax.lax.complex(re, self.Lambda_im[...])
        b = jax.lax.complex(self.B[..., 0], self.B[..., 1])
        dt = self.step_rescale * jnp.exp(self.log_step[...])
        fn = discretize_zoh if self.discretization == "zoh" else discretize_bilinear
        lambda_bar, b_bar = fn(lam, b, dt)
        c = jax.lax.complex(self.C[..., 0], self.C[..., 1])
        cs = jnp.split(c, 2, axis=1) if self.bidirectional else [c]
        return lambda_bar, b_bar, cs, self.D[...], 2.0 if self.conj_sym else 1.0

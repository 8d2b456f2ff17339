"""S4D: the diagonal structured state space (Gu, Gupta, Goel, Ré 2022, "On the
Parameterization and Initialization of Diagonal State Space Models")."""

from typing import Literal

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
    apply_mask,
    check_sequence,
    register_layer,
)
from ssmjax.nn._diagonal import DiagonalSSM
from ssmjax.ops.discretize import discretize_bilinear, discretize_zoh
from ssmjax.ops.hippo import s4d_init
from ssmjax.ops.ssm_kernel import fft_conv, vandermonde_kernel

__all__ = ["S4D", "conv_forward"]

_INITS = ("lin", "inv", "legs", "real")


def _pairs(value) -> jax.Array:
    """Stores a complex array as a trailing (real, imag) axis."""
    value = jnp.asarray(value)
    return jnp.stack([jnp.real(value), jnp.imag(value)], axis=-1).astype(jnp.float32)


def _unpair(param: nnx.Variable) -> jax.Array:
    return jax.lax.complex(param[..., 0], param[..., 1])


def conv_forward(
    x: jax.Array,
    mask: jax.Array | None,
    k: jax.Array,
    d: jax.Array,
    *,
    bidirectional: bool,
) -> jax.Array:
    """The convolution mode shared by S4 and S4D: ``y = K * x + D x`` (masked).

    Padded inputs are zeroed before the convolution and padded outputs zeroed after. That is
    exact for **suffix padding** (the LRA convention): the causal part only reads earlier
    inputs, the anti-causal part only later ones, which are zeros past each sequence's end.
    (Interior padding — holes inside a sequence — behaves like zero inputs here, while the
    recurrent modes skip those steps; use the recurrent mode for such masks.)

    Args:
      x: ``(b, l, h)``.
      mask: ``(b, l)`` bool or None.
      k: ``(c, h, l)`` kernels, ``c = 2`` (forward, reverse) when bidirectional.
      d: ``(h,)`` skip.
      bidirectional: use ``k[1]`` as the anti-causal kernel.

    Returns:
      ``(b, l, h)`` in ``x.dtype``.
    """
    xf = x.astype(jnp.float32)
    if mask is not None:
        xf = jnp.where(mask[..., None], xf, jnp.zeros((), xf.dtype))
    y = fft_conv(xf, k[0], k_reverse=k[1] if bidirectional else None)
    y = y + d[None, None] * xf
    return apply_mask(y, mask).astype(x.dtype)


@register_layer("s4d")
class S4D(DiagonalSSM):
    r"""S4D layer: a SISO diagonal SSM per channel, ``y = K * u + D u``.

    For every channel ``h`` of ``d_model``, an SSM with ``n = d_state/2`` complex states (one
    of each conjugate pair, output ``2 Re(C x)``) and
    ``A = -exp(log_A_real) + i A_imag``, step ``dt = exp(log_dt)``, discretised by ZOH
    (default, ``A_bar = exp(dt A)``, ``B_bar = (A_bar - 1)/A B``) or bilinear. As the minimal
    S4D (``models/s4/s4d.py`` of state-spaces/s4):

    * ``init="lin"`` (default, S4D-Lin): ``A_n = -1/2 + i pi n``; ``"inv"`` (S4D-Inv):
      ``-1/2 + i (N/pi)(N/(2n+1) - 1)``; ``"legs"`` (S4D-LegS): the HiPPO-LegS NPLR
      eigenvalues, ``B = V^* B_LegS``; ``"real"`` (S4D-Real): ``A_n = -(n + 1)``,
      ``n = 0 .. N/2-1``, imaginary parts 0 (as S4's ``dplr(init='real')``). Every row
      ``h`` starts from the same ``A``.
    * ``log dt ~ U[log dt_min, log dt_max]`` per channel; ``C ~`` complex normal (real and
      imaginary parts ``N(0, 1/2)``, i.e. ``torch.randn(cfloat)``); ``D ~ N(0, 1)``.
    * ``B = 1`` for ``lin``/``inv``/``real`` is folded into ``C`` (no parameter, as the minimal
      S4D); for ``legs`` the HiPPO ``B`` is kept as a trainable ``B`` (``SSMParam``).

    :class:`~ssmjax.nn.SSMParam` (own lr, no weight decay): ``log_A_real``, ``A_imag``,
    ``log_dt`` (an ``SSMStepParam``) and, for ``legs``, ``B`` (an ``SSMInputParam``). ``C``
    (``SSMOutputParam``) and ``D`` (``SkipParam``) are regular parameters by default.

    Modes. ``mode="conv"`` (default): a full sequence without state is the FFT convolution
    with the kernel ``K_l = 2 Re(sum_n C_n B_bar_n A_bar_n^l)``
    (:func:`~ssmjax.ops.vandermonde_kernel`); ``mode="scan"``: the recurrence through
    :func:`~ssmjax.ops.linear_recurrence` (``implementation`` applies there). Calls with
    ``state=`` or ``return_state=True``, and :meth:`step`, always use the recurrence (they
    need the state). Both modes give the same outputs and gradients.

    Bidirectional: a second ``C``; conv mode uses a two-sided kernel (the reverse half's lag
    0 multiplies the current input), which equals a forward plus a reverse-time scan with the
    shared ``A, B, dt``. Masks: the recurrence skips padded steps; conv mode zeros padded
    inputs (exact for suffix padding, see :func:`conv_forward`); padded outputs are 0.

    Parameter count (``N = d_state``, ``H = d_model``, ``c = 2`` if bidirectional else 1):
    ``H N`` (``log_A_real``, ``A_imag``: ``H x N/2`` each) ``+ H`` (``log_dt``) ``+ c H N``
    (``C``: ``c x H x N/2`` complex) ``+ H`` (``D``), plus ``H N`` for ``init="legs"``
    (``B``) — e.g. ``H=128, N=64``: 8192 + 128 + 8192 + 128 = 16640.

    Args:
      d_model: ``H``, input/output features (one SSM each).
      d_state: ``N``, real state size per channel (even); ``N/2`` complex states are stored.
      init: ``"lin"``, ``"inv"``, ``"legs"`` or ``"real"``.
      discretization: ``"zoh"`` or ``"bilinear"``.
      dt_min: smallest initial step.
      dt_max: largest initial step.
      mode: ``"conv"`` or ``"scan"`` for full sequences without state.
      bidirectional: add a reverse-time direction with its own ``C``.
      implementation: passed to :func:`ssmjax.ops.linear_recurrence` (recurrent mode).
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Shapes: ``x: (b, l, d_model)`` -> ``(b, l, d_model)``; state ``(b, d_model, d_state/2)``
    complex64.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = S4D(d_model=8, d_state=16, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 10, 8))
    >>> layer(x).shape
    (2, 10, 8)
    >>> y, state = layer(x, return_state=True)
    >>> state.shape, state.dtype
    ((2, 8, 8), dtype('complex64'))
    >>> bool(jnp.allclose(y, layer(x), atol=1e-5))
    True
    >>> y_t, state = layer.step(x[:, 0], layer.init_state(2))
    >>> y_t.shape
    (2, 8)
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        *,
        init: Literal["lin", "inv", "legs", "real"] = "lin",
        discretization: Literal["zoh", "bilinear"] = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        mode: Literal["conv", "scan"] = "conv",
        bidirectional: bool = False,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        if init not in _INITS:
            raise ValueError(f"S4D: init must be one of {_INITS}; got {init!r}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(
                f"S4D: discretization must be 'zoh' or 'bilinear'; got {discretization!r}"
            )
        if mode not in ("conv", "scan"):
            raise ValueError(f"S4D: mode must be 'conv' or 'scan'; got {mode!r}")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S4D: d_state must be even and >= 2; got {d_state}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S4D: need 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")
        self.d_model, self.d_state, self.init = d_model, d_state, init
        self.discretization, self.mode = discretization, mode
        self.bidirectional, self.implementation = bidirectional, implementation
        n = d_state // 2

        if init == "real":
            A, B = s4d_init("real", n)  # n real states -(1..n), stored as complex with Im 0
            A = A.astype(np.complex128)
        else:
            A, B = s4d_init(init, d_state)
        self.log_A_real = SSMParam(jnp.asarray(np.tile(np.log(-A.real), (d_model, 1)), jnp.float32))
        self.A_imag = SSMParam(jnp.asarray(np.tile(A.imag, (d_model, 1)), jnp.float32))
        if init == "legs":
            self.B = SSMInputParam(_pairs(np.tile(B, (d_model, 1))))
        self.log_dt = SSMStepParam(
            jax.random.uniform(
                rngs.params(), (d_model,), minval=np.log(dt_min), maxval=np.log(dt_max)
            )
        )
        channels = 2 if bidirectional else 1
        self.C = SSMOutputParam(
            jax.random.normal(rngs.params(), (channels, d_model, n, 2)) * np.sqrt(0.5)
        )
        self.D = SkipParam(jax.random.normal(rngs.params(), (d_model,)))

    # -- DiagonalSSM hooks -------------------------------------------------------------------

    def state_shape(self) -> tuple[int, ...]:
        return (self.d_model, self.d_state // 2)

    def _continuous(self):
        A = jax.lax.complex(-jnp.exp(self.log_A_real[...]), self.A_imag[...])
        B = _unpair(self.B) if self.init == "legs" else jnp.ones_like(A)
        dt = jnp.exp(self.log_dt[...])[:, None]  # (H, 1)
        return A, B, dt

    def discretize(self):
        A, B, dt = self._continuous()
        fn = discretize_zoh if self.discretization == "zoh" else discretize_bilinear
        lambda_bar, b_bar = fn(A, B, dt)
        c = _unpair(self.C)
        return lambda_bar, b_bar, list(c), self.D[...], 2.0

    def project_in(self, x: jax.Array, b_bar: jax.Array) -> jax.Array:
        """SISO: ``(b, l, H)`` -> ``(b, l, H, n)``, ``x_h * B_bar[h, n]``."""
        return x.astype(b_bar.dtype)[..., None] * b_bar[None, None]

    def project_out(self, h: jax.Array, c: jax.Array) -> jax.Array:
        """SISO: ``(b, l, H, n)`` -> ``(b, l, H)``, ``Re(sum_n C[h, n] x[h, n])``."""
        return jnp.real(jnp.einsum("...hn,hn->...h", h, c))

    def project_in_planes(self, x: jax.Array, b_bar: jax.Array) -> tuple[jax.Array, jax.Array]:
        """SISO :meth:`project_in` as real and imaginary planes."""
        x = x.astype(jnp.float32)[..., None]
        return x * jnp.real(b_bar)[None, None], x * jnp.imag(b_bar)[None, None]

    def project_out_planes(self, h_re: jax.Array, h_im: jax.Array, c: jax.Array) -> jax.Array:
        """SISO :meth:`project_out` from planes."""
        return jnp.einsum("...hn,hn->...h", h_re, jnp.real(c)) - jnp.einsum(
            "...hn,hn->...h", h_im, jnp.imag(c)
        )

    # -- convolution mode --------------------------------------------------------------------

    def kernel(self, length: int) -> jax.Array:
        """The convolution kernel(s) ``(c, d_model, length)`` (``c = 2`` if bidirectional)."""
        A, B, dt = self._continuous()
        if self.discretization == "zoh":
            log_lambda_bar = dt * A
            _, b_bar = discretize_zoh(A, B, dt)
        else:
            lambda_bar, b_bar = discretize_bilinear(A, B, dt)
            log_lambda_bar = jnp.log(lambda_bar)
        c = _unpair(self.C) * b_bar[None]
        return vandermonde_kernel(c, log_lambda_bar, length, scale=2.0)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        state: jax.Array | None = None,
        return_state: bool = False,
    ):
        """Applies the layer; see the class docstring for the modes.

        Args:
          x: ``(b, l, d_model)``.
          mask: optional ``(b, l)`` bool, True at real tokens.
          state: optional ``(b, d_model, d_state/2)`` complex initial state (recurrent mode).
          return_state: also return the final state (recurrent mode).

        Returns:
          ``y: (b, l, d_model)`` in ``x.dtype``, or ``(y, state)``.
        """
        if self.mode == "scan" or state is not None or return_state:
            return super().__call__(x, mask, state=state, return_state=return_state)
        check_sequence(type(self).__name__, x, self.d_model, mask)
        k = self.kernel(x.shape[1])
        return conv_forward(x, mask, k, self.D[...], bidirectional=self.bidirectional)

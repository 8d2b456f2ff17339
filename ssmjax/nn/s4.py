"""S4: the structured state space sequence model with a DPLR (HiPPO) state matrix
(Gu, Goel, Ré, ICLR 2022, "Efficiently Modeling Long Sequences with Structured State Spaces")."""

from typing import Literal, NamedTuple

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
    check_has_state,
    check_sequence,
    register_layer,
)
from ssmjax.nn.s4d import _pairs, _unpair, conv_forward
from ssmjax.ops.hippo import MEASURES, nplr
from ssmjax.ops.ssm_kernel import DPLRStep, dplr_c_tilde, dplr_kernel, dplr_step, dplr_step_setup

__all__ = ["S4", "S4Recurrent"]


class S4Recurrent(NamedTuple):
    """Everything S4's recurrent form needs, computed once per call (see :meth:`S4.recurrent`)."""

    step: DPLRStep  #: the O(N) bilinear step
    c: jax.Array  #: ``(d_model, d_state/2)`` complex, the recovered output matrix ``C``
    d: jax.Array  #: ``(d_model,)`` skip


@register_layer("s4")
class S4(nnx.Module):
    r"""S4 layer: a SISO DPLR SSM per channel, ``y = K * u + D u``, with a HiPPO init.

    Faithful to ``SSMKernelDPLR`` + ``FFTConv`` of state-spaces/s4 (``mode=nplr``):

    * ``A = Lambda - P P^*`` (over the full, conjugate-expanded state) from
      :func:`ssmjax.ops.nplr` of ``measure`` (``"legs"``: ``Re Lambda = -1/2``), stored as
      ``A_real = log(-Re Lambda)`` (S4's ``exp`` real transform; ``-Re`` clamped to
      ``>= 1e-4`` as S4 does, for measures with ``Re Lambda = 0``) and ``A_imag = Im Lambda``,
      ``Lambda = -exp(A_real) + i A_imag``. Our :func:`~ssmjax.ops.nplr` keeps the eigenvalue
      of each conjugate pair with ``Im >= 0`` (S4 keeps the other one): the same real model.
    * ``P``, ``B`` from the NPLR form (``B = V^* B_HiPPO``, ``P = V^* P_HiPPO``), shared by
      ``d_model / n_ssm`` channels (channel ``h`` uses copy ``h % n_ssm``, as S4's
      ``repeat('(v t)')``); ``n_ssm=None`` means one copy per channel.
    * ``dt`` per channel (``(d_model,)``; S4's ``dt_tie``): ``log dt ~ U[log dt_min,
      log dt_max]``, stored as ``inv_dt`` = inverse of ``dt_transform`` (``"softplus"`` as the
      S4 layer config, or ``"exp"``).
    * ``C ~`` complex normal (parts ``N(0, 1/2)``), ``(channels, d_model, d_state/2)``,
      ``channels = 2`` if bidirectional; ``D ~ N(0, 1)``, ``(d_model,)``.
    * Bilinear discretisation; the kernel by Cauchy kernels + Woodbury at the roots of unity
      (:func:`~ssmjax.ops.dplr_kernel`), then FFT convolution.

    **``l_max`` and C~.** As S4, the parameter ``C`` holds ``C~ = C (I - A_bar^{l_max})``
    (the true output matrix ``C`` is drawn at init and converted, with the initial
    ``A, dt``). The kernel is computed at length ``l_max`` and cropped to the sequence
    length ``L``; that is exactly the impulse response of ``(A_bar, B_bar, C)``. For
    ``L > l_max`` the layer does *not* truncate the kernel (S4's ``FFTConv`` does) nor mutate
    the parameter (S4's ``double_length``): it computes the same system's kernel at length
    ``L``, converting ``C~ -> C -> C~_L`` through dense ``A_bar^{l_max}``, ``A_bar^L``
    (O(H N^3 log L), :func:`~ssmjax.ops.dplr_c_tilde`). ``l_max=None`` learns ``C`` itself
    and converts to ``C~_L`` on every call (S4's "global kernel").
    Conditioning: recovering ``C`` solves with ``I - A_bar^{l_max}``, which is
    ill-conditioned when ``A`` has eigenvalues with ``|dt lambda l_max| << 1``; ``"legs"``
    (eigenvalues ``-1 .. -N``) is fine, but ``"fourier"`` has an (uncontrollable) eigenvalue 0
    (``-1e-4`` after the clamp), for which float32 recurrent outputs drift from the
    convolution (and its frequency-0 Cauchy sums lose digits in float32 in any mode).

    **Recurrent form** (``state=``, ``return_state=True``, :meth:`step`): S4's O(N) bilinear
    DPLR step (:func:`~ssmjax.ops.dplr_step`, Woodbury on ``I - dt/2 A``), run over a chunk
    with ``lax.scan``; the state is ``(b, d_model, d_state/2)`` complex (one of each conjugate
    pair). The output matrix is recovered once per call as ``C = C~ (I - A_bar^{l_max})^{-1}``
    (a dense solve, O(H N^3 log l_max)); for fast token-by-token decoding compute it once
    with :meth:`recurrent` and pass ``params=`` to :meth:`step`. Convolution and recurrence
    give the same outputs (the recurrence is the same system, not an approximation).

    **Bidirectional**: a second ``C~`` and a two-sided kernel (forward kernel + anti-causal
    kernel whose lag 0 multiplies the current input; S4's ``fftconv.py`` shifts that half one
    step, "a deliberate off-by-one"), so it equals a forward plus a reverse-time SSM sharing
    ``A, B, dt``. No state or step. Masks: conv mode zeros padded inputs (exact for suffix
    padding, :func:`~ssmjax.nn.s4d.conv_forward`); the recurrence skips padded steps; padded
    outputs are 0.

    :class:`~ssmjax.nn.SSMParam` (own lr, no weight decay): ``A_real``, ``A_imag``, ``P``,
    ``B`` (an ``SSMInputParam``), ``inv_dt`` (an ``SSMStepParam``; S4's LRA text configs train
    dt at the global lr: ``dt_global``). ``C`` (``SSMOutputParam``) and ``D`` (``SkipParam``)
    are regular parameters by default (S4 registers C with the global weight decay).

    Parameter count (``H = d_model``, ``N = d_state``, ``S = n_ssm``, ``r = rank``,
    ``c = 2`` if bidirectional else 1): ``S N`` (``A_real``, ``A_imag``: ``S x N/2`` each)
    ``+ r S N`` (``P``: ``r x S x N/2`` complex) ``+ S N`` (``B``) ``+ H`` (``inv_dt``)
    ``+ c H N`` (``C``) ``+ H`` (``D``) ``= 2H + (2 + r) S N + c H N``. S4's LRA ListOps layer
    (``configs/experiment/lra/s4-listops.yaml``: H=256, N=4, n_ssm=1, rank 1, bidirectional)
    has 512 + 12 + 2048 = **2572** (the same shapes as the reference's ``inv_dt (H, 1)``,
    ``A_real``/``A_imag (1, 2)``, ``B (1, 1, 2)`` and ``P (1, 1, 2)`` complex,
    ``C (2, 256, 2)`` complex, ``D (1, 256)``; the block's GLU output linear is not part of
    this layer).

    Args:
      d_model: ``H``, input/output features (one SSM each).
      d_state: ``N``, real state size (even); ``N/2`` complex states are stored.
      measure: HiPPO measure for the init: ``"legs"``, ``"legt"`` (needs ``rank >= 2``),
        ``"lagt"`` or ``"fourier"``.
      rank: rank ``r`` of the low-rank term ``P``.
      n_ssm: number of independent ``(A, P, B)`` copies (divides ``d_model``); None for
        ``d_model``.
      l_max: length that ``C~`` is tied to, or None to learn ``C`` directly.
      dt_min: smallest initial step.
      dt_max: largest initial step.
      dt_transform: ``"softplus"`` or ``"exp"``.
      bidirectional: add a reverse-time direction (two-sided kernel).
      implementation: S4's recurrence is not diagonal, so the
        :func:`~ssmjax.ops.linear_recurrence` implementations do not apply: it always runs
        as a ``lax.scan`` of the O(N) step. ``None`` or ``"sequential"``; any other value
        raises ``NotImplementedError``.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Shapes: ``x: (b, l, d_model)`` -> ``(b, l, d_model)``; state ``(b, d_model, d_state/2)``
    complex64.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = S4(d_model=8, d_state=16, l_max=32, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 10, 8))
    >>> y = layer(x)                       # convolution
    >>> y.shape
    (2, 10, 8)
    >>> y_rec, state = layer(x, return_state=True)   # recurrence
    >>> state.shape, bool(jnp.allclose(y, y_rec, atol=1e-4))
    ((2, 8, 8), True)
    >>> y_t, state = layer.step(x[:, 0], layer.init_state(2))
    >>> y_t.shape
    (2, 8)
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        *,
        measure: Literal["legs", "legt", "lagt", "fourier"] = "legs",
        rank: int = 1,
        n_ssm: int | None = 1,
        l_max: int | None = 1024,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_transform: Literal["softplus", "exp"] = "softplus",
        bidirectional: bool = False,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        if measure not in MEASURES:
            raise ValueError(f"S4: measure must be one of {MEASURES}; got {measure!r}")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S4: d_state must be even and >= 2; got {d_state}")
        n_ssm = d_model if n_ssm is None else n_ssm
        if n_ssm < 1 or d_model % n_ssm:
            raise ValueError(f"S4: n_ssm={n_ssm} must divide d_model={d_model}")
        if l_max is not None and (int(l_max) != l_max or l_max < 1):
            raise ValueError(f"S4: l_max must be a positive int or None; got {l_max!r}")
        if dt_transform not in ("softplus", "exp"):
            raise ValueError(f"S4: dt_transform must be 'softplus' or 'exp'; got {dt_transform!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S4: need 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")
        if implementation not in (None, "sequential"):
            raise NotImplementedError(
                f"S4: implementation={implementation!r} cannot run: the DPLR recurrence is "
                "not diagonal and always runs as a lax.scan of its O(N) step "
                "(implementation None or 'sequential')"
            )
        self.d_model, self.d_state, self.measure = d_model, d_state, measure
        self.rank, self.n_ssm, self.l_max = rank, n_ssm, None if l_max is None else int(l_max)
        self.dt_transform, self.bidirectional = dt_transform, bidirectional
        self.implementation = implementation

        Lambda, P, B, _ = nplr(measure, d_state, rank)

        def tile(a):  # one copy per independent SSM: (n,) -> (n_ssm, n)
            return np.tile(a, (n_ssm, 1))

        self.A_real = SSMParam(
            jnp.asarray(tile(np.log(np.maximum(-Lambda.real, 1e-4))), jnp.float32)
        )
        self.A_imag = SSMParam(jnp.asarray(tile(Lambda.imag), jnp.float32))
        self.P = SSMParam(_pairs(np.tile(P[:, None], (1, n_ssm, 1))))  # (r, S, n, 2)
        self.B = SSMInputParam(_pairs(tile(B)))  # (S, n, 2)
        log_dt = jax.random.uniform(
            rngs.params(), (d_model,), minval=np.log(dt_min), maxval=np.log(dt_max)
        )
        # inverse softplus: log(expm1(dt)), accurate for small dt
        inv_dt = jnp.log(jnp.expm1(jnp.exp(log_dt))) if dt_transform == "softplus" else log_dt
        self.inv_dt = SSMStepParam(inv_dt.astype(jnp.float32))
        channels = 2 if bidirectional else 1
        c = jax.random.normal(rngs.params(), (channels, d_model, d_state // 2, 2)) * np.sqrt(0.5)
        if self.l_max is not None:  # store C~ = C (I - A_bar^l_max), as S4's first forward
            Lam, P_, _, dt = self._system()
            c = _pairs(dplr_c_tilde(_unpair(c), Lam, P_, dt, self.l_max))
        self.C = SSMOutputParam(c)
        self.D = SkipParam(jax.random.normal(rngs.params(), (d_model,)))

    # -- parameters -> system ----------------------------------------------------------------

    def dt(self) -> jax.Array:
        """Step sizes ``(d_model,)``."""
        f = jax.nn.softplus if self.dt_transform == "softplus" else jnp.exp
        return f(self.inv_dt[...])

    def _system(self):
        """``(Lambda (H, n), P (r, H, n), B (H, n), dt (H,))`` with the copies tiled to H."""
        reps = self.d_model // self.n_ssm
        Lambda = jax.lax.complex(-jnp.exp(self.A_real[...]), self.A_imag[...])
        Lambda = jnp.tile(Lambda, (reps, 1))
        P = jnp.tile(_unpair(self.P), (1, reps, 1))
        B = jnp.tile(_unpair(self.B), (reps, 1))
        return Lambda, P, B, self.dt()

    def kernel(self, length: int) -> jax.Array:
        """The convolution kernel(s) ``(c, d_model, length)`` (``c = 2`` if bidirectional)."""
        Lambda, P, B, dt = self._system()
        c = _unpair(self.C)
        if self.l_max is not None and length <= self.l_max:
            return dplr_kernel(c, Lambda, P, B, dt, self.l_max)[..., :length]
        if self.l_max is not None:
            c = dplr_c_tilde(c, Lambda, P, dt, self.l_max, inverse=True)
        c_tilde = dplr_c_tilde(c, Lambda, P, dt, length)
        return dplr_kernel(c_tilde, Lambda, P, B, dt, length)

    def recurrent(self) -> S4Recurrent:
        """The recurrent form: O(N) step parameters, the true ``C`` and ``D``."""
        Lambda, P, B, dt = self._system()
        c = _unpair(self.C)[0]
        if self.l_max is not None:
            c = dplr_c_tilde(c, Lambda, P, dt, self.l_max, inverse=True)
        return S4Recurrent(dplr_step_setup(Lambda, P, B, dt), c, self.D[...])

    # -- the one interface -------------------------------------------------------------------

    def state_shape(self) -> tuple[int, ...]:
        return (self.d_model, self.d_state // 2)

    def init_state(self, batch_size: int) -> jax.Array:
        """Zero state ``(batch_size, d_model, d_state/2)``, complex64.

        Raises:
          ValueError: for a bidirectional layer (it has no recurrent state).
        """
        check_has_state(type(self).__name__, self.bidirectional, "init_state")
        return jnp.zeros((batch_size, *self.state_shape()), jnp.complex64)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        state: jax.Array | None = None,
        return_state: bool = False,
    ):
        """Applies the layer: convolution without state, the recurrence with it.

        Args:
          x: ``(b, l, d_model)`` (fp32 or bf16; computed in fp32 / complex64).
          mask: optional ``(b, l)`` bool, True at real tokens.
          state: optional ``(b, d_model, d_state/2)`` complex initial state (unidirectional).
          return_state: also return the final state (the state after the last real token).

        Returns:
          ``y: (b, l, d_model)`` in ``x.dtype``, or ``(y, state)``.
        """
        name = type(self).__name__
        check_sequence(name, x, self.d_model, mask)
        if state is not None or return_state:
            check_has_state(name, self.bidirectional, "take or return a state")
        if state is None and not return_state:
            k = self.kernel(x.shape[1])
            return conv_forward(x, mask, k, self.D[...], bidirectional=self.bidirectional)
        expected = (x.shape[0], *self.state_shape())
        if state is None:
            state = jnp.zeros(expected, jnp.complex64)
        elif state.shape != expected:
            raise ValueError(f"{name}: state must have shape {expected}; got {state.shape}")
        rec = self.recurrent()
        u = jnp.swapaxes(x.astype(jnp.float32), 0, 1)  # (l, b, H)
        m = None if mask is None else jnp.swapaxes(mask, 0, 1)

        def body(h, inputs):
            u_t, m_t = inputs
            h_new = dplr_step(rec.step, h, u_t)
            if m_t is not None:
                h_new = jnp.where(m_t[:, None, None], h_new, h)
            return h_new, self._output(rec, h_new, u_t)

        final, y = jax.lax.scan(body, state.astype(jnp.complex64), (u, m))
        y = apply_mask(jnp.swapaxes(y, 0, 1), mask).astype(x.dtype)
        return (y, final) if return_state else y

    @staticmethod
    def _output(rec: S4Recurrent, h: jax.Array, u: jax.Array) -> jax.Array:
        """``y = 2 Re(C h) + D u``: ``h (b, H, n)``, ``u (b, H)`` -> ``(b, H)``."""
        y = 2.0 * jnp.real(jnp.einsum("hn,bhn->bh", rec.c, h))
        return y + rec.d[None] * u

    def step(self, x_t: jax.Array, state: jax.Array, *, params: S4Recurrent | None = None):
        """One recurrent step, O(d_model d_state) given ``params``.

        Args:
          x_t: ``(b, d_model)`` input at one time step.
          state: ``(b, d_model, d_state/2)`` complex state.
          params: the output of :meth:`recurrent`; computed here when None (which costs a
            dense O(H N^3 log l_max) solve — precompute it for token-by-token decoding).

        Returns:
          ``(y_t, state)``: ``(b, d_model)`` output in ``x_t.dtype`` and the new state.
        """
        check_has_state(type(self).__name__, self.bidirectional, "step")
        rec = self.recurrent() if params is None else params
        u = x_t.astype(jnp.float32)
        state = dplr_step(rec.step, state, u)
        return self._output(rec, state, u).astype(x_t.dtype), state

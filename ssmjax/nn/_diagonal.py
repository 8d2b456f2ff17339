"""The shared machinery of diagonal (complex) SSM layers: S4D, S5 and LRU.

A subclass supplies its discretised system through :meth:`DiagonalSSM.discretize`:

* ``lambda_bar`` — diagonal transition, complex ``(*s)`` (``(p,)`` for MIMO S5/LRU,
  ``(d, n)`` for SISO S4D);
* ``b_bar`` — input matrix, used by :meth:`DiagonalSSM.project_in` (``x -> B x``);
* ``cs`` — one output matrix per direction, used by :meth:`DiagonalSSM.project_out`;
* ``d`` — the ``(d_model,)`` skip;
* ``scale`` — 2 for conjugate-symmetric systems (only half the eigenvalues are kept, so
  ``y = 2 Re(C h)``), else 1.

This base class then gives every mode of the one layer interface: the full sequence with
an optional mask (padded steps are identity steps, see :func:`skip_masked`), state in and
out for streaming, ``init_state`` and an O(state) ``step``, and the bidirectional variant
(a reverse scan with the same ``lambda_bar``/``b_bar`` and its own ``C``).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ssmjax.nn._base import apply_mask, check_has_state, check_sequence, skip_masked
from ssmjax.ops.scan import linear_recurrence, linear_recurrence_planes, pallas_first

__all__ = ["DiagonalSSM"]


class DiagonalSSM(nnx.Module):
    """Base class; see the module docstring. Subclasses set ``d_model``, ``bidirectional``,
    ``implementation`` and implement :meth:`discretize` and :meth:`state_shape`."""

    d_model: int
    bidirectional: bool
    implementation: str | None

    # -- to implement -------------------------------------------------------------------

    def discretize(self):
        """Returns ``(lambda_bar, b_bar, cs, d, scale)``; see the module docstring."""
        raise NotImplementedError

    def state_shape(self) -> tuple[int, ...]:
        """Shape of the recurrent state of one sequence (without the batch axis)."""
        raise NotImplementedError

    # -- overridable projections (MIMO by default) ----------------------------------------

    def project_in(self, x: jax.Array, b_bar: jax.Array) -> jax.Array:
        """``(b, l, d_model)`` real -> ``(b, l, *s)`` complex. MIMO: ``B x`` with B (p, d)."""
        return jnp.einsum("...h,ph->...p", x.astype(b_bar.dtype), b_bar)

    def project_out(self, h: jax.Array, c: jax.Array) -> jax.Array:
        """``(b, l, *s)`` complex -> ``(b, l, d_model)`` real. MIMO: ``Re(C h)``, C (d, p)."""
        return jnp.real(jnp.einsum("...p,hp->...h", h, c))

    def project_in_planes(self, x: jax.Array, b_bar: jax.Array) -> tuple[jax.Array, jax.Array]:
        """:meth:`project_in` as real and imaginary planes (two real matmuls)."""
        x = x.astype(jnp.float32)
        return (
            jnp.einsum("...h,ph->...p", x, jnp.real(b_bar)),
            jnp.einsum("...h,ph->...p", x, jnp.imag(b_bar)),
        )

    def project_out_planes(self, h_re: jax.Array, h_im: jax.Array, c: jax.Array) -> jax.Array:
        """:meth:`project_out` from planes: ``Re(C h) = C_re h_re - C_im h_im``."""
        return jnp.einsum("...p,hp->...h", h_re, jnp.real(c)) - jnp.einsum(
            "...p,hp->...h", h_im, jnp.imag(c)
        )

    # -- the one interface ------------------------------------------------------------------

    def init_state(self, batch_size: int) -> jax.Array:
        """Zero state ``(batch_size, *state_shape)``, complex64.

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
        """Applies the SSM to a sequence.

        Args:
          x: ``(b, l, d_model)`` input (fp32 or bf16; the recurrence runs in complex64).
          mask: optional ``(b, l)`` bool, True at real tokens. Padded steps are skipped
            (they leave the state unchanged) and their outputs are zero.
          state: optional initial state ``(b, *state_shape)`` (unidirectional only).
          return_state: also return the final state (the state after the last real token).

        Returns:
          ``y`` of shape ``(b, l, d_model)`` in ``x.dtype``, or ``(y, state)`` when
          ``return_state``.
        """
        name = type(self).__name__
        check_sequence(name, x, self.d_model, mask)
        if state is not None or return_state:
            check_has_state(name, self.bidirectional, "take or return a state")
        lambda_bar, b_bar, cs, d, scale = self.discretize()
        if state is not None:
            expected = (x.shape[0], *self.state_shape())
            if state.shape != expected:
                raise ValueError(f"{name}: state must have shape {expected}; got {state.shape}")
        if pallas_first(self.implementation):
            y, last = self._mix_planes(x, mask, state, lambda_bar, b_bar, cs)
        else:
            bu = self.project_in(x, b_bar)
            a, bu = skip_masked(lambda_bar, bu, mask)
            h = linear_recurrence(a, bu, state, implementation=self.implementation)
            y, last = self.project_out(h, cs[0]), h[:, -1]
            if self.bidirectional:
                h_rev = linear_recurrence(a, bu, reverse=True, implementation=self.implementation)
                y = y + self.project_out(h_rev, cs[1])
        y = scale * y + d[None, None] * x.astype(jnp.float32)
        y = apply_mask(y, mask).astype(x.dtype)
        if return_state:
            return y, last
        return y

    def _mix_planes(self, x, mask, state, lambda_bar, b_bar, cs):
        """The recurrence and projections of :meth:`__call__` with ``B u`` and ``h`` as real
        and imaginary planes (for the Pallas kernel: no complex ``(b, l, *s)`` copies).
        Returns ``(C h`` summed over directions, the final complex state)."""
        bu_re, bu_im = self.project_in_planes(x, b_bar)
        a, bu_re = skip_masked(lambda_bar, bu_re, mask)
        _, bu_im = skip_masked(lambda_bar, bu_im, mask)
        impl = self.implementation
        h_re, h_im = linear_recurrence_planes(a, bu_re, bu_im, state, implementation=impl)
        y = self.project_out_planes(h_re, h_im, cs[0])
        if self.bidirectional:
            r_re, r_im = linear_recurrence_planes(
                a, bu_re, bu_im, reverse=True, implementation=impl
            )
            y = y + self.project_out_planes(r_re, r_im, cs[1])
        return y, jax.lax.complex(h_re[:, -1], h_im[:, -1])

    def step(self, x_t: jax.Array, state: jax.Array):
        """One recurrent step, O(state) per token.

        Args:
          x_t: ``(b, d_model)`` input at one time step.
          state: ``(b, *state_shape)`` complex state.

        Returns:
          ``(y_t, state)``: ``(b, d_model)`` output in ``x_t.dtype`` and the new state.
        """
        check_has_state(type(self).__name__, self.bidirectional, "step")
        lambda_bar, b_bar, cs, d, scale = self.discretize()
        bu = self.project_in(x_t[:, None], b_bar)[:, 0]
        state = lambda_bar[None] * state + bu
        y = scale * self.project_out(state[:, None], cs[0])[:, 0]
        y = y + d[None] * x_t.astype(jnp.float32)
        return y.astype(x_t.dtype), state

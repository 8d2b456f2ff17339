"""Real/complex planes, and every chunk's true start state from the chunks' decay products
and zero-start end states, for the Triton two-pass scan of :mod:`pallas_kernels.linear_scan`
(the Mosaic L-parallel scan carries its chunks' start states inside its kernels)."""

import jax
import jax.numpy as jnp
from jax import lax


def _planes(x) -> tuple:
    """A real array as one plane, a complex one as its (real, imaginary) planes."""
    if jnp.iscomplexobj(x):
        return (jnp.real(x), jnp.imag(x))
    return (x,)


def _unplanes(ps):
    return ps[0] if len(ps) == 1 else lax.complex(ps[0], ps[1])


def chunk_starts(prods, ends, h0, reverse: bool) -> jax.Array:
    """Every chunk's start state ``(batch, C, d)`` of ``s_{c+1} = prods_c s_c + ends_c``
    from ``s_0 = h0`` (``(batch, d)``), chunks in scan order (the last first when
    ``reverse``); ``prods`` broadcasts to ``ends`` (``(batch, C, d)``, real or complex). An
    associative scan over the chunk axis."""
    prods = jnp.broadcast_to(prods, ends.shape)
    if reverse:
        prods, ends = prods[:, ::-1], ends[:, ::-1]

    def combine(x, y):  # x earlier, y later in scan order
        return y[0] * x[0], y[0] * x[1] + y[1]

    cum_p, cum_e = lax.associative_scan(combine, (prods, ends), axis=1)
    h0c = h0.astype(cum_e.dtype)[:, None]
    starts = jnp.concatenate([h0c, cum_p[:, :-1] * h0c + cum_e[:, :-1]], axis=1)
    return starts[:, ::-1] if reverse else starts

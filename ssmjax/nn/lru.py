"""LRU: the Linear Recurrent Unit (Orvieto et al., ICML 2023)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssmjax.nn._base import (
    SkipParam,
    SSMInputParam,
    SSMOutputParam,
    SSMParam,
    register_layer,
)
from ssmjax.nn._diagonal import DiagonalSSM

__all__ = ["LRU", "lru_ring_init"]


def lru_ring_init(key, n: int, r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 6.28):
    """Draws ``(nu_log, theta_log)`` so that ``lambda`` is uniform on a ring of the plane.

    ``|lambda|^2 ~ U[r_min^2, r_max^2]`` (uniform in area), ``arg lambda ~ U[0, max_phase]``;
    ``lambda = exp(-exp(nu_log) + i exp(theta_log))``.

    Args:
      key: PRNG key.
      n: number of (complex) states.
      r_min: smallest modulus.
      r_max: largest modulus.
      max_phase: largest phase.

    Returns:
      ``(nu_log, theta_log)``, each ``(n,)`` float32.

    >>> import jax
    >>> nu_log, theta_log = lru_ring_init(jax.random.key(0), 4, r_min=0.9, r_max=0.99)
    >>> nu_log.shape
    (4,)
    """
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"LRU: need 0 <= r_min < r_max <= 1; got {r_min}, {r_max}")
    k1, k2 = jax.random.split(key)
    u1 = jax.random.uniform(k1, (n,))
    u2 = jax.random.uniform(k2, (n,))
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    return nu_log.astype(jnp.float32), theta_log.astype(jnp.float32)


@register_layer("lru")
class LRU(DiagonalSSM):
    r"""LRU layer: ``h_t = lambda h_{t-1} + (gamma B) u_t``, ``y_t = Re(C h_t) + D u_t``.

    As in the paper's appendix A and NicolasZucchet/minimal-LRU: ``lambda = exp(-exp(nu_log)
    + i exp(theta_log))`` initialised uniformly on a ring (:func:`lru_ring_init`); the
    learnable normaliser ``gamma = exp(gamma_log)``, initialised to ``sqrt(1 - |lambda|^2)``,
    scales the rows of ``B``; ``B ~ N(0, 1/(2 d_model))``, ``C ~ N(0, 1/d_hidden)`` (real
    and imaginary parts), ``D ~ N(0, 1)``. No discretisation: ``lambda`` is learned directly.

    :class:`~ssmjax.nn.SSMParam` (Adam at ``lr_factor * lr``, no weight decay in
    minimal-LRU): ``nu_log``, ``theta_log``, ``gamma_log``, ``B_re``, ``B_im``.

    Parameter count (``N = d_hidden``, ``H = d_model``): ``3N + 2NH + 2NH·(2 if
    bidirectional else 1) + H`` — minimal-LRU's layer (unidirectional) has ``3N + 4NH + H``.

    ``bidirectional=True`` is an ssmjax extension: a reverse scan with the same ``lambda``
    and ``B`` and its own ``C``.

    Args:
      d_model: ``H``, input/output features.
      d_hidden: ``N``, number of complex states.
      r_min: smallest initial ``|lambda|``.
      r_max: largest initial ``|lambda|``.
      max_phase: largest initial ``arg lambda``.
      bidirectional: add a reverse-time scan with its own ``C``.
      implementation: passed to :func:`ssmjax.ops.linear_recurrence`.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = LRU(d_model=8, d_hidden=16, r_min=0.9, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 10, 8))).shape
    (2, 10, 8)
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        *,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 6.28,
        bidirectional: bool = False,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.d_model, self.d_hidden = d_model, d_hidden
        self.bidirectional, self.implementation = bidirectional, implementation
        nu_log, theta_log = lru_ring_init(rngs.params(), d_hidden, r_min, r_max, max_phase)
        self.nu_log = SSMParam(nu_log)
        self.theta_log = SSMParam(theta_log)
        modulus = jnp.exp(-jnp.exp(nu_log))
        self.gamma_log = SSMParam(jnp.log(jnp.sqrt(1.0 - modulus**2)))
        normal = jax.random.normal
        b_scale = 1.0 / np.sqrt(2 * d_model)
        self.B_re = SSMInputParam(normal(rngs.params(), (d_hidden, d_model)) * b_scale)
        self.B_im = SSMInputParam(normal(rngs.params(), (d_hidden, d_model)) * b_scale)
        n_dir = 2 if bidirectional else 1
        c_scale = 1.0 / np.sqrt(d_hidden)
        self.C_re = SSMOutputParam(normal(rngs.params(), (d_model, n_dir * d_hidden)) * c_scale)
        self.C_im = SSMOutputParam(normal(rngs.params(), (d_model, n_dir * d_hidden)) * c_scale)
        self.D = SkipParam(normal(rngs.params(), (d_model,)))

    def state_shape(self) -> tuple[int, ...]:
        return (self.d_hidden,)

    def eigenvalues(self) -> jax.Array:
        """``lambda``, ``(d_hidden,)`` complex64."""
        return jnp.exp(jax.lax.complex(-jnp.exp(self.nu_log[...]), jnp.exp(self.theta_log[...])))

    def discretize(self):
        gamma = jnp.exp(self.gamma_log[...])[:, None]
        b = jax.lax.complex(self.B_re[...] * gamma, self.B_im[...] * gamma)
        c = jax.lax.complex(self.C_re[...], self.C_im[...])
        cs = jnp.split(c, 2, axis=1) if self.bidirectional else [c]
        return self.eigenvalues(), b, cs, self.D[...], 1.0

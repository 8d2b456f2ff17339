"""Helpers shared by the Pallas-Triton kernels: device checks and the blocked time loop.

The time loops of these kernels are latency-bound when written naively: each step loads a
row from HBM and the next step's arithmetic waits on it (~1 us per step, i.e. ~4 ms for
l = 4096 whatever the width). :func:`blocked_loop` issues the loads of ``unroll`` steps
together, and the loads of the *next* block before the arithmetic of the current one
(register double-buffering through the loop carry), so the latency is paid once per block
and overlapped with compute. The Triton lowering has no ``unroll`` in ``fori_loop`` and
cannot slice a loaded block, so each step's row is a separate load and the unrolling is by
hand.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["block_index", "blocked_loop", "check_backend", "is_pow2", "pow2_divisor"]


def is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def pow2_divisor(n: int, cap: int) -> int:
    """The largest power of two ``<= cap`` that divides ``n``."""
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def block_index(start, unroll: int):
    """``start // unroll`` for a static or traced non-negative ``start`` (truncating)."""
    if isinstance(start, int):
        return start // unroll
    return lax.div(start, jnp.asarray(unroll, start.dtype))


def check_backend(interpret: bool, name: str) -> None:
    """Raises ``NotImplementedError`` when the compiled kernel cannot run here."""
    if not interpret and jax.default_backend() != "gpu":
        raise NotImplementedError(
            f"{name}: the compiled Pallas kernel needs a GPU (use interpret=True)"
        )


def blocked_loop(
    n_steps: int,
    unroll: int,
    load: Callable[[Any, int], Any],
    body: Callable[[Any, Any, Any], Any],
    carry: Any,
    *,
    reverse_blocks: bool = False,
) -> Any:
    """Runs ``n_steps`` steps in blocks of ``unroll``, prefetching each next block.

    Args:
      n_steps: number of steps (static).
      unroll: steps per block (static).
      load: ``load(start, count) -> rows`` loads the inputs of steps ``start..start+count-1``
        (``start`` may be traced; ``count`` is static); returns any pytree.
      body: ``body(start, rows, carry) -> carry`` runs those steps (and stores their outputs).
      carry: the initial carry.
      reverse_blocks: visit the blocks last-first (a partial last block is visited first);
        the order of steps *inside* a block is up to ``body``.

    Returns:
      The final carry.
    """
    n_full, rem = divmod(n_steps, unroll)
    tail = n_full * unroll

    def run_tail(carry):
        if rem:
            carry = body(tail, load(tail, rem), carry)
        return carry

    def start_of(i):
        k = (n_full - 1 - i) if reverse_blocks else i
        return k * unroll

    if reverse_blocks:
        carry = run_tail(carry)
    if n_full == 1:
        carry = body(0, load(0, unroll), carry)
    elif n_full > 1:

        def step(i, state):
            carry, rows = state
            nxt = load(start_of(jnp.minimum(i + 1, n_full - 1)), unroll)
            return body(start_of(i), rows, carry), nxt

        carry, _ = lax.fori_loop(0, n_full, step, (carry, load(start_of(0), unroll)))
    if not reverse_blocks:
        carry = run_tail(carry)
    return carry

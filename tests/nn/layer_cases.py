"""Small configurations of every layer, shared by the layer-mode tests.

Each entry builds a layer from ``(bidirectional, implementation, rngs)``. Sizes are tiny so
the whole matrix of modes runs in seconds on a CPU.
"""

from flax import nnx

import ssmjax.nn as snn

D_MODEL = 6


@nnx.jit(static_argnames=("return_state",))
def apply(layer, x, mask=None, state=None, return_state=False):
    """``layer(x, mask, state=state, return_state=return_state)``, compiled: one program per
    layer and input shape instead of one per primitive and shape (the op-by-op dispatch of an
    eager call, which dominates small-layer tests' time)."""
    return layer(x, mask, state=state, return_state=return_state)


def _s5(bidirectional, implementation, rngs):
    return snn.S5(
        D_MODEL,
        8,
        blocks=2,
        bidirectional=bidirectional,
        implementation=implementation,
        rngs=rngs,
    )


def _s5_bilinear(bidirectional, implementation, rngs):
    return snn.S5(
        D_MODEL,
        8,
        discretization="bilinear",
        c_init="complex_normal",
        clip_eigs=True,
        bidirectional=bidirectional,
        implementation=implementation,
        rngs=rngs,
    )


def _lru(bidirectional, implementation, rngs):
    return snn.LRU(
        D_MODEL,
        8,
        r_min=0.5,
        r_max=0.99,
        bidirectional=bidirectional,
        implementation=implementation,
        rngs=rngs,
    )


def _s4d(bidirectional, implementation, rngs):
    return snn.S4D(
        D_MODEL,
        8,
        bidirectional=bidirectional,
        implementation=implementation,
        rngs=rngs,
    )


def _s4(bidirectional, implementation, rngs):
    # S4's DPLR recurrence is not diagonal: it always runs as a lax.scan of its O(N) step, so
    # the linear_recurrence `implementation` does not apply (S4 accepts only None/"sequential").
    del implementation
    return snn.S4(D_MODEL, 8, l_max=512, bidirectional=bidirectional, rngs=rngs)


LAYERS = {
    "s5": _s5,
    "s5_bilinear": _s5_bilinear,
    "lru": _lru,
    "s4d": _s4d,
    "s4": _s4,
}


def build(name: str, bidirectional: bool = False, implementation=None, seed: int = 0):
    return LAYERS[name](bidirectional, implementation, nnx.Rngs(seed))

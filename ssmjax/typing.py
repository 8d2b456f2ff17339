"""Dimension legend and jaxtyping aliases used in ssmjax signatures.

Dimension legend (used in shape strings and docstrings throughout the library):

* ``b`` — batch size
* ``l`` — sequence length (time)
* ``d`` — model / channel dimension (``d_model`` or ``d_inner``)
* ``n`` — state size per channel (``d_state``); ``p`` — total state size of a MIMO SSM (S5)
* ``h`` — number of heads; ``g`` — number of B/C groups
* ``dk``, ``dv`` — key and value head dimensions (GLA)
* ``*s`` — arbitrary trailing state dimensions of a linear recurrence

Arrays are batch-major: ``(b, l, ...)``. The aliases below are plain type hints; they are
checked only when a caller opts into runtime checking (e.g. ``pytest
--jaxtyping-packages=ssmjax,beartype.beartype``).
"""

from typing import Literal, TypeAlias

from jax import Array
from jaxtyping import Bool, Complex, Float, Inexact, Int

__all__ = [
    "Array",
    "Bool",
    "Complex",
    "Float",
    "Implementation",
    "Inexact",
    "Int",
    "Mask",
    "RecurrenceInput",
    "RecurrenceState",
    "Sequence",
]

#: Name of an implementation of an op (see ``implementation=`` arguments).
Implementation: TypeAlias = Literal["sequential", "associative", "chunked", "pallas"]

#: Layer input/output: ``(b, l, d)``.
Sequence: TypeAlias = Float[Array, "b l d"]
#: Padding mask: ``(b, l)``, True marks a real token.
Mask: TypeAlias = Bool[Array, "b l"]
#: Inputs of a linear recurrence: ``(b, l, *s)``, real or complex.
RecurrenceInput: TypeAlias = Inexact[Array, "b l ..."]
#: State of a linear recurrence: ``(b, *s)``.
RecurrenceState: TypeAlias = Inexact[Array, "b ..."]

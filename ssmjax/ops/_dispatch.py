"""The one implementation switch shared by every op.

Every op takes ``implementation: str | Sequence[str] | None``:

* a name (``"sequential"``, ``"associative"``, ``"chunked"``, ``"pallas"``...) runs exactly
  that implementation; if it cannot run for these inputs it raises ``NotImplementedError``
  with the reason — never a silent fallback;
* a sequence of names is a fallback chain tried in order;
* ``None`` is the op's automatic, fail-closed chain (Pallas only on a GPU, for the shapes and
  dtypes it is tested on; XLA forms last).

Implementations signal "cannot run here" by raising ``NotImplementedError`` *before* doing any
work (at trace time), so trying the next candidate is safe.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

__all__ = ["dispatch", "on_gpu"]


def on_gpu() -> bool:
    """True when the default JAX backend is a GPU."""
    return jax.default_backend() == "gpu"


def dispatch(
    op: str,
    implementation: str | Sequence[str] | None,
    implementations: Mapping[str, Callable[..., Any]],
    auto: Sequence[str],
    *args,
    **kwargs,
):
    """Runs ``implementations[name](*args, **kwargs)`` for the chosen name.

    Args:
      op: name of the op, for error messages.
      implementation: the user's request (see module docstring).
      implementations: every known implementation of the op, by name.
      auto: the automatic chain used when ``implementation is None``.
      *args: forwarded to the implementation.
      **kwargs: forwarded to the implementation.

    Returns:
      Whatever the implementation returns.

    Raises:
      ValueError: an unknown implementation name.
      NotImplementedError: the requested implementation (or every one in the chain) cannot run
        for these inputs; the message lists each reason.
    """
    if implementation is None:
        chain, explicit = tuple(auto), False
    elif isinstance(implementation, str):
        chain, explicit = (implementation,), True
    else:
        chain, explicit = tuple(implementation), False
        if not chain:
            raise ValueError(f"{op}: empty implementation chain")
    for name in chain:
        if name not in implementations:
            raise ValueError(
                f"{op}: unknown implementation {name!r}; choose from {sorted(implementations)}"
            )
    reasons = []
    for name in chain:
        try:
            return implementations[name](*args, **kwargs)
        except NotImplementedError as e:
            if explicit:
                raise NotImplementedError(f"{op}: implementation {name!r} cannot run: {e}") from e
            reasons.append(f"{name}: {e}")
    raise NotImplementedError(f"{op}: no implementation could run: " + "; ".join(reasons))

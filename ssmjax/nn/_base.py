"""What every ssmjax layer shares: the SSM parameter type, masks, and the layer registry."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "SSMInputParam",
    "SSMOutputParam",
    "SSMParam",
    "SSMStepParam",
    "SkipParam",
    "apply_mask",
    "check_sequence",
    "get_layer",
    "list_layers",
    "register_layer",
    "skip_masked",
]


class SSMParam(nnx.Param):
    """A parameter of the recurrence itself (A/Lambda, B, dt, nu/theta/gamma, A_log, D...).

    The papers train these with their own (usually lower) learning rate and no weight decay.
    It is a distinct variable type so optimizers select it by type, e.g.
    ``nnx.state(model, SSMParam)`` or ``nnx.Optimizer(..., wrt=SSMParam)``, never by name.

    >>> import jax.numpy as jnp
    >>> p = SSMParam(jnp.zeros(3))
    >>> isinstance(p, nnx.Param)
    True
    """


class SSMInputParam(SSMParam):
    """The input matrix ``B`` of an SSM. An :class:`SSMParam`; optimizer presets such as
    S5's ``BfastandCdecay`` move it to the regular group by this type."""


class SSMStepParam(SSMParam):
    """The timescale ``dt`` (``log_step``, ``log_dt``). An :class:`SSMParam`; presets such
    as S5's ``dt_global`` move it to the regular group by this type."""


class SSMOutputParam(nnx.Param):
    """The output matrix ``C`` of an SSM: a regular parameter by default (global learning
    rate, weight decay), typed so presets such as S5's ``noBCdecay`` can move it."""


class SkipParam(nnx.Param):
    """The feed-through ``D``: a regular parameter by default, typed for the same reason."""


def check_has_state(layer: str, bidirectional: bool, what: str) -> None:
    """Raises a clear ``ValueError`` when a bidirectional layer is asked to ``what`` (take,
    return or start a recurrent state, or step): it has no recurrent state."""
    if bidirectional:
        raise ValueError(
            f"{layer}: a bidirectional layer has no recurrent state, so it cannot {what}; "
            "use bidirectional=False for streaming or decoding"
        )


def check_sequence(layer: str, x: jax.Array, d_model: int, mask: jax.Array | None) -> None:
    """Raises a clear ``ValueError`` for inputs that are not ``(b, l, d_model)`` + ``(b, l)``."""
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{layer}: x must have shape (batch, length, {d_model}); got {x.shape}")
    if mask is not None and mask.shape != x.shape[:2]:
        raise ValueError(
            f"{layer}: mask must have shape (batch, length) = {x.shape[:2]}; got {mask.shape}"
        )


def apply_mask(y: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Zeros ``y`` (``(b, l, ...)``) at padded positions (``mask`` False)."""
    if mask is None:
        return y
    mask = mask.reshape(mask.shape + (1,) * (y.ndim - 2))
    return jnp.where(mask, y, jnp.zeros((), y.dtype))


def skip_masked(a: jax.Array, bu: jax.Array, mask: jax.Array | None):
    """Turns padded steps of a recurrence into identity steps (``a = 1, b = 0``).

    A masked token then changes nothing, in either scan direction: a forward scan carries
    the state of the last real token through trailing (or interior) padding, and a reverse
    scan reaches each sequence's last real token with the initial (zero) state. So a padded
    batch gives, on real tokens, exactly what each sequence gives alone.

    Args:
      a: decay, broadcastable to ``bu`` (``(*s)``, ``(b, *s)`` or ``(b, l, *s)``).
      bu: recurrence input ``(b, l, *s)``.
      mask: ``(b, l)`` bool, True for real tokens, or None.

    Returns:
      ``(a, bu)``, with ``a`` of ``bu``'s full shape when a mask is given.
    """
    if mask is None:
        return a, bu
    m = mask.reshape(mask.shape + (1,) * (bu.ndim - 2))
    if a.ndim == bu.ndim - 2:
        a = a[None, None]
    elif a.ndim == bu.ndim - 1:
        a = a[:, None]
    a = jnp.where(m, a, jnp.ones((), a.dtype))
    bu = jnp.where(m, bu, jnp.zeros((), bu.dtype))
    return jnp.broadcast_to(a, bu.shape), bu


_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}


def register_layer(name: str):
    """Class decorator: makes a layer available as ``get_layer(name)``."""

    def wrap(cls):
        _REGISTRY[name.lower()] = cls
        return cls

    return wrap


def get_layer(name: str) -> Callable[..., nnx.Module]:
    """Returns the layer class registered under ``name`` (case-insensitive).

    >>> get_layer("s5").__name__
    'S5'
    """
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown layer {name!r}; choose from {list_layers()}") from None


def list_layers() -> list[str]:
    """Names of all registered layers."""
    return sorted(_REGISTRY)

"""Numerical tolerances and comparison helpers shared by tests and benchmarks.

Every comparison of an implementation against its reference in ssmjax goes through
:func:`tolerance` so the rules live in one place:

* the base tolerance depends on the *lowest-precision* dtype involved (bf16 inputs with an
  fp32 carry are judged as bf16);
* it grows with ``sqrt(n)``, ``n`` the length of the longest reduction or recurrence, since
  rounding errors of independent terms add like a random walk;
* gradients get a multiplier (``kind="grad"``), because a backward pass chains more
  rounding than the forward pass.

References are computed in float64 where possible (NumPy or ``jax.experimental.enable_x64``).
"""

import math

import numpy as np

__all__ = ["assert_allclose", "tolerance"]

# (rtol, atol) for a reduction of length 1, by dtype name.
_BASE = {
    "float64": (1e-10, 1e-12),
    "complex128": (1e-10, 1e-12),
    "float32": (2e-6, 2e-6),
    "complex64": (2e-6, 2e-6),
    "bfloat16": (1e-2, 1e-2),
    "float16": (2e-3, 2e-3),
}
_GRAD_FACTOR = 10.0


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name if not hasattr(dtype, "dtype") else np.dtype(dtype.dtype).name


def tolerance(dtype, n: int = 1, kind: str = "fwd") -> tuple[float, float]:
    """Returns ``(rtol, atol)`` for comparing a result of ``dtype`` against a reference.

    Args:
      dtype: the lowest-precision dtype in the computation (e.g. ``jnp.bfloat16``).
      n: length of the longest reduction or recurrence (sequence length, state size...).
      kind: ``"fwd"`` for outputs, ``"grad"`` for gradients (x10).

    Returns:
      ``(rtol, atol)``.

    >>> import jax.numpy as jnp
    >>> tolerance(jnp.float32, n=100)
    (2e-05, 2e-05)
    """
    name = _dtype_name(dtype)
    if name not in _BASE:
        raise ValueError(f"no tolerance defined for dtype {name!r}")
    rtol, atol = _BASE[name]
    scale = math.sqrt(max(int(n), 1))
    if kind == "grad":
        scale *= _GRAD_FACTOR
    elif kind != "fwd":
        raise ValueError(f"kind must be 'fwd' or 'grad', got {kind!r}")
    return float(f"{rtol * scale:.3g}"), float(f"{atol * scale:.3g}")


def assert_allclose(actual, desired, *, dtype=None, n: int = 1, kind: str = "fwd", err_msg=""):
    """``np.testing.assert_allclose`` with the tolerance of :func:`tolerance`.

    The tolerance is relative to the scale of ``desired`` (its max-abs value), so a few
    near-zero entries do not make a correct result fail, while a relative error is still
    enforced elementwise at the scale of the data.

    Args:
      actual: array or pytree leaf to check.
      desired: reference value (ideally computed in float64).
      dtype: dtype to pick the tolerance for; defaults to ``actual.dtype``.
      n: reduction / recurrence length (see :func:`tolerance`).
      kind: ``"fwd"`` or ``"grad"``.
      err_msg: extra text for the failure message.
    """
    actual_np = np.asarray(actual)
    desired_np = np.asarray(desired)
    rtol, atol = tolerance(actual_np.dtype if dtype is None else dtype, n=n, kind=kind)
    if np.iscomplexobj(actual_np) or np.iscomplexobj(desired_np):
        actual_np = actual_np.astype(np.complex128)
        desired_np = desired_np.astype(np.complex128)
    else:
        actual_np = actual_np.astype(np.float64)
        desired_np = desired_np.astype(np.float64)
    assert np.all(np.isfinite(actual_np)), f"non-finite values in result. {err_msg}"
    scale = float(np.max(np.abs(desired_np))) if desired_np.size else 0.0
    np.testing.assert_allclose(
        actual_np, desired_np, rtol=rtol, atol=atol + rtol * scale, err_msg=err_msg
    )

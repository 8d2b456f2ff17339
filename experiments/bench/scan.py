"""Benchmark of ``linear_recurrence`` implementations (XLA forms; Pallas when present).

For each shape: forward and forward+backward median ms of every implementation, the
achieved bandwidth of the forward pass against the 3-array HBM floor (read a, b; write h),
and the max error against the ``"sequential"`` reference computed in the same run. Run::

    python -m experiments.bench.scan [--quick]
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench._harness import header, table, time_ms
from ssmjax.ops import linear_recurrence

IMPLS = [
    "sequential",
    "associative",
    "chunked:64",
    "chunked:128",
    "chunked:256",
    "pallas",
    "baseline:native_associative",
    "baseline:scan_unroll16",
]


def native_associative(a, b):
    """Plain ``lax.associative_scan`` over the ``(a, b)`` pairs along time, in the inputs'
    own dtype (complex stays complex), differentiated by autodiff; an ``a`` that broadcasts
    to ``b`` (e.g. a time-invariant ``(d,)``) is broadcast first, as in S5's reference code."""

    def combine(left, right):
        return right[0] * left[0], right[0] * left[1] + right[1]

    a = jnp.broadcast_to(a, b.shape)
    return jax.lax.associative_scan(combine, (a, b), axis=1)[1]


def scan_unroll(a, b, unroll=16):
    """``lax.scan`` over time with the time axis leading and the loop unrolled (``a``
    broadcast to ``b`` first), differentiated by autodiff."""

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    a = jnp.broadcast_to(a, b.shape)
    _, h = jax.lax.scan(
        step, jnp.zeros_like(b[:, 0]), (a.swapaxes(0, 1), b.swapaxes(0, 1)), unroll=unroll
    )
    return h.swapaxes(0, 1)


def run_impl(impl: str, a, b):
    if impl == "baseline:native_associative":
        return native_associative(a, b)
    if impl == "baseline:scan_unroll16":
        return scan_unroll(a, b)
    name, _, chunk = impl.partition(":")
    kwargs = {"chunk_size": int(chunk)} if chunk else {}
    return linear_recurrence(a, b, implementation=name, **kwargs)


def bench_shape(shape, dtype, hbm_tbps: float | None):
    key_a, key_b = jax.random.split(jax.random.key(0))
    if dtype == "complex64":
        r = jax.random.uniform(key_a, shape, minval=0.9, maxval=0.999)
        th = jax.random.uniform(key_b, shape, maxval=np.pi)
        a = (r * jnp.exp(1j * th)).astype(jnp.complex64)
        b = jax.random.normal(key_b, shape).astype(jnp.complex64)
    else:
        a = jax.random.uniform(key_a, shape, minval=0.9, maxval=0.999).astype(dtype)
        b = jax.random.normal(key_b, shape).astype(dtype)
    nbytes = 3 * a.size * a.dtype.itemsize
    ref = None
    rows = []
    for impl in IMPLS:
        fwd = jax.jit(lambda a, b, impl=impl: run_impl(impl, a, b))
        loss = lambda a, b, impl=impl: jnp.sum(jnp.abs(run_impl(impl, a, b)))
        bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
        try:
            out = fwd(a, b)
        except NotImplementedError as e:
            rows.append({"impl": impl, "note": f"n/a: {str(e)[:60]}"})
            continue
        if ref is None:
            ref = out
        err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
        t_fwd = time_ms(fwd, a, b)
        t_bwd = time_ms(bwd, a, b, repeats=5)
        row = {
            "impl": impl,
            "fwd ms": t_fwd,
            "fwd+bwd ms": t_bwd,
            "rel err": err,
            "fwd TB/s": nbytes / t_fwd / 1e9,
        }
        if hbm_tbps:
            row["fwd / floor"] = t_fwd / (nbytes / hbm_tbps / 1e9)
        rows.append(row)
        print(
            f"  {impl:<14} fwd {t_fwd:8.3f} ms  fwd+bwd {t_bwd:8.3f} ms  err {err:.1e}", flush=True
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run)")
    parser.add_argument(
        "--hbm-tbps",
        type=float,
        default=None,
        help="HBM bandwidth for the floor column (H100 SXM: 3.35)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        shapes = [((2, 512, 64), "float32"), ((2, 512, 32), "complex64")]
    else:
        shapes = [
            ((8, 4096, 2048), "float32"),
            ((8, 4096, 1024), "complex64"),
            ((2, 16384, 2048), "float32"),
            ((32, 1024, 2048), "float32"),
        ]
    print(header("python -m experiments.bench.scan " + " ".join(argv or sys.argv[1:])))
    for shape, dtype in shapes:
        print(f"\n(b, l, d) = {shape}, {dtype}")
        rows = bench_shape(shape, dtype, args.hbm_tbps)
        cols = ["impl", "fwd ms", "fwd+bwd ms", "fwd TB/s"]
        cols += ["fwd / floor"] if args.hbm_tbps else []
        print(table(rows, [*cols, "rel err", "note"]))


if __name__ == "__main__":
    main()

"""Variants of the Mosaic GPU ``linear_scan`` kernels side by side, same run (Hopper only).

Each variant sets module constants of :mod:`pallas_kernels._linear_scan_mosaic` (tiles in
flight ``MAX_STAGES``, steps per TMA tile ``TILE``) or a kernel option (``unroll``),
compiles fresh, checks ``h`` and the gradients against the associative scan of
``ssmjax.ops.linear_recurrence`` and times forward and forward+backward (median ms per call,
and device time: the summed kernel time of a call by CUPTI, ``dev``), at the
benchmark shapes or the same kind of input at another ``(batch, l, d)``. The ``xla copy``
rows time fused XLA elementwise ops moving the same arrays as the forward (read ``a``,
``b``, write ``h``; time-invariant: read ``b``, write ``h``) and the backward, next to the
spec-sheet floor (on device time they run at 2.9-3.1 TB/s on the H100; per call they carry
the host time of a JAX call: BENCHMARKS.md, tenth session).

    python -m experiments.bench.linear_mosaic [--variants base,stages=6,tile=16,unroll=32]
        [--shapes fp32-tv,c64-ti,c64-tv,fp32-tv:4x8192x2048] [--repeats 15]

A variant is ``+``-joined ``key=value`` items: ``stages=N`` (``MAX_STAGES``), ``tile=N``
(``TILE``), ``unroll=N``, ``chunks=N`` (the L-parallel scan, time-invariant ``a``),
``split=N`` (its end-state pieces a chunk, ``END_SPLIT``); ``base`` is the defaults. (The
ninth session's variants that stored outputs by TMA and put a complex channel's planes on two
lanes ran at commit 1ac3bda; BENCHMARKS.md.)
"""

import argparse
import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels._linear_scan_mosaic as lm
import pallas_kernels._linear_scan_mosaic_chunked as lmc
from experiments.bench._harness import (
    SCAN_SHAPES,
    device_ms,
    header,
    parse_scan_shape,
    table,
    time_ms,
)
from experiments.bench.kernels import tree_err
from pallas_kernels.linear_scan import linear_scan, linear_scan_planes
from ssmjax.ops import linear_recurrence

SHAPES = dict(SCAN_SHAPES)  # name: (shape, dtype, time-invariant a)


def parse_variant(spec: str) -> tuple[dict, dict]:
    """``(module switches, kernel options)`` of a variant spec."""
    switches, options = {}, {}
    for item in spec.split("+"):
        key, _, value = item.partition("=")
        if key == "base":
            continue
        if key == "stages":
            switches["MAX_STAGES"] = int(value)
        elif key == "tile":
            switches["TILE"] = int(value)
        elif key == "split":
            switches["END_SPLIT"] = int(value)
        elif key in ("unroll", "chunks"):
            options[key] = int(value)
        else:
            raise ValueError(f"unknown variant item {item!r}")
    return switches, options


def _module(name: str):
    return lmc if name == "END_SPLIT" else lm


@contextlib.contextmanager
def switched(switches: dict):
    old = {k: getattr(_module(k), k) for k in switches}
    for k, v in switches.items():
        setattr(_module(k), k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(_module(k), k, v)


def inputs(shape, dtype, lti, seed=0):
    """Planes ``a, b, ct`` (1 plane real, 2 complex); ``a`` of shape ``(d,)`` when ``lti``."""
    ka, kb, kc, kd, ke = jax.random.split(jax.random.key(seed), 5)
    a_shape = shape[2:] if lti else shape
    r = jax.random.uniform(ka, a_shape, minval=0.9, maxval=0.999)
    if dtype == "complex64":
        th = jax.random.uniform(kb, a_shape, maxval=0.3)
        a = (r * jnp.cos(th), r * jnp.sin(th))
        b = (jax.random.normal(kc, shape), jax.random.normal(kd, shape))
        ct = (jax.random.normal(ke, shape), jax.random.normal(kb, shape))
    else:
        a, b, ct = (r,), (jax.random.normal(kc, shape),), (jax.random.normal(kd, shape),)
    return a, b, ct


def fns(run):
    """Jitted forward and gradient (w.r.t. the ``a`` and ``b`` planes) of ``run(a, b)``."""

    def loss(a, b, ct):
        h = run(a, b)
        return sum(jnp.sum(x * c) for x, c in zip(h, ct, strict=True))

    return jax.jit(run), jax.jit(jax.grad(loss, argnums=(0, 1)))


def kernel_run(options):
    def run(a, b):
        if len(b) == 1:
            return (linear_scan(a[0], b[0], layout="mosaic", **options),)
        return tuple(linear_scan_planes(a, b, layout="mosaic", **options))

    return run


def assoc_run(a, b):
    if len(b) == 1:
        return (linear_recurrence(a[0], b[0], implementation="associative"),)
    h = linear_recurrence(jax.lax.complex(*a), jax.lax.complex(*b), implementation="associative")
    return (jnp.real(h), jnp.imag(h))


def copy_fns(lti):
    """XLA elementwise ops moving the forward's and the backward's arrays (planes)."""

    def fwd(a, b):  # read a, b; write h
        if lti:
            return tuple(x * 1.0001 for x in b)
        return tuple(x * 0.5 + y for x, y in zip(a, b, strict=True))

    def bwd(a, b, ct):  # read a, h(=b), dh(=ct); write da, db (tv) / db (ti)
        db = tuple(c * 0.5 + y for c, y in zip(ct, b, strict=True))
        if lti:
            return db
        da = tuple(c * y + x for c, y, x in zip(ct, b, a, strict=True))
        return db, da

    return jax.jit(fwd), jax.jit(bwd)


def parse_shape(name: str):
    """``"fp32-tv"`` (a :data:`SHAPES` entry) or ``"fp32-tv:4x8192x2048"`` (its kind at
    another ``(batch, l, d)``)."""
    return parse_scan_shape(name, SHAPES)


def bench_shape(name, variants, repeats):
    shape, dtype, lti = parse_shape(name)
    a, b, ct = inputs(shape, dtype, lti)
    planes = len(b)
    size = int(np.prod(shape)) * planes * 4
    fwd_bytes = (2 if lti else 3) * size
    bwd_bytes = (3 if lti else 5) * size
    rows = []
    ref_f, ref_g = fns(assoc_run)
    h_ref, g_ref = ref_f(a, b), ref_g(a, b, ct)
    t_f, t_b = time_ms(ref_f, a, b, repeats=repeats), time_ms(ref_g, a, b, ct, repeats=repeats)
    row = {"shape": name, "variant": "associative (XLA)", "fwd ms": t_f, "fwd+bwd ms": t_b}
    row["fwd dev ms"], row["fwd+bwd dev ms"] = device_ms(ref_f, a, b), device_ms(ref_g, a, b, ct)
    rows.append(row)
    cf, cb = copy_fns(lti)
    t_f = time_ms(cf, a, b, repeats=repeats)
    t_b = time_ms(cb, a, b, ct, repeats=repeats)
    row = {"shape": name, "variant": "xla copy (floor)", "fwd ms": t_f, "bwd ms": t_b}
    row["fwd dev ms"], row["bwd dev ms"] = device_ms(cf, a, b), device_ms(cb, a, b, ct)
    rows.append(row)
    for spec in variants:
        switches, options = parse_variant(spec)
        with switched(switches):
            f, g = fns(kernel_run(options))
            try:
                h, gr = f(a, b), g(a, b, ct)
            except Exception as e:  # report and go on
                rows.append(
                    {"shape": name, "variant": spec, "note": f"{type(e).__name__}: {e}"[:200]}
                )
                continue
            err_h = tree_err(h, h_ref)
            err_g = max(tree_err(x, y) for x, y in zip(gr, g_ref, strict=True))
            t_f = time_ms(f, a, b, repeats=repeats)
            t_b = time_ms(g, a, b, ct, repeats=repeats)
            d_f, d_b = device_ms(f, a, b), device_ms(g, a, b, ct)
        row = {"shape": name, "variant": spec, "fwd ms": t_f, "fwd+bwd ms": t_b}
        row["fwd dev ms"], row["fwd+bwd dev ms"] = d_f, d_b
        if d_f:
            row["fwd dev / floor"] = d_f / (fwd_bytes / 3.35e12 * 1e3)
        row["fwd TB/s"] = fwd_bytes / t_f / 1e9
        row["fwd / floor"] = t_f / (fwd_bytes / 3.35e12 * 1e3)
        row["fwd+bwd / floor"] = t_b / ((fwd_bytes + bwd_bytes) / 3.35e12 * 1e3)
        row["err h"], row["err grad"] = err_h, err_g
        row["ok"] = "OK" if max(err_h, err_g) < 1e-3 else "FAIL"
        rows.append(row)
        print(f"  {name} {spec:<24} fwd {t_f:7.3f}  fwd+bwd {t_b:7.3f}  {row['ok']}", flush=True)
    assoc, assoc_dev = rows[0]["fwd+bwd ms"], rows[0]["fwd+bwd dev ms"]
    for r in rows[2:]:
        if "fwd+bwd ms" in r:
            r["assoc / this"] = assoc / r["fwd+bwd ms"]
        if assoc_dev and r.get("fwd+bwd dev ms"):
            r["assoc / this dev"] = assoc_dev / r["fwd+bwd dev ms"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="base,stages=6,tile=16,unroll=32,base")
    parser.add_argument("--shapes", default="fp32-tv,c64-ti,c64-tv")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if not lm.on_hopper():
        raise SystemExit("linear_mosaic: needs an H100/H200 (the variants are Mosaic GPU)")
    rows = []
    for name in args.shapes.split(","):
        rows += bench_shape(name, args.variants.split(","), args.repeats)
    cols = ["shape", "variant", "fwd ms", "fwd+bwd ms", "bwd ms", "fwd TB/s", "fwd / floor"]
    cols += ["fwd+bwd / floor", "assoc / this", "fwd dev ms", "fwd+bwd dev ms", "bwd dev ms"]
    cols += ["fwd dev / floor", "assoc / this dev", "err h", "err grad", "ok", "note"]
    argv = sys.argv[1:] if argv is None else argv
    print(header("python -m experiments.bench.linear_mosaic " + " ".join(argv)))
    print(table(rows, cols))


if __name__ == "__main__":
    main()

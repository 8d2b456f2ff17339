"""Configurations of ``linear_scan(..., layout="lookback")`` on device time, beside the
automatic layout and plain ``lax.associative_scan``, each checked in the same run.

Complex time-invariant planes (what the S5/LRU layers call): forward and forward+backward
device ms (CUPTI kernel sums) and the ratio of plain ``lax.associative_scan``'s
forward+backward to each row's. Lean on purpose (device time only, one compile per row):

    python -m experiments.bench.lookback --shape 8x4096x256 \\
        --configs auto,32/128/4,32/256/4,32/256/2,16/256/2

A config is ``T/block_d/num_warps`` (``chunks = l / T``); ``auto`` the library's default;
``triton`` the Pallas-Triton kernels with their default chunks (the two-pass scan on small
grids: what GPUs other than Hopper get); ``m<T>`` the Mosaic GPU look-back scan
(``layout="mosaic_lookback"``) with chunks of ``T`` steps (fewer where the staged chunk
would not fit), ``m<T>p<k>`` its persistent form (``k`` programs per SM looping over the
tickets, the next chunk staged while one is scanned), a suffix ``e<k>``: only every
``k``-th chunk publishes its inclusive end state (the look-back's accumulation path,
checked on the device), then ``s``: rows stored by TMA from shared memory
(``TMA_STORE``), ``r``: the backward's ``h`` loaded into registers instead of staged
(``STREAM_H``), then ``n``: a program's chunk is its grid index (``GRID_ORDER``), each off
where its letter is absent (the library's default is ``m64srn``); e.g. ``m64p1e3sr``.
"""

import argparse
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels._linear_scan_lookback_mosaic as lookback_mosaic
from experiments.bench import _harness
from experiments.bench._harness import device_ms, header, table
from experiments.bench.scan import native_associative
from pallas_kernels.linear_scan import linear_scan_planes

# The library's defaults.
TMA_STORE = lookback_mosaic.TMA_STORE
STREAM_H = lookback_mosaic.STREAM_H
GRID_ORDER = lookback_mosaic.GRID_ORDER


def planes_inputs(shape: str):
    """Complex time-invariant planes for a ``"BxLxD"`` shape: ``a`` ``(d,)`` planes with
    ``0.5 <= |a| < 0.999`` and phases in ``[0, pi)``; ``b`` and a cotangent ``(batch, l,
    d)`` planes, normal (the cotangent's imaginary plane ``cos(b_re)``)."""
    batch, length, d = (int(x) for x in shape.split("x"))
    keys = jax.random.split(jax.random.key(0), 5)
    mag = jax.random.uniform(keys[0], (d,), minval=0.5, maxval=0.999)
    phase = jax.random.uniform(keys[1], (d,), maxval=np.pi)
    ap = (mag * jnp.cos(phase), mag * jnp.sin(phase))
    bp = tuple(jax.random.normal(k, (batch, length, d)) for k in keys[2:4])
    cp = (jax.random.normal(keys[4], (batch, length, d)), jnp.cos(bp[0]))
    return ap, bp, cp


def _grad(run, cp):
    def loss(ap, bp):
        h_re, h_im = run(ap, bp)
        return jnp.sum(h_re * cp[0] - h_im * cp[1])

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8x4096x256", help="batch x l x d (complex)")
    parser.add_argument("--configs", default="auto,32/128/4,32/256/4,32/256/2,16/256/2")
    parser.add_argument(
        "--kernel-times", action="store_true", help="also print each kernel's device time"
    )
    args = parser.parse_args(argv)
    _harness.KERNEL_TIMES = args.kernel_times
    print(header("python -m experiments.bench.lookback " + " ".join(argv or sys.argv[1:])))
    ap, bp, cp = planes_inputs(args.shape)
    length = bp[0].shape[1]

    def plain(ap, bp):
        h = native_associative(jax.lax.complex(*ap), jax.lax.complex(*bp))
        return jnp.real(h), jnp.imag(h)

    ref_f, ref_g = jax.jit(plain), _grad(plain, cp)
    h_ref, g_ref = ref_f(ap, bp), ref_g(ap, bp)
    rows = [
        {
            "config": "lax.associative_scan",
            "fwd dev ms": device_ms(ref_f, ap, bp),
            "fwd+bwd dev ms": device_ms(ref_g, ap, bp),
        }
    ]
    for cfg in args.configs.split(","):
        lookback_mosaic.INCLUSIVE_EVERY = 1
        lookback_mosaic.PROGRAMS_PER_SM = 0
        lookback_mosaic.TMA_STORE = TMA_STORE
        lookback_mosaic.STREAM_H = STREAM_H
        lookback_mosaic.GRID_ORDER = GRID_ORDER
        pattern = r"m(\d+)(?:p(\d+))?(?:e(\d+))?(s?)(r?)(n?)"
        if m := re.fullmatch(pattern, cfg):
            t, per_sm, every, tma_store, stream_h, grid_order = m.groups()
            lookback_mosaic.INCLUSIVE_EVERY = int(every or 1)
            lookback_mosaic.PROGRAMS_PER_SM = int(per_sm or 0)
            lookback_mosaic.TMA_STORE = bool(tma_store)  # (each form as named)
            lookback_mosaic.STREAM_H = bool(stream_h)
            lookback_mosaic.GRID_ORDER = bool(grid_order)
            kw = dict(layout="mosaic_lookback", chunks=-(-length // int(t)))
        elif cfg == "auto":
            kw = {}
        elif cfg == "triton":  # the Triton kernels with their default (two-pass) chunks
            kw = dict(layout="channel")
        else:
            t, bd, nw = (int(x) for x in cfg.split("/"))
            kw = dict(layout="lookback", chunks=-(-length // t), block_d=bd, num_warps=nw)
        run = lambda ap, bp, kw=kw: linear_scan_planes(ap, bp, **kw)
        f, g = jax.jit(run), _grad(run, cp)
        try:
            h, gr = f(ap, bp), g(ap, bp)
        except Exception as e:  # a config the compiler rejects
            rows.append({"config": cfg, "note": f"{type(e).__name__}: {str(e)[:90]}"})
            print(rows[-1], flush=True)
            continue
        err = lambda x, y: float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))
        rows.append(
            {
                "config": cfg,
                "fwd dev ms": device_ms(f, ap, bp),
                "fwd+bwd dev ms": device_ms(g, ap, bp),
                "err fwd": max(err(x, y) for x, y in zip(h, h_ref, strict=True)),
                "err grad": max(
                    err(x, y)
                    for x, y in zip(jax.tree.leaves(gr), jax.tree.leaves(g_ref), strict=True)
                ),
            }
        )
        print(rows[-1], flush=True)
    base = rows[0]["fwd+bwd dev ms"]
    for r in rows:
        if base and r.get("fwd+bwd dev ms"):
            r["lax.assoc/this fwd+bwd dev"] = base / r["fwd+bwd dev ms"]
    cols = ["config", "fwd dev ms", "fwd+bwd dev ms", "lax.assoc/this fwd+bwd dev"]
    print(table(rows, [*cols, "err fwd", "err grad", "note"]))


if __name__ == "__main__":
    main()

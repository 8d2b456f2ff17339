"""Where the look-back kernel's forward time goes at one shape: the kernel with parts taken
out, beside copies of the same planes (device ms, CUPTI).

The forward of ``linear_scan(..., layout="mosaic_lookback")`` reads the ``b`` planes and
writes the ``h`` planes once. Rows, each with its own kernels' device time (summed: XLA
copies plane by plane) and the TB/s that makes of those bytes:

* ``xla copy``: XLA's fused elementwise op over the same planes (``2 * b``): what a
  streaming kernel moves at this size.
* ``tma copy c<T>w<W>``: a Mosaic GPU kernel with the look-back kernel's grid and staging
  (one program per chunk of ``T`` steps and ``W`` channels, its tiles staged by TMA into
  shared memory, then stored from there by TMA), with no scan: what that structure moves
  (suffix ``d``: the stores waited for only until they have read shared memory).
* ``kernel``: the library's forward (checked against plain ``lax.associative_scan``), a
  program's chunk its grid index (``GRID_ORDER``).
* ``ticket``: the kernel with ``GRID_ORDER`` off: each program takes its chunk from an
  atomic counter first.
* ``no wait``: the kernel with no status words (no publish, and every chunk starts from
  ``h0`` instead of looking back): its results are wrong; the time shows the look-back's
  cost.

    python -m experiments.bench.lookback_parts --shape 8x4096x256
"""

import argparse
import sys

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

import pallas_kernels._linear_scan_lookback_mosaic as lbm
import pallas_kernels._lookback_mosaic_ops as lbo
from experiments.bench._harness import device_ms, header, kernel_times, table
from experiments.bench.lookback import planes_inputs
from experiments.bench.scan import native_associative
from pallas_kernels._linear_scan_mosaic import TILE
from pallas_kernels._mosaic_common import plgpu
from pallas_kernels.linear_scan import linear_scan_planes


class _NoWait(lbo._Compiled):
    """No status words: every chunk starts from ``h0`` (wrong results; timing only)."""

    def publish(self, status_ref, rows, cols, vals, *, d):
        del status_ref, rows, cols, vals, d

    def look_back(self, status_ref, k0, rows_of, cols, big_a, h0, spin_limit, *, d):
        del status_ref, k0, rows_of, cols, big_a, spin_limit, d
        return list(h0)


def _ds(start, size):
    """``size`` elements from ``start``, a multiple of ``size``."""
    return pl.ds(pl.multiple_of(start, size), size)


def tma_copy(planes, chunk: int, width: int, read_wait: bool = False):
    """Each program stages ``chunk`` rows x ``width`` channels of every plane by TMA
    (``TILE``-row tiles, all issued at once) and stores them back from shared memory (at the
    end waiting for the stores to land, or with ``read_wait`` only until they have read
    shared memory)."""
    batch, length, d = planes[0].shape
    p, n_tiles = len(planes), chunk // TILE
    n_chunks, n_blocks = length // chunk, d // width

    def kernel(*refs):
        x_refs, y_refs, slots, bars = refs[:p], refs[p : 2 * p], refs[2 * p : 3 * p], refs[-1]
        pid = lax.axis_index("p")
        c, i, j = pid // (batch * n_blocks), (pid // n_blocks) % batch, pid % n_blocks
        cols = _ds(j * width, width)
        for u in range(n_tiles):
            rows = _ds(c * chunk + u * TILE, TILE)
            for x, s in zip(x_refs, slots, strict=True):
                plgpu.copy_gmem_to_smem(x.at[i, rows, cols], s.at[u], bars.at[u])
        for u in range(n_tiles):
            plgpu.barrier_wait(bars.at[u])
            rows = _ds(c * chunk + u * TILE, TILE)
            for s, y in zip(slots, y_refs, strict=True):
                plgpu.copy_smem_to_gmem(s.at[u], y.at[i, rows, cols])
        plgpu.wait_smem_to_gmem(0, wait_read_only=read_wait)

    out = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in planes]
    scratch = [plgpu.SMEM((n_tiles, TILE, width), v.dtype) for v in planes]
    scratch.append(plgpu.Barrier(num_arrivals=p, num_barriers=n_tiles))
    return plgpu.kernel(
        kernel,
        out_type=tuple(out),
        scratch_types=scratch,
        grid=(n_chunks * batch * n_blocks,),
        grid_names=("p",),
        kernel_name="tma_copy",
    )(*planes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8x4096x256", help="batch x l x d (complex)")
    parser.add_argument(
        "--copies",
        default="c64w128,c64w128d",
        help="tma copy rows c<T>w<W>, a suffix d: stores waited for until read only",
    )
    args = parser.parse_args(argv)
    print(header("python -m experiments.bench.lookback_parts " + " ".join(argv or sys.argv[1:])))
    ap, bp, _ = planes_inputs(args.shape)  # (the look-back bench's inputs)
    mb = 2 * sum(v.size * v.dtype.itemsize for v in bp) / 1e6  # read b, write h

    def plain(ap, bp):
        h = native_associative(lax.complex(*ap), lax.complex(*bp))
        return jnp.real(h), jnp.imag(h)

    h_ref = jax.jit(plain)(ap, bp)
    err = lambda h: max(
        float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))) for x, y in zip(h, h_ref, strict=True)
    )
    rows = []

    def add(name, fn, *fargs, kernel=None, check=None):
        row = {"row": name}
        try:
            out = jax.block_until_ready(fn(*fargs))
            row["total dev ms"] = device_ms(fn, *fargs)
            ks = kernel_times(fn, *fargs)
            mine = [ms for n, ms in ks if kernel and kernel in n]
            row["kernel ms"] = sum(mine) if mine else None  # (XLA may split the copy)
            row["other kernels"] = ", ".join(
                f"{n[:24]} {ms:.4f}" for n, ms in ks if not (kernel and kernel in n)
            )
            if row["kernel ms"]:
                row["kernel TB/s"] = mb / row["kernel ms"] / 1e3  # MB / ms = GB/s
            if check is not None:
                row["err"] = check(out)
        except Exception as e:  # a form the compiler rejects
            row["note"] = f"{type(e).__name__}: {str(e)[:120]}"
        rows.append(row)
        print(row, flush=True)

    add("xla copy", jax.jit(lambda bp: tuple(2.0 * v for v in bp)), bp, kernel="fusion")
    for spec in args.copies.split(","):
        t, w = (int(x) for x in spec[1:].rstrip("d").split("w"))
        read_wait = spec.endswith("d")
        f = jax.jit(lambda bp, t=t, w=w, r=read_wait: tma_copy(bp, t, w, r))
        add(
            f"tma copy {spec}",
            f,
            bp,
            kernel="tma_copy",
            check=lambda h: float(max(jnp.max(jnp.abs(x - y)) for x, y in zip(h, bp, strict=True))),
        )
    grid_order = lbm.GRID_ORDER
    for name, ops, by_grid in (
        ("kernel", lbo._Compiled, grid_order),
        ("ticket", lbo._Compiled, False),
        ("no wait", _NoWait, grid_order),
        ("ticket, no wait", _NoWait, False),
    ):
        lbm._Compiled, lbm.GRID_ORDER = ops, by_grid
        try:
            f = jax.jit(lambda ap, bp: linear_scan_planes(ap, bp, layout="mosaic_lookback"))
            add(name, f, ap, bp, kernel="lookback", check=err)
        finally:
            lbm._Compiled, lbm.GRID_ORDER = lbo._Compiled, grid_order
    print(
        table(
            rows,
            ["row", "total dev ms", "kernel ms", "kernel TB/s", "err", "other kernels", "note"],
        )
    )


if __name__ == "__main__":
    main()

"""The automatic choices of :func:`pallas_kernels.linear_scan.linear_scan` (``layout=None``,
``chunks=None``): which kernel family and how many time chunks, each rule with the H100
measurements it rests on (BENCHMARKS.md)."""

import jax.numpy as jnp

from pallas_kernels._linear_scan_lookback_mosaic import supported as lookback_mosaic_supported
from pallas_kernels._linear_scan_mosaic import BLOCK_D as MOSAIC_BLOCK_D
from pallas_kernels._linear_scan_mosaic import TILE as MOSAIC_TILE
from pallas_kernels._linear_scan_mosaic import supported as mosaic_supported

MOSAIC_MIN_PROGRAMS = 32  # the fewest Mosaic programs measured faster than Triton


def auto_layout(batch: int, d: int, interpret: bool, options: dict) -> str:
    """The kernel family of ``layout=None``: ``"mosaic"`` or ``"channel"`` (Triton).

    Mosaic on a compute capability 9.0 GPU when no Triton launch option is given (``options``:
    ``block_d``, ``unroll``, ``num_warps``, ``chunks`` as passed, ``num_stages`` other than
    1), the flattened state size is a multiple of 128 and the single-pass grid of programs of
    128 channels (real or complex) is at least ``MOSAIC_MIN_PROGRAMS``: on the H100 it beat
    the Triton kernels at 32, 64 and 128 real programs and at 32 complex ones (forward +
    backward device time: fp32 (2, 16384, 2048) 0.811 vs 1.393 ms, complex (8, 4096, 512)
    0.264 vs 0.405 ms; BENCHMARKS.md, tenth and eleventh sessions); at 16 complex programs
    they were even, and with fewer the Triton two-pass scan spreads the sequence over more
    programs. Otherwise (interpret mode included) Triton.
    """
    if interpret or any(v is not None for v in options.values()):
        return "channel"
    if batch * (d // MOSAIC_BLOCK_D) < MOSAIC_MIN_PROGRAMS:
        return "channel"
    return "mosaic" if mosaic_supported(d, 8, 1, interpret) is None else "channel"


MOSAIC_CHUNKED_PROGRAMS = 128  # programs the L-parallel Mosaic scan aims for
MOSAIC_CHUNKED_MIN_PROGRAMS = 64  # programs it must reach to be used
MOSAIC_MIN_CHUNK = 256  # the shortest chunk it cuts (steps)


def auto_mosaic_chunks(batch: int, d: int, length: int, interpret: bool, options: dict) -> int:
    """Time chunks of the L-parallel Mosaic scan for a time-invariant scan (real or
    complex) that ``auto_layout`` leaves to Triton; 1: none (stay with Triton).

    On a compute capability 9.0 GPU, with no Triton launch option, ``d`` a multiple of 128
    and a single-pass grid below ``MOSAIC_MIN_PROGRAMS``: the smallest power of two ``C``
    that brings the grid to ``MOSAIC_CHUNKED_PROGRAMS`` programs, with chunks of whole
    32-step tiles and at least ``MOSAIC_MIN_CHUNK`` steps; used when it reaches
    ``MOSAIC_CHUNKED_MIN_PROGRAMS``. On the H100 (BENCHMARKS.md, eleventh to thirteenth
    sessions; device time, planes) it beat the Triton two-pass scan: forward+backward 0.160
    ms (0.177 in the eleventh session's version) vs 0.211 ms at (8, 4096, 256) (``C = 8``;
    ``C = 16`` 0.165), 0.166 (0.183) vs 0.213 ms at (1, 16384, 512) (``C = 32``; ``C = 16``
    0.176); real (fp32) at (8, 4096, 256), ``C = 8``: 0.080 vs 0.107 ms.
    """
    if interpret or any(v is not None for v in options.values()):
        return 1
    programs = batch * (d // MOSAIC_BLOCK_D)
    if programs == 0 or programs >= MOSAIC_MIN_PROGRAMS:
        return 1
    chunks = 1
    while programs * chunks < MOSAIC_CHUNKED_PROGRAMS:
        nxt = chunks * 2
        if length % (nxt * MOSAIC_TILE) or length // nxt < MOSAIC_MIN_CHUNK:
            break
        chunks = nxt
    if programs * chunks < MOSAIC_CHUNKED_MIN_PROGRAMS:
        return 1
    why = mosaic_supported(d, 8, chunks, interpret, lti=True, length=length)
    return chunks if why is None else 1


def auto_lookback(d: int, dtype) -> bool:
    """Whether ``layout=None`` takes the Mosaic GPU look-back scan
    (``layout="mosaic_lookback"``, default chunks) where :func:`auto_mosaic_chunks` would
    take the L-parallel Mosaic scan: for complex planes (the only ones timed), when the
    kernel supports the call. On the H100 (BENCHMARKS.md, seventeenth session; device time,
    forward+backward, complex time-invariant planes) it beat that scan at every grid below
    32 programs timed: (8, 4096, 256) 0.146 vs 0.157 ms, (4, 8192, 256) 0.149 vs 0.162,
    (1, 16384, 512) 0.149 vs 0.164 (twenty-first session, the kernel as it is now: 0.1275,
    0.129, 0.129). Any length (the last chunk is padded). From 32 programs see
    :func:`auto_lookback_single_pass`."""
    d_mosaic = -(-d // MOSAIC_BLOCK_D) * MOSAIC_BLOCK_D
    # The backward stages dh (and h, with STREAM_H off) planes: one tile of both must fit.
    row_bytes = 2 * 2 * jnp.dtype(dtype).itemsize
    return lookback_mosaic_supported(d_mosaic, MOSAIC_TILE, row_bytes, False) is None


LOOKBACK_MAX_PROGRAMS = 64  # the largest single-pass grid where the look-back scan was timed
LOOKBACK_MIN_LENGTH = 1024  # the shortest sequence there


def auto_lookback_single_pass(batch: int, d: int, length: int, dtype) -> bool:
    """Whether ``layout=None`` takes the Mosaic GPU look-back scan (default chunks) where
    :func:`auto_layout` picks the single-pass Mosaic scan: for complex planes with a
    time-invariant ``a`` (the caller checks both), a grid of at most
    ``LOOKBACK_MAX_PROGRAMS`` programs of 128 channels, at least ``LOOKBACK_MIN_LENGTH``
    steps, and when :func:`auto_lookback` holds. On the H100 (BENCHMARKS.md,
    twenty-second session; device time, forward+backward, complex time-invariant planes,
    side by side) it beat the single-pass scan at both grids timed: 32 programs (8, 4096,
    512) 0.243 vs 0.261 ms, 64 programs (32, 1024, 256) 0.1249 vs 0.1268. Not timed at 128
    programs or more, nor on shorter sequences: the single-pass scan stays there."""
    programs = batch * -(-d // MOSAIC_BLOCK_D)
    if programs > LOOKBACK_MAX_PROGRAMS or length < LOOKBACK_MIN_LENGTH:
        return False
    return auto_lookback(d, dtype)


def default_chunks(batch: int, blocks: int, length: int) -> int:
    """Time chunks of the two-pass scan for a ``(batch, blocks)`` single-pass grid.

    1 (single pass) when the grid already has ``>= 256`` programs: at (8, 4096, 1024-2048)
    the two-pass scan was no faster on the H100. Otherwise the smallest power of two that
    brings it to ``>= 2048`` programs while keeping chunks of ``>= 256`` steps (at
    (1, 16384, 2048) fp32: 64 programs 0.97 ms forward, 32 chunks 0.43 ms).
    """
    programs = batch * blocks
    if programs >= 256:
        return 1
    chunks = 1
    while programs * chunks < 2048:
        nxt = chunks * 2
        if length % nxt or length // nxt < 256:
            break
        chunks = nxt
    return chunks

"""What the Pallas Mosaic GPU kernels share: the device check, the program geometry and
:class:`Ops`, the few operations that differ between a compiled Mosaic GPU kernel and its
run in the Pallas interpreter (CPU tests).

The compiled kernels are launched by ``plgpu.kernel`` (grid axes named ``"d"`` and
``"b"``); interpreted, the same body runs under ``pl.pallas_call`` with the grid
``(d / BLOCK_D, batch)``, TMA copies become plain copies and barrier waits vanish.
"""

from __future__ import annotations

import dataclasses

import jax
from jax import lax
from jax.experimental import pallas as pl

try:  # Mosaic GPU Pallas: part of every JAX this library supports, but optional here
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:  # pragma: no cover - then the Mosaic kernels report themselves unsupported
    plgpu = None

BLOCK_D = 128  # channels per program: one per thread of a warpgroup
SMEM_BYTES = 227 * 1024  # shared memory one H100 block may use


def on_hopper() -> bool:
    """Whether the default device is a compute capability 9.0 GPU (H100/H200), the only
    one the Mosaic kernels were run on."""
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return False
    return dev.platform == "gpu" and getattr(dev, "compute_capability", "") == "9.0"


def device_unsupported(d: int, interpret: bool, hopper) -> str | None:
    """Why a one-channel-per-thread Mosaic kernel cannot run on this device for a flattened
    state of ``d`` channels (``None`` when it can); ``hopper``: the caller's device check (a
    module attribute, so that tests can patch it per module)."""
    if plgpu is None:
        return "jax.experimental.pallas.mosaic_gpu cannot be imported"
    if not interpret and not hopper():
        return "needs a compute capability 9.0 GPU (H100/H200)"
    if d % BLOCK_D:
        return f"the flattened state size {d} is not a multiple of {BLOCK_D}"
    return None


@dataclasses.dataclass(frozen=True)
class Ops:
    """The few operations that differ between the Mosaic GPU kernel and its interpretation."""

    interpret: bool

    def program_ids(self):
        """(channel block, batch row) of this program."""
        if self.interpret:
            return pl.program_id(0), pl.program_id(1)
        return lax.axis_index("d"), lax.axis_index("b")

    def vec(self, ref):
        """A ``(BLOCK_D,)`` ref (HBM or shared) -> registers, one element per thread."""
        if self.interpret:
            return ref[...]
        layout = plgpu.Layout.WG_STRIDED((BLOCK_D,), vec_size=1)
        return plgpu.load(ref, (), layout=layout, optimized=False)

    def stage(self, src, dst, bar):
        """Copy ``src`` (HBM) into ``dst`` (shared memory), arriving on ``bar``."""
        if self.interpret:
            dst[...] = src[...]
        else:
            plgpu.copy_gmem_to_smem(src, dst, bar)

    def wait(self, bar):
        if not self.interpret:
            plgpu.barrier_wait(bar)

    def release(self):
        """All threads are done reading shared memory before the next copy into it (a
        warpgroup barrier and a proxy fence)."""
        if not self.interpret:
            plgpu.commit_smem()


def staging(slot_shapes, stages: int, interpret: bool) -> list:
    """Scratch for a :class:`TileRing`: one ``(stages, *shape)`` shared-memory buffer per
    ``(shape, dtype)`` of ``slot_shapes`` and, compiled, the ring's TMA barriers (one per
    slot, one arrival per staged array)."""
    scratch = [plgpu.SMEM((stages, *shape), dtype) for shape, dtype in slot_shapes]
    if not interpret:
        scratch.append(plgpu.Barrier(num_arrivals=len(slot_shapes), num_barriers=stages))
    return scratch


class TileRing:
    """Tiles of ``tile`` time steps staged into a ring of shared-memory slots.

    ``sources[i](rows)`` is the HBM ref of array ``i``'s tile at ``rows`` (a ``pl.ds``);
    ``slots[i]`` its ``(stages, ...)`` buffer (:func:`staging`), ``bars`` the barriers
    (``None`` in the interpreter). Tile ``k`` of the processing order is time tile
    ``order(k)``. :meth:`loop` waits for each tile, runs the body, releases the slot and
    refills it with the tile ``stages`` ahead.
    """

    def __init__(self, ops, sources, slots, bars, tile, n_tiles, order=lambda k: k):
        self.ops, self.sources, self.slots, self.bars = ops, sources, slots, bars
        self.tile, self.n_tiles, self.order = tile, n_tiles, order
        self.stages = slots[0].shape[0]

    def issue(self, k, slot):
        """Stage the ``k``-th tile in processing order into ``slot``."""
        bar = None if self.bars is None else self.bars.at[slot]
        rows = pl.ds(self.order(k) * self.tile, self.tile)
        for src, dst in zip(self.sources, self.slots, strict=True):
            self.ops.stage(src(rows), dst.at[slot], bar)

    def prologue(self):
        """Stage the first ``stages`` tiles (call before the loop)."""
        for i in range(min(self.stages, self.n_tiles)):
            self.issue(i, i)

    def loop(self, body, carry):
        """``body(time_tile, slot, carry) -> carry`` over the tiles in processing order."""

        def one(k, carry):
            slot = lax.rem(k, self.stages)
            self.ops.wait(None if self.bars is None else self.bars.at[slot])
            carry = body(self.order(k), slot, carry)
            self.ops.release()

            @pl.when(k + self.stages < self.n_tiles)
            def _():
                self.issue(k + self.stages, slot)

            return carry

        return lax.fori_loop(0, self.n_tiles, one, carry)


def launch(
    kernel, *, out_shape, scratch, n_in: int, grid, interpret: bool, name: str, approx_math=True
):
    """``kernel(*in_refs, *out_refs, *scratch_refs)`` as a Mosaic GPU kernel over ``grid``
    = ``(d / BLOCK_D, batch)``, every operand in HBM; or, with ``interpret``, the same body
    under the Pallas interpreter. Compiled, ``scratch`` must end with the TMA barriers."""
    if interpret:  # plgpu.kernel's grid axes are not bound in the interpreter
        any_spec = pl.BlockSpec(memory_space=plgpu.GMEM)
        return pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=grid,
            in_specs=[any_spec] * n_in,
            out_specs=[any_spec] * len(out_shape),
            scratch_shapes=scratch,
            interpret=True,
            name=name,
        )
    # No automatic barriers: each thread reads only its own channel's column of the tiles;
    # the one cross-thread hazard, refilling a slot, is fenced by Ops.release.
    return plgpu.kernel(
        kernel,
        out_type=tuple(out_shape),
        scratch_types=scratch,
        grid=grid,
        grid_names=("d", "b"),
        compiler_params=plgpu.CompilerParams(approx_math=approx_math, unsafe_no_auto_barriers=True),
        kernel_name=name,
    )

"""Orbax checkpoints of the whole training state (model, optimizer, RNG streams) + metadata."""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

__all__ = ["Checkpointer"]


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(state) -> dict:
    """Pure nested dict of arrays; typed PRNG keys become their raw key data."""
    pure = nnx.to_pure_dict(state)
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, pure)


def _from_saved(state, restored):
    template = nnx.to_pure_dict(state)
    leaves = jax.tree.map(
        lambda t, r: (
            jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
            if _is_key(t)
            else np.asarray(r).astype(t.dtype)
        ),
        template,
        restored,
    )
    nnx.replace_by_pure_dict(state, leaves)
    return state


class Checkpointer:
    """Saves ``(state, meta)`` at a step and restores the latest, keeping ``keep`` of them.

    ``state`` is the ``nnx.State`` of ``(model, optimizer)``; ``meta`` a JSON-able dict
    (step, best validation accuracy...). Saves are synchronous, so a killed run never
    leaves a half-written "latest" checkpoint behind (Orbax writes to a temporary folder
    and renames it).
    """

    def __init__(self, workdir: str | Path, keep: int = 2):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_saveable(state)),
                meta=ocp.args.JsonSave(dict(meta)),
            ),
        )

    def restore(self, state, step: int | None = None):
        """Restores into (a copy of the structure of) ``state``; returns ``(state, meta)``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(np.asarray, _to_saveable(state))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return _from_saved(state, restored["state"]), dict(restored["meta"])

    def close(self) -> None:
        self._manager.close()

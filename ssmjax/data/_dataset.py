"""The common dataset interface and the batching iterator every task uses."""

import dataclasses
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "Split", "cache_dir", "iterate_batches", "num_batches"]


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a sequence-classification task, as host (NumPy) arrays.

    Attributes:
      inputs: tokens ``(n, l)`` (integer), pixels/features ``(n, l, c)`` (float), or, for
        retrieval, pairs ``(n, 2, l)`` of token sequences. May be a memory map.
      labels: ``(n,)`` integer class labels.
      lengths: ``(n,)`` real lengths (tokens before the padding), or ``(n, 2)`` for
        pairs; ``None`` when every sequence fills ``l``.
    """

    inputs: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray | None = None

    def __post_init__(self):
        if len(self.inputs) != len(self.labels):
            raise ValueError(
                f"inputs and labels differ in length: {len(self.inputs)} vs {len(self.labels)}"
            )
        if self.lengths is not None and len(self.lengths) != len(self.labels):
            raise ValueError("lengths must have one entry per example")

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A task: its splits and what a model needs to know about its inputs.

    Attributes:
      name: task name, e.g. ``"mnist1d"``, ``"listops"``.
      train: training split.
      val: validation split (some tasks reuse the test split; ``info`` says so).
      test: test split.
      num_classes: number of labels.
      seq_len: padded sequence length ``l``.
      vocab_size: number of token ids for token inputs (0 is padding), else ``None``.
      d_input: channels per step for continuous inputs (``(n, l, c)``), else ``None``.
      info: free-form provenance (source, checksum, variant, which split stands in for val).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    seq_len: int
    vocab_size: int | None = None
    d_input: int | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if (self.vocab_size is None) == (self.d_input is None):
            raise ValueError("a Dataset has either vocab_size (tokens) or d_input (features)")

    @property
    def is_pair(self) -> bool:
        """True for two-document tasks (retrieval): inputs ``(n, 2, l)``."""
        return self.train.inputs.ndim == 3 and self.vocab_size is not None


def cache_dir(*parts: str) -> Path:
    """The ssmjax data cache: ``$SSMJAX_DATA`` or ``~/.cache/ssmjax``, created on demand."""
    root = Path(os.environ.get("SSMJAX_DATA", Path.home() / ".cache" / "ssmjax"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def num_batches(split: Split, batch_size: int, drop_remainder: bool = False) -> int:
    """Number of batches :func:`iterate_batches` yields for one pass."""
    n = len(split)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _bucket(length: int, buckets) -> int:
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = False,
    buckets: tuple[int, ...] | None = None,
    prefetch: int = 2,
    start_batch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields batches ``{"inputs", "labels", "mask"}`` of one pass over ``split``.

    The order depends only on ``(seed, epoch)``, so a resumed run sees the same batches.
    A background thread prepares up to ``prefetch`` batches ahead.

    Args:
      split: the data.
      batch_size: examples per batch.
      shuffle: shuffle the order (by ``seed`` and ``epoch``).
      seed: shuffling seed.
      epoch: epoch number, mixed into the shuffling seed.
      drop_remainder: drop the last incomplete batch; otherwise it is padded to
        ``batch_size`` with masked-out copies of its first example (``mask`` all False and
        ``labels`` -1) so every batch has one shape and one compilation.
      buckets: optional increasing lengths; each batch is cut to the smallest bucket that
        holds its longest sequence (fewer wasted steps on padded tasks).
      prefetch: batches prepared ahead by a host thread (0 disables the thread).
      start_batch: skip this many batches of the pass (resuming mid-epoch).

    Yields:
      ``inputs`` ``(batch_size, l', ...)``, ``labels`` ``(batch_size,)`` int32 and ``mask``
      ``(batch_size, l')`` bool (``(batch_size, 2, l')`` for pairs), where ``l'`` is the
      bucketed length (or ``l``).

    >>> s = Split(np.arange(12).reshape(4, 3), np.array([0, 1, 0, 1]), np.array([3, 2, 1, 3]))
    >>> [b["mask"].sum() for b in iterate_batches(s, 3)]
    [np.int64(6), np.int64(3)]
    """
    n = len(split)
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    starts = range(0, n - batch_size + 1 if drop_remainder else n, batch_size)[start_batch:]
    seq_axis = 2 if (split.lengths is not None and split.lengths.ndim == 2) else 1
    full_len = split.inputs.shape[seq_axis]

    def make(start: int) -> dict[str, np.ndarray]:
        idx = order[start : start + batch_size]
        valid = np.ones(batch_size, bool)
        if len(idx) < batch_size:
            valid[len(idx) :] = False
            idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
        inputs = np.asarray(split.inputs[idx])
        labels = np.where(valid, np.asarray(split.labels[idx]), -1).astype(np.int32)
        if split.lengths is None:
            lengths = np.full(inputs.shape[:seq_axis], full_len)
        else:
            lengths = np.asarray(split.lengths[idx])
        lengths = np.where(valid.reshape((-1,) + (1,) * (lengths.ndim - 1)), lengths, 0)
        length = full_len
        if buckets:
            length = min(full_len, _bucket(int(lengths.max(initial=1)), buckets))
            inputs = np.take(inputs, np.arange(length), axis=seq_axis)
        mask = np.arange(length) < lengths[..., None]
        return {"inputs": inputs, "labels": labels, "mask": mask}

    if prefetch <= 0:
        for start in starts:
            yield make(start)
        return
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def worker():
        try:
            for start in starts:
                if stop.is_set():
                    return
                q.put(make(start))
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
            return
        q.put(None)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()

"""The ListOps generator (LRA rules): tree samplers, seeded chunks run in-process or by a
process pool, and the writer of ``basic_{train,val,test}.tsv`` (see
:mod:`ssmjax.data.listops`)."""

import concurrent.futures
import csv
import hashlib
import json
import math
import multiprocessing
import os
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ssmjax.data.listops_syntax import (
    _DIGITS,
    _OP_P,
    _TASK,
    OPERATORS,
    Tree,
    _apply,
    evaluate,  # noqa: F401 - used by the doctests
    tokenize,  # noqa: F401 - used by the doctests
)

__all__ = [
    "generate_examples",
    "generate_listops",
    "sample_tree",
]


# ----------------------------------------------------------------------------- generator


class _TooLong(Exception):
    pass


# Both samplers below consume the random stream in the same order, so for one seed
# ``render(tree)`` of the tree sampler equals the fused sampler's string (tested):
#   node:     u = random(); an operator iff depth < max_depth and u <= 0.25
#   operator: k = 2 + randrange(max_args - 1); the k children in order; then the
#             operator OPERATORS[int(4 * random())] (exactly uniform: 4 divides 2**53)
#   leaf:     getrandbits(4) until it is below 10 (exactly uniform over 0..9)
# Stopping once a tree passes ``max_tokens`` cannot change the distribution of the
# accepted trees: such a tree would be rejected anyway, and the next one uses new draws.


def _sample(
    rng: random.Random, max_depth: int, max_args: int, max_tokens: float
) -> tuple[Tree, int] | None:
    """One tree and its token count, or ``None`` once it exceeds ``max_tokens``."""
    count = 0
    rand, bits, randrange = rng.random, rng.getrandbits, rng.randrange

    def grow(depth: int) -> Tree:
        nonlocal count
        if depth < max_depth and rand() <= _OP_P:
            count += 2
            if count > max_tokens:
                raise _TooLong
            children = [grow(depth + 1) for _ in range(2 + randrange(max_args - 1))]
            return (OPERATORS[int(4 * rand())], *children)
        count += 1
        if count > max_tokens:
            raise _TooLong
        digit = bits(4)
        while digit > 9:
            digit = bits(4)
        return digit

    try:
        tree = grow(1)
    except _TooLong:
        return None
    return tree, count


def _sample_example(
    rng: random.Random, max_depth: int, max_args: int, max_tokens: float
) -> tuple[str, int, int] | None:
    """As :func:`_sample`, but builds the nested-form string and the value directly."""
    count = 0
    rand, bits, randrange = rng.random, rng.getrandbits, rng.randrange
    apply, ops, digits = _apply, OPERATORS, _DIGITS

    def grow(depth: int) -> tuple[str, int]:  # an operator node at ``depth``
        nonlocal count
        count += 2
        if count > max_tokens:
            raise _TooLong
        k = 2 + randrange(max_args - 1)
        parts, values = [], []
        may_branch = depth + 1 < max_depth
        for _ in range(k):
            if may_branch and rand() <= _OP_P:
                part, value = grow(depth + 1)
            else:
                count += 1
                if count > max_tokens:
                    raise _TooLong
                value = bits(4)
                while value > 9:
                    value = bits(4)
                part = digits[value]
            parts.append(part)
            values.append(value)
        op = ops[int(4 * rand())]
        text = "( " * (k + 1) + "[" + op + " " + " ) ".join(parts) + " ) ] )"
        return text, apply(op, values)

    try:
        if max_depth > 1 and rand() <= _OP_P:
            text, value = grow(1)
        else:  # a one-leaf tree
            count = 1
            value = bits(4)
            while value > 9:
                value = bits(4)
            text = digits[value]
    except _TooLong:
        return None
    return text, value, count


def sample_tree(
    rng: random.Random,
    *,
    max_depth: int = 10,
    max_args: int = 10,
    max_tokens: int | None = None,
) -> Tree | None:
    """Draws one ListOps tree as the LRA generator does (before its length filter).

    At depth ``d`` (root 1) a node is an operator with probability 0.25 when
    ``d < max_depth`` (else always a leaf); an operator node has ``k`` uniform in
    ``2..max_args`` children, drawn in order, then an operator uniform over
    :data:`OPERATORS`; a leaf is a uniform digit.

    Args:
      rng: a ``random.Random`` (consumed).
      max_depth: maximum depth; nodes at this depth are leaves.
      max_args: maximum children per operator.
      max_tokens: stop and return ``None`` as soon as the tree has more tokens.

    Returns:
      A tree, or ``None`` when it passed ``max_tokens``.

    >>> tree = sample_tree(random.Random(3), max_depth=3, max_args=3)
    >>> 0 <= evaluate(tree) <= 9
    True
    """
    out = _sample(rng, max_depth, max_args, math.inf if max_tokens is None else max_tokens)
    return None if out is None else out[0]


def _max_tokens(max_depth: int, max_args: int) -> int:
    """Token count of the largest possible tree."""
    count = 1
    for _ in range(max_depth - 1):
        count = 2 + max_args * count
    return count


def _chunk_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"ssmjax-listops:{seed}:{index}".encode()).digest()[:8])


def _generate_chunk(args: tuple) -> list[tuple[str, int]]:
    """``n`` accepted examples ``(source, label)`` of one seeded chunk (a worker task)."""
    seed, index, n, min_length, max_length, max_depth, max_args = args
    rng = random.Random(_chunk_seed(seed, index))
    out: list[tuple[str, int]] = []
    attempts, max_attempts = 0, 2_000_000 + 10_000 * n
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(
                f"ListOps generator: fewer than {n} trees accepted in {max_attempts} draws "
                f"with min_length={min_length}, max_length={max_length}, max_depth={max_depth},"
                f" max_args={max_args}; widen the length range"
            )
        drawn = _sample_example(rng, max_depth, max_args, max_length - 1)
        if drawn is not None and drawn[2] > min_length:  # duplicates go when merging
            out.append(drawn[:2])
    return out


def _chunk_results(
    workers: int, tasks: Iterator[tuple], want_more
) -> Iterator[list[tuple[str, int]]]:
    """Chunk results in task order, computed in-process or by a process pool."""
    if workers <= 1:
        while want_more(0):
            yield _generate_chunk(next(tasks))
        return
    # "spawn": forking a process that has started JAX's threads is unsafe
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending: deque = deque()
        try:
            while True:
                while len(pending) < 2 * workers and want_more(len(pending)):
                    pending.append(pool.submit(_generate_chunk, next(tasks)))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def generate_examples(
    n: int,
    *,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    workers: int | None = 1,
    chunk_size: int = 256,
    progress: bool = False,
) -> list[tuple[str, int]]:
    """``n`` distinct ListOps examples ``(source, label)``, LRA generator rules.

    Trees are drawn with :func:`sample_tree` and kept iff
    ``min_length < num_tokens(tree) < max_length`` (strict, as LRA), deduplicated, and
    shuffled with ``seed``. The work is cut into seeded chunks of ``chunk_size`` accepted
    trees, merged in chunk order, so the result depends on ``(n, settings, seed,
    chunk_size)`` and not on ``workers``.

    Args:
      n: number of distinct examples.
      min_length: exclusive lower bound on the token count (500 in LRA).
      max_length: exclusive upper bound on the token count (2000 in LRA).
      max_depth: maximum tree depth (10 in LRA).
      max_args: maximum operator arguments (10 in LRA).
      seed: generation seed.
      workers: processes (``ProcessPoolExecutor``); 1 runs in this process, ``None``
        uses every CPU.
      chunk_size: accepted trees per task.
      progress: show a tqdm progress bar.

    Returns:
      A list of ``n`` pairs ``(nested-form source, label 0..9)``.

    Raises:
      RuntimeError: the settings cannot produce ``n`` distinct trees.

    >>> ex = generate_examples(3, min_length=4, max_length=12, seed=1)
    >>> [4 < len(tokenize(s)) < 12 and evaluate(s) == y for s, y in ex]
    [True, True, True]
    """
    if not 0 <= min_length < max_length - 1:
        raise ValueError(f"need 0 <= min_length < max_length - 1, got {min_length}, {max_length}")
    if max_depth < 1 or max_args < 2:
        raise ValueError("need max_depth >= 1 and max_args >= 2")
    if (largest := _max_tokens(max_depth, max_args)) <= min_length:
        raise ValueError(
            f"trees with max_depth={max_depth}, max_args={max_args} have at most {largest} "
            f"tokens, none more than min_length={min_length}"
        )
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    examples: list[tuple[str, int]] = []
    seen: set[str] = set()
    index = 0
    barren = 0  # consecutive chunks that added nothing new

    def tasks():
        nonlocal index
        while True:
            yield (seed, index, chunk_size, min_length, max_length, max_depth, max_args)
            index += 1

    def want_more(in_flight: int) -> bool:
        return len(examples) + in_flight * chunk_size < n

    with tqdm(total=n, desc="ListOps", unit="ex", disable=not progress, leave=False) as bar:
        for chunk in _chunk_results(workers, tasks(), want_more):
            before = len(examples)
            for source, label in chunk:
                if source not in seen and len(examples) < n:
                    seen.add(source)
                    examples.append((source, label))
            bar.update(len(examples) - before)
            barren = barren + 1 if len(examples) == before else 0
            if barren >= 20:
                raise RuntimeError(
                    f"ListOps generator: only {len(examples)} distinct trees of {n} found "
                    f"with min_length={min_length}, max_length={max_length}, "
                    f"max_depth={max_depth}, max_args={max_args}; widen the length range"
                )
            if len(examples) >= n:
                break
    random.Random(seed).shuffle(examples)
    return examples


def _write_tsv(path: Path, rows: Iterable[tuple[str, int]]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")  # the LRA format: csv defaults, tab separated
        writer.writerow(["Source", "Target"])
        writer.writerows(rows)
    os.replace(tmp, path)


def generate_listops(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 96_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Writes a regenerated ListOps in the official format: ``basic_{train,val,test}.tsv``.

    The files have the LRA layout (header ``Source<TAB>Target``, one example a line,
    Python ``csv`` defaults with a tab delimiter) and load through :func:`load_listops`
    exactly like the official ``listops-1000`` files. A ``generation.json`` beside them
    records the settings, the label histograms and the files' SHA-256, and marks the data
    as regenerated (same distribution as LRA's files, different examples).

    Args:
      out_dir: output folder (created).
      num_train: training examples (96,000 in LRA).
      num_val: validation examples (2,000).
      num_test: test examples (2,000).
      min_length: exclusive lower token-count bound (500).
      max_length: exclusive upper token-count bound (2000).
      max_depth: maximum depth (10).
      max_args: maximum operator arguments (10).
      seed: generation seed; the files depend only on the settings and the seed.
      workers: processes; ``None`` uses every CPU.
      progress: show a progress bar.

    Returns:
      ``{"train": path, "val": path, "test": path, "manifest": path}``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     paths = generate_listops(d, num_train=4, num_val=2, num_test=2, min_length=3,
    ...                              max_length=20, workers=1, progress=False)
    ...     paths["val"].read_text().splitlines()[0]
    'Source\\tTarget'
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(min_length=min_length, max_length=max_length, max_depth=max_depth,
                    max_args=max_args, seed=seed)  # fmt: skip
    start = time.perf_counter()
    total = num_train + num_val + num_test
    examples = generate_examples(total, workers=workers, progress=progress, **settings)
    elapsed = time.perf_counter() - start
    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val),
              "test": (num_train + num_val, total)}  # fmt: skip
    paths: dict[str, Path] = {}
    manifest: dict = {
        "generator": "ssmjax.data.listops.generate_listops",
        "provenance": "regenerated ListOps (LRA generator rules, data.md section 2)",
        "settings": {**settings, "num_train": num_train, "num_val": num_val,
                     "num_test": num_test},
        "seconds": round(elapsed, 2),
        "splits": {},
    }  # fmt: skip
    for split, (lo, hi) in bounds.items():
        path = out / f"{_TASK}_{split}.tsv"
        rows = examples[lo:hi]
        _write_tsv(path, rows)
        paths[split] = path
        manifest["splits"][split] = {
            "file": path.name,
            "examples": hi - lo,
            "sha256": _sha256(path),
            "label_counts": np.bincount([y for _, y in rows], minlength=10).tolist(),
        }
    paths["manifest"] = out / "generation.json"
    paths["manifest"].write_text(json.dumps(manifest, indent=1) + "\n")
    return paths


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

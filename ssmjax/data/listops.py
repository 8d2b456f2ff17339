"""ListOps (Nangia & Bowman 2018; LRA variant, Tay et al. 2021): tokenizer, evaluator,
generator and loader.

A ListOps example is a nested expression over the digits 0..9 with the operators
``MIN``, ``MAX``, ``MED`` (median, rounded down) and ``SM`` (sum modulo 10); the label is
its value. On disk (LRA ``listops-1000/basic_{train,val,test}.tsv``) the expression is
written as left-nested pairs, e.g. ``( ( ( ( [MAX 2 ) 9 ) 4 ) ] )`` for ``[MAX 2 9 4 ]``.

**Tokenisation** (LRA after its March 2021 fix, and S4/S5): ``]`` becomes ``X``, the
parentheses are deleted, and the rest is split on whitespace, so the example above is
``[MAX 2 9 4 X`` (5 tokens). The token count equals the generator's length count.

**Token ids** (one fixed table for both variants; LRA built its table from Python set
order and S4 from token frequencies, so neither order is stable or meaningful, and any
fixed order is an equivalent relabelling of a learned embedding):

====  ==========  =====================================================
id    token       meaning
====  ==========  =====================================================
0     ``<pad>``   padding (``Dataset`` convention: 0 is padding)
1     ``[MIN``    minimum
2     ``[MAX``    maximum
3     ``[MED``    median, ``int(numpy.median(args))``
4     ``[SM``     sum modulo 10
5     ``X``       closing bracket ``]``
6-15  ``0``-``9`` digit ``d`` has id ``6 + d``
16    ``<unk>``   any other token (LRA's out-of-vocabulary id)
17    ``<eos>``   end of sequence, S4 variant only
====  ==========  =====================================================

``variant="lra"``: vocabulary size 17, truncate/pad to 2000, no end token.
``variant="s4"``: vocabulary size 18 (S4's "actual size 18"), truncate to 2047 and
append ``<eos>``, pad to 2048.

**Trees** are plain Python values: a leaf is an ``int`` 0..9, an operator node is a tuple
``(op, child_1, ..., child_k)`` with ``op`` one of ``"MIN" "MAX" "MED" "SM"`` (``"FIRST"``
and ``"LAST"`` are understood by the evaluator for the original spinn files). Trees are
hashable, so a ``set`` deduplicates them.
"""

import concurrent.futures
import csv
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, Union

import numpy as np
from tqdm.auto import tqdm

from ssmjax.data._dataset import Dataset, Split, cache_dir

__all__ = [
    "EOS_ID",
    "OPERATORS",
    "PAD_ID",
    "TOKENS",
    "UNK_ID",
    "VOCAB",
    "decode",
    "encode",
    "encode_batch",
    "evaluate",
    "generate_examples",
    "generate_listops",
    "load_listops",
    "num_tokens",
    "parse",
    "read_tsv",
    "render",
    "sample_tree",
    "tokenize",
    "vocab_size",
]

Tree = Union[int, tuple]  # noqa: UP007 - a leaf int or ``(op, *children)``

OPERATORS = ("MIN", "MAX", "MED", "SM")
"""The operators the generator draws from (uniformly)."""
TOKENS = ("[MIN", "[MAX", "[MED", "[SM", "X", *map(str, range(10)))
"""The 15 ListOps tokens, ids 1..15 in this order."""
PAD_ID, UNK_ID, EOS_ID = 0, 16, 17
VOCAB = {"<pad>": PAD_ID, **{t: i + 1 for i, t in enumerate(TOKENS)}, "<unk>": UNK_ID,
         "<eos>": EOS_ID}  # fmt: skip
"""Token -> id, see the table in the module docstring."""
_ID_TO_TOKEN = {i: t for t, i in VOCAB.items()}
_STRIP = str.maketrans({"]": "X", "(": None, ")": None})
_OP_P = 0.25  # a node is an operator when u <= 0.25 (the spec's VALUE_P: leaf if u > 0.25)
_DIGITS = tuple(map(str, range(10)))
_KNOWN_OPS = frozenset({*OPERATORS, "FIRST", "LAST"})  # FIRST/LAST: spinn's test.tsv
_TASK = "basic"
_SPLITS = ("train", "val", "test")
_CACHE_VERSION = 1

Variant = Literal["lra", "s4"]


def vocab_size(variant: Variant = "lra") -> int:
    """Number of token ids (padding included): 17 for ``"lra"``, 18 for ``"s4"``.

    >>> vocab_size("lra"), vocab_size("s4")
    (17, 18)
    """
    return {"lra": 17, "s4": 18}[_check_variant(variant)]


def _check_variant(variant: str) -> str:
    if variant not in ("lra", "s4"):
        raise ValueError(f"variant must be 'lra' or 's4', got {variant!r}")
    return variant


# ----------------------------------------------------------------------------- tokenizer


def tokenize(source: str) -> list[str]:
    """Splits an expression into tokens: ``]`` -> ``X``, parentheses dropped.

    Args:
      source: an expression in the nested (``( [MAX 2 ) ...``) or plain form.

    Returns:
      The tokens, e.g. ``["[MAX", "2", "9", "X"]``.

    >>> tokenize("( ( ( [MAX 2 ) 9 ) ] )")
    ['[MAX', '2', '9', 'X']
    """
    return source.translate(_STRIP).split()


def encode(source: str, *, variant: Variant = "lra", max_len: int | None = None) -> np.ndarray:
    """Token ids of one expression (no padding).

    Args:
      source: the expression (nested or plain form).
      variant: ``"lra"`` (no end token) or ``"s4"`` (``<eos>`` appended).
      max_len: truncate to this many ids in all (the ``<eos>`` included), or ``None``.

    Returns:
      ``(n,)`` int32 ids, see the table in the module docstring.

    >>> encode("( ( [SM 9 ) 9 ) ] )").tolist()
    [4, 15, 15, 5]
    >>> encode("[SM 9 9 ]", variant="s4", max_len=3).tolist()
    [4, 15, 17]
    """
    _check_variant(variant)
    ids = [VOCAB.get(t, UNK_ID) for t in tokenize(source)]
    if variant == "s4":
        if max_len is not None:
            ids = ids[: max_len - 1]
        ids.append(EOS_ID)
    elif max_len is not None:
        ids = ids[:max_len]
    return np.asarray(ids, np.int32)


def encode_batch(
    sources: Sequence[str], *, variant: Variant = "lra", max_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Encodes, truncates and pads many expressions.

    Args:
      sources: ``n`` expressions.
      variant: ``"lra"`` or ``"s4"`` (see :func:`encode`).
      max_len: padded length ``l``; ``None`` means 2000 (lra) or 2048 (s4).

    Returns:
      ``tokens`` ``(n, l)`` uint8 (0 = padding) and ``lengths`` ``(n,)`` int32, the
      number of ids before the padding.

    >>> tokens, lengths = encode_batch(["[MAX 2 9 ]", "[SM 1 ( 2 ) ]"], max_len=6)
    >>> tokens.tolist(), lengths.tolist()
    ([[2, 8, 15, 5, 0, 0], [4, 7, 8, 5, 0, 0]], [4, 4])
    """
    max_len = _default_max_len(variant) if max_len is None else max_len
    tokens, lengths, _ = _encode_rows(sources, variant, max_len)
    return tokens, lengths


def _encode_rows(
    sources: Sequence[str], variant: str, max_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Padded ids ``(n, max_len)`` uint8, lengths ``(n,)`` int32, number truncated."""
    eos = _check_variant(variant) == "s4"
    room = max_len - eos
    tokens = np.zeros((len(sources), max_len), np.uint8)
    lengths = np.zeros(len(sources), np.int32)
    truncated = 0
    get = VOCAB.get
    for i, source in enumerate(sources):
        ids = [get(t, UNK_ID) for t in source.translate(_STRIP).split()]
        if len(ids) > room:
            truncated += 1
            del ids[room:]
        if eos:
            ids.append(EOS_ID)
        tokens[i, : len(ids)] = ids
        lengths[i] = len(ids)
    return tokens, lengths, truncated


def decode(ids: Iterable[int]) -> str:
    """The plain-form expression of token ids (padding and ``<eos>`` dropped).

    >>> decode([2, 8, 15, 5, 0, 0])
    '[MAX 2 9 ]'
    """
    out = []
    for i in ids:
        i = int(i)
        if i in (PAD_ID, EOS_ID):
            continue
        token = _ID_TO_TOKEN.get(i, "<unk>")
        out.append("]" if token == "X" else token)
    return " ".join(out)


def _default_max_len(variant: str) -> int:
    return {"lra": 2000, "s4": 2048}[_check_variant(variant)]


# ----------------------------------------------------------------------------- trees


def _apply(op: str, args: list[int]) -> int:
    if not args:
        raise ValueError(f"operator {op} has no arguments")
    if op == "MIN":
        return min(args)
    if op == "MAX":
        return max(args)
    if op == "MED":  # int(numpy.median(args)): mean of the middle pair, rounded down
        s = sorted(args)
        k = len(s) // 2
        return s[k] if len(s) % 2 else (s[k - 1] + s[k]) // 2
    if op == "SM":
        return sum(args) % 10
    if op == "FIRST":
        return args[0]
    if op == "LAST":
        return args[-1]
    raise ValueError(f"unknown ListOps operator {op!r}")


def parse(source: str) -> Tree:
    """Parses an expression (nested or plain form) into a tree.

    Args:
      source: e.g. ``"( ( ( [MAX 2 ) 9 ) ] )"`` or ``"[MAX 2 9 ]"``.

    Returns:
      An ``int`` leaf or a tuple ``(op, *children)``.

    Raises:
      ValueError: unbalanced brackets or an unknown token.

    >>> parse("( ( ( [MAX 2 ) ( ( [MIN 3 ) ] ) ) ] )")
    ('MAX', 2, ('MIN', 3))
    >>> parse(render(("SM", 1, ("MED", 2, 3)))) == ("SM", 1, ("MED", 2, 3))
    True
    """
    stack: list[list] = [[]]
    for token in tokenize(source):
        if token[0] == "[":
            if token[1:] not in _KNOWN_OPS:
                raise ValueError(f"unknown ListOps operator {token!r}")
            stack.append([token[1:]])
        elif token == "X":
            if len(stack) == 1:
                raise ValueError(f"unbalanced ']' in {source[:80]!r}")
            node = stack.pop()
            if len(node) < 2:
                raise ValueError(f"operator {node[0]} has no arguments in {source[:80]!r}")
            stack[-1].append(tuple(node))
        elif token.isdigit():
            stack[-1].append(int(token))
        else:
            raise ValueError(f"unknown ListOps token {token!r}")
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError(f"not one complete expression: {source[:80]!r}")
    return stack[0][0]


def render(tree: Tree, *, nested: bool = True) -> str:
    """Writes a tree in the on-disk (left-nested pairs) form, or the plain form.

    An operator node ``op`` with children ``c1..ck`` is the pair
    ``(((...((op, c1), c2)...), ck), "]")`` and a pair ``(a, b)`` is written
    ``"( a b )"``.

    Args:
      tree: an ``int`` leaf or ``(op, *children)``.
      nested: the LRA/spinn on-disk form (default) or the plain ``[OP a b ]`` form.

    Returns:
      The expression string.

    >>> render(("MAX", 2, 9, 4))
    '( ( ( ( [MAX 2 ) 9 ) 4 ) ] )'
    >>> render(("MAX", 2, ("SM", 1, 3)), nested=False)
    '[MAX 2 [SM 1 3 ] ]'
    """
    if isinstance(tree, (int, np.integer)):
        return str(int(tree))
    op, *children = tree
    parts = [render(c, nested=nested) for c in children]
    if not nested:
        return f"[{op} " + " ".join(parts) + " ]"
    return "( " * (len(children) + 1) + f"[{op}" + "".join(f" {p} )" for p in parts) + " ] )"


def evaluate(tree_or_string: Tree | str) -> int:
    """The value of an expression: MIN, MAX, MED (median rounded down), SM (sum mod 10).

    ``MED`` follows the generator, ``int(numpy.median(args))``: for an even number of
    arguments the mean of the two middle values, rounded down.

    Args:
      tree_or_string: a tree, or an expression string (nested or plain form).

    Returns:
      The value, an ``int`` in 0..9.

    >>> evaluate("[MED 1 2 3 4 ]"), evaluate("[SM 9 9 ]")
    (2, 8)
    >>> evaluate(("MAX", 2, ("MIN", 7, 5), ("SM", 4, 4)))
    8
    """
    if isinstance(tree_or_string, str):
        stack: list[list] = [[]]
        for token in tokenize(tree_or_string):
            if token[0] == "[":
                stack.append([token[1:]])
            elif token == "X":
                if len(stack) == 1:
                    raise ValueError(f"unbalanced ']' in {tree_or_string[:80]!r}")
                op, *args = stack.pop()
                stack[-1].append(_apply(op, args))
            elif token.isdigit():
                stack[-1].append(int(token))
            else:
                raise ValueError(f"unknown ListOps token {token!r}")
        if len(stack) != 1 or len(stack[0]) != 1:
            raise ValueError(f"not one complete expression: {tree_or_string[:80]!r}")
        return stack[0][0]
    if isinstance(tree_or_string, (int, np.integer)):
        return int(tree_or_string)
    op, *children = tree_or_string
    return _apply(op, [evaluate(c) for c in children])


def num_tokens(tree: Tree) -> int:
    """Token count of a tree: 1 per digit, 2 per operator (its token and ``X``).

    >>> num_tokens(("MAX", 2, 9, 4)), len(tokenize(render(("MAX", 2, 9, 4))))
    (5, 5)
    """
    if isinstance(tree, (int, np.integer)):
        return 1
    return 2 + sum(num_tokens(c) for c in tree[1:])


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


# ----------------------------------------------------------------------------- loader


def read_tsv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Reads a ListOps TSV: LRA (header ``Source<TAB>Target``) or spinn (``label<TAB>expr``).

    Args:
      path: the file.

    Returns:
      ``sources`` (list of ``n`` strings) and ``labels`` ``(n,)`` int32.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "x.tsv"
    ...     _ = p.write_text("Source\\tTarget\\n( ( [SM 9 ) 9 ) ] )\\t8\\n")
    ...     read_tsv(p)
    (['( ( [SM 9 ) 9 ) ] )'], array([8], dtype=int32))
    """
    sources: list[str] = []
    labels: list[int] = []
    with open(path, newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        first = next(rows, None)
        if first is None:
            return sources, np.zeros(0, np.int32)
        if [c.strip() for c in first] == ["Source", "Target"]:
            src_col, label_col = 0, 1
        elif len(first) == 2 and first[0].strip().isdigit():  # spinn: label first, no header
            src_col, label_col = 1, 0
            sources.append(first[1])
            labels.append(int(first[0]))
        else:
            raise ValueError(f"{path}: not a ListOps TSV (first row {first[:2]!r})")
        for row in rows:
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}, line {rows.line_num}: expected 2 columns")
            sources.append(row[src_col])
            labels.append(int(float(row[label_col])))
    return sources, np.asarray(labels, np.int32)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_LAYOUTS = ("", "lra_release/lra_release/listops-1000", "lra_release/listops-1000",
            "listops-1000")  # fmt: skip


def _how_to_get(searched: Sequence[Path]) -> str:
    where = "\n".join(f"  {p}" for p in searched)
    return (
        f"ListOps files {_TASK}_{{train,val,test}}.tsv not found; searched\n{where}\n"
        "Get them in one of two ways:\n"
        "  1. The official LRA data: download "
        "https://storage.googleapis.com/long-range-arena/lra_release.gz (~7.7 GB; reported "
        "to return HTTP 403 since 2026), extract only the ListOps folder with\n"
        "     ssmjax.data.download.extract_members('lra_release.gz', 'listops-1000', DIR)\n"
        "     and pass data_dir=DIR/lra_release/lra_release/listops-1000 (or DIR).\n"
        "  2. Regenerate it offline (same distribution, different examples):\n"
        "     python -m ssmjax.data.generate listops --out DIR\n"
        "     and pass data_dir=DIR.\n"
        "With data_dir=None the loader looks in $SSMJAX_DATA/listops (default "
        "~/.cache/ssmjax/listops)."
    )


def _find_data_dir(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        root = Path(os.environ.get("SSMJAX_DATA", Path.home() / ".cache" / "ssmjax"))
        bases = [root / "listops", root / "lra_release", root]
    else:
        bases = [Path(data_dir).expanduser()]
    searched = []
    for base in bases:
        for layout in _LAYOUTS:
            folder = base / layout if layout else base
            searched.append(folder)
            if all((folder / f"{_TASK}_{s}.tsv").is_file() for s in _SPLITS):
                return folder
    raise FileNotFoundError(_how_to_get(searched[: len(_LAYOUTS)] if data_dir else searched))


def _cache_key(files: dict[str, Path], variant: str, max_len: int) -> str:
    stats = {
        s: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for s, p in files.items()
    }
    blob = json.dumps([_CACHE_VERSION, variant, max_len, stats], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path)


def _read_cache(folder: Path) -> tuple[dict, dict[str, Split]] | None:
    """The cached arrays (inputs memory-mapped), or ``None`` when absent or unreadable."""
    if not (folder / "manifest.json").is_file():
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("version") != _CACHE_VERSION:
            raise ValueError("old cache version")
        splits = {
            s: Split(
                _load_npy(folder / f"{s}_inputs.npy"),
                np.load(folder / f"{s}_labels.npy"),
                np.load(folder / f"{s}_lengths.npy"),
            )
            for s in _SPLITS
        }
    except (OSError, ValueError):  # a damaged cache entry (ours) is rebuilt
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return manifest, splits


def _write_cache(folder: Path, manifest: dict, splits: dict[str, Split]) -> None:
    """Writes the cache entry into a temporary folder and renames it into place."""
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for s, split in splits.items():
            np.save(tmp / f"{s}_inputs.npy", split.inputs)
            np.save(tmp / f"{s}_labels.npy", split.labels)
            np.save(tmp / f"{s}_lengths.npy", split.lengths)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.exists():  # else another process finished first: its copy is as good
            raise


def load_listops(
    data_dir: str | os.PathLike | None = None,
    *,
    variant: Variant = "lra",
    max_len: int | None = None,
    cache: bool = True,
) -> Dataset:
    """ListOps from ``basic_{train,val,test}.tsv``, official or regenerated.

    The folder may be the one holding the TSVs, or a folder with the LRA layout under it
    (``lra_release/lra_release/listops-1000``, ``lra_release/listops-1000`` or
    ``listops-1000``). Files written by :func:`generate_listops` (``python -m
    ssmjax.data.generate listops``) go through the same code path; ``info["provenance"]``
    says which one was read. The token arrays are cached as ``.npy`` files (memory-mapped
    on the next load) with a ``manifest.json`` (source paths, their SHA-256, vocabulary)
    under ``cache_dir("listops", "cache", key)``, where the key covers the files' paths,
    sizes and modification times, the variant and ``max_len``.

    Args:
      data_dir: the data folder; ``None`` searches ``$SSMJAX_DATA/listops`` (default
        ``~/.cache/ssmjax/listops``) and ``$SSMJAX_DATA/lra_release``.
      variant: ``"lra"`` (2000 tokens, no end token, vocabulary 17) or ``"s4"``
        (``<eos>`` appended, 2048, vocabulary 18); see the module docstring.
      max_len: padded length; ``None`` means 2000 (lra) or 2048 (s4). Longer examples
        are truncated (the official data have none).
      cache: read and write the token cache.

    Returns:
      A :class:`Dataset` with ``inputs`` ``(n, max_len)`` uint8 (0 = padding),
      ``labels`` ``(n,)`` int32 in 0..9, ``lengths`` ``(n,)`` int32, 10 classes.

    Raises:
      FileNotFoundError: the TSVs are missing; the message says how to get them.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = generate_listops(d, num_train=6, num_val=2, num_test=2, min_length=3,
    ...                          max_length=30, workers=1, progress=False)
    ...     ds = load_listops(d, max_len=32, cache=False)
    ...     ds.train.inputs.shape, ds.vocab_size, ds.info["provenance"][:11]
    ((6, 32), 17, 'regenerated')
    """
    variant = _check_variant(variant)
    max_len = _default_max_len(variant) if max_len is None else int(max_len)
    folder = _find_data_dir(data_dir)
    files = {s: folder / f"{_TASK}_{s}.tsv" for s in _SPLITS}
    generation = folder / "generation.json"
    if generation.is_file():
        gen = json.loads(generation.read_text())
        provenance = (
            f"{gen.get('provenance', 'regenerated ListOps')}, settings {gen.get('settings')}"
        )
    else:
        provenance = f"ListOps TSV files in {folder} (official LRA listops-1000 format)"

    loaded = None
    key_dir = None
    if cache:
        key_dir = cache_dir("listops", "cache") / _cache_key(files, variant, max_len)
        loaded = _read_cache(key_dir)
    if loaded is not None:
        manifest, splits = loaded
    else:
        splits = {}
        truncated = {}
        for s, path in files.items():
            sources, labels = read_tsv(path)
            tokens, lengths, truncated[s] = _encode_rows(sources, variant, max_len)
            splits[s] = Split(tokens, labels, lengths)
        manifest = {
            "version": _CACHE_VERSION,
            "variant": variant,
            "max_len": max_len,
            "sources": {s: str(p.resolve()) for s, p in files.items()},
            "sha256": {s: _sha256(p) for s, p in files.items()},
            "vocab": [_ID_TO_TOKEN[i] for i in range(vocab_size(variant))],
            "examples": {s: len(splits[s]) for s in _SPLITS},
            "truncated": truncated,
        }
        if cache:
            try:
                _write_cache(key_dir, manifest, splits)
            except OSError:  # a read-only cache must not stop training
                key_dir = None
    return Dataset(
        name="listops",
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=10,
        seq_len=max_len,
        vocab_size=vocab_size(variant),
        info={
            "variant": variant,
            "provenance": provenance,
            "data_dir": str(folder),
            "sources": manifest["sources"],
            "sha256": manifest["sha256"],
            "vocab": manifest["vocab"],
            "pad_id": PAD_ID,
            "eos_id": EOS_ID if variant == "s4" else None,
            "truncated": manifest["truncated"],
            "cache": str(key_dir) if key_dir is not None else None,
            "val": f"{_TASK}_val.tsv",
        },
    )

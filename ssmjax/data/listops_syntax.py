"""ListOps tokenizer and evaluator: vocabulary, token ids, trees, parsing, rendering and
evaluation (see :mod:`ssmjax.data.listops`)."""

from collections.abc import Iterable, Sequence
from typing import Literal, Union

import numpy as np

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
    "num_tokens",
    "parse",
    "render",
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

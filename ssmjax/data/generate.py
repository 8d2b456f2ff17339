"""Command line for the offline dataset generators: ``python -m ssmjax.data.generate``.

Subcommands:

* ``listops``: a regenerated ListOps in the official LRA format
  (``basic_{train,val,test}.tsv``), see :func:`ssmjax.data.listops.generate_listops`;
* ``pathfinder``: forwards its arguments to ``ssmjax.data.pathfinder.cli_main``.

Example::

    python -m ssmjax.data.generate listops --out ~/.cache/ssmjax/listops --workers 8
    python -m ssmjax.data.generate pathfinder --help
"""

import argparse
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _listops_parser(sub) -> None:
    p = sub.add_parser(
        "listops",
        help="regenerate ListOps (LRA generator rules) as basic_{train,val,test}.tsv",
        description="Writes basic_{train,val,test}.tsv (header Source<TAB>Target) and "
        "generation.json into --out. Defaults are the LRA settings.",
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--num-train", type=int, default=96_000)
    p.add_argument("--num-val", type=int, default=2_000)
    p.add_argument("--num-test", type=int, default=2_000)
    p.add_argument("--min-length", type=int, default=500, help="exclusive lower token bound")
    p.add_argument("--max-length", type=int, default=2000, help="exclusive upper token bound")
    p.add_argument("--max-depth", type=int, default=10)
    p.add_argument("--max-args", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers", type=int, default=None, help=f"processes (default: all {os.cpu_count()})"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_listops(args: argparse.Namespace) -> int:
    from ssmjax.data.listops import generate_listops

    start = time.perf_counter()
    paths = generate_listops(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        min_length=args.min_length,
        max_length=args.max_length,
        max_depth=args.max_depth,
        max_args=args.max_args,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )
    total = args.num_train + args.num_val + args.num_test
    print(f"wrote {total} ListOps examples in {time.perf_counter() - start:.1f} s:")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def _run_pathfinder(argv: Sequence[str]) -> int:
    try:
        from ssmjax.data.pathfinder import cli_main
    except ImportError as e:
        print(f"pathfinder generator unavailable: {e}", file=sys.stderr)
        return 2
    return cli_main(list(argv)) or 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the generator CLI.

    Args:
      argv: arguments without the program name (``sys.argv[1:]`` when ``None``).

    Returns:
      The exit status.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     main(["listops", "--out", d, "--num-train", "3", "--num-val", "1", "--num-test",
    ...           "1", "--min-length", "3", "--max-length", "20", "--workers", "1",
    ...           "--no-progress"])
    wrote 5 ListOps examples in ... s:
    ...
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "pathfinder":  # everything after it belongs to pathfinder
        return _run_pathfinder(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m ssmjax.data.generate",
        description="Generate datasets offline (ListOps, Pathfinder) in the official formats.",
    )
    sub = parser.add_subparsers(dest="task", required=True)
    _listops_parser(sub)
    sub.add_parser(
        "pathfinder",
        help="regenerate Pathfinder / Path-X (arguments go to ssmjax.data.pathfinder)",
        add_help=False,
    )
    args = parser.parse_args(argv)
    return _run_listops(args)


if __name__ == "__main__":
    sys.exit(main())

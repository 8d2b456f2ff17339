"""Writing a Pathfinder dataset: :func:`generate_pathfinder` and :func:`cli_main`.

``_write_batch`` stays a module-level function: spawned worker processes import it by
its path."""

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssmjax.data.pathfinder._png import _png_bytes
from ssmjax.data.pathfinder._sample import generate_sample
from ssmjax.data.pathfinder._spec import _PRESETS, DIFFICULTY_DIRS, PathfinderSpec

__all__ = ["cli_main", "generate_pathfinder"]


# --------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------

_PROVENANCE = "ssmjax_generator.json"


def _metadata_row(spec: PathfinderSpec, batch: int, i: int, label: int, margin: int) -> str:
    fields = (
        f"imgs/{batch}",
        f"sample_{i}.png",
        i,
        label,
        spec.continuity,
        spec.contour_length,
        spec.distractor_length,
        spec.paddle_length,
        spec.paddle_thickness,
        margin,
        len(spec.paddle_contrast_list),
    )
    return " ".join(str(x) for x in fields)


def _batch_samples(spec: PathfinderSpec, batch: int, count: int, seed: int):
    """The samples of batch ``batch``: seeded by ``(seed, batch)``, labels balanced."""
    rng = np.random.default_rng([seed, batch])
    half = count // 2
    labels = [0] * half + [1] * half + ([int(rng.integers(2))] if count % 2 else [])
    for k in rng.permutation(count):
        yield generate_sample(spec, rng, labels[k])


def _write_batch(spec: PathfinderSpec, root: str, batch: int, count: int, seed: int, tick=None):
    """Writes ``imgs/{batch}/sample_{i}.png`` and then ``metadata/{batch}.npy`` (the
    metadata file marks the batch complete). Returns statistics of the batch."""
    root = Path(root)
    meta = root / "metadata" / f"{batch}.npy"
    folder = root / "imgs" / str(batch)
    folder.mkdir(parents=True, exist_ok=True)
    rows, positive, rejected, distractors = [], 0, 0, 0
    for i, s in enumerate(_batch_samples(spec, batch, count, seed)):
        (folder / f"sample_{i}.png").write_bytes(_png_bytes(s.image))
        rows.append(_metadata_row(spec, batch, i, s.label, s.margin))
        positive += s.label
        rejected += s.rejected
        distractors += s.num_distractors
        if tick is not None:
            tick(1)
    tmp = meta.with_name(f"{batch}.npy.tmp{os.getpid()}")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, meta)
    return {"n": count, "positive": positive, "rejected": rejected, "distractors": distractors}


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def generate_pathfinder(
    out_dir: str | os.PathLike,
    *,
    resolution: int = 32,
    difficulty: int = 14,
    num_images: int = 200_000,
    images_per_batch: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    first_batch: int = 0,
    exact: bool = True,
    spec: PathfinderSpec | None = None,
    progress: bool = True,
) -> Path:
    """Generates a Pathfinder dataset in the released on-disk layout.

    Writes ``{out_dir}/pathfinder{R}/{difficulty folder}/imgs/{b}/sample_{i}.png`` and
    ``metadata/{b}.npy`` (text rows, see the module docstring) for batches ``b =
    first_batch, first_batch + 1, ...``, plus ``ssmjax_generator.json`` (settings and
    provenance). Batches whose metadata file exists are skipped, so an interrupted run
    resumes, and disjoint ``first_batch`` ranges can run on several machines. Every batch
    is seeded by ``(seed, b)`` alone: the output does not depend on ``workers``. Labels
    are balanced within each batch.

    Args:
      out_dir: root folder (created).
      resolution: 32 (Pathfinder), 64, 128 (Path-X) or 256.
      difficulty: contour length 14 (LRA), 9 or 6 (``curv_baseline``).
      num_images: images to write (LRA has 200,000 per folder).
      images_per_batch: images per ``imgs/{b}`` folder and metadata file.
      seed: base seed.
      workers: processes (default: the CPUs available); 1 runs in this process.
      first_batch: number of the first batch.
      exact: see :attr:`PathfinderSpec.exact`.
      spec: explicit parameters (overrides ``resolution``, ``difficulty`` and ``exact``).
      progress: show a tqdm progress bar.

    Returns:
      The difficulty folder (``.../pathfinder32/curv_contour_length_14``).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     root = generate_pathfinder(d, num_images=4, images_per_batch=2, workers=1,
    ...                                progress=False)
    ...     sorted(str(p.relative_to(root)) for p in root.rglob("*.np*"))
    ['metadata/0.npy', 'metadata/1.npy']
    """
    if spec is None:
        spec = PathfinderSpec.preset(resolution, difficulty, exact=exact)
    if num_images < 1 or images_per_batch < 1:
        raise ValueError("num_images and images_per_batch must be positive")
    root = Path(out_dir) / f"pathfinder{spec.resolution}" / spec.difficulty_dir
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    settings = {
        "spec": dataclasses.asdict(spec),
        "seed": seed,
        "images_per_batch": images_per_batch,
    }
    settings = json.loads(json.dumps(settings))
    prov = root / _PROVENANCE
    if prov.is_file():
        old = json.loads(prov.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise ValueError(
                f"{root} holds images generated with other settings ({prov}); "
                "use another output folder"
            )
    else:
        note = (
            "regenerated Pathfinder (ssmjax.data.pathfinder): same algorithm and LRA settings"
            ", not the LRA images"
        )
        prov.write_text(json.dumps({"provenance": note, **settings}, indent=1) + "\n")
    n_batches = math.ceil(num_images / images_per_batch)
    jobs = []
    for k in range(n_batches):
        b = first_batch + k
        count = min(images_per_batch, num_images - k * images_per_batch)
        if not (root / "metadata" / f"{b}.npy").is_file():
            jobs.append((b, count))
    workers = _cpu_count() if workers is None else max(1, int(workers))
    from tqdm.auto import tqdm

    with tqdm(
        total=sum(c for _, c in jobs),
        disable=not progress,
        unit="img",
        desc=f"pathfinder{spec.resolution}/{spec.difficulty_dir}",
    ) as bar:
        if workers == 1 or len(jobs) <= 1:
            for b, count in jobs:
                _write_batch(spec, str(root), b, count, seed, tick=bar.update)
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            with concurrent.futures.ProcessPoolExecutor(
                min(workers, len(jobs)), mp_context=ctx
            ) as pool:
                futures = [
                    pool.submit(_write_batch, spec, str(root), b, count, seed) for b, count in jobs
                ]
                for f in concurrent.futures.as_completed(futures):
                    bar.update(f.result()["n"])
    return root


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``python -m ssmjax.data.generate pathfinder ...``: writes a Pathfinder dataset.

    Args:
      argv: the arguments after ``pathfinder`` (``--help`` lists them).

    Returns:
      The exit status (0).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     cli_main(["--out", d, "--num-images", "2", "--workers", "1", "--no-progress"])
    wrote 2 images (pathfinder32/curv_contour_length_14) ... s
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m ssmjax.data.generate pathfinder",
        description="Regenerate Pathfinder / Path-X (LRA settings) in the released layout "
        "{out}/pathfinder{R}/curv_contour_length_{D}/{imgs,metadata}; load it with "
        "ssmjax.data.load('pathfinder', data_dir=OUT, resolution=R).",
    )
    parser.add_argument("--out", required=True, help="output root folder (created)")
    parser.add_argument("--resolution", type=int, default=32, choices=sorted(_PRESETS))
    parser.add_argument(
        "--difficulty",
        type=int,
        default=14,
        choices=sorted(DIFFICULTY_DIRS),
        help="contour length: 14 (LRA, hard), 9, 6 (curv_baseline)",
    )
    parser.add_argument("--num-images", type=int, default=200_000)
    parser.add_argument("--images-per-batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", type=int, default=None, help=f"processes (default: all {_cpu_count()})"
    )
    parser.add_argument(
        "--first-batch",
        type=int,
        default=0,
        help="first batch number (to split a run over machines)",
    )
    parser.add_argument(
        "--no-exact",
        action="store_true",
        help="upstream's process only, without the checker guarantee",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(None if argv is None else list(argv))
    start = time.perf_counter()
    root = generate_pathfinder(
        args.out,
        resolution=args.resolution,
        difficulty=args.difficulty,
        num_images=args.num_images,
        images_per_batch=args.images_per_batch,
        seed=args.seed,
        workers=args.workers,
        first_batch=args.first_batch,
        exact=not args.no_exact,
        progress=not args.no_progress,
    )
    rel = root.relative_to(Path(args.out))
    print(
        f"wrote {args.num_images} images ({rel}) to {root} in {time.perf_counter() - start:.1f} s"
    )
    return 0

"""Pathfinder and Path-X (LRA): a from-scratch generator, a connectivity checker and the loader.

The generator follows the algorithm of Kim, Linsley et al. (ICLR 2020; ``snakes2.py`` in
``drewlinsley/pathfinder``) with the per-resolution settings LRA used (``data.md`` §3). It
reproduces the *distribution* of the released images, not the images themselves: label it
"regenerated Pathfinder". Files are written in the released on-disk layout::

    {out}/pathfinder{R}/{curv_baseline | curv_contour_length_9 | curv_contour_length_14}/
        imgs/{batch}/sample_{i}.png       8-bit grayscale, R x R
        metadata/{batch}.npy              plain text despite the extension, one row per image:
            imgs/{batch} sample_{i}.png {i} {label} {continuity} {contour_length}
            {distractor_length} {paddle_length} {paddle_thickness} {margin} {n_paddle_contrasts}

so :func:`load_pathfinder` reads generated and released files through one code path
(``ssmjax_generator.json`` beside them records the settings and provenance).

Algorithm (per image): draw the label and the margin ``m``; seed target snake A at least
``2 * seed_distance`` from the border and B at ``seed_distance`` from A's tail; grow both
alternately, each paddle drawn among the points at ``L + m`` from a pivot ``L + 2m`` ahead,
weighted by ``(1 - dilated occupancy) * cos(min(continuity * |turn|, pi/2))**2`` and
accepted if its margin mask does not overlap the occupancy (``max < 1.8``, up to
``max_paddle_retrial`` redraws; a failed pair is regenerated); add distractor snakes
(skipped after 4 retries, or when under 1% of the pixels are free); put one marker on a
start tip and the other on the end tip of the same snake (label 1) or of the other one
(label 0); min-max rescale to uint8 as ``scipy.misc.imsave`` did.

Deliberate differences from upstream, all documented where they act:

* rendering: paddles are box-filtered coverage (8 x 8 samples per pixel) of a line at least
  one supersampled pixel thick, instead of PIL lines and Lanczos resizing; coverage under
  1/16 is dropped so that ink is unambiguous after rescaling. Markers are sampled on the
  supersampled grid as upstream;
* upstream shares one occupancy mask between the two target snakes but adds a paddle's
  mask only when its snake grows again, so the two could cross; here each target paddle
  also avoids the other snake's newest paddle, and both last paddles (upstream: only B's)
  enter the occupancy before the distractors are placed;
* :attr:`PathfinderSpec.exact` (default): the draws of the target snakes are conditioned
  so that the checker is exact (see :func:`check_connectivity`);
* labels are balanced within every batch (upstream: a coin flip per image), and the
  metadata is written as text, as in the LRA release (upstream: binary ``np.save``).
"""

from ssmjax.data.pathfinder._connectivity import check_connectivity as check_connectivity
from ssmjax.data.pathfinder._connectivity import find_markers as find_markers
from ssmjax.data.pathfinder._loader import Variant as Variant
from ssmjax.data.pathfinder._loader import load_pathfinder as load_pathfinder
from ssmjax.data.pathfinder._loader import load_pathx as load_pathx
from ssmjax.data.pathfinder._png import _decode_png as _decode_png
from ssmjax.data.pathfinder._png import _png_bytes as _png_bytes
from ssmjax.data.pathfinder._png import _read_png as _read_png
from ssmjax.data.pathfinder._png import read_metadata as read_metadata
from ssmjax.data.pathfinder._sample import PathfinderSample as PathfinderSample
from ssmjax.data.pathfinder._sample import generate_sample as generate_sample
from ssmjax.data.pathfinder._spec import DIFFICULTY_DIRS as DIFFICULTY_DIRS
from ssmjax.data.pathfinder._spec import PathfinderSpec as PathfinderSpec
from ssmjax.data.pathfinder._writer import _batch_samples as _batch_samples
from ssmjax.data.pathfinder._writer import cli_main as cli_main
from ssmjax.data.pathfinder._writer import generate_pathfinder as generate_pathfinder

__all__ = [
    "DIFFICULTY_DIRS",
    "PathfinderSample",
    "PathfinderSpec",
    "check_connectivity",
    "cli_main",
    "find_markers",
    "generate_pathfinder",
    "generate_sample",
    "load_pathfinder",
    "load_pathx",
    "read_metadata",
]

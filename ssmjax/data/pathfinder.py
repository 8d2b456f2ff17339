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

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import struct
import time
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ssmjax.data._dataset import Dataset, Split

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

#: Contour length (paddles per target snake) -> the released folder name.
DIFFICULTY_DIRS = {6: "curv_baseline", 9: "curv_contour_length_9", 14: "curv_contour_length_14"}


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PathfinderSpec:
    """Generation parameters for one resolution and difficulty (``data.md`` §3 table).

    Use :meth:`preset` for the LRA settings. Lengths are in pixels of the final image.

    Attributes:
      resolution: image side ``R`` (images are ``R x R``).
      contour_length: paddles per target snake (14 hard, 9 intermediate, 6 baseline).
      padding: border band (px) excluded from seeding.
      antialias_scale: supersampling factor of the original renderer; paddles are at least
        ``1 / antialias_scale`` px thick, as a 1-px PIL line on the supersampled canvas.
      paddle_margin_list: clearance ``m`` between paddles; one value is drawn per image.
      seed_distance: distance between the start tips of the two target snakes.
      marker_radius: radius of the two circular markers.
      paddle_length: paddle (dash) length ``L``.
      paddle_thickness: paddle thickness (``thickness * antialias_scale`` must be whole).
      continuity: curvature penalty (larger = straighter snakes).
      distractor_length: paddles per distractor snake (Python 2 ``contour_length / 3``).
      num_distractor_snakes: distractor snakes attempted per image.
      snake_contrast_list: per-snake contrast choices (the distractors' intensity).
      paddle_contrast_list: per-paddle contrast factors of the target snakes.
      max_target_contour_retrial: target-pair retries (upstream retries forever; kept for
        the record, the pair is regenerated until it succeeds).
      max_distractor_contour_retrial: retries of one distractor snake before it is skipped.
      max_paddle_retrial: extra draws of one paddle (or seed position) before failing.
      stop_with_availability: distractor seeding stops below this free-pixel fraction.
      ink_threshold: the checker's binarisation: a pixel is ink when its uint8 value is
        strictly above this.
      link_radius: the checker's connectivity: two ink pixels are linked when their centres
        are at most this far apart. The presets take about the 99th percentile of the gaps
        that upstream's geometry leaves between consecutive paddles of a snake (about
        ``2 * m`` plus rounding): 3.7 px at 32, 3.2 at 64, 6.5 at 128 and 256.
      marker_size: the checker's marker detector: markers are the blobs that contain a
        solid ``marker_size x marker_size`` square of ink above ``marker_threshold``.
      marker_threshold: uint8 level of the marker detector.
      exact: make :func:`check_connectivity` (with the ``owner`` map) agree with the label
        on every image. Each target snake's paddles are drawn from upstream's distribution
        conditioned on lying within ``link_radius`` of the previous paddle, the last paddles
        so that an end marker keeps ``link_radius`` from the other target snake and from
        both start markers (for both labels alike), and the rare image with other than two
        detectable markers is redrawn. ``False``: upstream's process only.
    """

    resolution: int
    contour_length: int
    padding: int
    antialias_scale: int
    paddle_margin_list: tuple[int, ...]
    seed_distance: int
    marker_radius: float
    paddle_length: int
    paddle_thickness: float
    continuity: float
    distractor_length: int
    num_distractor_snakes: int
    snake_contrast_list: tuple[float, ...]
    paddle_contrast_list: tuple[float, ...]
    max_target_contour_retrial: int = 4
    max_distractor_contour_retrial: int = 4
    max_paddle_retrial: int = 2
    stop_with_availability: float = 0.01
    ink_threshold: int = 0
    link_radius: float = 2.0
    marker_size: int = 2
    marker_threshold: int = 0
    exact: bool = True

    def __post_init__(self):
        if self.resolution < 16:
            raise ValueError(f"resolution must be >= 16, got {self.resolution}")
        aa_thick = self.paddle_thickness * self.antialias_scale
        if round(aa_thick) != aa_thick:
            raise ValueError("paddle_thickness * antialias_scale must be a whole number")
        if self.contour_length < 2 or self.distractor_length < 1:
            raise ValueError("contour_length must be >= 2 and distractor_length >= 1")
        if not self.paddle_margin_list or not self.snake_contrast_list:
            raise ValueError("paddle_margin_list and snake_contrast_list must be non-empty")
        if 2 * self.seed_distance * 2 >= self.resolution:
            raise ValueError("seed_distance leaves no room to seed the first target snake")

    @property
    def difficulty_dir(self) -> str:
        """The released folder name of this contour length (``curv_contour_length_14``)."""
        return DIFFICULTY_DIRS.get(
            self.contour_length, f"curv_contour_length_{self.contour_length}"
        )

    @classmethod
    def preset(cls, resolution: int = 32, difficulty: int = 14, **overrides) -> "PathfinderSpec":
        """The LRA settings for ``pathfinder{resolution}`` at contour length ``difficulty``.

        Args:
          resolution: 32 (Pathfinder), 64, 128 (Path-X) or 256.
          difficulty: contour length: 14 (hard, LRA), 9 (intermediate) or 6 (baseline).
          **overrides: fields to replace.

        Returns:
          The spec. Distractor counts use Python 2 integer division as upstream did.

        >>> s = PathfinderSpec.preset(32, 14)
        >>> s.distractor_length, s.num_distractor_snakes, s.paddle_margin_list
        (4, 5, (1,))
        >>> PathfinderSpec.preset(128).num_distractor_snakes
        8
        """
        if resolution not in _PRESETS:
            raise ValueError(f"resolution must be one of {sorted(_PRESETS)}, got {resolution}")
        if difficulty not in DIFFICULTY_DIRS:
            raise ValueError(f"difficulty must be one of {sorted(DIFFICULTY_DIRS)}")
        p = dict(_PRESETS[resolution])
        budget = p.pop("distractor_budget")
        dl = difficulty // 3
        p.update(
            resolution=resolution,
            contour_length=difficulty,
            distractor_length=dl,
            num_distractor_snakes=budget // dl,
        )
        p.update(overrides)
        return cls(**p)


# LRA builder docstrings (lra_benchmarks/data/pathfinder.py) over the snakes2_wrapper defaults.
# "distractor_budget" is the numerator of num_distractor_snakes = budget / distractor_length.
# The checker settings (last four) are ours, chosen per resolution so that paddle gaps are
# bridged and markers are wider than any paddle.
_PRESETS = {
    32: dict(
        padding=1,
        antialias_scale=2,
        paddle_margin_list=(1,),
        seed_distance=7,
        marker_radius=1.5,
        paddle_length=2,
        paddle_thickness=0.5,
        continuity=1.0,
        distractor_budget=20,
        snake_contrast_list=(2.0,),
        paddle_contrast_list=(0.75,),
        ink_threshold=0,
        link_radius=3.7,
        marker_size=2,
        marker_threshold=150,
    ),
    64: dict(
        padding=1,
        antialias_scale=2,
        paddle_margin_list=(1,),
        seed_distance=12,
        marker_radius=2.5,
        paddle_length=5,
        paddle_thickness=1,
        continuity=1.8,
        distractor_budget=22,
        snake_contrast_list=(0.8,),
        paddle_contrast_list=(1.0,),
        ink_threshold=0,
        link_radius=3.2,
        marker_size=2,
        marker_threshold=230,
    ),
    128: dict(
        padding=1,
        antialias_scale=2,
        paddle_margin_list=(2, 3),
        seed_distance=20,
        marker_radius=3,
        paddle_length=5,
        paddle_thickness=1.5,
        continuity=1.8,
        distractor_budget=35,
        snake_contrast_list=(0.9,),
        paddle_contrast_list=(1.0,),
        ink_threshold=0,
        link_radius=6.5,
        marker_size=2,
        marker_threshold=240,
    ),
    256: dict(
        padding=22,
        antialias_scale=2,
        paddle_margin_list=(3,),
        seed_distance=27,
        marker_radius=5,
        paddle_length=5,
        paddle_thickness=2,
        continuity=1.8,
        distractor_budget=30,
        snake_contrast_list=(1.0,),
        paddle_contrast_list=(1.0,),
        ink_threshold=0,
        link_radius=6.5,
        marker_size=4,
        marker_threshold=240,
    ),
}


# --------------------------------------------------------------------------------------
# Rendering primitives
# --------------------------------------------------------------------------------------

_SS = 8  # coverage samples per pixel and axis (anti-aliasing of paddles and markers)


def _coverage_grid(half: int) -> np.ndarray:
    """Sample offsets (px) of a ``(2*half+1)`` px patch centred on a pixel centre."""
    n = 2 * half + 1
    return (np.arange(n * _SS) + 0.5) / _SS - 0.5 - half


def _box(inside: np.ndarray, n: int) -> np.ndarray:
    return inside.reshape(n, _SS, n, _SS).mean(axis=(1, 3), dtype=np.float32)


class _Paddle:
    """Patches of one paddle orientation, centred on its start pixel: the anti-aliased line,
    the occupancy mask (line dilated by the margin), that mask max-filtered by disk(m) (read
    at the candidate end points), the solid-mask offsets (the seeding element), the ink and
    the ink zone (ink dilated by the checker's link radius)."""

    __slots__ = ("core", "ink", "line", "mask", "mask_dil", "zone")

    def __init__(self, line, mask, mask_dil, core, ink, zone):
        self.line, self.mask, self.mask_dil, self.core = line, mask, mask_dil, core
        self.ink, self.zone = ink, zone


def _max_filter(a: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Grey dilation of a float array by a set of offsets (outside counts as 0)."""
    h, w = a.shape
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    pad = np.zeros((h + 2 * r, w + 2 * r), a.dtype)
    pad[r : r + h, r : r + w] = a
    out = np.zeros_like(a)
    for dy, dx in offsets:
        np.maximum(out, pad[r + dy : r + dy + h, r + dx : r + dx + w], out=out)
    return out


class _Geometry:
    """Patches and offsets shared by all paddles of one (spec, margin); memoised per process."""

    def __init__(self, spec: PathfinderSpec, margin: int):
        L = spec.paddle_length
        R = spec.resolution
        self.R, self.L, self.m = R, L, margin
        self.exact = spec.exact
        rho = math.ceil(spec.link_radius)
        self.H = L + math.ceil(spec.paddle_thickness) + max(2 * margin, rho) + 1
        self.n = 2 * self.H + 1
        self.mr = math.ceil(spec.marker_radius) + 1 + rho
        self.B = max(self.H + 1, self.mr + 1)  # zero border around the arrays
        self.W = R + 2 * self.B
        g = _coverage_grid(self.H)
        self._dy, self._dx = g[:, None], g[None, :]
        # a PIL line is at least one supersampled pixel wide; the mask is it dilated by m
        width = max(spec.paddle_thickness, 1.0 / spec.antialias_scale)
        self._r_line = width / 2
        self._r_mask = width / 2 + margin
        self._links = _disk_offsets(spec.link_radius)
        self._disk = _disk_offsets(margin)  # upstream's generate_dilation_struct(margin)
        self._paddles: dict[float, _Paddle] = {}
        self._weights: dict[float, np.ndarray] = {}
        self._free: dict[tuple[float, int], np.ndarray] = {}
        self.continuity = spec.continuity
        # candidate end points: one per pixel of arc on the circle of radius L + m
        step = L + margin
        deg = np.arange(0, 360, 360.0 / (2 * step * np.pi)) * np.pi / 180
        off = np.stack([np.floor(step * np.sin(deg)), np.floor(step * np.cos(deg))], 1)
        off = np.unique(off.astype(np.int64), axis=0)
        self.cand_y, self.cand_x = off[:, 0], off[:, 1]
        self.cand_flat = off[:, 0] * self.W + off[:, 1]
        self.cand_theta = np.arctan2(off[:, 0], off[:, 1])
        self.cand_reach = int(np.abs(off).max())
        # the empty canvas: the padding band is occupied
        occ = np.zeros((self.W, self.W), np.float32)
        inner = occ[self.B : self.B + R, self.B : self.B + R]
        p = spec.padding
        inner[:p, :] = inner[-p:, :] = inner[:, :p] = inner[:, -p:] = 1.0
        self.occ0, self.occ_dil0 = occ, _max_filter(occ, self._disk)
        # the marker: upstream draws a binary disk on the supersampled canvas around the
        # top-left subpixel of the tip pixel, then downsamples; sampled the same way here
        aa, k = spec.antialias_scale, 2 * self.mr + 1
        gm = (np.arange(k * aa) + 0.5) / aa - 0.5 - self.mr + (0.5 - 0.5 / aa)
        inside = gm[:, None] ** 2 + gm[None, :] ** 2 <= spec.marker_radius**2
        self.marker = inside.reshape(k, aa, k, aa).mean(axis=(1, 3), dtype=np.float32)
        self.marker_ink = self.marker > 0
        self.marker_zone = _dilate(self.marker_ink, self._links)

    def paddle(self, phi: float) -> _Paddle:
        """The paddle from the patch centre along ``phi`` (memoised by angle)."""
        hit = self._paddles.get(phi)
        if hit is None:
            s, c = math.sin(phi), math.cos(phi)
            proj = np.clip(self._dy * s + self._dx * c, 0.0, self.L)
            d2 = (self._dy - proj * s) ** 2 + (self._dx - proj * c) ** 2
            line = _box(d2 <= self._r_line**2, self.n)
            line[line < 1.0 / 16] = 0.0  # no faint fringe: ink is unambiguous after rescaling
            mask = _box(d2 <= self._r_mask**2, self.n)
            core = np.nonzero(mask >= 1.0)
            ink = line > 0
            hit = _Paddle(
                line,
                mask,
                _max_filter(mask, self._disk),
                (core[0] - self.H, core[1] - self.H),
                ink,
                _dilate(ink, self._links),
            )
            self._paddles[phi] = hit
        return hit

    def free_tails(self, theta: float, band: int) -> np.ndarray:
        """Admissible tails on the empty canvas (memoised by angle and band)."""
        key = (theta, band)
        hit = self._free.get(key)
        if hit is None:
            hit = self._free[key] = _free_tails(self.occ0, self, self.paddle(theta), band)
        return hit

    def weights(self, theta: float) -> np.ndarray:
        """Upstream's continuity weight of every candidate after a paddle along ``theta``."""
        hit = self._weights.get(theta)
        if hit is None:
            delta = np.abs(self.cand_theta - theta)
            delta = np.minimum(np.minimum(delta, 2 * np.pi - delta) * self.continuity, np.pi / 2)
            hit = np.maximum(np.cos(delta), 0.0) ** 2
            self._weights[theta] = hit
        return hit


def _free_tails(occ: np.ndarray, g: "_Geometry", pad: "_Paddle", band: int) -> np.ndarray:
    """Flat indices of the tails whose paddle's solid mask meets no occupancy ``> 0.3``
    (``occ`` zero-bordered by ``g.B``; a band of ``band`` pixels along the border counts as
    occupied, outside the image does not)."""
    R, B = g.R, g.B
    lined = occ.copy()
    li = lined[B : B + R, B : B + R]
    li[:band, :] = li[-band:, :] = li[:, :band] = li[:, -band:] = 1.0
    bad = np.zeros((R, R), np.float32)
    for oy, ox in zip(pad.core[0].tolist(), pad.core[1].tolist()):
        np.maximum(bad, lined[B + oy : B + oy + R, B + ox : B + ox + R], out=bad)
    return np.flatnonzero(bad <= 0.3)


_GEOMETRIES: dict[tuple, _Geometry] = {}


def _geometry(spec: PathfinderSpec, margin: int) -> _Geometry:
    key = (spec, margin)
    if key not in _GEOMETRIES:
        _GEOMETRIES[key] = _Geometry(spec, margin)
    return _GEOMETRIES[key]


def _translate(p: tuple[int, int], theta: float, dist: float) -> tuple[int, int]:
    """Upstream ``translate_coord``: move by ``dist`` along ``theta`` and round up."""
    return (math.ceil(p[0] + dist * math.sin(theta)), math.ceil(p[1] + dist * math.cos(theta)))


def _flip(theta: float) -> float:
    return theta + math.pi if theta < 0 else theta - math.pi


def _overlap_slices(n: int, d: tuple[int, int]):
    """Slices ``(ia, ib)`` with ``a[ia]`` aligned to ``b[ib]`` where ``b`` sits ``d`` pixels
    before ``a`` (``a[i]`` and ``b[i + d]`` are the same pixel); None when they miss."""
    dy, dx = d
    if abs(dy) >= n or abs(dx) >= n:
        return None
    ya, yb = slice(max(0, -dy), n - max(0, dy)), slice(max(0, dy), n - max(0, -dy))
    xa, xb = slice(max(0, -dx), n - max(0, dx)), slice(max(0, dx), n - max(0, -dx))
    return (ya, xa), (yb, xb)


class _Canvas:
    """Occupancy mask, ink owners and path images of one image, zero-bordered by ``g.B``.

    ``owner`` holds the snake id of every ink pixel (0 and 1: the target snakes; 2, 3, ...:
    distractors; -1: none). ``occ_dil`` is ``occ`` max-filtered by disk(m), kept up to date.
    """

    def __init__(self, spec: PathfinderSpec, g: _Geometry, rng: np.random.Generator):
        self.spec, self.g, self.rng = spec, g, rng
        self.occ, self.occ_dil = g.occ0.copy(), g.occ_dil0.copy()
        self.owner = np.full(self.occ.shape, -1, np.int8)

    def window(self, p: tuple[int, int], half: int | None = None) -> tuple[slice, slice]:
        h = self.g.H if half is None else half
        r, c = p[0] + self.g.B - h, p[1] + self.g.B - h
        return slice(r, r + 2 * h + 1), slice(c, c + 2 * h + 1)

    def inside(self, p: tuple[int, int]) -> bool:
        return 0 <= p[0] < self.spec.resolution and 0 <= p[1] < self.spec.resolution

    def put(self, img, p, pad: _Paddle, contrast: float, sid: int) -> None:
        w = self.window(p)
        np.maximum(img[w], pad.line * np.float32(contrast), out=img[w])
        self.owner[w][pad.ink] = sid

    def add_mask(self, seg) -> None:
        p, pad = seg
        w = self.window(p)
        np.maximum(self.occ[w], pad.mask, out=self.occ[w])
        np.maximum(self.occ_dil[w], pad.mask_dil, out=self.occ_dil[w])

    def seed(self, img, contrast: float, band: int, stop: float | None, sid: int, fresh=False):
        """``seed_snake``: a first paddle along a random angle, its tail uniform over the
        pixels where the paddle's solid mask meets no occupancy (``<= 0.3``, the border band
        counting as occupied). Returns (pivot, theta, tail, segment) or None.

        ``fresh``: the canvas is empty (target snake A), so the free tails of each angle
        are memoised.
        """
        spec, g, rng = self.spec, self.g, self.rng
        R, L, m = spec.resolution, g.L, g.m
        raw = None
        if stop is not None:
            raw = np.flatnonzero(self.occ[g.B : g.B + R, g.B : g.B + R] <= 0.3)
            if raw.size < stop * R * R:
                return None
        for _ in range(spec.max_paddle_retrial + 1):
            theta = int(rng.integers(-180, 180)) * math.pi / 180
            pad = g.paddle(theta)
            t = None
            if raw is not None and raw.size:
                t = self._propose_tail(pad, band, raw)
            if t is None:
                free = g.free_tails(theta, band) if fresh else self._free_tails(pad, band)
                if free.size == 0:
                    return None
                t = divmod(int(free[rng.integers(free.size)]), R)
            head = _translate(t, theta, L)
            pivot = _translate(head, _flip(theta), L + m)
            if self.inside(head) and self.inside(pivot):
                self.put(img, t, pad, contrast, sid)
                return pivot, theta, t, (t, pad)
        return None

    def _free_tails(self, pad: _Paddle, band: int) -> np.ndarray:
        """Flat indices of every admissible tail (upstream's dilation of the occupancy)."""
        return _free_tails(self.occ, self.g, pad, band)

    def _propose_tail(self, pad: _Paddle, band: int, raw: np.ndarray, tries: int = 32):
        """Rejection sampling of an admissible tail from the free pixels ``raw`` (a
        superset): uniform over the admissible ones, or None after ``tries`` misses (the
        caller then enumerates them, which keeps the draw uniform)."""
        R, B, rng = self.spec.resolution, self.g.B, self.rng
        cy, cx = pad.core
        for _ in range(tries):
            ty, tx = divmod(int(raw[rng.integers(raw.size)]), R)
            ys, xs = cy + ty, cx + tx
            inside = (ys >= 0) & (ys < R) & (xs >= 0) & (xs < R)
            ys, xs = ys[inside], xs[inside]
            if ys.size and (
                ys.min() < band or ys.max() >= R - band or xs.min() < band or xs.max() >= R - band
            ):
                continue  # the solid mask reaches the border band
            if self.occ[ys + B, xs + B].max(initial=0.0) <= 0.3:
                return ty, tx
        return None

    def extend(self, img, pivot, theta, last_seg, contrast: float, sid: int, other=None, ends=None):
        """``extend_snake``: one more paddle. Returns (pivot, theta, head, segment) or None.

        ``other``: the other target snake's newest paddle, which upstream leaves out of the
        occupancy until that snake grows again (so the two could cross); it counts here.
        For target snakes with ``spec.exact``, the paddle must also lie within
        ``link_radius`` of the previous one (the checker's link). ``ends``: for the last
        paddle of a target snake, ``(avoid, forbid)`` canvases: no ``avoid`` pixel may lie in
        the zone of a marker at the new end tip, and the new ink may not touch ``forbid``.
        """
        spec, g, rng = self.spec, self.g, self.rng
        R, B = spec.resolution, g.B
        p = _translate(pivot, theta, g.L + 2 * g.m)
        weight = g.weights(theta)
        k = g.cand_reach
        if k <= p[0] < R - k and k <= p[1] < R - k:  # every candidate is inside
            cy, cx, ct = g.cand_y + p[0], g.cand_x + p[1], g.cand_theta
            dil = self.occ_dil.ravel()[g.cand_flat + ((p[0] + B) * g.W + p[1] + B)]
        else:
            cy, cx = g.cand_y + p[0], g.cand_x + p[1]
            ok = (cy >= 0) & (cy < R) & (cx >= 0) & (cx < R)
            if not ok.any():
                return None
            cy, cx, ct, weight = cy[ok], cx[ok], g.cand_theta[ok], weight[ok]
            dil = self.occ_dil[cy + B, cx + B]
        pmf = (1.0 - dil) * weight
        cmf = np.cumsum(pmf)
        total = float(cmf[-1])
        if total < 1e-4:
            return None
        link = other is not None and g.exact
        draws = spec.max_paddle_retrial + 1
        while draws > 0:
            i = min(int(np.searchsorted(cmf, rng.random() * total, side="right")), len(cmf) - 1)
            head = (int(cy[i]), int(cx[i]))
            new_theta = float(ct[i])
            pad = g.paddle(_flip(new_theta))
            if (link or ends is not None) and not self._admissible(head, pad, last_seg, ends, link):
                # exact mode: sample from upstream's pmf conditioned on the checker's
                # constraints, i.e. drop this candidate without spending a retry
                pmf = pmf.copy()
                pmf[i] = 0.0
                cmf = np.cumsum(pmf)
                total = float(cmf[-1])
                if total <= 1e-12:
                    return None
                continue
            r, c = head[0] + B - g.H, head[1] + B - g.H
            collide = (self.occ[r : r + g.n, c : c + g.n] + pad.mask).max() >= 1.8
            if other is not None and not collide:  # max(max(a, b) + m) = max of the two
                sl = _overlap_slices(g.n, (head[0] - other[0][0], head[1] - other[0][1]))
                if sl is not None:
                    collide = (pad.mask[sl[0]] + other[1].mask[sl[1]]).max() >= 1.8
            if collide:
                draws -= 1
                continue  # upstream's collision test and retry budget
            self.put(img, head, pad, contrast, sid)
            self.add_mask(last_seg)
            return p, new_theta, head, (head, pad)
        return None

    def _admissible(self, head, pad: _Paddle, last_seg, ends, link: bool) -> bool:
        """The exact mode's constraints on a target snake's next paddle (see ``extend``)."""
        g = self.g
        if link:
            last_p, last_pad = last_seg
            sl = _overlap_slices(g.n, (head[0] - last_p[0], head[1] - last_p[1]))
            if sl is None or not (pad.ink[sl[0]] & last_pad.zone[sl[1]]).any():
                return False  # a gap the checker's link cannot bridge
        if ends is not None:
            avoid, forbid = ends
            if (avoid[self.window(head, g.mr)] & g.marker_zone).any():
                return False  # an end marker here would touch the other snake
            if forbid is not None and (forbid[self.window(head)] & pad.ink).any():
                return False  # this ink would touch the other snake's end marker
        return True


# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PathfinderSample:
    """One generated image and how it was made.

    Attributes:
      image: ``(R, R)`` uint8, min-max rescaled to 0..255 as ``scipy.misc.imsave`` did.
      label: 1 when both markers lie on the ends of one target snake, else 0.
      owner: ``(R, R)`` int8, the snake each ink pixel belongs to: 0 and 1 the target
        snakes (marker pixels belong to the snake whose tip they mark), 2, 3, ...
        distractors, -1 background.
      margin: the paddle margin drawn for this image.
      markers: ``((row, col), (row, col))`` centres of the two markers (origin, terminal).
      target_paddles: per target snake, the ``(row, col)`` start points of its paddles.
      num_distractors: distractor snakes actually placed.
      rejected: candidate images discarded before this one because the checker did not
        find two markers or disagreed with the label (``spec.exact`` only).
    """

    image: np.ndarray
    label: int
    owner: np.ndarray
    margin: int
    markers: tuple[tuple[int, int], tuple[int, int]]
    target_paddles: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]
    num_distractors: int
    rejected: int = 0


def _two_snakes(cv: _Canvas, imgs):
    """``two_snakes``: the two target snakes, grown alternately. None when it fails."""
    spec, g, rng = cv.spec, cv.g, cv.rng
    mus = list(spec.snake_contrast_list) * 2
    rng.shuffle(mus)
    pc = spec.paddle_contrast_list

    def paddle_contrast():
        return pc[int(rng.integers(len(pc)))] if len(pc) > 1 else pc[0]

    # snake A: anywhere at least 2 * seed_distance from the border
    a = cv.seed(imgs[0], paddle_contrast() * mus[0], 2 * spec.seed_distance, None, 0, fresh=True)
    if a is None:
        return None
    # snake B: its tail at seed_distance from A's tail, in a random direction
    contrast_b = paddle_contrast() * mus[1]
    for _ in range(spec.max_paddle_retrial + 1):
        theta = int(rng.integers(-180, 180)) * math.pi / 180
        phi = int(rng.integers(0, 360)) * math.pi / 180
        t = (
            round(a[2][0] + spec.seed_distance * math.sin(phi)),
            round(a[2][1] + spec.seed_distance * math.cos(phi)),
        )
        head = _translate(t, theta, g.L)
        pivot = _translate(head, _flip(theta), g.L + g.m)
        if cv.inside(head) and cv.inside(pivot):
            pad = g.paddle(theta)
            cv.put(imgs[1], t, pad, contrast_b, 1)
            b = (pivot, theta, t, (t, pad))
            break
    else:
        return None
    state = [list(a), list(b)]
    paddles = ([a[2]], [b[2]])
    starts = (a[2], b[2])
    for step in range(1, spec.contour_length):
        contrast = pc[int(rng.integers(len(pc)))]
        for i in (0, 1):
            pivot, theta, _, seg = state[i]
            other = state[1 - i][3]
            ends = None
            if g.exact and step == spec.contour_length - 1:
                # the end tips: markers there must keep clear of the other snake and of
                # both start markers (whatever the label, so selection ignores it)
                avoid = cv.owner == 1 - i
                for tip in starts:
                    avoid[cv.window(tip, g.mr)] |= g.marker_ink
                forbid = None
                if i == 1:
                    forbid = np.zeros_like(avoid)
                    forbid[cv.window(state[0][2], g.mr)] = g.marker_zone
                ends = (avoid, forbid)
            out = cv.extend(imgs[i], pivot, theta, seg, contrast * mus[i], i, other, ends)
            if out is None:
                return None
            state[i] = list(out)
            paddles[i].append(out[2])
    # Upstream adds only snake B's last paddle to the occupancy here, which lets distractors
    # run over the end of snake A (where a marker may sit); both are added.
    cv.add_mask(state[0][3])
    cv.add_mask(state[1][3])
    ends = (state[0][2], state[1][2])
    if g.exact:
        # A terminal marker (on an end tip) must not come within link_radius of the other
        # snake's ink or of either start marker: then the checker's fill from the origin
        # marker reaches it exactly when label == 1. Checked for both ends, whatever the
        # label, so that the selection does not depend on it.
        ink = cv.owner.copy()
        for sid, tip in ((0, starts[0]), (1, starts[1])):
            w = cv.window(tip, g.mr)
            ink[w][g.marker_ink] = 2 + sid
        for sid, tip in ((0, ends[0]), (1, ends[1])):
            near = ink[cv.window(tip, g.mr)][g.marker_zone]
            if ((near == 1 - sid) | (near >= 2)).any():
                return None
    return starts, ends, paddles


def _distractor(cv: _Canvas, img, sid: int) -> bool:
    """``make_snake``: one distractor snake, committed only when complete."""
    spec, rng = cv.spec, cv.rng
    sc = spec.snake_contrast_list
    saved = (cv.occ.copy(), cv.occ_dil.copy(), cv.owner.copy(), img.copy())

    def contrast():
        return sc[int(rng.integers(len(sc)))]

    s = cv.seed(img, contrast(), 1, spec.stop_with_availability, sid)
    ok = s is not None
    if ok:
        pivot, theta, _, seg = s
        for _ in range(spec.distractor_length - 1):
            out = cv.extend(img, pivot, theta, seg, contrast(), sid)
            if out is None:
                ok = False
                break
            pivot, theta, _, seg = out
    if ok:
        cv.add_mask(seg)
        return True
    cv.occ[...], cv.occ_dil[...], cv.owner[...], img[...] = saved
    return False


def _candidate(spec: PathfinderSpec, label: int, rng: np.random.Generator) -> PathfinderSample:
    """One image with the given label, before the checker sees it."""
    pml = spec.paddle_margin_list
    margin = pml[int(rng.integers(len(pml)))] if len(pml) > 1 else pml[0]
    g = _geometry(spec, margin)
    for _ in range(10_000):  # upstream: "while not success"
        cv = _Canvas(spec, g, rng)
        imgs = [np.zeros_like(cv.occ), np.zeros_like(cv.occ)]
        pair = _two_snakes(cv, imgs)
        if pair is not None:
            break
    else:  # pragma: no cover - needs an impossible spec
        raise RuntimeError(f"could not place two target snakes with {spec}")
    starts, ends, paddles = pair
    clutter = np.zeros_like(cv.occ)
    placed = 0
    for k in range(spec.num_distractor_snakes):
        for _ in range(spec.max_distractor_contour_retrial + 1):
            if _distractor(cv, clutter, sid=2 + k):
                placed += 1
                break
    origin = int(rng.integers(0, 2))
    terminal = origin if label == 1 else 1 - origin
    markers = (starts[origin], ends[terminal])
    full = np.maximum(np.maximum(imgs[0], imgs[1]), clutter)
    for sid, p in ((origin, markers[0]), (terminal, markers[1])):
        w = cv.window(p, g.mr)
        np.maximum(full[w], g.marker, out=full[w])
        cv.owner[w][g.marker_ink] = sid
    B, R = g.B, spec.resolution
    full = full[B : B + R, B : B + R]
    # scipy.misc.imsave: bytescale from [min, max] to [0, 255], rounding half up
    lo, hi = float(full.min()), float(full.max())
    image = np.floor((full - lo) * (255.0 / max(hi - lo, 1e-12)) + 0.5).astype(np.uint8)
    owner = cv.owner[B : B + R, B : B + R].copy()
    paddles = (tuple(paddles[0]), tuple(paddles[1]))
    return PathfinderSample(image, label, owner, margin, markers, paddles, placed)


def generate_sample(
    spec: PathfinderSpec, rng: np.random.Generator, label: int | None = None
) -> PathfinderSample:
    """Generates one Pathfinder image.

    With ``spec.exact`` (the default) the image is redrawn, with the same label, until
    :func:`find_markers` finds two markers and :func:`check_connectivity` (given the
    sample's ``owner`` map) agrees with the label; ``rejected`` counts the redraws (rare:
    the conditions are enforced while drawing).

    Args:
      spec: generation parameters (:meth:`PathfinderSpec.preset`).
      rng: NumPy generator; the image is a deterministic function of its state.
      label: 1 (markers on one snake) or 0; drawn with ``rng`` when None.

    Returns:
      A :class:`PathfinderSample` with the ``(R, R)`` uint8 image.

    >>> spec = PathfinderSpec.preset(32)
    >>> s = generate_sample(spec, np.random.default_rng(0), label=1)
    >>> s.image.shape, s.image.dtype, s.label, len(s.target_paddles[0])
    ((32, 32), dtype('uint8'), 1, 14)
    >>> check_connectivity(s.image, spec, owner=s.owner)
    True
    """
    if label is None:
        label = int(rng.integers(0, 2))
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label}")
    for rejected in range(1000):
        sample = _candidate(spec, label, rng)
        if not spec.exact:
            return sample
        markers = find_markers(sample.image, spec)
        if len(markers) == 2 and check_connectivity(
            sample.image, spec, owner=sample.owner, markers=markers
        ) == bool(label):
            return dataclasses.replace(sample, rejected=rejected)
    raise RuntimeError(f"no valid image in 1000 attempts with {spec}")  # pragma: no cover


# --------------------------------------------------------------------------------------
# Connectivity checker
# --------------------------------------------------------------------------------------


def _disk_offsets(radius: float) -> list[tuple[int, int]]:
    r = math.floor(radius)
    return [
        (dy, dx)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if dy * dy + dx * dx <= radius * radius
    ]


def _dilate(mask: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Binary dilation by a set of offsets (outside the image counts as empty)."""
    h, w = mask.shape
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    pad = np.zeros((h + 2 * r, w + 2 * r), bool)
    pad[r : r + h, r : r + w] = mask
    out = np.zeros_like(mask)
    for dy, dx in offsets:
        out |= pad[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a small boolean mask, each as a boolean mask."""
    left = mask.copy()
    comps = []
    eight = _disk_offsets(1.5)
    while left.any():
        seed = np.zeros_like(mask)
        seed.flat[np.flatnonzero(left)[0]] = True
        while True:
            grown = _dilate(seed, eight) & left
            if np.array_equal(grown, seed):
                break
            seed = grown
        comps.append(seed)
        left &= ~seed
    return comps


def find_markers(image: np.ndarray, spec: PathfinderSpec) -> list[np.ndarray]:
    """The marker blobs of a Pathfinder image.

    A marker is a connected blob containing a solid ``spec.marker_size`` square of pixels
    above ``spec.marker_threshold``; paddles are too thin to contain one (the generator
    rejects the rare image where they do).

    Args:
      image: ``(R, R)`` uint8 image.
      spec: the spec it was generated with (only the checker fields are used).

    Returns:
      One boolean ``(R, R)`` mask per blob, in raster order of their first pixel.

    >>> spec = PathfinderSpec.preset(32)
    >>> img = np.zeros((32, 32), np.uint8)
    >>> img[4:7, 4:7] = img[20:23, 9:12] = 255
    >>> img[10, 3:30] = 255  # a thin path
    >>> len(find_markers(img, spec))
    2
    """
    k = spec.marker_size
    solid = np.asarray(image) > spec.marker_threshold
    square = [(dy, dx) for dy in range(k) for dx in range(k)]
    # opening by a k x k square: erode (all k*k shifts set), then dilate back
    eroded = ~_dilate(~solid, [(-dy, -dx) for dy, dx in square])
    opened = _dilate(eroded, square) & solid
    return _components(opened)


def check_connectivity(
    image: np.ndarray,
    spec: PathfinderSpec,
    *,
    owner: np.ndarray | None = None,
    markers: Sequence[np.ndarray] | None = None,
) -> bool:
    """Whether the two markers are joined by a path: the checker's version of the label.

    Flood fill on the binarised image (``ink = image > spec.ink_threshold``) from the
    first marker blob of :func:`find_markers`: each round adds the ink pixels whose centres
    lie within ``spec.link_radius`` of a pixel already reached. The radius bridges the gaps
    that the renderer leaves between consecutive paddles of a snake (about twice the margin).
    The markers are connected when the second blob comes within that radius of the fill.

    With ``owner`` (the generator's :attr:`PathfinderSample.owner`), a fill does not cross
    into other snakes' ink: it only adds pixels of the snake under its starting marker, and
    the markers are connected when the fills from both markers reach the other one. This is
    exact on generated images: the generator links every target snake from end to end and
    keeps each end-tip marker more than ``link_radius`` from the other target snake and
    from both start markers. Without ``owner`` the fill runs over all ink and is only a
    heuristic: Pathfinder's paths are dashed, and different snakes come about as close to
    each other as the paddles of one snake do (by design in Pathfinder-32), so touching
    snakes merge.

    Args:
      image: ``(R, R)`` uint8 image.
      spec: the spec it was generated with (only the checker fields are used).
      owner: optional ``(R, R)`` int snake id per pixel (-1 for none).
      markers: the two marker masks, if already found (:func:`find_markers`).

    Returns:
      True when the second marker is reached from the first.

    Raises:
      ValueError: if the image does not have exactly two markers.

    >>> spec = PathfinderSpec.preset(32)
    >>> img = np.zeros((32, 32), np.uint8)
    >>> img[4:7, 4:7] = img[4:7, 24:27] = 255
    >>> img[5, 7:24:3] = img[5, 8:24:3] = 200  # a dashed path: one-pixel gaps
    >>> check_connectivity(img, spec)
    True
    >>> img[5, 13:18] = 0  # a gap of eight pixels
    >>> check_connectivity(img, spec)
    False
    """
    image = np.asarray(image)
    if markers is None:
        markers = find_markers(image, spec)
    if len(markers) != 2:
        raise ValueError(f"expected 2 markers, found {len(markers)}")
    ink = image > spec.ink_threshold
    offsets = _disk_offsets(spec.link_radius)
    if owner is None:
        return _fill_reaches(markers[0], markers[1], ink, offsets)
    owner = np.asarray(owner)

    def own(blob):  # the pixels of the snake that carries this marker
        ids = owner[blob & (owner >= 0)]
        return ink & (owner == np.bincount(ids).argmax()) if ids.size else ink & blob

    a, b = markers
    return _fill_reaches(a, b, own(a), offsets) and _fill_reaches(b, a, own(b), offsets)


def _fill_reaches(source, target, allowed, offsets) -> bool:
    """Flood fill over ``allowed`` from ``source``; True once ``target`` is within a link."""
    reached = source & allowed
    while True:
        near = _dilate(reached, offsets)
        if (near & target).any():
            return True
        grown = (near & allowed) | reached
        if np.array_equal(grown, reached):
            return False
        reached = grown


# --------------------------------------------------------------------------------------
# PNG and metadata files
# --------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a ``(h, w)`` uint8 array (filter 0, deterministic)."""
    h, w = image.shape
    raw = np.zeros((h, w + 1), np.uint8)
    raw[:, 1:] = image
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _unfilter(raw: np.ndarray, bpp: int) -> np.ndarray:
    """Undoes the PNG row filters of ``raw`` ``(h, 1 + stride)``."""
    h, stride = raw.shape[0], raw.shape[1] - 1
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    for y in range(h):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: running sum per byte of a pixel
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            cur = (line + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            cur = np.zeros(stride, np.int64)
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + pred) % 256
        else:
            raise ValueError(f"bad PNG filter type {kind}")
        out[y] = cur
        prev = cur
    return out


def _decode_png(data: bytes) -> np.ndarray:
    """Pure-NumPy PNG reader for 8-bit, non-interlaced gray/RGB(A) images, as ``L``."""
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    w, h, depth, ctype, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or interlace or channels is None:
        raise ValueError(
            f"PNG with bit depth {depth}, colour type {ctype}, interlace {interlace} needs "
            "Pillow (pip install pillow)"
        )
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    pix = _unfilter(raw.reshape(h, w * channels + 1), channels).reshape(h, w, channels)
    if channels <= 2:
        return pix[..., 0]
    rgb = pix[..., :3].astype(np.uint32)  # PIL's convert("L")
    return ((19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + 32768) >> 16).astype(
        np.uint8
    )


def _read_png(path: Path) -> np.ndarray:
    """A PNG as a 2-D uint8 gray array (Pillow's ``convert("L")`` when installed)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is usually there
        return _decode_png(path.read_bytes())
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def read_metadata(path: str | os.PathLike) -> list[list[str]]:
    """The rows of one ``metadata/{batch}.npy`` file, as lists of strings.

    Accepts both formats in circulation: plain text (one space-separated row per line, as
    in the LRA release despite the ``.npy`` extension) and a binary ``np.save`` array of
    strings (what the upstream generator writes; read with ``allow_pickle=False``).

    Args:
      path: the metadata file.

    Returns:
      One list of fields per image; fields 0, 1 and 3 are the image folder
      (``imgs/{batch}``), file name (``sample_{i}.png``) and label.

    Raises:
      ValueError: for a binary file that holds pickled objects.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "0.npy"
    ...     _ = p.write_text("imgs/0 sample_0.png 0 1 1.0 14 4 2 0.5 1 1\\n")
    ...     text = read_metadata(p)
    ...     np.save(p, np.array([["imgs/0", "sample_0.png", "0", "1"]]))
    ...     (text[0][:4], read_metadata(p))
    (['imgs/0', 'sample_0.png', '0', '1'], [['imgs/0', 'sample_0.png', '0', '1']])
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\x93NUMPY"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: binary metadata must be a string array ({e})") from e
        rows = np.atleast_2d(arr).tolist()
        return [[x.decode() if isinstance(x, bytes) else str(x) for x in row] for row in rows]
    return [line.split() for line in data.decode("utf-8").splitlines() if line.strip()]


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


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

Variant = Literal["lra", "s4", "s5"]
_CACHE_VERSION = 1
_NORMALIZATION = {  # variant -> (mean, std) of NormalizedPixels on x / 255
    "s4": (0.0, 1.0),
    "s5": (0.5, 0.5),
}


def _difficulty_dir(difficulty: int | str) -> str:
    if isinstance(difficulty, str):
        if difficulty in DIFFICULTY_DIRS.values():
            return difficulty
        raise ValueError(f"unknown difficulty folder {difficulty!r}")
    if difficulty not in DIFFICULTY_DIRS:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTY_DIRS)}, got {difficulty}")
    return DIFFICULTY_DIRS[difficulty]


def _has_metadata(folder: Path) -> bool:
    meta = folder / "metadata"
    return meta.is_dir() and any(meta.glob("*.npy"))


def _candidates(root: Path, resolution: int, diff: str) -> list[Path]:
    pf = f"pathfinder{resolution}"
    return [
        root / "lra_release" / "lra_release" / pf / diff,  # the nested copy S4/S5 use
        root / "lra_release" / pf / diff,
        root / pf / diff,
        root / "pathfinder" / pf / diff,  # S4's $DATA_PATH/pathfinder/pathfinderR
        root / diff,
        root,
    ]


def _locate(data_dir, resolution: int, diff: str) -> Path:
    if data_dir is None:
        root = Path(os.environ.get("SSMJAX_DATA", Path.home() / ".cache" / "ssmjax"))
    else:
        root = Path(data_dir).expanduser()
    for c in _candidates(root, resolution, diff):
        if _has_metadata(c):
            return c
    pf = f"pathfinder{resolution}"
    raise FileNotFoundError(
        f"no Pathfinder files for {pf}/{diff} under {root}: looked for "
        f"{diff}/metadata/*.npy (with imgs/) in {root}/lra_release/lra_release/{pf} (the LRA "
        f"release, lra_release.gz extracted in {root}), {root}/lra_release/{pf}, "
        f"{root}/{pf}, {root}/pathfinder/{pf} and in {root} itself. Put the LRA files "
        f"there, or generate a regenerated copy (found there afterwards): python -m "
        f"ssmjax.data.generate pathfinder --resolution {resolution} --difficulty "
        f"{_DIFFICULTY_BY_DIR[diff]} --out {root}"
    )


_DIFFICULTY_BY_DIR = {v: k for k, v in DIFFICULTY_DIRS.items()}


def _metadata_files(folder: Path) -> list[Path]:
    files = [p for p in (folder / "metadata").glob("*.npy") if p.is_file()]
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))


def _index(folder: Path) -> tuple[list[Path], np.ndarray, dict[str, int]]:
    """Image paths and labels listed by the metadata, minus empty or missing files."""
    paths, labels = [], []
    skipped = {"empty": 0, "missing": 0, "malformed": 0}
    for meta in _metadata_files(folder):
        for row in read_metadata(meta):
            if len(row) < 4 or row[3] not in ("0", "1"):
                skipped["malformed"] += 1
                continue
            path = folder / row[0] / row[1]
            try:
                size = path.stat().st_size
            except OSError:
                skipped["missing"] += 1
                continue
            if size == 0:  # e.g. pathfinder32/curv_baseline/imgs/0/sample_172.png
                skipped["empty"] += 1
                continue
            paths.append(path)
            labels.append(int(row[3]))
    if any(skipped.values()):
        warnings.warn(
            f"Pathfinder {folder}: skipped {skipped['empty']} zero-byte PNGs, "
            f"{skipped['missing']} metadata rows whose PNG is missing and "
            f"{skipped['malformed']} malformed rows",
            stacklevel=3,
        )
    return paths, np.asarray(labels, np.int32), skipped


def _split_order(n: int, split_seed: int | None) -> tuple[np.ndarray, dict[str, int]]:
    n_val = n_test = n // 10
    sizes = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
    order = np.arange(n) if split_seed is None else np.random.default_rng(split_seed).permutation(n)
    return order, sizes


def _build(folder: Path, resolution: int, split_seed, out: Path | None, progress: bool):
    """Decodes the images into per-split uint8 arrays (``.npy`` memory maps in ``out``)."""
    from tqdm.auto import tqdm

    paths, labels, skipped = _index(folder)
    n = len(paths)
    if n == 0:
        raise FileNotFoundError(f"{folder}: the metadata lists no readable images")
    order, sizes = _split_order(n, split_seed)
    length = resolution * resolution
    arrays, start = {}, 0
    for name, size in sizes.items():
        idx = order[start : start + size]
        start += size
        if out is not None:
            x = np.lib.format.open_memmap(
                out / f"{name}_inputs.npy", mode="w+", dtype=np.uint8, shape=(size, length)
            )
        else:
            x = np.empty((size, length), np.uint8)
        arrays[name] = (idx, x)
    for name, (idx, x) in arrays.items():
        for row, k in enumerate(tqdm(idx, desc=f"{name} images", disable=not progress)):
            img = _read_png(paths[k])
            if img.shape != (resolution, resolution):
                raise ValueError(f"{paths[k]} is {img.shape}, expected {resolution}x{resolution}")
            x[row] = img.reshape(-1)
    splits = {}
    for name, (idx, x) in arrays.items():
        if out is not None:
            x.flush()
            np.save(out / f"{name}_labels.npy", labels[idx])
        splits[name] = Split(x, labels[idx])
    info = {
        "examples_read": n,
        "skipped": skipped,
        "label_counts": np.bincount(labels, minlength=2).tolist(),
    }
    return splits, info


def _load(
    name: str,
    data_dir,
    resolution: int,
    difficulty: int | str,
    variant: Variant,
    split_seed: int | None,
    cache: bool,
    progress: bool,
) -> Dataset:
    from ssmjax.data._cache import cache_entry, commit_entry, file_stats, new_entry, read_cache

    if variant not in ("lra", "s4", "s5"):
        raise ValueError(f"variant must be 'lra', 's4' or 's5', got {variant!r}")
    diff = _difficulty_dir(difficulty)
    folder = _locate(data_dir, resolution, diff).resolve()
    prov_file = folder / _PROVENANCE
    if prov_file.is_file():
        provenance = json.loads(prov_file.read_text()).get("provenance", "regenerated")
    else:
        provenance = f"Pathfinder files in {folder} (LRA release layout)"
    metas = _metadata_files(folder)
    key = {
        "task": "pathfinder",
        "folder": str(folder),
        "metadata": file_stats(metas),
        "resolution": resolution,
        "split_seed": split_seed,
    }
    splits = built = None
    entry = None
    if cache:
        entry = cache_entry("pathfinder", {"cache_version": _CACHE_VERSION, **key})
        hit = read_cache(entry, _CACHE_VERSION)
        if hit is not None:
            built, splits = hit[0]["built"], hit[1]
        else:
            tmp = new_entry(entry)
            try:
                _, built = _build(folder, resolution, split_seed, tmp, progress)
                lens = {
                    s: int(np.load(tmp / f"{s}_labels.npy").shape[0])
                    for s in ("train", "val", "test")
                }
                manifest = {
                    "cache_version": _CACHE_VERSION,
                    "key": key,
                    "built": built,
                    "examples": lens,
                }
                commit_entry(tmp, entry, manifest)
            except BaseException:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
                raise
            hit = read_cache(entry, _CACHE_VERSION)
            if hit is None:  # pragma: no cover - the entry vanished under us
                raise OSError(f"could not read back the cache entry {entry}")
            splits = hit[1]
    else:
        splits, built = _build(folder, resolution, split_seed, None, progress)
    info = {
        "source": str(folder),
        "provenance": provenance,
        "resolution": resolution,
        "difficulty": diff,
        "variant": variant,
        "split": (
            "80/10/10 contiguous in metadata order (LRA's TFDS slices)"
            if split_seed is None
            else f"80/10/10 random, numpy permutation with seed {split_seed} (S4-like)"
        ),
        "cache": str(entry) if entry is not None else None,
        **built,
    }
    seq_len = resolution * resolution
    if variant == "lra":
        info["normalization"] = "none: gray levels 0..255 are tokens"
        return Dataset(
            name,
            splits["train"],
            splits["val"],
            splits["test"],
            num_classes=2,
            seq_len=seq_len,
            vocab_size=256,
            info=info,
        )
    from ssmjax.data.images import NormalizedPixels

    mean, std = _NORMALIZATION[variant]
    info["normalization"] = f"(x/255 - {mean}) / {std}, per batch"
    floats = {s: Split(NormalizedPixels(v.inputs, mean, std), v.labels) for s, v in splits.items()}
    return Dataset(
        name,
        floats["train"],
        floats["val"],
        floats["test"],
        num_classes=2,
        seq_len=seq_len,
        d_input=1,
        info=info,
    )


def load_pathfinder(
    data_dir: str | os.PathLike | None = None,
    *,
    resolution: int = 32,
    difficulty: int | str = 14,
    variant: Variant = "lra",
    split_seed: int | None = 42,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """LRA Pathfinder (``pathfinder32``, contour length 14) from released or generated files.

    ``data_dir`` may be any level of the released layout: a folder holding
    ``lra_release/lra_release/pathfinder{R}`` (the nested copy is preferred, as in S4/S5),
    ``lra_release/pathfinder{R}``, ``pathfinder{R}`` or ``pathfinder/pathfinder{R}``, or
    the ``pathfinder{R}`` or difficulty folder itself. Output of :func:`generate_pathfinder`
    has the same layout and goes through the same code. Metadata files are read in numeric
    order (text or binary ``np.save``, :func:`read_metadata`); zero-byte PNGs and rows
    whose PNG is missing are skipped with one warning. The images are flattened row by
    row and cached as uint8 ``.npy`` memory maps with a ``manifest.json`` under
    ``cache_dir("pathfinder", "cache", key)`` (key: folder, metadata files' sizes and
    times, resolution, ``split_seed``).

    Args:
      data_dir: the data folder; ``None`` searches ``$SSMJAX_DATA`` (default
        ``~/.cache/ssmjax``), where ``--out $SSMJAX_DATA`` of the generator writes.
      resolution: image side ``R``; sequences have ``R * R`` steps.
      difficulty: 14 (LRA), 9 or 6, or the folder name (``"curv_baseline"``).
      variant: ``"lra"``: gray levels as tokens, ``(n, R*R)`` uint8, vocabulary 256.
        ``"s4"``: float pixels in [0, 1] (S4's default, ``center: False``), ``"s5"``: in
        [-1, 1] (S5; S4 with ``center``), both ``(n, R*R, 1)`` float32 views that
        normalise the rows they are indexed with.
      split_seed: 80/10/10 split by a NumPy permutation with this seed (S4 splits at
        random with seed 42, through torch, so not the same indices); ``None``: contiguous
        slices in metadata order, like LRA's TFDS slices.
      cache: read and write the uint8 cache.
      progress: show a progress bar while decoding.

    Returns:
      A :class:`Dataset` with 2 classes, ``seq_len`` ``R * R``, ``lengths`` ``None``.

    Raises:
      FileNotFoundError: no files; the message says where to put them or how to make them.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = generate_pathfinder(d, num_images=20, workers=1, progress=False)
    ...     ds = load_pathfinder(d, cache=False, progress=False)
    ...     len(ds.train), len(ds.val), len(ds.test), ds.train.inputs.shape, ds.vocab_size
    (16, 2, 2, (16, 1024), 256)
    """
    return _load(
        "pathfinder", data_dir, resolution, difficulty, variant, split_seed, cache, progress
    )


def load_pathx(
    data_dir: str | os.PathLike | None = None,
    *,
    difficulty: int | str = 14,
    variant: Variant = "lra",
    split_seed: int | None = 42,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """LRA Path-X: :func:`load_pathfinder` at resolution 128 (sequences of 16,384).

    The same arguments as :func:`load_pathfinder`, which see; the files are
    ``pathfinder128/curv_contour_length_14`` (the nested ``lra_release/lra_release`` copy
    when both are present). The uint8 cache of 200,000 images takes 3.3 GB.
    """
    return _load("pathx", data_dir, 128, difficulty, variant, split_seed, cache, progress)

"""One Pathfinder image: :class:`PathfinderSample` and :func:`generate_sample`."""

import dataclasses
import math

import numpy as np

from ssmjax.data.pathfinder._connectivity import check_connectivity, find_markers
from ssmjax.data.pathfinder._render import _Canvas, _flip, _geometry, _translate
from ssmjax.data.pathfinder._spec import PathfinderSpec

__all__ = ["PathfinderSample", "generate_sample"]


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

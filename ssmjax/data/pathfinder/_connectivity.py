"""The Pathfinder connectivity checker: :func:`find_markers`, :func:`check_connectivity`."""

import math
from collections.abc import Sequence

import numpy as np

from ssmjax.data.pathfinder._spec import PathfinderSpec

__all__ = ["check_connectivity", "find_markers"]


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

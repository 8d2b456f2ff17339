"""Pathfinder rendering: paddle geometry, the per-image canvas and its growth steps."""

import math

import numpy as np

from ssmjax.data.pathfinder._connectivity import _dilate, _disk_offsets
from ssmjax.data.pathfinder._spec import PathfinderSpec

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

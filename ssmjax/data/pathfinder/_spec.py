"""Pathfinder generation parameters: :class:`PathfinderSpec` and the LRA presets."""

import dataclasses

__all__ = ["DIFFICULTY_DIRS", "PathfinderSpec"]

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

"""Optimizers with parameter groups chosen by parameter *type*.

The SSM papers train the recurrence parameters (``A``/``Lambda``, ``B``, ``dt``, LRU's
``nu``/``theta``/``gamma``...) with their own, lower learning rate and no weight decay, and
everything else with AdamW. Layers mark those parameters as :class:`ssmjax.nn.SSMParam` (and
its subtypes), so the groups here follow the types — no lists of names.

Groups:

* ``"ssm"`` — Adam at ``ssm_lr``, no weight decay;
* ``"regular"`` — AdamW at ``lr`` with ``weight_decay``;
* ``"no_decay"`` — Adam at ``lr``, no weight decay: norm scales/biases and every bias.

Presets (``OptimConfig.preset``) move the typed parameters between groups as the
reference code does:

* ``"standard"`` (S5): SSM params incl. ``B`` and ``dt`` in ``ssm``; ``C``, ``D`` regular.
* ``"BandCdecay"`` (S5): ``B`` gets ``ssm_lr`` *with* weight decay (group ``ssm_decay``).
* ``"BfastandCdecay"`` (S5): ``B`` in the regular group.
* ``"noBCdecay"`` (S5): ``B``, ``C`` and ``D`` in the ``ssm`` group.
* ``"s4"``: as ``standard`` (A, B, dt at ``ssm_lr``, no decay; C, D regular).
* ``"lru"``: as ``standard`` (nu, theta, gamma, B in ``ssm``; C, D regular).

``dt_global=True`` moves ``dt`` (:class:`~ssmjax.nn.SSMStepParam`) to the regular group (S5's
``dt_global``, S4's "dt global" configs). Schedules: per-step linear warmup to the peak,
then cosine decay to ``lr_min``, applied to both learning rates; optional global-norm
gradient clipping. The learning rates are recorded in the optimizer state
(``optax.inject_hyperparams``), so a training loop can log them.
"""

import dataclasses
import itertools

import jax
import numpy as np
import optax
from flax import nnx

from ssmjax.nn._base import SkipParam, SSMInputParam, SSMOutputParam, SSMParam, SSMStepParam

__all__ = ["PRESETS", "OptimConfig", "build_optimizer", "current_learning_rates", "param_groups"]

PRESETS = ("standard", "BandCdecay", "BfastandCdecay", "noBCdecay", "s4", "lru")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimizer settings.

    Attributes:
      lr: peak learning rate of the regular and no-decay groups.
      ssm_lr: peak learning rate of the SSM group (None: same as ``lr``).
      weight_decay: AdamW decay of the regular group.
      preset: one of :data:`PRESETS`.
      dt_global: put ``dt`` in the regular group.
      warmup_steps: linear warmup steps (from 0 to the peak).
      total_steps: steps of warmup + cosine decay; 0 = constant after warmup.
      lr_min: final learning rate of the cosine decay (as a fraction of the peak).
      grad_clip: global-norm clipping threshold (None: off).
      b1: Adam beta1.
      b2: Adam beta2.
    """

    lr: float = 1e-3
    ssm_lr: float | None = None
    weight_decay: float = 0.05
    preset: str = "standard"
    dt_global: bool = False
    warmup_steps: int = 0
    total_steps: int = 0
    lr_min: float = 0.0
    grad_clip: float | None = None
    b1: float = 0.9
    b2: float = 0.999

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown optimizer preset {self.preset!r}; choose from {PRESETS}")
        if self.lr <= 0 or (self.ssm_lr is not None and self.ssm_lr <= 0):
            raise ValueError("learning rates must be positive")
        if self.total_steps and self.warmup_steps > self.total_steps:
            raise ValueError("warmup_steps must not exceed total_steps")


def _group_of(variable: nnx.Variable, path: str, config: OptimConfig) -> str:
    preset = config.preset
    if isinstance(variable, SSMStepParam) and config.dt_global:
        return "regular"
    if isinstance(variable, SSMInputParam):
        return {"BandCdecay": "ssm_decay", "BfastandCdecay": "regular"}.get(preset, "ssm")
    if isinstance(variable, SSMParam):
        return "ssm"
    if isinstance(variable, SSMOutputParam | SkipParam):
        return "ssm" if preset == "noBCdecay" else "regular"
    name = path.rsplit("'", 2)[-2] if "'" in path else path
    if name in ("bias", "scale") or name.endswith("_bias"):
        return "no_decay"  # biases and norm parameters
    return "regular"


def param_groups(model: nnx.Module, config: OptimConfig, wrt=nnx.Param) -> dict[str, str]:
    """The group of every parameter: ``{"['layers'][0]['B']": "ssm", ...}``.

    >>> from ssmjax.nn import S5
    >>> groups = param_groups(S5(4, 8, rngs=nnx.Rngs(0)), OptimConfig())
    >>> groups["['B']"], groups["['C']"], groups["['log_step']"]
    ('ssm', 'regular', 'ssm')
    """
    state = nnx.state(model, wrt)
    leaves = jax.tree_util.tree_leaves_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return {
        jax.tree_util.keystr(p): _group_of(v, jax.tree_util.keystr(p), config) for p, v in leaves
    }


def _schedule(peak: float, config: OptimConfig) -> optax.Schedule:
    if config.total_steps:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=config.warmup_steps,
            decay_steps=config.total_steps,
            end_value=peak * config.lr_min,
        )
    if config.warmup_steps:
        return optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.constant_schedule(peak)


def build_optimizer(model: nnx.Module, config: OptimConfig, wrt=nnx.Param):
    """Builds the grouped optimizer for ``model``'s parameters.

    The returned transformation works on the pure parameter tree
    ``nnx.as_pure(nnx.state(model, wrt))`` and on the typed ``nnx.State`` alike (the
    groups are looked up by path).

    Args:
      model: the model (only its parameter types and paths are read).
      config: the settings.
      wrt: which variables are optimized.

    Returns:
      An ``optax.GradientTransformation``.

    >>> import jax.numpy as jnp, optax
    >>> from ssmjax.nn import S5
    >>> model = S5(4, 8, rngs=nnx.Rngs(0))
    >>> tx = build_optimizer(model, OptimConfig(lr=1e-2, ssm_lr=1e-3))
    >>> params = nnx.as_pure(nnx.state(model, nnx.Param))
    >>> state = tx.init(params)
    >>> current_learning_rates(state)
    {'no_decay': 0.01, 'regular': 0.01, 'ssm': 0.001, 'ssm_decay': 0.001}
    """
    groups = param_groups(model, config, wrt)
    ssm_lr = config.lr if config.ssm_lr is None else config.ssm_lr

    def labels(tree):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: groups[jax.tree_util.keystr(p)],
            tree,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )

    def adam(peak, weight_decay):
        return optax.inject_hyperparams(optax.adamw)(
            learning_rate=_schedule(peak, config),
            b1=config.b1,
            b2=config.b2,
            weight_decay=weight_decay,
        )

    tx = optax.multi_transform(
        {
            "ssm": adam(ssm_lr, 0.0),
            "ssm_decay": adam(ssm_lr, config.weight_decay),
            "regular": adam(config.lr, config.weight_decay),
            "no_decay": adam(config.lr, 0.0),
        },
        labels,
    )
    if config.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
    return tx


def current_learning_rates(opt_state) -> dict[str, float]:
    """The learning rate of each group at the optimizer's current step (for logging).

    Works on the optax state of :func:`build_optimizer` and on the ``opt_state`` of an
    ``nnx.Optimizer`` built from it.
    """
    found = {}
    for path, value in jax.tree_util.tree_leaves_with_path(opt_state):
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        pairs = list(itertools.pairwise(keys))
        if ("hyperparams", "learning_rate") in pairs and "inner_states" in keys:
            group = keys[keys.index("inner_states") + 1]
            found[group] = float(np.asarray(value))
    return dict(sorted(found.items()))

"""Optimizer groups: SSM parameters get the SSM learning rate and no weight decay."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssmjax.models import SequenceClassifier
from ssmjax.optim import PRESETS, OptimConfig, build_optimizer, param_groups

LR, SSM_LR, WD = 1e-2, 1e-3, 0.5

# Expected group of each S5 / LRU parameter name per preset (S5's opt_config semantics).
EXPECTED_S5 = {
    "standard": {"Lambda_re": "ssm", "B": "ssm", "log_step": "ssm", "C": "regular", "D": "regular"},
    "BandCdecay": {"B": "ssm_decay", "C": "regular", "log_step": "ssm"},
    "BfastandCdecay": {"B": "regular", "C": "regular", "Lambda_im": "ssm"},
    "noBCdecay": {"B": "ssm", "C": "ssm", "D": "ssm", "log_step": "ssm"},
    "s4": {"B": "ssm", "C": "regular", "log_step": "ssm"},
    "lru": {"B": "ssm", "C": "regular"},
}


def make_model(layer="s5"):
    kwargs = {"d_state": 8} if layer == "s5" else {"d_hidden": 8}
    return SequenceClassifier(
        layer=layer,
        d_model=4,
        n_layers=1,
        num_classes=3,
        d_input=2,
        layer_kwargs=kwargs,
        rngs=nnx.Rngs(0),
    )


def leaf_groups(model, config):
    """{parameter name (last path key): group} for the single SSM layer of the model."""
    return {path.split("'")[-2]: g for path, g in param_groups(model, config).items()}


@pytest.mark.parametrize("preset", PRESETS)
def test_groups_by_type(preset):
    groups = leaf_groups(make_model(), OptimConfig(preset=preset))
    for name, group in EXPECTED_S5[preset].items():
        assert groups[name] == group, (preset, name)
    # Norms and biases never decay; dense kernels do.
    assert groups["bias"] == "no_decay" and groups["scale"] == "no_decay"
    assert groups["kernel"] == "regular"


def test_dt_global_moves_the_timescale():
    groups = leaf_groups(make_model(), OptimConfig(dt_global=True))
    assert groups["log_step"] == "regular" and groups["Lambda_re"] == "ssm"


def test_lru_groups():
    groups = leaf_groups(make_model("lru"), OptimConfig(preset="lru"))
    for name in ("nu_log", "theta_log", "gamma_log", "B_re", "B_im"):
        assert groups[name] == "ssm", name
    for name in ("C_re", "C_im", "D"):
        assert groups[name] == "regular", name


@pytest.mark.parametrize("preset", PRESETS)
def test_first_update_uses_group_lr_and_decay(preset):
    """Adam's first step moves every parameter by lr * sign(g); AdamW adds lr * wd * p."""
    model = make_model()
    config = OptimConfig(lr=LR, ssm_lr=SSM_LR, weight_decay=WD, preset=preset)
    tx = build_optimizer(model, config)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    groups = param_groups(model, config)
    rates = {
        "ssm": (SSM_LR, 0.0),
        "ssm_decay": (SSM_LR, WD),
        "regular": (LR, WD),
        "no_decay": (LR, 0.0),
    }
    flat_u = dict(jax.tree_util.tree_leaves_with_path(updates))
    flat_p = dict(jax.tree_util.tree_leaves_with_path(params))
    for path, u in flat_u.items():
        lr, wd = rates[groups[jax.tree_util.keystr(path)]]
        expected = -lr * (1.0 + wd * np.asarray(flat_p[path]))
        np.testing.assert_allclose(
            u, expected, rtol=1e-4, atol=1e-7, err_msg=jax.tree_util.keystr(path)
        )


def test_schedule_warmup_then_cosine():
    model = make_model()
    tx = build_optimizer(model, OptimConfig(lr=1.0, warmup_steps=4, total_steps=12))
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    from ssmjax.optim import current_learning_rates

    seen = []
    for _ in range(12):
        _, state = tx.update(grads, state, params)
        seen.append(current_learning_rates(state)["regular"])
    assert seen[0] == 0.0 and max(seen) == pytest.approx(1.0)
    assert seen.index(max(seen)) == 4 and seen[-1] < 0.1
    assert all(b <= a for a, b in itertools.pairwise(seen[4:]))


def test_grad_clipping():
    model = make_model()
    tx = build_optimizer(model, OptimConfig(grad_clip=1e-3))
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    grads = jax.tree.map(lambda p: 1e3 * jnp.ones_like(p), params)
    state = tx.init(params)
    clipped, _ = tx.update(grads, state, params)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(clipped))
    assert isinstance(tx, optax.GradientTransformation)

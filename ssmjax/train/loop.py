"""``train_and_evaluate(config, workdir)``: the training loop of every experiment."""

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from ssmjax.data import Dataset, iterate_batches, load, num_batches
from ssmjax.models import RetrievalClassifier, SequenceClassifier
from ssmjax.optim import build_optimizer, current_learning_rates
from ssmjax.train.checkpoint import Checkpointer
from ssmjax.train.config import Config, config_to_dict
from ssmjax.train.metrics import MetricWriter

__all__ = ["build_model", "train_and_evaluate"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def build_model(config: Config, dataset: Dataset, rngs: nnx.Rngs) -> nnx.Module:
    """The classifier that ``config.model`` describes, shaped for ``dataset``."""
    m = config.model
    common = dict(
        layer=m.layer,
        d_model=m.d_model,
        n_layers=m.n_layers,
        num_classes=dataset.num_classes,
        norm=m.norm,
        prenorm=m.prenorm,
        activation=m.activation,
        dropout=m.dropout,
        bn_momentum=m.bn_momentum,
        layer_kwargs=dict(m.layer_kwargs),
        rngs=rngs,
    )
    if dataset.is_pair:
        return RetrievalClassifier(vocab_size=dataset.vocab_size, **common)
    return SequenceClassifier(
        vocab_size=dataset.vocab_size, d_input=dataset.d_input, pooling=m.pooling, **common
    )


def _cross_entropy(logits, labels):
    """Mean cross-entropy and accuracy over valid examples (label >= 0)."""
    valid = labels >= 0
    safe = jnp.where(valid, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    count = jnp.maximum(jnp.sum(valid), 1)
    correct = jnp.sum((jnp.argmax(logits, -1) == safe) & valid)
    return jnp.sum(jnp.where(valid, losses, 0.0)) / count, correct, jnp.sum(valid)


def _make_steps(graphdef, eval_graphdef, use_mask: bool):
    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        mask = batch["mask"] if use_mask else None

        def loss_fn(model):
            logits = model(batch["inputs"], mask)
            loss, correct, count = _cross_entropy(logits, batch["labels"])
            return loss, (correct, count)

        (loss, (correct, count)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        metrics = {
            "loss": loss,
            "accuracy": correct / jnp.maximum(count, 1),
            "grad_norm": optax.tree.norm(nnx.state(grads, nnx.Param)),
        }
        return nnx.state((model, optimizer)), metrics

    def eval_step(state, batch):
        model, _ = nnx.merge(eval_graphdef, state)
        logits = model(batch["inputs"], batch["mask"] if use_mask else None)
        loss, correct, count = _cross_entropy(logits, batch["labels"])
        return {"loss_sum": loss * count, "correct": correct, "count": count}

    return jax.jit(train_step, donate_argnums=0), jax.jit(eval_step)


def _device_mesh(n: int) -> Mesh:
    devices = jax.local_devices()
    if n:
        if n > len(devices):
            raise ValueError(f"train.devices={n} but only {len(devices)} local devices")
        devices = devices[:n]
    return Mesh(np.asarray(devices), ("data",))


def _evaluate(eval_step, state, split, batch_size, shard):
    totals = {"loss_sum": 0.0, "correct": 0, "count": 0}
    results = [eval_step(state, shard(b)) for b in iterate_batches(split, batch_size)]
    for r in jax.device_get(results):
        for k in totals:
            totals[k] += r[k]
    count = max(int(totals["count"]), 1)
    return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count}


def train_and_evaluate(config: Config, workdir: str | Path | None = None) -> dict:
    """Trains and evaluates ``config``; resumes from ``workdir`` if it holds a checkpoint.

    Each epoch ends with an evaluation on the validation and test splits; the test accuracy
    at the best validation accuracy is what the LRA papers report. Metrics go to
    ``workdir/metrics.jsonl`` (and TensorBoard when ``tensorboardX`` is installed);
    checkpoints (Orbax) to ``workdir/checkpoints``. A run stopped at any step and started
    again with the same config continues with the same batches, dropout masks and losses.
    The batch is sharded over the local devices (a 1-D ``"data"`` mesh).

    Args:
      config: the experiment.
      workdir: output folder, or None to keep nothing on disk.

    Returns:
      A summary: ``best_val_accuracy``, ``test_accuracy_at_best_val``, ``final`` metrics,
      ``steps``, ``seconds``, ``num_params``.

    Raises:
      TrainingDiverged: the loss became NaN/inf (the last good checkpoint is kept).
    """
    start_time = time.perf_counter()
    dataset = load(config.data.name, **config.data.kwargs)
    mesh = _device_mesh(config.train.devices)
    n_dev = mesh.devices.size
    bs = config.data.batch_size
    if bs % n_dev:
        raise ValueError(f"batch_size {bs} must be divisible by the {n_dev} devices")
    data_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def shard(batch):
        return jax.device_put(batch, data_sharding)

    steps_per_epoch = num_batches(dataset.train, bs, drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {bs} exceeds the {len(dataset.train)} training examples")
    total_steps = config.train.epochs * steps_per_epoch
    optim = config.optim
    if not optim.total_steps:
        warmup = optim.warmup_steps or round(config.train.warmup_epochs * steps_per_epoch)
        optim = dataclasses.replace(optim, total_steps=total_steps, warmup_steps=warmup)

    seed = config.train.seed
    model = build_model(config, dataset, nnx.Rngs(params=seed, dropout=seed + 1))
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    optimizer = nnx.Optimizer(model, build_optimizer(model, optim), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    model.eval()
    eval_graphdef, _ = nnx.split((model, optimizer))
    model.train()
    del model, optimizer
    train_step, eval_step = _make_steps(graphdef, eval_graphdef, dataset.train.lengths is not None)

    writer = MetricWriter(workdir)
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints) if workdir else None
    meta = {"step": 0, "best_val_accuracy": -1.0, "test_accuracy_at_best_val": None}
    if ckpt is not None and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        writer.log_text(f"resumed from step {meta['step']}")
    elif workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))
    state = jax.device_put(state, replicated)

    step = int(meta["step"])
    max_steps = min(total_steps, config.train.max_steps or total_steps)
    bar = tqdm(
        total=max_steps,
        initial=step,
        disable=not config.train.progress,
        desc=config.name or config.data.name,
        unit="step",
        dynamic_ncols=True,
    )
    pending: list = []
    last_eval: dict = {}

    def flush():
        if not pending:
            return
        values = jax.device_get(pending)
        mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
        if not all(math.isfinite(v) for v in mean.values()):
            raise TrainingDiverged(
                f"loss became {mean['loss']} by step {step}; the last good checkpoint "
                f"(step {ckpt.latest_step() if ckpt else 'none'}) is kept"
            )
        lrs = current_learning_rates(state[1]["opt_state"])
        writer.write(step, "train", {**mean, **{f"lr_{k}": v for k, v in lrs.items()}})
        bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['accuracy']:.3f}", **last_eval)
        pending.clear()

    def evaluate_and_save():
        val = _evaluate(eval_step, state, dataset.val, config.data.eval_batch_size, shard)
        test = _evaluate(eval_step, state, dataset.test, config.data.eval_batch_size, shard)
        writer.write(step, "val", val)
        writer.write(step, "test", test)
        if val["accuracy"] > meta["best_val_accuracy"]:
            meta["best_val_accuracy"] = val["accuracy"]
            meta["test_accuracy_at_best_val"] = test["accuracy"]
        last_eval.update(val_acc=f"{val['accuracy']:.3f}", test_acc=f"{test['accuracy']:.3f}")
        bar.set_postfix(**last_eval)
        return val, test

    val = test = None
    try:
        while step < max_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            batches = iterate_batches(
                dataset.train,
                bs,
                shuffle=True,
                seed=seed,
                epoch=epoch,
                drop_remainder=True,
                buckets=config.data.buckets,
                start_batch=offset,
            )
            for batch in batches:
                state, metrics = train_step(state, shard(batch))
                pending.append(metrics)
                step += 1
                bar.update(1)
                if step % config.train.log_every == 0:
                    flush()
                every = config.train.checkpoint_every
                if ckpt is not None and every and step % every == 0:
                    flush()
                    meta["step"] = step
                    ckpt.save(step, state, meta)
                if step >= max_steps:
                    break
            flush()
            epoch_done = step % steps_per_epoch == 0
            if epoch_done and (step // steps_per_epoch) % config.train.eval_every == 0:
                val, test = evaluate_and_save()
            if ckpt is not None and (epoch_done or step >= max_steps):
                meta["step"] = step
                ckpt.save(step, state, meta)
        if val is None:
            val, test = evaluate_and_save()
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
        writer.close()
    summary = {
        "best_val_accuracy": meta["best_val_accuracy"],
        "test_accuracy_at_best_val": meta["test_accuracy_at_best_val"],
        "final": {"val": val, "test": test},
        "steps": step,
        "seconds": time.perf_counter() - start_time,
        "num_params": int(num_params),
        "devices": int(n_dev),
    }
    with MetricWriter(workdir) as final_writer:
        final_writer.write(step, "summary", summary)
    return summary

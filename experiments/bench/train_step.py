"""End-to-end training step: a Mamba language model and an S5 classifier, Pallas vs XLA.

Each model is built once per implementation (same seed, same parameters), one jitted step
(forward, backward, AdamW update) is timed after warm-up, and the losses of the first step
are compared across implementations in the same run. Run::

    python -m experiments.bench.train_step [--quick] [--mamba-variants OPTS,OPTS]
        [--s5-variants OPTS,OPTS] [--models mamba,s5]
"""

import argparse
import contextlib
import functools
import sys

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from experiments.bench._harness import header, table, time_ms
from ssmjax.models import LanguageModel, SequenceClassifier


def make_step(model, tx, loss_fn):
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return step, state


def lm_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def cls_loss(model, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@contextlib.contextmanager
def kernel_defaults(spec: str):
    """Within the block, the Pallas kernels run with the options of ``spec``
    (``"layout=split+bwd_layout=split"``, as in ``kernels.py``'s ``pallas:`` rows) on top of
    their defaults: how a ``"pallas:<options>"`` row times a kernel variant end to end. The
    Mamba model's rows patch the fused selective_scan, the S5 rows ``linear_scan`` (the
    ``spec`` is prefixed ``ls.`` there)."""
    if not spec:
        yield
        return
    import pallas_kernels.linear_scan as ls_module
    import pallas_kernels.selective_scan as ss_module
    from experiments.bench.kernels import kernel_options

    if spec.startswith("ls."):
        module, names, spec = ls_module, ("linear_scan", "linear_scan_planes"), spec[3:]
    else:
        module, names = ss_module, ("selective_scan",)
    originals = {name: getattr(module, name) for name in names}
    for name, fn in originals.items():
        setattr(module, name, functools.partial(fn, **kernel_options(spec)))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def bench(name, build, loss_fn, batch, impls):
    rows = []
    for impl in impls:
        base, _, spec = impl.partition(":")
        try:
            with kernel_defaults(spec):  # the step is traced and compiled in here
                model = build(base)
                step, state = make_step(model, optax.adamw(1e-3), loss_fn)
                _, loss = step(state, batch)
                loss = float(loss)
            ms = time_ms(lambda s, step=step: step(s, batch)[1], state, repeats=5)
        except NotImplementedError as e:
            rows.append({"model": name, "impl": impl, "note": f"n/a: {str(e)[:70]}"})
            continue
        rows.append({"model": name, "impl": impl, "step ms": ms, "first loss": loss})
        print(f"  {name} {impl}: {ms:.2f} ms/step, loss {loss:.5f}", flush=True)
    best_xla = min(
        r["step ms"] for r in rows if "step ms" in r and not r["impl"].startswith("pallas")
    )
    for r in rows:
        if "step ms" in r:
            r["best XLA / this"] = best_xla / r["step ms"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, XLA only (CPU)")
    parser.add_argument(
        "--mamba-variants",
        default="",
        help="comma-separated selective_scan kernel options, each an extra Mamba row "
        "'pallas:<options>' (e.g. layout=split+bwd_layout=split)",
    )
    parser.add_argument(
        "--s5-variants",
        default="",
        help="comma-separated linear_scan kernel options, each an extra S5 row "
        "'pallas:ls.<options>' (e.g. layout=mosaic)",
    )
    parser.add_argument(
        "--models", default="mamba,s5", help="comma-separated models to time: mamba, s5"
    )
    args = parser.parse_args(argv)
    models = args.models.split(",")
    print(header("python -m experiments.bench.train_step " + " ".join(argv or sys.argv[1:])))
    if args.quick:
        b, length, d, layers, vocab = 2, 64, 32, 2, 64
        xla_mamba, xla_s5 = ["chunked", "associative"], ["associative", "chunked"]
        extra = []
    else:
        b, length, d, layers, vocab = 8, 2048, 768, 4, 4096
        xla_mamba, xla_s5 = ["chunked", "associative"], ["associative", "chunked"]
        extra = ["pallas"]
    key = jax.random.key(0)
    tokens = jax.random.randint(key, (b, length + 1), 0, vocab)

    def build_lm(impl):
        return LanguageModel(
            layer="mamba",
            vocab_size=vocab,
            d_model=d,
            n_layers=layers,
            layer_kwargs={"implementation": impl},
            dtype=jnp.bfloat16,
            rngs=nnx.Rngs(0),
        )

    rows = []
    if "mamba" in models:
        rows += bench(
            f"Mamba LM d={d} x{layers}, (b, l)=({b}, {length}), bf16 act.",
            build_lm,
            lm_loss,
            tokens,
            extra
            + [f"pallas:{v}" for v in filter(None, args.mamba_variants.split(","))]
            + xla_mamba,
        )

    if "s5" not in models:
        print(table(rows, ["model", "impl", "step ms", "best XLA / this", "first loss", "note"]))
        return
    s5_b, s5_len, s5_d = (4, 64, 16) if args.quick else (32, 1024, 512)
    x = jax.random.normal(key, (s5_b, s5_len, 1))
    y = jax.random.randint(key, (s5_b,), 0, 10)

    def build_s5(impl):
        return SequenceClassifier(
            layer="s5",
            d_model=s5_d,
            n_layers=6 if not args.quick else 2,
            num_classes=10,
            d_input=1,
            layer_kwargs={
                "d_state": 384 if not args.quick else 8,
                "blocks": 3 if not args.quick else 1,
                "bidirectional": True,
                "implementation": impl,
            },
            rngs=nnx.Rngs(0),
        )

    rows += bench(
        f"S5 classifier (LRA Image size) d={s5_d} x6, (b, l)=({s5_b}, {s5_len})",
        build_s5,
        cls_loss,
        (x, y),
        extra + [f"pallas:ls.{v}" for v in filter(None, args.s5_variants.split(","))] + xla_s5,
    )
    print(table(rows, ["model", "impl", "step ms", "best XLA / this", "first loss", "note"]))


if __name__ == "__main__":
    main()

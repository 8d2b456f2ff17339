"""``python -m ssmjax``: a short demo that the installed library works on this machine.

It runs every implementation of :func:`ssmjax.ops.linear_recurrence` on a random complex
recurrence (S5/LRU style), checks each against the ``"sequential"`` reference, forward and
gradient, and prints how long each takes here.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import ssmjax as sj


def _time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssmjax", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--state", type=int, default=64)
    args = parser.parse_args(argv)

    print(f"ssmjax {sj.__version__} on {jax.devices()[0].platform} (jax {jax.__version__})")
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    shape = (args.batch, args.length, args.state)
    radius = jax.random.uniform(k1, (args.state,), minval=0.9, maxval=0.999)
    angle = jax.random.uniform(k2, (args.state,), maxval=np.pi)
    a = (radius * jnp.exp(1j * angle)).astype(jnp.complex64)
    b = jax.random.normal(k3, shape).astype(jnp.complex64)

    def loss(impl):
        return lambda a, b: jnp.mean(
            jnp.abs(sj.ops.linear_recurrence(a, b, implementation=impl)) ** 2
        )

    ref = jax.jit(jax.value_and_grad(loss("sequential"), argnums=(0, 1)))(a, b)
    print(f"h_t = a * h_(t-1) + b_t, complex64, (b, l, n) = {shape}, fwd+bwd")
    print(f"{'implementation':<12} {'ms':>9} {'rel. err dL/da':>18}")
    for impl in ("sequential", "associative", "chunked"):
        fn = jax.jit(jax.value_and_grad(loss(impl), argnums=(0, 1)))
        (value, (ga, _)) = fn(a, b)
        err = float(jnp.max(jnp.abs(ga - ref[1][0])) / jnp.max(jnp.abs(ref[1][0])))
        assert abs(float(value) - float(ref[0])) <= 1e-4 * abs(float(ref[0])), impl
        print(f"{impl:<12} {_time(fn, a, b):9.2f} {err:18.2e}")
    print("all implementations agree with the reference")


if __name__ == "__main__":
    main()

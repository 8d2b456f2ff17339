"""Compile time of a 6-layer complex-state scan model (S5/LRU style), forward + backward.

Compares ``linear_recurrence`` (real/imaginary planes inside the scans, custom VJP) with a
plain ``lax.associative_scan`` over native complex64 numbers differentiated by autodiff —
the form the S5 and LRU reference code use. Run::

    python -m experiments.bench.compile_time [--length 4096] [--layers 6]
"""

import argparse
import time

import jax
import jax.numpy as jnp

from ssmjax.ops import linear_recurrence
from ssmjax.ops.scan import _recurrence_vjp


def native_complex_scan(a, b):
    a = jnp.broadcast_to(a, b.shape)

    def combine(left, right):
        return right[0] * left[0], right[0] * left[1] + right[1]

    return jax.lax.associative_scan(combine, (a, b), axis=1)[1]


def planes_scan(a, b, h0, *, reverse):
    """The same scan on separate real/imaginary planes (the common compile workaround)."""

    def combine(left, right):
        (ar_l, ai_l, br_l, bi_l), (ar_r, ai_r, br_r, bi_r) = left, right
        return (
            ar_r * ar_l - ai_r * ai_l,
            ar_r * ai_l + ai_r * ar_l,
            ar_r * br_l - ai_r * bi_l + br_r,
            ar_r * bi_l + ai_r * br_l + bi_r,
        )

    b = b.at[:, 0].add(a[:, 0] * h0)
    out = jax.lax.associative_scan(
        combine, (a.real, a.imag, b.real, b.imag), axis=1, reverse=reverse
    )
    return jax.lax.complex(out[2], out[3])


def planes_with_vjp(a, b):
    a = jnp.broadcast_to(a, b.shape)
    h0 = jnp.zeros_like(b[:, 0])
    return _recurrence_vjp(planes_scan, a, b, h0, False)


def make_model(scan):
    def model(params, x):
        for lam, w in params:
            h = scan(lam, x.astype(jnp.complex64) @ w)
            x = jnp.tanh(jnp.real(h)) + x
        return jnp.mean(x**2)

    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="report the fastest compile")
    args = parser.parse_args()
    key = jax.random.key(0)
    params = [
        (
            jnp.full((args.width,), 0.9 + 0.1j, jnp.complex64),
            (jax.random.normal(key, (args.width, args.width)) * 0.1).astype(jnp.complex64),
        )
        for _ in range(args.layers)
    ]
    x = jax.random.normal(key, (2, args.length, args.width))
    variants = {
        "native complex associative_scan (autodiff)": native_complex_scan,
        "real/imag planes associative_scan (custom VJP)": planes_with_vjp,
        "linear_recurrence associative (native, custom VJP)": lambda a, b: linear_recurrence(
            a, b, implementation="associative"
        ),
        "linear_recurrence chunked (native, custom VJP)": lambda a, b: linear_recurrence(
            a, b, implementation="chunked"
        ),
        "linear_recurrence sequential (lax.scan)": lambda a, b: linear_recurrence(
            a, b, implementation="sequential"
        ),
    }
    print(
        f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"{args.layers} layers, length {args.length}, width {args.width}"
    )
    print(f"| {'variant':<52} | min compile fwd+bwd (s) |")
    print(f"|{'-' * 54}|------------------------:|")
    for name, scan in variants.items():
        seconds = []
        for _ in range(args.repeats):  # a fresh jit each time: no compilation cache hit
            fn = jax.jit(jax.grad(make_model(scan)))
            start = time.perf_counter()
            fn.lower(params, x).compile()
            seconds.append(time.perf_counter() - start)
        print(f"| {name:<52} | {min(seconds):23.2f} |", flush=True)


if __name__ == "__main__":
    main()

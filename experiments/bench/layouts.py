"""Pallas selective_scan kernel layouts side by side at the benchmark shape (GPU).

python -m experiments.bench.layouts
"""

import time

import jax
import jax.numpy as jnp

from experiments.bench._harness import header, time_ms
from experiments.bench.kernels import ss_fns, ss_inputs

CONFIGS = [
    {"layout": "state"},
    {"layout": "channel"},
    {"layout": "channel", "prefetch_bc": False},
    {"layout": "channel", "bwd_layout": "channel", "unroll": 4, "prefetch_bc": False},
]


def main():
    print(header("python -m experiments.bench.layouts"))
    print("selective_scan (8, 4096, 4096, 16) bf16, z + D + dt_bias + softplus")
    args = ss_inputs(8, 4096, 4096, 16, jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(1), (8, 4096, 4096))
    ref_fwd, _ = ss_fns("chunked")
    ref = ref_fwd(args).astype(jnp.float32)
    for config in CONFIGS:
        start = time.time()
        fwd, grad = ss_fns("pallas-kernel", **config)
        try:
            y = fwd(args).astype(jnp.float32)
            err = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
            f = time_ms(fwd, args, repeats=10)
            g = time_ms(grad, args, dy, repeats=5)
            print(
                f"{config}: fwd {f:.3f} ms, fwd+bwd {g:.3f} ms, rel L2 y vs XLA chunked "
                f"{err:.1e}, wall {time.time() - start:.0f} s",
                flush=True,
            )
        except Exception as e:  # report and go on to the next layout
            print(f"{config}: FAIL {str(e)[:200]}", flush=True)


if __name__ == "__main__":
    main()

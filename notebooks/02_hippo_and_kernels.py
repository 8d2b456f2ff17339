# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # HiPPO bases, convolution kernels and eigenvalues
#
# What is inside the structured SSMs, drawn from the library's own functions:
#
# 1. the HiPPO matrices behind S4, S4D and S5 (`ssmjax.ops.hippo`): their basis functions,
#    read off as impulse responses of the continuous systems, and a signal reconstructed
#    from the HiPPO state alone;
# 2. the S4 and S4D convolution kernels (`layer.kernel(L)`) at initialisation and after a
#    short training on a delay task, where the kernel must turn into a spike at the delay;
# 3. the eigenvalues of S5 and LRU in the complex plane, before and after the same training.
#
# **Runs on** CPU, a Colab T4 or any GPU; nothing is downloaded except the package.
# **Time:** 22 s at full size on a 2-core CPU (measured top to bottom, on a machine shared
# with other jobs). `SMOKE=1` shrinks everything to seconds (what CI runs).

# %% [markdown]
# ## Install
#
# On Colab this installs ssmjax with its notebook extras (and CUDA JAX, the `gpu` extra, on
# a GPU runtime) straight from the repository; it is skipped when `ssmjax` is already
# importable (a clone installed with `pip install -e ".[notebooks]"`, or CI).
# **`REPO` is a placeholder** for the project's public repository URL: set it to the real
# repository, or to your fork, before running this cell on Colab.

# %%
import importlib.util
import shutil
import subprocess
import sys

REPO = "https://github.com/ssmjax/ssmjax"
if importlib.util.find_spec("ssmjax") is None:
    extras = "notebooks,gpu" if shutil.which("nvidia-smi") else "notebooks"  # CUDA jax on GPUs
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", f"ssmjax[{extras}] @ git+{REPO}"],
        check=True,
    )

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import ssmjax as sj
import ssmjax.nn

if "ipykernel" not in sys.modules and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")  # run as a plain script without a display: no windows
SMOKE = os.environ.get("SMOKE", "") not in ("", "0")
NOTEBOOK_START = time.perf_counter()
print(f"ssmjax {sj.__version__}, jax {jax.__version__}, devices {jax.devices()}, SMOKE={SMOKE}")

# %% [markdown]
# ## 1. HiPPO: a state that remembers the past in a basis
#
# A HiPPO system `c'(t) = A c(t) + B u(t)` keeps in its `N` states the coefficients of the
# recent input history in a basis of functions. Its impulse response `K(t) = exp(tA) B`
# *is* that basis, seen backwards in time: `c(T) = ∫ K(s) u(T - s) ds`.
#
# * **LegT** (translated Legendre): Legendre polynomials on a sliding window of length 1,
#   and (ideally) nothing older than the window;
# * **FouT** (translated Fourier): cosines and sines on the same window;
# * **LegS** (scaled Legendre, S4's default): as a time-invariant system, as S4 uses it,
#   exponentially warped Legendre functions that decay smoothly over the whole past.
#
# We discretise each system with a small zero-order-hold step
# (`ssmjax.ops.discretize_zoh_dense`, i.e. `A_bar = exp(dt A)`) and iterate `A_bar` from
# `B`. The ripples near the window edges are the Gibbs effect of a finite `N`.

# %%
N_HIPPO = 16 if SMOKE else 64
DT = 1e-2 if SMOKE else 1e-3


def impulse_response(measure, n, dt, duration):
    """``K[k] = exp(k dt A) B`` for ``k dt < duration``: ``(steps, n)``, plus ``A_bar, B_bar``."""
    A, B = sj.ops.hippo(measure, n)
    A_bar, B_bar = (np.asarray(m, np.float64) for m in sj.ops.discretize_zoh_dense(A, B, dt))
    steps = round(duration / dt)
    K = np.empty((steps, n))
    k = np.asarray(B, np.float64)
    for i in range(steps):
        K[i] = k
        k = A_bar @ k
    return K, A_bar, B_bar


fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
panels = [("legs", 4.0, [0, 1, 2, 3], "LegS"), ("legt", 1.5, [0, 1, 2, 3], "LegT")]
panels += [("fourier", 1.5, [0, 2, 3, 4, 5], "FouT (state 1 is unused)")]
for ax, (measure, duration, states, title) in zip(axes, panels):
    K, _, _ = impulse_response(measure, N_HIPPO, DT, duration)
    t = np.arange(len(K)) * DT
    for n in states:
        ax.plot(t, K[:, n], label=f"state {n}")
    ax.axvline(1.0, color="k", lw=0.6, ls=":")
    ax.set(title=f"{title}, N={N_HIPPO}", xlabel="time since the input, s")
    ax.legend(fontsize=8)
axes[0].set_ylabel("impulse response K(s)")
plt.tight_layout()
plt.show()

# %% [markdown]
# For LegT and FouT these functions are orthonormal on the window, so the state alone gives
# back the last window of the input: `u(T - s) ≈ Σ_n c_n(T) K_n(s)` for `0 ≤ s ≤ 1`. We run
# the discretised recurrence `c ← A_bar c + B_bar u_k` over a random smooth signal and
# reconstruct its last second from the `N` numbers in `c`.

# %%
rng = np.random.default_rng(0)
t = np.arange(round(3.0 / DT)) * DT
freqs, phases = rng.uniform(0.5, 6.0, 8), rng.uniform(0, 2 * np.pi, 8)
amps = rng.normal(size=8) / np.sqrt(8)
u = np.sum(amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]), axis=0)

fig, axes = plt.subplots(1, 2, figsize=(13, 3.4), sharey=True)
for ax, (measure, title) in zip(axes, [("legt", "LegT"), ("fourier", "FouT")]):
    K, A_bar, B_bar = impulse_response(measure, N_HIPPO, DT, 1.0)
    c = np.zeros(N_HIPPO)
    for u_k in u:
        c = A_bar @ c + B_bar * u_k
    window = u[::-1][: len(K)]  # u(T - s), s = 0 .. 1
    recon = K @ c
    rel_err = np.linalg.norm(recon - window) / np.linalg.norm(window)
    ax.plot(t, u, color="0.6", lw=1.5, label="input u(t)")
    ax.plot(t[-1] - np.arange(len(K)) * DT, recon, "--", label=f"from the {N_HIPPO} states")
    ax.axvspan(t[-1] - 1.0, t[-1], alpha=0.1)
    ax.set(title=f"{title}: relative error {rel_err:.3f} on the last window", xlabel="t, s")
    ax.legend(loc="lower left", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Kernels and eigenvalues before and after training
#
# A delay task makes the learned structure visible: with `H` channels, channel `h` must
# output its input delayed by `DELAYS[h]` steps, `y_t[h] = u_{t - DELAYS[h]}[h]`. For a
# convolutional model the ideal kernel of channel `h` is a single spike at lag `DELAYS[h]`.
# We train four single layers (S4 and S4D: one SISO SSM per channel; S5 and LRU: one MIMO
# SSM shared by the channels) with Adam on random Gaussian inputs.

# %%
L = 32 if SMOKE else 128
DELAYS = np.array([4, 8, 16, 24]) if SMOKE else np.array([10, 30, 60, 100])
H = len(DELAYS)
STEPS = 5 if SMOKE else 1500
BATCH = 16


def make_layer(name, rngs):
    if name == "S4":
        return sj.nn.S4(H, 64, l_max=L, rngs=rngs)
    if name == "S4D":
        return sj.nn.S4D(H, 64, init="legs", rngs=rngs)
    if name == "S5":
        return sj.nn.S5(H, 64, clip_eigs=True, rngs=rngs)  # keeps Re(Lambda) <= -1e-4
    return sj.nn.LRU(H, 32, r_min=0.9, rngs=rngs)


def delayed(u):
    """``u`` of shape ``(b, L, H)``, each channel delayed by its ``DELAYS[h]`` steps."""
    cols = [jnp.pad(u[:, : L - d, h], ((0, 0), (d, 0))) for h, d in enumerate(DELAYS)]
    return jnp.stack(cols, axis=-1)


@nnx.jit
def train_step(layer, optimizer, u):
    def loss_fn(layer):
        return jnp.mean((layer(u) - delayed(u)) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(layer)
    optimizer.update(layer, grads)
    return loss


def snapshot(name, layer):
    """What we plot: the kernels (S4, S4D) or the eigenvalues (S5, LRU)."""
    if name in ("S4", "S4D"):
        return np.asarray(layer.kernel(L)[0])  # (H, L): the causal kernel of each channel
    if name == "S5":
        re = np.minimum(np.asarray(layer.Lambda_re[...]), -1e-4)  # as clip_eigs applies it
        lam = re + 1j * np.asarray(layer.Lambda_im[...])
        return {"continuous": lam, "discrete": np.asarray(layer.discretize()[0])}
    return {"discrete": np.asarray(layer.eigenvalues())}


before, after, losses, seconds = {}, {}, {}, {}
for name in ("S4", "S4D", "S5", "LRU"):
    layer = make_layer(name, nnx.Rngs(0))
    before[name] = snapshot(name, layer)
    optimizer = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
    key = jax.random.key(1)
    start = time.perf_counter()
    history = []
    for _ in range(STEPS):
        key, sub = jax.random.split(key)
        history.append(train_step(layer, optimizer, jax.random.normal(sub, (BATCH, L, H))))
    losses[name] = np.asarray(jax.device_get(history))
    seconds[name] = time.perf_counter() - start
    after[name] = snapshot(name, layer)
    print(
        f"{name:4s} loss {losses[name][0]:.3f} -> {losses[name][-1]:.3f} in {seconds[name]:.1f} s"
    )

fig, ax = plt.subplots(figsize=(6, 3.2))
for name, curve in losses.items():
    ax.plot(curve, label=name)
ax.set(yscale="log", xlabel="step", ylabel="mean squared error", title="delay task")
ax.legend()
plt.show()

# %% [markdown]
# ### S4 and S4D convolution kernels
#
# At initialisation the kernels are smooth, decaying mixtures of the HiPPO modes; after
# training each channel's kernel concentrates at its delay (dotted line).

# %%
fig, axes = plt.subplots(2, H, figsize=(4 * H, 5.5), sharex=True)
for row, name in enumerate(("S4", "S4D")):
    for h in range(H):
        ax = axes[row, h]
        ax.plot(before[name][h], color="0.6", label="init")
        ax.plot(after[name][h], label=f"after {STEPS} steps")
        ax.axvline(DELAYS[h], color="k", ls=":", lw=0.8)
        peak = int(np.argmax(np.abs(after[name][h])))
        ax.set_title(f"{name}, channel {h}: delay {DELAYS[h]}, peak at {peak}", fontsize=10)
    axes[row, 0].set_ylabel("kernel K[l]")
    axes[row, 0].legend(fontsize=8)
for ax in axes[1]:
    ax.set_xlabel("lag l")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### S5 and LRU eigenvalues
#
# S5 starts from the HiPPO-N eigenvalues (real part `-1/2`, imaginary parts spread out);
# discretised with its timescales `dt` they sit just inside the unit circle. (We built it
# with `clip_eigs=True`, S5's option that keeps `Re(Lambda) < 0`, so it stays stable.) LRU
# parameterises the discrete eigenvalues `lambda` directly, initialised uniformly on a ring
# `r_min ≤ |lambda| ≤ r_max`. A delay of `d` steps needs memory of about `d` steps, i.e.
# eigenvalues with `|lambda|^d` not too small, close to the circle.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
circle = np.exp(1j * np.linspace(0, 2 * np.pi, 400))
plots = [
    ("S5", "continuous", "S5: Lambda (continuous time)"),
    ("S5", "discrete", "S5: exp(Lambda dt) (discrete)"),
    ("LRU", "discrete", "LRU: lambda (discrete)"),
]
for ax, (name, kind, title) in zip(axes, plots):
    for snap, label, style in ((before, "init", "o"), (after, "trained", "x")):
        lam = snap[name][kind]
        ax.plot(lam.real, lam.imag, style, ms=5, alpha=0.7, label=label)
    if kind == "discrete":
        ax.plot(circle.real, circle.imag, "k", lw=0.6)
        ax.set_aspect("equal")
    else:
        ax.axvline(0.0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1.0)  # imaginary parts span 0 .. ~1000
        ax.set_ylim(bottom=0.0)  # one eigenvalue of each conjugate pair: Im >= 0
    ax.set(title=title, xlabel="Re", ylabel="Im")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for name in ("S5", "LRU"):
    r0, r1 = np.abs(before[name]["discrete"]), np.abs(after[name]["discrete"])
    print(
        f"{name}: |lambda| in [{r0.min():.3f}, {r0.max():.3f}] at init, "
        f"[{r1.min():.3f}, {r1.max():.3f}] after training"
    )
print(f"notebook wall time: {time.perf_counter() - NOTEBOOK_START:.0f} s")

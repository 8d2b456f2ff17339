"""Benchmark of the Pallas kernels against the XLA forms, checked in the same run.

Tables (median ms after warm-up; forward, and forward+backward = ``grad`` of
``sum(out * cotangent)`` w.r.t. every input), on two clocks: per call (host wall time, each
call synchronised) and device time (``dev``: the summed kernel time of a call, by CUPTI; what
the op costs inside a larger jitted program, and what the floors are compared with):

* ``linear_recurrence`` at (8, 4096, 2048) fp32 and (8, 4096, 1024) complex64 (time-varying
  ``a``, and time-invariant ``a`` of shape ``(d,)`` as in S5/LRU): pallas vs the library's
  XLA forms (``associative``: ``lax.associative_scan`` forward with this library's custom
  VJP, the reverse scan; ``chunked``) and the plain JAX ones a user would write
  (``lax.associative_scan``: the scan over ``(a, b)`` pairs differentiated by autodiff, a
  time-invariant ``a`` broadcast to ``b``'s shape first as S5's reference code does;
  ``lax.scan``: ``lax.scan`` over time, unrolled 16 steps), achieved TB/s and the ratio to
  the HBM floor (forward: read a, b, write h; forward+backward: + read a, h, dh, write da,
  db; time-invariant: a is not streamed), and each row's speed-up over ``associative``
  (``assoc/this``) and over ``lax.associative_scan`` (``lax.assoc/this``);
* ``selective_scan`` at (8, 4096, 4096, 16) bf16 with z, D, dt_bias and softplus: pallas vs
  the XLA forms, exp/s (forward: one exp per (b, l, d, n); forward+backward: two).

Every result is compared with the ``"sequential"`` reference in the same run (max error
relative to the reference's max for fp32, relative L2 for bf16). Run::

    python -m experiments.bench.kernels [--check] [--sweep] [--no-bench] [--quick]

The anchor row ``--ss-impls pallas,jla,chunked,...`` needs the ``jax-linear-attention``
0.1.0 wheel (Python 3.12, pinned to JAX 0.11.2; its other needs are in the GPU image):
``pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl
jax-linear-attention==0.1.0`` here, then on the GPU ``pip install --no-deps --target
/tmp/site .whl/*.whl`` and ``PYTHONPATH=/tmp/site``. Its rows are checked like ours.

``--check`` runs small on-device correctness cases of both kernels (forward and every
gradient vs the reference); ``--sweep`` times kernel configurations.
"""

import argparse
import functools
import itertools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels._linear_scan_lookback_mosaic as lookback_mosaic
from experiments.bench import _harness
from experiments.bench._harness import device_ms, header, parse_scan_shape, table, time_ms
from experiments.bench.scan import native_associative, scan_unroll
from pallas_kernels.linear_scan import linear_scan, linear_scan_planes
from pallas_kernels.selective_scan import selective_scan as selective_scan_kernel
from ssmjax.ops import linear_recurrence, selective_scan

SS_ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def rel_err(actual, desired) -> float:
    """Max abs error relative to the reference's max abs value."""
    a = np.asarray(
        jnp.asarray(actual).astype(jnp.complex64 if jnp.iscomplexobj(actual) else jnp.float32)
    )
    d = np.asarray(jnp.asarray(desired).astype(a.dtype))
    return float(np.max(np.abs(a - d)) / max(np.max(np.abs(d)), 1e-30))


def rel_l2(actual, desired) -> float:
    a = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    d = np.asarray(jnp.asarray(desired, jnp.float32), np.float64)
    return float(np.linalg.norm(a - d) / max(np.linalg.norm(d), 1e-30))


def tree_err(actual, desired, fn=rel_err) -> float:
    return max(fn(x, y) for x, y in zip(actual, desired, strict=True) if y is not None)


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------


def scan_inputs(shape, dtype, seed=0):
    ka, kb, kc, kd = jax.random.split(jax.random.key(seed), 4)
    if dtype == "complex64":
        r = jax.random.uniform(ka, shape, minval=0.9, maxval=0.999)
        th = jax.random.uniform(kb, shape, maxval=np.pi)
        a = (r * jnp.exp(1j * th)).astype(jnp.complex64)
        b = jax.lax.complex(jax.random.normal(kb, shape), jax.random.normal(kc, shape))
    else:
        a = jax.random.uniform(ka, shape, minval=0.9, maxval=0.999).astype(dtype)
        b = jax.random.normal(kb, shape).astype(dtype)
    ct = jax.random.normal(kd, shape).astype(b.dtype)
    if dtype == "complex64":
        ct = ct + 0.5j * jax.random.normal(kc, shape)
    return a, b, ct.astype(b.dtype)


def ss_inputs(b, length, d, n, dtype, *, g=1, seed=0, gate=True):
    """Mamba-style inputs: S4D-real A, dt = softplus(raw + bias) in ~0.001..0.1."""
    rng = np.random.default_rng(seed)
    bc = (b, length, n) if g == 1 else (b, length, g, n)
    dt_init = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), size=(d,)))
    args = {
        "x": rng.normal(size=(b, length, d)),
        "dt": rng.normal(size=(b, length, d)) * 0.5,
        "A": -np.tile(np.arange(1, n + 1, dtype=np.float64), (d, 1)),
        "B": rng.normal(size=bc),
        "C": rng.normal(size=bc),
        "D": rng.normal(size=(d,)),
        "z": rng.normal(size=(b, length, d)) if gate else None,
        "dt_bias": dt_init + np.log(-np.expm1(-dt_init)),  # inverse softplus
    }
    out = {}
    for k, v in args.items():
        if v is None:
            out[k] = None
        elif k in ("A", "D", "dt_bias"):
            out[k] = jnp.asarray(v, jnp.float32)
        else:
            out[k] = jnp.asarray(v, dtype)
    return out


# ----------------------------------------------------------------------------------------
# linear_recurrence
# ----------------------------------------------------------------------------------------


# The plain JAX forms a user would write (autodiff; experiments.bench.scan holds them).
PLAIN_JAX = {"lax.associative_scan": native_associative, "lax.scan": scan_unroll}


def scan_fns(impl, reverse=False, **kw):
    if impl == "pallas-kernel":
        run = lambda a, b: linear_scan(a, b, reverse=reverse, **kw)
    elif impl in PLAIN_JAX:
        if reverse:
            raise ValueError(f"{impl}: forward scans only")
        run = PLAIN_JAX[impl]
    else:
        run = lambda a, b: linear_recurrence(a, b, reverse=reverse, implementation=impl)
    fwd = jax.jit(run)

    def loss(a, b, ct):
        h = run(a, b)
        return jnp.sum(jnp.real(h * ct).astype(jnp.float32))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return fwd, grad


def bench_scan(
    shape,
    dtype,
    hbm_tbps,
    repeats,
    lti=False,
    impls=("pallas", "associative", "chunked"),
    planes_only=False,
):
    a, b, ct = scan_inputs(shape, dtype)
    item = jnp.dtype(b.dtype).itemsize
    size = int(np.prod(shape))
    fwd_bytes, bwd_bytes = 3 * size * item, 5 * size * item  # bwd: read a, h, dh; write da, db
    if lti:  # time-invariant a (d,) as in S5/LRU: read b, write h; read h, dh, write db
        a = a[0, 0]
        fwd_bytes, bwd_bytes = 2 * size * item, 3 * size * item
    ref_fwd, ref_grad = scan_fns("sequential")
    h_ref = ref_fwd(a, b)
    # The reference gradient with real cotangents (sum(real(h * ct))) as in the loss.
    g_ref = ref_grad(a, b, ct)
    rows = []
    for impl in impls:
        if planes_only and jnp.iscomplexobj(b) and impl.split(":")[0] == "pallas":
            continue
        if impl.startswith("pallas:"):  # the kernel called directly with options
            fwd, grad = scan_fns("pallas-kernel", **kernel_options(impl.split(":", 1)[1]))
        else:
            fwd, grad = scan_fns(impl)
        try:
            h = fwd(a, b)
            g = grad(a, b, ct)
        except Exception as e:
            rows.append({"impl": impl, "note": f"failed: {type(e).__name__}: {str(e)[:80]}"})
            continue
        t_f = time_ms(fwd, a, b, repeats=repeats)
        t_b = time_ms(grad, a, b, ct, repeats=repeats)
        dev = (device_ms(fwd, a, b), device_ms(grad, a, b, ct))
        floors = (fwd_bytes, bwd_bytes, hbm_tbps)
        errs = (rel_err(h, h_ref), tree_err(g, g_ref))
        rows.append(_scan_row(impl, t_f, t_b, floors, *errs, dev=dev))
    if jnp.iscomplexobj(b):
        for impl in impls:
            if impl == "pallas" or impl.startswith("pallas:"):
                kw = kernel_options(impl.split(":", 1)[1]) if ":" in impl else {}
                floors = (fwd_bytes, bwd_bytes, hbm_tbps)
                rows.append(bench_scan_planes(a, b, ct, floors, repeats, impl, kw))
    base = {r["impl"]: r for r in rows if "fwd ms" in r}
    for name, label in (("associative", "assoc"), ("lax.associative_scan", "lax.assoc")):
        if name not in base:
            continue
        ref = base[name]
        for r in rows:
            if "fwd ms" in r:
                r[f"{label}/this fwd+bwd"] = ref["fwd+bwd ms"] / r["fwd+bwd ms"]
            if r.get("fwd+bwd dev ms") and ref.get("fwd+bwd dev ms"):
                r[f"{label}/this fwd+bwd dev"] = ref["fwd+bwd dev ms"] / r["fwd+bwd dev ms"]
    return rows


def _scan_row(impl, t_f, t_b, floors, err_fwd, err_grad, note=None, dev=(None, None)):
    """One linear_recurrence table row: per-call times, achieved bandwidth and ratios to the
    floor (``floors = (fwd_bytes, bwd_bytes, hbm_tbps)``), and the same on device time
    (``dev = (fwd, fwd+bwd)`` kernel-sum ms, ``None`` where not measured)."""
    fwd_bytes, bwd_bytes, hbm_tbps = floors
    print(f"  {impl:<12} fwd {t_f:8.3f} ms  fwd+bwd {t_b:8.3f} ms  device {dev}", flush=True)
    row = {
        "impl": impl,
        "fwd ms": t_f,
        "fwd+bwd ms": t_b,
        "fwd TB/s": fwd_bytes / t_f / 1e9,
        "fwd / floor": t_f / (fwd_bytes / hbm_tbps / 1e9),
        "fwd+bwd / floor": t_b / ((fwd_bytes + bwd_bytes) / hbm_tbps / 1e9),
        "err fwd": err_fwd,
        "err grad": err_grad,
    }
    d_f, d_b = dev
    if d_f:
        row["fwd dev ms"] = d_f
        row["fwd dev / floor"] = d_f / (fwd_bytes / hbm_tbps / 1e9)
    if d_b:
        row["fwd+bwd dev ms"] = d_b
        row["fwd+bwd dev / floor"] = d_b / ((fwd_bytes + bwd_bytes) / hbm_tbps / 1e9)
    if note:
        row["note"] = note
    return row


def bench_scan_planes(a, b, ct, floors, repeats, impl="pallas", kw=None):
    """The row of :func:`linear_scan_planes`: ``a``, ``b``, ``h`` and the gradients as real and
    imaginary planes (how the S5/LRU layers call it), checked against the sequential form
    differentiated through the same planes."""
    ap, bp = (jnp.real(a), jnp.imag(a)), (jnp.real(b), jnp.imag(b))
    cp = (jnp.real(ct), jnp.imag(ct))

    def loss_of(run):  # sum(Re(h * ct)) on planes
        def loss(ap, bp):
            h_re, h_im = run(ap, bp)
            return jnp.sum(h_re * cp[0] - h_im * cp[1])

        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    ref = lambda ap, bp: _planes_of(
        linear_recurrence(jax.lax.complex(*ap), jax.lax.complex(*bp), implementation="sequential")
    )
    run = functools.partial(linear_scan_planes, **(kw or {}))
    label = f"{impl} planes"
    fwd = jax.jit(run)
    grad = loss_of(run)
    try:
        h, g = fwd(ap, bp), grad(ap, bp)
    except Exception as e:
        return {"impl": label, "note": f"failed: {type(e).__name__}: {str(e)[:80]}"}
    h_ref, g_ref = jax.jit(ref)(ap, bp), loss_of(ref)(ap, bp)
    t_f = time_ms(fwd, ap, bp, repeats=repeats)
    t_b = time_ms(grad, ap, bp, repeats=repeats)
    dev = (device_ms(fwd, ap, bp), device_ms(grad, ap, bp))
    err_grad = max(tree_err(x, y) for x, y in zip(g, g_ref, strict=True))
    errs = (tree_err(h, h_ref), err_grad)
    return _scan_row(label, t_f, t_b, floors, *errs, "planes in and out", dev=dev)


def _planes_of(h):
    return jnp.real(h), jnp.imag(h)


# ----------------------------------------------------------------------------------------
# selective_scan
# ----------------------------------------------------------------------------------------


XLA_IMPLS = ("chunked", "associative", "sequential")


def _jla_mamba1(args, softplus):
    """The anchor: ``jax-linear-attention`` 0.1.0's Mosaic GPU Mamba-1 kernel (q = C, k = B,
    v = x), importable only where its wheel is installed (Python 3.12, JAX 0.11.2, H100)."""
    from jla.ops.mosaic_gpu.mamba1 import mamba1

    y, _ = mamba1(
        args["C"],
        args["B"],
        args["x"],
        args["dt"],
        args["A"],
        d=args["D"],
        z=args["z"],
        dt_bias=args["dt_bias"],
        dt_softplus=softplus,
    )
    return y


def kernel_options(spec: str) -> dict:
    """The options of a ``"pallas:..."`` row (the kernel called directly with them):
    ``"bc_block+pack_bc=False+unroll=8"`` -> ``{"bc_block": True, "pack_bc": False,
    "unroll": 8}``."""
    opts = {}
    for item in filter(None, spec.split("+")):
        key, _, value = item.partition("=")
        if not value or value in ("True", "False"):
            opts[key] = value != "False"
        else:
            opts[key] = int(value) if value.lstrip("-").isdigit() else value
    return opts


def ss_fns(impl, softplus=True, **kw):
    if impl.startswith("pallas:"):
        impl, kw = "pallas-kernel", {**kw, **kernel_options(impl.split(":", 1)[1])}

    def run(args):
        if impl == "pallas-kernel":
            return selective_scan_kernel(**args, dt_softplus=softplus, **kw)
        if impl == "jla":
            return _jla_mamba1(args, softplus)
        return selective_scan(**args, dt_softplus=softplus, implementation=impl)

    fwd = jax.jit(run)

    def loss(args, dy):
        return jnp.sum(run(args).astype(jnp.float32) * dy)

    grad = jax.jit(jax.grad(loss))
    return fwd, grad


def _ss_errors(row, results, ref):
    """Fills ``row``'s errors against ``ref`` when both have run (so a printed row carries
    its check even if the run is cut short)."""
    r, r_ref = results.get(row["impl"]), results.get(ref)
    if r is None or r_ref is None:
        return
    row["ref"] = ref
    row["rel L2 y"] = rel_l2(r["y"], r_ref["y"])
    if "g" in r and "g" in r_ref:
        row["rel L2 grads (max)"] = tree_err(r["g"], r_ref["g"], rel_l2)


def bench_ss(b, length, d, n, dtype, repeats, impls):
    args = ss_inputs(b, length, d, n, dtype)
    dy = jax.random.normal(jax.random.key(1), (b, length, d), jnp.float32)
    exps = b * length * d * n
    results = {}
    rows = []
    for impl in impls:
        fwd, grad = ss_fns(impl)
        row = {"impl": impl}
        try:
            t0 = time.perf_counter()
            y = jax.block_until_ready(fwd(args))
            ours = impl.startswith("pallas") or impl == "jla"
            row["fwd ms"] = time_ms(fwd, args, repeats=repeats if ours else 5)
            row["fwd exp/s"] = exps / row["fwd ms"] * 1e3
            if impl != "sequential":
                row["fwd dev ms"] = device_ms(fwd, args, iterations=10 if ours else 3)
            results[impl] = {"y": y}
            g = jax.block_until_ready(grad(args, dy))
            row["fwd+bwd ms"] = time_ms(grad, args, dy, repeats=repeats if ours else 3)
            row["fwd+bwd exp/s (2/elem)"] = 2 * exps / row["fwd+bwd ms"] * 1e3
            if impl != "sequential":
                its = 10 if ours else 3
                row["fwd+bwd dev ms"] = device_ms(grad, args, dy, iterations=its)
            results[impl]["g"] = [g[k] for k in SS_ARGS]
            row["wall s"] = time.perf_counter() - t0
        except Exception as e:  # e.g. out of memory for the big XLA forms
            row["note"] = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}"
        rows.append(row)
        _ss_errors(row, results, "sequential" if "sequential" in impls else "chunked")
        print(f"  {impl:<12} {row}", flush=True)
    ref = "sequential" if "sequential" in results else "chunked"
    for row in rows:  # rows that ran before the reference
        _ss_errors(row, results, ref)
    for clock in ("", " dev"):
        key_f, key_b = f"fwd{clock} ms", f"fwd+bwd{clock} ms"
        fastest = min(
            (r[key_b] for r in rows if r["impl"] in XLA_IMPLS and r.get(key_b)),
            default=None,
        )
        anchor = next((r for r in rows if r["impl"] == "jla" and r.get(key_b)), None)
        for row in rows:
            if fastest and row.get(key_b):
                row[f"best XLA/this fwd+bwd{clock}"] = fastest / row[key_b]
            if anchor and row.get(key_b) and row.get(key_f) and anchor.get(key_f):
                row[f"this/jla fwd{clock}"] = row[key_f] / anchor[key_f]
                row[f"this/jla fwd+bwd{clock}"] = row[key_b] / anchor[key_b]
    return rows


# ----------------------------------------------------------------------------------------
# On-device correctness cases and configuration sweep
# ----------------------------------------------------------------------------------------


LINEAR_FORMS = (
    "time-varying",
    "time-invariant",
    "two-pass",
    "mosaic-tv",
    "mosaic-ti",
    "lookback",
    "mosaic-lookback",
    "mosaic-lookback-agg",
    "mosaic-lookback-zero",
)


_REVERSE = {"no": False, "yes": True}  # --linear-reverse values


def check(
    skip_linear=False,
    linear_forms=LINEAR_FORMS,
    skip_ss=False,
    ss_impls=("pallas",),
    ss_cases=None,
    linear_dtypes=("float32", "complex64", "bfloat16"),
    linear_lengths=(1, 33, 1000),
    linear_reverse=(False, True),
):
    """On-device correctness cases; ``linear_forms``: a subset of ``LINEAR_FORMS`` (the
    ``mosaic-*`` forms run on 256 channels, Hopper only: ``layout="mosaic"``, or
    ``"mosaic_lookback"`` for ``mosaic-lookback``, where with ``-agg`` only every third chunk
    publishes its inclusive state, so look-backs add up aggregates on the GPU, and with
    ``-zero`` no ``h0`` is passed, so the kernel starts from zeros itself); ``ss_impls``:
    the selective-scan rows checked (``"pallas"``, or ``"pallas:opts"`` the kernel called
    with options); ``ss_cases``: indices of the selective-scan cases to run (all if
    ``None``); ``linear_dtypes``, ``linear_lengths``, ``linear_reverse``: the linear_scan
    cases' dtypes, lengths and directions (subsets of the defaults)."""
    ok = True
    linear_cases = [
        (dtype, length, rev, (4, 64) if form.startswith("mosaic") else (5, 3), form)
        for dtype, length, rev, form in itertools.product(
            linear_dtypes, linear_lengths, linear_reverse, linear_forms
        )
    ]
    if skip_linear:
        linear_cases = ()
    else:
        print("\n## linear_scan checks (vs sequential; max rel err fwd / grads)")
    for dtype, length, rev, state, form in linear_cases:
        if form == "two-pass" and length == 1:
            continue
        shape = (2, length, *state)
        a, b, ct = scan_inputs(shape, dtype, seed=length)
        if form in ("time-invariant", "mosaic-ti") or "lookback" in form:
            a = a[0, 0]
        chunks = {33: 3, 1000: 8}.get(length, 1) if form == "two-pass" else 1
        layout = "mosaic" if form.startswith("mosaic") else "channel"
        if form == "lookback":  # 1000 steps: 31 chunks of 32 and one of 8
            chunks, layout = {33: 3, 1000: 32}.get(length, 1), "lookback"
        if form.startswith("mosaic-lookback"):  # 1000 steps: 16 chunks of 64 (24 padded)
            chunks, layout = {33: 2, 1000: 16}.get(length, 1), "mosaic_lookback"
        lookback_mosaic.INCLUSIVE_EVERY = 3 if form.endswith("-agg") else 1
        h0 = jnp.ones((2, *state), jnp.complex64 if dtype == "complex64" else jnp.float32) * 0.3
        given = not form.endswith("-zero")  # else no h0: zeros, and no dh0 to compare

        def run(impl, a, b, h0, rev=rev, chunks=chunks, layout=layout, given=given):
            h0 = h0 if given else None
            if impl == "pallas":
                return linear_scan(a, b, h0, reverse=rev, chunks=chunks, layout=layout)
            return linear_recurrence(a, b, h0, reverse=rev, implementation="sequential")

        outs = {}
        for impl in ("pallas", "sequential"):
            f = lambda a, b, h0, impl=impl: run(impl, a, b, h0)
            h, vjp = jax.vjp(f, a, b, h0)
            outs[impl] = (h, vjp(ct.astype(h.dtype))[: 3 if given else 2])
        e_f = rel_err(outs["pallas"][0], outs["sequential"][0])
        e_g = tree_err(outs["pallas"][1], outs["sequential"][1])
        tol = 2e-2 if dtype == "bfloat16" else 1e-5 * max(1.0, np.sqrt(length))
        good = e_f < tol and e_g < 10 * tol
        ok &= good
        print(
            f"  {dtype:<9} l={length:<5} rev={rev!s:<5} s={state!s:<7} {form:<14}: "
            f"{e_f:.1e} / {e_g:.1e} " + ("ok" if good else "FAIL")
        )
    lookback_mosaic.INCLUSIVE_EVERY = 1
    if not skip_ss:
        ok &= _check_ss(ss_impls, ss_cases)
    print(f"\nchecks: {'ALL OK' if ok else 'SOME FAILED'}", flush=True)
    return ok


def _ss_check_fn(impl):
    """``f(p, h0) -> (y, h_last)`` of a check row."""
    if impl.startswith("pallas:"):
        kw = kernel_options(impl.split(":", 1)[1])
        return lambda p, h0: selective_scan_kernel(
            **p, dt_softplus=True, h0=h0, return_final_state=True, **kw
        )
    return lambda p, h0: selective_scan(
        **p, dt_softplus=True, h0=h0, return_final_state=True, implementation=impl
    )


def _check_ss(impls=("pallas",), cases=None) -> bool:
    ok = True
    print("\n## selective_scan checks (vs sequential; rel L2 y / final state / max over grads)")
    # d = 512: every group of g <= 4 is a whole 128-channel block, so on an H100 the
    # automatic forward is the Mosaic GPU kernel in every case but n = 2 (Triton there).
    d = 512
    all_cases = (
        ("float32", 1, 16, 1, True),
        ("float32", 33, 16, 2, True),
        ("float32", 300, 16, 1, False),
        ("float32", 77, 4, 4, True),
        ("float32", 50, 64, 1, True),
        ("bfloat16", 300, 16, 2, True),
        ("bfloat16", 129, 8, 1, False),
        ("bfloat16", 1000, 16, 1, True),
        ("bfloat16", 70, 2, 1, True),
    )
    for i, (dtype, length, n, g, gate) in enumerate(all_cases):
        if cases is not None and i not in cases:
            continue
        args = ss_inputs(2, length, d, n, dtype, g=g, seed=length, gate=gate)
        h0 = jax.random.normal(jax.random.key(3), (2, d, n)) * 0.3
        cts = (
            jax.random.normal(jax.random.key(4), (2, length, d)).astype(args["x"].dtype),
            jax.random.normal(jax.random.key(5), (2, d, n)),
        )
        res = {}
        for impl in ("sequential", *impls):
            try:
                out, vjp = jax.vjp(_ss_check_fn(impl), args, h0)
            except NotImplementedError as e:  # outside that kernel's limits
                print(f"  {impl}: {dtype} l={length} n={n} g={g}: n/a ({str(e)[:70]})")
                continue
            gp, gh0 = vjp(cts)
            res[impl] = (out, [gp[k] for k in SS_ARGS] + [gh0])
        ref = res.pop("sequential")
        for impl, (out, grads) in res.items():
            e_y = rel_l2(out[0], ref[0][0])
            e_h = rel_l2(out[1], ref[0][1])
            e_g = tree_err(grads, ref[1], rel_l2)
            tol = 1e-2 if dtype == "bfloat16" else 1e-5
            good = max(e_y, e_h) < tol and e_g < 5 * tol
            ok &= good
            print(
                f"  {impl}: {dtype:<9} l={length:<4} n={n:<3} g={g} z={gate!s:<5}: "
                f"{e_y:.1e} / {e_h:.1e} / {e_g:.1e} {'ok' if good else 'FAIL'}"
            )
    return ok


def sweep(quick, deadline=float("inf")):
    shape = (2, 512, 256) if quick else (8, 4096, 2048)
    xr = scan_inputs(shape, "float32")
    xc = scan_inputs((*shape[:2], shape[2] // 2), "complex64")
    rows = []
    print("\n## linear_scan sweep", shape, "fp32 / complex64 with half the width", flush=True)
    for bd, nw, u, cplx in (
        (32, 1, 8, False),
        (32, 1, 16, False),
        (32, 1, 32, False),
        (64, 2, 16, False),
        (64, 1, 16, False),
        (128, 4, 16, False),
        (128, 2, 16, False),
        (32, 1, 1, False),
        (32, 1, 16, True),
        (64, 2, 8, True),
    ):
        if time.perf_counter() > deadline:
            print("  (deadline reached; rest of the sweep skipped)")
            break
        fwd, grad = scan_fns("pallas-kernel", block_d=bd, num_warps=nw, unroll=u)
        x = xc if cplx else xr
        try:
            t_f = time_ms(fwd, *x[:2], repeats=10)
            t_b = time_ms(grad, *x, repeats=10)
            row = {"BD": bd, "warps": nw, "unroll": u, "fwd ms": t_f, "fwd+bwd ms": t_b}
            rows.append({"complex": cplx, **row})
        except Exception as e:
            rows.append({"BD": bd, "warps": nw, "unroll": u, "note": str(e).splitlines()[0][:100]})
        print("  ", rows[-1], flush=True)
    print(table(rows, ["complex", "BD", "warps", "unroll", "fwd ms", "fwd+bwd ms", "note"]))
    b_, l_, d_ = (2, 512, 256) if quick else (8, 4096, 4096)
    args = ss_inputs(b_, l_, d_, 16, jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(1), (b_, l_, d_), jnp.float32)
    rows = []
    print("\n## selective_scan sweep", (b_, l_, d_, 16), "bf16 gated softplus", flush=True)
    for bd, nw, u in (
        (32, 4, 8),
        (32, 4, 16),
        (32, 2, 8),
        (16, 2, 8),
        (64, 4, 8),
        (32, 4, 4),
    ):
        if time.perf_counter() > deadline:
            print("  (deadline reached; rest of the sweep skipped)")
            break
        fwd, grad = ss_fns("pallas-kernel", block_d=bd, num_warps=nw, unroll=u)
        try:
            t0 = time.perf_counter()
            t_f = time_ms(fwd, args, repeats=10)
            t_b = time_ms(grad, args, dy, repeats=5)
            rows.append(
                {
                    "BD": bd,
                    "warps": nw,
                    "unroll": u,
                    "fwd ms": t_f,
                    "fwd+bwd ms": t_b,
                    "wall s": time.perf_counter() - t0,
                }
            )
        except Exception as e:
            rows.append({"BD": bd, "warps": nw, "unroll": u, "note": str(e).splitlines()[0][:100]})
        print("  ", rows[-1], flush=True)
    print(table(rows, ["BD", "warps", "unroll", "fwd ms", "fwd+bwd ms", "wall s", "note"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="on-device correctness cases")
    parser.add_argument("--sweep", action="store_true", help="time kernel configurations")
    parser.add_argument("--no-bench", action="store_true", help="skip the main tables")
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument(
        "--skip-linear", action="store_true", help="selective_scan table and checks only"
    )
    parser.add_argument(
        "--sweep-deadline", type=float, default=float("inf"), help="seconds after start"
    )
    parser.add_argument("--hbm-tbps", type=float, default=3.35, help="HBM TB/s for the floor")
    parser.add_argument("--ss-d", type=int, default=4096, help="d of the selective_scan table")
    parser.add_argument("--skip-ss", action="store_true", help="linear tables and checks only")
    parser.add_argument(
        "--linear-forms",
        default=",".join(LINEAR_FORMS),
        help="comma-separated linear_scan check forms: " + ", ".join(LINEAR_FORMS),
    )
    parser.add_argument(
        "--linear-dtypes",
        default="float32,complex64,bfloat16",
        help="comma-separated dtypes of the linear_scan checks",
    )
    parser.add_argument(
        "--linear-lengths",
        default="1,33,1000",
        help="comma-separated lengths of the linear_scan checks (of 1, 33, 1000)",
    )
    parser.add_argument(
        "--linear-reverse",
        default="no,yes",
        help="comma-separated directions of the linear_scan checks: no (forward), yes (reverse)",
    )
    parser.add_argument(
        "--scan-impls",
        default="pallas,associative,chunked,lax.associative_scan,lax.scan",
        help="comma-separated linear_recurrence rows (its implementations, or the plain JAX "
        "forms lax.associative_scan and lax.scan); 'pallas:opt=value' the kernel with "
        "options (e.g. pallas:layout=mosaic); complex shapes add a planes row per pallas row",
    )
    parser.add_argument(
        "--planes-only",
        action="store_true",
        help="complex shapes: the kernel's rows on planes only (no complex in and out rows)",
    )
    parser.add_argument(
        "--scan-shapes",
        default=None,
        help="comma-separated linear_recurrence shapes instead of the three defaults "
        "(fp32-tv, c64-tv, c64-ti): a kind (those, or fp32-ti: a real time-invariant a), "
        "or a kind at another shape (e.g. c64-ti:8x4096x256)",
    )
    parser.add_argument(
        "--ss-check-impls",
        default="pallas",
        help="comma-separated selective_scan rows of --check ('pallas:opt+opt=value': the "
        "kernel with options, e.g. pallas:bwd_layout=mosaic)",
    )
    parser.add_argument(
        "--ss-check-cases",
        default=None,
        help="comma-separated indices of the selective_scan check cases to run (default all)",
    )
    parser.add_argument(
        "--ss-impls",
        default="pallas,chunked,associative,sequential",
        help="comma-separated; 'jla' adds the jax-linear-attention 0.1.0 Mamba-1 anchor; "
        "'pallas:opt+opt=value' the kernel with options (e.g. pallas:bc_block+pack_bc)",
    )
    parser.add_argument(
        "--kernel-times",
        action="store_true",
        help="also print each kernel's device time wherever device time is measured",
    )
    args = parser.parse_args(argv)
    if bad := set(args.linear_reverse.split(",")) - set(_REVERSE):
        parser.error(f"--linear-reverse: {sorted(bad)} (choose from no, yes)")
    _harness.KERNEL_TIMES = args.kernel_times
    print(header("python -m experiments.bench.kernels " + " ".join(argv or sys.argv[1:])))
    start = time.perf_counter()
    if args.check:
        check(
            args.skip_linear,
            args.linear_forms.split(","),
            args.skip_ss,
            args.ss_check_impls.split(","),
            None
            if args.ss_check_cases is None
            else [int(i) for i in args.ss_check_cases.split(",")],
            args.linear_dtypes.split(","),
            [int(n) for n in args.linear_lengths.split(",")],
            [_REVERSE[r] for r in args.linear_reverse.split(",")],
        )
    if not args.no_bench:
        bench(args)
    if args.sweep:
        sweep(args.quick, start + args.sweep_deadline)


def bench(args):
    repeats = 20
    scan_shapes = [
        ((8, 4096, 2048), "float32", False),
        ((8, 4096, 1024), "complex64", False),
        ((8, 4096, 1024), "complex64", True),
    ]
    if args.quick:
        scan_shapes = [((2, 256, 64), "float32", False), ((2, 256, 32), "complex64", True)]
    if args.scan_shapes:
        scan_shapes = [parse_scan_shape(x) for x in args.scan_shapes.split(",")]
    cols = ["impl", "fwd ms", "fwd+bwd ms", "fwd TB/s", "fwd / floor", "fwd+bwd / floor"]
    cols += ["assoc/this fwd+bwd", "lax.assoc/this fwd+bwd", "fwd dev ms", "fwd+bwd dev ms"]
    cols += ["fwd dev / floor", "fwd+bwd dev / floor", "assoc/this fwd+bwd dev"]
    cols += ["lax.assoc/this fwd+bwd dev", "err fwd", "err grad", "note"]
    if args.skip_linear:
        scan_shapes = []
    for shape, dtype, lti in scan_shapes:
        kind = "time-invariant a (d,)" if lti else "time-varying a"
        print(
            f"\n## linear_recurrence (b, l, d) = {shape}, {dtype}, {kind}; "
            f"floor at {args.hbm_tbps} TB/s"
        )
        rows = bench_scan(
            shape, dtype, args.hbm_tbps, repeats, lti, args.scan_impls.split(","), args.planes_only
        )
        print(table(rows, cols), flush=True)
    if args.skip_ss:
        return
    b, length, d, n = (2, 256, 64, 16) if args.quick else (8, 4096, args.ss_d, 16)
    print(
        f"\n## selective_scan (b, l, d, n) = {(b, length, d, n)}, bf16 x/dt/z/B/C, "
        "z + D + dt_bias + softplus"
    )
    rows = bench_ss(b, length, d, n, jnp.bfloat16, repeats, args.ss_impls.split(","))
    cols = ["impl", "fwd ms", "fwd+bwd ms", "fwd exp/s", "fwd+bwd exp/s (2/elem)"]
    cols += ["best XLA/this fwd+bwd", "this/jla fwd", "this/jla fwd+bwd", "fwd dev ms"]
    cols += ["fwd+bwd dev ms", "best XLA/this fwd+bwd dev", "this/jla fwd dev"]
    cols += ["this/jla fwd+bwd dev", "ref", "rel L2 y", "rel L2 grads (max)", "note"]
    print(table(rows, cols), flush=True)


if __name__ == "__main__":
    main()

"""Strict JAX settings for the whole test suite, and shared fixtures."""

import atexit
import importlib.metadata
import os
import shutil
import tempfile
import zlib

# Must be set before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# jaxlib 0.10.2's CPU backend segfaults running some YNNPACK reduce fusions whose operands
# have unit dimensions (seen on an AMD EPYC host: the gradients of ops.gla's chunked form
# with one chunk or one sub-chunk per chunk, in ynn's transpose); the flag below turns that
# fusion type off (the README's known issues). Only for that version: an XLA that does not
# know the flag aborts on it.
if importlib.metadata.version("jaxlib") == "0.10.2":
    _FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_num_cpu_devices", 4)

# A persistent compilation cache for this test process, in a fresh temporary folder: a
# program compiled again later in the run (the same layer in another test, the training step
# of a resumed run) loads instead of compiling, and so do the programs of the subprocesses
# the tests start (experiments.train, the notebook kernels), which inherit the variable and
# run one at a time while their test waits. Each process (each xdist worker) sets its own
# folder, so no two running processes write to one. Results are unchanged: an entry is keyed
# by the program, the compile options and the backend. JAX_ENABLE_COMPILATION_CACHE=false
# turns it off.
_XLA_CACHE = tempfile.mkdtemp(prefix="ssmjax-tests-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def key(request):
    """A fresh PRNG key per test, derived from the test's name (stable across runs)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return jax.random.key(seed)


@pytest.fixture
def rng(request):
    """A NumPy generator per test, derived from the test's name."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture
def fast_compile():
    """XLA's cheapest compiles (``jax_disable_most_optimizations``) for the test it serves.

    For the tests whose time is compiling, not running: the interpret-mode Pallas kernels
    (large programs, each compiled once for a few tiny inputs) and small layers. Opt in per
    module with ``pytestmark = pytest.mark.usefixtures("fast_compile")``. What a program
    computes is unchanged; only how much XLA optimises it.
    """
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)

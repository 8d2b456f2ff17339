"""Strict JAX settings for the whole test suite, and shared fixtures."""

import os
import zlib

# Must be set before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_num_cpu_devices", 4)


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

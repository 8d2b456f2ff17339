"""Fixtures shared by the kernel tests."""

import pytest

import pallas_kernels._linear_scan_lookback_mosaic as lbm
import pallas_kernels._linear_scan_mosaic as lm
import pallas_kernels._selective_scan_mosaic as ssm
import pallas_kernels._selective_scan_mosaic_bwd as ssb
import pallas_kernels.linear_scan as ls
import pallas_kernels.selective_scan as ssk


@pytest.fixture
def hopper(monkeypatch):
    """Compile for a GPU on this CPU as if it were an H100: the backend checks off and every
    Mosaic kernel's device check true (lowering for CUDA needs no GPU)."""
    for module in (ls, ssk):
        monkeypatch.setattr(module, "check_backend", lambda *a: None)
    for module in (lm, lbm, ssm, ssb):
        monkeypatch.setattr(module, "on_hopper", lambda: True)

"""GPU kernels (Pallas: Mosaic GPU lowering on Hopper, Triton elsewhere) behind
``implementation="pallas"`` of ssmjax.ops.

One module per op; each is tested on CPU with ``interpret=True`` against the ``"sequential"``
reference in :mod:`ssmjax.ops`:

* :mod:`pallas_kernels.linear_scan` -- ``h_t = a_t h_{t-1} + b_t`` (real, complex, bf16 I/O),
  forward and fused backward;
* :mod:`pallas_kernels.selective_scan` -- fused Mamba-1 selective scan, forward and backward.

Modules are imported on demand (``from pallas_kernels import linear_scan``), so importing
this package costs nothing.
"""

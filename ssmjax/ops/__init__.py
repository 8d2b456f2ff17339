"""Pure functions over arrays: recurrences, HiPPO, discretisation, SSM kernels.

Nothing here imports Flax; layers in :mod:`ssmjax.nn` are thin wrappers around these.
"""

from ssmjax.ops.conv1d import causal_conv1d as causal_conv1d
from ssmjax.ops.conv1d import causal_conv1d_step as causal_conv1d_step
from ssmjax.ops.discretize import discretize_bilinear as discretize_bilinear
from ssmjax.ops.discretize import discretize_bilinear_dense as discretize_bilinear_dense
from ssmjax.ops.discretize import discretize_zoh as discretize_zoh
from ssmjax.ops.discretize import discretize_zoh_dense as discretize_zoh_dense
from ssmjax.ops.gla import gla as gla
from ssmjax.ops.hippo import hippo as hippo
from ssmjax.ops.hippo import nplr as nplr
from ssmjax.ops.hippo import nplr_to_dense as nplr_to_dense
from ssmjax.ops.hippo import rank_correction as rank_correction
from ssmjax.ops.hippo import s4d_init as s4d_init
from ssmjax.ops.hippo import s5_init as s5_init
from ssmjax.ops.scan import linear_recurrence as linear_recurrence
from ssmjax.ops.scan import linear_recurrence_planes as linear_recurrence_planes
from ssmjax.ops.selective_scan import selective_scan as selective_scan
from ssmjax.ops.ssd import ssd as ssd
from ssmjax.ops.ssm_kernel import DPLRStep as DPLRStep
from ssmjax.ops.ssm_kernel import cauchy_kernel as cauchy_kernel
from ssmjax.ops.ssm_kernel import dplr_c_tilde as dplr_c_tilde
from ssmjax.ops.ssm_kernel import dplr_dense as dplr_dense
from ssmjax.ops.ssm_kernel import dplr_kernel as dplr_kernel
from ssmjax.ops.ssm_kernel import dplr_step as dplr_step
from ssmjax.ops.ssm_kernel import dplr_step_setup as dplr_step_setup
from ssmjax.ops.ssm_kernel import fft_conv as fft_conv
from ssmjax.ops.ssm_kernel import vandermonde_kernel as vandermonde_kernel

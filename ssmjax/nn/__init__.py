"""Flax NNX sequence layers with one interface for every model family.

Every layer takes ``x: (b, l, d_model)`` and supports ``mask=``, ``state=`` /
``return_state=True``, ``init_state(batch_size)`` and ``step(x_t, state)``.
"""

from ssmjax.nn._base import SkipParam as SkipParam
from ssmjax.nn._base import SSMInputParam as SSMInputParam
from ssmjax.nn._base import SSMOutputParam as SSMOutputParam
from ssmjax.nn._base import SSMParam as SSMParam
from ssmjax.nn._base import SSMStepParam as SSMStepParam
from ssmjax.nn._base import get_layer as get_layer
from ssmjax.nn._base import list_layers as list_layers
from ssmjax.nn._selective import SelectiveState as SelectiveState
from ssmjax.nn.blocks import ResidualBlock as ResidualBlock
from ssmjax.nn.gla import GLA as GLA
from ssmjax.nn.lru import LRU as LRU
from ssmjax.nn.mamba import Mamba as Mamba
from ssmjax.nn.mamba2 import Mamba2 as Mamba2
from ssmjax.nn.s4 import S4 as S4
from ssmjax.nn.s4d import S4D as S4D
from ssmjax.nn.s5 import S5 as S5

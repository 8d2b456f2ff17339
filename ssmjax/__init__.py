"""ssmjax: structured state-space and linear-RNN layers for JAX and Flax NNX.

>>> import ssmjax as sj
>>> sj.__version__
'0.1.0.dev0'
"""

from ssmjax import ops as ops

__version__ = "0.1.0.dev0"

"""Images as sequences: LRA Image (grayscale CIFAR-10), sCIFAR, sMNIST, psMNIST, digits.

**CIFAR-10** is read from the python pickles of ``cifar-10-python.tar.gz``
(``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; each batch a dict with
``data`` uint8 ``(n, 3072)`` = red plane, green plane, blue plane, each 32x32 row-major,
and ``labels``). A pixel sequence runs row by row: step ``32 * row + col``.

============  ===========================================  ====================  =======
task          input per step                               shape                 as
============  ===========================================  ====================  =======
image, lra    gray level 0..255 as a token (vocab 256),    ``(n, 1024)`` uint8   LRA
              TF ``rgb_to_grayscale``
image, s4     PIL gray, ``(x/255 - 122.6/255)/(61/255)``   ``(n, 1024, 1)`` f32  S4/S5
scifar_gray   same as ``image, s4``                        ``(n, 1024, 1)`` f32  S4
scifar        RGB, ``(x/255 - mean_c)/std_c``, mean        ``(n, 1024, 3)`` f32  S4/S5
              (0.4914, 0.4822, 0.4465), std (0.247,
              0.243, 0.261)
smnist        ``x/255`` in [0, 1]                          ``(n, 784, 1)`` f32   S4/S5
psmnist       as smnist, steps permuted (bit reversal)     ``(n, 784, 1)`` f32   S4/S5
digits        ``x/16`` (sklearn 8x8 digits)                ``(n, 64, 1)`` f32    --
============  ===========================================  ====================  =======

**Grayscale**: LRA's TF ``rgb_to_grayscale`` computes ``0.2989 R + 0.5870 G + 0.1140 B``
on ``x/255`` in float32 and converts back with ``floor(255.5 * y)``; S4's PIL
``convert("L")`` computes ``(19595 R + 38470 G + 7471 B + 2**15) >> 16`` (rounding). The
two differ by one level on about a quarter of random colours; each variant uses its own
(``gray=`` overrides).

**Normalisation happens per batch**: the cache holds uint8 pixels (memory-mapped) and
float inputs are a :class:`NormalizedPixels` view that normalises the rows it is indexed
with, so sCIFAR takes 0.18 GB instead of 0.74 GB (float32) of memory. ``np.asarray`` on
it gives the whole normalised float32 array.

**Splits**: the official test set is the test split; ``val_fraction`` (0.1) of the
training set is held out at random with ``seed`` (42), S4's ``random_split`` sizes
(CIFAR 45,000/5,000/10,000; MNIST 54,000/6,000/10,000). The indices are NumPy's, not
torch's, and LRA's contiguous TFDS slices cannot be reproduced without TFDS.

**MNIST** comes from the four IDX files (big-endian header, magic 2051 for images
``(n, 28, 28)``, 2049 for labels), gzipped as distributed (also found uncompressed, or
in torchvision's ``MNIST/raw``). **psMNIST** uses S4/S5's bit-reversal permutation
(:func:`bitreversal_permutation`); ``permutation="random"`` gives
``np.random.RandomState(92916).permutation(784)``, another permutation used in the
literature.
"""

from ssmjax.data.cifar import CIFAR10_ARCHIVE as CIFAR10_ARCHIVE
from ssmjax.data.cifar import CIFAR10_FILE_MD5 as CIFAR10_FILE_MD5
from ssmjax.data.cifar import CIFAR10_MD5 as CIFAR10_MD5
from ssmjax.data.cifar import CIFAR10_MIRRORS as CIFAR10_MIRRORS
from ssmjax.data.cifar import CIFAR_GRAY_MEAN as CIFAR_GRAY_MEAN
from ssmjax.data.cifar import CIFAR_GRAY_STD as CIFAR_GRAY_STD
from ssmjax.data.cifar import CIFAR_MEAN as CIFAR_MEAN
from ssmjax.data.cifar import CIFAR_STD as CIFAR_STD
from ssmjax.data.cifar import load_image as load_image
from ssmjax.data.cifar import load_scifar as load_scifar
from ssmjax.data.cifar import load_scifar_gray as load_scifar_gray
from ssmjax.data.cifar import read_cifar_batch as read_cifar_batch
from ssmjax.data.mnist import MNIST_FILES as MNIST_FILES
from ssmjax.data.mnist import MNIST_MIRRORS as MNIST_MIRRORS
from ssmjax.data.mnist import load_digits as load_digits
from ssmjax.data.mnist import load_psmnist as load_psmnist
from ssmjax.data.mnist import load_smnist as load_smnist
from ssmjax.data.mnist import read_idx as read_idx
from ssmjax.data.pixels import NormalizedPixels as NormalizedPixels
from ssmjax.data.pixels import _split_indices as _split_indices
from ssmjax.data.pixels import bitreversal_permutation as bitreversal_permutation
from ssmjax.data.pixels import rgb_to_gray as rgb_to_gray

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_FILE_MD5",
    "CIFAR10_MD5",
    "CIFAR10_MIRRORS",
    "CIFAR_GRAY_MEAN",
    "CIFAR_GRAY_STD",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "NormalizedPixels",
    "bitreversal_permutation",
    "load_digits",
    "load_image",
    "load_psmnist",
    "load_scifar",
    "load_scifar_gray",
    "load_smnist",
    "read_cifar_batch",
    "read_idx",
    "rgb_to_gray",
]

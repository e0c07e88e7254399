"""The old path of bn_lenet/network/batchnorm.py, kept for notebooks and scripts written before the layers became
subpackages: ``bn_lenet.batchnorm`` is that very module (the same object), so ``import bn_lenet.batchnorm`` and
``from bn_lenet.batchnorm import ...`` work as before. New code imports ``bn_lenet.network.batchnorm``.
"""

import sys

from .network import batchnorm

sys.modules[__name__] = batchnorm

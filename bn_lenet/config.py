"""The old path of bn_lenet/training/config.py, kept for notebooks and scripts written before the layers became
subpackages: ``bn_lenet.config`` is that very module (the same object), so ``import bn_lenet.config`` and
``from bn_lenet.config import ...`` work as before. New code imports ``bn_lenet.training.config``.
"""

import sys

from .training import config

sys.modules[__name__] = config

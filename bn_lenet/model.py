"""The old path of bn_lenet/network/model.py, kept for notebooks and scripts written before the layers became
subpackages: ``bn_lenet.model`` is that very module (the same object), so ``import bn_lenet.model`` and
``from bn_lenet.model import ...`` work as before. New code imports ``bn_lenet.network.model``.
"""

import sys

from .network import model

sys.modules[__name__] = model

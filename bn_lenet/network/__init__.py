"""The network (layer 2 of 6, README "Reading the code"): the from-scratch BatchNorm and the LeNet it sits in.

Read ``batchnorm.py`` first (the layer this project is about), then ``model.py`` (where it sits in LeNet:
``lenet``, ``from_config``). Also: ``sync_batchnorm.py`` (the scratch BN synced across processes), ``pool.py``
(LeNet's 2x2 avg-pool), ``options.py`` (model and BN options, presets). Imports only ``bn_lenet.errors`` from
outside this folder. Nothing is imported here, so ``import bn_lenet.network`` stays light.
"""

"""One run (layer 3 of 6, README "Reading the code"): a config, the data, the training loop, the run directory.

Read ``train.py`` first (``fit``: the training loop, ``evaluate``), then ``runs.py`` (``train_run``: a config
to a run directory, and resume) and ``config.py`` (the TOML + ``--set``, checked). Imports the network
(``bn_lenet.network``) and the shared leaves, never sweeps, anchors or entry points. Nothing is imported here,
so ``import bn_lenet.training`` stays light.
"""

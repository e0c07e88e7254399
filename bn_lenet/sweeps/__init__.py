"""Many runs (layer 4 of 6, README "Reading the code"): sweeps of run directories and their analysis.

Read ``sweep.py`` first (``run_sweep``: plan, resume, run, report), then ``spec.py`` (a spec's points and
ids), ``executor.py`` (one run directory's state; the local worker pool); then the analysis: ``report_spec.py``
(what a ``[report]`` declares), ``rule.py`` (the one statistical rule), ``analysis.py`` (the engine),
``sentences.py`` and ``report.py`` (report.md, summary.csv, contrasts.csv). Nothing is imported here, so
``import bn_lenet.sweeps`` stays light.
"""

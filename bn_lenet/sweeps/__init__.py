"""Many runs (layer 4 of 6, README "Reading the code"): sweeps of run directories, their reports and the
studies' answers.

Read ``sweep.py`` first (``run_sweep``: plan, resume, run, report), then ``spec.py`` (a spec's points and
ids), ``executor.py`` (one run directory's state; the local worker pool) and ``report.py`` (summary.csv,
report.md). Each study's answer is registered in ``answers.py``; ``answer_*.py`` and ``answers_*.py`` hold
them. Nothing is imported here, so ``import bn_lenet.sweeps`` stays light.
"""

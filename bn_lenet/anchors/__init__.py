"""Anchors (layer 5 of 6, README "Reading the code"): the tutorial's own loop, kept faithful, and the
benchmark that measures the project's loop against it.

Read ``tutorial.py`` first (a copy of the tutorial's code, the reference), then ``benchmark.py`` (both loops
in one process) and ``benchmark_report.py`` (its JSON and Markdown). Nothing is imported here, so
``import bn_lenet.anchors`` stays light.
"""

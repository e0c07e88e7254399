"""The published figures the reports compare against live inside the project, each with a source a reader can
find, and nothing in the repository points outside it."""

import subprocess
from pathlib import Path

from bn_lenet import published

ROOT = Path(__file__).resolve().parents[1]


def test_every_published_figure_names_a_findable_source():
    assert {p.source for p in published.RUNS} == set(published.SOURCES)
    for full in published.SOURCES.values():  # the book, its release, the section, where to get that release
        assert "Dive into Deep Learning" in full and "release" in full and "section 7.5" in full
        assert "github.com/d2l-ai/" in full
    assert {p.variant for p in published.RUNS} == set(published.TEST_ACC_RANGE) == {"scratch", "torch"}
    for short, full in published.SOURCES.items():
        assert f"{short} = {full}" in published.citation()


def test_nothing_in_the_repository_points_outside_it():
    # results/ holds generated reports: regenerated from the code, which must not point outside either.
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pointing = [f for f in files if not f.startswith("results/") and (ROOT / f).is_file()
                and any(s in (ROOT / f).read_text(errors="ignore") for s in ("../" + "shared", "REFERENCE" + ".md"))]
    assert pointing == []

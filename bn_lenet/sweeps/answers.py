"""The answer a sweep's report gives, in sentences with numbers from its runs: ``[report] answer = "NAME"``.

Each answer is ``fn(sweep) -> list of markdown lines``, placed after the question (``sweep`` is
report.load_sweep's dict: spec, out, points with their runs, metrics, lead). It may draw its own
figures into ``sweep["out"]``. A study with its own question adds its function to ANSWERS.

This module is the registry: it imports every answer module, and no answer module imports it (nor the report
that uses it, report.py); the pieces they share are in stats.py and answers_common.py.
"""

from . import (answer_distributed, answer_gradients, answer_lr, answer_test_stats, answers_affine, answers_batch,
               answers_variants)
from .answers_common import finals, mean
from .stats import STUCK_ACC, describe, final_values, pm
from .study_report import study_sections


def generic(sweep: dict) -> list:
    """The best and the worst point by the first lead metric (mean over finished seeds), and what diverged
    or got stuck."""
    metric = sweep["lead"][0]
    lower_is_better = "loss" in metric
    scored = [(describe(final_values(p["runs"], metric)), p) for p in sweep["points"]]
    scored = sorted([(d, p) for d, p in scored if d["n"]], key=lambda dp: dp[0]["mean"], reverse=not lower_is_better)
    n_runs = len(sweep["runs"])
    lines = ["## Answer", ""]
    if metric not in sweep["metrics"]:
        lines.append(f"These runs do not record {metric!r} (they record {', '.join(sweep['metrics'])}): fix the "
                     f"spec's [report] lead.")
    elif not scored:
        lines.append(f"No run finished with a final {metric}.")
    else:
        (best, bp), (worst, wp) = scored[0], scored[-1]
        seeds = lambda d, p: f"{d['n']} of {len(p['runs'])} seeds finished"  # noqa: E731
        if len(scored) == 1:
            lines.append(f"Final {metric} at **{bp['id']}**: {pm(best)} (mean ± std (min..max), {seeds(best, bp)}).")
        else:
            lines.append(f"Best final {metric}: **{bp['id']}** with {pm(best)} (mean ± std (min..max), "
                         f"{seeds(best, bp)}); worst: **{wp['id']}** with {pm(worst)} ({seeds(worst, wp)}).")
    for status, what in (("diverged", "diverged (loss or weights became inf/NaN)"),
                         ("stuck", f"finished stuck at chance (finite loss, test acc <= {STUCK_ACC})")):
        hits = [(p["id"], sum(_is(r, status) for r in p["runs"]), len(p["runs"])) for p in sweep["points"]]
        hits = [h for h in hits if h[1]]
        total = sum(h[1] for h in hits)
        if total:
            lines.append(f"{total} of {n_runs} runs {what}: " + ", ".join(f"{i} ({k} of {n})" for i, k, n in hits) + ".")
        else:
            lines.append(f"No run {status.replace('stuck', 'got stuck')}.")
    not_done = sum(r["status"] not in ("finished", "diverged") for r in sweep["runs"])
    if not_done:
        lines.append(f"**{not_done} of {n_runs} runs are not done** (interrupted, failed or not started): rerun the "
                     f"sweep's command to complete them; the figures above cover the runs done so far.")
    return lines + [""]


def _is(run: dict, status: str) -> bool:
    return run["stuck"] if status == "stuck" else run["status"] == status


def compare(sweep: dict) -> list:
    """The seed study: scratch BN vs nn.BatchNorm vs no BN (bn_lenet/sweeps/study_report.py), one point per norm."""
    study = {p["values"]["model.norm"]: p["runs"] for p in sweep["points"]}
    if len(study) != len(sweep["points"]):
        raise ValueError("the compare answer needs one point per model.norm")
    return study_sections(study, sweep["out"])


ANSWERS = {"generic": generic, "compare": compare}


# {answer name: fn(sweep) -> str}: the answer in one line with its key number, for the index of every study
# (bn_lenet/sweeps/index.py); a study without one gets the generic best-point line there.
ONE_LINE = {}


def compare_one_line(sweep: dict) -> str:
    """Scratch vs nn.BatchNorm vs no BN: final test accuracy, moving and re-estimated (precise BN) statistics."""
    parts = []
    for p in sweep["points"]:
        moving, precise = finals(p), finals(p, "test_acc_precise")
        if moving:
            parts.append(f"{p['values'].get('model.norm', p['id'])} {mean(moving):.3f}"
                         + (f" ({mean(precise):.3f} precise BN)" if precise else ""))
    return ("final test acc " + ", ".join(parts)) if parts else "no run finished yet"


ONE_LINE["compare"] = compare_one_line

# The studies of issues 11 and 12 with several answers per module (ANSWERS and ONE_LINE dicts).
for _module in (answers_affine, answers_variants, answers_batch):
    ANSWERS.update(_module.ANSWERS)
    ONE_LINE.update(_module.ONE_LINE)


# The studies of issue 11 (and 13's distributed), one module each (NAME, answer, one_line).
for _study in (answer_lr, answer_test_stats, answer_gradients, answer_distributed):
    ANSWERS[_study.NAME], ONE_LINE[_study.NAME] = _study.answer, _study.one_line

"""Statistics over seeds: describe a set of final figures, compare two sets without assuming a
distribution (an exact permutation test; 5 seeds cannot check normality), and how much a curve swings.

``final_values`` and ``pm`` are the pieces every report and answer shares (report.py, answer*.py).

A run here is a dict with at least ``status`` and ``rows`` (its metrics per epoch), as the sweep report
loads them (bn_lenet/sweeps/report.py).
"""

import itertools
import math
import statistics

STUCK_ACC = 0.15  # 10 classes: chance is 0.10; a finished run at or below this is "stuck"


def finished(study_runs: list) -> list:
    """The runs that trained every epoch; diverged or unfinished ones are reported, never averaged."""
    return [r for r in study_runs if r["status"] == "finished"]


def final_values(runs: list, metric: str) -> list:
    return [r["rows"][-1][metric] for r in finished(runs) if metric in r["rows"][-1]]


# --- statistics ---------------------------------------------------------------------------------------

def describe(values: list) -> dict:
    """n, mean, sample std (n - 1; 0 for one value), min, max."""
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def examples_per_sec(rows: list) -> float:
    """The tutorial's figure: all examples over all step time (epochs weighted equally, as each has n examples)."""
    return len(rows) / sum(1 / r["examples_per_sec"] for r in rows)


def final(run: dict, key: str):
    if key == "examples_per_sec":
        return examples_per_sec(run["rows"])
    return run["rows"][-1].get(key)


def swing(values: list, last: int = 5):
    """Mean absolute epoch-to-epoch change over the last ``last`` changes (fewer if the run is shorter)."""
    if len(values) < 2 or any(v is None for v in values):
        return None
    diffs = [abs(b - a) for a, b in zip(values[:-1], values[1:])]
    return statistics.fmean(diffs[-last:])


def welch_t(a: list, b: list) -> tuple:
    """Welch's t statistic and its degrees of freedom (Welch-Satterthwaite) for mean(a) - mean(b)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return (0.0 if statistics.fmean(a) == statistics.fmean(b) else math.inf), float("nan")
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, df


def permutation_p(a: list, b: list) -> float:
    """Exact two-sided permutation p-value of |mean(a) - mean(b)| over every split of the pooled values
    (252 splits for 5 vs 5): no assumption about the distribution, which 5 seeds cannot check."""
    pooled, k = a + b, len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    count = total = 0
    for idx in itertools.combinations(range(len(pooled)), k):
        chosen = set(idx)
        x = [pooled[i] for i in chosen]
        y = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        count += abs(statistics.fmean(x) - statistics.fmean(y)) >= observed - 1e-12
        total += 1
    return count / total


def ranges_overlap(a: list, b: list) -> bool:
    return max(min(a), min(b)) <= min(max(a), max(b))


def pm(d: dict, digits: int = 3) -> str:
    """A ``describe`` result as the reports write it: mean ± std (min..max)."""
    if not d.get("n"):
        return "n/a"
    f = f".{digits}f"
    return f"{d['mean']:{f}} ± {d['std']:{f}} ({d['min']:{f}}..{d['max']:{f}})"

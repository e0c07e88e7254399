"""The one statistical rule every report uses to say whether point A differs from point B on a metric.

- Pairing: runs that share ``train.seed`` share their initial weights and their batches, so where both points
  have finished the same seeds (at least 2) the rule works on the per-seed differences A - B (paired);
  otherwise on the two sets of values as they are (unpaired).
- The difference: mean(A) - mean(B) with a 95% confidence interval, Student t on the per-seed differences
  (n - 1 degrees of freedom) when paired, Welch's t (Welch-Satterthwaite degrees of freedom) when not; and an
  exact permutation p beside it (sign flips of the differences when paired, every split of the pooled values
  when not), which assumes no distribution.
- Verdict for A relative to B: ``higher`` / ``lower`` when the interval excludes 0 and the contrast survives
  Holm's correction over all the contrasts of the study (its Holm-adjusted t p < 0.05); ``equivalent`` when
  the interval lies inside +- the margin; ``inconclusive`` otherwise, with the number of seeds that would
  settle it at the observed spread. Inconclusive is never "no effect".

Pure Python (no SciPy): the t distribution comes from the regularized incomplete beta function below.
"""

import functools
import itertools
import math
import random
import statistics

ALPHA = 0.05
MAX_SEEDS_ADVISED = 1000  # "more than this many seeds": the data cannot settle it at any practical cost


# --- the t distribution ---------------------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method, as in Numerical Recipes 6.4)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2, 0.5, df / (df + t * t))


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (p > 0.5), by bisection on the two-sided tail (to ~1e-12 of 1e5)."""
    lo, hi, tail = 0.0, 1e5, 2 * (1 - p)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > tail else (lo, mid)
    return (lo + hi) / 2


# --- exact permutation p ----------------------------------------------------------------------------------

def sign_flip_p(diffs: list, draws: int = 20000) -> float:
    """Two-sided p of |mean(diffs)| over every sign pattern (exact up to 16 seeds, else ``draws`` random ones)."""
    observed = abs(statistics.fmean(diffs)) - 1e-12
    n = len(diffs)
    patterns = itertools.product((1, -1), repeat=n) if n <= 16 else \
        ([random.Random(0).choice((1, -1)) for _ in range(n)] for _ in range(draws))
    hits = total = 0
    for signs in patterns:
        hits += abs(sum(s * d for s, d in zip(signs, diffs)) / n) >= observed
        total += 1
    return hits / total


def split_p(a: list, b: list, draws: int = 20000) -> float:
    """Two-sided p of |mean(a) - mean(b)| over every split of the pooled values into groups of their sizes
    (exact up to ``draws`` splits, else that many random ones)."""
    pooled, k = a + b, len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b)) - 1e-12
    total_sum = sum(pooled)
    if math.comb(len(pooled), k) <= draws:
        splits = itertools.combinations(range(len(pooled)), k)
    else:
        rng = random.Random(0)
        splits = (rng.sample(range(len(pooled)), k) for _ in range(draws))
    hits = total = 0
    for idx in splits:
        s = sum(pooled[i] for i in idx)
        hits += abs(s / k - (total_sum - s) / (len(pooled) - k)) >= observed
        total += 1
    return hits / total


# --- one contrast -----------------------------------------------------------------------------------------

def compare(a: dict, b: dict, margin: float | None = None) -> dict:
    """A against B. ``a`` and ``b`` are {seed: value} of the finished runs. Returns n, paired, mean_a, mean_b,
    diff (a - b), ci_low, ci_high, p (exact permutation), p_t (the t test's), sd (of the differences when
    paired, pooled otherwise) and df; the verdict comes from ``verdicts`` once every contrast of the study is
    known (Holm). n is the number of pairs when paired, else "n_a+n_b"."""
    common = sorted(set(a) & set(b))
    paired = len(common) >= 2
    xs, ys = list(a.values()), list(b.values())
    out = {"paired": paired, "mean_a": statistics.fmean(xs) if xs else None,
           "mean_b": statistics.fmean(ys) if ys else None, "diff": None, "ci_low": None, "ci_high": None,
           "p": None, "p_t": None, "sd": None, "df": None, "margin": margin}
    if paired:
        diffs = [a[s] - b[s] for s in common]
        n = len(diffs)
        d, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        se, df = sd / math.sqrt(n), n - 1
        out.update(n=n, mean_a=statistics.fmean(a[s] for s in common), mean_b=statistics.fmean(b[s] for s in common),
                   p=sign_flip_p(diffs))
    else:
        out["n"] = f"{len(xs)}+{len(ys)}"
        if len(xs) < 2 or len(ys) < 2:
            if xs and ys:
                out["diff"] = out["mean_a"] - out["mean_b"]
            return out
        d = out["mean_a"] - out["mean_b"]
        va, vb = statistics.variance(xs) / len(xs), statistics.variance(ys) / len(ys)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (len(xs) - 1) + vb ** 2 / (len(ys) - 1)) if se > 0 else len(xs) + len(ys) - 2
        sd = math.sqrt((statistics.variance(xs) + statistics.variance(ys)) / 2)
        out["p"] = split_p(xs, ys)
    half = t_quantile(1 - ALPHA / 2, df) * se
    t = d / se if se > 0 else (0.0 if d == 0 else math.inf)
    out.update(diff=d, ci_low=d - half, ci_high=d + half, p_t=t_two_sided_p(t, df) if se > 0 else float(d == 0),
               sd=sd, df=df)
    return out


def holm(ps: list) -> list:
    """Holm's step-down adjusted p-values, in the input order (None stays None and is not counted)."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    m, running, adjusted = len(idx), 0.0, list(ps)
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def verdict(c: dict, p_holm) -> str:
    if c["ci_low"] is None:
        return "inconclusive"
    if p_holm is not None and p_holm < ALPHA and (c["ci_low"] > 0 or c["ci_high"] < 0):
        return "higher" if c["diff"] > 0 else "lower"
    if c["margin"] is not None and -c["margin"] < c["ci_low"] and c["ci_high"] < c["margin"]:
        return "equivalent"
    return "inconclusive"


def verdicts(contrasts: list) -> list:
    """Each contrast (``compare``'s dict) with p_holm, verdict and, when inconclusive, seeds_needed: Holm over
    all of them (one study's contrasts)."""
    adjusted = holm([c.get("p_t") for c in contrasts])
    for c, p in zip(contrasts, adjusted):
        c["p_holm"] = p
        c["verdict"] = verdict(c, p)
        # the level Holm asked of this contrast: alpha over its multiplier (so the advice allows for Holm too)
        level = ALPHA / (p / c["p_t"]) if p is not None and c.get("p_t") else ALPHA
        c["seeds_needed"] = seeds_needed(c, min(ALPHA, level)) if c["verdict"] == "inconclusive" else None
    return contrasts


def seeds_needed(c: dict, alpha: float = ALPHA):
    """Seeds (pairs, or per side when unpaired) at which, with the observed spread and difference, the interval
    at level 1 - alpha would exclude 0 or fit inside the margin, whichever comes first; None without a spread."""
    sd, d = c.get("sd"), c.get("diff")
    if sd is None or d is None:
        return None
    factor = 1 if c["paired"] else math.sqrt(2)  # unpaired: the difference of two means has sqrt(2) x the se

    def settles(n):
        half = t_quantile(1 - alpha / 2, n - 1) * factor * sd / math.sqrt(n)
        return half < abs(d) or (c["margin"] is not None and abs(d) + half < c["margin"])
    if not settles(MAX_SEEDS_ADVISED):
        return MAX_SEEDS_ADVISED + 1
    lo, hi = 2, MAX_SEEDS_ADVISED  # the interval narrows as n grows: bisect for the first n that settles it
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if settles(mid) else (mid + 1, hi)
    return lo

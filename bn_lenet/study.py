"""A seed study: the tutorial's setup over N seeds for each BN variant, run (or reused), collected, summarized.

Each run goes through ``runs.train_run`` into ``<runs_dir>/compare-<variant>-seed<k>/`` (with its checkpoint,
not committed). A finished or diverged run found there is reused and an interrupted one is resumed, so the
study survives being stopped. The small files of every run are copied into
``<out>/runs/<variant>/seed<k>/``: the report is made from those alone, so it can be regenerated from
committed data (``--report-only``).
"""

import itertools
import math
import shutil
import statistics
import time
from pathlib import Path

from . import config as config_mod
from . import data as data_mod
from . import runs
from .errors import UserError
from .provenance import git_commit
from .model import NORMS

KEEP = ("config.toml", "metrics.jsonl", "bn_history.json", "bn_params.json", "meta.json")


# --- running ------------------------------------------------------------------------------------------

def study_config(variant: str, seed: int, overrides=()) -> config_mod.Config:
    """The tutorial's settings (the config defaults) for one variant and seed. Precise BN is measured every
    epoch for the BN variants; the no-BN LeNet and layer/group norm have no statistics to re-estimate."""
    precise = "true" if variant in ("scratch", "torch") else "false"
    return config_mod.resolve(None, [*overrides, f"model.norm={variant}", f"train.seed={seed}",
                                     f"eval.precise_bn={precise}"])


def ensure_run(cfg, run_dir: Path, data, log=print) -> dict:
    """Train the run into run_dir, or reuse it (finished, diverged), or resume it (interrupted). Returns meta."""
    if (run_dir / "meta.json").is_file():
        saved = config_mod.to_dict(config_mod.load(run_dir / "config.toml"))
        if saved != config_mod.to_dict(cfg):
            raise UserError(f"{run_dir} holds a run with another config than this study asks for; delete that "
                            f"folder, or give the study its own --runs-dir")
        meta = runs.read_json(run_dir / "meta.json")
        if meta["status"] in ("finished", "diverged"):
            log(f"reusing {run_dir} ({meta['status']})")
            return meta
        if (run_dir / "checkpoint.pt").is_file():
            return runs.train_run(cfg, out=run_dir, data=data, log=log, resume=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # stopped before its first epoch ended: nothing in it is worth keeping
    return runs.train_run(cfg, out=run_dir, data=data, log=log)


def run_study(variants, seeds, overrides, runs_dir, out, data, log=print) -> bool:
    """Run (or reuse) every variant x seed and copy its small files into out/runs/. False if interrupted."""
    for seed, variant in itertools.product(seeds, variants):  # seed by seed: interleaved under the same load
        cfg = study_config(variant, seed, overrides)
        run_dir = Path(runs_dir) / f"compare-{variant}-seed{seed}"
        log(f"== {variant}, seed {seed}: {run_dir}")
        meta = ensure_run(cfg, run_dir, data, log=lambda line: log("  " + line))
        if meta["status"] == "interrupted":
            return False
        target = Path(out) / "runs" / variant / f"seed{seed}"
        target.mkdir(parents=True, exist_ok=True)
        for name in KEEP:
            if (run_dir / name).is_file():
                shutil.copy(run_dir / name, target / name)
    return True


def compare(out, seeds: int, variants, overrides, runs_dir, report_only=False, command="", log=print) -> int:
    """The whole study: run it (unless report_only), then write out/report.md from the collected files."""
    out = Path(out)
    study_file = out / "study.json"
    unknown = [v for v in variants if v not in NORMS]
    if unknown or not variants:
        raise UserError(f"unknown variant(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(NORMS)}")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: give at least 1 (statistics over seeds need 2 or more)")
    if report_only:
        if not study_file.is_file():
            raise UserError(f"no study in {out} (no {study_file.name}): run it first without --report-only")
        provenance = runs.read_json(study_file)
        provenance.update(report_command=command, report_commit=git_commit())
    else:
        started, clock, commit = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter(), git_commit()
        root = study_config(variants[0], 0, overrides).data.root
        data = data_mod.load_dataset(root or None)  # read once, shared by every run
        if not run_study(variants, range(seeds), overrides, runs_dir, out, data, log):
            log("interrupted: the finished runs are kept; run the same command again to continue")
            return 130
        provenance = {"command": command, "git_commit": commit, "started": started,
                      "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": time.perf_counter() - clock,
                      "variants": list(variants), "seeds": list(range(seeds)), "overrides": list(overrides)}
        runs.write_json(study_file, provenance)
    from .study_report import write_report
    study = load_study(out, provenance["variants"], provenance["seeds"])
    log(f"wrote {write_report(study, out, provenance)}")
    return 0


# --- loading what was collected ----------------------------------------------------------------------

def load_study(out, variants, seeds) -> dict:
    """{variant: [run, ...]} from out/runs/<variant>/seed<k>/, each run a dict with seed, status, rows
    (metrics per epoch), bn_history, bn_params and meta."""
    study = {}
    for variant in variants:
        dirs = [Path(out) / "runs" / variant / f"seed{seed}" for seed in seeds]
        missing = [str(d) for d in dirs if not (d / "meta.json").is_file()]
        if missing:
            raise UserError(f"the study's runs are incomplete: no meta.json in {', '.join(missing)}; run the "
                            f"study again without --report-only to fill them in")
        study[variant] = [load_run(d) for d in dirs]
    return study


def load_run(run_dir: Path) -> dict:
    meta = runs.read_json(run_dir / "meta.json")
    optional = lambda name, empty: runs.read_json(run_dir / name) if (run_dir / name).is_file() else empty
    return {"seed": meta["seed"], "status": meta["status"], "rows": runs.read_metrics(run_dir), "meta": meta,
            "bn_history": optional("bn_history.json", []), "bn_params": optional("bn_params.json", {}),
            "dir": run_dir}


def finished(study_runs: list) -> list:
    """The runs that trained every epoch; diverged or unfinished ones are reported, never averaged."""
    return [r for r in study_runs if r["status"] == "finished"]


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

"""The distributed study's answer (configs/sweeps/distributed.toml): what local BN costs against synced BN at
a given per-process batch, whether synced N-process training gives the 1-process result, and how many
examples per second the whole job trains with each number of processes. Every figure comes from the runs.

A point is read by its values: ``train.processes`` (1 when absent) and ``bn.sync`` (true when absent; one
process has nothing to sync). Synced N-process training is the 1-process computation up to the order of
float reductions, so its runs are compared with the 1-process runs seed by seed: the training loss after the
first epoch says how far reduction order alone moves it, the final figures how far that grew over the run.
"""

import datetime
import math
from pathlib import Path

from ..training import config as config_mod
from .answers_common import by_seed, diff_line, finals, loss_note, mean, ms, paired, paired_line, status_note
from .stats import describe, examples_per_sec, finished

NAME = "distributed"


def key(point: dict) -> tuple:
    """(processes, synced) of a point."""
    values = point["values"]
    processes = values.get("train.processes", 1)
    return processes, processes == 1 or values.get("bn.sync", True)


def by_key(sweep: dict) -> dict:
    return {key(p): p for p in sweep["points"]}


def global_batch(point: dict):
    """train.batch_size of the point's runs (from a run's config.toml), or None if no run has one."""
    for r in point["runs"]:
        if r.get("dir") and (Path(r["dir"]) / "config.toml").is_file():
            return config_mod.load(Path(r["dir"]) / "config.toml").train.batch_size
    return None


def speeds(point: dict) -> list:
    """Examples per second of the whole job, per finished run: all examples over the slowest process's step
    time (distributed.Job.epoch_totals), over every epoch."""
    return [examples_per_sec(r["rows"]) for r in finished(point["runs"])]


def wall_minutes(point: dict) -> list:
    """Each finished run's wall time from meta.json (start to end, with torchrun's start-up, the data,
    evaluation and figures), in minutes; a resumed run's is left out (it ran in pieces)."""
    out = []
    for r in finished(point["runs"]):
        meta = r.get("meta", {})
        if "started" in meta and "ended" in meta and not meta.get("resumed"):
            t0, t1 = (datetime.datetime.strptime(meta[k], "%Y-%m-%dT%H:%M:%S%z") for k in ("started", "ended"))
            out.append((t1 - t0).total_seconds() / 60)
    return out


def cores(sweep: dict):
    """The CPU cores the runs had (meta.json "cpu_cores"), or None where the runs do not record it."""
    found = {r["meta"].get("cpu_cores") for r in sweep["runs"] if r.get("meta", {}).get("cpu_cores")}
    return found.pop() if len(found) == 1 else None


def first_epoch_loss_gap(a: dict | None, b: dict | None) -> list:
    """|loss after epoch 1| differences, seed by seed, between two points' finished runs."""
    if a is None or b is None:
        return []
    return [abs(x) for x in paired(by_seed(a, 1, "loss"), by_seed(b, 1, "loss"))]


def label(k: tuple) -> str:
    processes, synced = k
    return "1 process" if processes == 1 else f"{processes} processes, {'synced' if synced else 'local'} BN"


def answer(sweep: dict) -> list:
    points = by_key(sweep)
    one = points.get((1, True))
    counts = sorted({p for p, _ in points if p > 1})
    lines = ["## Answer", ""]
    for n in counts:
        synced, local = points.get((n, True)), points.get((n, False))
        batch = global_batch(synced or local)
        per = f" ({batch // n} examples per process of the global batch of {batch})" if batch else ""
        if synced and local:
            lines.append(f"- **Local against synced BN, {n} processes{per}:** "
                         f"{diff_line('local', finals(local), 'synced', finals(synced))}. Seed by seed, local "
                         f"minus synced: {paired_line(paired(by_seed(local), by_seed(synced)))}."
                         f"{loss_note(local, synced, 'local', 'synced')}{notes({'local': local, 'synced': synced})}")
        if synced and one:
            acc = paired(by_seed(synced), by_seed(one))
            loss = paired(by_seed(synced, metric="loss"), by_seed(one, metric="loss"))
            gap = first_epoch_loss_gap(synced, one)
            lines.append(f"- **{n} synced processes against 1 process:** final test accuracy "
                         f"{diff_line(f'{n} synced', finals(synced), '1 process', finals(one))}; seed by seed "
                         f"{paired_line(acc)}. The training loss after epoch 1 differs by at most "
                         f"{max(gap):.1e} in any seed (the float reduction order alone) and the final loss by "
                         f"{max(map(abs, loss)):.1e}: {same_or_not(acc, loss, gap)}"
                         if gap and loss else
                         f"- **{n} synced processes against 1 process:** no seed finished on both sides yet.")
    lines += ["", throughput_line(sweep, points), "", *table(points), ""]
    return lines


def notes(points: dict) -> str:
    """' Not every run is sound: local (1 of 3 runs diverged ...).' or ''."""
    said = [f"{name}{status_note(p)}" for name, p in points.items() if status_note(p)]
    return f" Not every run is sound: {'; '.join(said)}." if said else ""


def threads(point: dict) -> str:
    """' (2 threads per process)': the torch threads of the point's runs (meta.json), where they agree."""
    found = {r["meta"].get("threads") for r in finished(point["runs"]) if r.get("meta")}
    if len(found) != 1 or None in found:
        return ""
    n = found.pop()
    return f" ({n} {'thread' if n == 1 else 'threads'} per process)"


def same_or_not(acc: list, loss: list, gap: list) -> str:
    """Whether the synced job reproduced the 1-process run: equal to the float reduction order's size in every
    seed, or drifting apart over the epochs (training amplifies any difference in the last bits)."""
    rounding = max(map(abs, loss)) <= max(10 * max(gap), 1e-5)
    if max(map(abs, acc)) == 0 and rounding:
        return "the same computation, every seed's final test accuracy identical."
    if rounding:
        return (f"the same computation up to float rounding, which stays at that size to the end; the final test "
                f"accuracy differs by at most {max(map(abs, acc)):.4f} in any seed.")
    return ("the same computation at the start, but the tiny difference grows over the epochs as any change in "
            "the last bits does; compare the difference with the seeds' spread above.")


def throughput_line(sweep: dict, points: dict) -> str:
    parts = []
    base = mean(speeds(points[(1, True)])) if (1, True) in points else math.nan
    for k in sorted(points, key=lambda k: (k[0], not k[1])):
        s = speeds(points[k])
        if s:
            ratio = f", {mean(s) / base:.2f}x 1 process" if k != (1, True) and not math.isnan(base) else ""
            parts.append(f"{label(k)}{threads(points[k])} {ms(s, 0)}{ratio}")
    n_cores = cores(sweep)
    where = f"{n_cores} CPU cores" if n_cores else "the machine's CPU cores"
    note = f" These runs had {where}: processes beyond the cores can only wait for one, never add speed."
    return ("**Examples per second of the whole job** (all examples over the slowest process's step time, mean ± "
            "std over seeds): " + ("; ".join(parts) if parts else "no run finished yet") + "." + note)


def table(points: dict) -> list:
    lines = ["| point | final test acc | final loss | examples/s (job) | run wall time (min) | finished |",
             "|---|---|---|---|---|---|"]
    for k in sorted(points, key=lambda k: (k[0], not k[1])):
        p = points[k]
        lines.append(f"| {label(k)} | {ms(finals(p))} | {ms(finals(p, 'loss'))} | {ms(speeds(p), 0)} | "
                     f"{ms(wall_minutes(p), 1)} | {len(finished(p['runs']))} of {len(p['runs'])} |")
    return lines


def one_line(sweep: dict) -> str:
    """Local minus synced per process count, synced against 1 process, and the fastest and slowest job."""
    points = by_key(sweep)
    counts = sorted({p for p, _ in points if p > 1})
    local = [f"{mean(finals(points[(n, False)])) - mean(finals(points[(n, True)])):+.3f} at {n} processes"
             for n in counts if finals(points.get((n, True))) and finals(points.get((n, False)))]
    same = [f"{mean(finals(points[(n, True)])) - mean(finals(points[(1, True)])):+.3f} at {n}"
            for n in counts if finals(points.get((n, True))) and finals(points.get((1, True)))]
    rates = sorted((describe(speeds(p))["mean"], label(k)) for k, p in points.items() if speeds(p))
    parts = (["test acc, local minus synced BN " + ", ".join(local)] if local else []) + \
            (["synced minus 1 process " + ", ".join(same)] if same else [])
    if len(rates) > 1:
        parts.append(f"fastest {rates[-1][1]} ({rates[-1][0]:,.0f} examples/s), slowest {rates[0][1]} "
                     f"({rates[0][0]:,.0f})")
    return "; ".join(parts) if parts else "no run finished yet"
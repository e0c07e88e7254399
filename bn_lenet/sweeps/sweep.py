"""``bn-lenet sweep``: every point of a spec x every seed as ordinary run directories, then one report.

    OUT/sweep.json                        the resolved spec, every run and its status, provenance
    OUT/runs/<point id>/seed-<s>/         a run directory (what `bn-lenet run` writes), e.g. norm=scratch,lr=0.03
    OUT/summary.csv, report.md, *.png     the report (bn_lenet/sweeps/report.py)

Idempotent: the plan comes from the spec, what is left to do from the run directories on disk
(executor.run_state), so rerunning the command resumes a stopped sweep and trains nothing when all runs
are done. Everything is resolved and checked before anything is written: every run's config, that OUT
holds no run this spec does not ask for or asks for differently, the dataset, the executor. The number of
runs comes first, from the spec's lengths alone: above --max-runs (default spec.MAX_RUNS) the sweep is
refused before anything is built.

Shared OUT: each run is trained under its lock (training/lock.py), so two sweeps on one OUT (or a sweep and a
`bn-lenet run --resume`) never train the same run; a run another process holds is skipped, and listed at
the end as "held by another process" (exit 1; the same command again picks it up). A run whose files are
damaged is "corrupt": named, listed so in the report, never trained over or averaged (exit 1).
"""

import os
import sys
import time
from pathlib import Path

from ..training import data as data_mod
from ..training import lock
from ..training.device import settle
from ..errors import CorruptFile, UserError
from ..training.files import read_json, write_json
from ..training.provenance import git_commit
from ..training.run_dir import now
from .executor import run_state
from .index import SWEEPS_DIR, write_index
from .spec import MAX_RUNS, check_size, resolve_runs, run_count



def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_jobs(todo: int, on_gpu: bool, processes: int = 1) -> int:
    """One single-threaded worker per core (small runs use cores better side by side than with threads
    inside one run), never more workers than runs; one worker per GPU on CUDA. A run of train.processes = N
    is N single-threaded processes: cores // N workers (at least 1) for the largest N."""
    return 1 if on_gpu else max(1, min(cores() // processes, todo))


def check_out(out: Path, planned: list) -> None:
    """OUT is new, empty, or a sweep folder whose run directories are all in this plan."""
    if out.is_file():
        raise UserError(f"--out {out} is a file; give a folder for the sweep")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / "sweep.json").is_file() and not (out / "runs").is_dir():
        raise UserError(f"--out {out} holds files but no sweep (no sweep.json or runs/); choose another --out")
    wanted = {str(r["dir"]) for r in planned}
    extra = sorted(str(d) for d in (out / "runs").glob("*/*") if d.is_dir() and str(d) not in wanted)
    if extra:
        raise UserError(f"{out} holds run(s) this spec does not ask for ({', '.join(extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''}): the spec changed; points may only be added. Give "
                        f"the sweep another --out")


def plan(spec: dict, out: Path) -> list:
    """The runs with what each needs ('new', 'done', 'resume', 'restart', or 'corrupt' with its ``damage``);
    raises on any bad input."""
    planned = resolve_runs(spec, out)
    check_out(out, planned)
    if any(r["cfg"].log.tensorboard for r in planned):
        from ..training.tb_log import require
        require()  # without the extra: one error line now, not one per run
    for run in planned:
        try:
            run["state"] = run_state(run["dir"], run["cfg"])
        except CorruptFile as e:  # named at the end and in the report; the other runs go on
            run["state"], run["damage"] = "corrupt", str(e)
    return planned


def run_sweep(spec: dict, out, jobs=None, executor="local", ray_address=None, report_only=False,
              quiet=False, command="", reproduce="") -> int:
    """Plan, run what is left, write the report. Exit code: 0 all done, 1 some run failed, is corrupt or is
    held by another process, 130 stopped."""
    out = Path(out)
    points, seeds = run_count(spec)
    # Said before planning (which resolves every run's config): a sweep of any size answers at once.
    print(f"sweep {spec['name']}: {points * seeds:,} runs ({seeds} seeds x {points} points) -> {out}", flush=True)
    planned = plan(spec, out)
    previous = previous_record(out)  # (damaged: one error line now, before anything starts)
    corrupt = [{"point": r["point"], "seed": r["seed"], "message": r["damage"]} for r in planned
               if r["state"] == "corrupt"]
    if report_only:
        if not (out / "sweep.json").is_file() and not any(r["state"] == "done" for r in planned):
            raise UserError(f"no sweep in {out}: run it first without --report-only")
        code = write(spec, out, planned, report_command=command, reproduce=reproduce)
        return 1 if say_left_out([], corrupt, []) else code
    todo = [r for r in planned if r["state"] not in ("done", "corrupt")]
    print(f"sweep {spec['name']}: {len(planned) - len(todo) - len(corrupt)} done, {len(todo)} to train"
          f"{f', {len(corrupt)} corrupt (left as they are)' if corrupt else ''}", flush=True)
    ray, setup = None, {}
    if todo:
        for root in {r["cfg"].data.root for r in todo}:
            data_mod.find_files(root or None)  # no data: one error now, not one per worker
        on_gpu = any(settle(r["cfg"].train.device).startswith("cuda") for r in todo)
        jobs = jobs or default_jobs(len(todo), on_gpu, max(r["cfg"].train.processes for r in todo))
        setup = {"executor": executor, "jobs": jobs, "threads_per_run": max(1, cores() // jobs)}
        if executor == "ray":
            from .ray_executor import connect_ray
            ray = connect_ray(ray_address, cpus=jobs * setup["threads_per_run"])
            setup["ray_address"] = ray_address or "a local instance"
    provenance = dict(previous.get("provenance", {}), reproduce=reproduce)
    invocation = dict(setup, command=command, git_commit=git_commit(), started=now())
    clock = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    write_sweep_json(spec, out, planned, provenance)
    completed, failed, held = True, [], []
    if todo:
        done_count, ended = [len(planned) - len(todo)], []

        def on_result(result):
            done_count[0] += 1
            if result["status"] in ("finished", "diverged"):
                ended.append(result)
            {"failed": failed, "held": held, "corrupt": corrupt}.get(result["status"], []).append(result)
            print(f"[{done_count[0]}/{len(planned)}] {progress_line(result)}", flush=True)

        tasks = [{"dir": str(r["dir"].resolve()), "cfg": r["cfg"], "point": r["point"], "seed": r["seed"],
                  "verbose": not quiet} for r in todo]
        if ray is not None:
            from .ray_executor import run_ray
            completed = run_ray(ray, tasks, setup["threads_per_run"], on_result)
        else:
            from .executor import run_local
            completed = run_local(tasks, setup["jobs"], setup["threads_per_run"], on_result)
        # Every invocation that trained something, so the report can give the sweep's whole wall time; "trained"
        # counts the runs it brought to their end (a stopped one leaves the rest to the next invocation).
        invocation.update(ended=now(), wall_seconds=time.perf_counter() - clock,
                          trained=len(ended), stopped=not completed)
        provenance["invocations"] = provenance.get("invocations", []) + [invocation]
    code = write(spec, out, planned, provenance=provenance)
    left_out = say_left_out(failed, corrupt, held)
    if not completed:
        print("stopped: every run kept its finished epochs; run the same command again to continue",
              file=sys.stderr)
        return 130
    return 1 if left_out else code


def say_left_out(failed: list, corrupt: list, held: list) -> bool:
    """One line per run this sweep could not bring to an end; whether there was any."""
    for result in failed:
        print(f"error: {result['point']} seed-{result['seed']} failed: {result['message']}", file=sys.stderr)
    for result in corrupt:
        print(f"error: {result['point']} seed-{result['seed']} is corrupt (left as it is, never averaged): "
              f"{result['message']}", file=sys.stderr)
    for result in held:
        print(f"{result['point']} seed-{result['seed']}: held by another process ({result['message']}), not "
              f"trained here: run the same command again when it has ended, to pick it up", file=sys.stderr)
    return bool(failed or corrupt or held)


def previous_record(out: Path) -> dict:
    """OUT/sweep.json as a sweep left it ({} if none); damaged: one error line naming it (it holds the record of
    earlier invocations, so it is never silently written over)."""
    path = out / "sweep.json"
    if not path.is_file():
        return {}
    record = read_json(path)
    provenance = record.get("provenance", {})
    if not isinstance(provenance, dict) or not isinstance(provenance.get("invocations", []), list):
        raise CorruptFile(f"{path} has no provenance with a list of invocations: this sweep directory is damaged: "
                          f"restore the file, or delete it (the next sweep writes it again)")
    return record


def progress_line(result: dict) -> str:
    last = result.get("last") or {}
    what = result["status"]
    if what in ("failed", "corrupt"):
        what += f": {result['message']}"
    elif what == "held":
        what = f"held by another process ({result['message']}); skipped"
    elif last:
        what += f", epoch {last.get('epoch')}: loss {last.get('loss', float('nan')):.3f}, test acc " \
                f"{last.get('test_acc', float('nan')):.3f}"
    how = f"{result.get('seconds', 0):.1f} s" if result.get("trained") else "already done"
    return f"{result['point']} seed-{result['seed']}: {what} ({how})"


def write_sweep_json(spec: dict, out: Path, planned: list, provenance: dict, answer: str = "") -> None:
    """sweep.json: the resolved spec, every run with its overrides and status, provenance, and the one-line
    answer of the report last written (the index reads it here rather than analysing every study again)."""
    def status(run):
        meta = Path(run["dir"]) / "meta.json"
        if lock.holder(run["dir"]):
            return "held by another process"
        try:
            return read_json(meta).get("status", "unknown") if meta.is_file() else "not started"
        except CorruptFile:
            return "corrupt"
    runs = [{"point": r["point"], "values": r["values"], "seed": r["seed"],
             "dir": str(Path(r["dir"]).relative_to(out)), "overrides": r["overrides"], "status": status(r)}
            for r in planned]
    write_json(out / "sweep.json", {"name": spec["name"], "spec": {k: list(v) if k == "seeds" else v for k, v in spec.items() if k != "name"},
                                    "provenance": provenance, "runs": runs, **({"answer": answer} if answer else {})})


def write(spec: dict, out: Path, planned: list, provenance=None, report_command=None, reproduce="") -> int:
    """sweep.json (statuses as on disk now) and the report."""
    from .report import analysed, write_report
    from .sentences import one_line
    done = analysed(spec, out, planned)  # a bad [report]: one error, nothing rewritten
    provenance = dict(provenance or previous_record(out).get("provenance", {}))
    provenance.setdefault("reproduce", reproduce)
    if report_command:
        provenance.update(report_command=report_command, report_commit=git_commit())
    write_sweep_json(spec, out, planned, provenance, one_line(*done))
    path = write_report(spec, out, planned, provenance, done)
    print(f"report: {path}")
    if any(r.get("cfg") is not None and r["cfg"].log.tensorboard for r in planned):
        write_tensorboard_hparams(out, planned)
    if Path(out).resolve().parent == SWEEPS_DIR.resolve():  # a study in results/sweeps/: keep its index current
        print(f"index: {write_index(SWEEPS_DIR)}")
    return 0


def write_tensorboard_hparams(out: Path, planned: list) -> None:
    """With log.tensorboard on, every run already logged its curves under runs/<point>/seed-<s>/tb; this adds
    TensorBoard's HParams summary (the swept keys and the seed as hyperparameters, the final epoch's metrics),
    so `tensorboard --logdir OUT` shows the whole sweep as a table and in parallel coordinates."""
    from ..training import tb_log
    from ..training.files import read_metrics
    rows = []
    for r in planned:
        try:
            metrics = read_metrics(r["dir"])
        except CorruptFile:
            continue  # listed as corrupt in the report
        if not metrics:
            continue  # nothing finished yet: no final values to show
        final = {k: v for k, v in metrics[-1].items() if k != "epoch" and isinstance(v, (int, float))
                 and not isinstance(v, bool)}
        rows.append({"run": str(Path(r["dir"]).relative_to(out)), "hparams": {**r["values"], "train.seed": r["seed"]},
                     "metrics": final})
    if rows:
        tb_log.write_hparams(out, rows)


def spec_for(target: str, grid=(), seeds=None, sets=(), max_runs=MAX_RUNS) -> dict:
    """A spec from a spec file, or the ad-hoc form from a run config and --grid/--seeds; refused (one error
    line, at once) above ``max_runs`` runs."""
    from .spec import is_config, read_toml, spec_from_args, spec_from_file
    if is_config(read_toml(target)):
        spec = spec_from_args(target, list(grid), 1 if seeds is None else seeds)
    else:
        if grid:
            raise UserError(f"{target} is a sweep spec: put the grid in it (--grid is for the ad-hoc form "
                            f"`bn-lenet sweep CONFIG.toml --grid KEY=V1,V2 --seeds N`)")
        spec = spec_from_file(target)
        if seeds is not None:  # a quick look with fewer seeds, or more of them
            spec["seeds"] = seeds
    spec["cli_set"] = list(sets)
    from .spec import check_spec
    spec = check_spec(spec)
    check_size(spec, max_runs)
    spec["seeds"] = list(spec["seeds"])  # (counted first: a typo of a billion seeds is never listed)
    from .report_spec import check_against
    from .spec import points_of
    check_against(spec["report"], points_of(spec), spec.get("spec_file") or spec["name"])  # before any training
    return spec

"""Command line: ``bn-lenet run | inspect | sweep | compare | data | benchmark`` (also ``python -m bn_lenet``).

User errors print one ``error: ...`` line and exit 2, without a traceback (``--debug`` shows it).
"""

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from .errors import UserError, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bn-lenet", description="LeNet with scratch vs built-in batch "
                                "normalization on Fashion-MNIST.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="train one run from a TOML config",
                         epilog="exit status: 0 finished, 1 diverged, 2 a user error (one `error:` line), 130 "
                                "interrupted by Ctrl-C/SIGTERM after saving (continue with --resume RUN_DIR)")
    run.add_argument("config", nargs="?", help="a TOML config, e.g. configs/scratch_bn.toml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config value, e.g. --set train.lr=0.5 (repeatable)")
    run.add_argument("--out", help="run directory (default: results/runs/<config>-<time>); never overwritten")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last finished epoch")
    run.add_argument("--device", help="shorthand for --set train.device=... (auto, cpu, cuda)")
    run.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX files (default: search)")
    run.add_argument("--quiet", action="store_true", help="no progress bar, only one line per epoch")

    inspect = sub.add_parser("inspect", help="a run's model and BN options, and gamma/beta of every norm layer "
                             "(two runs: side by side)")
    inspect.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one or two run directories")
    inspect.add_argument("--values", action="store_true", help="also print every channel's value")

    sweep = sub.add_parser("sweep", help="run a spec's points x seeds (or CONFIG --grid KEY=V1,V2 --seeds N) "
                           "and write one report", epilog="exit status: 0 every run done (diverged runs are results), "
                           "1 a run failed, is corrupt, or is held by another process (rerun the same command when "
                           "it has ended), 2 a user error (nothing written), 130 stopped by Ctrl-C/SIGTERM (every "
                           "run kept its finished epochs; rerun the same command to continue)")
    add_sweep_arguments(sweep, spec=True)
    compare = sub.add_parser("compare", help="the seed study: scratch vs nn.BatchNorm vs no BN over 5 seeds, "
                             "with precise BN (= bn-lenet sweep configs/sweeps/compare.toml)")
    add_sweep_arguments(compare, spec=False)

    data = sub.add_parser("data", help="find and check Fashion-MNIST; with --get, obtain it")
    data.add_argument("--data-dir", help="folder with the four IDX files (default: search)")
    data.add_argument("--get", action="store_true",
                      help="if missing: install Debian's package (as root) or download it with torchvision")

    from .anchors.benchmark import add_arguments as add_benchmark_arguments
    add_benchmark_arguments(sub.add_parser("benchmark", help="time the tutorial's loop against the project's "
                                           "(results/benchmark/<device>.json and .md)"))
    return p


def cmd_run(args) -> int:
    from .training import distributed
    if not distributed.in_torchrun():
        return _run(args, distributed.SINGLE)
    job = distributed.start()  # one of the processes of `torchrun -m bn_lenet run`
    try:
        return _run(args, job)
    except distributed.JobError as e:  # the same user error in every process
        if "--debug" in sys.argv:
            raise
        if job.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        job.barrier()  # torchrun ends the job when one process exits: the others wait for rank 0 to print
        return 2
    finally:
        distributed.finish(job)


def _run(args, job) -> int:
    from .training import config, distributed, launch, process, runs
    progress = not args.quiet and sys.stderr.isatty() and job.is_main
    to_stderr = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    with job.together():  # a bad command line or config stops every process of a job with the same error
        if bool(args.config) == bool(args.resume):
            raise UserError("give either a CONFIG to start a run or --resume RUN_DIR to continue one (not both)")
        if args.resume:
            if args.overrides or args.out or args.device or args.data_dir:
                raise UserError("--resume continues a run with its saved config: drop --set/--out/--device/"
                                "--data-dir")
            cfg, _ = runs.resume_config(args.resume)
        else:
            overrides = list(args.overrides)
            # Quoted as TOML strings, so a path such as "2024" or "true" stays a path.
            if args.device:
                overrides.append(f"train.device={json.dumps(args.device)}")
            if args.data_dir:
                overrides.append(f"data.root={json.dumps(args.data_dir)}")
            cfg = config.resolve(args.config, overrides)
    # This process trains: on CPU, glibc keeps the memory each step frees (process-wide: ~1,000 fewer page
    # faults per step, the same numbers; bn_lenet/training/process.py).
    process.keep_freed_memory(cfg.train.device)
    launched = job is distributed.SINGLE and launch.wanted(cfg)  # train.processes > 1: a torchrun job (launch.py)
    if args.resume:
        meta = runs.train_run(cfg, out=args.resume, progress=progress, resume=True, log_error=to_stderr, job=job)
    else:
        meta = runs.train_run(cfg, out=args.out, name=Path(args.config).stem, progress=progress,
                              log_error=to_stderr, job=job)
    code = {"finished": 0, "interrupted": 130}.get(meta["status"], 1)
    if job.is_main and not launched:  # (launched: the job's rank 0 printed them)
        for line in runs.summary_lines(meta["run_dir"]):
            print(line)
        print(f"run directory: {meta['run_dir']} ({meta['status']})", flush=True)
    if meta["status"] != "failed":  # (failed: another process is gone)
        job.barrier()  # torchrun ends the job when one process exits: the others wait until rank 0 is done
    return code


def cmd_inspect(args) -> int:
    if len(args.runs) > 2:
        raise UserError("inspect takes one run directory, or two to compare side by side")
    runs = [_read_inspectable(run) for run in args.runs]
    for i, (label, run) in enumerate(zip(args.runs, runs)):
        print(f"[{i + 1}] {label}: {_run_line(run)}")
        for line in run["options"]:
            print(f"    {line}")
    if not runs[0]["params"]:
        print(f"{args.runs[0]}: no BN layers (no norm layer of any kind in this network)")
        return 0
    print()
    print(format_bn_table([r["params"] for r in runs], args.runs, values=args.values))
    histories = [r["history"] for r in runs]
    if all(histories):
        print()
        print(format_bn_history(histories))
    return 0


def _read_inspectable(run) -> dict:
    """What inspect shows of a run directory (or of a study's copy of one): BN parameters are required."""
    from .training.config import load
    from .network.options import describe
    from .training.runs import read_json, read_metrics
    run = Path(run)
    if not (run / "bn_params.json").is_file():
        raise UserError(f"{run} is not a run directory with BN parameters (no bn_params.json); "
                        f"give a folder written by `bn-lenet run`")
    optional = lambda name, empty: read_json(run / name) if (run / name).is_file() else empty  # noqa: E731
    cfg = load(run / "config.toml") if (run / "config.toml").is_file() else None
    return {"params": read_json(run / "bn_params.json"), "history": optional("bn_history.json", []),
            "meta": optional("meta.json", {}), "rows": read_metrics(run),
            "norm": cfg.model.norm if cfg else "?", "options": describe(cfg) if cfg else []}


def _run_line(run: dict) -> str:
    """One line: status, epochs and the last epoch's figures."""
    meta, rows = run["meta"], run["rows"]
    head = f"norm {run['norm']}, seed {meta.get('seed', '?')}, {meta.get('status', 'unknown status')}"
    if not rows:
        return f"{head}, no finished epoch"
    last = rows[-1]
    precise = f" (precise BN {last['test_acc_precise']:.3f})" if "test_acc_precise" in last else ""
    if "test_acc_batch_stats" in last:
        precise += f" (batch stats {last['test_acc_batch_stats']:.3f})"
    return (f"{head}; epoch {last['epoch']}: loss "
            f"{last['loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}{precise}")


def format_bn_history(histories: list, max_columns: int = 10) -> str:
    """Gamma/beta over epochs: per layer and parameter the mean over channels after each epoch (at most
    ``max_columns`` epochs, evenly spaced, first and last kept); one row per run."""
    epochs = sorted({h["epoch"] for history in histories for h in history})
    if len(epochs) > max_columns:
        epochs = sorted({epochs[round(i * (len(epochs) - 1) / (max_columns - 1))] for i in range(max_columns)})
    by_epoch = [{h["epoch"]: h["params"] for h in history} for history in histories]
    tag = len(histories) > 1
    lines = ["mean over channels after each epoch",
             f"{'layer':10} {'param':5} {'':3}" + "".join(f"{'ep ' + str(e):>8}" for e in epochs)]
    lines.append("-" * len(lines[-1]))
    for layer in _layers([h[0]["params"] for h in histories]):
        for key in ("gamma", "beta"):
            for i, params in enumerate(by_epoch):
                cells = [statistics.fmean(params[e][layer][key]) if e in params and layer in params[e] else None
                         for e in epochs]
                prefix = f"{layer:10} {key:5}" if i == 0 else " " * 16
                lines.append(f"{prefix} {f'[{i + 1}]' if tag else '':3}" +
                             "".join(f"{c:8.3f}" if c is not None else f"{'-':>8}" for c in cells))
    return "\n".join(lines)


def _layers(params: list) -> list:
    """Norm layer names of every run, first run's first (runs with other norms name them differently:
    conv1.bn, conv1.ln, conv1.gn)."""
    return list(dict.fromkeys(name for p in params for name in p))


def _stats(v: list) -> str:
    return f"{statistics.fmean(v):8.4f} {statistics.pstdev(v):7.4f} {min(v):8.4f} {max(v):8.4f}"


def format_bn_table(params: list, labels: list, values: bool = False) -> str:
    """Per layer and per parameter: mean, std, min, max (one column group per run)."""
    head = "layer      param    n " + " | ".join(f"{'mean':>8} {'std':>7} {'min':>8} {'max':>8}" for _ in params)
    lines = [" | ".join(f"[{i + 1}] {label}" for i, label in enumerate(labels)), head, "-" * len(head)]
    for layer in _layers(params):
        for key in ("gamma", "beta"):
            cells = [_stats(p[layer][key]) if layer in p else f"{'-':>34}" for p in params]
            size = next(len(p[layer][key]) for p in params if layer in p)
            lines.append(f"{layer:10} {key:5} {size:4d} " + " | ".join(cells))
    if values:
        for i, p in enumerate(params):
            for layer in p:
                for key in ("gamma", "beta"):
                    lines.append(f"[{i + 1}] {layer} {key}: " + " ".join(f"{x:.4f}" for x in p[layer][key]))
    return "\n".join(lines)


def add_sweep_arguments(p, spec: bool) -> None:
    if spec:
        p.add_argument("spec", metavar="SPEC|CONFIG", help="a sweep spec (configs/sweeps/NAME.toml) or a run config "
                       "with --grid")
        p.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                       help="with a CONFIG: sweep this key over these values, TOML literals (repeatable: the product)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 for every point (a CONFIG's default: 1; a SPEC's: "
                   "its own seeds)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a fixed override for every run, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--out", help="the sweep's folder (default: results/sweeps/<spec name>)")
    p.add_argument("--jobs", type=int, help="worker processes (default: one per core, at most one per run; 1 on a "
                   "GPU; cores // train.processes for runs of several processes); torch threads per run = cores // "
                   "jobs")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes, or Ray tasks (pip install 'bn-lenet[ray]')")
    p.add_argument("--ray-address", help="HOST:PORT of a running Ray cluster (default: start a local instance)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the run directories; "
                   "train nothing")
    p.add_argument("--max-runs", type=int, metavar="N", help="allow a sweep of up to N runs (default 10,000: a "
                   "larger one is refused at once, saying its count)")
    p.add_argument("--quiet", action="store_true", help="one line per run, no per-epoch lines")


COMPARE_SPEC = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "compare.toml"


def cmd_sweep(args) -> int:
    from .sweeps.sweep import SWEEPS_DIR, run_sweep, spec_for
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give at least 1 worker process")
    if args.ray_address and args.executor != "ray":
        raise UserError("--ray-address is for --executor ray")
    if args.max_runs is not None and args.max_runs < 1:
        raise UserError(f"--max-runs {args.max_runs}: give the number of runs to allow (at least 1)")
    target = getattr(args, "spec", None) or str(_compare_spec())
    spec = spec_for(target, getattr(args, "grid", ()), getattr(args, "seeds", None), args.overrides,
                    **({"max_runs": args.max_runs} if args.max_runs else {}))
    out = Path(args.out) if args.out else SWEEPS_DIR / spec["name"]
    argv = getattr(args, "argv", sys.argv[1:])
    command = ("python experiments/compare.py " + shlex.join(argv[1:]) if Path(sys.argv[0]).name == "compare.py"
               else "bn-lenet " + shlex.join(argv)).strip()
    reproduce = shlex.join(["bn-lenet", "sweep", spec["spec_file"] or spec["config"],
                            *(a for g in getattr(args, "grid", []) for a in ("--grid", g)),
                            *(["--seeds", str(args.seeds)] if getattr(args, "seeds", None) is not None else []),
                            *(a for o in args.overrides for a in ("--set", o)),
                            *(["--out", args.out] if args.out else []),
                            *(["--max-runs", str(args.max_runs)] if args.max_runs else [])])
    return run_sweep(spec, out, jobs=args.jobs, executor=args.executor, ray_address=args.ray_address,
                     report_only=args.report_only, quiet=args.quiet, command=command, reproduce=reproduce)


def _compare_spec() -> Path:
    """configs/sweeps/compare.toml, from the current directory if it has one, else from the source tree."""
    here = Path("configs/sweeps/compare.toml")
    return here if here.is_file() else COMPARE_SPEC


def cmd_data(args) -> int:
    from .training import data
    ds = data.get_dataset(args.data_dir) if args.get else data.load_dataset(args.data_dir)
    print(f"Fashion-MNIST OK in {ds.source}: train {tuple(ds.train_images.shape)}, test "
          f"{tuple(ds.test_images.shape)}, labels 0-9")
    return 0


def cmd_benchmark(args) -> int:
    from .anchors import benchmark
    return benchmark.run_from_args(args, "python -m bn_lenet " + " ".join(sys.argv[1:]))


COMMANDS = {"run": cmd_run, "inspect": cmd_inspect, "sweep": cmd_sweep, "compare": cmd_sweep, "data": cmd_data,
            "benchmark": cmd_benchmark}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.argv = [a for a in argv if a != "--debug"]  # the command as typed, recorded by a sweep
    return run_main(COMMANDS[args.command], args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
